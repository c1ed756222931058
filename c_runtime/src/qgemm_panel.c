/* The portable reference of the quantized-weight panel kernels (moa/qgemm_panel.h): the loops
 * read like the equations, and every ISA variant is tested against them. */
#include "moa/qgemm_panel.h"

#if MOA_QW_SCALAR
#include "moa/half.h"

/* Column j of row b of a panel's scales or offsets: a float, a half, or (MOA_QS_SUPER) the
 * super-block's half times the block's int8. */
static float scale_at(const void *scales, int half, size_t b, size_t j)
{
    if (half == MOA_QS_SUPER) {
        return moa_f16_to_f32(moa_qs_super_row(scales, b)[j]) * (float)moa_qs_block_row(scales, b)[j];
    }
    return half ? moa_f16_to_f32(((const uint16_t *)scales)[b * MOA_GEMM_NR + j])
                : ((const float *)scales)[b * MOA_GEMM_NR + j];
}

/* q[p][j] of a panel: an int8, or a nibble of row pair p / 2 (low for even p). */
static int value_i8(const void *q, size_t p, size_t j)
{
    return ((const int8_t *)q)[p * MOA_GEMM_NR + j];
}

static int value_u4(const void *q, size_t p, size_t j)
{
    const uint8_t pair = ((const uint8_t *)q)[p / 2 * MOA_GEMM_NR + j];
    return p % 2 ? pair >> 4 : pair & 15;
}

static void dot(int (*value)(const void *, size_t, size_t), MOA_QW_DOT_PARAMS)
{
    float sum[MOA_GEMM_NR] = {0.0f};
    size_t b0, p, j;
    for (b0 = 0; b0 < K; b0 += block) {
        const size_t end = K - b0 < block ? K : b0 + block;
        const size_t s = b0 / block;
        float acc[MOA_GEMM_NR] = {0.0f}, x_sum = 0.0f;
        for (p = b0; p < end; p++) {
            const float x_p = x[(ptrdiff_t)p * x_stride];
            x_sum += x_p;
            for (j = 0; j < MOA_GEMM_NR; j++) {
                acc[j] += x_p * (float)value(q, p, j);
            }
        }
        for (j = 0; j < MOA_GEMM_NR; j++) {
            sum[j] += scale_at(scale, half, s, j) * (acc[j] - (float)zero * x_sum) +
                      (offset != NULL ? scale_at(offset, half, s, j) * x_sum : 0.0f);
        }
    }
    for (j = 0; j < MOA_GEMM_NR; j++) {
        y16[j] = sum[j];
    }
}

static void dequant(int (*value)(const void *, size_t, size_t), MOA_QW_DEQUANT_PARAMS)
{
    size_t p, j;
    for (p = p0; p < p0 + kc; p++) {
        const size_t s = p / block;
        for (j = 0; j < MOA_GEMM_NR; j++) {
            out[(p - p0) * MOA_GEMM_NR + j] = scale_at(scale, half, s, j) * (float)(value(q, p, j) - zero) +
                                              (offset != NULL ? scale_at(offset, half, s, j) : 0.0f);
        }
    }
}

void moa_qw_dot_i8_scalar(MOA_QW_DOT_PARAMS)
{
    dot(value_i8, K, block, x, x_stride, q, scale, offset, half, zero, y16);
}

void moa_qw_dot_u4_scalar(MOA_QW_DOT_PARAMS)
{
    dot(value_u4, K, block, x, x_stride, q, scale, offset, half, zero, y16);
}

void moa_qw_dequant_i8_scalar(MOA_QW_DEQUANT_PARAMS)
{
    dequant(value_i8, block, q, scale, offset, half, zero, p0, kc, out);
}

void moa_qw_dequant_u4_scalar(MOA_QW_DEQUANT_PARAMS)
{
    dequant(value_u4, block, q, scale, offset, half, zero, p0, kc, out);
}
#endif
