/* AArch64 Advanced SIMD attention micro-kernels (moa/attention.h), 4 floats per q register.
 *   scores 4x4: 16 dot products at once along the depth, reduced by pairwise adds: each row's
 *               4 sums come out as one vector (vpaddq twice);
 *   pv 4x16:    4 rows x 4 vectors of the accumulator stay in registers over all keys; 4 keys
 *               per step, their weights one vector per row, applied by lane (fmla by element);
 *   max, exp, scale, vexp: 16 or 8 floats per step; tails go through a 4-float buffer;
 *   over an int8 cache (_s8): the same tiles, int8 widened to float in registers as loaded;
 *   over a float16 cache (_f16): the same again, halves widened by fcvtl/fcvtl2 (vcvt_f32_f16:
 *               ARMv8's base conversions, no FP16 arithmetic needed, so the Cortex-A72 has them).
 * FMAX/FMAXV return NaN when an operand is NaN, so the row max needs no NaN tracking. */
#include "moa/isa.h"

#if MOA_ISA_NEON
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "moa/attention.h"
#include "moa/half.h"

#define INLINE static inline __attribute__((always_inline))

INLINE float32x4_t exp_ps(float32x4_t x)
{
    const uint32x4_t under = vcltq_f32(x, vdupq_n_f32(MOA_EXPF_LO)); /* NaN: no */
    float32x4_t t, n, r, p;
    uint32x4_t bits;
    x = vminq_f32(x, vdupq_n_f32(MOA_EXPF_HI)); /* FMIN/FMAX keep a NaN */
    x = vmaxq_f32(x, vdupq_n_f32(MOA_EXPF_LO));
    t = vfmaq_f32(vdupq_n_f32(MOA_EXPF_ROUND), x, vdupq_n_f32(MOA_EXPF_LOG2E));
    n = vsubq_f32(t, vdupq_n_f32(MOA_EXPF_ROUND));
    r = vfmsq_f32(x, n, vdupq_n_f32(MOA_EXPF_LN2_HI));
    r = vfmsq_f32(r, n, vdupq_n_f32(MOA_EXPF_LN2_LO));
    p = vfmaq_f32(vdupq_n_f32(MOA_EXPF_P1), vdupq_n_f32(MOA_EXPF_P0), r);
    p = vfmaq_f32(vdupq_n_f32(MOA_EXPF_P2), p, r);
    p = vfmaq_f32(vdupq_n_f32(MOA_EXPF_P3), p, r);
    p = vfmaq_f32(vdupq_n_f32(MOA_EXPF_P4), p, r);
    p = vfmaq_f32(vdupq_n_f32(MOA_EXPF_P5), p, r);
    p = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0f));
    bits = vaddq_u32(vshlq_n_u32(vreinterpretq_u32_f32(t), 23), vdupq_n_u32(127u << 23));
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(vmulq_f32(p, vreinterpretq_f32_u32(bits))), under));
}

INLINE float32x4_t load_tail(const float *x, size_t n, float fill) /* n < 4 floats, the rest fill */
{
    float buf[4] = {fill, fill, fill, fill};
    memcpy(buf, x, n * sizeof *x);
    return vld1q_f32(buf);
}

INLINE void store_tail(float *y, size_t n, float32x4_t v)
{
    float buf[4];
    vst1q_f32(buf, v);
    memcpy(y, buf, n * sizeof *y);
}

INLINE float dot(size_t depth, const float *x, const float *y)
{
    float32x4_t acc = vdupq_n_f32(0.0f);
    size_t j = 0;
    for (; j + 4 <= depth; j += 4) {
        acc = vfmaq_f32(acc, vld1q_f32(x + j), vld1q_f32(y + j));
    }
    if (j < depth) {
        acc = vfmaq_f32(acc, load_tail(x + j, depth - j, 0.0f), load_tail(y + j, depth - j, 0.0f));
    }
    return vaddvq_f32(acc);
}

