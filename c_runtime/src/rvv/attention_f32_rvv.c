/* RISC-V vector 1.0 attention micro-kernels (moa/attention.h), written once for any VLEN:
 * every loop takes vl from vsetvl, so a wider machine does the same work in fewer steps.
 *   scores 4xm4: 4 query rows x vl keys (LMUL 4) per tile; for each depth j one strided load
 *                of K's column j over the tile's keys (vlse32) and 4 vfmacc.vf with q[r][j]:
 *                no horizontal sums;
 *   pv 4xm4:     4 rows x vl columns of the accumulator (LMUL 4) stay in registers over all keys;
 *   exp, vexp:   LMUL 2 (the polynomial keeps ~10 values live); max, scale: LMUL 8;
 *   over an int8 cache (_s8): the same tiles, int8 loaded at e8m1 and widened in registers;
 *   over a float16 cache (_f16): the same again, halves loaded at e16m2 and widened in integer
 *                lanes (moa/half_rvv.h: the boards' cores have no Zvfhmin conversion).
 * vfmax/vfmin return the non-NaN operand (IEEE maximumNumber), so max tracks NaN itself and
 * exp clamps by merges, which keep a NaN. */
#include "moa/isa.h"

#if MOA_ISA_RVV
#include <math.h>
#include <riscv_vector.h>

#include "moa/attention.h"
#include "moa/half_rvv.h"

#define INLINE static inline __attribute__((always_inline))

INLINE vfloat32m2_t exp_ps(vfloat32m2_t x, size_t vl)
{
    const vbool16_t under = __riscv_vmflt_vf_f32m2_b16(x, MOA_EXPF_LO, vl); /* NaN: no */
    const vbool16_t over = __riscv_vmfgt_vf_f32m2_b16(x, MOA_EXPF_HI, vl);
    vfloat32m2_t t, n, r, p;
    vuint32m2_t bits;
    x = __riscv_vfmerge_vfm_f32m2(x, MOA_EXPF_HI, over, vl);
    x = __riscv_vfmerge_vfm_f32m2(x, MOA_EXPF_LO, under, vl);
    t = __riscv_vfmacc_vf_f32m2(__riscv_vfmv_v_f_f32m2(MOA_EXPF_ROUND, vl), MOA_EXPF_LOG2E, x, vl);
    n = __riscv_vfsub_vf_f32m2(t, MOA_EXPF_ROUND, vl);
    r = __riscv_vfnmsac_vf_f32m2(x, MOA_EXPF_LN2_HI, n, vl);
    r = __riscv_vfnmsac_vf_f32m2(r, MOA_EXPF_LN2_LO, n, vl);
    p = __riscv_vfmacc_vf_f32m2(__riscv_vfmv_v_f_f32m2(MOA_EXPF_P1, vl), MOA_EXPF_P0, r, vl);
    p = __riscv_vfmadd_vv_f32m2(p, r, __riscv_vfmv_v_f_f32m2(MOA_EXPF_P2, vl), vl);
    p = __riscv_vfmadd_vv_f32m2(p, r, __riscv_vfmv_v_f_f32m2(MOA_EXPF_P3, vl), vl);
    p = __riscv_vfmadd_vv_f32m2(p, r, __riscv_vfmv_v_f_f32m2(MOA_EXPF_P4, vl), vl);
    p = __riscv_vfmadd_vv_f32m2(p, r, __riscv_vfmv_v_f_f32m2(MOA_EXPF_P5, vl), vl);
    p = __riscv_vfadd_vf_f32m2(__riscv_vfmacc_vv_f32m2(r, p, __riscv_vfmul_vv_f32m2(r, r, vl), vl), 1.0f, vl);
    bits = __riscv_vsll_vx_u32m2(__riscv_vreinterpret_v_f32m2_u32m2(t), 23, vl);
    bits = __riscv_vadd_vx_u32m2(bits, 127u << 23, vl);
    p = __riscv_vfmul_vv_f32m2(p, __riscv_vreinterpret_v_u32m2_f32m2(bits), vl);
    return __riscv_vfmerge_vfm_f32m2(p, 0.0f, under, vl);
}

