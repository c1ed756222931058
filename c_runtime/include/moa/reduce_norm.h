/* The norm reductions over fp32 tensors: ONNX ReduceSumSquare, ReduceL1 and ReduceL2
 * (scalar C99 reference kernels).
 *
 * As the reductions of normalization.h, x is seen as outer x n x inner with the reduced
 * axis in the middle: element (o, k, i) is x[(o * n + k) * inner + i], and y[o * inner + i]
 * receives the result. A reduction over several runs of axes is a first pass of one of
 * these, further passes of moa_reduce_sum_f32, and, for L2, moa_sqrt_f32 on the result.
 * The caller owns every buffer; nothing is allocated and nothing is kept between calls.
 * Each function returns MOA_OK, or MOA_ERR_NULL_ARGUMENT for a missing buffer. */
#ifndef MOA_REDUCE_NORM_H
#define MOA_REDUCE_NORM_H

#include <stddef.h>

#include "moa/status.h"

/* y = sum_k x^2 (ReduceSumSquare); over an empty axis (n == 0), 0. */
moa_status moa_reduce_sum_square_f32(const float *x, float *y, size_t outer, size_t n, size_t inner);

/* y = sum_k |x| (ReduceL1); over an empty axis, 0. */
moa_status moa_reduce_l1_f32(const float *x, float *y, size_t outer, size_t n, size_t inner);

/* y = sqrt(sum_k x^2) (ReduceL2); over an empty axis, 0. */
moa_status moa_reduce_l2_f32(const float *x, float *y, size_t outer, size_t n, size_t inner);

/* y[j] = sqrt(x[j]) for j < count; y may be x. */
moa_status moa_sqrt_f32(const float *x, float *y, size_t count);

#endif
