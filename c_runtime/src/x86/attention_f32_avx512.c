/* AVX-512F attention micro-kernels (moa/attention.h), 16 floats per zmm.
 *   scores 12x32: a GEMM tile over packed, transposed panels of 32 keys and 12 query rows (below);
 *   pv 12x32:   12 rows x 2 zmm of the accumulator stay in registers over all keys, each key a
 *               broadcast weight (embedded broadcast) times two vectors of one row of V; the
 *               usual row strides of P (a key block of 128, 256 or 512) as constants;
 *   max, exp, scale, vexp: 32 floats per step, a masked step for the tail;
 *   over an int8 cache (_s8) and a float16 cache (_f16): the same two tiles, written once
 *               (scores_body, pv_body) with the element load a constant parameter (enum elem):
 *               each int8 row widened to float in registers (vpmovsxbd, vcvtdq2ps), or 16
 *               halves by one vcvtph2ps, as it is loaded: into the key panel, or as V's row. */
#include "moa/isa.h"

#if MOA_ISA_AVX512
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "moa/attention.h"

#define INLINE static inline __attribute__((always_inline))

/* The shared exp (moa/attention.h). p * 2^n is one VSCALEFPS: the same product, rounded once, as
 * the bit-built 2^n times p of the other variants (2^n is exact for every n >= -126 the clamp
 * leaves), and its zero mask gives the results under FLT_MIN their 0. `clamp_hi` is 0 where
 * every x <= 0 (softmax: x = s - max) and the upper clamp cannot act. */
