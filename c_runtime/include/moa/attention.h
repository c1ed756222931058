/* fp32 micro-kernels for the inner loops of the generated ONF attention (attention.c):
 *
 *     scores   s[r][c]  = scale * sum_j q[r][j] k[c][j]        a Br x Bc tile of Q K^T
 *     max      m        = max_c x[c]                           row maximum (NaN wins)
 *     exp      x[c]     = exp(x[c] - m),  returns sum_c x[c]   softmax numerators and their sum
 *     scale    y[c]     = alpha * x[c]                         online rescale, final 1 / l
 *     pv       acc[r][q] += sum_c p[r][c] v[c][q]              a Br x Dv tile of P V
 *     vexp     y[c]     = exp(x[c])                            the shared exp, on its own
 *     softmax  the online-softmax step of a whole Br x Bc score tile: per row the new running
 *              max, p = exp(s - max) in place, the running sum, and the factor alpha that
 *              rescales what earlier key tiles accumulated (max, exp and a scalar exp per row)
 *
 * Rows are strided (ld* count floats between consecutive rows); the elements of a row are
 * contiguous. Nothing here allocates or keeps state: the caller owns every buffer.
 *
 * Names follow XNNPACK's scheme: op, type, tile, ISA. A tile RxC is the register tile
 * (rows x columns, columns in floats); uN is N elements per step of a 1-D kernel; "m4" is
 * RVV LMUL 4, so the tile grows with VLEN. The portable reference (src/attention_f32.c,
 * suffix _scalar) is always compiled; the variant named by moa/isa.h (src/x86/, src/neon/,
 * src/rvv/) is what the unsuffixed names below call.
 *
 * exp (moa_expf, vexp and exp above) is one algorithm on every ISA: x is clamped to
 * [ln(FLT_MIN), 88.376], n = round(x / ln 2) by adding 1.5 * 2^23, r = x - n ln 2 in two
 * FMAs (Cody-Waite, ln 2 = 0.693359375 - 2.12194440e-4), exp(r) = 1 + r + r^2 P(r) with
 * Cephes' degree-5 P in Horner form (FMA), times 2^n built in the exponent bits. Inputs
 * below ln(FLT_MIN) = -87.3365 (results under FLT_MIN, where exp underflows) give 0;
 * exp(-inf) = 0, exp(NaN) = NaN.
 *
 * Its maximum error over the range softmax uses, ln(FLT_MIN) <= x <= 0, against float64
 * exp, in ulp of the true value (MOA_EXPF_MAX_ULP; tests/test_attention_kernels.py measures
 * every variant against it):
 *     1.0104 ulp (at x = -5.87788) for the SIMD variants, which compute the same bits with
 *            FMA on every ISA (AVX-512, AVX2, NEON, RVV): exhaustive over all 1.12e9 floats
 *            of the range on the AVX-512 build, sampled on the others;
 *     0.982 ulp for the scalar reference built without FMA contraction (gcc -std=c99).
 *
 * One kernel departs from it: AVX-512's softmax step computes its exp(d), d = s - max, as 2^y,
 * y = d log2(e) rounded, n = round(y), 2^(y - n) a degree-6 polynomial (tests/fit_vmath.py),
 * times 2^n by VSCALEFPS, 12 operations against 16 (the softmax is a tenth of attention's time
 * there). Rounding y adds |d| eps / 2 to the |d| eps / 2 that rounding d costs every variant:
 * over every float d in [-87, 0] it is within 0.61 (1 + |d|) eps of exp(d) (1.5 ulp for |d| < 1,
 * 8 ulp at |d| = 10), and tests/test_attention_kernels.py holds every softmax to
 * (4 + 1.5 |d|) eps. Its p differ from the other ISAs' in the last bits. */
#ifndef MOA_ATTENTION_H
#define MOA_ATTENTION_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "moa/isa.h"

#define MOA_EXPF_MAX_ULP 1.0104f

