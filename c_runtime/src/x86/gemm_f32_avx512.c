/* The 16 x 16 GEMM register tile for AVX-512F: one zmm accumulator per row of A, one zmm
 * row of the B panel per step, A[i][p] broadcast from memory. 16 FMAs per 17 loads keep the FMA
 * units, not the load ports, the limit. */
#include "moa/gemm_tile.h"

#if MOA_ISA_AVX512
#include <immintrin.h>

void moa_gemm_tile_f32_16x16_avx512(MOA_GEMM_TILE_PARAMS)
{
    __m512 acc[16];
    size_t p;
    int i;
#pragma GCC unroll 16
    for (i = 0; i < 16; i++) {
        acc[i] = _mm512_setzero_ps();
    }
    for (p = 0; p < kc; p++) {
        const __m512 b_row = _mm512_loadu_ps(b + (ptrdiff_t)p * b_row_stride);
        const float *a_col = a + (ptrdiff_t)p * a_col_stride;
#pragma GCC unroll 16
        for (i = 0; i < 16; i++) {
            acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(a_col[i * a_row_stride]), b_row, acc[i]);
        }
    }
#pragma GCC unroll 16
    for (i = 0; i < 16; i++) {
        float *y_row = y + i * y_row_stride;
        const __m512 before = accumulate ? _mm512_loadu_ps(y_row) : _mm512_setzero_ps();
        _mm512_storeu_ps(y_row, _mm512_fmadd_ps(_mm512_set1_ps(alpha), acc[i], before));
    }
}
#endif
