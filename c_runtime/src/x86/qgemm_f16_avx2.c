/* The float16-weight panel kernels (moa/qgemm_panel.h) for AVX2 + FMA with F16C: a row of a
 * panel's 16 halves is two ymm halves, each widened by one vcvtph2ps (exact), then one FMA per
 * half with x[p] broadcast. An AVX2 build without F16C uses the scalar reference. */
#include "moa/qgemm_panel.h"

#if MOA_ISA_AVX2 && defined(__F16C__)
#include <immintrin.h>

/* Columns 8h .. 8h + 7 of row p. */
static __m256 half_f16(const uint16_t *w, size_t p, int h)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + p * MOA_GEMM_NR + 8 * h)));
}

void moa_qw_dot_f16_avx2(MOA_QW_DOT_PARAMS)
{
    const uint16_t *w = (const uint16_t *)q;
    __m256 sum[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    size_t p;
    (void)block, (void)scale, (void)offset, (void)half, (void)zero;
    for (p = 0; p < K; p++) {
        const __m256 x_p = _mm256_set1_ps(x[(ptrdiff_t)p * x_stride]);
        sum[0] = _mm256_fmadd_ps(x_p, half_f16(w, p, 0), sum[0]);
        sum[1] = _mm256_fmadd_ps(x_p, half_f16(w, p, 1), sum[1]);
    }
    _mm256_storeu_ps(y16, sum[0]);
    _mm256_storeu_ps(y16 + 8, sum[1]);
}

void moa_qw_dequant_f16_avx2(MOA_QW_DEQUANT_PARAMS)
{
    const uint16_t *w = (const uint16_t *)q;
    size_t p;
    (void)block, (void)scale, (void)offset, (void)half, (void)zero;
    for (p = p0; p < p0 + kc; p++) {
        _mm256_storeu_ps(out + (p - p0) * MOA_GEMM_NR, half_f16(w, p, 0));
        _mm256_storeu_ps(out + (p - p0) * MOA_GEMM_NR + 8, half_f16(w, p, 1));
    }
}
#endif
