/* AVX2 + FMA attention micro-kernels (moa/attention.h), 8 floats per ymm (16 ymm registers).
 *   scores 6x16: a GEMM tile over a packed, transposed panel of 16 keys (see below): 6 query
 *               rows x 2 ymm = 12 accumulators, the panel row's 2 vectors and one broadcast of
 *               Q: 15 of the 16 registers;
 *   pv 6x16:    6 rows x 2 ymm of the accumulator stay in registers over all keys, each key a
 *               broadcast weight times two vectors of one row of V (again 12 + 2 + 1);
 *   max, exp, scale, vexp: 16 floats per step, a masked step for the tail;
 *   softmax 4x8: the online-softmax step of 4 rows at once (their max, exp and sum chains
 *               interleaved), 8 floats per step;
 *   over an int8 cache (_s8) and a float16 cache (_f16): the same two tiles, written once
 *               (scores_body, pv_body) with the element load a constant parameter (enum elem):
 *               8 int8 widened to 8 floats in registers (vpmovsxbd, vcvtdq2ps), or 8 halves
 *               (F16C's vcvtph2ps, which every AVX2 core has; one by one through moa/half.h in
 *               a build without -mf16c), as they are loaded into the key panel or as V's row. */
#include "moa/isa.h"

#if MOA_ISA_AVX2
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "moa/attention.h"
#include "moa/half.h"

#define INLINE static inline __attribute__((always_inline))

/* The shared exp (moa/attention.h). `clamp_hi` is 0 where every x <= 0 (softmax: x = s - max)
 * and the upper clamp cannot act. */
INLINE __m256 exp_ps_(__m256 x, int clamp_hi)
{
    const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(MOA_EXPF_LO), _CMP_LT_OQ); /* NaN: no */
    __m256 t, n, r, p;
    __m256i bits;
    if (clamp_hi) {
        x = _mm256_min_ps(_mm256_set1_ps(MOA_EXPF_HI), x); /* the second operand is kept when x is NaN */
    }
    x = _mm256_max_ps(_mm256_set1_ps(MOA_EXPF_LO), x);
    t = _mm256_fmadd_ps(x, _mm256_set1_ps(MOA_EXPF_LOG2E), _mm256_set1_ps(MOA_EXPF_ROUND));
    n = _mm256_sub_ps(t, _mm256_set1_ps(MOA_EXPF_ROUND));
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(MOA_EXPF_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(MOA_EXPF_LN2_LO), r);
    p = _mm256_fmadd_ps(_mm256_set1_ps(MOA_EXPF_P0), r, _mm256_set1_ps(MOA_EXPF_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(MOA_EXPF_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(MOA_EXPF_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(MOA_EXPF_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(MOA_EXPF_P5));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    bits = _mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(t), 23), _mm256_set1_epi32(127 << 23));
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

INLINE __m256 exp_ps(__m256 x)
{
    return exp_ps_(x, 1);
}

INLINE __m256i tail_mask(size_t n) /* lanes < n (n <= 8) all ones */
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

INLINE float hsum(__m256 x)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* --- the element loads: K's and V's rows as float, int8 or half --- */

/* What a K or V row holds. Every tile below takes it as a constant, so each public kernel
 * inlines one load and the switch folds away. */
enum elem { ELEM_F32, ELEM_S8, ELEM_F16 };

/* n <= 8 int8 at x as 8 floats (exact), the lanes past n 0 (a partial row through a zeroed buffer). */
INLINE __m256 load_s8(const int8_t *x, size_t n)
{
    __m128i bytes;
    if (n == 8) {
        bytes = _mm_loadl_epi64((const __m128i *)(const void *)x);
    } else {
        int8_t buf[16] = {0};
        memcpy(buf, x, n);
        bytes = _mm_loadl_epi64((const __m128i *)(const void *)buf);
    }
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}

/* n <= 8 halves at x as 8 floats (exact), the lanes past n 0 (a partial row through a zeroed buffer). */
INLINE __m256 load_f16(const uint16_t *x, size_t n)
{
    uint16_t buf[8] = {0};
    const uint16_t *h = x;
    if (n < 8) {
        memcpy(buf, x, n * sizeof *x);
        h = buf;
    }
#if defined(__F16C__)
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)h));
#else
    {
        float wide[8];
        int i;
        for (i = 0; i < 8; i++) {
            wide[i] = moa_f16_to_f32(h[i]);
        }
        return _mm256_loadu_ps(wide);
    }