void moa_attn_scores_f32_4x4_neon(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                  ptrdiff_t ldq, const float *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    size_t r = 0, c, j;
    int i, x;
    for (; r + 4 <= rows; r += 4) {
        const float *q0 = q + (ptrdiff_t)r * ldq;
        float *s0 = s + (ptrdiff_t)r * lds;
        for (c = 0; c + 4 <= cols; c += 4) {
            const float *k0 = k + (ptrdiff_t)c * ldk;
            float32x4_t a[16], qv[4], kv[4];
            _Pragma("GCC unroll 16")
            for (i = 0; i < 16; i++) {
                a[i] = vdupq_n_f32(0.0f);
            }
            for (j = 0; j < depth; j += 4) {
                if (j + 4 <= depth) {
                    _Pragma("GCC unroll 4")
                    for (i = 0; i < 4; i++) {
                        qv[i] = vld1q_f32(q0 + i * ldq + j);
                        kv[i] = vld1q_f32(k0 + i * ldk + j);
                    }
                } else {
                    _Pragma("GCC unroll 4")
                    for (i = 0; i < 4; i++) {
                        qv[i] = load_tail(q0 + i * ldq + j, depth - j, 0.0f);
                        kv[i] = load_tail(k0 + i * ldk + j, depth - j, 0.0f);
                    }
                }
                _Pragma("GCC unroll 4")
                for (i = 0; i < 4; i++) {
                    _Pragma("GCC unroll 4")
                    for (x = 0; x < 4; x++) {
                        a[4 * i + x] = vfmaq_f32(a[4 * i + x], qv[i], kv[x]);
                    }
                }
            }
            _Pragma("GCC unroll 4")
            for (i = 0; i < 4; i++) {
                const float32x4_t sums = vpaddq_f32(vpaddq_f32(a[4 * i], a[4 * i + 1]), vpaddq_f32(a[4 * i + 2], a[4 * i + 3]));
                vst1q_f32(s0 + i * lds + (ptrdiff_t)c, vmulq_n_f32(sums, scale));
            }
        }
        for (; c < cols; c++) {
            _Pragma("GCC unroll 4")
            for (i = 0; i < 4; i++) {
                s0[i * lds + (ptrdiff_t)c] = scale * dot(depth, q0 + i * ldq, k + (ptrdiff_t)c * ldk);
            }
        }
    }
    for (; r < rows; r++) {
        for (c = 0; c < cols; c++) {
            s[(ptrdiff_t)r * lds + (ptrdiff_t)c] = scale * dot(depth, q + (ptrdiff_t)r * ldq, k + (ptrdiff_t)c * ldk);
        }
    }
}

/* acc[0:mr][0:4 nv] += p[0:mr][0:cols] v[0:cols][0:4 nv] */
INLINE void pv_tile(int mr, int nv, size_t cols, const float *p, ptrdiff_t ldp, const float *v, ptrdiff_t ldv,
                    float *acc, ptrdiff_t lda)
{
    float32x4_t a[4][4], w[4], pw[4];
    size_t c = 0;
    int i, x;
    _Pragma("GCC unroll 4")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 4")
        for (x = 0; x < nv; x++) {
            a[i][x] = vld1q_f32(acc + i * lda + 4 * x);
        }
    }
#define MOA_PV_KEY(lane)                                                                      \
    _Pragma("GCC unroll 4") for (x = 0; x < nv; x++) {                                      \
        w[x] = vld1q_f32(v + (ptrdiff_t)(c + lane) * ldv + 4 * x);                           \
    }                                                                                         \
    _Pragma("GCC unroll 4") for (i = 0; i < mr; i++) {                                      \
        _Pragma("GCC unroll 4") for (x = 0; x < nv; x++) {                                  \
            a[i][x] = vfmaq_laneq_f32(a[i][x], w[x], pw[i], lane);                            \
        }                                                                                     \
    }
    for (; c + 4 <= cols; c += 4) {
        _Pragma("GCC unroll 4")
        for (i = 0; i < mr; i++) {
            pw[i] = vld1q_f32(p + i * ldp + (ptrdiff_t)c);
        }
        MOA_PV_KEY(0)
        MOA_PV_KEY(1)
        MOA_PV_KEY(2)
        MOA_PV_KEY(3)
    }
    for (; c < cols; c++) {
        _Pragma("GCC unroll 4")
        for (i = 0; i < mr; i++) {
            pw[i] = vdupq_n_f32(p[i * ldp + (ptrdiff_t)c]);
        }
        MOA_PV_KEY(0)
    }
