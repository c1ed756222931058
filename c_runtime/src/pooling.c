/* The scalar reference kernel of pooling.h: each output element walks its window. */
#include <math.h>

#include "moa/pooling.h"

/* Where window element k of output o falls on one axis: 1 inside the input (*at set), 0 on a pad,
 * -1 past the pads (a ceil_mode window's overhang). */
static int position(const moa_pooling_params *q, int axis, size_t o, size_t k, size_t *at)
{
    const size_t padded = o * q->stride[axis] + k * q->dilation[axis]; /* counted from the first pad */
    if (padded < q->pad_begin[axis]) {
        return 0;
    }
    if (padded - q->pad_begin[axis] < q->in[axis]) {
        *at = padded - q->pad_begin[axis];
        return 1;
    }
    return padded < q->pad_begin[axis] + q->in[axis] + q->pad_end[axis] ? 0 : -1;
}

/* The window elements of output o on one axis that are not past the pads: a ceil_mode window, or
 * a kernel larger than the input (a Global pool exported as AveragePool), stops there. */
static size_t taps(const moa_pooling_params *q, int axis, size_t o)
{
    const size_t start = o * q->stride[axis], end = q->pad_begin[axis] + q->in[axis] + q->pad_end[axis];
    const size_t reach = start < end ? (end - start + q->dilation[axis] - 1) / q->dilation[axis] : 0;
    return reach < q->kernel[axis] ? reach : q->kernel[axis];
}

static float window(const moa_pooling_params *q, const float *plane, const size_t o[3])
{
    size_t k0, k1, k2, at[3] = {0, 0, 0}, inside = 0, counted = 0;
    const size_t n0 = taps(q, 0, o[0]), n1 = taps(q, 1, o[1]), n2 = taps(q, 2, o[2]);
    float acc = q->kind == MOA_POOLING_MAX ? -INFINITY : 0.0f;
    for (k0 = 0; k0 < n0; k0++) {
        const int w0 = position(q, 0, o[0], k0, &at[0]);
        for (k1 = 0; k1 < n1; k1++) {
            const int w1 = position(q, 1, o[1], k1, &at[1]);
            for (k2 = 0; k2 < n2; k2++) {
                const int w2 = position(q, 2, o[2], k2, &at[2]);
                float v;
                if (w0 < 0 || w1 < 0 || w2 < 0) {
                    continue;
                }
                counted++;
                if (w0 == 0 || w1 == 0 || w2 == 0) {
                    continue;
                }
                inside++;
                v = plane[(at[0] * q->in[1] + at[1]) * q->in[2] + at[2]];
                if (q->kind == MOA_POOLING_MAX) {
                    acc = (v > acc || isnan(v)) ? v : acc;
                } else if (q->kind == MOA_POOLING_AVERAGE) {
                    acc += v;
                } else {
                    acc += powf(fabsf(v), q->p);
                }
            }
        }
    }
    if (q->kind == MOA_POOLING_AVERAGE) {
        return acc / (float)(q->count_include_pad ? counted : inside);
    }
    return q->kind == MOA_POOLING_LP ? powf(acc, 1.0f / q->p) : acc;
}

moa_status moa_pooling_f32(const moa_pooling_params *params, const float *x, float *y)
{
    size_t plane, o[3];
    const size_t in_size = params ? params->in[0] * params->in[1] * params->in[2] : 0;
    if (params == NULL || x == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (plane = 0; plane < params->planes; plane++) {
        for (o[0] = 0; o[0] < params->out[0]; o[0]++) {
            for (o[1] = 0; o[1] < params->out[1]; o[1]++) {
                for (o[2] = 0; o[2] < params->out[2]; o[2]++) {
                    *y++ = window(params, x + plane * in_size, o);
                }
            }
        }
    }
    return MOA_OK;
}
