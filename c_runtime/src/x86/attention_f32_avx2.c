/* AVX2 + FMA attention micro-kernels (moa/attention.h), 8 floats per ymm.
 *   scores 2x4: 8 dot products at once along the depth (a masked load takes its tail), reduced
 *               together by a horizontal-add tree into one ymm: row 0 | row 1;
 *   pv 4x16:    4 rows x 2 ymm of the accumulator stay in registers over all keys, each key a
 *               broadcast weight times one row of V;
 *   max, exp, scale, vexp: 16 floats per step, a masked step for the tail;
 *   over an int8 cache (_s8): the same tiles, 8 int8 widened to 8 floats in registers per load
 *               (vpmovsxbd, vcvtdq2ps);
 *   over a float16 cache (_f16): the same tiles, 8 halves widened to 8 floats per load (F16C's
 *               vcvtph2ps, which every AVX2 core has; one by one through moa/half.h in a build
 *               without -mf16c). */
#include "moa/isa.h"

#if MOA_ISA_AVX2
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "moa/attention.h"
#include "moa/half.h"

#define INLINE static inline __attribute__((always_inline))

INLINE __m256 exp_ps(__m256 x)
{
    const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(MOA_EXPF_LO), _CMP_LT_OQ); /* NaN: no */
    __m256 t, n, r, p;
    __m256i bits;
    x = _mm256_min_ps(_mm256_set1_ps(MOA_EXPF_HI), x); /* the second operand is kept when x is NaN */
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

INLINE float dot(size_t depth, const float *x, const float *y)
{
    __m256 acc = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 8 <= depth; j += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j), acc);
    }
    if (j < depth) {
        const __m256i m = tail_mask(depth - j);
        acc = _mm256_fmadd_ps(_mm256_maskload_ps(x + j, m), _mm256_maskload_ps(y + j, m), acc);
    }
    return hsum(acc);
}

void moa_attn_scores_f32_2x4_avx2(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                  ptrdiff_t ldq, const float *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    const __m256 vscale = _mm256_set1_ps(scale);
    const __m256i tail = tail_mask(depth % 8);
    size_t r = 0, c, j;
    int i, x;
    for (; r + 2 <= rows; r += 2) {
        const float *q0 = q + (ptrdiff_t)r * ldq;
        float *s0 = s + (ptrdiff_t)r * lds;
        for (c = 0; c + 4 <= cols; c += 4) {
            const float *k0 = k + (ptrdiff_t)c * ldk;
            __m256 a[8], qv[2], kv[4], h0, h1, h2, h3, g0, g1, sum;
            _Pragma("GCC unroll 8")
            for (i = 0; i < 8; i++) {
                a[i] = _mm256_setzero_ps();
            }
            for (j = 0; j + 8 <= depth; j += 8) {
                _Pragma("GCC unroll 4")
                for (i = 0; i < 2; i++) {
                    qv[i] = _mm256_loadu_ps(q0 + i * ldq + j);
                }
                _Pragma("GCC unroll 4")
                for (x = 0; x < 4; x++) {
                    kv[x] = _mm256_loadu_ps(k0 + x * ldk + j);
                }
                _Pragma("GCC unroll 4")
                for (i = 0; i < 2; i++) {
                    _Pragma("GCC unroll 4")
                    for (x = 0; x < 4; x++) {
                        a[4 * i + x] = _mm256_fmadd_ps(qv[i], kv[x], a[4 * i + x]);
                    }
                }
            }
            if (j < depth) {
                _Pragma("GCC unroll 4")
                for (i = 0; i < 2; i++) {
                    qv[i] = _mm256_maskload_ps(q0 + i * ldq + j, tail);
                }
                _Pragma("GCC unroll 4")
                for (x = 0; x < 4; x++) {
                    kv[x] = _mm256_maskload_ps(k0 + x * ldk + j, tail);
                }
                _Pragma("GCC unroll 4")
                for (i = 0; i < 2; i++) {
                    _Pragma("GCC unroll 4")
                    for (x = 0; x < 4; x++) {
                        a[4 * i + x] = _mm256_fmadd_ps(qv[i], kv[x], a[4 * i + x]);
                    }
                }
            }
            h0 = _mm256_hadd_ps(a[0], a[1]);
            h1 = _mm256_hadd_ps(a[2], a[3]);
            h2 = _mm256_hadd_ps(a[4], a[5]);
            h3 = _mm256_hadd_ps(a[6], a[7]);
            g0 = _mm256_hadd_ps(h0, h1); /* (a0 a1 a2 a3) low halves | high halves */
            g1 = _mm256_hadd_ps(h2, h3);
            sum = _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20), _mm256_permute2f128_ps(g0, g1, 0x31));
            sum = _mm256_mul_ps(sum, vscale);
            _mm_storeu_ps(s0 + c, _mm256_castps256_ps128(sum));
            _mm_storeu_ps(s0 + lds + c, _mm256_extractf128_ps(sum, 1));
        }
        for (; c < cols; c++) {
            s0[c] = scale * dot(depth, q0, k + (ptrdiff_t)c * ldk);
            s0[lds + (ptrdiff_t)c] = scale * dot(depth, q0 + ldq, k + (ptrdiff_t)c * ldk);
        }
    }
    for (; r < rows; r++) {
        for (c = 0; c < cols; c++) {
            s[(ptrdiff_t)r * lds + (ptrdiff_t)c] = scale * dot(depth, q + (ptrdiff_t)r * ldq, k + (ptrdiff_t)c * ldk);
        }
    }
}

