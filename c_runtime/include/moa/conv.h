/* fp32 convolution for ONNX Conv over NCHW tensors (a 1-D convolution is H = 1):
 *
 *     Y[n][m][oh][ow] = B[m] + sum_{c, kh, kw} W[m][c][kh][kw]
 *                              * X[n][g*Cg + c][oh*sh + kh*dh - pad_top][ow*sw + kw*dw - pad_left]
 *
 * where g = m / Mg is the output channel's group (Cg = C / groups, Mg = M / groups) and X
 * reads as 0 outside its H x W plane (the padding). The padding is never materialised: a
 * kernel larger than 1 x 1 is an implicit GEMM, W times the patches of X gathered one packed
 * panel at a time as the GEMM needs it; a 1 x 1 kernel, a depthwise one or weights in fewer
 * bits run each kernel tap (kh, kw) as one GEMM, W[:, :, kh, kw] times X seen through a
 * strided view. No im2col buffer, no allocation, no globals. */
#ifndef MOA_CONV_H
#define MOA_CONV_H

#include <stddef.h>

#include "moa/pool.h"
#include "moa/qmatmul.h"
#include "moa/status.h"

typedef struct {
    size_t batch, channels, height, width;           /* X: N x C x H x W */
    size_t out_channels, out_height, out_width;      /* Y: N x M x OH x OW */
    size_t kernel_height, kernel_width;              /* W: M x C/groups x KH x KW */
    size_t stride_height, stride_width;              /* sh, sw >= 1 */
    size_t dilation_height, dilation_width;          /* dh, dw >= 1 */
    size_t pad_top, pad_left;                        /* the bottom and right pads follow from OH and OW */
    size_t groups;                                   /* divides C and M; groups == C is depthwise */
} moa_conv2d_params;

/* Y = conv(X, W) + B as above. B (M values) is optional: NULL adds nothing. Y must not
 * overlap X, W or B. Returns MOA_ERR_NULL_ARGUMENT for a missing X, W or Y, and
 * MOA_ERR_BAD_PARAMS for a zero stride, dilation or group count, or groups not dividing C and M. */
moa_status moa_conv2d_f32(const moa_conv2d_params *p, const float *x, const float *w, const float *bias,
                          float *y);
/* The same, its GEMMs on a worker pool's threads (moa/pool.h; NULL: the caller's alone); Y is
 * bitwise the same for every thread count. */
moa_status moa_conv2d_f32_on(moa_pool *pool, const moa_conv2d_params *p, const float *x, const float *w,
                             const float *bias, float *y);

/* The same with W stored in fewer bits (convert --weights), in W's own order: row m holds the
 * R = C/groups * KH * KW weights of output channel m,
 *     W[m][r] = scale[m][r / block] (q[m][r] - zero) + offset[m][r / block]   (offset 0 when NULL),
 * q int8 (MOA_QW_I8), 4-bit (MOA_QW_U4: r and r + 1 in the low and high nibble of byte m R/2 + r/2;
 * R even) or a half (MOA_QW_F16: W = q, no scale); scale and offset hold R / block per row,
 * floats or halves (half_scales). Each kernel tap's Mg x Cg weights are dequantized into
 * `scratch` (MOA_CONV_QW_SCRATCH floats) before its GEMMs. MOA_ERR_BAD_PARAMS also for a type,
 * block or R the layout cannot hold; MOA_ERR_NULL_ARGUMENT also for no q, scale or scratch. */
#define MOA_CONV_QW_SCRATCH(p) (((p)->out_channels / (p)->groups) * ((p)->channels / (p)->groups))
moa_status moa_conv2d_qw_f32(const moa_conv2d_params *p, const float *x, moa_qweights w, const float *bias,
                             float *y, float *scratch);
moa_status moa_conv2d_qw_f32_on(moa_pool *pool, const moa_conv2d_params *p, const float *x, moa_qweights w,
                                const float *bias, float *y, float *scratch);

#endif
