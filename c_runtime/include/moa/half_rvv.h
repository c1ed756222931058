/* IEEE halves to float32 in an RVV register group: by the core's own widening conversion where it
 * has Zvfhmin (bpi-f3's X60), else in integer lanes (the C908 of the K230 has no half conversion),
 * as moa/half.h does one at a time:
 *
 *     exponent and mantissa moved to a float32's place (<< 13), times 2^112 (the bias 127 - 15;
 *     a subnormal half becomes a float32 subnormal, which the product makes exact and normal),
 *     infinity and NaN given the all-ones exponent instead, the sign put back.
 *
 * vl halves, in one LMUL=4 group of float32 (vl = 16 for every VLEN >= 128): moa_rvv_f16_to_f32
 * loads them from consecutive addresses, moa_rvv_f16_bits_to_f32 takes them already in a register
 * (a strided load: a column of a K tile). */
#ifndef MOA_HALF_RVV_H
#define MOA_HALF_RVV_H

#include <riscv_vector.h>
#include <stdint.h>

#if defined(__riscv_zvfhmin)
static inline vfloat32m4_t moa_rvv_f16_bits_to_f32(vuint16m2_t halves, size_t vl)
{
    return __riscv_vfwcvt_f_f_v_f32m4(__riscv_vreinterpret_v_u16m2_f16m2(halves), vl);
}
#else
static inline vfloat32m4_t moa_rvv_f16_bits_to_f32(vuint16m2_t halves, size_t vl)
{
    const vuint32m4_t h = __riscv_vzext_vf2_u32m4(halves, vl);
    const vuint32m4_t magnitude = __riscv_vand_vx_u32m4(h, 0x7fffu, vl);
    const vuint32m4_t sign = __riscv_vsll_vx_u32m4(__riscv_vand_vx_u32m4(h, 0x8000u, vl), 16, vl);
    const vuint32m4_t moved = __riscv_vsll_vx_u32m4(magnitude, 13, vl);
    const vfloat32m4_t scaled = __riscv_vfmul_vf_f32m4(__riscv_vreinterpret_v_u32m4_f32m4(moved), 0x1p112f, vl);
    const vbool8_t special = __riscv_vmsgeu_vx_u32m4_b8(magnitude, 0x7c00u, vl); /* infinity, NaN */
    const vuint32m4_t bits = __riscv_vor_vx_u32m4_mu(special, __riscv_vreinterpret_v_f32m4_u32m4(scaled), moved,
                                                     0x7f800000u, vl);
    return __riscv_vreinterpret_v_u32m4_f32m4(__riscv_vor_vv_u32m4(bits, sign, vl));
}
#endif

static inline vfloat32m4_t moa_rvv_f16_to_f32(const uint16_t *halves, size_t vl)
{
    return moa_rvv_f16_bits_to_f32(__riscv_vle16_v_u16m2(halves, vl), vl);
}

#endif