#undef MOA_PV_KEY
    _Pragma("GCC unroll 4")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 4")
        for (x = 0; x < nv; x++) {
            vst1q_f32(acc + i * lda + 4 * x, a[i][x]);
        }
    }
}

INLINE void pv_rows(int mr, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const float *v, ptrdiff_t ldv,
                    float *acc, ptrdiff_t lda)
{
    size_t e = 0, c;
    int i;
    for (; e + 16 <= dv; e += 16) {
        pv_tile(mr, 4, cols, p, ldp, v + e, ldv, acc + e, lda);
    }
    if (e + 8 <= dv) {
        pv_tile(mr, 2, cols, p, ldp, v + e, ldv, acc + e, lda);
        e += 8;
    }
    if (e + 4 <= dv) {
        pv_tile(mr, 1, cols, p, ldp, v + e, ldv, acc + e, lda);
        e += 4;
    }
    for (; e < dv; e++) { /* dv % 4 columns */
        for (i = 0; i < mr; i++) {
            float sum = acc[i * lda + (ptrdiff_t)e];
            for (c = 0; c < cols; c++) {
                sum += p[i * ldp + (ptrdiff_t)c] * v[(ptrdiff_t)c * ldv + (ptrdiff_t)e];
            }
            acc[i * lda + (ptrdiff_t)e] = sum;
        }
    }
}

void moa_attn_pv_f32_4x16_neon(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const float *v,
                               ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        pv_rows(4, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, acc + (ptrdiff_t)r * lda, lda);
    }
    for (; r < rows; r++) {
        pv_rows(1, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, acc + (ptrdiff_t)r * lda, lda);
    }
}

/* --- over an int8 cache: the same tiles, int8 widened to float in registers (sxtl, sxtl, scvtf) --- */

/* n <= 8 int8 at x widened to 8 int16 (a partial row through a zeroed buffer; the lanes past n 0). */
INLINE int16x8_t load_s8x8(const int8_t *x, size_t n)
{
    if (n == 8) {
        return vmovl_s8(vld1_s8(x));
    } else {
        int8_t buf[8] = {0};
        memcpy(buf, x, n);
        return vmovl_s8(vld1_s8(buf));
    }
}

INLINE float32x4_t low_f32(int16x8_t x)
{
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(x)));
}

INLINE float32x4_t high_f32(int16x8_t x)
{
    return vcvtq_f32_s32(vmovl_high_s16(x));
}

INLINE float dot_s8(size_t depth, const float *x, const int8_t *y)
{
    float32x4_t acc = vdupq_n_f32(0.0f);
    size_t j = 0;
    for (; j < depth; j += 8) {
        const size_t nj = depth - j < 8 ? depth - j : 8;
        const int16x8_t w = load_s8x8(y + j, nj);
        acc = vfmaq_f32(acc, nj >= 4 ? vld1q_f32(x + j) : load_tail(x + j, nj, 0.0f), low_f32(w));
        if (nj > 4) {
            acc = vfmaq_f32(acc, nj == 8 ? vld1q_f32(x + j + 4) : load_tail(x + j + 4, nj - 4, 0.0f), high_f32(w));
        }
    }
    return vaddvq_f32(acc);
}

