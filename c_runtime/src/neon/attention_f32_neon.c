/* AArch64 Advanced SIMD attention micro-kernels (moa/attention.h), 4 floats per q register.
 *   scores 5x16: a GEMM tile over a packed, transposed panel of 16 keys (as the AVX-512 one):
 *               16 keys of K are widened and transposed into a depth x 16 panel on the stack,
 *               which then serves every query row, 5 at a time: 20 accumulators (5 rows x 16
 *               keys), each depth step one panel row (ld1 of 4 registers) times one Q element
 *               per row, taken by lane from a vector of 4 depths (fmla by element); 5 rows
 *               leave registers for the 4 panel vectors and 5 Q vectors (29 of 32);
 *   pv 5x16:    the same tile with P in Q's place and V's rows (already key-major) as the panel:
 *               5 rows x 16 columns of the accumulator stay in registers over all keys;
 *               rows past a multiple of 5 go 4, then 1 at a time;
 *   max, exp, scale, vexp: 16 or 8 floats per step; tails go through a 4-float buffer;
 *   over an int8 cache (_s8) and a float16 cache (_f16): the same two tiles, each K or V element
 *               widened to float in registers as it is loaded (int8: sxtl, sxtl, scvtf, its row's
 *               scale applied to the key's column of scores or to P's weight; halves: fcvtl, ARMv8's
 *               base conversion, no FP16 arithmetic needed, so the Cortex-A72 has it). The tiles
 *               are written once, the element type (enum element) a constant of the inlined body.
 * FMAX/FMAXV return NaN when an operand is NaN, so the row max needs no NaN tracking. */
#include "moa/isa.h"

#if MOA_ISA_NEON
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "moa/attention.h"
#include "moa/half.h"

#define INLINE static inline __attribute__((always_inline))

/* The shared exp (moa/attention.h). `clamp_hi` is 0 where every x <= 0 (softmax: x = s - max),
 * where the upper clamp cannot act: the same bits, one instruction fewer. */
INLINE float32x4_t exp_ps_(float32x4_t x, int clamp_hi)
{
    const uint32x4_t under = vcltq_f32(x, vdupq_n_f32(MOA_EXPF_LO)); /* NaN: no */
    float32x4_t t, n, r, p;
    uint32x4_t bits;
    if (clamp_hi) {
        x = vminq_f32(x, vdupq_n_f32(MOA_EXPF_HI)); /* FMIN/FMAX keep a NaN */
    }
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

INLINE float32x4_t exp_ps(float32x4_t x)
{
    return exp_ps_(x, 1);
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

#if defined(__GNUC__) && !defined(__clang__)
/* GCC's scheduler before register allocation hoists the next steps' loads of b above the FMAs,
 * and the tile's accumulators then spill (a 4x16 P V tile at seq 1024 under qemu: 27.6 M
 * instructions instead of 20.7 M): the tiles are scheduled after allocation only. */
#pragma GCC push_options
#pragma GCC optimize("no-schedule-insns")
#endif

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

INLINE float element_value(enum element kind, const void *x, ptrdiff_t i)
{
    return kind == F32 ? ((const float *)x)[i] : kind == S8 ? (float)((const int8_t *)x)[i]
                                                            : moa_f16_to_f32(((const uint16_t *)x)[i]);
}

INLINE float32x4_t s8x4_to_f32(int8x8_t b) /* the low 4 of 8 int8, exactly */
{
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(b))));
}

/* n <= 4 elements at x as 4 floats (exact), the lanes past n 0. */
INLINE float32x4_t load4(enum element kind, const void *x, size_t n)
{
    if (n == 4 && kind == F32) {
        return vld1q_f32((const float *)x);
    } else if (n == 4 && kind == S8) {
        int32_t word;
        memcpy(&word, x, sizeof word);
        return s8x4_to_f32(vreinterpret_s8_s32(vdup_n_s32(word)));
    } else if (n == 4) {
        return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)x)));
    } else {
        float buf[4] = {0.0f, 0.0f, 0.0f, 0.0f}; /* room for 4 elements of any kind, zeroed */
        memcpy(buf, x, n * element_size(kind));
        return load4(kind, buf, 4);
    }
}

