/* Arm Helium (MVE) attention micro-kernels (moa/attention.h), 4 floats per q register, 8 q:
 *   scores 3x8: a GEMM tile over a packed, transposed panel of 8 keys: 3 query rows x 2 q of
 *               accumulators and the panel row's 2 q; each Q[r][j] a scalar in a general
 *               register (MVE's VFMA takes one);
 *   pv 3x8:     3 rows x 8 columns of the accumulator in 6 q over all keys, each key a row of V
 *               (2 q) times the weights P[r][c] as scalars;
 *   max, exp, scale, vexp: 4 floats per step, the tail predicated (VCTP), never read or
 *               written past n. The int8 and float16 caches use the scalar kernels.
 * VMAXNM/VMINNM drop a NaN (they are IEEE maxNum/minNum): max and exp carry NaN through
 * themselves, as the other variants do. MVE's float arithmetic flushes subnormals to zero (it
 * runs with the standard FPSCR value), so an exp under FLT_MIN is 0 here: e^x for x within
 * 1e-5 of ln(FLT_MIN), which no softmax weight notices. */
#include "moa/isa.h"

#if MOA_ISA_HELIUM
#include <arm_mve.h>
#include <math.h>

#include "moa/attention.h"

#define INLINE static inline __attribute__((always_inline))

/* The shared exp (moa/attention.h); a NaN lane stays NaN. `clamp_hi` is 0 where every x <= 0. */
INLINE float32x4_t exp_ps_(float32x4_t x, int clamp_hi)
{
    const mve_pred16_t under = vcmpltq_n_f32(x, MOA_EXPF_LO), nan = vcmpneq_f32(x, x);
    float32x4_t y = x, t, n, r, p;
    int32x4_t bits;
    if (clamp_hi) {
        y = vminnmq_f32(y, vdupq_n_f32(MOA_EXPF_HI));
    }
    y = vmaxnmq_f32(y, vdupq_n_f32(MOA_EXPF_LO));
    t = vfmaq_n_f32(vdupq_n_f32(MOA_EXPF_ROUND), y, MOA_EXPF_LOG2E);
    n = vsubq_n_f32(t, MOA_EXPF_ROUND);
    r = vfmsq_f32(y, n, vdupq_n_f32(MOA_EXPF_LN2_HI));
    r = vfmsq_f32(r, n, vdupq_n_f32(MOA_EXPF_LN2_LO));
    p = vfmaq_n_f32(vdupq_n_f32(MOA_EXPF_P1), r, MOA_EXPF_P0);
    p = vfmaq_f32(vdupq_n_f32(MOA_EXPF_P2), p, r);
    p = vfmaq_f32(vdupq_n_f32(MOA_EXPF_P3), p, r);
    p = vfmaq_f32(vdupq_n_f32(MOA_EXPF_P4), p, r);
    p = vfmaq_f32(vdupq_n_f32(MOA_EXPF_P5), p, r);
    p = vaddq_n_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), 1.0f);
    bits = vaddq_s32(vshlq_n_s32(vreinterpretq_s32_f32(t), 23), vdupq_n_s32(127 << 23));
    p = vmulq_f32(p, vreinterpretq_f32_s32(bits));
    return vpselq_f32(x, vpselq_f32(vdupq_n_f32(0.0f), p, under), nan);
}

INLINE float hsum(float32x4_t x)
{
    return (vgetq_lane_f32(x, 0) + vgetq_lane_f32(x, 1)) + (vgetq_lane_f32(x, 2) + vgetq_lane_f32(x, 3));
}

/* n <= 4 floats at x as a vector, the lanes past n `fill`. */
INLINE float32x4_t load_tail(const float *x, size_t n, float fill)
{
    const mve_pred16_t keep = vctp32q((uint32_t)n);
    return vpselq_f32(vldrwq_z_f32(x, keep), vdupq_n_f32(fill), keep);
}

/* One step of a 3 x 8 tile: acc[i] += (r0, r1) * x[i * ldx] for i < mr, x's values scalars. */
INLINE void tile_step(int mr, float32x4_t acc[][2], float32x4_t r0, float32x4_t r1, const float *x, ptrdiff_t ldx)
{
    int i;
#pragma GCC unroll 3
    for (i = 0; i < mr; i++) {
        acc[i][0] = vfmaq_n_f32(acc[i][0], r0, x[i * ldx]);
        acc[i][1] = vfmaq_n_f32(acc[i][1], r1, x[i * ldx]);
    }
}

