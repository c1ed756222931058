/* Scalar reference kernels for reductions.h: each loop reads like its equation, walking x in
 * storage order (k outside i) as normalization.c does. */
#include <math.h>

#include "moa/reductions.h"

/* y = init folded with every x along the axis, x visited in storage order (k outside i). */
static moa_status fold_axis(const float *x, float *y, size_t outer, size_t n, size_t inner, float init,
                            float (*fold)(float, float))
{
    size_t o, k, i;
    if (x == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (o = 0; o < outer; o++) {
        float *yo = y + o * inner;
        for (i = 0; i < inner; i++) {
            yo[i] = init;
        }
        for (k = 0; k < n; k++) {
            const float *xk = x + (o * n + k) * inner;
            for (i = 0; i < inner; i++) {
                yo[i] = fold(yo[i], xk[i]);
            }
        }
    }
    return MOA_OK;
}

static float smaller(float y, float x) { return (x < y || isnan(x)) ? x : y; } /* NaN wins, as in numpy */
static float product(float y, float x) { return y * x; }

moa_status moa_reduce_min_f32(const float *x, float *y, size_t outer, size_t n, size_t inner)
{
    return fold_axis(x, y, outer, n, inner, INFINITY, smaller);
}

moa_status moa_reduce_prod_f32(const float *x, float *y, size_t outer, size_t n, size_t inner)
{
    return fold_axis(x, y, outer, n, inner, 1.0f, product);
}

moa_status moa_reduce_logsumexp_f32(const float *x, float *y, size_t outer, size_t n, size_t inner)
{
    size_t o, k, i;
    if (x == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (o = 0; o < outer; o++) {
        for (i = 0; i < inner; i++) {
            float m = -INFINITY, sum = 0.0f;
            for (k = 0; k < n; k++) {
                const float v = x[(o * n + k) * inner + i];
                m = (v > m || isnan(v)) ? v : m;
            }
            if (isinf(m) || isnan(m)) { /* all -inf (or empty): -inf; a +inf or a NaN: itself */
                y[o * inner + i] = m;
                continue;
            }
            for (k = 0; k < n; k++) {
                sum += expf(x[(o * n + k) * inner + i] - m);
            }
            y[o * inner + i] = m + logf(sum);
        }
    }
    return MOA_OK;
}

moa_status moa_log_f32(const float *x, float *y, size_t count)
{
    size_t j;
    if (x == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (j = 0; j < count; j++) {
        y[j] = logf(x[j]);
    }
    return MOA_OK;
}

moa_status moa_arg_extreme_f32(const float *x, int64_t *y, size_t outer, size_t n, size_t inner, int largest,
                               int last_index)
{
    size_t o, k, i;
    if (x == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (o = 0; o < outer; o++) {
        for (i = 0; i < inner; i++) {
            size_t best = 0;
            for (k = 1; k < n; k++) {
                const float v = x[(o * n + k) * inner + i], b = x[(o * n + best) * inner + i];
                const int better = isnan(b) ? 0 : isnan(v) ? 1 : largest ? v > b : v < b;
                const int tie = !isnan(b) && !isnan(v) && v == b;
                if (better || (last_index && tie)) {
                    best = k;
                }
            }
            y[o * inner + i] = (int64_t)best;
        }
    }
    return MOA_OK;
}

moa_status moa_log_softmax_f32(const float *x, float *y, size_t outer, size_t n, size_t inner)
{
    size_t o, i, k;
    if (x == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (o = 0; o < outer; o++) {
        for (i = 0; i < inner; i++) {
            const float *xr = x + o * n * inner + i; /* the row: xr[k * inner], k < n */
            float *yr = y + o * n * inner + i;
            float max = -INFINITY, sum = 0.0f, shift;
            for (k = 0; k < n; k++) {
                max = xr[k * inner] > max ? xr[k * inner] : max;
            }
            for (k = 0; k < n; k++) {
                sum += expf(xr[k * inner] - max);
            }
            shift = max + logf(sum); /* every read of the row is done: y may be x */
            for (k = 0; k < n; k++) {
                yr[k * inner] = xr[k * inner] - shift;
            }
        }
    }
    return MOA_OK;
}

moa_status moa_hardmax_f32(const float *x, float *y, size_t outer, size_t n, size_t inner)
{
    size_t o, i, k;
    if (x == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (o = 0; o < outer; o++) {
        for (i = 0; i < inner; i++) {
            const float *xr = x + o * n * inner + i;
            float *yr = y + o * n * inner + i;
            size_t best = 0;
            for (k = 1; k < n; k++) {
                best = xr[k * inner] > xr[best * inner] ? k : best; /* the first of equal maxima */
            }
            for (k = 0; k < n; k++) {
                yr[k * inner] = k == best ? 1.0f : 0.0f;
            }
        }
    }
    return MOA_OK;
}