/* 4 nv elements at x (nv = 4, 2 or 1) as nv float vectors: a row of a panel, of V, or a piece. */
INLINE void load_row(enum element kind, const void *x, int nv, float32x4_t *w)
{
    if (kind == F32 && nv == 4) {
        const float32x4x4_t r = vld1q_f32_x4((const float *)x); /* one ld1 of 4 registers */
        w[0] = r.val[0], w[1] = r.val[1], w[2] = r.val[2], w[3] = r.val[3];
    } else if (kind == S8 && nv == 4) {
        const int8x16_t b = vld1q_s8((const int8_t *)x);
        const int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_high_s8(b);
        w[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), w[1] = vcvtq_f32_s32(vmovl_high_s16(lo));
        w[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), w[3] = vcvtq_f32_s32(vmovl_high_s16(hi));
    } else if (kind == S8 && nv == 2) {
        const int16x8_t b = vmovl_s8(vld1_s8((const int8_t *)x));
        w[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(b))), w[1] = vcvtq_f32_s32(vmovl_high_s16(b));
    } else if (kind == F16 && nv >= 2) {
        int h;
        _Pragma("GCC unroll 2")
        for (h = 0; h < nv / 2; h++) {
            const float16x8_t b = vreinterpretq_f16_u16(vld1q_u16((const uint16_t *)x + 8 * h));
            w[2 * h] = vcvt_f32_f16(vget_low_f16(b)), w[2 * h + 1] = vcvt_high_f32_f16(b);
        }
    } else {
        int x4;
        _Pragma("GCC unroll 4")
        for (x4 = 0; x4 < nv; x4++) {
            w[x4] = load4(kind, element_at(kind, x, 4 * x4), 4);
        }
    }
}

/* load_row(kind, *row, nv, w), then *row += step bytes. A float row of 4 vectors is one ld1 with
 * the step as its post-index: GCC 12 forms no post-indexed ld1 of 4 registers, and the address
 * add it emits instead is 1 instruction in 24 of the tiles below (7 of 8 steps). The asm names
 * its 4 consecutive registers, which ld1 needs (local register variables are what GCC ties to
 * them); its memory operand is the 64 bytes it reads. */
INLINE void load_row_step(enum element kind, const char **row, ptrdiff_t step, int nv, float32x4_t *w)
{
#if defined(__GNUC__)
    if (kind == F32 && nv == 4) {
        register float32x4_t w0 __asm__("v28"), w1 __asm__("v29"), w2 __asm__("v30"), w3 __asm__("v31");
        __asm__("ld1 {v28.4s, v29.4s, v30.4s, v31.4s}, [%4], %5"
                : "=w"(w0), "=w"(w1), "=w"(w2), "=w"(w3), "+r"(*row)
                : "r"(step), "m"(*(const float(*)[16])*row));
        w[0] = w0, w[1] = w1, w[2] = w2, w[3] = w3;
        return;
    }
#endif
    load_row(kind, *row, nv, w);
    *row += step;
}

/* The register tile of both kernels, a small GEMM: c[0:mr][0:4 nv] = (c if accumulate, else 0)
 * + c_scale * (a[0:mr][0:inner] b[0:inner][0:4 nv]) (c_scale: one vector per column vector, or
 * none). a's rows (lda apart) are read 4 inner indices at a time, times a_scale[j] when given
 * (an int8 V's row scales), each lane broadcast by fmla-by-element; b's rows (ldb elements
 * apart) are widened as loaded. Only the first nc columns of c are read and written. */
