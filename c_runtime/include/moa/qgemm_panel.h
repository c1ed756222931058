/* The micro-kernels of moa_gemm_qw_f32 (qmatmul.h), one set per ISA (moa/isa.h picks it at
 * compile time), on one 16-column panel of quantized weights W (qmatmul.h's layout):
 *
 *     moa_qw_dot_<type>:     y16[j] = sum_{p < K} x[p] W[p][j]
 *                            computed per block as scale[b][j] (sum x[p] q[p][j] - zero sum x[p])
 *                            + offset[b][j] sum x[p],
 *                            so a weight is converted, never dequantized (the decode step's GEMV);
 *     moa_qw_dequant_<type>: out[p - p0][j] = W[p][j] for p0 <= p < p0 + kc (the GEMM's float panel).
 *
 *     variant                                   vectors
 *     moa_qw_{dot,dequant}_{i8,u4}_avx512       one zmm: 16 columns
 *     moa_qw_{dot,dequant}_{i8,u4}_avx2         two ymm
 *     moa_qw_{dot,dequant}_{i8,u4}_neon         four q
 *     moa_qw_{dot,dequant}_{i8,u4}_rvv          one m4 group, vl = 16 for any VLEN >= 128
 *     moa_qw_{dot,dequant}_{i8,u4}_scalar       the portable reference

 *
 * float16 weights (MOA_QW_F16) have no scale: a half is widened to float32 in registers (block,
 * scale, offset and zero unused), by the core's own conversion where it has one:
 *
 *     moa_qw_{dot,dequant}_f16_avx512           _mm512_cvtph_ps: 16 columns
 *     moa_qw_{dot,dequant}_f16_avx2             _mm256_cvtph_ps (F16C; without it, the reference)
 *     moa_qw_{dot,dequant}_f16_neon             vcvt_f32_f16, four vectors of 4
 *     moa_qw_{dot,dequant}_f16_rvv              vfwcvt with Zvfhmin, else integer lanes (the C908), one m4 group
 *     moa_qw_{dot,dequant}_f16_scalar           bit by bit (moa/half.h): the reference
 *     moa_qw_dot_f16_native_neon                MOA_QW_F16_NATIVE with FEAT_FP16: fmla .8h, see below
 *     moa_qw_dot_f16_native_rvv                 MOA_QW_F16_NATIVE with Zvfh: vfmacc.vf on e16, see below */
#ifndef MOA_QGEMM_PANEL_H
#define MOA_QGEMM_PANEL_H

#include <stddef.h>
#include <stdint.h>

#include "moa/isa.h"
#include "moa/qmatmul.h"

/* x[p] = x[p * x_stride]; q, scale and offset (NULL: 0) point at the panel's own; scale and offset
 * are floats, or halves when `half` (converted in registers, a row of 16 per block); zero as qmatmul.h. */
#define MOA_QW_DOT_PARAMS                                                                              \
    size_t K, size_t block, const float *x, ptrdiff_t x_stride, const void *q, const void *scale, \
        const void *offset, int half, int zero, float *y16
#define MOA_QW_DEQUANT_PARAMS                                                                          \
    size_t block, const void *q, const void *scale, const void *offset, int half, int zero, size_t p0,    \
        size_t kc, float *out

#if MOA_ISA_AVX512
#define MOA_QW_VARIANT(name) name##_avx512
#elif MOA_ISA_AVX2
#define MOA_QW_VARIANT(name) name##_avx2
#elif MOA_ISA_NEON
#define MOA_QW_VARIANT(name) name##_neon
#elif MOA_ISA_RVV
#define MOA_QW_VARIANT(name) name##_rvv
#else
#define MOA_QW_SCALAR 1
#define MOA_QW_VARIANT(name) name##_scalar
#endif
#ifndef MOA_QW_SCALAR
#define MOA_QW_SCALAR 0
#endif

#define moa_qw_dot_i8 MOA_QW_VARIANT(moa_qw_dot_i8)
#define moa_qw_dot_u4 MOA_QW_VARIANT(moa_qw_dot_u4)
#define moa_qw_dequant_i8 MOA_QW_VARIANT(moa_qw_dequant_i8)
#define moa_qw_dequant_u4 MOA_QW_VARIANT(moa_qw_dequant_u4)

#if MOA_ISA_AVX512
#define MOA_QW_F16_VARIANT(name) name##_avx512
#elif MOA_ISA_AVX2 && defined(__F16C__)
#define MOA_QW_F16_VARIANT(name) name##_avx2
#elif MOA_ISA_NEON
#define MOA_QW_F16_VARIANT(name) name##_neon
#elif MOA_ISA_RVV
#define MOA_QW_F16_RVV 1
#define MOA_QW_F16_VARIANT(name) name##_rvv
#else
#define MOA_QW_F16_SCALAR 1
#define MOA_QW_F16_VARIANT(name) name##_scalar
#endif
#ifndef MOA_QW_F16_SCALAR
#define MOA_QW_F16_SCALAR 0
#endif
#ifndef MOA_QW_F16_RVV
#define MOA_QW_F16_RVV 0
#endif
#define moa_qw_dot_f16 MOA_QW_F16_VARIANT(moa_qw_dot_f16)
#define moa_qw_dequant_f16 MOA_QW_F16_VARIANT(moa_qw_dequant_f16)

/* MOA_QW_F16_NATIVE's GEMV: half-precision arithmetic where the core has it (NEON with FEAT_FP16,
 * RVV with Zvfh), rows summed in halves in blocks of MOA_QW_NATIVE_BLOCK; elsewhere the float32 one above. */
#define MOA_QW_NATIVE_BLOCK 16
#if MOA_ISA_NEON && defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
#define MOA_QW_F16_NATIVE_NAME "neon-fp16"
#define moa_qw_dot_f16_native moa_qw_dot_f16_native_neon
void moa_qw_dot_f16_native(MOA_QW_DOT_PARAMS);
#elif MOA_ISA_RVV && defined(__riscv_zvfh)
#define MOA_QW_F16_NATIVE_NAME "rvv-zvfh"
#define moa_qw_dot_f16_native moa_qw_dot_f16_native_rvv
void moa_qw_dot_f16_native(MOA_QW_DOT_PARAMS);
#else
#define MOA_QW_F16_NATIVE_NAME "float32"
#define moa_qw_dot_f16_native moa_qw_dot_f16
#endif

void moa_qw_dot_i8(MOA_QW_DOT_PARAMS);
void moa_qw_dot_u4(MOA_QW_DOT_PARAMS);
void moa_qw_dequant_i8(MOA_QW_DEQUANT_PARAMS);
void moa_qw_dequant_u4(MOA_QW_DEQUANT_PARAMS);
void moa_qw_dot_f16(MOA_QW_DOT_PARAMS);
void moa_qw_dequant_f16(MOA_QW_DEQUANT_PARAMS);

#endif
