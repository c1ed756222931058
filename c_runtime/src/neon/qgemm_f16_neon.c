/* The float16-weight panel kernels (moa/qgemm_panel.h) for AArch64 NEON: a row of a panel's 16
 * halves is two 8-lane loads, each widened by vcvt_f32_f16 / vcvt_high_f32_f16 (exact, part of
 * ARMv8's base FP16 storage support) into four float32x4, then one FMA each with x[p]. The four
 * vectors are named, not an array: gcc -O2 would keep an array in memory. */
#include "moa/qgemm_panel.h"

#if MOA_ISA_NEON
#include <arm_neon.h>

static float16x8_t eight_f16(const uint16_t *w)
{
    return vreinterpretq_f16_u16(vld1q_u16(w));
}

void moa_qw_dot_f16_neon(MOA_QW_DOT_PARAMS)
{
    const uint16_t *w = (const uint16_t *)q;
    float32x4_t sum0 = vdupq_n_f32(0.0f), sum1 = sum0, sum2 = sum0, sum3 = sum0; /* columns 0-3, ..., 12-15 */
    size_t p;
    (void)block, (void)scale, (void)offset, (void)half, (void)zero;
    for (p = 0; p < K; p++) {
        const float x_p = x[(ptrdiff_t)p * x_stride];
        const float16x8_t low = eight_f16(w + p * MOA_GEMM_NR), high = eight_f16(w + p * MOA_GEMM_NR + 8);
        sum0 = vfmaq_n_f32(sum0, vcvt_f32_f16(vget_low_f16(low)), x_p);
        sum1 = vfmaq_n_f32(sum1, vcvt_high_f32_f16(low), x_p);
        sum2 = vfmaq_n_f32(sum2, vcvt_f32_f16(vget_low_f16(high)), x_p);
        sum3 = vfmaq_n_f32(sum3, vcvt_high_f32_f16(high), x_p);
    }
    vst1q_f32(y16, sum0);
    vst1q_f32(y16 + 4, sum1);
    vst1q_f32(y16 + 8, sum2);
    vst1q_f32(y16 + 12, sum3);
}

void moa_qw_dequant_f16_neon(MOA_QW_DEQUANT_PARAMS)
{
    const uint16_t *w = (const uint16_t *)q;
    size_t p;
    (void)block, (void)scale, (void)offset, (void)half, (void)zero;
    for (p = p0; p < p0 + kc; p++) {
        const float16x8_t low = eight_f16(w + p * MOA_GEMM_NR), high = eight_f16(w + p * MOA_GEMM_NR + 8);
        float *row = out + (p - p0) * MOA_GEMM_NR;
        vst1q_f32(row, vcvt_f32_f16(vget_low_f16(low)));
        vst1q_f32(row + 4, vcvt_high_f32_f16(low));
        vst1q_f32(row + 8, vcvt_f32_f16(vget_low_f16(high)));
        vst1q_f32(row + 12, vcvt_high_f32_f16(high));
    }
}
#endif
