/* The portable reference of the float16-weight panel kernels (moa/qgemm_panel.h): each half
 * widened bit by bit (moa/half.h); every ISA variant is tested against these. */
#include "moa/half.h"
#include "moa/qgemm_panel.h"

#if MOA_QW_F16_SCALAR
void moa_qw_dot_f16_scalar(MOA_QW_DOT_PARAMS)
{
    const uint16_t *w = (const uint16_t *)q;
    float sum[MOA_GEMM_NR] = {0.0f};
    size_t p, j;
    (void)block, (void)scale, (void)offset, (void)half, (void)zero;
    for (p = 0; p < K; p++) {
        const float x_p = x[(ptrdiff_t)p * x_stride];
        for (j = 0; j < MOA_GEMM_NR; j++) {
            sum[j] += x_p * moa_f16_to_f32(w[p * MOA_GEMM_NR + j]);
        }
    }
    for (j = 0; j < MOA_GEMM_NR; j++) {
        y16[j] = sum[j];
    }
}

void moa_qw_dequant_f16_scalar(MOA_QW_DEQUANT_PARAMS)
{
    const uint16_t *w = (const uint16_t *)q;
    size_t p, j;
    (void)block, (void)scale, (void)offset, (void)half, (void)zero;
    for (p = p0; p < p0 + kc; p++) {
        for (j = 0; j < MOA_GEMM_NR; j++) {
            out[(p - p0) * MOA_GEMM_NR + j] = moa_f16_to_f32(w[p * MOA_GEMM_NR + j]);
        }
    }
}
#endif
