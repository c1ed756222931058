/* fp32 transposed convolution for ONNX ConvTranspose over NC(D)(H)W tensors, 1-, 2- or 3-D
 * (an axis the tensor lacks has extent 1), as a direct scatter:
 *
 *     Y[n][g*Mg + m][o] = B[g*Mg + m] + sum_{c in group g, i, k : o = i*stride - pad_begin + k*dilation}
 *                                           X[n][c][i] * W[c][m][k]
 *
 * on each axis, with Cg = C / groups input and Mg = M / groups output channels per group. Every
 * input element adds its products with the kernel into the outputs its taps land on; a tap
 * landing outside Y (cropped by the pads) adds nothing. pad_begin may be negative: the output
 * then starts before the first position any tap reaches, and those positions hold B alone (ONNX's
 * output_shape or output_padding past the full result). The geometry is the converter's; the
 * caller owns every buffer. */
#ifndef MOA_CONV_TRANSPOSE_H
#define MOA_CONV_TRANSPOSE_H

#include <stddef.h>

#include "moa/status.h"

typedef struct {
    size_t batch, channels, out_channels;      /* X: N x C x in, Y: N x M x out */
    size_t groups;                              /* divides C and M */
    size_t in[3], out[3], kernel[3];            /* W: C x M/groups x kernel */
    size_t stride[3], dilation[3];              /* >= 1 */
    ptrdiff_t pad_begin[3];                     /* the outputs cropped before position 0 */
} moa_conv_transpose_params;

/* Y = conv_transpose(X, W) + B as above. B (M values) is optional: NULL adds nothing. Y must not
 * overlap X, W or B. Returns MOA_ERR_NULL_ARGUMENT for a missing X, W or Y, and
 * MOA_ERR_BAD_PARAMS for a zero stride, dilation or group count, or groups not dividing C and M. */
moa_status moa_conv_transpose_f32(const moa_conv_transpose_params *p, const float *x, const float *w,
                                  const float *bias, float *y);

#endif