INLINE __m512 exp_ps_(__m512 x, int clamp_hi)
{
    const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(MOA_EXPF_LO), _CMP_LT_OQ); /* NaN: no */
    __m512 t, n, r, p;
    if (clamp_hi) {
        x = _mm512_min_ps(_mm512_set1_ps(MOA_EXPF_HI), x); /* the second operand is kept when x is NaN */
    }
    x = _mm512_max_ps(_mm512_set1_ps(MOA_EXPF_LO), x);
    t = _mm512_fmadd_ps(x, _mm512_set1_ps(MOA_EXPF_LOG2E), _mm512_set1_ps(MOA_EXPF_ROUND));
    n = _mm512_sub_ps(t, _mm512_set1_ps(MOA_EXPF_ROUND));
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(MOA_EXPF_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(MOA_EXPF_LN2_LO), r);
    p = _mm512_fmadd_ps(_mm512_set1_ps(MOA_EXPF_P0), r, _mm512_set1_ps(MOA_EXPF_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(MOA_EXPF_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(MOA_EXPF_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(MOA_EXPF_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(MOA_EXPF_P5));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps((__mmask16)~under, p, n);
}

/* The softmax step's exp(d), d = s - max <= 0 (or NaN): 2^y with y = d log2(e), n = round(y) by
 * VRNDSCALEPS, 2^(y - n) on [-1/2, 1/2] a degree-6 minimax polynomial (tests/fit_vmath.py's fit,
 * 0.13 ulp), times 2^n by VSCALEFPS; y < -126 (a result under FLT_MIN, -inf: a hidden key)
 * gives 0. 12 operations against the shared exp's 16: the softmax is a tenth of attention's
 * time. Its error, relative: |d| eps from rounding d and y, as the shared exp carries |d| eps / 2
 * from d, plus under 2 ulp; moa/attention.h states the bound the tests hold every softmax to. */
INLINE __m512 softmax_exp(__m512 d)
{
    const __m512 y = _mm512_mul_ps(d, _mm512_set1_ps(MOA_EXPF_LOG2E));
    const __mmask16 under = _mm512_cmp_ps_mask(y, _mm512_set1_ps(-126.0f), _CMP_LT_OQ); /* NaN: no */
    const __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(y, n);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.535336050e-04f), f, _mm512_set1_ps(1.339887502e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618436918e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332367e-02f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264774e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471825e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps((__mmask16)~under, p, n);
}

INLINE __m512 exp_ps(__m512 x)
{
    return exp_ps_(x, 1);
}

INLINE __mmask16 tail_mask(size_t n) /* the first n < 16 lanes */
{
    return (__mmask16)((1u << n) - 1u);
}

/* The score tile is a register-blocked GEMM tile, s = Q (K^T): 32 keys of K are packed, transposed,
 * into a depth x 32 panel on the stack (at most KT_DEPTH x 32 floats = 32 KiB), as every GEMM packs
 * its B panel; the panel then serves all `rows` query rows, 12 at a time, each row two zmm
 * accumulators (32 keys), Q[r][j] broadcast from memory: 24 FMAs per two panel loads (the 16 x 16
 * tile before it, one load and 16 broadcasts per 16 FMAs, ran ~5-10% slower in L1).
 * Q's rows are packed the same way first, 12 rows to a transposed panel (QT_FLOATS at a time),
 * so a tile reads all 12 rows' Q[r][j] from one pointer: 12 row pointers outnumber the
 * registers, and their reloads from the stack made the loop load-bound.
 * This copies small tiles inside the kernel; it is not K^T (nor any n x n array) in
 * memory, which is what DESIGN's "no transposed-key copy" rules out. */
#define KT_DEPTH 256
#define QROWS 12 /* query rows per packed panel and per score tile */
#define QT_FLOATS 8192 /* 32 KiB: 120 query rows at depth 64 */

/* The 16 x 16 block in a[] (a[i] = row i) transposed into kt[j * ld + c] for j < nj, the lanes `keep`. */
INLINE void transpose_16x16(__m512 a[16], size_t nj, float *kt, size_t ld, __mmask16 keep)
{
    __m512 b[16];
    int i;
    _Pragma("GCC unroll 16")
    for (i = 0; i < 8; i++) { /* pairs of rows interleaved */
        b[2 * i] = _mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]);
        b[2 * i + 1] = _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]);
    }
    _Pragma("GCC unroll 16")
    for (i = 0; i < 4; i++) { /* quads: a[4g + t] holds in 128-bit chunk h column 4h + t of rows 4g..4g+3 */
        const __m512d x0 = _mm512_castps_pd(b[4 * i]), x1 = _mm512_castps_pd(b[4 * i + 1]);
        const __m512d x2 = _mm512_castps_pd(b[4 * i + 2]), x3 = _mm512_castps_pd(b[4 * i + 3]);
        a[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(x0, x2));
        a[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x0, x2));
        a[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(x1, x3));
        a[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(x1, x3));
    }
    _Pragma("GCC unroll 16")
    for (i = 0; i < 4; i++) {
        b[i] = _mm512_shuffle_f32x4(a[i], a[4 + i], _MM_SHUFFLE(2, 0, 2, 0));
        b[4 + i] = _mm512_shuffle_f32x4(a[i], a[4 + i], _MM_SHUFFLE(3, 1, 3, 1));
        b[8 + i] = _mm512_shuffle_f32x4(a[8 + i], a[12 + i], _MM_SHUFFLE(2, 0, 2, 0));
        b[12 + i] = _mm512_shuffle_f32x4(a[8 + i], a[12 + i], _MM_SHUFFLE(3, 1, 3, 1));
    }
    _Pragma("GCC unroll 16")
    for (i = 0; i < 4; i++) { /* columns t, 8 + t, 4 + t, 12 + t of all 16 rows */
        const __m512 c0 = _mm512_shuffle_f32x4(b[i], b[8 + i], _MM_SHUFFLE(2, 0, 2, 0));
        const __m512 c2 = _mm512_shuffle_f32x4(b[i], b[8 + i], _MM_SHUFFLE(3, 1, 3, 1));
        const __m512 c1 = _mm512_shuffle_f32x4(b[4 + i], b[12 + i], _MM_SHUFFLE(2, 0, 2, 0));
        const __m512 c3 = _mm512_shuffle_f32x4(b[4 + i], b[12 + i], _MM_SHUFFLE(3, 1, 3, 1));
        if ((size_t)i < nj) {
            _mm512_mask_storeu_ps(kt + ld * (size_t)i, keep, c0);
        }
        if ((size_t)(4 + i) < nj) {
            _mm512_mask_storeu_ps(kt + ld * (size_t)(4 + i), keep, c1);
        }
        if ((size_t)(8 + i) < nj) {
            _mm512_mask_storeu_ps(kt + ld * (size_t)(8 + i), keep, c2);
        }
        if ((size_t)(12 + i) < nj) {
            _mm512_mask_storeu_ps(kt + ld * (size_t)(12 + i), keep, c3);
        }
    }
}

