/* The scalar kernel of conv_transpose.h: each input element scatters its products with the
 * kernel into the outputs its taps land on. */
#include "moa/conv_transpose.h"

/* Where tap k of input position i lands on one axis: 1 with *at set when inside the output. */
static int landing(const moa_conv_transpose_params *p, int axis, size_t i, size_t k, size_t *at)
{
    const ptrdiff_t o = (ptrdiff_t)(i * p->stride[axis] + k * p->dilation[axis]) - p->pad_begin[axis];
    if (o < 0 || (size_t)o >= p->out[axis]) {
        return 0;
    }
    *at = (size_t)o;
    return 1;
}

/* y_plane[o] += x * w_kernel[k] for every tap k of input position i that lands inside the plane. */
static void scatter(const moa_conv_transpose_params *p, float x, const size_t i[3], const float *w_kernel,
                    float *y_plane)
{
    size_t k0, k1, k2, o0, o1, o2;
    for (k0 = 0; k0 < p->kernel[0]; k0++) {
        if (!landing(p, 0, i[0], k0, &o0)) {
            continue;
        }
        for (k1 = 0; k1 < p->kernel[1]; k1++) {
            if (!landing(p, 1, i[1], k1, &o1)) {
                continue;
            }
            for (k2 = 0; k2 < p->kernel[2]; k2++) {
                if (landing(p, 2, i[2], k2, &o2)) {
                    y_plane[(o0 * p->out[1] + o1) * p->out[2] + o2] +=
                        x * w_kernel[(k0 * p->kernel[1] + k1) * p->kernel[2] + k2];
                }
            }
        }
    }
}

static int bad_geometry(const moa_conv_transpose_params *p)
{
    int axis;
    for (axis = 0; axis < 3; axis++) {
        if (p->stride[axis] == 0 || p->dilation[axis] == 0) {
            return 1;
        }
    }
    return p->groups == 0 || p->channels % p->groups != 0 || p->out_channels % p->groups != 0;
}

moa_status moa_conv_transpose_f32(const moa_conv_transpose_params *p, const float *x, const float *w,
                                  const float *bias, float *y)
{
    size_t n, c, m, plane, j, i[3];
    size_t in_size, out_size, taps, cg, mg;
    if (p == NULL || x == NULL || w == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    if (bad_geometry(p)) {
        return MOA_ERR_BAD_PARAMS;
    }
    in_size = p->in[0] * p->in[1] * p->in[2];
    out_size = p->out[0] * p->out[1] * p->out[2];
    taps = p->kernel[0] * p->kernel[1] * p->kernel[2];
    cg = p->channels / p->groups;
    mg = p->out_channels / p->groups;
    for (plane = 0; plane < p->batch * p->out_channels; plane++) { /* each output plane starts at its bias */
        for (j = 0; j < out_size; j++) {
            y[plane * out_size + j] = bias != NULL ? bias[plane % p->out_channels] : 0.0f;
        }
    }
    for (n = 0; n < p->batch; n++) {
        for (c = 0; c < p->channels; c++) {
            const float *x_plane = x + (n * p->channels + c) * in_size;
            const size_t first_out = c / cg * mg; /* the output channels of c's group */
            for (m = 0; m < mg; m++) {
                const float *w_kernel = w + (c * mg + m) * taps;
                float *y_plane = y + (n * p->out_channels + first_out + m) * out_size;
                for (i[0] = 0; i[0] < p->in[0]; i[0]++) {
                    for (i[1] = 0; i[1] < p->in[1]; i[1]++) {
                        for (i[2] = 0; i[2] < p->in[2]; i[2]++) {
                            scatter(p, x_plane[(i[0] * p->in[1] + i[1]) * p->in[2] + i[2]], i, w_kernel, y_plane);
                        }
                    }
                }
            }
        }
    }
    return MOA_OK;
}
