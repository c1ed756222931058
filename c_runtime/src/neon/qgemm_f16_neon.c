/* The float16-weight panel kernels (moa/qgemm_panel.h) for AArch64 NEON: a row of a panel's 16
 * halves is two 8-lane loads, each widened by vcvt_f32_f16 / vcvt_high_f32_f16 (exact, part of
 * ARMv8's base FP16 storage support) into four float32x4, then one FMA each with x[p]. */
#include "moa/qgemm_panel.h"

#if MOA_ISA_NEON
#include <arm_neon.h>

/* Columns 4c .. 4c + 3 of row p, c = 0 .. 3. */
static void row_f16(const uint16_t *w, size_t p, float32x4_t column[4])
{
    const float16x8_t low = vreinterpretq_f16_u16(vld1q_u16(w + p * MOA_GEMM_NR));
    const float16x8_t high = vreinterpretq_f16_u16(vld1q_u16(w + p * MOA_GEMM_NR + 8));
    column[0] = vcvt_f32_f16(vget_low_f16(low));
    column[1] = vcvt_high_f32_f16(low);
    column[2] = vcvt_f32_f16(vget_low_f16(high));
    column[3] = vcvt_high_f32_f16(high);
}

void moa_qw_dot_f16_neon(MOA_QW_DOT_PARAMS)
{
    const uint16_t *w = (const uint16_t *)q;
    float32x4_t sum[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    size_t p;
    int c;
    (void)block, (void)scale, (void)offset, (void)zero;
    for (p = 0; p < K; p++) {
        const float x_p = x[(ptrdiff_t)p * x_stride];
        float32x4_t column[4];
        row_f16(w, p, column);
        for (c = 0; c < 4; c++) {
            sum[c] = vfmaq_n_f32(sum[c], column[c], x_p);
        }
    }
    for (c = 0; c < 4; c++) {
        vst1q_f32(y16 + 4 * c, sum[c]);
    }
}

void moa_qw_dequant_f16_neon(MOA_QW_DEQUANT_PARAMS)
{
    const uint16_t *w = (const uint16_t *)q;
    size_t p;
    int c;
    (void)block, (void)scale, (void)offset, (void)zero;
    for (p = p0; p < p0 + kc; p++) {
        float32x4_t column[4];
        row_f16(w, p, column);
        for (c = 0; c < 4; c++) {
            vst1q_f32(out + (p - p0) * MOA_GEMM_NR + 4 * c, column[c]);
        }
    }
}
#endif