/* --- the element loads: K's and V's rows as float, int8 or half --- */

/* What a K or V row holds. Every tile below takes it as a constant, so each public kernel
 * inlines one load and the switch folds away. */
enum elem { ELEM_F32, ELEM_S8, ELEM_F16 };

/* n <= 16 int8 at x as 16 floats (exact), the lanes past n 0. A partial row goes through a
 * zeroed 16-byte buffer: AVX-512F alone has no byte-masked load. */
INLINE __m512 load_s8(const int8_t *x, size_t n)
{
    __m128i bytes;
    if (n == 16) {
        bytes = _mm_loadu_si128((const __m128i *)(const void *)x);
    } else {
        int8_t buf[16] = {0};
        memcpy(buf, x, n);
        bytes = _mm_loadu_si128((const __m128i *)(const void *)buf);
    }
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
}

/* n <= 16 halves at x as 16 floats (exact), the lanes past n 0; a partial row through a zeroed buffer. */
INLINE __m512 load_f16(const uint16_t *x, size_t n)
{
    __m256i halves;
    if (n == 16) {
        halves = _mm256_loadu_si256((const __m256i *)(const void *)x);
    } else {
        uint16_t buf[16] = {0};
        memcpy(buf, x, n * sizeof *x);
        halves = _mm256_loadu_si256((const __m256i *)(const void *)buf);
    }
    return _mm512_cvtph_ps(halves);
}

/* Elements i .. i + n - 1 (n <= 16) of the row at x as 16 floats, the lanes past n 0. */
INLINE __m512 load16(enum elem e, const void *x, ptrdiff_t i, size_t n)
{
    switch (e) {
    case ELEM_S8:
        return load_s8((const int8_t *)x + i, n);
    case ELEM_F16:
        return load_f16((const uint16_t *)x + i, n);
    default:
        return _mm512_maskz_loadu_ps(n == 16 ? (__mmask16)0xFFFF : tail_mask(n), (const float *)x + i);
    }
}

/* Row r of an array of rows ld elements apart. */
INLINE const void *row_at(enum elem e, const void *x, ptrdiff_t r, ptrdiff_t ld)
{
    const ptrdiff_t size = e == ELEM_S8 ? 1 : e == ELEM_F16 ? 2 : 4;
    return (const char *)x + r * ld * size;
}

/* The 16 x 16 block at x (rows ldx apart; the first nr rows and nj columns real, the rest read
 * as 0), each row widened to float in registers, transposed into kt[j * ld + c] for j < nj (the lanes `keep`). */
INLINE void pack_16x16(enum elem e, int nr, size_t nj, const void *x, ptrdiff_t ldx, float *kt, size_t ld,
                       __mmask16 keep)
{
    __m512 a[16];
    int i;
    _Pragma("GCC unroll 16")
    for (i = 0; i < 16; i++) {
        a[i] = i < nr ? load16(e, row_at(e, x, i, ldx), 0, nj) : _mm512_setzero_ps();
    }
    transpose_16x16(a, nj, kt, ld, keep);
}

