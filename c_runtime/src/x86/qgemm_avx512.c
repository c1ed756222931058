/* The quantized-weight panel kernels (moa/qgemm_panel.h) for AVX-512F: one zmm holds a row of a
 * panel's 16 columns; int8 (or a nibble) widened to int32 and converted, then one FMA with x[p]
 * broadcast. Two accumulators, so that consecutive FMAs do not wait on each other. */
#include "moa/qgemm_panel.h"

#if MOA_ISA_AVX512
#include <immintrin.h>

static __m512 row_i8(const int8_t *q, size_t p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + p * MOA_GEMM_NR))));
}

/* Rows 2r and 2r + 1 of a 4-bit panel: the low and the high nibbles of pair r. */
static __m512i pair_u4(const uint8_t *q, size_t r)
{
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + r * MOA_GEMM_NR)));
}

static __m512 low_u4(__m512i pair)
{
    return _mm512_cvtepi32_ps(_mm512_and_si512(pair, _mm512_set1_epi32(15)));
}

static __m512 high_u4(__m512i pair)
{
    return _mm512_cvtepi32_ps(_mm512_srli_epi32(pair, 4));
}

/* sum + scale * (acc - zero * x_sum) (+ offset * x_sum) for block b. */
static __m512 apply_block(__m512 sum, __m512 acc, float x_sum, const float *scale, const float *offset, int zero,
                          size_t b)
{
    acc = _mm512_sub_ps(acc, _mm512_set1_ps((float)zero * x_sum));
    sum = _mm512_fmadd_ps(_mm512_loadu_ps(scale + b * MOA_GEMM_NR), acc, sum);
    if (offset != NULL) {
        sum = _mm512_fmadd_ps(_mm512_loadu_ps(offset + b * MOA_GEMM_NR), _mm512_set1_ps(x_sum), sum);
    }
    return sum;
}

void moa_qw_dot_i8_avx512(MOA_QW_DOT_PARAMS)
{
    const int8_t *values = q;
    __m512 sum = _mm512_setzero_ps();
    size_t b0, p;
    for (b0 = 0; b0 < K; b0 += block) {
        const size_t end = K - b0 < block ? K : b0 + block;
        __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps();
        float x_sum = 0.0f;
        for (p = b0; p + 1 < end; p += 2) {
            const float x0 = x[(ptrdiff_t)p * x_stride], x1 = x[(ptrdiff_t)(p + 1) * x_stride];
            even = _mm512_fmadd_ps(_mm512_set1_ps(x0), row_i8(values, p), even);
            odd = _mm512_fmadd_ps(_mm512_set1_ps(x1), row_i8(values, p + 1), odd);
            x_sum += x0 + x1;
        }
        if (p < end) {
            const float x0 = x[(ptrdiff_t)p * x_stride];
            even = _mm512_fmadd_ps(_mm512_set1_ps(x0), row_i8(values, p), even);
            x_sum += x0;
        }
        sum = apply_block(sum, _mm512_add_ps(even, odd), x_sum, scale, offset, zero, b0 / block);
    }
    _mm512_storeu_ps(y16, sum);
}

void moa_qw_dot_u4_avx512(MOA_QW_DOT_PARAMS)
{
    const uint8_t *pairs = q;
    __m512 sum = _mm512_setzero_ps();
    size_t b0, p;
    for (b0 = 0; b0 < K; b0 += block) { /* block is even: a block starts a pair */
        const size_t end = K - b0 < block ? K : b0 + block;
        __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps();
        float x_sum = 0.0f;
        for (p = b0; p + 1 < end; p += 2) {
            const float x0 = x[(ptrdiff_t)p * x_stride], x1 = x[(ptrdiff_t)(p + 1) * x_stride];
            const __m512i pair = pair_u4(pairs, p / 2);
            even = _mm512_fmadd_ps(_mm512_set1_ps(x0), low_u4(pair), even);
            odd = _mm512_fmadd_ps(_mm512_set1_ps(x1), high_u4(pair), odd);
            x_sum += x0 + x1;
        }
        if (p < end) {
            const float x0 = x[(ptrdiff_t)p * x_stride];
            even = _mm512_fmadd_ps(_mm512_set1_ps(x0), low_u4(pair_u4(pairs, p / 2)), even);
            x_sum += x0;
        }
        sum = apply_block(sum, _mm512_add_ps(even, odd), x_sum, scale, offset, zero, b0 / block);
    }
    _mm512_storeu_ps(y16, sum);
}

static void store_row(float *out, __m512 value, const float *scale, const float *offset, int zero, size_t b)
{
    value = _mm512_sub_ps(value, _mm512_set1_ps((float)zero));
    const __m512 shift = offset != NULL ? _mm512_loadu_ps(offset + b * MOA_GEMM_NR) : _mm512_setzero_ps();
    _mm512_storeu_ps(out, _mm512_fmadd_ps(_mm512_loadu_ps(scale + b * MOA_GEMM_NR), value, shift));
}

void moa_qw_dequant_i8_avx512(MOA_QW_DEQUANT_PARAMS)
{
    size_t p;
    for (p = p0; p < p0 + kc; p++) {
        store_row(out + (p - p0) * MOA_GEMM_NR, row_i8(q, p), scale, offset, zero, p / block);
    }
}

void moa_qw_dequant_u4_avx512(MOA_QW_DEQUANT_PARAMS)
{
    size_t p;
    for (p = p0; p < p0 + kc; p++) {
        const __m512i pair = pair_u4(q, p / 2);
        store_row(out + (p - p0) * MOA_GEMM_NR, p % 2 ? high_u4(pair) : low_u4(pair), scale, offset, zero,
                  p / block);
    }
}
#endif
