/* The GEMM register tile, one per ISA (moa/isa.h picks it at compile time):
 *
 *     Y[i][j] = alpha * sum_{p < kc} A[i][p] B[p][j]  +  (accumulate ? Y[i][j] : 0)
 *     for i < MOA_GEMM_MR, j < MOA_GEMM_NR (16),
 *
 * with A[i][p] = a[i * a_row_stride + p * a_col_stride] and B[p][j] = b[p * b_row_stride + j]
 * (a row of a packed panel: 16 contiguous floats). The MR x 16 accumulators stay in
 * registers for the whole kc-long sum; Y is read and written once. matmul.c drives it
 * over cache blocks and handles the edges.
 *
 *     variant                          MR x NR   registers
 *     moa_gemm_tile_f32_16x16_avx512   16 x 16   16 zmm accumulators (of 32)
 *     moa_gemm_tile_f32_6x16_avx2       6 x 16   12 ymm accumulators (of 16)
 *     moa_gemm_tile_f32_5x16_neon       5 x 16   20 q accumulators (of 32)
 *     moa_gemm_tile_f32_7x16_rvv        7 x 16   7 m4 groups (of 8), vl = 16 for any VLEN >= 128
 *     moa_gemm_tile_f32_4x16_scalar     4 x 16   the portable reference */
#ifndef MOA_GEMM_TILE_H
#define MOA_GEMM_TILE_H

#include <stddef.h>

#include "moa/isa.h"
#include "moa/matmul.h" /* MOA_GEMM_NR */

#define MOA_GEMM_TILE_PARAMS                                                                     \
    size_t kc, const float *a, ptrdiff_t a_row_stride, ptrdiff_t a_col_stride, const float *b, \
        ptrdiff_t b_row_stride, float alpha, float *y, ptrdiff_t y_row_stride, int accumulate

#if MOA_ISA_AVX512
#define MOA_GEMM_MR 16
#define moa_gemm_tile_f32 moa_gemm_tile_f32_16x16_avx512
#elif MOA_ISA_AVX2
#define MOA_GEMM_MR 6
#define moa_gemm_tile_f32 moa_gemm_tile_f32_6x16_avx2
#elif MOA_ISA_NEON
#define MOA_GEMM_MR 5
#define moa_gemm_tile_f32 moa_gemm_tile_f32_5x16_neon
#elif MOA_ISA_RVV
#define MOA_GEMM_MR 7
#define moa_gemm_tile_f32 moa_gemm_tile_f32_7x16_rvv
#else
#define MOA_GEMM_MR 4
#define moa_gemm_tile_f32 moa_gemm_tile_f32_4x16_scalar
#endif

void moa_gemm_tile_f32(MOA_GEMM_TILE_PARAMS);

#endif