/* s[0:mr][0:16 nv] (the last vector's lanes cm) = scale * q[0:mr][0:nj] kt[0:nj][0:16 nv], plus s
 * when `add`; qt holds the rows of q packed QROWS to a panel (qt[j * QROWS + i] = q[i][j]), kt
 * the keys 32 to a panel (kt[j * 32 + c] = k[c][j]): per depth step one or two panel loads serve
 * mr x nv FMAs, each Q[r][j] broadcast from memory. */
INLINE void scores_tile(int mr, int nv, size_t nj, const float *qt, const float *kt, const __m512 scale[2],
                        __mmask16 cm, int add, float *s, ptrdiff_t lds)
{
    __m512 acc[QROWS][2];
    size_t j;
    int i, x;
    _Pragma("GCC unroll 16")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            acc[i][x] = _mm512_setzero_ps();
        }
    }
    for (j = 0; j < nj; j++) {
        const __m512 k0 = _mm512_load_ps(kt + 32 * j), k1 = nv == 2 ? _mm512_load_ps(kt + 32 * j + 16) : k0;
        _Pragma("GCC unroll 16")
        for (i = 0; i < mr; i++) {
            const __m512 qv = _mm512_set1_ps(qt[QROWS * j + (size_t)i]);
            acc[i][0] = _mm512_fmadd_ps(qv, k0, acc[i][0]);
            if (nv == 2) {
                acc[i][1] = _mm512_fmadd_ps(qv, k1, acc[i][1]);
            }
        }
    }
    _Pragma("GCC unroll 16")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            const __mmask16 m = x == nv - 1 ? cm : (__mmask16)0xFFFF;
            float *out = s + i * lds + 16 * x;
            const __m512 before = add ? _mm512_maskz_loadu_ps(m, out) : _mm512_setzero_ps();
            _mm512_mask_storeu_ps(out, m, _mm512_fmadd_ps(acc[i][x], scale[x], before));
        }
    }
}

/* One panel of up to 32 keys against `rows` packed query rows: whole panels of QROWS, then the
 * last one's rows 8, 4, then 1 at a time. */
INLINE void scores_panel(int nv, size_t rows, size_t nj, const float *qt, const float *kt, const __m512 scale[2],
                         __mmask16 cm, int add, float *s0, ptrdiff_t lds)
{
    size_t r = 0, base, i0;
    for (; r + QROWS <= rows; r += QROWS) {
        scores_tile(QROWS, nv, nj, qt + r * nj, kt, scale, cm, add, s0 + (ptrdiff_t)r * lds, lds);
    }
    base = r * nj; /* the last panel */
    i0 = 0;
    if (rows - r >= 8) {
        scores_tile(8, nv, nj, qt + base, kt, scale, cm, add, s0 + (ptrdiff_t)r * lds, lds);
        r += 8, i0 += 8;
    }
    if (rows - r >= 4) {
        scores_tile(4, nv, nj, qt + base + i0, kt, scale, cm, add, s0 + (ptrdiff_t)r * lds, lds);
        r += 4, i0 += 4;
    }
    for (; r < rows; r++, i0++) {
        scores_tile(1, nv, nj, qt + base + i0, kt, scale, cm, add, s0 + (ptrdiff_t)r * lds, lds);
    }
}

/* The score kernel for keys of element type e: the panel packs 32 keys widened to float; over
 * int8 keys (k_scale) each column's scale is scale * k_scale[c], applied once to its sum. The
 * depth in chunks of KT_DEPTH, the rows in chunks whose packed Q fits QT_FLOATS (depth 64: 120
 * rows, so a query block's Q is packed once and each key panel once). */