/* acc[0:mr][0:8 nv] += p[0:mr][0:cols] v[0:cols][0:8 nv]; the last vector takes the lanes of `last`. */
INLINE void pv_tile(int mr, int nv, __m256i last, size_t cols, const float *p, ptrdiff_t ldp, const float *v,
                    ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    __m256 a[4][2], w[2];
    size_t c;
    int i, x;
    _Pragma("GCC unroll 4")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            a[i][x] = _mm256_maskload_ps(acc + i * lda + 8 * x, x == nv - 1 ? last : _mm256_set1_epi32(-1));
        }
    }
    for (c = 0; c < cols; c++) {
        const float *v_row = v + (ptrdiff_t)c * ldv;
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            w[x] = _mm256_maskload_ps(v_row + 8 * x, x == nv - 1 ? last : _mm256_set1_epi32(-1));
        }
        _Pragma("GCC unroll 4")
        for (i = 0; i < mr; i++) {
            const __m256 weight = _mm256_broadcast_ss(p + i * ldp + (ptrdiff_t)c);
            _Pragma("GCC unroll 2")
            for (x = 0; x < nv; x++) {
                a[i][x] = _mm256_fmadd_ps(weight, w[x], a[i][x]);
            }
        }
    }
    _Pragma("GCC unroll 4")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            _mm256_maskstore_ps(acc + i * lda + 8 * x, x == nv - 1 ? last : _mm256_set1_epi32(-1), a[i][x]);
        }
    }
}

INLINE void pv_rows(int mr, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const float *v, ptrdiff_t ldv,
                    float *acc, ptrdiff_t lda)
{
    size_t e = 0;
    for (; e + 16 <= dv; e += 16) {
        pv_tile(mr, 2, _mm256_set1_epi32(-1), cols, p, ldp, v + e, ldv, acc + e, lda);
    }
    if (e < dv) {
        pv_tile(mr, 1, tail_mask(dv - e), cols, p, ldp, v + e, ldv, acc + e, lda);
        e += 8;
    }
    if (e < dv) {
        pv_tile(mr, 1, tail_mask(dv - e), cols, p, ldp, v + e, ldv, acc + e, lda);
    }
}

void moa_attn_pv_f32_4x16_avx2(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const float *v,
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

/* --- over an int8 cache: the same tiles, each int8 row widened to float in registers --- */

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

INLINE float dot_s8(size_t depth, const float *x, const int8_t *y)
{
    __m256 acc = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 8 <= depth; j += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), load_s8(y + j, 8), acc);
    }
    if (j < depth) {
        acc = _mm256_fmadd_ps(_mm256_maskload_ps(x + j, tail_mask(depth - j)), load_s8(y + j, depth - j), acc);
    }
    return hsum(acc);
}

