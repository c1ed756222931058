/* The float16-weight panel kernels (moa/qgemm_panel.h) for AVX-512F: a row of a panel's 16
 * halves widened by one vcvtph2ps into a zmm (exact), then one FMA with x[p] broadcast; two
 * accumulators, so that consecutive FMAs do not wait on each other. */
#include "moa/qgemm_panel.h"

#if MOA_ISA_AVX512
#include <immintrin.h>

static __m512 row_f16(const uint16_t *w, size_t p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + p * MOA_GEMM_NR)));
}

void moa_qw_dot_f16_avx512(MOA_QW_DOT_PARAMS)
{
    const uint16_t *w = (const uint16_t *)q;
    __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps();
    size_t p;
    (void)block, (void)scale, (void)offset, (void)half, (void)zero;
    for (p = 0; p + 1 < K; p += 2) {
        even = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)p * x_stride]), row_f16(w, p), even);
        odd = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)(p + 1) * x_stride]), row_f16(w, p + 1), odd);
    }
    if (p < K) {
        even = _mm512_fmadd_ps(_mm512_set1_ps(x[(ptrdiff_t)p * x_stride]), row_f16(w, p), even);
    }
    _mm512_storeu_ps(y16, _mm512_add_ps(even, odd));
}

void moa_qw_dequant_f16_avx512(MOA_QW_DEQUANT_PARAMS)
{
    const uint16_t *w = (const uint16_t *)q;
    size_t p;
    (void)block, (void)scale, (void)offset, (void)half, (void)zero;
    for (p = p0; p < p0 + kc; p++) {
        _mm512_storeu_ps(out + (p - p0) * MOA_GEMM_NR, row_f16(w, p));
    }
}
#endif