INLINE void scores_body(enum elem e, size_t rows, size_t cols, size_t depth, float scale, const float *q,
                        ptrdiff_t ldq, const void *k, ptrdiff_t ldk, const float *k_scale, float *s, ptrdiff_t lds)
{
    float kt[KT_DEPTH * 32] __attribute__((aligned(64))); /* the packed panel: 32 keys, transposed */
    float qt[QT_FLOATS] __attribute__((aligned(64)));     /* the packed query rows, QROWS to a panel */
    const __mmask16 q_lanes = (__mmask16)((1u << QROWS) - 1u);
    size_t c, j0, j, r0, r;
    j0 = 0;
    do { /* depth 0 still writes s = 0 */
        const size_t nj = depth - j0 < KT_DEPTH ? depth - j0 : KT_DEPTH;
        const size_t chunk = nj ? QT_FLOATS / (QROWS * nj) * QROWS : rows; /* >= 24 rows */
        for (r0 = 0; r0 < rows; r0 += chunk) {
            const size_t nr = rows - r0 < chunk ? rows - r0 : chunk;
            for (r = 0; r < nr; r += QROWS) {
                for (j = 0; j < nj; j += 16) {
                    pack_16x16(ELEM_F32, nr - r < QROWS ? (int)(nr - r) : QROWS, nj - j < 16 ? nj - j : 16,
                               q + (ptrdiff_t)(r0 + r) * ldq + (ptrdiff_t)(j0 + j), ldq, qt + r * nj + QROWS * j, QROWS,
                               q_lanes);
                }
            }
            for (c = 0; c < cols; c += 32) {
                const size_t nc = cols - c >= 32 ? 32 : cols - c;
                const int nv = nc > 16 ? 2 : 1;
                const size_t last = nc - 16 * (size_t)(nv - 1);
                const __mmask16 cm = last == 16 ? (__mmask16)0xFFFF : tail_mask(last);
                __m512 column_scale[2];
                int x;
                for (x = 0; x < nv; x++) {
                    const __mmask16 m = x == nv - 1 ? cm : (__mmask16)0xFFFF;
                    column_scale[x] = e == ELEM_S8
                                          ? _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_maskz_loadu_ps(m, k_scale + c + 16 * (size_t)x))
                                          : _mm512_set1_ps(scale);
                    for (j = 0; j < nj; j += 16) {
                        const void *block = row_at(e, row_at(e, k, (ptrdiff_t)(c + 16 * (size_t)x), ldk), (ptrdiff_t)(j0 + j), 1);
                        const size_t keys = x == nv - 1 ? last : 16, depths = nj - j < 16 ? nj - j : 16;
                        if (keys == 16 && depths == 16) { /* a whole block: its copy has no bounds to test */
                            pack_16x16(e, 16, 16, block, ldk, kt + 32 * j + 16 * (size_t)x, 32, (__mmask16)0xFFFF);
                        } else {
                            pack_16x16(e, (int)keys, depths, block, ldk, kt + 32 * j + 16 * (size_t)x, 32, (__mmask16)0xFFFF);
                        }
                    }
                }
                if (nv == 2) {
                    scores_panel(2, nr, nj, qt, kt, column_scale, cm, j0 > 0, s + (ptrdiff_t)r0 * lds + (ptrdiff_t)c, lds);
                } else {
                    scores_panel(1, nr, nj, qt, kt, column_scale, cm, j0 > 0, s + (ptrdiff_t)r0 * lds + (ptrdiff_t)c, lds);
                }
            }
        }
        j0 += nj;
    } while (j0 < depth);
}

void moa_attn_scores_f32_12x32_avx512(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                      ptrdiff_t ldq, const float *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    scores_body(ELEM_F32, rows, cols, depth, scale, q, ldq, k, ldk, NULL, s, lds);
}

void moa_attn_scores_f32_s8_12x32_avx512(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                         ptrdiff_t ldq, const int8_t *k, ptrdiff_t ldk, const float *k_scale,
                                         float *s, ptrdiff_t lds)
{
    scores_body(ELEM_S8, rows, cols, depth, scale, q, ldq, k, ldk, k_scale, s, lds);
}

void moa_attn_scores_f32_f16_12x32_avx512(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                          ptrdiff_t ldq, const uint16_t *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    scores_body(ELEM_F16, rows, cols, depth, scale, q, ldq, k, ldk, NULL, s, lds);
}

