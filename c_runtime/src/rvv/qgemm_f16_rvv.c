/* The float16-weight panel kernels (moa/qgemm_panel.h) for RVV 1.0: a row of a panel's 16 halves
 * is widened to float32 (moa/half_rvv.h: vfwcvt with Zvfhmin, else integer lanes), then one vfmacc
 * with x[p]. Two accumulators, so that consecutive FMAs do not wait on each other. */
#include "moa/qgemm_panel.h"

#if MOA_QW_F16_RVV
#include "moa/half_rvv.h"

static vfloat32m4_t row_f16(const uint16_t *w, size_t p, size_t vl)
{
    return moa_rvv_f16_to_f32(w + p * MOA_GEMM_NR, vl);
}

void moa_qw_dot_f16_rvv(MOA_QW_DOT_PARAMS)
{
    const uint16_t *w = (const uint16_t *)q;
    const size_t vl = __riscv_vsetvl_e32m4(MOA_GEMM_NR);
    vfloat32m4_t even = __riscv_vfmv_v_f_f32m4(0.0f, vl), odd = even;
    size_t p;
    (void)block, (void)scale, (void)offset, (void)half, (void)zero;
    for (p = 0; p + 1 < K; p += 2) {
        even = __riscv_vfmacc_vf_f32m4(even, x[(ptrdiff_t)p * x_stride], row_f16(w, p, vl), vl);
        odd = __riscv_vfmacc_vf_f32m4(odd, x[(ptrdiff_t)(p + 1) * x_stride], row_f16(w, p + 1, vl), vl);
    }
    if (p < K) {
        even = __riscv_vfmacc_vf_f32m4(even, x[(ptrdiff_t)p * x_stride], row_f16(w, p, vl), vl);
    }
    __riscv_vse32_v_f32m4(y16, __riscv_vfadd_vv_f32m4(even, odd, vl), vl);
}

void moa_qw_dequant_f16_rvv(MOA_QW_DEQUANT_PARAMS)
{
    const uint16_t *w = (const uint16_t *)q;
    const size_t vl = __riscv_vsetvl_e32m4(MOA_GEMM_NR);
    size_t p;
    (void)block, (void)scale, (void)offset, (void)half, (void)zero;
    for (p = p0; p < p0 + kc; p++) {
        __riscv_vse32_v_f32m4(out + (p - p0) * MOA_GEMM_NR, row_f16(w, p, vl), vl);
    }
}

#if defined(__riscv_zvfh)
/* MOA_QW_F16_NATIVE on a core with Zvfh (bpi-f3's X60): x[p] rounded to a half, products summed
 * in halves (vfmacc.vf on e16) over blocks of MOA_QW_NATIVE_BLOCK rows, each block's sums widened
 * and added in float32 (vfwadd.wv): the NEON kernel's arithmetic, step for step. */
void moa_qw_dot_f16_native_rvv(MOA_QW_DOT_PARAMS)
{
    const _Float16 *w = (const _Float16 *)q;
    const size_t vl = __riscv_vsetvl_e16m2(MOA_GEMM_NR);
    vfloat32m4_t sum = __riscv_vfmv_v_f_f32m4(0.0f, vl);
    size_t b0, p;
    (void)block, (void)scale, (void)offset, (void)half, (void)zero;
    for (b0 = 0; b0 < K; b0 += MOA_QW_NATIVE_BLOCK) {
        const size_t end = K - b0 < MOA_QW_NATIVE_BLOCK ? K : b0 + MOA_QW_NATIVE_BLOCK;
        vfloat16m2_t block_sum = __riscv_vfmv_v_f_f16m2((_Float16)0.0f, vl);
        for (p = b0; p < end; p++) {
            const _Float16 x_p = (_Float16)x[(ptrdiff_t)p * x_stride];
            block_sum = __riscv_vfmacc_vf_f16m2(block_sum, x_p, __riscv_vle16_v_f16m2(w + p * MOA_GEMM_NR, vl), vl);
        }
        sum = __riscv_vfwadd_wv_f32m4(sum, block_sum, vl);
    }
    __riscv_vse32_v_f32m4(y16, sum, vl);
}
#endif
#endif
