/* moa_gemm_f32, the portable scalar reference.
 *
 * Goto's loop order without packing: an NC-wide slab of columns, a KC-deep slice of the
 * sum, an MC-tall block of rows, then MR x NR register tiles. Each tile's KC x NR panel of
 * B stays in L1 while the MC x KC block of A is reused from L2 across the panels. The
 * full-tile micro-kernel is the one an ISA variant (NEON, RVV) replaces; partial tiles at
 * the edges stay scalar. */
#include "moa/matmul.h"

/* Register tile: MR x NR accumulators live in registers for a whole KC slice. */
#define MOA_GEMM_MR 4
#define MOA_GEMM_NR 8

static size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

static float at(moa_matrix_f32 m, size_t i, size_t j)
{
    return m.data[(ptrdiff_t)i * m.row_stride + (ptrdiff_t)j * m.col_stride];
}

/* The view whose [0][0] is m[i][j]. An absent operand (NULL) stays absent: offsetting a
 * null pointer is undefined even when nothing is read through it. */
static moa_matrix_f32 view_at(moa_matrix_f32 m, size_t i, size_t j)
{
    if (m.data != NULL) {
        m.data += (ptrdiff_t)i * m.row_stride + (ptrdiff_t)j * m.col_stride;
    }
    return m;
}

/* acc = A[0:MR, 0:kc] B[0:kc, 0:NR] as kc rank-1 updates: a column of A times a row of B.
 * Constant trip counts let the compiler unroll the tile and keep acc in registers. */
static void tile_f32_4x8_scalar(size_t kc, moa_matrix_f32 a, moa_matrix_f32 b,
                                float acc[MOA_GEMM_MR][MOA_GEMM_NR])
{
    size_t i, j, p;
    for (i = 0; i < MOA_GEMM_MR; i++) {
        for (j = 0; j < MOA_GEMM_NR; j++) {
            acc[i][j] = 0.0f;
        }
    }
    for (p = 0; p < kc; p++) {
        float a_col[MOA_GEMM_MR], b_row[MOA_GEMM_NR];
        for (i = 0; i < MOA_GEMM_MR; i++) {
            a_col[i] = at(a, i, p);
        }
        for (j = 0; j < MOA_GEMM_NR; j++) {
            b_row[j] = at(b, p, j);
        }
        for (i = 0; i < MOA_GEMM_MR; i++) {
            for (j = 0; j < MOA_GEMM_NR; j++) {
                acc[i][j] += a_col[i] * b_row[j];
            }
        }
    }
}

/* The same sum for a partial tile at the bottom or right edge (mr <= MR, nr <= NR). */
static void tile_f32_edge_scalar(size_t kc, size_t mr, size_t nr, moa_matrix_f32 a, moa_matrix_f32 b,
                                 float acc[MOA_GEMM_MR][MOA_GEMM_NR])
{
    size_t i, j, p;
    for (i = 0; i < mr; i++) {
        for (j = 0; j < nr; j++) {
            float sum = 0.0f;
            for (p = 0; p < kc; p++) {
                sum += at(a, i, p) * at(b, p, j);
            }
            acc[i][j] = sum;
        }
    }
}

/* Y tile = alpha * acc + what came before: beta * C in the first K slice (C read just
 * before its element of Y is written, so C may be Y), the partial sum in Y after it. */
static void store_tile(size_t mr, size_t nr, float acc[MOA_GEMM_MR][MOA_GEMM_NR], float alpha, float beta,
                       moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride, int first_k_slice)
{
    size_t i, j;
    for (i = 0; i < mr; i++) {
        for (j = 0; j < nr; j++) {
            float *out = &y[(ptrdiff_t)i * y_row_stride + (ptrdiff_t)j];
            const float before = !first_k_slice ? *out : c.data != NULL ? beta * at(c, i, j) : 0.0f;
            *out = alpha * acc[i][j] + before;
        }
    }
}

moa_status moa_gemm_f32(size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a, moa_matrix_f32 b,
                        float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride)
{
    size_t j0, p0, i0, jr, ir;
    if (M == 0 || N == 0) {
        return MOA_OK;
    }
    if (y == NULL || (K > 0 && (a.data == NULL || b.data == NULL))) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    if (M > 1 && y_row_stride < (ptrdiff_t)N) {
        return MOA_ERR_BAD_PARAMS;
    }
    for (j0 = 0; j0 < N; j0 += MOA_GEMM_NC) {
        const size_t nc = min_size(MOA_GEMM_NC, N - j0);
        p0 = 0;
        do { /* at least once: with K == 0 the first slice still writes beta * C */
            const size_t kc = min_size(MOA_GEMM_KC, K - p0);
            for (i0 = 0; i0 < M; i0 += MOA_GEMM_MC) {
                const size_t mc = min_size(MOA_GEMM_MC, M - i0);
                for (jr = 0; jr < nc; jr += MOA_GEMM_NR) {
                    for (ir = 0; ir < mc; ir += MOA_GEMM_MR) {
                        const size_t i = i0 + ir, j = j0 + jr;
                        const size_t mr = min_size(MOA_GEMM_MR, mc - ir), nr = min_size(MOA_GEMM_NR, nc - jr);
                        const moa_matrix_f32 a_tile = view_at(a, i, p0), b_tile = view_at(b, p0, j);
                        float acc[MOA_GEMM_MR][MOA_GEMM_NR];
                        if (mr == MOA_GEMM_MR && nr == MOA_GEMM_NR) {
                            tile_f32_4x8_scalar(kc, a_tile, b_tile, acc);
                        } else {
                            tile_f32_edge_scalar(kc, mr, nr, a_tile, b_tile, acc);
                        }
                        store_tile(mr, nr, acc, alpha, beta, view_at(c, i, j),
                                   y + (ptrdiff_t)i * y_row_stride + (ptrdiff_t)j, y_row_stride, p0 == 0);
                    }
                }
            }
            p0 += kc;
        } while (p0 < K);
    }
    return MOA_OK;
}