/* acc[0:mr][0:16 nv] += p[0:mr][0:cols] v[0:cols][0:16 nv] (int8: each weight p * v_scale); the
 * last vector takes `last` <= 16 lanes. */
INLINE void pv_tile(enum elem e, int mr, int nv, size_t last, size_t cols, const float *p, ptrdiff_t ldp,
                    const void *v, ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    const __mmask16 last_mask = last == 16 ? (__mmask16)0xFFFF : tail_mask(last);
    __m512 a[12][2], w[2];
    size_t c;
    int i, x;
    _Pragma("GCC unroll 16")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 16")
        for (x = 0; x < nv; x++) {
            a[i][x] = _mm512_maskz_loadu_ps(x == nv - 1 ? last_mask : (__mmask16)0xFFFF, acc + i * lda + 16 * x);
        }
    }
    for (c = 0; c < cols; c++) {
        const void *v_row = row_at(e, v, (ptrdiff_t)c, ldv);
        _Pragma("GCC unroll 16")
        for (x = 0; x < nv; x++) {
            w[x] = load16(e, v_row, 16 * x, x == nv - 1 ? last : 16);
        }
        _Pragma("GCC unroll 16")
        for (i = 0; i < mr; i++) {
            const __m512 weight = _mm512_set1_ps(e == ELEM_S8 ? p[i * ldp + (ptrdiff_t)c] * v_scale[c]
                                                              : p[i * ldp + (ptrdiff_t)c]);
            _Pragma("GCC unroll 16")
            for (x = 0; x < nv; x++) {
                a[i][x] = _mm512_fmadd_ps(weight, w[x], a[i][x]);
            }
        }
    }
    _Pragma("GCC unroll 16")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 16")
        for (x = 0; x < nv; x++) {
            _mm512_mask_storeu_ps(acc + i * lda + 16 * x, x == nv - 1 ? last_mask : (__mmask16)0xFFFF, a[i][x]);
        }
    }
}

/* mr rows of acc, all dv columns: 32 at a time (two zmm per row), then a masked 16. */
INLINE void pv_rows(enum elem e, int mr, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const void *v,
                    ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    size_t d = 0;
    for (; d + 32 <= dv; d += 32) {
        pv_tile(e, mr, 2, 16, cols, p, ldp, row_at(e, v, (ptrdiff_t)d, 1), ldv, v_scale, acc + d, lda);
    }
    for (; d < dv; d += 16) {
        pv_tile(e, mr, 1, dv - d >= 16 ? 16 : dv - d, cols, p, ldp, row_at(e, v, (ptrdiff_t)d, 1), ldv, v_scale,
                acc + d, lda);
    }
}

/* 12 rows x 32 columns of the accumulator in 24 zmm over all keys: each key one row of V (two
 * loads) serves 24 FMAs, its weights P[r][c] broadcast from memory; then 4 rows, then 1. */
INLINE void pv_body(enum elem e, size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const void *v,
                    ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    size_t r = 0;
    for (; r + 12 <= rows; r += 12) {
        pv_rows(e, 12, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, v_scale, acc + (ptrdiff_t)r * lda, lda);
    }
    for (; r + 4 <= rows; r += 4) {
        pv_rows(e, 4, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, v_scale, acc + (ptrdiff_t)r * lda, lda);
    }
    for (; r < rows; r++) {
        pv_rows(e, 1, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, v_scale, acc + (ptrdiff_t)r * lda, lda);
    }
}

void moa_attn_pv_f32_12x32_avx512(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                  const float *v, ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    /* P's 12 row pointers outnumber the registers; with its stride a constant, one pointer and
     * constant displacements reach every row (5-10% faster in L1). P is the score tile, so its
     * stride is the key block, a power of two the cost model picks. */
    switch (ldp) {
    case 128:
        pv_body(ELEM_F32, rows, cols, dv, p, 128, v, ldv, NULL, acc, lda);
        return;
    case 256:
        pv_body(ELEM_F32, rows, cols, dv, p, 256, v, ldv, NULL, acc, lda);
        return;
    case 512:
        pv_body(ELEM_F32, rows, cols, dv, p, 512, v, ldv, NULL, acc, lda);
        return;
    default:
        pv_body(ELEM_F32, rows, cols, dv, p, ldp, v, ldv, NULL, acc, lda);
    }
}

