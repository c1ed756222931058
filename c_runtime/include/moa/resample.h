/* Resampling one axis of an fp32 tensor by a table of taps: ONNX Resize, one call per resized
 * axis (scalar C99 reference kernel).
 *
 * x is outer x in_extent x inner elements, y is outer x out_extent x inner. Output position j
 * along the axis is the weighted sum of `taps` input positions:
 *     y[o, j, i] = sum_t weight[j * taps + t] * x[o, index[j * taps + t], i]
 * or `extrapolation` where outside[j] is set (tf_crop_and_resize beyond the input; outside may
 * be NULL). The tables are computed at convert time; the caller owns both buffers, which must
 * not overlap. */
#ifndef MOA_RESAMPLE_H
#define MOA_RESAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "moa/status.h"

typedef struct {
    size_t outer, in_extent, out_extent, inner, taps;
    const int32_t *index;         /* out_extent x taps input positions, each < in_extent */
    const float *weight;          /* out_extent x taps */
    const unsigned char *outside; /* out_extent flags, or NULL */
    float extrapolation;
} moa_resample_axis_params;

moa_status moa_resample_axis_f32(const moa_resample_axis_params *params, const float *x, float *y);

#endif
