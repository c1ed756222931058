/* The integer GEMM's micro-kernels (moa/igemm_tile.h) for RVV 1.0, A and B signed (uint8 A
 * arrives moved by -128, igemm.c). vlseg4e8 splits a packed group (16 columns x 4 k) into its
 * four rows of B, B[4g + t][0..15]; each is sign-extended to int16 and vwmacc.vx adds A[i][4g + t]
 * times it into row i's int32 sums (a LMUL=4 group: vl = 16 for any VLEN >= 128). Four rows:
 * 16 vector registers of sums, four of B's bytes and two of one widened row. */
#include "moa/igemm_tile.h"

#if defined(MOA_IGEMM_RVV)
#include <riscv_vector.h>

#define INLINE static inline __attribute__((always_inline))

/* sum += a[0] B_0 + a[1] B_1 + a[2] B_2 + a[3] B_3: one row's 4 k of a group. */
INLINE vint32m4_t multiply_add(vint32m4_t sum, const int8_t *a, vint16m2_t b0, vint16m2_t b1, vint16m2_t b2,
                               vint16m2_t b3, size_t vl)
{
    sum = __riscv_vwmacc_vx_i32m4(sum, a[0], b0, vl);
    sum = __riscv_vwmacc_vx_i32m4(sum, a[1], b1, vl);
    sum = __riscv_vwmacc_vx_i32m4(sum, a[2], b2, vl);
    return __riscv_vwmacc_vx_i32m4(sum, a[3], b3, vl);
}

/* Row t of a group, widened. */
#define GROUP_ROW(group, t, vl) __riscv_vsext_vf2_i16m2(__riscv_vget_v_i8m1x4_i8m1(group, t), vl)

void moa_igemm_tile_4x16_rvv(MOA_IGEMM_TILE_PARAMS)
{
    const size_t vl = __riscv_vsetvl_e32m4(MOA_GEMM_NR);
    vint32m4_t sum0 = __riscv_vmv_v_x_i32m4(0, vl), sum1 = sum0, sum2 = sum0, sum3 = sum0;
    size_t g;
    for (g = 0; g < groups; g++) {
        const vint8m1x4_t group = __riscv_vlseg4e8_v_i8m1x4(b + g * 64, vl);
        const vint16m2_t b0 = GROUP_ROW(group, 0, vl), b1 = GROUP_ROW(group, 1, vl);
        const vint16m2_t b2 = GROUP_ROW(group, 2, vl), b3 = GROUP_ROW(group, 3, vl);
        sum0 = multiply_add(sum0, a + 4 * g, b0, b1, b2, b3, vl);
        sum1 = multiply_add(sum1, a + a_row_stride + 4 * g, b0, b1, b2, b3, vl);
        sum2 = multiply_add(sum2, a + 2 * a_row_stride + 4 * g, b0, b1, b2, b3, vl);
        sum3 = multiply_add(sum3, a + 3 * a_row_stride + 4 * g, b0, b1, b2, b3, vl);
    }
    __riscv_vse32_v_i32m4(acc, sum0, vl);
    __riscv_vse32_v_i32m4(acc + 16, sum1, vl);
    __riscv_vse32_v_i32m4(acc + 32, sum2, vl);
    __riscv_vse32_v_i32m4(acc + 48, sum3, vl);
}

void moa_igemm_row_4x16_rvv(MOA_IGEMM_ROW_PARAMS)
{
    const size_t vl = __riscv_vsetvl_e32m4(MOA_GEMM_NR);
    vint32m4_t sum = __riscv_vmv_v_x_i32m4(0, vl);
    size_t g;
    for (g = 0; g < groups; g++) {
        const vint8m1x4_t group = __riscv_vlseg4e8_v_i8m1x4(b + g * 64, vl);
        sum = multiply_add(sum, a + 4 * g, GROUP_ROW(group, 0, vl), GROUP_ROW(group, 1, vl), GROUP_ROW(group, 2, vl),
                           GROUP_ROW(group, 3, vl), vl);
    }
    __riscv_vse32_v_i32m4(acc, sum, vl);
}
#endif
