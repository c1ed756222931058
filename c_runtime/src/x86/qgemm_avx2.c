/* The quantized-weight panel kernels (moa/qgemm_panel.h) for AVX2 + FMA: a row of a panel's 16
 * columns is two ymm halves; int8 (or a byte of two nibbles) widened to int32 by vpmovsxbd /
 * vpmovzxbd straight from memory and converted, then one FMA per half with a broadcast factor.
 *
 * AVX2 has two FMA ports and the int32 -> float conversion takes one of them too, so the decode
 * GEMV is bound by those two ports: the kernels spend them on conversions and FMAs only.
 * - The sum of a block's x (for its zero point and its offset) is taken once per block, eight
 *   floats at a time, and only when a zero point or an offset needs it.
 * - A 4-bit pair of rows (byte = lo | hi << 4) is not split into two nibbles: with v = lo + 16 hi,
 *   x0 lo + x1 hi = (x0 - x1 / 16) lo + (x1 / 16) v, so the byte is converted whole and only the
 *   low nibble is masked (no shift); the factors of each pair are made once per 32 rows, eight at
 *   a time (a block of 32 with x contiguous, convert --weights int4's, has fixed trip counts).
 * - Two-level scales (MOA_QS_SUPER): a block's int8 scale multiplies its sums, the super-block's
 *   halves multiply the sum of those once per 8 blocks.
 * - Eight sums (four rows of both halves) so that no chain of dependent FMAs sets the pace; the
 *   helpers are forced inline, so that the sums stay in registers.
 * Measured (benchmarks/qgemv_speed.py): see README's Performance section. */
#include "moa/qgemm_panel.h"

#if MOA_ISA_AVX2
#include <immintrin.h>

#include "moa/half.h"

#define INLINE static inline __attribute__((always_inline))

INLINE __m256 halves8(const uint16_t *halves)
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
INLINE __m256 scales8(const void *scales, int half, size_t b, int h)
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
INLINE __m256 half_i8(const int8_t *q, size_t p, int h)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + p * MOA_GEMM_NR + 8 * h))));
}

/* Columns 8h .. 8h + 7 of row p of a 4-bit panel: a nibble of pair p / 2. */
INLINE __m256 half_u4(const uint8_t *q, size_t p, int h)
{
    const __m256i pair = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + p / 2 * MOA_GEMM_NR + 8 * h)));
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(pair, p % 2 ? 4 : 0), _mm256_set1_epi32(15)));
}

typedef __m256 (*half_row)(const void *, size_t, int);

INLINE float sum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* x[p0] + ... + x[p0 + n - 1] (strided). */
INLINE float x_sum(const float *x, ptrdiff_t x_stride, size_t p0, size_t n)
{
    float sum = 0.0f;
    size_t p = 0;
    if (x_stride == 1) {
        __m256 s = _mm256_setzero_ps();
        for (; p + 8 <= n; p += 8) {
            s = _mm256_add_ps(s, _mm256_loadu_ps(x + p0 + p));
        }
        sum = sum8(s);
    }
    for (; p < n; p++) {
        sum += x[(ptrdiff_t)(p0 + p) * x_stride];
    }
    return sum;
}

/* The dot kernels' result, block by block: sum += scale * (acc - zero * x_sum) (+ offset * x_sum).
 * With two-level scales (MOA_QS_SUPER) the block's int8s multiply acc and x_sum into sums of the
 * super-block, and its halves multiply those once, at its last block (or K's). */
typedef struct {
    __m256 sum[2], scaled[2], shifted[2];
} block_sums;

INLINE void sums_start(block_sums *s)
{
    s->sum[0] = s->sum[1] = s->scaled[0] = s->scaled[1] = s->shifted[0] = s->shifted[1] = _mm256_setzero_ps();
}

INLINE __m256 block_int8s(const void *scales, size_t b, int h)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(moa_qs_block_row(scales, b) + 8 * h))));
}

INLINE void apply_block(block_sums *s, const __m256 acc[2], float x_total, const void *scale, const void *offset,
                        int half, int zero, size_t b, int last)
{
    int h;
    for (h = 0; h < 2; h++) {
        const __m256 centred = zero ? _mm256_sub_ps(acc[h], _mm256_set1_ps((float)zero * x_total)) : acc[h];
        if (half != MOA_QS_SUPER) {
            s->sum[h] = _mm256_fmadd_ps(scales8(scale, half, b, h), centred, s->sum[h]);
            if (offset != NULL) {
                s->sum[h] = _mm256_fmadd_ps(scales8(offset, half, b, h), _mm256_set1_ps(x_total), s->sum[h]);
            }
            continue;
        }
        s->scaled[h] = _mm256_fmadd_ps(block_int8s(scale, b, h), centred, s->scaled[h]);
        if (offset != NULL) {
            s->shifted[h] = _mm256_fmadd_ps(block_int8s(offset, b, h), _mm256_set1_ps(x_total), s->shifted[h]);
        }
        if (last || b % MOA_QS_SUPER_BLOCKS == MOA_QS_SUPER_BLOCKS - 1) {
            s->sum[h] = _mm256_fmadd_ps(halves8(moa_qs_super_row(scale, b) + 8 * h), s->scaled[h], s->sum[h]);
            if (offset != NULL) {
                s->sum[h] = _mm256_fmadd_ps(halves8(moa_qs_super_row(offset, b) + 8 * h), s->shifted[h], s->sum[h]);
            }
            s->scaled[h] = s->shifted[h] = _mm256_setzero_ps();
        }
    }
}