#endif
}

/* Elements i .. i + n - 1 (n <= 8) of the row at x as 8 floats, the lanes past n 0. */
INLINE __m256 load8(enum elem e, const void *x, ptrdiff_t i, size_t n)
{
    switch (e) {
    case ELEM_S8:
        return load_s8((const int8_t *)x + i, n);
    case ELEM_F16:
        return load_f16((const uint16_t *)x + i, n);
    default:
        return n == 8 ? _mm256_loadu_ps((const float *)x + i) : _mm256_maskload_ps((const float *)x + i, tail_mask(n));
    }
}

/* Row r of an array of rows ld elements apart. */
INLINE const void *row_at(enum elem e, const void *x, ptrdiff_t r, ptrdiff_t ld)
{
    const ptrdiff_t size = e == ELEM_S8 ? 1 : e == ELEM_F16 ? 2 : 4;
    return (const char *)x + r * ld * size;
}

/* --- scores: s = scale Q K^T as a register tile over a packed panel of K --- */

/* As on AVX-512, the score tile is a register-blocked GEMM tile, s = Q (K^T): 16 keys of K are
 * packed, transposed, into a depth x 16 panel on the stack (at most KT_DEPTH x 16 floats =
 * 16 KiB, L1-resident), as every GEMM packs its B panel; the panel then serves all `rows`
 * query rows, 6 at a time, Q[r][j] broadcast from memory: 12 FMAs per 2 panel loads and 6
 * broadcasts. This copies one small key tile inside the kernel; it is not K^T (nor any n x n
 * array) in memory, which is what DESIGN's "no transposed-key copy" rules out. */
#define KT_DEPTH 256
#define SCORE_ROWS 6

/* The 8 x 8 block of keys 0..nr-1 (rows ldk apart, the rest read as 0), depth 0..nj-1,
 * transposed into kt[j * 16 + c] for j < nj: the 8 keys of one half of a 16-key panel. */
