/* The 6 x 16 GEMM register tile for AVX2 + FMA: two ymm accumulators per row of A (12 of
 * the 16 registers), the B panel's row in two ymm, A[i][p] broadcast. */
#include "moa/gemm_tile.h"

#if MOA_ISA_AVX2
#include <immintrin.h>

void moa_gemm_tile_f32_6x16_avx2(MOA_GEMM_TILE_PARAMS)
{
    __m256 lo[6], hi[6];
    size_t p;
    int i;
#pragma GCC unroll 6
    for (i = 0; i < 6; i++) {
        lo[i] = _mm256_setzero_ps();
        hi[i] = _mm256_setzero_ps();
    }
    for (p = 0; p < kc; p++) {
        const float *b_row = b + (ptrdiff_t)p * b_row_stride;
        const __m256 b_lo = _mm256_loadu_ps(b_row), b_hi = _mm256_loadu_ps(b_row + 8);
        const float *a_col = a + (ptrdiff_t)p * a_col_stride;
#pragma GCC unroll 6
        for (i = 0; i < 6; i++) {
            const __m256 a_ip = _mm256_broadcast_ss(&a_col[i * a_row_stride]);
            lo[i] = _mm256_fmadd_ps(a_ip, b_lo, lo[i]);
            hi[i] = _mm256_fmadd_ps(a_ip, b_hi, hi[i]);
        }
    }
#pragma GCC unroll 6
    for (i = 0; i < 6; i++) {
        float *y_row = y + i * y_row_stride;
        const __m256 va = _mm256_set1_ps(alpha);
        const __m256 before_lo = accumulate ? _mm256_loadu_ps(y_row) : _mm256_setzero_ps();
        const __m256 before_hi = accumulate ? _mm256_loadu_ps(y_row + 8) : _mm256_setzero_ps();
        _mm256_storeu_ps(y_row, _mm256_fmadd_ps(va, lo[i], before_lo));
        _mm256_storeu_ps(y_row + 8, _mm256_fmadd_ps(va, hi[i], before_hi));
    }
}
#endif
