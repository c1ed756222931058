/* The 7 x 16 GEMM register tile for RVV 1.0: one LMUL=4 register group per row of A holds
 * its 16 accumulators (vl = 16 fits one m4 group for every VLEN >= 128), the B panel's row
 * in an eighth group, A[i][p] a scalar operand of vfmacc.vf. */
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

void moa_gemm_tile_f32_7x16_rvv(MOA_GEMM_TILE_PARAMS)
{
    const size_t vl = __riscv_vsetvl_e32m4(MOA_GEMM_NR);
    vfloat32m4_t acc0 = __riscv_vfmv_v_f_f32m4(0.0f, vl), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    vfloat32m4_t acc4 = acc0, acc5 = acc0, acc6 = acc0;
    size_t p;
    for (p = 0; p < kc; p++) {
        const vfloat32m4_t b_row = __riscv_vle32_v_f32m4(b + (ptrdiff_t)p * b_row_stride, vl);
        const float *a_col = a + (ptrdiff_t)p * a_col_stride;
        acc0 = __riscv_vfmacc_vf_f32m4(acc0, a_col[0 * a_row_stride], b_row, vl);
        acc1 = __riscv_vfmacc_vf_f32m4(acc1, a_col[1 * a_row_stride], b_row, vl);
        acc2 = __riscv_vfmacc_vf_f32m4(acc2, a_col[2 * a_row_stride], b_row, vl);
        acc3 = __riscv_vfmacc_vf_f32m4(acc3, a_col[3 * a_row_stride], b_row, vl);
        acc4 = __riscv_vfmacc_vf_f32m4(acc4, a_col[4 * a_row_stride], b_row, vl);
        acc5 = __riscv_vfmacc_vf_f32m4(acc5, a_col[5 * a_row_stride], b_row, vl);
        acc6 = __riscv_vfmacc_vf_f32m4(acc6, a_col[6 * a_row_stride], b_row, vl);
    }
    store_row(y, acc0, alpha, accumulate, vl);
    store_row(y + y_row_stride, acc1, alpha, accumulate, vl);
    store_row(y + 2 * y_row_stride, acc2, alpha, accumulate, vl);
    store_row(y + 3 * y_row_stride, acc3, alpha, accumulate, vl);
    store_row(y + 4 * y_row_stride, acc4, alpha, accumulate, vl);
    store_row(y + 5 * y_row_stride, acc5, alpha, accumulate, vl);
    store_row(y + 6 * y_row_stride, acc6, alpha, accumulate, vl);
}
#endif