INLINE void pack_8x8(enum elem e, size_t nr, size_t nj, const void *k, ptrdiff_t ldk, float *kt)
{
    __m256 a[8], t[8], u[8];
    int i;
    _Pragma("GCC unroll 8")
    for (i = 0; i < 8; i++) {
        a[i] = (size_t)i < nr ? load8(e, row_at(e, k, i, ldk), 0, nj) : _mm256_setzero_ps();
    }
    _Pragma("GCC unroll 4")
    for (i = 0; i < 4; i++) { /* rows 2i, 2i + 1 interleaved */
        t[2 * i] = _mm256_unpacklo_ps(a[2 * i], a[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(a[2 * i], a[2 * i + 1]);
    }
    _Pragma("GCC unroll 2")
    for (i = 0; i < 2; i++) { /* per 128-bit lane h: columns 4h + 0..3 of rows 4i..4i + 3 */
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    _Pragma("GCC unroll 4")
    for (i = 0; i < 4; i++) { /* column i from the low lanes, column 4 + i from the high ones */
        if ((size_t)i < nj) {
            _mm256_store_ps(kt + 16 * i, _mm256_permute2f128_ps(u[i], u[4 + i], 0x20));
        }
        if ((size_t)(4 + i) < nj) {
            _mm256_store_ps(kt + 16 * (4 + i), _mm256_permute2f128_ps(u[i], u[4 + i], 0x31));
        }
    }
}

/* s[0:mr][0:16] (the columns of mask m0 | m1) = colscale * q[0:mr][0:nj] kt[0:nj][0:16], plus s when `add`. */
INLINE void scores_tile(int mr, size_t nj, const float *q, ptrdiff_t ldq, const float *kt, __m256 cs0, __m256 cs1,
                        int full, __m256i m0, __m256i m1, int add, float *s, ptrdiff_t lds)
{
    __m256 acc[SCORE_ROWS][2];
    const float *q_row[SCORE_ROWS]; /* a pointer per row: Q[i][j] is q_row[i][j], no per-step address sums */
    size_t j;
    int i;
    _Pragma("GCC unroll 6")
    for (i = 0; i < mr; i++) {
        acc[i][0] = _mm256_setzero_ps();
        acc[i][1] = _mm256_setzero_ps();
        q_row[i] = q + i * ldq;
    }
    _Pragma("GCC unroll 4") /* the loop's address and counter updates once per 4 depth steps */
    for (j = 0; j < nj; j++) {
        const __m256 k0 = _mm256_load_ps(kt + 16 * j), k1 = _mm256_load_ps(kt + 16 * j + 8);
        _Pragma("GCC unroll 6")
        for (i = 0; i < mr; i++) {
            const __m256 qv = _mm256_broadcast_ss(q_row[i] + j);
            acc[i][0] = _mm256_fmadd_ps(qv, k0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(qv, k1, acc[i][1]);
        }
    }
    _Pragma("GCC unroll 6")
    for (i = 0; i < mr; i++) {
        float *row = s + i * lds;
        if (full) {
            const __m256 b0 = add ? _mm256_loadu_ps(row) : _mm256_setzero_ps();
            const __m256 b1 = add ? _mm256_loadu_ps(row + 8) : _mm256_setzero_ps();
            _mm256_storeu_ps(row, _mm256_fmadd_ps(acc[i][0], cs0, b0));
            _mm256_storeu_ps(row + 8, _mm256_fmadd_ps(acc[i][1], cs1, b1));
        } else {
            const __m256 b0 = add ? _mm256_maskload_ps(row, m0) : _mm256_setzero_ps();
            const __m256 b1 = add ? _mm256_maskload_ps(row + 8, m1) : _mm256_setzero_ps();
            _mm256_maskstore_ps(row, m0, _mm256_fmadd_ps(acc[i][0], cs0, b0));
            _mm256_maskstore_ps(row + 8, m1, _mm256_fmadd_ps(acc[i][1], cs1, b1));
        }
    }
}

/* One panel of nc <= 16 keys against all query rows: 6 at a time, then 4, 2, 1. */
INLINE void scores_panel(size_t rows, size_t nc, size_t nj, const float *q, ptrdiff_t ldq, const float *kt,
                         __m256 cs0, __m256 cs1, int add, float *s, ptrdiff_t lds)
{
    const int full = nc == 16;
    const __m256i m0 = tail_mask(nc < 8 ? nc : 8), m1 = tail_mask(nc > 8 ? nc - 8 : 0);
    size_t r = 0;
    for (; r + SCORE_ROWS <= rows; r += SCORE_ROWS) {
        scores_tile(SCORE_ROWS, nj, q + (ptrdiff_t)r * ldq, ldq, kt, cs0, cs1, full, m0, m1, add,
                    s + (ptrdiff_t)r * lds, lds);
    }
    if (rows - r >= 4) {
        scores_tile(4, nj, q + (ptrdiff_t)r * ldq, ldq, kt, cs0, cs1, full, m0, m1, add, s + (ptrdiff_t)r * lds, lds);
        r += 4;
    }
    if (rows - r >= 2) {
        scores_tile(2, nj, q + (ptrdiff_t)r * ldq, ldq, kt, cs0, cs1, full, m0, m1, add, s + (ptrdiff_t)r * lds, lds);
        r += 2;
    }
    if (r < rows) {
        scores_tile(1, nj, q + (ptrdiff_t)r * ldq, ldq, kt, cs0, cs1, full, m0, m1, add, s + (ptrdiff_t)r * lds, lds);
    }
}

/* The score kernel for keys of element type e; k_scale (int8 only) scales each key's column. */
INLINE void scores_body(enum elem e, size_t rows, size_t cols, size_t depth, float scale, const float *q,
                        ptrdiff_t ldq, const void *k, ptrdiff_t ldk, const float *k_scale, float *s, ptrdiff_t lds)
{
    float kt[KT_DEPTH * 16] __attribute__((aligned(32))); /* the packed panel: 16 keys, transposed */
    size_t c, j0, j;
    for (c = 0; c < cols; c += 16) {
        const size_t nc = cols - c < 16 ? cols - c : 16;
        const void *k0 = row_at(e, k, (ptrdiff_t)c, ldk);
        __m256 cs0 = _mm256_set1_ps(scale), cs1 = cs0;
        if (e == ELEM_S8) { /* each column's scale is scale * k_scale[c], applied once to its sum */
            cs0 = _mm256_mul_ps(cs0, _mm256_maskload_ps(k_scale + c, tail_mask(nc < 8 ? nc : 8)));
            if (nc > 8) {
                cs1 = _mm256_mul_ps(cs1, _mm256_maskload_ps(k_scale + c + 8, tail_mask(nc - 8)));
            }
        }
        j0 = 0;
        do { /* the depth in chunks of KT_DEPTH; depth 0 still writes s = 0 */
            const size_t nj = depth - j0 < KT_DEPTH ? depth - j0 : KT_DEPTH;
            for (j = 0; j < nj; j += 8) {
                const size_t mj = nj - j < 8 ? nj - j : 8;
                const ptrdiff_t at = (ptrdiff_t)(j0 + j);
                pack_8x8(e, nc < 8 ? nc : 8, mj, row_at(e, k0, at, 1), ldk, kt + 16 * j);
                pack_8x8(e, nc > 8 ? nc - 8 : 0, mj, nc > 8 ? row_at(e, row_at(e, k0, 8, ldk), at, 1) : k0, ldk,
                         kt + 16 * j + 8);
            }
            scores_panel(rows, nc, nj, q + (ptrdiff_t)j0, ldq, kt, cs0, cs1, j0 > 0, s + (ptrdiff_t)c, lds);
            j0 += nj;
        } while (j0 < depth);
    }
}

void moa_attn_scores_f32_6x16_avx2(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                   ptrdiff_t ldq, const float *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    scores_body(ELEM_F32, rows, cols, depth, scale, q, ldq, k, ldk, NULL, s, lds);
}

void moa_attn_scores_f32_s8_6x16_avx2(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                      ptrdiff_t ldq, const int8_t *k, ptrdiff_t ldk, const float *k_scale, float *s,
                                      ptrdiff_t lds)
{
    scores_body(ELEM_S8, rows, cols, depth, scale, q, ldq, k, ldk, k_scale, s, lds);
}

void moa_attn_scores_f32_f16_6x16_avx2(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                       ptrdiff_t ldq, const uint16_t *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    scores_body(ELEM_F16, rows, cols, depth, scale, q, ldq, k, ldk, NULL, s, lds);
}

/* --- pv: acc += P V, a register tile of the accumulator over all keys --- */

#define PV_ROWS 6

/* acc[0:mr][0:8 nv] += p[0:mr][0:cols] v[0:cols][0:8 nv] (int8: each weight p * v_scale); the
 * last vector takes `last` <= 8 lanes. */
INLINE void pv_tile(enum elem e, int mr, int nv, size_t last, size_t cols, const float *p, ptrdiff_t ldp,
                    const void *v, ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    const __m256i last_mask = tail_mask(last);
    __m256 a[PV_ROWS][2], w[2];
    const float *p_row[PV_ROWS]; /* a pointer per row: P[i][c] is p_row[i][c], no per-step address sums */
    size_t c;
    int i, x;
    _Pragma("GCC unroll 6")
    for (i = 0; i < mr; i++) {
        p_row[i] = p + i * ldp;
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            float *at = acc + i * lda + 8 * x;
            a[i][x] = x < nv - 1 || last == 8 ? _mm256_loadu_ps(at) : _mm256_maskload_ps(at, last_mask);
        }
    }
    _Pragma("GCC unroll 4") /* the loop's address and counter updates once per 4 keys */
    for (c = 0; c < cols; c++) {
        const void *v_row = row_at(e, v, (ptrdiff_t)c, ldv);
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            w[x] = load8(e, v_row, 8 * x, x == nv - 1 ? last : 8);
        }
        _Pragma("GCC unroll 6")
        for (i = 0; i < mr; i++) {
            const __m256 weight = e == ELEM_S8 ? _mm256_set1_ps(p_row[i][c] * v_scale[c]) : _mm256_broadcast_ss(p_row[i] + c);
            _Pragma("GCC unroll 2")
            for (x = 0; x < nv; x++) {
                a[i][x] = _mm256_fmadd_ps(weight, w[x], a[i][x]);
            }
        }
    }
    _Pragma("GCC unroll 6")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            float *at = acc + i * lda + 8 * x;
            if (x < nv - 1 || last == 8) {
                _mm256_storeu_ps(at, a[i][x]);
            } else {
                _mm256_maskstore_ps(at, last_mask, a[i][x]);
            }
        }
    }
}