/* s[0:mr][c:c+vl] = scale * q[0:mr] . k[c:c+vl]; mr is 1 or 4 (sizeless RVV types make no arrays) */
INLINE void scores_tile(int mr, size_t vl, size_t depth, float scale, const float *q, ptrdiff_t ldq, const float *k,
                        ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    vfloat32m4_t a0 = __riscv_vfmv_v_f_f32m4(0.0f, vl), a1 = a0, a2 = a0, a3 = a0;
    size_t j;
    for (j = 0; j < depth; j++) {
        const vfloat32m4_t column = __riscv_vlse32_v_f32m4(k + j, ldk * (ptrdiff_t)sizeof(float), vl);
        a0 = __riscv_vfmacc_vf_f32m4(a0, q[j], column, vl);
        if (mr == 4) {
            a1 = __riscv_vfmacc_vf_f32m4(a1, q[ldq + (ptrdiff_t)j], column, vl);
            a2 = __riscv_vfmacc_vf_f32m4(a2, q[2 * ldq + (ptrdiff_t)j], column, vl);
            a3 = __riscv_vfmacc_vf_f32m4(a3, q[3 * ldq + (ptrdiff_t)j], column, vl);
        }
    }
    __riscv_vse32_v_f32m4(s, __riscv_vfmul_vf_f32m4(a0, scale, vl), vl);
    if (mr == 4) {
        __riscv_vse32_v_f32m4(s + lds, __riscv_vfmul_vf_f32m4(a1, scale, vl), vl);
        __riscv_vse32_v_f32m4(s + 2 * lds, __riscv_vfmul_vf_f32m4(a2, scale, vl), vl);
        __riscv_vse32_v_f32m4(s + 3 * lds, __riscv_vfmul_vf_f32m4(a3, scale, vl), vl);
    }
}

void moa_attn_scores_f32_4xm4_rvv(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                  ptrdiff_t ldq, const float *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    size_t c, vl, r;
    for (c = 0; c < cols; c += vl) {
        const float *kc = k + (ptrdiff_t)c * ldk;
        vl = __riscv_vsetvl_e32m4(cols - c);
        for (r = 0; r + 4 <= rows; r += 4) {
            scores_tile(4, vl, depth, scale, q + (ptrdiff_t)r * ldq, ldq, kc, ldk, s + (ptrdiff_t)r * lds + (ptrdiff_t)c, lds);
        }
        for (; r < rows; r++) {
            scores_tile(1, vl, depth, scale, q + (ptrdiff_t)r * ldq, ldq, kc, ldk, s + (ptrdiff_t)r * lds + (ptrdiff_t)c, lds);
        }
    }
}

/* acc[0:mr][0:vl] += p[0:mr][0:cols] v[0:cols][0:vl]; mr is 1 or 4 */
INLINE void pv_tile(int mr, size_t vl, size_t cols, const float *p, ptrdiff_t ldp, const float *v, ptrdiff_t ldv,
                    float *acc, ptrdiff_t lda)
{
    vfloat32m4_t a0 = __riscv_vle32_v_f32m4(acc, vl), a1 = a0, a2 = a0, a3 = a0;
    size_t c;
    if (mr == 4) {
        a1 = __riscv_vle32_v_f32m4(acc + lda, vl);
        a2 = __riscv_vle32_v_f32m4(acc + 2 * lda, vl);
        a3 = __riscv_vle32_v_f32m4(acc + 3 * lda, vl);
    }
    for (c = 0; c < cols; c++) {
        const vfloat32m4_t w = __riscv_vle32_v_f32m4(v + (ptrdiff_t)c * ldv, vl);
        a0 = __riscv_vfmacc_vf_f32m4(a0, p[c], w, vl);
        if (mr == 4) {
            a1 = __riscv_vfmacc_vf_f32m4(a1, p[ldp + (ptrdiff_t)c], w, vl);
            a2 = __riscv_vfmacc_vf_f32m4(a2, p[2 * ldp + (ptrdiff_t)c], w, vl);
            a3 = __riscv_vfmacc_vf_f32m4(a3, p[3 * ldp + (ptrdiff_t)c], w, vl);
        }
    }
    __riscv_vse32_v_f32m4(acc, a0, vl);
    if (mr == 4) {
        __riscv_vse32_v_f32m4(acc + lda, a1, vl);
        __riscv_vse32_v_f32m4(acc + 2 * lda, a2, vl);
        __riscv_vse32_v_f32m4(acc + 3 * lda, a3, vl);
    }
}