void moa_attn_pv_f32_s8_12x32_avx512(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                     const int8_t *v, ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    pv_body(ELEM_S8, rows, cols, dv, p, ldp, v, ldv, v_scale, acc, lda);
}

void moa_attn_pv_f32_f16_12x32_avx512(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                      const uint16_t *v, ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    pv_body(ELEM_F16, rows, cols, dv, p, ldp, v, ldv, NULL, acc, lda);
}

float moa_attn_max_f32_u32_avx512(size_t n, const float *x)
{
    const __m512 lowest = _mm512_set1_ps(-INFINITY);
    __m512 m0 = lowest, m1 = lowest;
    __mmask16 unordered = 0;
    size_t c = 0;
    for (; c + 32 <= n; c += 32) {
        const __m512 x0 = _mm512_loadu_ps(x + c), x1 = _mm512_loadu_ps(x + c + 16);
        unordered |= _mm512_cmp_ps_mask(x0, x1, _CMP_UNORD_Q);
        m0 = _mm512_max_ps(m0, x0);
        m1 = _mm512_max_ps(m1, x1);
    }
    for (; c < n; c += 16) {
        const __mmask16 m = n - c >= 16 ? (__mmask16)0xFFFF : tail_mask(n - c);
        const __m512 x0 = _mm512_mask_loadu_ps(lowest, m, x + c);
        unordered |= _mm512_cmp_ps_mask(x0, x0, _CMP_UNORD_Q);
        m0 = _mm512_max_ps(m0, x0);
    }
    return unordered ? NAN : _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

float moa_attn_exp_f32_u32_avx512(size_t n, float *x, float m)
{
    const __m512 vm = _mm512_set1_ps(m);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t c = 0;
    for (; c + 32 <= n; c += 32) {
        const __m512 e0 = exp_ps_(_mm512_sub_ps(_mm512_loadu_ps(x + c), vm), 0);
        const __m512 e1 = exp_ps_(_mm512_sub_ps(_mm512_loadu_ps(x + c + 16), vm), 0);
        _mm512_storeu_ps(x + c, e0);
        _mm512_storeu_ps(x + c + 16, e1);
        s0 = _mm512_add_ps(s0, e0);
        s1 = _mm512_add_ps(s1, e1);
    }
    for (; c < n; c += 16) {
        const __mmask16 k = n - c >= 16 ? (__mmask16)0xFFFF : tail_mask(n - c);
        const __m512 e0 = _mm512_maskz_mov_ps(k, exp_ps_(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + c), vm), 0));
        _mm512_mask_storeu_ps(x + c, k, e0);
        s0 = _mm512_add_ps(s0, e0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

/* The online-softmax step of R rows at once: their max loops, reductions and exp loops are
 * independent chains the core overlaps (one row at a time is latency-bound). */
INLINE void softmax_rows(int R, size_t cols, float *s, ptrdiff_t lds, float *m, float *l, float *alpha)
{
    const __m512 lowest = _mm512_set1_ps(-INFINITY);
    __m512 mx[4], vm[4], sum[4];
    __mmask16 unordered[4];
    float m_new[4];
    size_t c;
    int i;
    _Pragma("GCC unroll 4")
    for (i = 0; i < R; i++) {
        mx[i] = lowest;
        unordered[i] = 0;
        sum[i] = _mm512_setzero_ps();
    }
    for (c = 0; c < cols; c += 16) {
        const __mmask16 k = cols - c >= 16 ? (__mmask16)0xFFFF : tail_mask(cols - c);
        _Pragma("GCC unroll 4")
        for (i = 0; i < R; i++) {
            const __m512 x = _mm512_mask_loadu_ps(lowest, k, s + i * lds + (ptrdiff_t)c);
            unordered[i] |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
            mx[i] = _mm512_max_ps(mx[i], x);
        }
    }
    _Pragma("GCC unroll 4")
    for (i = 0; i < R; i++) {
        const float row_max = unordered[i] ? NAN : _mm512_reduce_max_ps(mx[i]);
        m_new[i] = !(row_max <= m[i]) ? row_max : m[i]; /* a NaN wins, so NaN propagates */
        alpha[i] = 1.0f;
        /* a row whose keys are all hidden so far: exp(-inf - 0) makes its p 0 */
        vm[i] = _mm512_set1_ps(m_new[i] == -INFINITY ? 0.0f : m_new[i]);
    }
    for (c = 0; c < cols; c += 16) {
        const __mmask16 k = cols - c >= 16 ? (__mmask16)0xFFFF : tail_mask(cols - c);
        _Pragma("GCC unroll 4")
        for (i = 0; i < R; i++) {
            float *x = s + i * lds + (ptrdiff_t)c;
            const __m512 e = _mm512_maskz_mov_ps(k, softmax_exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x), vm[i])));
            _mm512_mask_storeu_ps(x, k, e);
            sum[i] = _mm512_add_ps(sum[i], e);
        }
    }
    _Pragma("GCC unroll 4")
    for (i = 0; i < R; i++) {
        if (m_new[i] == -INFINITY) {
            continue;
        }
        moa_attn_row_statistics(m_new[i], _mm512_reduce_add_ps(sum[i]), &m[i], &l[i], &alpha[i]);
    }
}