/* mr rows of acc, all dv columns: 16 at a time, then the 1 to 15 left in one tile. */
INLINE void pv_rows(enum elem e, int mr, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const void *v,
                    ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    size_t d = 0;
    for (; d + 16 <= dv; d += 16) {
        pv_tile(e, mr, 2, 8, cols, p, ldp, row_at(e, v, (ptrdiff_t)d, 1), ldv, v_scale, acc + d, lda);
    }
    if (dv - d > 8) {
        pv_tile(e, mr, 2, dv - d - 8, cols, p, ldp, row_at(e, v, (ptrdiff_t)d, 1), ldv, v_scale, acc + d, lda);
    } else if (d < dv) {
        pv_tile(e, mr, 1, dv - d, cols, p, ldp, row_at(e, v, (ptrdiff_t)d, 1), ldv, v_scale, acc + d, lda);
    }
}

/* The P V kernel for values of element type e: rows 6 at a time, then 4, 2, 1. */
INLINE void pv_body(enum elem e, size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const void *v,
                    ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    size_t r = 0;
    for (; r + PV_ROWS <= rows; r += PV_ROWS) {
        pv_rows(e, PV_ROWS, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, v_scale, acc + (ptrdiff_t)r * lda, lda);
    }
    if (rows - r >= 4) {
        pv_rows(e, 4, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, v_scale, acc + (ptrdiff_t)r * lda, lda);
        r += 4;
    }
    if (rows - r >= 2) {
        pv_rows(e, 2, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, v_scale, acc + (ptrdiff_t)r * lda, lda);
        r += 2;
    }
    if (r < rows) {
        pv_rows(e, 1, cols, dv, p + (ptrdiff_t)r * ldp, ldp, v, ldv, v_scale, acc + (ptrdiff_t)r * lda, lda);
    }
}

