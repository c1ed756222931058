/* RISC-V vector 1.0 attention micro-kernels (moa/attention.h), written once for any VLEN:
 * every loop takes vl from vsetvl, so a wider machine does the same work in fewer steps.
 *   scores 4xm4: a register tile over a packed panel of vl keys (LMUL 4: 16 at VLEN 128, 32 at
 *                VLEN 256, at most KT_WIDTH): each depth j of the panel's keys is gathered once
 *                per call (one strided load, vlse) and stored as a contiguous panel row; then
 *                every 4 query rows take, per depth, one unit-stride load of that row and 4
 *                vfmacc.vf with q[r][j]: no horizontal sums, and no strided load per row tile;
 *   pv 4xm4:     4 rows x vl columns of the accumulator (LMUL 4) stay in registers over all
 *                keys, V's rows (already key-major) loaded unit-stride, 4 vfmacc.vf per key;
 *   exp, vexp:   LMUL 2 (the polynomial keeps ~10 values live); max, scale: LMUL 8;
 *   over an int8 cache (_s8) and a float16 cache (_f16): the same two tiles, each K or V element
 *                widened to float32 in registers as it is loaded (int8 at e8m1: vsext.vf4 and
 *                vfcvt, its row's scale on the key's column of scores or on P's weight; halves at
 *                e16m2 by moa/half_rvv.h: integer lanes, the boards' C908 having no Zvfhmin).
 *                The tiles are written once, the element type (enum element) a constant of the
 *                inlined body.
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

/* How K and V elements are stored; the tiles below take it as a constant (always inlined). */
enum element { F32, S8, F16 };

INLINE size_t element_size(enum element kind)
{
    return kind == F32 ? sizeof(float) : kind == S8 ? sizeof(int8_t) : sizeof(uint16_t);
}

INLINE const void *element_at(enum element kind, const void *x, ptrdiff_t i)
{
    return (const char *)x + i * (ptrdiff_t)element_size(kind);
}

INLINE vfloat32m4_t widen_s8(vint8m1_t x, size_t vl)
{
    return __riscv_vfcvt_f_x_v_f32m4(__riscv_vsext_vf4_i32m4(x, vl), vl);
}

/* vl elements at x, `stride` elements apart (1: contiguous, a row of V), widened to float32. */
INLINE vfloat32m4_t load_f32(enum element kind, const void *x, ptrdiff_t stride, size_t vl)
{
    const ptrdiff_t bytes = stride * (ptrdiff_t)element_size(kind);
    if (kind == F32) {
        return stride == 1 ? __riscv_vle32_v_f32m4((const float *)x, vl)
                           : __riscv_vlse32_v_f32m4((const float *)x, bytes, vl);
    } else if (kind == S8) {
        return widen_s8(stride == 1 ? __riscv_vle8_v_i8m1((const int8_t *)x, vl)
                                    : __riscv_vlse8_v_i8m1((const int8_t *)x, bytes, vl), vl);
    } else {
        return moa_rvv_f16_bits_to_f32(stride == 1 ? __riscv_vle16_v_u16m2((const uint16_t *)x, vl)
                                                   : __riscv_vlse16_v_u16m2((const uint16_t *)x, bytes, vl), vl);
    }
}

/* The score panel: vl <= KT_WIDTH keys transposed (kt[j * vl + c] = K[c][j], widened), KT_DEPTH
 * of the depth at a time (16 KiB). A machine whose LMUL-4 group holds more than KT_WIDTH floats
 * (VLEN > 256) runs the tile at vl = KT_WIDTH. This copies one small key tile inside the kernel,
 * not K^T in memory, which is what DESIGN's "no transposed-key copy" rules out. */
#define KT_DEPTH 128
#define KT_WIDTH 32

/* s[0:mr][0:vl] = (s if add, else 0) + column_scale * (q[0:mr][0:nj] kt[0:nj][0:vl]); mr is 1 or
 * 4 (sizeless RVV types make no arrays): per depth one panel row, one vfmacc.vf per row. */
