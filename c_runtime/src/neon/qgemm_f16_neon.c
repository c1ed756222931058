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

#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
/* MOA_QW_F16_NATIVE on a core with FEAT_FP16 (Cortex-A76/A78: rpi5, Jetson): x[p] rounded to a half,
 * products summed in halves (fmla .8h) over blocks of MOA_QW_NATIVE_BLOCK rows, each block's sums
 * widened and added in float32. 40% fewer instructions than the widening kernel, at about
 * 2^-11 of sum |x w| per block instead of float32's rounding (qmatmul.h's contract). */
void moa_qw_dot_f16_native_neon(MOA_QW_DOT_PARAMS)
{
    const float16_t *w = (const float16_t *)q;
    float32x4_t sum0 = vdupq_n_f32(0.0f), sum1 = sum0, sum2 = sum0, sum3 = sum0;
    size_t b0, p;
    (void)block, (void)scale, (void)offset, (void)half, (void)zero;
    for (b0 = 0; b0 < K; b0 += MOA_QW_NATIVE_BLOCK) {
        const size_t end = K - b0 < MOA_QW_NATIVE_BLOCK ? K : b0 + MOA_QW_NATIVE_BLOCK;
        float16x8_t low = vdupq_n_f16(0.0f), high = low;
        for (p = b0; p < end; p++) {
            const float16_t x_p = (float16_t)x[(ptrdiff_t)p * x_stride];
            low = vfmaq_n_f16(low, vld1q_f16(w + p * MOA_GEMM_NR), x_p);
            high = vfmaq_n_f16(high, vld1q_f16(w + p * MOA_GEMM_NR + 8), x_p);
        }
        sum0 = vaddq_f32(sum0, vcvt_f32_f16(vget_low_f16(low)));
        sum1 = vaddq_f32(sum1, vcvt_high_f32_f16(low));
        sum2 = vaddq_f32(sum2, vcvt_f32_f16(vget_low_f16(high)));
        sum3 = vaddq_f32(sum3, vcvt_high_f32_f16(high));
    }
    vst1q_f32(y16, sum0);
    vst1q_f32(y16 + 4, sum1);
    vst1q_f32(y16 + 8, sum2);
    vst1q_f32(y16 + 12, sum3);
}
#endif

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
