/* The 3 x 16 GEMM register tile for Arm Helium (M-profile Vector Extension, Cortex-M55/M85):
 * 8 q registers of 4 floats. A tile's 16 columns go in two halves of 8: 3 rows x 2 q of
 * accumulators and the B panel row's 2 q fill 8 of them, and each A[i][p] is a scalar in a
 * general register (MVE's VFMA takes one: Qd += Qn * Rm), so one step is 2 vector loads, 3
 * scalar loads and 6 FMAs. The edge tile runs mr rows and predicates the last columns' stores
 * (VCTP): no lane past nr is written. */
#include "moa/gemm_tile.h"

#if MOA_ISA_HELIUM
#include <arm_mve.h>

#define HALF 8 /* columns a sweep holds in registers */

/* Y[i][h .. h + 8) for i < rows, the columns j < nr of the half; `rows` is a constant at every call. */
MOA_GEMM_INLINE void half_rows(int rows, size_t h, size_t nr, MOA_GEMM_TILE_PARAMS)
{
    float32x4_t acc[3][2];
    size_t p;
    int i, v;
    (void)b_next, (void)b_panel_stride; /* a tile is one panel wide; the cores have no prefetcher to lead */
#pragma GCC unroll 3
    for (i = 0; i < rows; i++) {
        acc[i][0] = vdupq_n_f32(0.0f);
        acc[i][1] = vdupq_n_f32(0.0f);
    }
    for (p = 0; p < kc; p++) {
        const float *b_row = b + (ptrdiff_t)p * b_row_stride + h;
        const float *a_col = a + (ptrdiff_t)p * a_col_stride;
        const float32x4_t b0 = vld1q_f32(b_row), b1 = vld1q_f32(b_row + 4);
#pragma GCC unroll 3
        for (i = 0; i < rows; i++) {
            const float a_ip = a_col[i * a_row_stride];
            acc[i][0] = vfmaq_n_f32(acc[i][0], b0, a_ip);
            acc[i][1] = vfmaq_n_f32(acc[i][1], b1, a_ip);
        }
    }
#pragma GCC unroll 3
    for (i = 0; i < rows; i++) {
        float *y_row = y + i * y_row_stride + h;
#pragma GCC unroll 2
        for (v = 0; v < 2; v++) {
            const size_t lanes = nr > h + 4 * (size_t)v ? nr - h - 4 * (size_t)v : 0;
            const mve_pred16_t keep = vctp32q((uint32_t)(lanes < 4 ? lanes : 4));
            const float32x4_t before = accumulate ? vldrwq_z_f32(y_row + 4 * v, keep) : vdupq_n_f32(0.0f);
            vstrwq_p_f32(y_row + 4 * v, vfmaq_n_f32(before, acc[i][v], alpha), keep);
        }
    }
}

/* The halves of the tile that hold a column < nr. */
MOA_GEMM_INLINE void tile_rows(int rows, size_t nr, MOA_GEMM_TILE_PARAMS)
{
    size_t h;
    for (h = 0; h < nr; h += HALF) {
        half_rows(rows, h, nr, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y,
                  y_row_stride, accumulate, b_next);
    }
}

void moa_gemm_tile_f32_3x16_helium(MOA_GEMM_TILE_PARAMS)
{
    tile_rows(3, MOA_GEMM_NR, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y,
              y_row_stride, accumulate, b_next);
}

void moa_gemm_edge_f32_helium(MOA_GEMM_EDGE_PARAMS)
{
    switch (mr) {
    case 1:
        tile_rows(1, nr, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride,
                  accumulate, b_next);
        break;
    case 2:
        tile_rows(2, nr, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride,
                  accumulate, b_next);
        break;
    case 3:
        tile_rows(3, nr, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride,
                  accumulate, b_next);
        break;
    default:
        break;
    }
}
#endif