INLINE void gemm_tile(int mr, int nv, size_t nc, size_t inner, const float *a, ptrdiff_t lda, const float *a_scale,
                      enum element kind, const void *b, ptrdiff_t ldb, const float32x4_t *c_scale, int accumulate,
                      float *c, ptrdiff_t ldc)
{
    const ptrdiff_t b_step = ldb * (ptrdiff_t)element_size(kind); /* bytes from one row of b to the next */
    const char *b_row = (const char *)b;                         /* walked row by row */
    float32x4_t acc[5][4], w[4], av[5];
    size_t j = 0;
    int i, x;
    /* Whole rows added to unscaled: the sums start from c itself (no zeroing, no adds after). */
    const int from_c = accumulate && c_scale == NULL && nc == 4 * (size_t)nv;
    _Pragma("GCC unroll 5")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 4")
        for (x = 0; x < nv; x++) {
            acc[i][x] = from_c ? vld1q_f32(c + i * ldc + 4 * x) : vdupq_n_f32(0.0f);
        }
    }
#define MOA_TILE_STEP(lane)                                                                   \
    load_row_step(kind, &b_row, b_step, nv, w);                                              \
    _Pragma("GCC unroll 5") for (i = 0; i < mr; i++) {                                      \
        _Pragma("GCC unroll 4") for (x = 0; x < nv; x++) {                                  \
            acc[i][x] = vfmaq_laneq_f32(acc[i][x], w[x], av[i], lane);                        \
        }                                                                                     \
    }
#define MOA_TILE_4_STEPS(at) /* a's 4 inner indices from `at`, then their 4 rows of b */      \
    _Pragma("GCC unroll 5") for (i = 0; i < mr; i++) {                                      \
        av[i] = vld1q_f32(a + i * lda + (ptrdiff_t)(at));                                    \
        if (a_scale) {                                                                        \
            av[i] = vmulq_f32(av[i], vld1q_f32(a_scale + (at)));                              \
        }                                                                                     \
    }                                                                                         \
    MOA_TILE_STEP(0) MOA_TILE_STEP(1) MOA_TILE_STEP(2) MOA_TILE_STEP(3)
    for (; j + 8 <= inner; j += 8) { /* 8 steps per iteration: the loop's own instructions halved */
        MOA_TILE_4_STEPS(j)
        MOA_TILE_4_STEPS(j + 4)
    }
    if (j + 4 <= inner) {
        MOA_TILE_4_STEPS(j)
        j += 4;
    }
#undef MOA_TILE_4_STEPS
    if (j < inner) { /* 1 to 3 left: a's lanes past them 0, b's rows past them not read */
        const size_t left = inner - j;
        _Pragma("GCC unroll 5")
        for (i = 0; i < mr; i++) {
            av[i] = load_tail(a + i * lda + (ptrdiff_t)j, left, 0.0f);
            if (a_scale) {
                av[i] = vmulq_f32(av[i], load_tail(a_scale + j, left, 0.0f));
            }
        }
        MOA_TILE_STEP(0)
        if (left > 1) {
            MOA_TILE_STEP(1)
        }
        if (left > 2) {
            MOA_TILE_STEP(2)
        }
    }