/* The exp constants, shared by every variant. */
#define MOA_EXPF_LO (-87.33654475f)   /* ln(FLT_MIN): below it the result is 0 */
#define MOA_EXPF_HI 88.37626266f      /* n <= 127 */
#define MOA_EXPF_LOG2E 1.44269504088896341f
#define MOA_EXPF_ROUND 12582912.0f    /* 1.5 * 2^23: t = x log2(e) + this has n in its low bits */
#define MOA_EXPF_LN2_HI 0.693359375f
#define MOA_EXPF_LN2_LO (-2.12194440e-4f)
#define MOA_EXPF_P0 1.9875691500e-4f
#define MOA_EXPF_P1 1.3981999507e-3f
#define MOA_EXPF_P2 8.3334519073e-3f
#define MOA_EXPF_P3 4.1665795894e-2f
#define MOA_EXPF_P4 1.6666665459e-1f
#define MOA_EXPF_P5 5.0000001201e-1f

/* The scalar form of the shared exp (also the rescale factor exp(m_old - m_new)). */
static inline float moa_expf(float x)
{
    float t, n, r, p;
    uint32_t bits;
    if (x < MOA_EXPF_LO) {
        return 0.0f;
    }
    if (x > MOA_EXPF_HI) {
        x = MOA_EXPF_HI;
    }
    t = x * MOA_EXPF_LOG2E + MOA_EXPF_ROUND;
    n = t - MOA_EXPF_ROUND;
    r = x - n * MOA_EXPF_LN2_HI;
    r = r - n * MOA_EXPF_LN2_LO;
    p = MOA_EXPF_P0;
    p = p * r + MOA_EXPF_P1;
    p = p * r + MOA_EXPF_P2;
    p = p * r + MOA_EXPF_P3;
    p = p * r + MOA_EXPF_P4;
    p = p * r + MOA_EXPF_P5;
    p = p * (r * r) + r + 1.0f;
    memcpy(&bits, &t, sizeof bits); /* t's low bits hold n + 2^22; << 23 moves n into the exponent */
    bits = (bits << 23) + (127u << 23);
    memcpy(&t, &bits, sizeof t);
    return p * t;
}

/* Every kernel once per variant; MOA_ATTN_DECLARE(suffix) declares one variant's set. */
#define MOA_ATTN_DECLARE(scores, pv, max, exp, scale, vexp)                                              \
    void scores(size_t rows, size_t cols, size_t depth, float scale_, const float *q, ptrdiff_t ldq,   \
                const float *k, ptrdiff_t ldk, float *s, ptrdiff_t lds);                                \
    void pv(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const float *v,        \
            ptrdiff_t ldv, float *acc, ptrdiff_t lda);                                                 \
    float max(size_t n, const float *x);                                                               \
    float exp(size_t n, float *x, float m);                                                            \
    void scale(size_t n, float alpha, const float *x, float *y);                                       \
    void vexp(size_t n, const float *x, float *y);

/* The kernels over an int8 key/value cache (signed rows, one float scale per row: the value of
 * k[c][j] is k_scale[c] * k[c][j]); the query, the probabilities and every sum stay float32.
 * MOA_ATTN_S8_DECLARE(suffix) declares one variant's pair. */
#define MOA_ATTN_S8_DECLARE(scores, pv)                                                                  \
    void scores(size_t rows, size_t cols, size_t depth, float scale_, const float *q, ptrdiff_t ldq,   \
                const int8_t *k, ptrdiff_t ldk, const float *k_scale, float *s, ptrdiff_t lds);         \
    void pv(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const int8_t *v,       \
            ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda);

/* The kernels over a float16 key/value cache (IEEE halves as their uint16_t bits, no scale: the
 * value of k[c][j] is the half itself, widened exactly to float32 as it is loaded); the query,
 * the probabilities and every sum stay float32. MOA_ATTN_F16_DECLARE(suffix) declares one
 * variant's pair. */
#define MOA_ATTN_F16_DECLARE(scores, pv)                                                                 \
    void scores(size_t rows, size_t cols, size_t depth, float scale_, const float *q, ptrdiff_t ldq,   \
                const uint16_t *k, ptrdiff_t ldk, float *s, ptrdiff_t lds);                             \
    void pv(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const uint16_t *v,     \
            ptrdiff_t ldv, float *acc, ptrdiff_t lda);

