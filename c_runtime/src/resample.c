/* The scalar reference kernel of resample.h: each output row along the axis is a weighted sum of
 * input rows, a row being the `inner` contiguous elements after the axis (vectorisable). */
#include "moa/resample.h"

moa_status moa_resample_axis_f32(const moa_resample_axis_params *params, const float *x, float *y)
{
    const moa_resample_axis_params *q = params;
    size_t o, j, t, i;
    if (q == NULL || x == NULL || y == NULL || q->taps == 0 || q->index == NULL || q->weight == NULL) {
        return MOA_ERR_BAD_PARAMS;
    }
    for (o = 0; o < q->outer; o++) {
        const float *plane = x + o * q->in_extent * q->inner;
        for (j = 0; j < q->out_extent; j++) {
            float *row = y + (o * q->out_extent + j) * q->inner;
            if (q->outside != NULL && q->outside[j]) {
                for (i = 0; i < q->inner; i++) {
                    row[i] = q->extrapolation;
                }
                continue;
            }
            for (i = 0; i < q->inner; i++) { /* the first tap sets the row: a copy stays exact */
                row[i] = q->weight[j * q->taps] * plane[(size_t)q->index[j * q->taps] * q->inner + i];
            }
            for (t = 1; t < q->taps; t++) {
                const float w = q->weight[j * q->taps + t];
                const float *source = plane + (size_t)q->index[j * q->taps + t] * q->inner;
                for (i = 0; i < q->inner; i++) {
                    row[i] += w * source[i];
                }
            }
        }
    }
    return MOA_OK;
}
