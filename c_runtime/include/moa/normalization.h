/* Normalisation, softmax and reductions over fp32 tensors (scalar C99 reference kernels).
 *
 * Layouts are row-major and described by sizes, never by shapes:
 *   - the norms see x as rows x cols, each row contiguous; scale and bias have cols elements;
 *   - softmax and the reductions see x as outer x n x inner, the axis in the middle: element
 *     (o, k, i) is x[(o * n + k) * inner + i]; the reductions write y[o * inner + i].
 * The caller owns every buffer; nothing is allocated and nothing is kept between calls.
 * Each function returns MOA_OK, or MOA_ERR_NULL_ARGUMENT for a missing required buffer. */
#ifndef MOA_NORMALIZATION_H
#define MOA_NORMALIZATION_H

#include <stddef.h>

#include "moa/pool.h"
#include "moa/status.h"

/* ONNX LayerNormalization: y = (x - mean) / sqrt(var + epsilon) * scale + bias per row.
 * bias may be NULL (no bias); mean and inv_std_dev (rows elements each) may be NULL, or
 * receive the row statistics as ONNX's optional second and third outputs. */
moa_status moa_layer_norm_f32(const float *x, const float *scale, const float *bias, float *y,
                              float *mean, float *inv_std_dev, size_t rows, size_t cols, float epsilon);

/* ONNX RMSNormalization (opset 23): y = x / sqrt(mean(x^2) + epsilon) * scale per row. */
moa_status moa_rms_norm_f32(const float *x, const float *scale, float *y, size_t rows, size_t cols,
                            float epsilon);

/* ONNX Softmax (opset 13) along the middle axis of outer x n x inner. The row maximum is
 * subtracted first; a row of all -inf gives NaN, as onnxruntime does. */
moa_status moa_softmax_f32(const float *x, float *y, size_t outer, size_t n, size_t inner);

/* The same, their rows (softmax: its outer index) lifted onto the pool's threads, each row
 * computed as above whichever thread runs it; fewer than MOA_NORM_LIFT_ELEMENTS elements run on
 * the caller's thread (waking the workers would cost more). */
#define MOA_NORM_LIFT_ELEMENTS 32768u
moa_status moa_layer_norm_f32_on(moa_pool *pool, const float *x, const float *scale, const float *bias, float *y,
                                 float *mean, float *inv_std_dev, size_t rows, size_t cols, float epsilon);
moa_status moa_rms_norm_f32_on(moa_pool *pool, const float *x, const float *scale, float *y, size_t rows,
                               size_t cols, float epsilon);
moa_status moa_softmax_f32_on(moa_pool *pool, const float *x, float *y, size_t outer, size_t n, size_t inner);

/* ONNX ReduceSum / ReduceMean / ReduceMax over the middle axis of outer x n x inner into
 * outer x inner. Over an empty axis (n == 0): sum 0, mean NaN, max -inf. Max propagates NaN. */
moa_status moa_reduce_sum_f32(const float *x, float *y, size_t outer, size_t n, size_t inner);
moa_status moa_reduce_mean_f32(const float *x, float *y, size_t outer, size_t n, size_t inner);
moa_status moa_reduce_max_f32(const float *x, float *y, size_t outer, size_t n, size_t inner);

#endif