void moa_attn_scores_f32_s8_4x4_neon(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                     ptrdiff_t ldq, const int8_t *k, ptrdiff_t ldk, const float *k_scale, float *s,
                                     ptrdiff_t lds)
{
    size_t r = 0, c, j;
    int i, x, half;
    for (; r + 4 <= rows; r += 4) {
        const float *q0 = q + (ptrdiff_t)r * ldq;
        float *s0 = s + (ptrdiff_t)r * lds;
        for (c = 0; c + 4 <= cols; c += 4) {
            const int8_t *k0 = k + (ptrdiff_t)c * ldk;
            const float32x4_t column_scale = vmulq_n_f32(vld1q_f32(k_scale + c), scale);
            float32x4_t a[16], qv[4], kv[4];
            int16x8_t k16[4];
            _Pragma("GCC unroll 16")
            for (i = 0; i < 16; i++) {
                a[i] = vdupq_n_f32(0.0f);
            }
            for (j = 0; j < depth; j += 8) { /* 8 int8 of each key per load, used as two halves of 4 */
                const size_t nj = depth - j < 8 ? depth - j : 8;
                _Pragma("GCC unroll 4")
                for (x = 0; x < 4; x++) {
                    k16[x] = load_s8x8(k0 + x * ldk + j, nj);
                }
                for (half = 0; half < 2 && (size_t)(4 * half) < nj; half++) {
                    const size_t jh = j + 4 * (size_t)half, nh = nj - 4 * (size_t)half;
                    _Pragma("GCC unroll 4")
                    for (i = 0; i < 4; i++) {
                        qv[i] = nh >= 4 ? vld1q_f32(q0 + i * ldq + jh) : load_tail(q0 + i * ldq + jh, nh, 0.0f);
                        kv[i] = half ? high_f32(k16[i]) : low_f32(k16[i]);
                    }
                    _Pragma("GCC unroll 4")
                    for (i = 0; i < 4; i++) {
                        _Pragma("GCC unroll 4")
                        for (x = 0; x < 4; x++) {
                            a[4 * i + x] = vfmaq_f32(a[4 * i + x], qv[i], kv[x]);
                        }
                    }
                }
            }
            _Pragma("GCC unroll 4")
            for (i = 0; i < 4; i++) {
                const float32x4_t sums = vpaddq_f32(vpaddq_f32(a[4 * i], a[4 * i + 1]), vpaddq_f32(a[4 * i + 2], a[4 * i + 3]));
                vst1q_f32(s0 + i * lds + (ptrdiff_t)c, vmulq_f32(sums, column_scale));
            }
        }
        for (; c < cols; c++) {
            _Pragma("GCC unroll 4")
            for (i = 0; i < 4; i++) {
                s0[i * lds + (ptrdiff_t)c] = (scale * k_scale[c]) * dot_s8(depth, q0 + i * ldq, k + (ptrdiff_t)c * ldk);
            }
        }
    }
    for (; r < rows; r++) {
        for (c = 0; c < cols; c++) {
            s[(ptrdiff_t)r * lds + (ptrdiff_t)c] = (scale * k_scale[c]) * dot_s8(depth, q + (ptrdiff_t)r * ldq,
                                                                                 k + (ptrdiff_t)c * ldk);
        }
    }
}

/* V's row at x, 4 nv int8 (nv = 4, 2 or 1), as nv float vectors. */
INLINE void load_s8_row(const int8_t *x, int nv, float32x4_t *w)
{
    if (nv == 4) {
        const int8x16_t b = vld1q_s8(x);
        const int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_high_s8(b);
        w[0] = low_f32(lo), w[1] = high_f32(lo), w[2] = low_f32(hi), w[3] = high_f32(hi);
    } else if (nv == 2) {
        const int16x8_t b = vmovl_s8(vld1_s8(x));
        w[0] = low_f32(b), w[1] = high_f32(b);
    } else {
        w[0] = low_f32(load_s8x8(x, 4));
    }
}

/* acc[0:mr][0:4 nv] += (p v_scale)[0:mr][0:cols] v[0:cols][0:4 nv]: as pv_tile, four keys' weights
 * a vector per row (p times v_scale, one multiply), each V row widened from int8. */