void moa_attn_pv_f32_4xm4_rvv(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const float *v,
                              ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    size_t e, vl, r;
    for (e = 0; e < dv; e += vl) {
        vl = __riscv_vsetvl_e32m4(dv - e);
        for (r = 0; r + 4 <= rows; r += 4) {
            pv_tile(4, vl, cols, p + (ptrdiff_t)r * ldp, ldp, v + e, ldv, acc + (ptrdiff_t)r * lda + (ptrdiff_t)e, lda);
        }
        for (; r < rows; r++) {
            pv_tile(1, vl, cols, p + (ptrdiff_t)r * ldp, ldp, v + e, ldv, acc + (ptrdiff_t)r * lda + (ptrdiff_t)e, lda);
        }
    }
}

/* --- over an int8 cache: the same tiles; int8 loaded at e8m1 (the e32m4 tile's vl), widened by
 * one vsext.vf4 and converted (vfcvt.f.x) in registers --- */

INLINE vfloat32m4_t widen_s8(vint8m1_t x, size_t vl)
{
    return __riscv_vfcvt_f_x_v_f32m4(__riscv_vsext_vf4_i32m4(x, vl), vl);
}

/* s[0:mr][c:c+vl] = (scale k_scale[c:c+vl]) * q[0:mr] . k[c:c+vl]; K's column j one strided byte load */
INLINE void scores_tile_s8(int mr, size_t vl, size_t depth, float scale, const float *q, ptrdiff_t ldq,
                           const int8_t *k, ptrdiff_t ldk, const float *k_scale, float *s, ptrdiff_t lds)
{
    vfloat32m4_t a0 = __riscv_vfmv_v_f_f32m4(0.0f, vl), a1 = a0, a2 = a0, a3 = a0, column_scale;
    size_t j;
    for (j = 0; j < depth; j++) {
        const vfloat32m4_t column = widen_s8(__riscv_vlse8_v_i8m1(k + j, ldk, vl), vl);
        a0 = __riscv_vfmacc_vf_f32m4(a0, q[j], column, vl);
        if (mr == 4) {
            a1 = __riscv_vfmacc_vf_f32m4(a1, q[ldq + (ptrdiff_t)j], column, vl);
            a2 = __riscv_vfmacc_vf_f32m4(a2, q[2 * ldq + (ptrdiff_t)j], column, vl);
            a3 = __riscv_vfmacc_vf_f32m4(a3, q[3 * ldq + (ptrdiff_t)j], column, vl);
        }
    }
    column_scale = __riscv_vfmul_vf_f32m4(__riscv_vle32_v_f32m4(k_scale, vl), scale, vl);
    __riscv_vse32_v_f32m4(s, __riscv_vfmul_vv_f32m4(a0, column_scale, vl), vl);
    if (mr == 4) {
        __riscv_vse32_v_f32m4(s + lds, __riscv_vfmul_vv_f32m4(a1, column_scale, vl), vl);
        __riscv_vse32_v_f32m4(s + 2 * lds, __riscv_vfmul_vv_f32m4(a2, column_scale, vl), vl);
        __riscv_vse32_v_f32m4(s + 3 * lds, __riscv_vfmul_vv_f32m4(a3, column_scale, vl), vl);
    }
}