/* The weights are streamed once per decode step, from beyond the caches: a line MOA_QW_PREFETCH bytes
 * ahead is asked for (prefetches never fault; the address is made as an integer, so that it is no
 * pointer past the panel). Decode of SmolLM2 int4: 7-10% faster than the hardware's prefetch alone. */
#ifndef MOA_QW_PREFETCH
#define MOA_QW_PREFETCH 4096
#endif

INLINE void prefetch_ahead(const void *at)
{
    _mm_prefetch((const char *)((uintptr_t)at + MOA_QW_PREFETCH), _MM_HINT_T0);
}

INLINE __m256 bcast(const float *x, size_t p, ptrdiff_t x_stride)
{
    return _mm256_broadcast_ss(x + (ptrdiff_t)p * x_stride);
}

/* int8: four rows at a time into eight sums. */
void moa_qw_dot_i8_avx2(MOA_QW_DOT_PARAMS)
{
    const int8_t *values = q;
    const int needs_sum = zero != 0 || offset != NULL;
    block_sums sums;
    size_t b0, p;
    sums_start(&sums);
    for (b0 = 0; b0 < K; b0 += block) {
        const size_t end = K - b0 < block ? K : b0 + block;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0s = a0, b1s = a0, c0 = a0, c1 = a0, d0 = a0, d1 = a0;
        __m256 acc[2];
        for (p = b0; p + 3 < end; p += 4) { /* four rows: one line of 64 bytes */
            const __m256 x0 = bcast(x, p, x_stride), x1 = bcast(x, p + 1, x_stride);
            prefetch_ahead(values + p * MOA_GEMM_NR);
            const __m256 x2 = bcast(x, p + 2, x_stride), x3 = bcast(x, p + 3, x_stride);
            a0 = _mm256_fmadd_ps(x0, half_i8(values, p, 0), a0);
            a1 = _mm256_fmadd_ps(x0, half_i8(values, p, 1), a1);
            b0s = _mm256_fmadd_ps(x1, half_i8(values, p + 1, 0), b0s);
            b1s = _mm256_fmadd_ps(x1, half_i8(values, p + 1, 1), b1s);
            c0 = _mm256_fmadd_ps(x2, half_i8(values, p + 2, 0), c0);
            c1 = _mm256_fmadd_ps(x2, half_i8(values, p + 2, 1), c1);
            d0 = _mm256_fmadd_ps(x3, half_i8(values, p + 3, 0), d0);
            d1 = _mm256_fmadd_ps(x3, half_i8(values, p + 3, 1), d1);
        }
        for (; p < end; p++) {
            const __m256 x0 = bcast(x, p, x_stride);
            a0 = _mm256_fmadd_ps(x0, half_i8(values, p, 0), a0);
            a1 = _mm256_fmadd_ps(x0, half_i8(values, p, 1), a1);
        }
        acc[0] = _mm256_add_ps(_mm256_add_ps(a0, b0s), _mm256_add_ps(c0, d0));
        acc[1] = _mm256_add_ps(_mm256_add_ps(a1, b1s), _mm256_add_ps(c1, d1));
        apply_block(&sums, acc, needs_sum ? x_sum(x, x_stride, b0, end - b0) : 0.0f, scale, offset, half, zero,
                    b0 / block, end == K);
    }
    _mm256_storeu_ps(y16, sums.sum[0]);
    _mm256_storeu_ps(y16 + 8, sums.sum[1]);
}

#define U4_CHUNK 32 /* rows whose pair factors are made at once */

/* The factors of pairs of rows p0 .. p0 + n (n even, or odd at K's end: x beyond is 0): f[2i] =
 * x[2i] - x[2i + 1] / 16 for the low nibble, f[2i + 1] = x[2i + 1] / 16 for the whole byte; returns
 * the sum of those x when asked. */
INLINE float u4_factors(const float *x, ptrdiff_t x_stride, size_t p0, size_t n, float *f, int needs_sum)
{
    size_t i = 0;
    float sum = 0.0f;
    if (x_stride == 1) {
        const __m256 by = _mm256_setr_ps(1.0f, 0.0625f, 1.0f, 0.0625f, 1.0f, 0.0625f, 1.0f, 0.0625f);
        const __m256 odd = _mm256_castsi256_ps(_mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1));
        __m256 s = _mm256_setzero_ps();
        for (; i + 8 <= n; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + p0 + i), m = _mm256_mul_ps(v, by);
            /* m = (x0, x1/16, x2, x3/16, ...); minus (x1/16, 0, x3/16, 0, ...) */
            _mm256_storeu_ps(f + i, _mm256_sub_ps(m, _mm256_permute_ps(_mm256_and_ps(m, odd), 0xB1)));
            s = _mm256_add_ps(s, v);
        }
        if (needs_sum) {
            sum = sum8(s);
        }
    }
    for (; i < n; i += 2) {
        const float x0 = x[(ptrdiff_t)(p0 + i) * x_stride], x1 = i + 1 < n ? x[(ptrdiff_t)(p0 + i + 1) * x_stride] : 0.0f;
        f[i] = x0 - x1 * 0.0625f;
        f[i + 1] = x1 * 0.0625f;
        sum += x0 + x1;
    }
    return sum;
}

