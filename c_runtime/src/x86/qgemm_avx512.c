/* The quantized-weight panel kernels (moa/qgemm_panel.h) for AVX-512F: one zmm holds a row of a
 * panel's 16 columns; int8 (or a nibble) widened to int32 and converted, then one FMA with x[p]
 * broadcast. Four accumulators, so that consecutive FMAs do not wait on each other; the sum of a
 * block's x is taken (sixteen at a time) only where a zero point or an offset needs it. */
#include "moa/qgemm_panel.h"

#if MOA_ISA_AVX512
#include <immintrin.h>

/* The weights are streamed once per decode step, from beyond the caches: a line MOA_QW_PREFETCH bytes
 * ahead is asked for (prefetches never fault; the address is made as an integer, so that it is no
 * pointer past the panel), as in qgemm_avx2.c. */
#ifndef MOA_QW_PREFETCH
#define MOA_QW_PREFETCH 4096
#endif

static inline __attribute__((always_inline)) void prefetch_ahead(const void *at)
{
    _mm_prefetch((const char *)((uintptr_t)at + MOA_QW_PREFETCH), _MM_HINT_T0);
}

static __m512 row_i8(const int8_t *q, size_t p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + p * MOA_GEMM_NR))));
}

/* Rows 2r and 2r + 1 of a 4-bit panel: the low and the high nibbles of pair r. */
static __m512i pair_u4(const uint8_t *q, size_t r)
{
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + r * MOA_GEMM_NR)));
}

/* A nibble as a float: vpermps reads only the low 4 bits of each lane's index, so the table of
 * 0.0 .. 15.0 converts the low nibble without masking it (one instruction, not two). */
static __m512 nibble_values(void)
{
    return _mm512_setr_ps(0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f, 9.0f, 10.0f, 11.0f, 12.0f, 13.0f,
                          14.0f, 15.0f);
}

static __m512 low_u4(__m512i pair)
{
    return _mm512_permutexvar_ps(pair, nibble_values());
}

static __m512 high_u4(__m512i pair)
{
    return _mm512_permutexvar_ps(_mm512_srli_epi32(pair, 4), nibble_values());
}

/* Row b of a panel's scales or offsets: 16 floats, 16 halves converted (vcvtph2ps), or
 * (MOA_QS_SUPER) the super-block's halves times the block's int8s. */
static inline __attribute__((always_inline)) __m512 scales_row(const void *scales, int half, size_t b)
{
    if (half == MOA_QS_SUPER) {
        const __m512 super = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)moa_qs_super_row(scales, b)));
        const __m128i own = _mm_loadu_si128((const __m128i *)moa_qs_block_row(scales, b));
        return _mm512_mul_ps(super, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(own)));
    }
    return half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)scales + b * MOA_GEMM_NR)))
                : _mm512_loadu_ps((const float *)scales + b * MOA_GEMM_NR);
}

/* x[p0] + ... + x[p0 + n - 1] (strided): only a zero point or an offset needs it. */
static inline __attribute__((always_inline)) float x_sum_of(const float *x, ptrdiff_t x_stride, size_t p0, size_t n)
{
    float sum = 0.0f;
    size_t p = 0;
    if (x_stride == 1) {
        __m512 s = _mm512_setzero_ps();
        for (; p + 16 <= n; p += 16) {
            s = _mm512_add_ps(s, _mm512_loadu_ps(x + p0 + p));
        }
        sum = _mm512_reduce_add_ps(s);
    }
    for (; p < n; p++) {
        sum += x[(ptrdiff_t)(p0 + p) * x_stride];
    }
    return sum;
}

/* sum + scale * (acc - zero * x_sum) (+ offset * x_sum) for block b. */
static inline __attribute__((always_inline)) __m512 apply_block(__m512 sum, __m512 acc, float x_sum, const void *scale, const void *offset, int half,
                          int zero, size_t b)
{
    acc = _mm512_sub_ps(acc, _mm512_set1_ps((float)zero * x_sum));
    sum = _mm512_fmadd_ps(scales_row(scale, half, b), acc, sum);
    if (offset != NULL) {
        sum = _mm512_fmadd_ps(scales_row(offset, half, b), _mm512_set1_ps(x_sum), sum);
    }
    return sum;
}