/* --- scores: s = scale Q K^T as a register tile over a packed panel of K --- */

/* 8 keys packed, transposed, into a depth x 8 panel on the stack (KT_DEPTH x 8 floats = 4 KiB):
 * the panel then serves every query row, 3 at a time. It copies one small key tile inside the
 * kernel; it is not K^T (nor any n x n array) in memory. */
#define KT_DEPTH 128
#define KT_KEYS 8
#define SCORE_ROWS 3

/* s[0:mr][0:nc] = scale * q[0:mr][0:nj] kt[0:nj][0:8], plus s when `add`. */
INLINE void scores_tile(int mr, size_t nc, size_t nj, const float *q, ptrdiff_t ldq, const float *kt, float scale,
                        int add, float *s, ptrdiff_t lds)
{
    float32x4_t acc[SCORE_ROWS][2];
    size_t j;
    int i, v;
#pragma GCC unroll 3
    for (i = 0; i < mr; i++) {
        acc[i][0] = vdupq_n_f32(0.0f);
        acc[i][1] = vdupq_n_f32(0.0f);
    }
    for (j = 0; j < nj; j++) { /* the panel's row j times Q[i][j] */
        tile_step(mr, acc, vld1q_f32(kt + KT_KEYS * j), vld1q_f32(kt + KT_KEYS * j + 4), q + j, ldq);
    }
#pragma GCC unroll 3
    for (i = 0; i < mr; i++) {
#pragma GCC unroll 2
        for (v = 0; v < 2; v++) {
            float *at = s + i * lds + 4 * v;
            const mve_pred16_t keep = vctp32q((uint32_t)(nc > 4 * (size_t)v ? nc - 4 * (size_t)v : 0));
            const float32x4_t before = add ? vldrwq_z_f32(at, keep) : vdupq_n_f32(0.0f);
            vstrwq_p_f32(at, vfmaq_n_f32(before, acc[i][v], scale), keep);
        }
    }
}

void moa_attn_scores_f32_3x8_helium(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                    ptrdiff_t ldq, const float *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    float kt[KT_DEPTH * KT_KEYS];
    size_t c, j0, j, key, r;
    for (c = 0; c < cols; c += KT_KEYS) {
        const size_t nc = cols - c < KT_KEYS ? cols - c : KT_KEYS;
        j0 = 0;
        do { /* the depth in chunks of KT_DEPTH; depth 0 still writes s = 0 */
            const size_t nj = depth - j0 < KT_DEPTH ? depth - j0 : KT_DEPTH;
            for (j = 0; j < nj; j++) {
                for (key = 0; key < KT_KEYS; key++) {
                    kt[KT_KEYS * j + key] = key < nc ? k[(ptrdiff_t)(c + key) * ldk + (ptrdiff_t)(j0 + j)] : 0.0f;
                }
            }
            for (r = 0; r + SCORE_ROWS <= rows; r += SCORE_ROWS) {
                scores_tile(SCORE_ROWS, nc, nj, q + (ptrdiff_t)r * ldq + (ptrdiff_t)j0, ldq, kt, scale, j0 > 0,
                            s + (ptrdiff_t)r * lds + (ptrdiff_t)c, lds);
            }
            if (rows - r == 2) {
                scores_tile(2, nc, nj, q + (ptrdiff_t)r * ldq + (ptrdiff_t)j0, ldq, kt, scale, j0 > 0,
                            s + (ptrdiff_t)r * lds + (ptrdiff_t)c, lds);
            } else if (rows - r == 1) {
                scores_tile(1, nc, nj, q + (ptrdiff_t)r * ldq + (ptrdiff_t)j0, ldq, kt, scale, j0 > 0,
                            s + (ptrdiff_t)r * lds + (ptrdiff_t)c, lds);
            }
            j0 += nj;
        } while (j0 < depth);
    }
}

/* --- pv: acc += P V, a register tile of the accumulator over all keys --- */

#define PV_ROWS 3