/* Columns 8h .. 8h + 7 of pair r: the byte, widened. */
INLINE __m256i pair_u4(const uint8_t *q, size_t r, int h)
{
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + r * MOA_GEMM_NR + 8 * h)));
}

/* Two pairs of rows at a time into eight sums (low nibbles and whole bytes, both halves); the
 * sums are separate variables, not arrays, so that they stay in registers. */
#define U4_STEP(lo, by, f_lo, f_by, r)                                                                  \
    do {                                                                                                \
        const __m256i v0_ = pair_u4(pairs, (r), 0), v1_ = pair_u4(pairs, (r), 1);                       \
        lo##0 = _mm256_fmadd_ps(f_lo, _mm256_cvtepi32_ps(_mm256_and_si256(v0_, low)), lo##0);           \
        by##0 = _mm256_fmadd_ps(f_by, _mm256_cvtepi32_ps(v0_), by##0);                                  \
        lo##1 = _mm256_fmadd_ps(f_lo, _mm256_cvtepi32_ps(_mm256_and_si256(v1_, low)), lo##1);           \
        by##1 = _mm256_fmadd_ps(f_by, _mm256_cvtepi32_ps(v1_), by##1);                                  \
    } while (0)

void moa_qw_dot_u4_avx2(MOA_QW_DOT_PARAMS)
{
    const uint8_t *pairs = q;
    const __m256i low = _mm256_set1_epi32(15);
    const int needs_sum = zero != 0 || offset != NULL;
    float f[U4_CHUNK];
    block_sums sums;
    size_t b0, c, i;
    sums_start(&sums);
    for (b0 = 0; b0 < K; b0 += block) { /* block is even: a block starts a pair */
        const size_t end = K - b0 < block ? K : b0 + block;
        __m256 la0 = _mm256_setzero_ps(), la1 = la0, ba0 = la0, ba1 = la0, lb0 = la0, lb1 = la0, bb0 = la0, bb1 = la0;
        __m256 acc[2];
        float x_total = 0.0f;
        if (end - b0 == U4_CHUNK && x_stride == 1) { /* the common block: fixed trip counts */
            const size_t r0 = b0 / 2;
            x_total = u4_factors(x, 1, b0, U4_CHUNK, f, needs_sum);
            for (i = 0; i < U4_CHUNK; i += 4) {
                prefetch_ahead(pairs + (r0 + i / 2) * MOA_GEMM_NR); /* two pairs: half a line */
                U4_STEP(la, ba, _mm256_broadcast_ss(f + i), _mm256_broadcast_ss(f + i + 1), r0 + i / 2);
                U4_STEP(lb, bb, _mm256_broadcast_ss(f + i + 2), _mm256_broadcast_ss(f + i + 3), r0 + i / 2 + 1);
            }
        } else
        for (c = b0; c < end; c += U4_CHUNK) {
            const size_t n = end - c < U4_CHUNK ? end - c : U4_CHUNK, r0 = c / 2;
            x_total += u4_factors(x, x_stride, c, n, f, needs_sum);
            for (i = 0; i + 3 < n; i += 4) {
                prefetch_ahead(pairs + (r0 + i / 2) * MOA_GEMM_NR);
                U4_STEP(la, ba, _mm256_broadcast_ss(f + i), _mm256_broadcast_ss(f + i + 1), r0 + i / 2);
                U4_STEP(lb, bb, _mm256_broadcast_ss(f + i + 2), _mm256_broadcast_ss(f + i + 3), r0 + i / 2 + 1);
            }
            for (; i < n; i += 2) {
                U4_STEP(la, ba, _mm256_broadcast_ss(f + i), _mm256_broadcast_ss(f + i + 1), r0 + i / 2);
            }
        }
        acc[0] = _mm256_add_ps(_mm256_add_ps(la0, ba0), _mm256_add_ps(lb0, bb0));
        acc[1] = _mm256_add_ps(_mm256_add_ps(la1, ba1), _mm256_add_ps(lb1, bb1));
        apply_block(&sums, acc, x_total, scale, offset, half, zero, b0 / block, end == K);
    }
    _mm256_storeu_ps(y16, sums.sum[0]);
    _mm256_storeu_ps(y16 + 8, sums.sum[1]);
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

static __m256 half_i8_any(const void *q, size_t p, int h)
{
    return half_i8(q, p, h);
}

static __m256 half_u4_any(const void *q, size_t p, int h)
{
    return half_u4(q, p, h);
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
