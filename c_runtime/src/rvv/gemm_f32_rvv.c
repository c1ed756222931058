/* The 7 x 16 GEMM register tile for RVV 1.0: one LMUL=4 register group per row of A holds
 * its 16 accumulators (vl = 16 fits one m4 group for every VLEN >= 128), the B panel's row
 * in an eighth group, A[i][p] a scalar operand of vfmacc.vf. The edge tile is the same with
 * vl = nr and only its mr rows. */
#include "moa/gemm_tile.h"

#if MOA_ISA_RVV
#include <riscv_vector.h>

/* y_row = alpha * acc + (accumulate ? y_row : 0). Register groups cannot sit in an array,
 * hence seven named accumulators and one store per row. */
static void store_row(float *y_row, vfloat32m4_t acc, float alpha, int accumulate, size_t vl)
{
    const vfloat32m4_t before = accumulate ? __riscv_vle32_v_f32m4(y_row, vl) : __riscv_vfmv_v_f_f32m4(0.0f, vl);
    __riscv_vse32_v_f32m4(y_row, __riscv_vfmacc_vf_f32m4(before, alpha, acc, vl), vl);
}

/* Rows i < rows (a constant at every call), vl columns. */
MOA_GEMM_INLINE void tile_rows(int rows, size_t vl, MOA_GEMM_TILE_PARAMS)
{
    vfloat32m4_t acc0 = __riscv_vfmv_v_f_f32m4(0.0f, vl), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    vfloat32m4_t acc4 = acc0, acc5 = acc0, acc6 = acc0;
    size_t p;
    (void)b_next; /* the cores' own prefetchers follow the panel stream (not measured here) */
    for (p = 0; p < kc; p++) {
        const vfloat32m4_t b_row = __riscv_vle32_v_f32m4(b + (ptrdiff_t)p * b_row_stride, vl);
        const float *a_col = a + (ptrdiff_t)p * a_col_stride;
        acc0 = __riscv_vfmacc_vf_f32m4(acc0, a_col[0 * a_row_stride], b_row, vl);
        if (rows > 1) acc1 = __riscv_vfmacc_vf_f32m4(acc1, a_col[1 * a_row_stride], b_row, vl);
        if (rows > 2) acc2 = __riscv_vfmacc_vf_f32m4(acc2, a_col[2 * a_row_stride], b_row, vl);
        if (rows > 3) acc3 = __riscv_vfmacc_vf_f32m4(acc3, a_col[3 * a_row_stride], b_row, vl);
        if (rows > 4) acc4 = __riscv_vfmacc_vf_f32m4(acc4, a_col[4 * a_row_stride], b_row, vl);
        if (rows > 5) acc5 = __riscv_vfmacc_vf_f32m4(acc5, a_col[5 * a_row_stride], b_row, vl);
        if (rows > 6) acc6 = __riscv_vfmacc_vf_f32m4(acc6, a_col[6 * a_row_stride], b_row, vl);
    }
    store_row(y, acc0, alpha, accumulate, vl);
    if (rows > 1) store_row(y + y_row_stride, acc1, alpha, accumulate, vl);
    if (rows > 2) store_row(y + 2 * y_row_stride, acc2, alpha, accumulate, vl);
    if (rows > 3) store_row(y + 3 * y_row_stride, acc3, alpha, accumulate, vl);
    if (rows > 4) store_row(y + 4 * y_row_stride, acc4, alpha, accumulate, vl);
    if (rows > 5) store_row(y + 5 * y_row_stride, acc5, alpha, accumulate, vl);
    if (rows > 6) store_row(y + 6 * y_row_stride, acc6, alpha, accumulate, vl);
}

void moa_gemm_tile_f32_7x16_rvv(MOA_GEMM_TILE_PARAMS)
{
    tile_rows(7, __riscv_vsetvl_e32m4(MOA_GEMM_NR), kc, a, a_row_stride, a_col_stride, b, b_row_stride, alpha, y,
              y_row_stride, accumulate, b_next);
}

#define EDGE_ROWS(r)                                                                                          \
    case r:                                                                                                   \
        tile_rows(r, vl, kc, a, a_row_stride, a_col_stride, b, b_row_stride, alpha, y, y_row_stride, accumulate, b_next); \
        break

void moa_gemm_edge_f32_rvv(MOA_GEMM_EDGE_PARAMS)
{
    const size_t vl = __riscv_vsetvl_e32m4(nr);
    switch (mr) {
        EDGE_ROWS(1); EDGE_ROWS(2); EDGE_ROWS(3); EDGE_ROWS(4); EDGE_ROWS(5); EDGE_ROWS(6); EDGE_ROWS(7);
    default:
        break;
    }
}
#endif