void moa_attn_scores_f32_s8_2x4_avx2(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                     ptrdiff_t ldq, const int8_t *k, ptrdiff_t ldk, const float *k_scale, float *s,
                                     ptrdiff_t lds)
{
    const __m256i tail = tail_mask(depth % 8);
    size_t r = 0, c, j;
    int i, x;
    for (; r + 2 <= rows; r += 2) {
        const float *q0 = q + (ptrdiff_t)r * ldq;
        float *s0 = s + (ptrdiff_t)r * lds;
        for (c = 0; c + 4 <= cols; c += 4) {
            const int8_t *k0 = k + (ptrdiff_t)c * ldk;
            const __m128 column_scale = _mm_mul_ps(_mm_set1_ps(scale), _mm_loadu_ps(k_scale + c));
            __m256 a[8], qv[2], kv[4], h0, h1, h2, h3, g0, g1, sum;
            _Pragma("GCC unroll 8")
            for (i = 0; i < 8; i++) {
                a[i] = _mm256_setzero_ps();
            }
            for (j = 0; j < depth; j += 8) {
                const size_t nj = depth - j < 8 ? depth - j : 8;
                _Pragma("GCC unroll 4")
                for (i = 0; i < 2; i++) {
                    qv[i] = nj == 8 ? _mm256_loadu_ps(q0 + i * ldq + j) : _mm256_maskload_ps(q0 + i * ldq + j, tail);
                }
                _Pragma("GCC unroll 4")
                for (x = 0; x < 4; x++) {
                    kv[x] = load_s8(k0 + x * ldk + j, nj);
                }
                _Pragma("GCC unroll 4")
                for (i = 0; i < 2; i++) {
                    _Pragma("GCC unroll 4")
                    for (x = 0; x < 4; x++) {
                        a[4 * i + x] = _mm256_fmadd_ps(qv[i], kv[x], a[4 * i + x]);
                    }
                }
            }
            h0 = _mm256_hadd_ps(a[0], a[1]);
            h1 = _mm256_hadd_ps(a[2], a[3]);
            h2 = _mm256_hadd_ps(a[4], a[5]);
            h3 = _mm256_hadd_ps(a[6], a[7]);
            g0 = _mm256_hadd_ps(h0, h1);
            g1 = _mm256_hadd_ps(h2, h3);
            sum = _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20), _mm256_permute2f128_ps(g0, g1, 0x31));
            sum = _mm256_mul_ps(sum, _mm256_insertf128_ps(_mm256_castps128_ps256(column_scale), column_scale, 1));
            _mm_storeu_ps(s0 + c, _mm256_castps256_ps128(sum));
            _mm_storeu_ps(s0 + lds + c, _mm256_extractf128_ps(sum, 1));
        }
        for (; c < cols; c++) {
            s0[c] = (scale * k_scale[c]) * dot_s8(depth, q0, k + (ptrdiff_t)c * ldk);
            s0[lds + (ptrdiff_t)c] = (scale * k_scale[c]) * dot_s8(depth, q0 + ldq, k + (ptrdiff_t)c * ldk);
        }
    }
    for (; r < rows; r++) {
        for (c = 0; c < cols; c++) {
            s[(ptrdiff_t)r * lds + (ptrdiff_t)c] = (scale * k_scale[c]) * dot_s8(depth, q + (ptrdiff_t)r * ldq,
                                                                                 k + (ptrdiff_t)c * ldk);
        }
    }
}