/* The portable reference, compiled on every target. */
MOA_ATTN_S8_DECLARE(moa_attn_scores_f32_s8_1x1_scalar, moa_attn_pv_f32_s8_1x1_scalar)
MOA_ATTN_F16_DECLARE(moa_attn_scores_f32_f16_1x1_scalar, moa_attn_pv_f32_f16_1x1_scalar)
MOA_ATTN_DECLARE(moa_attn_scores_f32_1x1_scalar, moa_attn_pv_f32_1x1_scalar, moa_attn_max_f32_u1_scalar,
                 moa_attn_exp_f32_u1_scalar, moa_attn_scale_f32_u1_scalar, moa_vexp_f32_u1_scalar)

#if MOA_ISA_AVX512
MOA_ATTN_DECLARE(moa_attn_scores_f32_12x32_avx512, moa_attn_pv_f32_12x32_avx512, moa_attn_max_f32_u32_avx512,
                 moa_attn_exp_f32_u32_avx512, moa_attn_scale_f32_u32_avx512, moa_vexp_f32_u32_avx512)
#define moa_attn_scores_f32 moa_attn_scores_f32_12x32_avx512
#define moa_attn_pv_f32 moa_attn_pv_f32_12x32_avx512
#define moa_attn_max_f32 moa_attn_max_f32_u32_avx512
#define moa_attn_exp_f32 moa_attn_exp_f32_u32_avx512
#define moa_attn_scale_f32 moa_attn_scale_f32_u32_avx512
#define moa_vexp_f32 moa_vexp_f32_u32_avx512
MOA_ATTN_S8_DECLARE(moa_attn_scores_f32_s8_12x32_avx512, moa_attn_pv_f32_s8_12x32_avx512)
#define moa_attn_scores_f32_s8 moa_attn_scores_f32_s8_12x32_avx512
#define moa_attn_pv_f32_s8 moa_attn_pv_f32_s8_12x32_avx512
MOA_ATTN_F16_DECLARE(moa_attn_scores_f32_f16_12x32_avx512, moa_attn_pv_f32_f16_12x32_avx512)
#define moa_attn_scores_f32_f16 moa_attn_scores_f32_f16_12x32_avx512
#define moa_attn_pv_f32_f16 moa_attn_pv_f32_f16_12x32_avx512
#elif MOA_ISA_AVX2
MOA_ATTN_DECLARE(moa_attn_scores_f32_6x16_avx2, moa_attn_pv_f32_6x16_avx2, moa_attn_max_f32_u16_avx2,
                 moa_attn_exp_f32_u16_avx2, moa_attn_scale_f32_u16_avx2, moa_vexp_f32_u16_avx2)
#define moa_attn_scores_f32 moa_attn_scores_f32_6x16_avx2
#define moa_attn_pv_f32 moa_attn_pv_f32_6x16_avx2
#define moa_attn_max_f32 moa_attn_max_f32_u16_avx2
#define moa_attn_exp_f32 moa_attn_exp_f32_u16_avx2
#define moa_attn_scale_f32 moa_attn_scale_f32_u16_avx2
#define moa_vexp_f32 moa_vexp_f32_u16_avx2
MOA_ATTN_S8_DECLARE(moa_attn_scores_f32_s8_6x16_avx2, moa_attn_pv_f32_s8_6x16_avx2)
#define moa_attn_scores_f32_s8 moa_attn_scores_f32_s8_6x16_avx2
#define moa_attn_pv_f32_s8 moa_attn_pv_f32_s8_6x16_avx2
MOA_ATTN_F16_DECLARE(moa_attn_scores_f32_f16_6x16_avx2, moa_attn_pv_f32_f16_6x16_avx2)
#define moa_attn_scores_f32_f16 moa_attn_scores_f32_f16_6x16_avx2
#define moa_attn_pv_f32_f16 moa_attn_pv_f32_f16_6x16_avx2
#elif MOA_ISA_NEON
MOA_ATTN_DECLARE(moa_attn_scores_f32_5x16_neon, moa_attn_pv_f32_5x16_neon, moa_attn_max_f32_u16_neon,
                 moa_attn_exp_f32_u8_neon, moa_attn_scale_f32_u16_neon, moa_vexp_f32_u8_neon)