#undef MOA_TILE_STEP
    if (nc == 4 * (size_t)nv) { /* whole rows: no test per vector */
        float *out = c;
        _Pragma("GCC unroll 5")
        for (i = 0; i < mr; i++, out += ldc) {
            _Pragma("GCC unroll 4")
            for (x = 0; x < nv; x++) {
                float32x4_t sum = acc[i][x];
                if (from_c) {
                    /* already c + the products */
                } else if (accumulate) {
                    const float32x4_t before = vld1q_f32(out + 4 * x);
                    sum = c_scale ? vfmaq_f32(before, sum, c_scale[x]) : vaddq_f32(before, sum);
                } else if (c_scale) {
                    sum = vmulq_f32(sum, c_scale[x]);
                }
                vst1q_f32(out + 4 * x, sum);
            }
        }
        return;
    }
    _Pragma("GCC unroll 5")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 4")
        for (x = 0; x < nv; x++) {
            float *const out = c + i * ldc + 4 * x;
            const size_t n = nc - 4 * (size_t)x < 4 ? nc - 4 * (size_t)x : 4;
            float32x4_t sum = acc[i][x];
            if ((size_t)(4 * x) >= nc) {
                continue;
            }
            if (accumulate) {
                const float32x4_t before = n == 4 ? vld1q_f32(out) : load_tail(out, n, 0.0f);
                sum = c_scale ? vfmaq_f32(before, sum, c_scale[x]) : vaddq_f32(before, sum);
            } else if (c_scale) {
                sum = vmulq_f32(sum, c_scale[x]);
            }
            if (n == 4) {
                vst1q_f32(out, sum);
            } else {
                store_tail(out, n, sum);
            }
        }
    }
}

/* The score panel: at most 16 keys, transposed (kt[j * 16 + c] = K[c][j]), and KT_DEPTH of the
 * depth at a time (16 KiB, L1-resident); this copies one small key tile inside the kernel, not
 * K^T (nor any n x n array) in memory, which is what DESIGN's "no transposed-key copy" rules out. */
#define KT_DEPTH 256
#define KT_WIDTH 16

/* The 4 x 4 block r (rows: 4 keys, columns: 4 depths) transposed into the panel at kt (depth
 * rows KT_WIDTH apart), its first n depths: trn1/trn2 on 32-bit, then on 64-bit lanes. */
INLINE void transpose_4x4(const float32x4_t r[4], size_t n, float *kt)
{
    const float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(r[0], r[1]));
    const float64x2_t t1 = vreinterpretq_f64_f32(vtrn2q_f32(r[0], r[1]));
    const float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(r[2], r[3]));
    const float64x2_t t3 = vreinterpretq_f64_f32(vtrn2q_f32(r[2], r[3]));
    vst1q_f32(kt, vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)));
    if (n > 1) {
        vst1q_f32(kt + KT_WIDTH, vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)));
    }
    if (n > 2) {
        vst1q_f32(kt + 2 * KT_WIDTH, vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)));
    }
    if (n > 3) {
        vst1q_f32(kt + 3 * KT_WIDTH, vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)));
    }
}

/* Keys [0, nk) of k (rows ldk elements apart), depths [0, nj), widened and transposed into the
 * panel kt (kt[j * KT_WIDTH + c] = k[c][j]); its columns past nk are 0. */
INLINE void pack_keys(enum element kind, size_t nk, size_t nj, const void *k, ptrdiff_t ldk, float *kt)
{
    float32x4_t r[4];
    size_t j, c;
    int t;
    if (nk == KT_WIDTH) { /* a whole panel: its full 4 x 4 blocks without a test */
        for (c = 0; c < KT_WIDTH; c += 4) {
            for (j = 0; j + 4 <= nj; j += 4) {
                _Pragma("GCC unroll 4")
                for (t = 0; t < 4; t++) {
                    r[t] = load4(kind, element_at(kind, k, (ptrdiff_t)(c + (size_t)t) * ldk + (ptrdiff_t)j), 4);
                }
                transpose_4x4(r, 4, kt + j * KT_WIDTH + c);
            }
        }
        if (j == nj) {
            return;
        }
    }
    for (c = 0; c < KT_WIDTH; c += 4) {
        for (j = nk == KT_WIDTH ? nj / 4 * 4 : 0; j < nj; j += 4) {
            const size_t n = nj - j < 4 ? nj - j : 4;
            _Pragma("GCC unroll 4")
            for (t = 0; t < 4; t++) {
                r[t] = c + (size_t)t < nk ? load4(kind, element_at(kind, k, (ptrdiff_t)(c + (size_t)t) * ldk + (ptrdiff_t)j), n)
                                          : vdupq_n_f32(0.0f);
            }
            transpose_4x4(r, n, kt + j * KT_WIDTH + c);
        }
    }
}