INLINE void pv_tile_s8(int mr, int nv, size_t cols, const float *p, ptrdiff_t ldp, const int8_t *v, ptrdiff_t ldv,
                       const float *v_scale, float *acc, ptrdiff_t lda)
{
    float32x4_t a[4][4], w[4], pw[4];
    size_t c = 0;
    int i, x;
    _Pragma("GCC unroll 4")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 4")
        for (x = 0; x < nv; x++) {
            a[i][x] = vld1q_f32(acc + i * lda + 4 * x);
        }
    }
#define MOA_PV_KEY(lane)                                                                      \
    load_s8_row(v + (ptrdiff_t)(c + lane) * ldv, nv, w);                                     \
    _Pragma("GCC unroll 4") for (i = 0; i < mr; i++) {                                      \
        _Pragma("GCC unroll 4") for (x = 0; x < nv; x++) {                                  \
            a[i][x] = vfmaq_laneq_f32(a[i][x], w[x], pw[i], lane);                            \
        }                                                                                     \
    }
    for (; c + 4 <= cols; c += 4) {
        const float32x4_t scales = vld1q_f32(v_scale + c);
        _Pragma("GCC unroll 4")
        for (i = 0; i < mr; i++) {
            pw[i] = vmulq_f32(vld1q_f32(p + i * ldp + (ptrdiff_t)c), scales);
        }
        MOA_PV_KEY(0)
        MOA_PV_KEY(1)
        MOA_PV_KEY(2)
        MOA_PV_KEY(3)
    }
    for (; c < cols; c++) {
        _Pragma("GCC unroll 4")
        for (i = 0; i < mr; i++) {
            pw[i] = vdupq_n_f32(p[i * ldp + (ptrdiff_t)c] * v_scale[c]);
        }
        MOA_PV_KEY(0)
    }
#undef MOA_PV_KEY
    _Pragma("GCC unroll 4")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 4")
        for (x = 0; x < nv; x++) {
            vst1q_f32(acc + i * lda + 4 * x, a[i][x]);
        }
    }
}

INLINE void pv_rows_s8(int mr, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const int8_t *v,
                       ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    size_t e = 0, c;
    int i;
    for (; e + 16 <= dv; e += 16) {
        pv_tile_s8(mr, 4, cols, p, ldp, v + e, ldv, v_scale, acc + e, lda);
    }
    if (e + 8 <= dv) {
        pv_tile_s8(mr, 2, cols, p, ldp, v + e, ldv, v_scale, acc + e, lda);
        e += 8;
    }
    if (e + 4 <= dv) {
        pv_tile_s8(mr, 1, cols, p, ldp, v + e, ldv, v_scale, acc + e, lda);
        e += 4;
    }
    for (; e < dv; e++) { /* dv % 4 columns */
        for (i = 0; i < mr; i++) {
            float sum = acc[i * lda + (ptrdiff_t)e];
            for (c = 0; c < cols; c++) {
                sum += (p[i * ldp + (ptrdiff_t)c] * v_scale[c]) * (float)v[(ptrdiff_t)c * ldv + (ptrdiff_t)e];
            }
            acc[i * lda + (ptrdiff_t)e] = sum;
        }
    }
}

void moa_attn_pv_f32_s8_4x16_neon(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                  const int8_t *v, ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        pv_rows_s8(4, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, v_scale, acc + (ptrdiff_t)r * lda, lda);
    }
    for (; r < rows; r++) {
        pv_rows_s8(1, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, v_scale, acc + (ptrdiff_t)r * lda, lda);
    }
}

/* --- over a float16 cache: the same tiles, halves widened to float in registers (fcvtl, fcvtl2) --- */

/* n <= 8 halves at x (a partial row through a zeroed buffer; the lanes past n 0). */
INLINE float16x8_t load_f16x8(const uint16_t *x, size_t n)
{
    if (n == 8) {
        return vreinterpretq_f16_u16(vld1q_u16(x));
    } else {
        uint16_t buf[8] = {0};
        memcpy(buf, x, n * sizeof *x);
        return vreinterpretq_f16_u16(vld1q_u16(buf));
    }
}

INLINE float32x4_t low_f16(float16x8_t x)
{
    return vcvt_f32_f16(vget_low_f16(x));
}

