/* The float16-weight panel kernels (moa/qgemm_panel.h) for RVV 1.0 without Zvfh: a row of a
 * panel's 16 halves is widened in integer lanes (moa/half_rvv.h), then one vfmacc with x[p].
 * Two accumulators, so that consecutive FMAs do not wait on each other. */
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
#endif
