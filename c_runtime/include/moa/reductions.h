/* More reductions over fp32 tensors: ONNX ReduceMin, ReduceProd, ReduceLogSum(Exp), ArgMax and
 * ArgMin; LogSoftmax and Hardmax along an axis (scalar C99 reference kernels).
 *
 * As the reductions of normalization.h, x is seen as outer x n x inner with the reduced axis in
 * the middle: element (o, k, i) is x[(o * n + k) * inner + i], and y[o * inner + i] receives the
 * result. A reduction over several runs of axes is one call per run (a minimum of minima, a
 * product of products, a log-sum-exp of log-sum-exps); ReduceLogSum is moa_reduce_sum_f32's
 * passes, then moa_log_f32 on the result. The caller owns every buffer; nothing is allocated.
 * Each function returns MOA_OK, or MOA_ERR_NULL_ARGUMENT for a missing buffer. */
#ifndef MOA_REDUCTIONS_H
#define MOA_REDUCTIONS_H

#include <stddef.h>
#include <stdint.h>

#include "moa/status.h"

/* y = min_k x (NaN wins); over an empty axis, +inf. */
moa_status moa_reduce_min_f32(const float *x, float *y, size_t outer, size_t n, size_t inner);

/* y = prod_k x; over an empty axis, 1. */
moa_status moa_reduce_prod_f32(const float *x, float *y, size_t outer, size_t n, size_t inner);

/* y = log(sum_k exp(x)), as m + log(sum_k exp(x - m)) with m the maximum; over an empty axis, -inf. */
moa_status moa_reduce_logsumexp_f32(const float *x, float *y, size_t outer, size_t n, size_t inner);

/* y[j] = log(x[j]) for j < count; y may be x. */
moa_status moa_log_f32(const float *x, float *y, size_t count);

/* y = the index k of the largest (last_index == 0: first; else last) x along the axis (ArgMax),
 * or of the smallest (ArgMin, largest == 0). A NaN counts as the largest and the smallest. */
moa_status moa_arg_extreme_f32(const float *x, int64_t *y, size_t outer, size_t n, size_t inner, int largest,
                               int last_index);

/* Along the middle axis of outer x n x inner: y = x - max - log(sum_k exp(x - max)) (LogSoftmax),
 * and y = 1 at the first largest x, 0 elsewhere (Hardmax). y may be x. */
moa_status moa_log_softmax_f32(const float *x, float *y, size_t outer, size_t n, size_t inner);
moa_status moa_hardmax_f32(const float *x, float *y, size_t outer, size_t n, size_t inner);

#endif
