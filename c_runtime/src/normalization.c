/* Scalar reference kernels for normalization.h: each loop reads like its equation.
 *
 * The row loops of the norms run in blocks of MOA_NORM_LANES elements so that gcc -O2 and
 * clang vectorise them on every ISA without intrinsics: a row sum keeps one partial sum per
 * lane (a serial float sum is neither vectorised nor reordered without -ffast-math), and a
 * block's results go through a local array before they are stored, so y may be x (in
 * place) and no alias check is needed. The last cols % MOA_NORM_LANES elements run one at
 * a time. */
#include <math.h>

#include "moa/normalization.h"

#define MOA_NORM_LANES 16

/* sum of x[c] (centre = 0) or of (x[c] - centre)^2 (squares = 1) over one row */
static float row_sum(const float *x, size_t cols, float centre, int squares)
{
    float lane[MOA_NORM_LANES] = {0.0f}, sum = 0.0f;
    size_t c = 0, j;
    for (; c + MOA_NORM_LANES <= cols; c += MOA_NORM_LANES) {
        if (squares) {
            for (j = 0; j < MOA_NORM_LANES; j++) {
                const float d = x[c + j] - centre;
                lane[j] += d * d;
            }
        } else {
            for (j = 0; j < MOA_NORM_LANES; j++) {
                lane[j] += x[c + j];
            }
        }
    }
    for (; c < cols; c++) {
        const float d = x[c] - centre;
        sum += squares ? d * d : x[c];
    }
    for (j = 0; j < MOA_NORM_LANES; j++) {
        sum += lane[j];
    }
    return sum;
}

/* y[c] = (x[c] - centre) * inv * scale[c] + (bias ? bias[c] : 0) over one row */
static void row_affine(const float *x, float centre, float inv, const float *scale, const float *bias,
                       float *y, size_t cols)
{
    float block[MOA_NORM_LANES];
    size_t c = 0, j;
    for (; c + MOA_NORM_LANES <= cols; c += MOA_NORM_LANES) {
        if (bias != NULL) {
            for (j = 0; j < MOA_NORM_LANES; j++) {
                block[j] = (x[c + j] - centre) * inv * scale[c + j] + bias[c + j];
            }
        } else {
            for (j = 0; j < MOA_NORM_LANES; j++) {
                block[j] = (x[c + j] - centre) * inv * scale[c + j];
            }
        }
        for (j = 0; j < MOA_NORM_LANES; j++) {
            y[c + j] = block[j];
        }
    }
    for (; c < cols; c++) {
        y[c] = (x[c] - centre) * inv * scale[c] + (bias != NULL ? bias[c] : 0.0f);
    }
}