INLINE float32x4_t high_f16(float16x8_t x)
{
    return vcvt_high_f32_f16(x);
}

INLINE float dot_f16(size_t depth, const float *x, const uint16_t *y)
{
    float32x4_t acc = vdupq_n_f32(0.0f);
    size_t j = 0;
    for (; j < depth; j += 8) {
        const size_t nj = depth - j < 8 ? depth - j : 8;
        const float16x8_t w = load_f16x8(y + j, nj);
        acc = vfmaq_f32(acc, nj >= 4 ? vld1q_f32(x + j) : load_tail(x + j, nj, 0.0f), low_f16(w));
        if (nj > 4) {
            acc = vfmaq_f32(acc, nj == 8 ? vld1q_f32(x + j + 4) : load_tail(x + j + 4, nj - 4, 0.0f), high_f16(w));
        }
    }
    return vaddvq_f32(acc);
}

void moa_attn_scores_f32_f16_4x4_neon(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                      ptrdiff_t ldq, const uint16_t *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    size_t r = 0, c, j;
    int i, x, half;
    for (; r + 4 <= rows; r += 4) {
        const float *q0 = q + (ptrdiff_t)r * ldq;
        float *s0 = s + (ptrdiff_t)r * lds;
        for (c = 0; c + 4 <= cols; c += 4) {
            const uint16_t *k0 = k + (ptrdiff_t)c * ldk;
            float32x4_t a[16], qv[4], kv[4];
            float16x8_t k16[4];
            _Pragma("GCC unroll 16")
            for (i = 0; i < 16; i++) {
                a[i] = vdupq_n_f32(0.0f);
            }
            for (j = 0; j < depth; j += 8) { /* 8 halves of each key per load, used as two halves of 4 */
                const size_t nj = depth - j < 8 ? depth - j : 8;
                _Pragma("GCC unroll 4")
                for (x = 0; x < 4; x++) {
                    k16[x] = load_f16x8(k0 + x * ldk + j, nj);
                }
                for (half = 0; half < 2 && (size_t)(4 * half) < nj; half++) {
                    const size_t jh = j + 4 * (size_t)half, nh = nj - 4 * (size_t)half;
                    _Pragma("GCC unroll 4")
                    for (i = 0; i < 4; i++) {
                        qv[i] = nh >= 4 ? vld1q_f32(q0 + i * ldq + jh) : load_tail(q0 + i * ldq + jh, nh, 0.0f);
                        kv[i] = half ? high_f16(k16[i]) : low_f16(k16[i]);
                    }
                    _Pragma("GCC unroll 4")
                    for (i = 0; i < 4; i++) {
                        _Pragma("GCC unroll 4")
                        for (x = 0; x < 4; x++) {
                            a[4 * i + x] = vfmaq_f32(a[4 * i + x], qv[i], kv[x]);
                        }
                    }
                }
            }
            _Pragma("GCC unroll 4")
            for (i = 0; i < 4; i++) {
                const float32x4_t sums = vpaddq_f32(vpaddq_f32(a[4 * i], a[4 * i + 1]), vpaddq_f32(a[4 * i + 2], a[4 * i + 3]));
                vst1q_f32(s0 + i * lds + (ptrdiff_t)c, vmulq_n_f32(sums, scale));
            }
        }
        for (; c < cols; c++) {
            _Pragma("GCC unroll 4")
            for (i = 0; i < 4; i++) {
                s0[i * lds + (ptrdiff_t)c] = scale * dot_f16(depth, q0 + i * ldq, k + (ptrdiff_t)c * ldk);
            }
        }
    }
    for (; r < rows; r++) {
        for (c = 0; c < cols; c++) {
            s[(ptrdiff_t)r * lds + (ptrdiff_t)c] = scale * dot_f16(depth, q + (ptrdiff_t)r * ldq, k + (ptrdiff_t)c * ldk);
        }
    }
}