INLINE void scores_tile(int mr, size_t vl, size_t nj, const float *q, ptrdiff_t ldq, const float *kt,
                        vfloat32m4_t column_scale, int add, float *s, ptrdiff_t lds)
{
    vfloat32m4_t a0 = __riscv_vfmv_v_f_f32m4(0.0f, vl), a1 = a0, a2 = a0, a3 = a0;
    size_t j;
    _Pragma("GCC unroll 4") /* q's 4 rows then share one address per 4 depths (immediate offsets) */
    for (j = 0; j < nj; j++) {
        const vfloat32m4_t keys = __riscv_vle32_v_f32m4(kt + j * vl, vl);
        a0 = __riscv_vfmacc_vf_f32m4(a0, q[j], keys, vl);
        if (mr == 4) {
            a1 = __riscv_vfmacc_vf_f32m4(a1, q[ldq + (ptrdiff_t)j], keys, vl);
            a2 = __riscv_vfmacc_vf_f32m4(a2, q[2 * ldq + (ptrdiff_t)j], keys, vl);
            a3 = __riscv_vfmacc_vf_f32m4(a3, q[3 * ldq + (ptrdiff_t)j], keys, vl);
        }
    }
#define MOA_STORE_ROW(i, a)                                                                                     \
    __riscv_vse32_v_f32m4(s + (i) * lds,                                                                       \
                          add ? __riscv_vfmacc_vv_f32m4(__riscv_vle32_v_f32m4(s + (i) * lds, vl), a, column_scale, vl) \
                              : __riscv_vfmul_vv_f32m4(a, column_scale, vl), vl)
    MOA_STORE_ROW(0, a0);
    if (mr == 4) {
        MOA_STORE_ROW(1, a1);
        MOA_STORE_ROW(2, a2);
        MOA_STORE_ROW(3, a3);
    }
#undef MOA_STORE_ROW
}

/* s = (scale k_scale[c], or scale) * q k^T over keys of any element kind (the contract in
 * moa/attention.h): per panel of vl keys and KT_DEPTH of the depth, the panel packed once, then
 * the 4-row tile down the query rows and the rows left one at a time. */
INLINE void scores(enum element kind, size_t rows, size_t cols, size_t depth, float scale, const float *q,
                   ptrdiff_t ldq, const void *k, ptrdiff_t ldk, const float *k_scale, float *s, ptrdiff_t lds)
{
    float kt[KT_DEPTH * KT_WIDTH];
    size_t c, vl, r, j0, j;
    for (c = 0; c < cols; c += vl) {
        vfloat32m4_t column_scale;
        vl = __riscv_vsetvl_e32m4(cols - c < KT_WIDTH ? cols - c : KT_WIDTH);
        column_scale = k_scale ? __riscv_vfmul_vf_f32m4(__riscv_vle32_v_f32m4(k_scale + c, vl), scale, vl)
                               : __riscv_vfmv_v_f_f32m4(scale, vl);
        j0 = 0;
        do { /* the depth in chunks of KT_DEPTH; depth 0 still writes s = 0 */
            const size_t nj = depth - j0 < KT_DEPTH ? depth - j0 : KT_DEPTH;
            for (j = 0; j < nj; j++) { /* depth j0 + j of the panel's keys: one strided load */
                __riscv_vse32_v_f32m4(kt + j * vl, load_f32(kind, element_at(kind, k, (ptrdiff_t)c * ldk
                                                                                + (ptrdiff_t)(j0 + j)), ldk, vl), vl);
            }
            for (r = 0; r + 4 <= rows; r += 4) {
                scores_tile(4, vl, nj, q + (ptrdiff_t)r * ldq + (ptrdiff_t)j0, ldq, kt, column_scale, j0 > 0,
                            s + (ptrdiff_t)r * lds + (ptrdiff_t)c, lds);
            }
            for (; r < rows; r++) {
                scores_tile(1, vl, nj, q + (ptrdiff_t)r * ldq + (ptrdiff_t)j0, ldq, kt, column_scale, j0 > 0,
                            s + (ptrdiff_t)r * lds + (ptrdiff_t)c, lds);
            }
            j0 += nj;
        } while (j0 < depth);
    }
}