moa_status moa_layer_norm_f32(const float *x, const float *scale, const float *bias, float *y,
                              float *mean, float *inv_std_dev, size_t rows, size_t cols, float epsilon)
{
    size_t r;
    if (x == NULL || scale == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        const float mu = row_sum(xr, cols, 0.0f, 0) / (float)cols;
        /* Two passes: the variance sums squares about the mean, so a large mean does not
         * cancel the digits of a small spread (E[x^2] - E[x]^2 would). */
        const float inv = 1.0f / sqrtf(row_sum(xr, cols, mu, 1) / (float)cols + epsilon);
        row_affine(xr, mu, inv, scale, bias, y + r * cols, cols);
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
    size_t r;
    if (x == NULL || scale == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        const float inv = 1.0f / sqrtf(row_sum(xr, cols, 0.0f, 1) / (float)cols + epsilon);
        row_affine(xr, 0.0f, inv, scale, NULL, y + r * cols, cols);
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

/* Rows lifted onto the pool: each thread runs the kernel above on its own rows. */
typedef struct {
    const float *x, *scale, *bias;
    float *y, *mean, *inv_std_dev;
    size_t cols, inner; /* a norm's row length; softmax: n and inner */
    float epsilon;
    enum { LAYER_NORM, RMS_NORM, SOFTMAX } op;
} rows_job;

static void rows_task(void *ctx, size_t first, size_t end, size_t thread)
{
    const rows_job *job = (const rows_job *)ctx;
    const size_t at = first * job->cols * (job->op == SOFTMAX ? job->inner : 1);
    (void)thread;
    /* The pointers were checked by the caller: the kernels cannot fail here. */
    switch (job->op) {
    case LAYER_NORM:
        (void)moa_layer_norm_f32(job->x + at, job->scale, job->bias, job->y + at,
                                 job->mean != NULL ? job->mean + first : NULL,
                                 job->inv_std_dev != NULL ? job->inv_std_dev + first : NULL, end - first, job->cols,
                                 job->epsilon);
        break;
    case RMS_NORM:
        (void)moa_rms_norm_f32(job->x + at, job->scale, job->y + at, end - first, job->cols, job->epsilon);
        break;
    case SOFTMAX:
        (void)moa_softmax_f32(job->x + at, job->y + at, end - first, job->cols, job->inner);
        break;
    }
}

static int worth_lifting(const moa_pool *pool, size_t items, size_t elements)
{
    return moa_pool_threads(pool) > 1 && items > 1 && elements >= MOA_NORM_LIFT_ELEMENTS;
}

moa_status moa_layer_norm_f32_on(moa_pool *pool, const float *x, const float *scale, const float *bias, float *y,
                                 float *mean, float *inv_std_dev, size_t rows, size_t cols, float epsilon)
{
    rows_job job = {0};
    if (x == NULL || scale == NULL || y == NULL || !worth_lifting(pool, rows, rows * cols)) {
        return moa_layer_norm_f32(x, scale, bias, y, mean, inv_std_dev, rows, cols, epsilon);
    }
    job.x = x, job.scale = scale, job.bias = bias, job.y = y, job.mean = mean, job.inv_std_dev = inv_std_dev;
    job.cols = cols, job.epsilon = epsilon, job.op = LAYER_NORM;
    moa_pool_for(pool, rows, rows_task, &job);
    return MOA_OK;
}

moa_status moa_rms_norm_f32_on(moa_pool *pool, const float *x, const float *scale, float *y, size_t rows,
                               size_t cols, float epsilon)
{
    rows_job job = {0};
    if (x == NULL || scale == NULL || y == NULL || !worth_lifting(pool, rows, rows * cols)) {
        return moa_rms_norm_f32(x, scale, y, rows, cols, epsilon);
    }
    job.x = x, job.scale = scale, job.y = y, job.cols = cols, job.epsilon = epsilon, job.op = RMS_NORM;
    moa_pool_for(pool, rows, rows_task, &job);
    return MOA_OK;
}

moa_status moa_softmax_f32_on(moa_pool *pool, const float *x, float *y, size_t outer, size_t n, size_t inner)
{
    rows_job job = {0};
    if (x == NULL || y == NULL || n == 0 || !worth_lifting(pool, outer, outer * n * inner)) {
        return moa_softmax_f32(x, y, outer, n, inner);
    }
    job.x = x, job.y = y, job.cols = n, job.inner = inner, job.op = SOFTMAX;
    moa_pool_for(pool, outer, rows_task, &job);
    return MOA_OK;
}

/* The reductions walk x in storage order (k outside i), MOA_NORM_LANES outputs at a time in
 * a local block (vectorised; each output still sums its n terms in order k = 0, 1, ...). */

moa_status moa_reduce_sum_f32(const float *x, float *y, size_t outer, size_t n, size_t inner)
{
    size_t o, k, i, j;
    if (x == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (o = 0; o < outer; o++) {
        const float *xo = x + o * n * inner;
        float *yo = y + o * inner;
        for (i = 0; i + MOA_NORM_LANES <= inner; i += MOA_NORM_LANES) {
            float block[MOA_NORM_LANES] = {0.0f};
            for (k = 0; k < n; k++) {
                for (j = 0; j < MOA_NORM_LANES; j++) {
                    block[j] += xo[k * inner + i + j];
                }
            }
            for (j = 0; j < MOA_NORM_LANES; j++) {
                yo[i + j] = block[j];
            }
        }
        for (; i < inner; i++) {
            float sum = 0.0f;
            for (k = 0; k < n; k++) {
                sum += xo[k * inner + i];
            }
            yo[i] = sum;
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
