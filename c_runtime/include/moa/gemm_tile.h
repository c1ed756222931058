/* The GEMM register tile, one per ISA (moa/isa.h picks it at compile time):
 *
 *     Y[i][j] = alpha * sum_{p < kc} A[i][p] B[p][j]  +  (accumulate ? Y[i][j] : 0)
 *     for i < MOA_GEMM_MR, j < MOA_GEMM_NR (16),
 *
 * with A[i][p] = a[i * a_row_stride + p * a_col_stride] and B[p][j] = b[p * b_row_stride + j]
 * (a row of a packed panel: 16 contiguous floats). The MR x 16 accumulators stay in
 * registers for the whole kc-long sum; Y is read and written once. matmul.c drives it
 * over cache blocks.
 *
 * The edge tile is the same sum for the bottom and right edges, i < mr <= MOA_GEMM_MR and
 * j < nr <= 16: it runs mr rows of accumulators (not MR), and only columns j < nr of Y are
 * read and written (masked loads and stores on AVX2 and AVX-512, vl = nr on RVV, only the
 * q registers that hold a column < nr on NEON). b still holds 16 readable floats per row: a
 * packed panel is zero-padded and matmul.c copies a partial panel of a view.
 *
 * b_next is where the next panel's same rows are (b itself when there is none): the x86 tiles
 * prefetch one of its rows per step, so the next panel, K x 16 floats on in the packed weights
 * (past the 4 KiB page the hardware prefetchers follow), is in L1 when its turn comes.
 *
 *     variant                          MR x NR   registers
 *     moa_gemm_tile_f32_16x16_avx512   16 x 16   16 zmm accumulators (of 32)
 *     moa_gemm_tile_f32_6x16_avx2       6 x 16   12 ymm accumulators (of 16)
 *     moa_gemm_tile_f32_5x16_neon       5 x 16   20 q accumulators (of 32)
 *     moa_gemm_tile_f32_7x16_rvv        7 x 16   7 groups, vl = 16: m4 (of 8) at VLEN 128, m2 (of 16) at VLEN >= 256
 *     moa_gemm_tile_f32_4x16_scalar     4 x 16   the portable reference */
#ifndef MOA_GEMM_TILE_H
#define MOA_GEMM_TILE_H

#include <stddef.h>

#include "moa/isa.h"
#include "moa/matmul.h" /* MOA_GEMM_NR */

#define MOA_GEMM_TILE_PARAMS                                                                     \
    size_t kc, const float *a, ptrdiff_t a_row_stride, ptrdiff_t a_col_stride, const float *b, \
        ptrdiff_t b_row_stride, float alpha, float *y, ptrdiff_t y_row_stride, int accumulate,   \
        const float *b_next

#define MOA_GEMM_EDGE_PARAMS MOA_GEMM_TILE_PARAMS, size_t mr, size_t nr

#if MOA_ISA_AVX512
#define MOA_GEMM_MR 16
#define moa_gemm_tile_f32 moa_gemm_tile_f32_16x16_avx512
#define moa_gemm_edge_f32 moa_gemm_edge_f32_avx512
#elif MOA_ISA_AVX2
#define MOA_GEMM_MR 6
#define moa_gemm_tile_f32 moa_gemm_tile_f32_6x16_avx2
#define moa_gemm_edge_f32 moa_gemm_edge_f32_avx2
#elif MOA_ISA_NEON
#define MOA_GEMM_MR 5
#define moa_gemm_tile_f32 moa_gemm_tile_f32_5x16_neon
#define moa_gemm_edge_f32 moa_gemm_edge_f32_neon
#elif MOA_ISA_RVV
#define MOA_GEMM_MR 7
#define moa_gemm_tile_f32 moa_gemm_tile_f32_7x16_rvv
#define moa_gemm_edge_f32 moa_gemm_edge_f32_rvv
#else
#define MOA_GEMM_MR 4
#define moa_gemm_tile_f32 moa_gemm_tile_f32_4x16_scalar
#define moa_gemm_edge_f32 moa_gemm_edge_f32_scalar
#endif

/* Inlined into each ISA's full tile and into every case of its edge tile's switch over mr,
 * so that the row count is a constant and the accumulators stay in registers. */
#if defined(__GNUC__)
#define MOA_GEMM_INLINE static inline __attribute__((always_inline))
#else
#define MOA_GEMM_INLINE static
#endif

void moa_gemm_tile_f32(MOA_GEMM_TILE_PARAMS);
void moa_gemm_edge_f32(MOA_GEMM_EDGE_PARAMS);

#endif