void moa_attn_scores_f32_s8_4xm4_rvv(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                     ptrdiff_t ldq, const int8_t *k, ptrdiff_t ldk, const float *k_scale, float *s,
                                     ptrdiff_t lds)
{
    size_t c, vl, r;
    for (c = 0; c < cols; c += vl) {
        const int8_t *kc = k + (ptrdiff_t)c * ldk;
        vl = __riscv_vsetvl_e32m4(cols - c);
        for (r = 0; r + 4 <= rows; r += 4) {
            scores_tile_s8(4, vl, depth, scale, q + (ptrdiff_t)r * ldq, ldq, kc, ldk, k_scale + c,
                           s + (ptrdiff_t)r * lds + (ptrdiff_t)c, lds);
        }
        for (; r < rows; r++) {
            scores_tile_s8(1, vl, depth, scale, q + (ptrdiff_t)r * ldq, ldq, kc, ldk, k_scale + c,
                           s + (ptrdiff_t)r * lds + (ptrdiff_t)c, lds);
        }
    }
}

/* acc[0:mr][0:vl] += (p v_scale)[0:mr][0:cols] v[0:cols][0:vl]; mr is 1 or 4 */
INLINE void pv_tile_s8(int mr, size_t vl, size_t cols, const float *p, ptrdiff_t ldp, const int8_t *v,
                       ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    vfloat32m4_t a0 = __riscv_vle32_v_f32m4(acc, vl), a1 = a0, a2 = a0, a3 = a0;
    size_t c;
    if (mr == 4) {
        a1 = __riscv_vle32_v_f32m4(acc + lda, vl);
        a2 = __riscv_vle32_v_f32m4(acc + 2 * lda, vl);
        a3 = __riscv_vle32_v_f32m4(acc + 3 * lda, vl);
    }
    for (c = 0; c < cols; c++) {
        const vfloat32m4_t w = widen_s8(__riscv_vle8_v_i8m1(v + (ptrdiff_t)c * ldv, vl), vl);
        a0 = __riscv_vfmacc_vf_f32m4(a0, p[c] * v_scale[c], w, vl);
        if (mr == 4) {
            a1 = __riscv_vfmacc_vf_f32m4(a1, p[ldp + (ptrdiff_t)c] * v_scale[c], w, vl);
            a2 = __riscv_vfmacc_vf_f32m4(a2, p[2 * ldp + (ptrdiff_t)c] * v_scale[c], w, vl);
            a3 = __riscv_vfmacc_vf_f32m4(a3, p[3 * ldp + (ptrdiff_t)c] * v_scale[c], w, vl);
        }
    }
    __riscv_vse32_v_f32m4(acc, a0, vl);
    if (mr == 4) {
        __riscv_vse32_v_f32m4(acc + lda, a1, vl);
        __riscv_vse32_v_f32m4(acc + 2 * lda, a2, vl);
        __riscv_vse32_v_f32m4(acc + 3 * lda, a3, vl);
    }
}

void moa_attn_pv_f32_s8_4xm4_rvv(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                 const int8_t *v, ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    size_t e, vl, r;
    for (e = 0; e < dv; e += vl) {
        vl = __riscv_vsetvl_e32m4(dv - e);
        for (r = 0; r + 4 <= rows; r += 4) {
            pv_tile_s8(4, vl, cols, p + (ptrdiff_t)r * ldp, ldp, v + e, ldv, v_scale,
                       acc + (ptrdiff_t)r * lda + (ptrdiff_t)e, lda);
        }
        for (; r < rows; r++) {
            pv_tile_s8(1, vl, cols, p + (ptrdiff_t)r * ldp, ldp, v + e, ldv, v_scale,
                       acc + (ptrdiff_t)r * lda + (ptrdiff_t)e, lda);
        }
    }
}

/* --- over a float16 cache: the same tiles; halves loaded at e16m2 (the e32m4 tile's vl) and widened
 * to float32 in registers by moa/half_rvv.h --- */