/* Columns [0, nc) of the score rows against one packed panel: 5 rows at a time, then 4, then one by one. */
INLINE void score_rows(size_t rows, size_t nc, size_t nj, const float *q, ptrdiff_t ldq, const float *kt,
                       const float32x4_t *column_scale, int add, float *s, ptrdiff_t lds)
{
    size_t r;
    for (r = 0; r + 5 <= rows; r += 5) {
        gemm_tile(5, 4, nc, nj, q + (ptrdiff_t)r * ldq, ldq, NULL, F32, kt, KT_WIDTH, column_scale, add,
                  s + (ptrdiff_t)r * lds, lds);
    }
    if (r + 4 <= rows) {
        gemm_tile(4, 4, nc, nj, q + (ptrdiff_t)r * ldq, ldq, NULL, F32, kt, KT_WIDTH, column_scale, add,
                  s + (ptrdiff_t)r * lds, lds);
        r += 4;
    }
    for (; r < rows; r++) {
        gemm_tile(1, 4, nc, nj, q + (ptrdiff_t)r * ldq, ldq, NULL, F32, kt, KT_WIDTH, column_scale, add,
                  s + (ptrdiff_t)r * lds, lds);
    }
}

/* s = (scale k_scale[c], or scale) * q k^T over keys of any element kind (the contract in moa/attention.h):
 * per panel of 16 keys, per KT_DEPTH of the depth, the panel packed once, then the row tiles down
 * the query rows. */
INLINE void scores(enum element kind, size_t rows, size_t cols, size_t depth, float scale, const float *q,
                   ptrdiff_t ldq, const void *k, ptrdiff_t ldk, const float *k_scale, float *s, ptrdiff_t lds)
{
    float kt[KT_DEPTH * KT_WIDTH] __attribute__((aligned(16)));
    size_t c, j0;
    int x;
    for (c = 0; c < cols; c += KT_WIDTH) {
        const size_t nc = cols - c < KT_WIDTH ? cols - c : KT_WIDTH;
        float32x4_t column_scale[4];
        _Pragma("GCC unroll 4")
        for (x = 0; x < 4; x++) {
            const size_t at = c + 4 * (size_t)x, n = (size_t)(4 * x) >= nc ? 0 : nc - 4 * (size_t)x;
            column_scale[x] = !k_scale ? vdupq_n_f32(scale)
                              : n >= 4 ? vmulq_n_f32(vld1q_f32(k_scale + at), scale)
                              : n     ? vmulq_n_f32(load_tail(k_scale + at, n, 0.0f), scale)
                                      : vdupq_n_f32(0.0f);
        }
        j0 = 0;
        do { /* the depth in chunks of KT_DEPTH; depth 0 still writes s = 0 */
            const size_t nj = depth - j0 < KT_DEPTH ? depth - j0 : KT_DEPTH;
            const int add = j0 > 0;
            pack_keys(kind, nc, nj, element_at(kind, k, (ptrdiff_t)c * ldk + (ptrdiff_t)j0), ldk, kt);
            if (nc == KT_WIDTH && !add) { /* the common case, its stores unconditional */
                score_rows(rows, KT_WIDTH, nj, q + (ptrdiff_t)j0, ldq, kt, column_scale, 0, s + (ptrdiff_t)c, lds);
            } else {
                score_rows(rows, nc, nj, q + (ptrdiff_t)j0, ldq, kt, column_scale, add, s + (ptrdiff_t)c, lds);
            }
            j0 += nj;
        } while (j0 < depth);
    }
}

/* acc += (p v_scale, or p) v for mr rows over values of any element kind: the tile across V's
 * columns 16, 8, then 4 at a time, the dv % 4 columns left one by one. */