#define moa_attn_scores_f32 moa_attn_scores_f32_5x16_neon
#define moa_attn_pv_f32 moa_attn_pv_f32_5x16_neon
#define moa_attn_max_f32 moa_attn_max_f32_u16_neon
#define moa_attn_exp_f32 moa_attn_exp_f32_u8_neon
#define moa_attn_scale_f32 moa_attn_scale_f32_u16_neon
#define moa_vexp_f32 moa_vexp_f32_u8_neon
MOA_ATTN_S8_DECLARE(moa_attn_scores_f32_s8_5x16_neon, moa_attn_pv_f32_s8_5x16_neon)
#define moa_attn_scores_f32_s8 moa_attn_scores_f32_s8_5x16_neon
#define moa_attn_pv_f32_s8 moa_attn_pv_f32_s8_5x16_neon
MOA_ATTN_F16_DECLARE(moa_attn_scores_f32_f16_5x16_neon, moa_attn_pv_f32_f16_5x16_neon)
#define moa_attn_scores_f32_f16 moa_attn_scores_f32_f16_5x16_neon
#define moa_attn_pv_f32_f16 moa_attn_pv_f32_f16_5x16_neon
#elif MOA_ISA_RVV
MOA_ATTN_DECLARE(moa_attn_scores_f32_4xm4_rvv, moa_attn_pv_f32_4xm4_rvv, moa_attn_max_f32_um8_rvv,
                 moa_attn_exp_f32_um2_rvv, moa_attn_scale_f32_um8_rvv, moa_vexp_f32_um2_rvv)
#define moa_attn_scores_f32 moa_attn_scores_f32_4xm4_rvv
#define moa_attn_pv_f32 moa_attn_pv_f32_4xm4_rvv
#define moa_attn_max_f32 moa_attn_max_f32_um8_rvv
#define moa_attn_exp_f32 moa_attn_exp_f32_um2_rvv
#define moa_attn_scale_f32 moa_attn_scale_f32_um8_rvv
#define moa_vexp_f32 moa_vexp_f32_um2_rvv
MOA_ATTN_S8_DECLARE(moa_attn_scores_f32_s8_4xm4_rvv, moa_attn_pv_f32_s8_4xm4_rvv)
#define moa_attn_scores_f32_s8 moa_attn_scores_f32_s8_4xm4_rvv
#define moa_attn_pv_f32_s8 moa_attn_pv_f32_s8_4xm4_rvv
MOA_ATTN_F16_DECLARE(moa_attn_scores_f32_f16_4xm4_rvv, moa_attn_pv_f32_f16_4xm4_rvv)
#define moa_attn_scores_f32_f16 moa_attn_scores_f32_f16_4xm4_rvv
#define moa_attn_pv_f32_f16 moa_attn_pv_f32_f16_4xm4_rvv
#elif MOA_ISA_HELIUM /* over an int8 or float16 cache, the scalar kernels */
MOA_ATTN_DECLARE(moa_attn_scores_f32_3x8_helium, moa_attn_pv_f32_3x8_helium, moa_attn_max_f32_u4_helium,
                 moa_attn_exp_f32_u4_helium, moa_attn_scale_f32_u4_helium, moa_vexp_f32_u4_helium)