/* s[0:mr][c:c+vl] = scale * q[0:mr] . k[c:c+vl]; K's column j one strided load of halves */
INLINE void scores_tile_f16(int mr, size_t vl, size_t depth, float scale, const float *q, ptrdiff_t ldq,
                            const uint16_t *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    vfloat32m4_t a0 = __riscv_vfmv_v_f_f32m4(0.0f, vl), a1 = a0, a2 = a0, a3 = a0;
    size_t j;
    for (j = 0; j < depth; j++) {
        const vfloat32m4_t column = moa_rvv_f16_bits_to_f32(
            __riscv_vlse16_v_u16m2(k + j, ldk * (ptrdiff_t)sizeof(uint16_t), vl), vl);
        a0 = __riscv_vfmacc_vf_f32m4(a0, q[j], column, vl);
        if (mr == 4) {
            a1 = __riscv_vfmacc_vf_f32m4(a1, q[ldq + (ptrdiff_t)j], column, vl);
            a2 = __riscv_vfmacc_vf_f32m4(a2, q[2 * ldq + (ptrdiff_t)j], column, vl);
            a3 = __riscv_vfmacc_vf_f32m4(a3, q[3 * ldq + (ptrdiff_t)j], column, vl);
        }
    }
    __riscv_vse32_v_f32m4(s, __riscv_vfmul_vf_f32m4(a0, scale, vl), vl);
    if (mr == 4) {
        __riscv_vse32_v_f32m4(s + lds, __riscv_vfmul_vf_f32m4(a1, scale, vl), vl);
        __riscv_vse32_v_f32m4(s + 2 * lds, __riscv_vfmul_vf_f32m4(a2, scale, vl), vl);
        __riscv_vse32_v_f32m4(s + 3 * lds, __riscv_vfmul_vf_f32m4(a3, scale, vl), vl);
    }
}

void moa_attn_scores_f32_f16_4xm4_rvv(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                      ptrdiff_t ldq, const uint16_t *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    size_t c, vl, r;
    for (c = 0; c < cols; c += vl) {
        const uint16_t *kc = k + (ptrdiff_t)c * ldk;
        vl = __riscv_vsetvl_e32m4(cols - c);
        for (r = 0; r + 4 <= rows; r += 4) {
            scores_tile_f16(4, vl, depth, scale, q + (ptrdiff_t)r * ldq, ldq, kc, ldk,
                            s + (ptrdiff_t)r * lds + (ptrdiff_t)c, lds);
        }
        for (; r < rows; r++) {
            scores_tile_f16(1, vl, depth, scale, q + (ptrdiff_t)r * ldq, ldq, kc, ldk,
                            s + (ptrdiff_t)r * lds + (ptrdiff_t)c, lds);
        }
    }
}

/* acc[0:mr][0:vl] += p[0:mr][0:cols] v[0:cols][0:vl], V's rows halves; mr is 1 or 4 */
INLINE void pv_tile_f16(int mr, size_t vl, size_t cols, const float *p, ptrdiff_t ldp, const uint16_t *v,
                        ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    vfloat32m4_t a0 = __riscv_vle32_v_f32m4(acc, vl), a1 = a0, a2 = a0, a3 = a0;
    size_t c;
    if (mr == 4) {
        a1 = __riscv_vle32_v_f32m4(acc + lda, vl);
        a2 = __riscv_vle32_v_f32m4(acc + 2 * lda, vl);
        a3 = __riscv_vle32_v_f32m4(acc + 3 * lda, vl);
    }
    for (c = 0; c < cols; c++) {
        const vfloat32m4_t w = moa_rvv_f16_to_f32(v + (ptrdiff_t)c * ldv, vl);
        a0 = __riscv_vfmacc_vf_f32m4(a0, p[c], w, vl);
        if (mr == 4) {
            a1 = __riscv_vfmacc_vf_f32m4(a1, p[ldp + (ptrdiff_t)c], w, vl);
            a2 = __riscv_vfmacc_vf_f32m4(a2, p[2 * ldp + (ptrdiff_t)c], w, vl);
            a3 = __riscv_vfmacc_vf_f32m4(a3, p[3 * ldp + (ptrdiff_t)c], w, vl);
        }
    }
    __riscv_vse32_v_f32m4(acc, a0, vl);
    if (mr == 4) {
        __riscv_vse32_v_f32m4(acc + lda, a1, vl);
        __riscv_vse32_v_f32m4(acc + 2 * lda, a2, vl);
        __riscv_vse32_v_f32m4(acc + 3 * lda, a3, vl);
    }
}