/* 6 rows x 16 columns of the accumulator in 12 ymm over all keys: each key one row of V (two
 * loads) serves 12 FMAs, its weights P[r][c] broadcast from memory. */
void moa_attn_pv_f32_6x16_avx2(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const float *v,
                               ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    pv_body(ELEM_F32, rows, cols, dv, p, ldp, v, ldv, NULL, acc, lda);
}

void moa_attn_pv_f32_s8_6x16_avx2(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                  const int8_t *v, ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    pv_body(ELEM_S8, rows, cols, dv, p, ldp, v, ldv, v_scale, acc, lda);
}

void moa_attn_pv_f32_f16_6x16_avx2(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                   const uint16_t *v, ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    pv_body(ELEM_F16, rows, cols, dv, p, ldp, v, ldv, NULL, acc, lda);
}

float moa_attn_max_f32_u16_avx2(size_t n, const float *x)
{
    const __m256 lowest = _mm256_set1_ps(-INFINITY);
    __m256 m0 = lowest, m1 = lowest, unordered = _mm256_setzero_ps();
    __m128 m;
    size_t c = 0;
    for (; c + 16 <= n; c += 16) {
        const __m256 x0 = _mm256_loadu_ps(x + c), x1 = _mm256_loadu_ps(x + c + 8);
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(x0, x1, _CMP_UNORD_Q));
        m0 = _mm256_max_ps(m0, x0);
        m1 = _mm256_max_ps(m1, x1);
    }
    for (; c < n; c += 8) {
        const __m256i k = tail_mask(n - c);
        const __m256 x0 = _mm256_blendv_ps(lowest, _mm256_maskload_ps(x + c, k), _mm256_castsi256_ps(k));
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(x0, x0, _CMP_UNORD_Q));
        m0 = _mm256_max_ps(m0, x0);
    }
    if (_mm256_movemask_ps(unordered)) {
        return NAN;
    }
    m0 = _mm256_max_ps(m0, m1);
    m = _mm_max_ps(_mm256_castps256_ps128(m0), _mm256_extractf128_ps(m0, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

float moa_attn_exp_f32_u16_avx2(size_t n, float *x, float m)
{
    const __m256 vm = _mm256_set1_ps(m);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t c = 0;
    for (; c + 16 <= n; c += 16) {
        const __m256 e0 = exp_ps_(_mm256_sub_ps(_mm256_loadu_ps(x + c), vm), 0);
        const __m256 e1 = exp_ps_(_mm256_sub_ps(_mm256_loadu_ps(x + c + 8), vm), 0);
        _mm256_storeu_ps(x + c, e0);
        _mm256_storeu_ps(x + c + 8, e1);
        s0 = _mm256_add_ps(s0, e0);
        s1 = _mm256_add_ps(s1, e1);
    }
    for (; c < n; c += 8) {
        const __m256i k = tail_mask(n - c);
        const __m256 e0 = _mm256_and_ps(_mm256_castsi256_ps(k), exp_ps_(_mm256_sub_ps(_mm256_maskload_ps(x + c, k), vm), 0));
        _mm256_maskstore_ps(x + c, k, e0);
        s0 = _mm256_add_ps(s0, e0);
    }
    return hsum(_mm256_add_ps(s0, s1));
}

INLINE float hmax(__m256 x)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* The online-softmax step of R rows at once: their max loops, reductions and exp loops are
 * independent chains the core overlaps (one row at a time is latency-bound). */
INLINE void softmax_rows(int R, size_t cols, float *s, ptrdiff_t lds, float *m, float *l, float *alpha)
{
    const __m256 lowest = _mm256_set1_ps(-INFINITY);
    __m256 mx[4], vm[4], sum[4], unordered[4];
    float m_new[4];
    size_t c;
    int i;
    _Pragma("GCC unroll 4")
    for (i = 0; i < R; i++) {
        mx[i] = lowest;
        unordered[i] = _mm256_setzero_ps();
        sum[i] = _mm256_setzero_ps();
    }
    for (c = 0; c < cols; c += 8) {
        const __m256i k = tail_mask(cols - c < 8 ? cols - c : 8);
        _Pragma("GCC unroll 4")
        for (i = 0; i < R; i++) {
            const float *row = s + i * lds + (ptrdiff_t)c;
            const __m256 x = cols - c >= 8 ? _mm256_loadu_ps(row)
                                           : _mm256_blendv_ps(lowest, _mm256_maskload_ps(row, k), _mm256_castsi256_ps(k));
            unordered[i] = _mm256_or_ps(unordered[i], _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
            mx[i] = _mm256_max_ps(mx[i], x);
        }
    }
    _Pragma("GCC unroll 4")
    for (i = 0; i < R; i++) {
        const float row_max = _mm256_movemask_ps(unordered[i]) ? NAN : hmax(mx[i]);
        m_new[i] = !(row_max <= m[i]) ? row_max : m[i]; /* a NaN wins, so NaN propagates */
        alpha[i] = 1.0f;
        /* a row whose keys are all hidden so far: exp(-inf - 0) makes its p 0 */
        vm[i] = _mm256_set1_ps(m_new[i] == -INFINITY ? 0.0f : m_new[i]);
    }
    for (c = 0; c < cols; c += 8) {
        const __m256i k = tail_mask(cols - c < 8 ? cols - c : 8);
        _Pragma("GCC unroll 4")
        for (i = 0; i < R; i++) {
            float *x = s + i * lds + (ptrdiff_t)c;
            if (cols - c >= 8) {
                const __m256 e = exp_ps_(_mm256_sub_ps(_mm256_loadu_ps(x), vm[i]), 0);
                _mm256_storeu_ps(x, e);
                sum[i] = _mm256_add_ps(sum[i], e);
            } else {
                const __m256 e = _mm256_and_ps(_mm256_castsi256_ps(k),
                                               exp_ps_(_mm256_sub_ps(_mm256_maskload_ps(x, k), vm[i]), 0));
                _mm256_maskstore_ps(x, k, e);
                sum[i] = _mm256_add_ps(sum[i], e);
            }
        }
    }
    _Pragma("GCC unroll 4")
    for (i = 0; i < R; i++) {
        if (m_new[i] == -INFINITY) {
            continue;
        }
        moa_attn_row_statistics(m_new[i], hsum(sum[i]), &m[i], &l[i], &alpha[i]);
    }
}

void moa_attn_softmax_f32_4x8_avx2(size_t rows, size_t cols, float *s, ptrdiff_t lds, float *m, float *l,
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

void moa_attn_scale_f32_u16_avx2(size_t n, float alpha, const float *x, float *y)
{
    const __m256 a = _mm256_set1_ps(alpha);
    size_t c = 0;
    for (; c + 16 <= n; c += 16) {
        const __m256 x0 = _mm256_loadu_ps(x + c), x1 = _mm256_loadu_ps(x + c + 8);
        _mm256_storeu_ps(y + c, _mm256_mul_ps(a, x0));
        _mm256_storeu_ps(y + c + 8, _mm256_mul_ps(a, x1));
    }
    for (; c < n; c += 8) {
        const __m256i k = tail_mask(n - c);
        _mm256_maskstore_ps(y + c, k, _mm256_mul_ps(a, _mm256_maskload_ps(x + c, k)));
    }
}

void moa_vexp_f32_u16_avx2(size_t n, const float *x, float *y)
{
    size_t c = 0;
    for (; c + 16 <= n; c += 16) {
        const __m256 e0 = exp_ps(_mm256_loadu_ps(x + c)), e1 = exp_ps(_mm256_loadu_ps(x + c + 8));
        _mm256_storeu_ps(y + c, e0);
        _mm256_storeu_ps(y + c + 8, e1);
    }
    for (; c < n; c += 8) {
        const __m256i k = tail_mask(n - c);
        _mm256_maskstore_ps(y + c, k, exp_ps(_mm256_maskload_ps(x + c, k)));
    }
}

#else
typedef int moa_attention_f32_avx2_unused; /* ISO C: a translation unit is not empty */
#endif
