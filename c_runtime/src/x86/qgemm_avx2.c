/* The quantized-weight panel kernels (moa/qgemm_panel.h) for AVX2 + FMA: a row of a panel's 16
 * columns is two ymm halves; int8 (or a nibble) widened to int32 and converted, then one FMA
 * per half with x[p] broadcast. */
#include "moa/qgemm_panel.h"

#if MOA_ISA_AVX2
#include <immintrin.h>

#include "moa/half.h"

static __m256 halves8(const uint16_t *halves)
{
#if defined(__F16C__)
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)halves));
#else
    float wide[8];
    int k;
    for (k = 0; k < 8; k++) {
        wide[k] = moa_f16_to_f32(halves[k]);
    }
    return _mm256_loadu_ps(wide);
#endif
}

/* Columns 8h .. 8h + 7 of row b of a panel's scales or offsets: floats, halves converted (F16C's
 * vcvtph2ps; one by one where the build has no F16C), or (MOA_QS_SUPER) the super-block's
 * halves times the block's int8s. */
static __m256 scales8(const void *scales, int half, size_t b, int h)
{
    const size_t i = b * MOA_GEMM_NR + 8 * (size_t)h;
    if (half == MOA_QS_SUPER) {
        const __m128i own = _mm_loadl_epi64((const __m128i *)(moa_qs_block_row(scales, b) + 8 * h));
        return _mm256_mul_ps(halves8(moa_qs_super_row(scales, b) + 8 * h), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(own)));
    }
    if (!half) {
        return _mm256_loadu_ps((const float *)scales + i);
    }
    return halves8((const uint16_t *)scales + i);
}

/* Columns 8h .. 8h + 7 of row p. */
static __m256 half_i8(const int8_t *q, size_t p, int h)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + p * MOA_GEMM_NR + 8 * h))));
}

/* Columns 8h .. 8h + 7 of row p of a 4-bit panel: a nibble of pair p / 2. */
static __m256 half_u4(const uint8_t *q, size_t p, int h)
{
    const __m256i pair = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + p / 2 * MOA_GEMM_NR + 8 * h)));
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(pair, p % 2 ? 4 : 0), _mm256_set1_epi32(15)));
}

typedef __m256 (*half_row)(const void *, size_t, int);

/* sum += scale * (even + odd - zero * x_sum) (+ offset * x_sum) for block b, both halves. */
static inline void apply_block(__m256 sum[2], const __m256 even[2], const __m256 odd[2], float x_sum,
                               const void *scale, const void *offset, int half, int zero, size_t b)
{
    int h;
    for (h = 0; h < 2; h++) {
        const __m256 acc = _mm256_sub_ps(_mm256_add_ps(even[h], odd[h]), _mm256_set1_ps((float)zero * x_sum));
        sum[h] = _mm256_fmadd_ps(scales8(scale, half, b, h), acc, sum[h]);
        if (offset != NULL) {
            sum[h] = _mm256_fmadd_ps(scales8(offset, half, b, h), _mm256_set1_ps(x_sum), sum[h]);
        }
    }
}

static __m256 half_i8_any(const void *q, size_t p, int h)
{
    return half_i8(q, p, h);
}

static __m256 half_u4_any(const void *q, size_t p, int h)
{
    return half_u4(q, p, h);
}

