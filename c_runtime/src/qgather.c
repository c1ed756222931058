/* moa_gather_qw_f32 (moa/qgather.h): one column of quantized weights, dequantized. */
#include "moa/qgather.h"
#include "moa/half.h"

/* Element i of a row of scales or offsets: a float, or a half (moa_qweights.half_scales). */
static float scale_at(const void *scales, int half, size_t i)
{
    return half ? moa_f16_to_f32(((const uint16_t *)scales)[i]) : ((const float *)scales)[i];
}

moa_status moa_gather_qw_f32(size_t K, size_t N, moa_qweights w, ptrdiff_t index, float *y)
{
    size_t panel, lane, blocks, k, first;
    const int halves = w.type == MOA_QW_F16 || w.type == MOA_QW_F16_NATIVE; /* a lookup has no arithmetic */
    if ((w.type != MOA_QW_I8 && w.type != MOA_QW_U4 && !halves) || w.block == 0 || w.half_scales > MOA_QS_HALF ||
        (w.type == MOA_QW_U4 && w.block % 2 != 0)) {
        return MOA_ERR_BAD_PARAMS;
    }
    if (index < 0 || (size_t)index >= N) {
        return MOA_ERR_INDEX_OUT_OF_RANGE;
    }
    if (K > 0 && (w.q == NULL || (w.scale == NULL && !halves) || y == NULL)) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    panel = (size_t)index / MOA_GEMM_NR, lane = (size_t)index % MOA_GEMM_NR, blocks = MOA_QW_BLOCKS(K, w.block);
    if (halves) {
        /* q[panel][k][lane], a half: no scale */
        const uint16_t *q = (const uint16_t *)w.q + panel * MOA_QW_ROWS(K, w.block) * MOA_GEMM_NR + lane;
        for (k = 0; k < K; k++) {
            y[k] = moa_f16_to_f32(q[k * MOA_GEMM_NR]);
        }
        return MOA_OK;
    }
    /* scale[panel][k / block][lane], and offset alike */
    first = panel * blocks * MOA_GEMM_NR + lane;
    if (w.type == MOA_QW_I8) {
        /* q[panel][k][lane] */
        const int8_t *q = (const int8_t *)w.q + panel * MOA_QW_ROWS(K, w.block) * MOA_GEMM_NR + lane;
        for (k = 0; k < K; k++) {
            const size_t b = k / w.block * MOA_GEMM_NR;
            y[k] = scale_at(w.scale, w.half_scales, first + b) * (float)(q[k * MOA_GEMM_NR] - w.zero) +
                   (w.offset != NULL ? scale_at(w.offset, w.half_scales, first + b) : 0.0f);
        }
    } else {
        /* q[panel][k / 2][lane], row k in the low nibble when even, the high one when odd */
        const uint8_t *q = (const uint8_t *)w.q + panel * MOA_QW_ROWS(K, w.block) / 2 * MOA_GEMM_NR + lane;
        for (k = 0; k < K; k++) {
            const size_t b = k / w.block * MOA_GEMM_NR;
            const uint8_t pair = q[k / 2 * MOA_GEMM_NR];
            const int value = k % 2 ? pair >> 4 : pair & 15;
            y[k] = scale_at(w.scale, w.half_scales, first + b) * (float)(value - w.zero) +
                   (w.offset != NULL ? scale_at(w.offset, w.half_scales, first + b) : 0.0f);
        }
    }
    return MOA_OK;
}