/* acc[0:mr][0:nd] += p[0:mr][0:cols] v[0:cols][0:nd], nd <= 8. */
INLINE void pv_tile(int mr, size_t nd, size_t cols, const float *p, ptrdiff_t ldp, const float *v, ptrdiff_t ldv,
                    float *acc, ptrdiff_t lda)
{
    const mve_pred16_t keep0 = vctp32q((uint32_t)(nd < 4 ? nd : 4)), keep1 = vctp32q((uint32_t)(nd > 4 ? nd - 4 : 0));
    float32x4_t a[PV_ROWS][2];
    size_t c;
    int i;
#pragma GCC unroll 3
    for (i = 0; i < mr; i++) {
        a[i][0] = vldrwq_z_f32(acc + i * lda, keep0);
        a[i][1] = vldrwq_z_f32(acc + i * lda + 4, keep1);
    }
    for (c = 0; c < cols; c++) { /* V's row c times the weights P[i][c] */
        const float *v_row = v + (ptrdiff_t)c * ldv;
        tile_step(mr, a, vldrwq_z_f32(v_row, keep0), vldrwq_z_f32(v_row + 4, keep1), p + c, ldp);
    }
#pragma GCC unroll 3
    for (i = 0; i < mr; i++) {
        vstrwq_p_f32(acc + i * lda, a[i][0], keep0);
        vstrwq_p_f32(acc + i * lda + 4, a[i][1], keep1);
    }
}

void moa_attn_pv_f32_3x8_helium(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const float *v,
                                ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    size_t r, d;
    for (d = 0; d < dv; d += 8) {
        const size_t nd = dv - d < 8 ? dv - d : 8;
        for (r = 0; r + PV_ROWS <= rows; r += PV_ROWS) {
            pv_tile(PV_ROWS, nd, cols, p + (ptrdiff_t)r * ldp, ldp, v + d, ldv, acc + (ptrdiff_t)r * lda + d, lda);
        }
        if (rows - r == 2) {
            pv_tile(2, nd, cols, p + (ptrdiff_t)r * ldp, ldp, v + d, ldv, acc + (ptrdiff_t)r * lda + d, lda);
        } else if (rows - r == 1) {
            pv_tile(1, nd, cols, p + (ptrdiff_t)r * ldp, ldp, v + d, ldv, acc + (ptrdiff_t)r * lda + d, lda);
        }
    }
}

/* --- the row-wise kernels, 4 floats a step --- */

float moa_attn_max_f32_u4_helium(size_t n, const float *x)
{
    float32x4_t m = vdupq_n_f32(-INFINITY);
    mve_pred16_t unordered = 0;
    size_t c;
    for (c = 0; c < n; c += 4) {
        const float32x4_t xc = load_tail(x + c, n - c < 4 ? n - c : 4, -INFINITY);
        unordered |= vcmpneq_f32(xc, xc);
        m = vmaxnmq_f32(m, xc);
    }
    return unordered ? NAN : vmaxnmvq_f32(-INFINITY, m);
}

float moa_attn_exp_f32_u4_helium(size_t n, float *x, float m)
{
    float32x4_t sum = vdupq_n_f32(0.0f);
    size_t c;
    for (c = 0; c < n; c += 4) {
        const size_t left = n - c < 4 ? n - c : 4;
        const float32x4_t e = exp_ps_(vsubq_n_f32(load_tail(x + c, left, -INFINITY), m), 0); /* exp(-inf) = 0 */
        vstrwq_p_f32(x + c, e, vctp32q((uint32_t)left));
        sum = vaddq_f32(sum, e);
    }
    return hsum(sum);
}

void moa_attn_scale_f32_u4_helium(size_t n, float alpha, const float *x, float *y)
{
    size_t c;
    for (c = 0; c < n; c += 4) {
        const mve_pred16_t keep = vctp32q((uint32_t)(n - c < 4 ? n - c : 4));
        vstrwq_p_f32(y + c, vmulq_n_f32(vldrwq_z_f32(x + c, keep), alpha), keep);
    }
}

void moa_vexp_f32_u4_helium(size_t n, const float *x, float *y)
{
    size_t c;
    for (c = 0; c < n; c += 4) {
        const size_t left = n - c < 4 ? n - c : 4;
        vstrwq_p_f32(y + c, exp_ps_(load_tail(x + c, left, 0.0f), 1), vctp32q((uint32_t)left));
    }
}
#else
typedef int moa_attention_f32_helium_unused; /* ISO C: a translation unit is not empty */
#endif
