/* Scalar reference kernels for normalization.h: each loop reads like its equation. */
#include <math.h>

#include "moa/normalization.h"

moa_status moa_layer_norm_f32(const float *x, const float *scale, const float *bias, float *y,
                              float *mean, float *inv_std_dev, size_t rows, size_t cols, float epsilon)
{
    size_t r, c;
    if (x == NULL || scale == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float sum = 0.0f, squares = 0.0f, mu, inv;
        for (c = 0; c < cols; c++) {
            sum += xr[c];
        }
        mu = sum / (float)cols;
        /* Two passes: the variance sums squares about the mean, so a large mean does not
         * cancel the digits of a small spread (E[x^2] - E[x]^2 would). */
        for (c = 0; c < cols; c++) {
            const float d = xr[c] - mu;
            squares += d * d;
        }
        inv = 1.0f / sqrtf(squares / (float)cols + epsilon);
        for (c = 0; c < cols; c++) {
            yr[c] = (xr[c] - mu) * inv * scale[c] + (bias != NULL ? bias[c] : 0.0f);
        }
        if (mean != NULL) {
            mean[r] = mu;
        }
        if (inv_std_dev != NULL) {
            inv_std_dev[r] = inv;
        }
    }
    return MOA_OK;
}

moa_status moa_rms_norm_f32(const float *x, const float *scale, float *y, size_t rows, size_t cols,
                            float epsilon)
{
    size_t r, c;
    if (x == NULL || scale == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float squares = 0.0f, inv;
        for (c = 0; c < cols; c++) {
            squares += xr[c] * xr[c];
        }
        inv = 1.0f / sqrtf(squares / (float)cols + epsilon);
        for (c = 0; c < cols; c++) {
            yr[c] = xr[c] * inv * scale[c];
        }
    }
    return MOA_OK;
}

moa_status moa_softmax_f32(const float *x, float *y, size_t outer, size_t n, size_t inner)
{
    size_t o, i, k;
    if (x == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    if (n == 0) {
        return MOA_OK;
    }
    for (o = 0; o < outer; o++) {
        for (i = 0; i < inner; i++) {
            const float *xr = x + o * n * inner + i; /* the row: xr[k * inner], k < n */
            float *yr = y + o * n * inner + i;
            float max = xr[0], sum = 0.0f;
            for (k = 1; k < n; k++) {
                if (xr[k * inner] > max) {
                    max = xr[k * inner];
                }
            }
            /* All -inf: -inf - -inf is NaN, so the row is NaN, as in onnxruntime. */
            for (k = 0; k < n; k++) {
                yr[k * inner] = expf(xr[k * inner] - max);
                sum += yr[k * inner];
            }
            for (k = 0; k < n; k++) {
                yr[k * inner] /= sum;
            }
        }
    }
    return MOA_OK;
}

/* The reductions accumulate in y, walking x in storage order (k outside i). */

moa_status moa_reduce_sum_f32(const float *x, float *y, size_t outer, size_t n, size_t inner)
{
    size_t o, k, i;
    if (x == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (o = 0; o < outer; o++) {
        float *yo = y + o * inner;
        for (i = 0; i < inner; i++) {
            yo[i] = 0.0f;
        }
        for (k = 0; k < n; k++) {
            const float *xk = x + (o * n + k) * inner;
            for (i = 0; i < inner; i++) {
                yo[i] += xk[i];
            }
        }
    }
    return MOA_OK;
}

moa_status moa_reduce_mean_f32(const float *x, float *y, size_t outer, size_t n, size_t inner)
{
    size_t j;
    const moa_status status = moa_reduce_sum_f32(x, y, outer, n, inner);
    if (status != MOA_OK) {
        return status;
    }
    for (j = 0; j < outer * inner; j++) {
        y[j] /= (float)n; /* n == 0: 0 / 0, NaN */
    }
    return MOA_OK;
}

moa_status moa_reduce_max_f32(const float *x, float *y, size_t outer, size_t n, size_t inner)
{
    size_t o, k, i;
    if (x == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (o = 0; o < outer; o++) {
        float *yo = y + o * inner;
        for (i = 0; i < inner; i++) {
            yo[i] = -INFINITY;
        }
        for (k = 0; k < n; k++) {
            const float *xk = x + (o * n + k) * inner;
            for (i = 0; i < inner; i++) {
                if (xk[i] > yo[i] || isnan(xk[i])) { /* NaN wins, as in numpy and torch */
                    yo[i] = xk[i];
                }
            }
        }
    }
    return MOA_OK;
}
