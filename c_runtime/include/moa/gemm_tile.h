/* The GEMM register tile, one per ISA (moa/isa.h picks it at compile time):
 *
 *     Y[i][j] = alpha * sum_{p < kc} A[i][p] B[p][j]  +  (accumulate ? Y[i][j] : 0)
 *     for i < MOA_GEMM_MR, j < MOA_GEMM_NT = MOA_GEMM_TILE_PANELS x 16,
 *
 * with A[i][p] = a[i * a_row_stride + p * a_col_stride] and, for column j = 16 t + l,
 * B[p][j] = b[t * b_panel_stride + p * b_row_stride + l]: row p of packed panel t holds 16
 * contiguous floats. The MR x NT accumulators stay in registers for the whole kc-long sum;
 * Y is read and written once. matmul.c drives it over cache blocks.
 *
 * The edge tile is the same sum for the bottom and right edges, i < mr <= MOA_GEMM_MR and
 * j < nr <= MOA_GEMM_NT: it runs mr rows of accumulators (not MR), reads only the panels that
 * hold a column < nr, and reads and writes only columns j < nr of Y (masked loads and stores on
 * AVX2 and AVX-512, vl = nr on RVV, only the q registers that hold a column < nr on NEON). Each
 * panel it reads still holds 16 readable floats per row: a packed panel is zero-padded and
 * matmul.c copies a partial panel of a view.
 *
 * b_next is where the next tile's same rows are (b itself when there is none): the x86 tiles
 * prefetch one of its rows per panel and step, so the next panels, K x 16 floats on in the
 * packed weights (past the 4 KiB page the hardware prefetchers follow), are in L1 when their
 * turn comes.
 *
 *     variant                          MR x NT   registers
 *     moa_gemm_tile_f32_12x32_avx512   12 x 32   24 zmm accumulators (of 32), 2 panels a tile
 *     moa_gemm_tile_f32_6x16_avx2       6 x 16   12 ymm accumulators (of 16)
 *     moa_gemm_tile_f32_5x16_neon       5 x 16   20 q accumulators (of 32)
 *     moa_gemm_tile_f32_7x16_rvv        7 x 16   7 groups, vl = 16: m4 (of 8) at VLEN 128, m2 (of 16) at VLEN >= 256
 *     moa_gemm_tile_f32_3x16_helium     3 x 16   6 q accumulators (of 8), the 16 columns in two sweeps of 8
 *     moa_gemm_tile_f32_4x16_scalar     4 x 16   the portable reference */
#ifndef MOA_GEMM_TILE_H
#define MOA_GEMM_TILE_H

#include <stddef.h>

#include "moa/isa.h"
#include "moa/matmul.h" /* MOA_GEMM_NR */

#define MOA_GEMM_TILE_PARAMS                                                                     \
    size_t kc, const float *a, ptrdiff_t a_row_stride, ptrdiff_t a_col_stride, const float *b, \
        ptrdiff_t b_row_stride, ptrdiff_t b_panel_stride, float alpha, float *y,                 \
        ptrdiff_t y_row_stride, int accumulate, const float *b_next

#define MOA_GEMM_EDGE_PARAMS MOA_GEMM_TILE_PARAMS, size_t mr, size_t nr

#if MOA_ISA_AVX512
#define MOA_GEMM_MR 12
#define MOA_GEMM_TILE_PANELS 2
#define moa_gemm_tile_f32 moa_gemm_tile_f32_12x32_avx512
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
#elif MOA_ISA_HELIUM
#define MOA_GEMM_MR 3
#define moa_gemm_tile_f32 moa_gemm_tile_f32_3x16_helium
#define moa_gemm_edge_f32 moa_gemm_edge_f32_helium
#else
#define MOA_GEMM_MR 4
#define moa_gemm_tile_f32 moa_gemm_tile_f32_4x16_scalar
#define moa_gemm_edge_f32 moa_gemm_edge_f32_scalar
#endif

#ifndef MOA_GEMM_TILE_PANELS
#define MOA_GEMM_TILE_PANELS 1
#endif
/* A block of A is MOA_GEMM_MC_TILES register tiles of rows (a board may override it with -D).
 * On x86 it is 24 rows, packed (below): with a tile's panels of B it stays in L1 while B streams
 * from L2 (bench gemm, AVX-512, 128 x 768 x 768, A packed: 148.7 GFLOP/s at 96 rows, 150.4 at 24;
 * the stack copy is 12 KiB). */
#ifndef MOA_GEMM_MC_TILES
#if MOA_ISA_AVX512
#define MOA_GEMM_MC_TILES 2
#elif MOA_ISA_AVX2
#define MOA_GEMM_MC_TILES 4
#else
#define MOA_GEMM_MC_TILES 8
#endif
#endif
/* The x86 tiles are given A as a row-major copy of the block, rows MOA_GEMM_KC apart (made by
 * matmul.c), and B's packed rows MOA_GEMM_NR apart: with both strides constants, each
 * broadcast of A is one load at a fixed offset, and rows of A a multiple of 4 KiB apart no
 * longer share the L1's sets. */
#define MOA_GEMM_PACK_A (MOA_ISA_AVX512 || MOA_ISA_AVX2)
/* A tile's arguments are those strides: the tiles then run their loop with them as constants. */
#define MOA_GEMM_PACKED_STRIDES(a_row_stride, a_col_stride, b_row_stride) \
    ((a_row_stride) == MOA_GEMM_KC && (a_col_stride) == 1 && (b_row_stride) == MOA_GEMM_NR)
#define MOA_GEMM_NT (MOA_GEMM_TILE_PANELS * MOA_GEMM_NR)

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