/* acc[0:mr][0:8 nv] += (p v_scale)[0:mr][0:cols] v[0:cols][0:8 nv]; the last vector takes `last` lanes. */
INLINE void pv_tile_s8(int mr, int nv, size_t last, size_t cols, const float *p, ptrdiff_t ldp, const int8_t *v,
                       ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    const __m256i all = _mm256_set1_epi32(-1), last_mask = tail_mask(last);
    __m256 a[4][2], w[2];
    size_t c;
    int i, x;
    _Pragma("GCC unroll 4")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            a[i][x] = _mm256_maskload_ps(acc + i * lda + 8 * x, x == nv - 1 ? last_mask : all);
        }
    }
    for (c = 0; c < cols; c++) {
        const int8_t *v_row = v + (ptrdiff_t)c * ldv;
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            w[x] = load_s8(v_row + 8 * x, x == nv - 1 ? last : 8);
        }
        _Pragma("GCC unroll 4")
        for (i = 0; i < mr; i++) {
            const __m256 weight = _mm256_set1_ps(p[i * ldp + (ptrdiff_t)c] * v_scale[c]);
            _Pragma("GCC unroll 2")
            for (x = 0; x < nv; x++) {
                a[i][x] = _mm256_fmadd_ps(weight, w[x], a[i][x]);
            }
        }
    }
    _Pragma("GCC unroll 4")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            _mm256_maskstore_ps(acc + i * lda + 8 * x, x == nv - 1 ? last_mask : all, a[i][x]);
        }
    }
}

INLINE void pv_rows_s8(int mr, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const int8_t *v,
                       ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    size_t e = 0;
    for (; e + 16 <= dv; e += 16) {
        pv_tile_s8(mr, 2, 8, cols, p, ldp, v + e, ldv, v_scale, acc + e, lda);
    }
    for (; e < dv; e += 8) {
        pv_tile_s8(mr, 1, dv - e < 8 ? dv - e : 8, cols, p, ldp, v + e, ldv, v_scale, acc + e, lda);
    }
}

void moa_attn_pv_f32_s8_4x16_avx2(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
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

/* --- over a float16 cache: the same tiles, each row of halves widened to float in registers --- */

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

INLINE float dot_f16(size_t depth, const float *x, const uint16_t *y)
{
    __m256 acc = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 8 <= depth; j += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), load_f16(y + j, 8), acc);
    }
    if (j < depth) {
        acc = _mm256_fmadd_ps(_mm256_maskload_ps(x + j, tail_mask(depth - j)), load_f16(y + j, depth - j), acc);
    }
    return hsum(acc);
}

void moa_attn_scores_f32_f16_2x4_avx2(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                      ptrdiff_t ldq, const uint16_t *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    const __m256 vscale = _mm256_set1_ps(scale);
    const __m256i tail = tail_mask(depth % 8);
    size_t r = 0, c, j;
    int i, x;
    for (; r + 2 <= rows; r += 2) {
        const float *q0 = q + (ptrdiff_t)r * ldq;
        float *s0 = s + (ptrdiff_t)r * lds;
        for (c = 0; c + 4 <= cols; c += 4) {
            const uint16_t *k0 = k + (ptrdiff_t)c * ldk;
            __m256 a[8], qv[2], kv[4], h0, h1, h2, h3, g0, g1, sum;
            _Pragma("GCC unroll 8")
            for (i = 0; i < 8; i++) {
                a[i] = _mm256_setzero_ps();
            }
            for (j = 0; j < depth; j += 8) {
                const size_t nj = depth - j < 8 ? depth - j : 8;
                _Pragma("GCC unroll 4")
                for (i = 0; i < 2; i++) {
                    qv[i] = nj == 8 ? _mm256_loadu_ps(q0 + i * ldq + j) : _mm256_maskload_ps(q0 + i * ldq + j, tail);
                }
                _Pragma("GCC unroll 4")
                for (x = 0; x < 4; x++) {
                    kv[x] = load_f16(k0 + x * ldk + j, nj);
                }
                _Pragma("GCC unroll 4")
                for (i = 0; i < 2; i++) {
                    _Pragma("GCC unroll 4")
                    for (x = 0; x < 4; x++) {
                        a[4 * i + x] = _mm256_fmadd_ps(qv[i], kv[x], a[4 * i + x]);
                    }
                }
            }
            h0 = _mm256_hadd_ps(a[0], a[1]);
            h1 = _mm256_hadd_ps(a[2], a[3]);
            h2 = _mm256_hadd_ps(a[4], a[5]);
            h3 = _mm256_hadd_ps(a[6], a[7]);
            g0 = _mm256_hadd_ps(h0, h1);
            g1 = _mm256_hadd_ps(h2, h3);
            sum = _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20), _mm256_permute2f128_ps(g0, g1, 0x31));
            sum = _mm256_mul_ps(sum, vscale);
            _mm_storeu_ps(s0 + c, _mm256_castps256_ps128(sum));
            _mm_storeu_ps(s0 + lds + c, _mm256_extractf128_ps(sum, 1));
        }
        for (; c < cols; c++) {
            s0[c] = scale * dot_f16(depth, q0, k + (ptrdiff_t)c * ldk);
            s0[lds + (ptrdiff_t)c] = scale * dot_f16(depth, q0 + ldq, k + (ptrdiff_t)c * ldk);
        }
    }
    for (; r < rows; r++) {
        for (c = 0; c < cols; c++) {
            s[(ptrdiff_t)r * lds + (ptrdiff_t)c] = scale * dot_f16(depth, q + (ptrdiff_t)r * ldq, k + (ptrdiff_t)c * ldk);
        }
    }
}