void moa_attn_softmax_f32_4x32_avx512(size_t rows, size_t cols, float *s, ptrdiff_t lds, float *m, float *l,
                                      float *alpha)
{
    size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        softmax_rows(4, cols, s + (ptrdiff_t)r * lds, lds, m + r, l + r, alpha + r);
    }
    for (; r < rows; r++) {
        softmax_rows(1, cols, s + (ptrdiff_t)r * lds, lds, m + r, l + r, alpha + r);
    }
}

void moa_attn_scale_f32_u32_avx512(size_t n, float alpha, const float *x, float *y)
{
    const __m512 a = _mm512_set1_ps(alpha);
    size_t c = 0;
    for (; c + 32 <= n; c += 32) {
        const __m512 x0 = _mm512_loadu_ps(x + c), x1 = _mm512_loadu_ps(x + c + 16);
        _mm512_storeu_ps(y + c, _mm512_mul_ps(a, x0));
        _mm512_storeu_ps(y + c + 16, _mm512_mul_ps(a, x1));
    }
    for (; c < n; c += 16) {
        const __mmask16 k = n - c >= 16 ? (__mmask16)0xFFFF : tail_mask(n - c);
        _mm512_mask_storeu_ps(y + c, k, _mm512_mul_ps(a, _mm512_maskz_loadu_ps(k, x + c)));
    }
}

void moa_vexp_f32_u32_avx512(size_t n, const float *x, float *y)
{
    size_t c = 0;
    for (; c + 32 <= n; c += 32) {
        const __m512 e0 = exp_ps(_mm512_loadu_ps(x + c)), e1 = exp_ps(_mm512_loadu_ps(x + c + 16));
        _mm512_storeu_ps(y + c, e0);
        _mm512_storeu_ps(y + c + 16, e1);
    }
    for (; c < n; c += 16) {
        const __mmask16 k = n - c >= 16 ? (__mmask16)0xFFFF : tail_mask(n - c);
        _mm512_mask_storeu_ps(y + c, k, exp_ps(_mm512_maskz_loadu_ps(k, x + c)));
    }
}

#else
typedef int moa_attention_f32_avx512_unused; /* ISO C: a translation unit is not empty */
#endif
