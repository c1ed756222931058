/* fp32 matrix multiply for MatMul and Gemm:
 *
 *     Y[m][n] = alpha * sum_k A[m][k] B[k][n]  +  beta * C[m][n]
 *
 * Every operand is read through a strided view, so a transposed operand (Gemm's transA and
 * transB) or a broadcast bias (Gemm's C of shape [N], [M, 1], [1, 1]: stride 0) is never
 * copied. Y is row-major with its own row stride. No allocation, no globals. */
#ifndef MOA_MATMUL_H
#define MOA_MATMUL_H

#include <stddef.h>

#include "moa/isa.h"
#include "moa/pool.h"
#include "moa/status.h"

/* A read-only strided view: element [i][j] is data[i * row_stride + j * col_stride].
 * Strides count elements; 0 repeats one row or column (a broadcast operand). */
typedef struct {
    const float *data;
    ptrdiff_t row_stride;
    ptrdiff_t col_stride;
} moa_matrix_f32;

/* Cache blocking (Goto's loop order; see matmul.c): a KC-deep slice of the sum at a time, its
 * panels of B (KC x 16) kept in L1. A board may override it with -D; the height of a block of
 * A (MOA_GEMM_MC_TILES) is per ISA, in moa/gemm_tile.h. On x86 a tile's panels (two on AVX-512)
 * and the packed block of A all fit in L1 at KC 128 (bench gemm, AVX-512, 128 x 768 x 768:
 * 149 GFLOP/s at KC 128, 142 at 256); the other ISAs' tiles run fewer instructions at 256 (NEON,
 * 1 x 576 x 1536: 2.00 instructions per FMA lane against 2.14 at 128). */
#ifndef MOA_GEMM_KC
#if MOA_ISA_AVX512 || MOA_ISA_AVX2
#define MOA_GEMM_KC 128
#else
#define MOA_GEMM_KC 256
#endif
#endif

/* Wider products run in blocks of MOA_GEMM_NC columns (matmul.c), so that a KC-deep slice of
 * a block's B (KC x NC floats, 512 KiB) stays in L2 while every block of rows of A passes under
 * it, and the rows of Y it adds to are few enough to stay in cache between slices. */
#ifndef MOA_GEMM_NC /* a multiple of 32: whole register tiles on every ISA (moa/gemm_tile.h) */
#define MOA_GEMM_NC (MOA_GEMM_KC > 4096 ? 32 : 512 * 1024 / 4 / MOA_GEMM_KC / 32 * 32)
#endif
#ifndef MOA_GEMM_NC_MIN
#define MOA_GEMM_NC_MIN (2 * MOA_GEMM_NC)
#endif

/* Packed B: the columns of B (K x N) in panels of MOA_GEMM_NR; panel q holds
 * B[0:K][q*NR : q*NR + NR] row after row (K * NR contiguous floats), the last panel padded
 * with zeros. The layout is the same on every ISA, so weights are packed once, when the
 * model is converted, and the kernel's innermost load is one contiguous row of a panel. */
#define MOA_GEMM_NR 16
#define MOA_GEMM_PACKED_B_ELEMS(K, N) ((size_t)(K) * (((size_t)(N) + MOA_GEMM_NR - 1) / MOA_GEMM_NR) * MOA_GEMM_NR)

/* packed (MOA_GEMM_PACKED_B_ELEMS(K, N) floats) = B in the panel layout above. */
void moa_gemm_pack_b_f32(size_t K, size_t N, moa_matrix_f32 b, float *packed);

/* As moa_gemm_f32, with B given packed. */
moa_status moa_gemm_packed_f32(size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a, const float *packed_b,
                               float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride);

/* Y (M x N, row stride y_row_stride >= N) = alpha * A (M x K) B (K x N) + beta * C.
 * C is optional: c.data == NULL adds nothing. C may be Y itself (same strides) for an
 * in-place update; otherwise Y must not overlap an operand. K == 0 gives beta * C (or 0).
 * Returns MOA_ERR_NULL_ARGUMENT for a missing A, B or Y that would be read or written,
 * MOA_ERR_BAD_PARAMS when the rows of Y would overlap. A tile's panels of B that are not
 * already contiguous columns (transposed, or the last tile) are copied to MOA_GEMM_KC * 16
 * floats of stack per panel, and on x86 a block of A to MOA_GEMM_KC floats per row
 * (moa/gemm_tile.h): 16 + 12 KiB of stack on AVX-512, 8 + 12 on AVX2, 16 on the others. */
moa_status moa_gemm_f32(size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a, moa_matrix_f32 b,
                        float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride);

/* The same on a worker pool's threads (moa/pool.h; NULL: the caller's alone): column panels, or
 * whole MC blocks of rows when there are fewer panels than threads. Y is bitwise the same for
 * every thread count. */
moa_status moa_gemm_f32_on(moa_pool *pool, size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a,
                           moa_matrix_f32 b, float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride);
moa_status moa_gemm_packed_f32_on(moa_pool *pool, size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a,
                                  const float *packed_b, float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride);

/* A slice of the sum: B is rows first_row .. first_row + K - 1 of a packed matrix of packed_rows
 * rows, A the matching K columns. With C = Y (beta 1) the slices of a long sum add up in Y one
 * after another; when first_row is a multiple of MOA_GEMM_KC every element is then the same sum,
 * in the same order, as the whole product's (a feed-forward block's hidden blocks, ops/mlp.py).
 * MOA_ERR_BAD_PARAMS when the rows run past packed_rows. */
moa_status moa_gemm_packed_rows_f32_on(moa_pool *pool, size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a,
                                       const float *packed_b, size_t packed_rows, size_t first_row, float beta,
                                       moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride);

/* B given by a function that gathers it a panel at a time (an implicit GEMM: a convolution's
 * patches, never stored whole): gather(ctx, p0, kc, j0, nr, panel) writes rows p0 .. p0 + kc of
 * columns j0 .. j0 + nr of B (nr <= 16) as kc rows of 16 floats, zero past column nr. */
typedef void (*moa_gemm_gather)(const void *ctx, size_t p0, size_t kc, size_t j0, size_t nr, float *panel);
moa_status moa_gemm_gathered_f32_on(moa_pool *pool, size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a,
                                    moa_gemm_gather gather, const void *gather_ctx, float beta, moa_matrix_f32 c,
                                    float *y, ptrdiff_t y_row_stride);

#endif