/* Rows in pairs into two sums per half, so that consecutive FMAs do not wait on each other. */
static inline void dot(half_row row, MOA_QW_DOT_PARAMS)
{
    __m256 sum[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    size_t b0, p;
    int h;
    for (b0 = 0; b0 < K; b0 += block) {
        const size_t end = K - b0 < block ? K : b0 + block;
        const size_t b = b0 / block;
        __m256 even[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, odd[2] = {even[0], even[0]};
        float x_sum = 0.0f;
        for (p = b0; p + 1 < end; p += 2) {
            const float x0 = x[(ptrdiff_t)p * x_stride], x1 = x[(ptrdiff_t)(p + 1) * x_stride];
            const __m256 x0_v = _mm256_set1_ps(x0), x1_v = _mm256_set1_ps(x1);
            for (h = 0; h < 2; h++) {
                even[h] = _mm256_fmadd_ps(x0_v, row(q, p, h), even[h]);
                odd[h] = _mm256_fmadd_ps(x1_v, row(q, p + 1, h), odd[h]);
            }
            x_sum += x0 + x1;
        }
        if (p < end) {
            const float x0 = x[(ptrdiff_t)p * x_stride];
            for (h = 0; h < 2; h++) {
                even[h] = _mm256_fmadd_ps(_mm256_set1_ps(x0), row(q, p, h), even[h]);
            }
            x_sum += x0;
        }
        apply_block(sum, even, odd, x_sum, scale, offset, half, zero, b);
    }
    _mm256_storeu_ps(y16, sum[0]);
    _mm256_storeu_ps(y16 + 8, sum[1]);
}

static inline void dequant(half_row row, MOA_QW_DEQUANT_PARAMS)
{
    size_t p;
    int h;
    for (p = p0; p < p0 + kc; p++) {
        const size_t b = p / block;
        for (h = 0; h < 2; h++) {
            const __m256 shift = offset != NULL ? scales8(offset, half, b, h) : _mm256_setzero_ps();
            _mm256_storeu_ps(out + (p - p0) * MOA_GEMM_NR + 8 * h,
                             _mm256_fmadd_ps(scales8(scale, half, b, h),
                                             _mm256_sub_ps(row(q, p, h), _mm256_set1_ps((float)zero)), shift));
        }
    }
}

void moa_qw_dot_i8_avx2(MOA_QW_DOT_PARAMS)
{
    dot(half_i8_any, K, block, x, x_stride, q, scale, offset, half, zero, y16);
}

/* Columns 8h .. 8h + 7 of pair r of a 4-bit panel, widened to int32: both rows' nibbles. */
static __m256i pair_u4(const uint8_t *q, size_t r, int h)
{
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + r * MOA_GEMM_NR + 8 * h)));
}

/* A pair of rows from one load: the low nibbles (row p) and the high ones (row p + 1); two sums
 * per half, so that consecutive FMAs do not wait on each other. */
void moa_qw_dot_u4_avx2(MOA_QW_DOT_PARAMS)
{
    const uint8_t *pairs = q;
    const __m256i low = _mm256_set1_epi32(15);
    __m256 sum[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    size_t b0, p;
    int h;
    for (b0 = 0; b0 < K; b0 += block) { /* block is even: a block starts a pair */
        const size_t end = K - b0 < block ? K : b0 + block, b = b0 / block;
        __m256 even[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, odd[2] = {even[0], even[0]};
        float x_sum = 0.0f;
        for (p = b0; p < end; p += 2) {
            const float x0 = x[(ptrdiff_t)p * x_stride], x1 = p + 1 < end ? x[(ptrdiff_t)(p + 1) * x_stride] : 0.0f;
            const __m256 x0_v = _mm256_set1_ps(x0), x1_v = _mm256_set1_ps(x1);
            for (h = 0; h < 2; h++) {
                const __m256i pair = pair_u4(pairs, p / 2, h);
                even[h] = _mm256_fmadd_ps(x0_v, _mm256_cvtepi32_ps(_mm256_and_si256(pair, low)), even[h]);
                odd[h] = _mm256_fmadd_ps(x1_v, _mm256_cvtepi32_ps(_mm256_srli_epi32(pair, 4)), odd[h]);
            }
            x_sum += x0 + x1;
        }
        apply_block(sum, even, odd, x_sum, scale, offset, half, zero, b);
    }
    _mm256_storeu_ps(y16, sum[0]);
    _mm256_storeu_ps(y16 + 8, sum[1]);
}

void moa_qw_dequant_i8_avx2(MOA_QW_DEQUANT_PARAMS)
{
    dequant(half_i8_any, block, q, scale, offset, half, zero, p0, kc, out);
}

void moa_qw_dequant_u4_avx2(MOA_QW_DEQUANT_PARAMS)
{
    dequant(half_u4_any, block, q, scale, offset, half, zero, p0, kc, out);
}
#endif
