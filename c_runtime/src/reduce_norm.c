/* Scalar reference kernels for reduce_norm.h: each loop reads like its equation. They
 * accumulate in y, walking x in storage order (k outside i), as normalization.c does. */
#include <math.h>

#include "moa/reduce_norm.h"

moa_status moa_reduce_sum_square_f32(const float *x, float *y, size_t outer, size_t n, size_t inner)
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
                yo[i] += xk[i] * xk[i];
            }
        }
    }
    return MOA_OK;
}

moa_status moa_reduce_l1_f32(const float *x, float *y, size_t outer, size_t n, size_t inner)
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
                yo[i] += fabsf(xk[i]);
            }
        }
    }
    return MOA_OK;
}

moa_status moa_sqrt_f32(const float *x, float *y, size_t count)
{
    size_t j;
    if (x == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    for (j = 0; j < count; j++) {
        y[j] = sqrtf(x[j]);
    }
    return MOA_OK;
}

moa_status moa_reduce_l2_f32(const float *x, float *y, size_t outer, size_t n, size_t inner)
{
    const moa_status status = moa_reduce_sum_square_f32(x, y, outer, n, inner);
    if (status != MOA_OK) {
        return status;
    }
    return moa_sqrt_f32(y, y, outer * inner);
}