/* V's row at x, 4 nv halves (nv = 4, 2 or 1), as nv float vectors. */
INLINE void load_f16_row(const uint16_t *x, int nv, float32x4_t *w)
{
    if (nv == 4) {
        const float16x8_t lo = vreinterpretq_f16_u16(vld1q_u16(x)), hi = vreinterpretq_f16_u16(vld1q_u16(x + 8));
        w[0] = low_f16(lo), w[1] = high_f16(lo), w[2] = low_f16(hi), w[3] = high_f16(hi);
    } else if (nv == 2) {
        const float16x8_t b = vreinterpretq_f16_u16(vld1q_u16(x));
        w[0] = low_f16(b), w[1] = high_f16(b);
    } else {
        w[0] = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x)));
    }
}

/* acc[0:mr][0:4 nv] += p[0:mr][0:cols] v[0:cols][0:4 nv]: as pv_tile, four keys' weights a vector
 * per row, each V row widened from halves. */
INLINE void pv_tile_f16(int mr, int nv, size_t cols, const float *p, ptrdiff_t ldp, const uint16_t *v, ptrdiff_t ldv,
                        float *acc, ptrdiff_t lda)
{
    float32x4_t a[4][4], w[4], pw[4];
    size_t c = 0;
    int i, x;
    _Pragma("GCC unroll 4")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 4")
        for (x = 0; x < nv; x++) {
            a[i][x] = vld1q_f32(acc + i * lda + 4 * x);
        }
    }
#define MOA_PV_KEY(lane)                                                                      \
    load_f16_row(v + (ptrdiff_t)(c + lane) * ldv, nv, w);                                    \
    _Pragma("GCC unroll 4") for (i = 0; i < mr; i++) {                                      \
        _Pragma("GCC unroll 4") for (x = 0; x < nv; x++) {                                  \
            a[i][x] = vfmaq_laneq_f32(a[i][x], w[x], pw[i], lane);                            \
        }                                                                                     \
    }
    for (; c + 4 <= cols; c += 4) {
        _Pragma("GCC unroll 4")
        for (i = 0; i < mr; i++) {
            pw[i] = vld1q_f32(p + i * ldp + (ptrdiff_t)c);
        }
        MOA_PV_KEY(0)
        MOA_PV_KEY(1)
        MOA_PV_KEY(2)
        MOA_PV_KEY(3)
    }
    for (; c < cols; c++) {
        _Pragma("GCC unroll 4")
        for (i = 0; i < mr; i++) {
            pw[i] = vdupq_n_f32(p[i * ldp + (ptrdiff_t)c]);
        }
        MOA_PV_KEY(0)
    }
#undef MOA_PV_KEY
    _Pragma("GCC unroll 4")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 4")
        for (x = 0; x < nv; x++) {
            vst1q_f32(acc + i * lda + 4 * x, a[i][x]);
        }
    }
}

INLINE void pv_rows_f16(int mr, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const uint16_t *v,
                        ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    size_t e = 0, c;
    int i;
    for (; e + 16 <= dv; e += 16) {
        pv_tile_f16(mr, 4, cols, p, ldp, v + e, ldv, acc + e, lda);
    }
    if (e + 8 <= dv) {
        pv_tile_f16(mr, 2, cols, p, ldp, v + e, ldv, acc + e, lda);
        e += 8;
    }
    if (e + 4 <= dv) {
        pv_tile_f16(mr, 1, cols, p, ldp, v + e, ldv, acc + e, lda);
        e += 4;
    }
    for (; e < dv; e++) { /* dv % 4 columns */
        for (i = 0; i < mr; i++) {
            float sum = acc[i * lda + (ptrdiff_t)e];
            for (c = 0; c < cols; c++) {
                sum += p[i * ldp + (ptrdiff_t)c] * moa_f16_to_f32(v[(ptrdiff_t)c * ldv + (ptrdiff_t)e]);
            }
            acc[i * lda + (ptrdiff_t)e] = sum;
        }
    }
}