/* acc[0:mr][0:8 nv] += p[0:mr][0:cols] v[0:cols][0:8 nv], V's rows halves; the last vector takes `last` lanes. */
INLINE void pv_tile_f16(int mr, int nv, size_t last, size_t cols, const float *p, ptrdiff_t ldp, const uint16_t *v,
                        ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    const __m256i all = _mm256_set1_epi32(-1), last_mask = tail_mask(last);
    __m256 a[4][2], w[2];
    size_t c;
    int i, x;
    _Pragma("GCC unroll 4")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            a[i][x] = _mm256_maskload_ps(acc + i * lda + 8 * x, x == nv - 1 ? last_mask : all);
        }
    }
    for (c = 0; c < cols; c++) {
        const uint16_t *v_row = v + (ptrdiff_t)c * ldv;
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            w[x] = load_f16(v_row + 8 * x, x == nv - 1 ? last : 8);
        }
        _Pragma("GCC unroll 4")
        for (i = 0; i < mr; i++) {
            const __m256 weight = _mm256_broadcast_ss(p + i * ldp + (ptrdiff_t)c);
            _Pragma("GCC unroll 2")
            for (x = 0; x < nv; x++) {
                a[i][x] = _mm256_fmadd_ps(weight, w[x], a[i][x]);
            }
        }
    }
    _Pragma("GCC unroll 4")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 2")
        for (x = 0; x < nv; x++) {
            _mm256_maskstore_ps(acc + i * lda + 8 * x, x == nv - 1 ? last_mask : all, a[i][x]);
        }
    }
}

INLINE void pv_rows_f16(int mr, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const uint16_t *v,
                        ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    size_t e = 0;
    for (; e + 16 <= dv; e += 16) {
        pv_tile_f16(mr, 2, 8, cols, p, ldp, v + e, ldv, acc + e, lda);
    }
    for (; e < dv; e += 8) {
        pv_tile_f16(mr, 1, dv - e < 8 ? dv - e : 8, cols, p, ldp, v + e, ldv, acc + e, lda);
    }
}

void moa_attn_pv_f32_f16_4x16_avx2(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
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
        const __m256 e0 = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), vm));
        const __m256 e1 = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c + 8), vm));
        _mm256_storeu_ps(x + c, e0);
        _mm256_storeu_ps(x + c + 8, e1);
        s0 = _mm256_add_ps(s0, e0);
        s1 = _mm256_add_ps(s1, e1);
    }
    for (; c < n; c += 8) {
        const __m256i k = tail_mask(n - c);
        const __m256 e0 = _mm256_and_ps(_mm256_castsi256_ps(k), exp_ps(_mm256_sub_ps(_mm256_maskload_ps(x + c, k), vm)));
        _mm256_maskstore_ps(x + c, k, e0);
        s0 = _mm256_add_ps(s0, e0);
    }
    return hsum(_mm256_add_ps(s0, s1));
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