void moa_attn_pv_f32_f16_4xm4_rvv(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                  const uint16_t *v, ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    size_t e, vl, r;
    for (e = 0; e < dv; e += vl) {
        vl = __riscv_vsetvl_e32m4(dv - e);
        for (r = 0; r + 4 <= rows; r += 4) {
            pv_tile_f16(4, vl, cols, p + (ptrdiff_t)r * ldp, ldp, v + e, ldv, acc + (ptrdiff_t)r * lda + (ptrdiff_t)e, lda);
        }
        for (; r < rows; r++) {
            pv_tile_f16(1, vl, cols, p + (ptrdiff_t)r * ldp, ldp, v + e, ldv, acc + (ptrdiff_t)r * lda + (ptrdiff_t)e, lda);
        }
    }
}

float moa_attn_max_f32_um8_rvv(size_t n, const float *x)
{
    const size_t vlmax = __riscv_vsetvlmax_e32m8();
    vfloat32m8_t m = __riscv_vfmv_v_f_f32m8(-INFINITY, vlmax);
    size_t c, vl;
    for (c = 0; c < n; c += vl) {
        vfloat32m8_t x0;
        vl = __riscv_vsetvl_e32m8(n - c);
        x0 = __riscv_vle32_v_f32m8(x + c, vl);
        if (__riscv_vfirst_m_b4(__riscv_vmfne_vv_f32m8_b4(x0, x0, vl), vl) >= 0) {
            return NAN;
        }
        m = __riscv_vfmax_vv_f32m8_tu(m, m, x0, vl); /* tail undisturbed: lanes past vl keep their max */
    }
    return __riscv_vfmv_f_s_f32m1_f32(
        __riscv_vfredmax_vs_f32m8_f32m1(m, __riscv_vfmv_v_f_f32m1(-INFINITY, 1), vlmax));
}

float moa_attn_exp_f32_um2_rvv(size_t n, float *x, float m)
{
    const size_t vlmax = __riscv_vsetvlmax_e32m2();
    vfloat32m2_t sum = __riscv_vfmv_v_f_f32m2(0.0f, vlmax);
    size_t c, vl;
    for (c = 0; c < n; c += vl) {
        vfloat32m2_t e;
        vl = __riscv_vsetvl_e32m2(n - c);
        e = exp_ps(__riscv_vfsub_vf_f32m2(__riscv_vle32_v_f32m2(x + c, vl), m, vl), vl);
        __riscv_vse32_v_f32m2(x + c, e, vl);
        sum = __riscv_vfadd_vv_f32m2_tu(sum, sum, e, vl);
    }
    return __riscv_vfmv_f_s_f32m1_f32(
        __riscv_vfredusum_vs_f32m2_f32m1(sum, __riscv_vfmv_v_f_f32m1(0.0f, 1), vlmax));
}

void moa_attn_scale_f32_um8_rvv(size_t n, float alpha, const float *x, float *y)
{
    size_t c, vl;
    for (c = 0; c < n; c += vl) {
        vl = __riscv_vsetvl_e32m8(n - c);
        __riscv_vse32_v_f32m8(y + c, __riscv_vfmul_vf_f32m8(__riscv_vle32_v_f32m8(x + c, vl), alpha, vl), vl);
    }
}

void moa_vexp_f32_um2_rvv(size_t n, const float *x, float *y)
{
    size_t c, vl;
    for (c = 0; c < n; c += vl) {
        vl = __riscv_vsetvl_e32m2(n - c);
        __riscv_vse32_v_f32m2(y + c, exp_ps(__riscv_vle32_v_f32m2(x + c, vl), vl), vl);
    }
}

#else
typedef int moa_attention_f32_rvv_unused; /* ISO C: a translation unit is not empty */
#endif