void moa_attn_pv_f32_f16_4x16_neon(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                   const uint16_t *v, ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        pv_rows_f16(4, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, acc + (ptrdiff_t)r * lda, lda);
    }
    for (; r < rows; r++) {
        pv_rows_f16(1, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, acc + (ptrdiff_t)r * lda, lda);
    }
}

float moa_attn_max_f32_u16_neon(size_t n, const float *x)
{
    const float32x4_t lowest = vdupq_n_f32(-INFINITY);
    float32x4_t m0 = lowest, m1 = lowest, m2 = lowest, m3 = lowest;
    size_t c = 0;
    for (; c + 16 <= n; c += 16) {
        m0 = vmaxq_f32(m0, vld1q_f32(x + c));
        m1 = vmaxq_f32(m1, vld1q_f32(x + c + 4));
        m2 = vmaxq_f32(m2, vld1q_f32(x + c + 8));
        m3 = vmaxq_f32(m3, vld1q_f32(x + c + 12));
    }
    for (; c + 4 <= n; c += 4) {
        m0 = vmaxq_f32(m0, vld1q_f32(x + c));
    }
    if (c < n) {
        m1 = vmaxq_f32(m1, load_tail(x + c, n - c, -INFINITY));
    }
    return vmaxvq_f32(vmaxq_f32(vmaxq_f32(m0, m1), vmaxq_f32(m2, m3)));
}

float moa_attn_exp_f32_u8_neon(size_t n, float *x, float m)
{
    const float32x4_t vm = vdupq_n_f32(m);
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
    size_t c = 0;
    for (; c + 8 <= n; c += 8) {
        const float32x4_t e0 = exp_ps(vsubq_f32(vld1q_f32(x + c), vm));
        const float32x4_t e1 = exp_ps(vsubq_f32(vld1q_f32(x + c + 4), vm));
        vst1q_f32(x + c, e0);
        vst1q_f32(x + c + 4, e1);
        s0 = vaddq_f32(s0, e0);
        s1 = vaddq_f32(s1, e1);
    }
    for (; c < n; c += 4) {
        const size_t left = n - c < 4 ? n - c : 4;
        const float32x4_t e0 = exp_ps(vsubq_f32(load_tail(x + c, left, -INFINITY), vm)); /* exp(-inf) = 0 */
        store_tail(x + c, left, e0);
        s0 = vaddq_f32(s0, e0);
    }
    return vaddvq_f32(vaddq_f32(s0, s1));
}

void moa_attn_scale_f32_u16_neon(size_t n, float alpha, const float *x, float *y)
{
    size_t c = 0;
    for (; c + 16 <= n; c += 16) {
        const float32x4_t x0 = vld1q_f32(x + c), x1 = vld1q_f32(x + c + 4);
        const float32x4_t x2 = vld1q_f32(x + c + 8), x3 = vld1q_f32(x + c + 12);
        vst1q_f32(y + c, vmulq_n_f32(x0, alpha));
        vst1q_f32(y + c + 4, vmulq_n_f32(x1, alpha));
        vst1q_f32(y + c + 8, vmulq_n_f32(x2, alpha));
        vst1q_f32(y + c + 12, vmulq_n_f32(x3, alpha));
    }
    for (; c + 4 <= n; c += 4) {
        vst1q_f32(y + c, vmulq_n_f32(vld1q_f32(x + c), alpha));
    }
    for (; c < n; c++) {
        y[c] = alpha * x[c];
    }
}

void moa_vexp_f32_u8_neon(size_t n, const float *x, float *y)
{
    size_t c = 0;
    for (; c + 8 <= n; c += 8) {
        const float32x4_t e0 = exp_ps(vld1q_f32(x + c)), e1 = exp_ps(vld1q_f32(x + c + 4));
        vst1q_f32(y + c, e0);
        vst1q_f32(y + c + 4, e1);
    }
    for (; c < n; c += 4) {
        const size_t left = n - c < 4 ? n - c : 4;
        store_tail(y + c, left, exp_ps(load_tail(x + c, left, 0.0f)));
    }
}

#else
typedef int moa_attention_f32_neon_unused; /* ISO C: a translation unit is not empty */
#endif
