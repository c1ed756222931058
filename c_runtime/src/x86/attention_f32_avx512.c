/* AVX-512F attention micro-kernels (moa/attention.h), 16 floats per zmm.
 *   scores 4x4: 16 dot products at once, accumulated along the depth in zmm lanes (a masked
 *               load takes the depth tail), then reduced together by a transpose-and-add tree;
 *   pv 4x64:    4 rows x 4 zmm of the accumulator stay in registers over all keys, each key a
 *               broadcast weight (embedded broadcast) times one row of V;
 *   max, exp, scale, vexp: 32 floats per step, a masked step for the tail. */
#include "moa/isa.h"

#if MOA_ISA_AVX512
#include <immintrin.h>
#include <math.h>

#include "moa/attention.h"

#define INLINE static inline __attribute__((always_inline))

INLINE __m512 exp_ps(__m512 x)
{
    const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(MOA_EXPF_LO), _CMP_LT_OQ); /* NaN: no */
    __m512 t, n, r, p;
    __m512i bits;
    x = _mm512_min_ps(_mm512_set1_ps(MOA_EXPF_HI), x); /* the second operand is kept when x is NaN */
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
    bits = _mm512_add_epi32(_mm512_slli_epi32(_mm512_castps_si512(t), 23), _mm512_set1_epi32(127 << 23));
    return _mm512_maskz_mov_ps((__mmask16)~under, _mm512_mul_ps(p, _mm512_castsi512_ps(bits)));
}

INLINE __mmask16 tail_mask(size_t n) /* the first n < 16 lanes */
{
    return (__mmask16)((1u << n) - 1u);
}

/* 16 accumulators a[4r + c] -> one zmm whose 128-bit chunk r holds the 4 sums of row r. */
INLINE __m512 reduce_4x4(const __m512 *a)
{
    __m512 h[8], u[4], v0, v1;
    int i;
    _Pragma("GCC unroll 16")
    for (i = 0; i < 8; i++) { /* pairs: (a0+a2, b0+b2, a1+a3, b1+b3) per 128-bit chunk */
        h[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    }
    _Pragma("GCC unroll 16")
    for (i = 0; i < 4; i++) { /* quads: (a, b, c, d) partial sums per chunk */
        const __m512d x = _mm512_castps_pd(h[2 * i]), y = _mm512_castps_pd(h[2 * i + 1]);
        u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    v0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 2, 3, 2)));
    v1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(3, 1, 3, 1)));
}

INLINE float dot(size_t depth, const float *x, const float *y)
{
    __m512 acc = _mm512_setzero_ps();
    size_t j = 0;
    for (; j + 16 <= depth; j += 16) {
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + j), _mm512_loadu_ps(y + j), acc);
    }
    if (j < depth) {
        const __mmask16 m = tail_mask(depth - j);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + j), _mm512_maskz_loadu_ps(m, y + j), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