/* acc[0:mr][0:vl] += (p v_scale, or p)[0:mr][0:cols] v[0:cols][0:vl]; mr is 1 or 4 */
INLINE void pv_tile(enum element kind, int mr, size_t vl, size_t cols, const float *p, ptrdiff_t ldp, const void *v,
                    ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    vfloat32m4_t a0 = __riscv_vle32_v_f32m4(acc, vl), a1 = a0, a2 = a0, a3 = a0;
    size_t c;
    if (mr == 4) {
        a1 = __riscv_vle32_v_f32m4(acc + lda, vl);
        a2 = __riscv_vle32_v_f32m4(acc + 2 * lda, vl);
        a3 = __riscv_vle32_v_f32m4(acc + 3 * lda, vl);
    }
    _Pragma("GCC unroll 4") /* p's 4 rows then share one address per 4 keys (immediate offsets) */
    for (c = 0; c < cols; c++) {
        const vfloat32m4_t w = load_f32(kind, element_at(kind, v, (ptrdiff_t)c * ldv), 1, vl);
        const float row_scale = v_scale ? v_scale[c] : 1.0f;
#define MOA_WEIGHT(i) (v_scale ? p[(i) * ldp + (ptrdiff_t)c] * row_scale : p[(i) * ldp + (ptrdiff_t)c])
        a0 = __riscv_vfmacc_vf_f32m4(a0, MOA_WEIGHT(0), w, vl);
        if (mr == 4) {
            a1 = __riscv_vfmacc_vf_f32m4(a1, MOA_WEIGHT(1), w, vl);
            a2 = __riscv_vfmacc_vf_f32m4(a2, MOA_WEIGHT(2), w, vl);
            a3 = __riscv_vfmacc_vf_f32m4(a3, MOA_WEIGHT(3), w, vl);
        }
#undef MOA_WEIGHT
    }
    __riscv_vse32_v_f32m4(acc, a0, vl);
    if (mr == 4) {
        __riscv_vse32_v_f32m4(acc + lda, a1, vl);
        __riscv_vse32_v_f32m4(acc + 2 * lda, a2, vl);
        __riscv_vse32_v_f32m4(acc + 3 * lda, a3, vl);
    }
}

INLINE void pv(enum element kind, size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const void *v,
               ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    size_t e, vl, r;
    for (e = 0; e < dv; e += vl) {
        const void *ve = element_at(kind, v, (ptrdiff_t)e);
        vl = __riscv_vsetvl_e32m4(dv - e);
        for (r = 0; r + 4 <= rows; r += 4) {
            pv_tile(kind, 4, vl, cols, p + (ptrdiff_t)r * ldp, ldp, ve, ldv, v_scale,
                    acc + (ptrdiff_t)r * lda + (ptrdiff_t)e, lda);
        }
        for (; r < rows; r++) {
            pv_tile(kind, 1, vl, cols, p + (ptrdiff_t)r * ldp, ldp, ve, ldv, v_scale,
                    acc + (ptrdiff_t)r * lda + (ptrdiff_t)e, lda);
        }
    }
}

void moa_attn_scores_f32_4xm4_rvv(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                  ptrdiff_t ldq, const float *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    scores(F32, rows, cols, depth, scale, q, ldq, k, ldk, NULL, s, lds);
}

void moa_attn_pv_f32_4xm4_rvv(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const float *v,
                              ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    pv(F32, rows, cols, dv, p, ldp, v, ldv, NULL, acc, lda);
}

void moa_attn_scores_f32_s8_4xm4_rvv(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                     ptrdiff_t ldq, const int8_t *k, ptrdiff_t ldk, const float *k_scale, float *s,
                                     ptrdiff_t lds)
{
    scores(S8, rows, cols, depth, scale, q, ldq, k, ldk, k_scale, s, lds);
}

void moa_attn_pv_f32_s8_4xm4_rvv(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                 const int8_t *v, ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    pv(S8, rows, cols, dv, p, ldp, v, ldv, v_scale, acc, lda);
}

void moa_attn_scores_f32_f16_4xm4_rvv(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                      ptrdiff_t ldq, const uint16_t *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    scores(F16, rows, cols, depth, scale, q, ldq, k, ldk, NULL, s, lds);
}

void moa_attn_pv_f32_f16_4xm4_rvv(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                  const uint16_t *v, ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    pv(F16, rows, cols, dv, p, ldp, v, ldv, NULL, acc, lda);
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
