/* Pooling over fp32 NC(D)(H)W tensors: ONNX MaxPool, AveragePool and LpPool (and their Global
 * forms, one window the size of the input), 1-, 2- or 3-D (scalar C99 reference kernel).
 *
 * x is planes (N x C) of in[0] x in[1] x in[2] elements (1 for an axis the tensor lacks); y is
 * planes of out[0] x out[1] x out[2]. Window element (k0, k1, k2) of output (o0, o1, o2) reads
 * input position o * stride - pad_begin + k * dilation on each axis; positions outside the
 * input are padding: ignored by MaxPool, zeros to the others. AveragePool divides by the number
 * of window positions inside the input, or, with count_include_pad, inside the input and its
 * pads (not a ceil_mode window's overhang past them). The caller owns both buffers. */
#ifndef MOA_POOLING_H
#define MOA_POOLING_H

#include <stddef.h>

#include "moa/status.h"

typedef enum { MOA_POOLING_MAX, MOA_POOLING_AVERAGE, MOA_POOLING_LP } moa_pooling_kind;

typedef struct {
    moa_pooling_kind kind;
    size_t planes;
    size_t in[3], out[3], kernel[3], stride[3], dilation[3], pad_begin[3], pad_end[3];
    int count_include_pad; /* AveragePool */
    float p;               /* LpPool's exponent */
} moa_pooling_params;

moa_status moa_pooling_f32(const moa_pooling_params *params, const float *x, float *y);

#endif