void moa_attn_scores_f32_4x4_avx512(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                    ptrdiff_t ldq, const float *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    const __m512 vscale = _mm512_set1_ps(scale);
    size_t r = 0, c, j;
    int i, x;
    for (; r + 4 <= rows; r += 4) {
        const float *q0 = q + (ptrdiff_t)r * ldq;
        float *s0 = s + (ptrdiff_t)r * lds;
        for (c = 0; c + 4 <= cols; c += 4) {
            const float *k0 = k + (ptrdiff_t)c * ldk;
            __m512 acc[16], qv[4], kv[4], sum;
            _Pragma("GCC unroll 16")
            for (i = 0; i < 16; i++) {
                acc[i] = _mm512_setzero_ps();
            }
            for (j = 0; j < depth; j += 16) {
                const __mmask16 m = depth - j >= 16 ? (__mmask16)0xFFFF : tail_mask(depth - j);
                _Pragma("GCC unroll 16")
                for (i = 0; i < 4; i++) {
                    qv[i] = _mm512_maskz_loadu_ps(m, q0 + i * ldq + j);
                    kv[i] = _mm512_maskz_loadu_ps(m, k0 + i * ldk + j);
                }
                _Pragma("GCC unroll 16")
                for (i = 0; i < 4; i++) {
                    _Pragma("GCC unroll 16")
                    for (x = 0; x < 4; x++) {
                        acc[4 * i + x] = _mm512_fmadd_ps(qv[i], kv[x], acc[4 * i + x]);
                    }
                }
            }
            sum = _mm512_mul_ps(reduce_4x4(acc), vscale);
            _mm_storeu_ps(s0 + c, _mm512_extractf32x4_ps(sum, 0));
            _mm_storeu_ps(s0 + lds + c, _mm512_extractf32x4_ps(sum, 1));
            _mm_storeu_ps(s0 + 2 * lds + c, _mm512_extractf32x4_ps(sum, 2));
            _mm_storeu_ps(s0 + 3 * lds + c, _mm512_extractf32x4_ps(sum, 3));
        }
        for (; c < cols; c++) {
            _Pragma("GCC unroll 16")
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

/* acc[0:mr][0:16 nv] += p[0:mr][0:cols] v[0:cols][0:16 nv]; the last vector takes `last` lanes. */
INLINE void pv_tile(int mr, int nv, __mmask16 last, size_t cols, const float *p, ptrdiff_t ldp, const float *v,
                    ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    __m512 a[4][4], w[4];
    size_t c;
    int i, x;
    _Pragma("GCC unroll 16")
    for (i = 0; i < mr; i++) {
        _Pragma("GCC unroll 16")
        for (x = 0; x < nv; x++) {
            a[i][x] = _mm512_maskz_loadu_ps(x == nv - 1 ? last : (__mmask16)0xFFFF, acc + i * lda + 16 * x);
        }
    }
    for (c = 0; c < cols; c++) {
        const float *v_row = v + (ptrdiff_t)c * ldv;
        _Pragma("GCC unroll 16")
        for (x = 0; x < nv; x++) {
            w[x] = _mm512_maskz_loadu_ps(x == nv - 1 ? last : (__mmask16)0xFFFF, v_row + 16 * x);
        }
        _Pragma("GCC unroll 16")
        for (i = 0; i < mr; i++) {
            const __m512 weight = _mm512_set1_ps(p[i * ldp + (ptrdiff_t)c]);
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
            _mm512_mask_storeu_ps(acc + i * lda + 16 * x, x == nv - 1 ? last : (__mmask16)0xFFFF, a[i][x]);
        }
    }
}

INLINE void pv_rows(int mr, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const float *v, ptrdiff_t ldv,
                    float *acc, ptrdiff_t lda)
{
    size_t e = 0;
    for (; e + 64 <= dv; e += 64) {
        pv_tile(mr, 4, 0xFFFF, cols, p, ldp, v + e, ldv, acc + e, lda);
    }
    if (e + 32 <= dv) {
        pv_tile(mr, 2, 0xFFFF, cols, p, ldp, v + e, ldv, acc + e, lda);
        e += 32;
    }
    for (; e < dv; e += 16) {
        pv_tile(mr, 1, dv - e >= 16 ? (__mmask16)0xFFFF : tail_mask(dv - e), cols, p, ldp, v + e, ldv, acc + e, lda);
    }
}

void moa_attn_pv_f32_4x64_avx512(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp, const float *v,
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
        const __m512 e0 = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(x + c), vm));
        const __m512 e1 = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(x + c + 16), vm));
        _mm512_storeu_ps(x + c, e0);
        _mm512_storeu_ps(x + c + 16, e1);
        s0 = _mm512_add_ps(s0, e0);
        s1 = _mm512_add_ps(s1, e1);
    }
    for (; c < n; c += 16) {
        const __mmask16 k = n - c >= 16 ? (__mmask16)0xFFFF : tail_mask(n - c);
        const __m512 e0 = _mm512_maskz_mov_ps(k, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + c), vm)));
        _mm512_mask_storeu_ps(x + c, k, e0);
        s0 = _mm512_add_ps(s0, e0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
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
