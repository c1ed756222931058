/* The float16-weight panel kernels (moa/qgemm_panel.h) for RVV 1.0 without Zvfh (the C908 of
 * the K230 has no half conversion): a row of a panel's 16 halves is widened in integer lanes
 * (vl = 16 in one LMUL=4 group for every VLEN >= 128), converted as moa/half.h does, in bulk:
 *
 *     exponent and mantissa moved to a float32's place (<< 13), times 2^112 (the bias 127 - 15;
 *     a subnormal half becomes a float32 subnormal, which the product makes exact and normal),
 *     infinity and NaN given the all-ones exponent instead, the sign put back;
 *
 * then one vfmacc with x[p]. Two accumulators, so that consecutive FMAs do not wait on each other. */
#include "moa/qgemm_panel.h"

#if MOA_QW_F16_RVV
#include <riscv_vector.h>

static vfloat32m4_t row_f16(const uint16_t *w, size_t p, size_t vl)
{
    const vuint32m4_t h = __riscv_vzext_vf2_u32m4(__riscv_vle16_v_u16m2(w + p * MOA_GEMM_NR, vl), vl);
    const vuint32m4_t magnitude = __riscv_vand_vx_u32m4(h, 0x7fffu, vl);
    const vuint32m4_t sign = __riscv_vsll_vx_u32m4(__riscv_vand_vx_u32m4(h, 0x8000u, vl), 16, vl);
    const vuint32m4_t moved = __riscv_vsll_vx_u32m4(magnitude, 13, vl);
    const vfloat32m4_t scaled = __riscv_vfmul_vf_f32m4(__riscv_vreinterpret_v_u32m4_f32m4(moved), 0x1p112f, vl);
    const vbool8_t special = __riscv_vmsgeu_vx_u32m4_b8(magnitude, 0x7c00u, vl); /* infinity, NaN */
    const vuint32m4_t bits = __riscv_vor_vx_u32m4_mu(special, __riscv_vreinterpret_v_f32m4_u32m4(scaled), moved,
                                                     0x7f800000u, vl);
    return __riscv_vreinterpret_v_u32m4_f32m4(__riscv_vor_vv_u32m4(bits, sign, vl));
}

void moa_qw_dot_f16_rvv(MOA_QW_DOT_PARAMS)
{
    const uint16_t *w = (const uint16_t *)q;
    const size_t vl = __riscv_vsetvl_e32m4(MOA_GEMM_NR);
    vfloat32m4_t even = __riscv_vfmv_v_f_f32m4(0.0f, vl), odd = even;
    size_t p;
    (void)block, (void)scale, (void)offset, (void)zero;
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
    (void)block, (void)scale, (void)offset, (void)zero;
    for (p = p0; p < p0 + kc; p++) {
        __riscv_vse32_v_f32m4(out + (p - p0) * MOA_GEMM_NR, row_f16(w, p, vl), vl);
    }
}
#endif