/* Four rows at a time into four sums, so that no chain of dependent FMAs sets the pace. */
void moa_qw_dot_i8_avx512(MOA_QW_DOT_PARAMS)
{
    const int8_t *values = q;
    const int needs_sum = zero != 0 || offset != NULL;
    __m512 sum = _mm512_setzero_ps();
    size_t b0, p;
    for (b0 = 0; b0 < K; b0 += block) {
        const size_t end = K - b0 < block ? K : b0 + block;
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (p = b0; p + 3 < end; p += 4) { /* four rows: one line of 64 bytes */
            prefetch_ahead(values + p * MOA_GEMM_NR);
            s0 = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)p * x_stride]), row_i8(values, p), s0);
            s1 = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)(p + 1) * x_stride]), row_i8(values, p + 1), s1);
            s2 = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)(p + 2) * x_stride]), row_i8(values, p + 2), s2);
            s3 = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)(p + 3) * x_stride]), row_i8(values, p + 3), s3);
        }
        for (; p < end; p++) {
            s0 = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)p * x_stride]), row_i8(values, p), s0);
        }
        sum = apply_block(sum, _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)),
                          needs_sum ? x_sum_of(x, x_stride, b0, end - b0) : 0.0f, scale, offset, half, zero,
                          b0 / block);
    }
    _mm512_storeu_ps(y16, sum);
}

void moa_qw_dot_u4_avx512(MOA_QW_DOT_PARAMS)
{
    const uint8_t *pairs = q;
    const int needs_sum = zero != 0 || offset != NULL;
    __m512 sum = _mm512_setzero_ps();
    size_t b0, p;
    for (b0 = 0; b0 < K; b0 += block) { /* block is even: a block starts a pair */
        const size_t end = K - b0 < block ? K : b0 + block;
        __m512 even0 = _mm512_setzero_ps(), odd0 = even0, even1 = even0, odd1 = even0;
        for (p = b0; p + 3 < end; p += 4) {
            const __m512i pair0 = pair_u4(pairs, p / 2), pair1 = pair_u4(pairs, p / 2 + 1);
            prefetch_ahead(pairs + p / 2 * MOA_GEMM_NR); /* two pairs: half a line */
            even0 = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)p * x_stride]), low_u4(pair0), even0);
            odd0 = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)(p + 1) * x_stride]), high_u4(pair0), odd0);
            even1 = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)(p + 2) * x_stride]), low_u4(pair1), even1);
            odd1 = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)(p + 3) * x_stride]), high_u4(pair1), odd1);
        }
        for (; p + 1 < end; p += 2) {
            const __m512i pair = pair_u4(pairs, p / 2);
            even0 = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)p * x_stride]), low_u4(pair), even0);
            odd0 = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)(p + 1) * x_stride]), high_u4(pair), odd0);
        }
        if (p < end) {
            even0 = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)p * x_stride]), low_u4(pair_u4(pairs, p / 2)), even0);
        }
        sum = apply_block(sum, _mm512_add_ps(_mm512_add_ps(even0, odd0), _mm512_add_ps(even1, odd1)),
                          needs_sum ? x_sum_of(x, x_stride, b0, end - b0) : 0.0f, scale, offset, half, zero,
                          b0 / block);
    }
    _mm512_storeu_ps(y16, sum);
}

static void store_row(float *out, __m512 value, const void *scale, const void *offset, int half, int zero, size_t b)
{
    value = _mm512_sub_ps(value, _mm512_set1_ps((float)zero));
    const __m512 shift = offset != NULL ? scales_row(offset, half, b) : _mm512_setzero_ps();
    _mm512_storeu_ps(out, _mm512_fmadd_ps(scales_row(scale, half, b), value, shift));
}

void moa_qw_dequant_i8_avx512(MOA_QW_DEQUANT_PARAMS)
{
    size_t p;
    for (p = p0; p < p0 + kc; p++) {
        store_row(out + (p - p0) * MOA_GEMM_NR, row_i8(q, p), scale, offset, half, zero, p / block);
    }
}

void moa_qw_dequant_u4_avx512(MOA_QW_DEQUANT_PARAMS)
{
    size_t p;
    for (p = p0; p < p0 + kc; p++) {
        const __m512i pair = pair_u4(q, p / 2);
        store_row(out + (p - p0) * MOA_GEMM_NR, p % 2 ? high_u4(pair) : low_u4(pair), scale, offset, half, zero,
                  p / block);
    }
}
#endif