#define moa_attn_scores_f32 moa_attn_scores_f32_3x8_helium
#define moa_attn_pv_f32 moa_attn_pv_f32_3x8_helium
#define moa_attn_max_f32 moa_attn_max_f32_u4_helium
#define moa_attn_exp_f32 moa_attn_exp_f32_u4_helium
#define moa_attn_scale_f32 moa_attn_scale_f32_u4_helium
#define moa_vexp_f32 moa_vexp_f32_u4_helium
#define moa_attn_scores_f32_s8 moa_attn_scores_f32_s8_1x1_scalar
#define moa_attn_pv_f32_s8 moa_attn_pv_f32_s8_1x1_scalar
#define moa_attn_scores_f32_f16 moa_attn_scores_f32_f16_1x1_scalar
#define moa_attn_pv_f32_f16 moa_attn_pv_f32_f16_1x1_scalar
#else
#define moa_attn_scores_f32 moa_attn_scores_f32_1x1_scalar
#define moa_attn_pv_f32 moa_attn_pv_f32_1x1_scalar
#define moa_attn_max_f32 moa_attn_max_f32_u1_scalar
#define moa_attn_exp_f32 moa_attn_exp_f32_u1_scalar
#define moa_attn_scale_f32 moa_attn_scale_f32_u1_scalar
#define moa_vexp_f32 moa_vexp_f32_u1_scalar
#define moa_attn_scores_f32_s8 moa_attn_scores_f32_s8_1x1_scalar
#define moa_attn_pv_f32_s8 moa_attn_pv_f32_s8_1x1_scalar
#define moa_attn_scores_f32_f16 moa_attn_scores_f32_f16_1x1_scalar
#define moa_attn_pv_f32_f16 moa_attn_pv_f32_f16_1x1_scalar
#endif

/* A row's running statistics after a score tile whose row maximum, with the running one, is
 * m_new (not -inf) and whose exps e^(s - m_new) sum to tile_sum: the factor alpha (set to 1 by
 * the caller) that rescales what earlier key tiles summed, when the maximum moved, then m and l.
 * Every ISA's softmax step ends with it, so all give the same bits. */
static inline void moa_attn_row_statistics(float m_new, float tile_sum, float *m, float *l, float *alpha)
{
    if (m_new != *m && *m != -INFINITY) { /* rescale what the earlier key tiles summed */
        *alpha = moa_expf(*m - m_new);
    }
    *m = m_new;
    *l = *l * *alpha + tile_sum;
}

/* The online-softmax step of a score tile (its contract is below), composed of a row-max and an
 * exp kernel: the scalar reference passes the scalar ones, NEON and RVV their own (AVX-512 and
 * AVX2 have a kernel of their own that interleaves four rows, so the max, its reduction and
 * the exp chains of four rows overlap). Inlined, the two kernel pointers are constants. */
static inline void moa_attn_softmax_f32_composed(size_t rows, size_t cols, float *s, ptrdiff_t lds, float *m,
                                                 float *l, float *alpha,
                                                 float (*row_max)(size_t n, const float *x),
                                                 float (*exp_in_place)(size_t n, float *x, float m))
{
    size_t r, c;
    for (r = 0; r < rows; r++) {
        float *const p = s + (ptrdiff_t)r * lds;
        const float tile_max = row_max(cols, p);
        const float m_new = !(tile_max <= m[r]) ? tile_max : m[r]; /* a NaN wins, so NaN propagates */
        alpha[r] = 1.0f;
        if (m_new == -INFINITY) { /* every key so far hidden: nothing to add */
            for (c = 0; c < cols; c++) {
                p[c] = 0;
            }
            continue;
        }
        moa_attn_row_statistics(m_new, exp_in_place(cols, p, m_new), &m[r], &l[r], &alpha[r]);
    }
}

void moa_attn_softmax_f32_1x1_scalar(size_t rows, size_t cols, float *s, ptrdiff_t lds, float *m, float *l,
                                     float *alpha);
#if MOA_ISA_AVX512
void moa_attn_softmax_f32_4x32_avx512(size_t rows, size_t cols, float *s, ptrdiff_t lds, float *m, float *l,
                                      float *alpha);
#define moa_attn_softmax_f32 moa_attn_softmax_f32_4x32_avx512
#elif MOA_ISA_AVX2
void moa_attn_softmax_f32_4x8_avx2(size_t rows, size_t cols, float *s, ptrdiff_t lds, float *m, float *l,
                                   float *alpha);
#define moa_attn_softmax_f32 moa_attn_softmax_f32_4x8_avx2
#else
static inline void moa_attn_softmax_f32_rows(size_t rows, size_t cols, float *s, ptrdiff_t lds, float *m, float *l,
                                             float *alpha)
{
    moa_attn_softmax_f32_composed(rows, cols, s, lds, m, l, alpha, moa_attn_max_f32, moa_attn_exp_f32);
}
#define moa_attn_softmax_f32 moa_attn_softmax_f32_rows
#endif