INLINE void pv_rows(enum element kind, int mr, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const void *v,
                    ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    size_t e = 0, c;
    int i;
    for (; e + 16 <= dv; e += 16) {
        gemm_tile(mr, 4, 16, cols, p, ldp, v_scale, kind, element_at(kind, v, (ptrdiff_t)e), ldv, NULL, 1, acc + e, lda);
    }
    if (e + 8 <= dv) {
        gemm_tile(mr, 2, 8, cols, p, ldp, v_scale, kind, element_at(kind, v, (ptrdiff_t)e), ldv, NULL, 1, acc + e, lda);
        e += 8;
    }
    if (e + 4 <= dv) {
        gemm_tile(mr, 1, 4, cols, p, ldp, v_scale, kind, element_at(kind, v, (ptrdiff_t)e), ldv, NULL, 1, acc + e, lda);
        e += 4;
    }
    for (; e < dv; e++) {
        for (i = 0; i < mr; i++) {
            float sum = acc[i * lda + (ptrdiff_t)e];
            for (c = 0; c < cols; c++) {
                const float weight = v_scale ? p[i * ldp + (ptrdiff_t)c] * v_scale[c] : p[i * ldp + (ptrdiff_t)c];
                sum += weight * element_value(kind, v, (ptrdiff_t)c * ldv + (ptrdiff_t)e);
            }
            acc[i * lda + (ptrdiff_t)e] = sum;
        }
    }
}

INLINE void pv(enum element kind, size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const void *v,
               ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    size_t r = 0;
    for (; r + 5 <= rows; r += 5) {
        pv_rows(kind, 5, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, v_scale, acc + (ptrdiff_t)r * lda, lda);
    }
    for (; r + 4 <= rows; r += 4) {
        pv_rows(kind, 4, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, v_scale, acc + (ptrdiff_t)r * lda, lda);
    }
    for (; r < rows; r++) {
        pv_rows(kind, 1, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, v_scale, acc + (ptrdiff_t)r * lda, lda);
    }
}

void moa_attn_scores_f32_5x16_neon(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                   ptrdiff_t ldq, const float *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    scores(F32, rows, cols, depth, scale, q, ldq, k, ldk, NULL, s, lds);
}

void moa_attn_pv_f32_5x16_neon(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const float *v,
                               ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    pv(F32, rows, cols, dv, p, ldp, v, ldv, NULL, acc, lda);
}

void moa_attn_scores_f32_s8_5x16_neon(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                      ptrdiff_t ldq, const int8_t *k, ptrdiff_t ldk, const float *k_scale, float *s,
                                      ptrdiff_t lds)
{
    scores(S8, rows, cols, depth, scale, q, ldq, k, ldk, k_scale, s, lds);
}

void moa_attn_pv_f32_s8_5x16_neon(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                  const int8_t *v, ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    pv(S8, rows, cols, dv, p, ldp, v, ldv, v_scale, acc, lda);
}

void moa_attn_scores_f32_f16_5x16_neon(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                       ptrdiff_t ldq, const uint16_t *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    scores(F16, rows, cols, depth, scale, q, ldq, k, ldk, NULL, s, lds);
}

void moa_attn_pv_f32_f16_5x16_neon(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                   const uint16_t *v, ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    pv(F16, rows, cols, dv, p, ldp, v, ldv, NULL, acc, lda);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

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
        const float32x4_t e0 = exp_ps_(vsubq_f32(vld1q_f32(x + c), vm), 0);
        const float32x4_t e1 = exp_ps_(vsubq_f32(vld1q_f32(x + c + 4), vm), 0);
        vst1q_f32(x + c, e0);
        vst1q_f32(x + c + 4, e1);
        s0 = vaddq_f32(s0, e0);
        s1 = vaddq_f32(s1, e1);
    }
    for (; c < n; c += 4) {
        const size_t left = n - c < 4 ? n - c : 4;
        const float32x4_t e0 = exp_ps_(vsubq_f32(load_tail(x + c, left, -INFINITY), vm), 0); /* exp(-inf) = 0 */
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