/* What the unsuffixed names do, for every variant:
 *
 * moa_attn_scores_f32: s[r * lds + c] = scale * sum_{j < depth} q[r * ldq + j] * k[c * ldk + j]
 *     for r < rows, c < cols. s must not overlap q or k.
 * moa_attn_pv_f32: acc[r * lda + e] += sum_{c < cols} p[r * ldp + c] * v[c * ldv + e]
 *     for r < rows, e < dv. acc must not overlap p or v.
 * moa_attn_max_f32: the largest of x[0..n); NaN when any x is NaN; -INFINITY when n == 0.
 * moa_attn_exp_f32: x[c] = exp(x[c] - m) in place; returns the sum of the new x (float).
 *     Call it with m = the row maximum (finite): every x[c] - m <= 0.
 * moa_attn_scale_f32: y[c] = alpha * x[c]; y may be x.
 * moa_vexp_f32: y[c] = exp(x[c]); y may be x.
 * moa_attn_softmax_f32: for each row r < rows of s (lds apart, cols entries), with the running
 *     max m[r] (-INFINITY before the first tile) and sum l[r]: m_new = max(m[r], max_c s) (NaN
 *     wins); if m_new is -INFINITY the row's s become 0 and alpha[r] = 1; else alpha[r] =
 *     moa_expf(m[r] - m_new) when m[r] is finite and differs (else 1), s[c] = exp(s[c] - m_new),
 *     l[r] = l[r] * alpha[r] + sum_c s[c] and m[r] = m_new. The caller rescales its accumulator
 *     rows by alpha[r] (skipping alpha == 1).
 *
 * Over an int8 cache (k, v int8_t rows, ldk/ldv in elements; one float scale per row):
 * moa_attn_scores_f32_s8: s[r * lds + c] = (scale * k_scale[c]) * sum_{j < depth} q[r * ldq + j] * k[c * ldk + j]
 *     (each int8 converted to float exactly, the sum in float).
 * moa_attn_pv_f32_s8: acc[r * lda + e] += sum_{c < cols} (p[r * ldp + c] * v_scale[c]) * v[c * ldv + e].
 * moa_attn_quantize_s8: one row of n floats into the cache: scale = max_j |x[j]| / 127 and
 *     q[j] = round(x[j] / scale) (to nearest, ties to even: lrintf in the default rounding
 *     mode), so |q| <= 127 and q * scale is x within scale / 2. An all-zero row gives scale 0
 *     and q 0; a row holding NaN or an infinity gives scale NaN or inf and q 0, so whatever
 *     reads it gets NaN, never a silent finite value.
 *
 * Over a float16 cache (k, v uint16_t rows of IEEE halves, ldk/ldv in elements; no scale):
 * moa_attn_scores_f32_f16: s[r * lds + c] = scale * sum_{j < depth} q[r * ldq + j] * f32(k[c * ldk + j])
 *     (each half widened to float exactly: F16C vcvtph2ps on x86, fcvtl on NEON, integer lanes
 *     (moa/half_rvv.h) on RVV, moa/half.h in the scalar reference; the sum in float).
 * moa_attn_pv_f32_f16: acc[r * lda + e] += sum_{c < cols} p[r * ldp + c] * f32(v[c * ldv + e]).
 * moa_attn_round_f16: n floats into the cache as halves, each rounded to nearest, ties to even
 *     (moa/half.h): |x| >= 65520 becomes an infinity of its sign, |x| < 2^-14 a subnormal half
 *     (or zero), NaN stays NaN; what attention reads is then exactly that half. */

/* One row of new keys or values written to an int8 cache (the contract above). */
void moa_attn_quantize_s8(size_t n, const float *x, int8_t *q, float *scale);
/* n new keys or values (whole rows) written to a float16 cache (the contract above). */
void moa_attn_round_f16(size_t n, const float *x, uint16_t *h);

#endif
