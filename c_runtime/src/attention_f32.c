/* The portable reference of the attention micro-kernels (moa/attention.h): each loop reads
 * like its equation. Every ISA variant is tested against these. */
#include <float.h>
#include <math.h>

#include "moa/attention.h"
#include "moa/half.h"

void moa_attn_scores_f32_1x1_scalar(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                    ptrdiff_t ldq, const float *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    size_t r, c, j;
    for (r = 0; r < rows; r++) {
        for (c = 0; c < cols; c++) {
            const float *q_row = q + (ptrdiff_t)r * ldq, *k_row = k + (ptrdiff_t)c * ldk;
            float dot = 0.0f;
            for (j = 0; j < depth; j++) {
                dot += q_row[j] * k_row[j];
            }
            s[(ptrdiff_t)r * lds + (ptrdiff_t)c] = scale * dot;
        }
    }
}

void moa_attn_pv_f32_1x1_scalar(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                const float *v, ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    size_t r, c, e;
    for (r = 0; r < rows; r++) {
        float *acc_row = acc + (ptrdiff_t)r * lda;
        for (c = 0; c < cols; c++) {
            const float weight = p[(ptrdiff_t)r * ldp + (ptrdiff_t)c];
            const float *v_row = v + (ptrdiff_t)c * ldv;
            for (e = 0; e < dv; e++) {
                acc_row[e] += weight * v_row[e];
            }
        }
    }
}

float moa_attn_max_f32_u1_scalar(size_t n, const float *x)
{
    float m = -INFINITY;
    size_t c;
    for (c = 0; c < n; c++) {
        if (!(x[c] <= m)) { /* a NaN wins and stays */
            m = isnan(m) ? m : x[c];
        }
    }
    return m;
}

float moa_attn_exp_f32_u1_scalar(size_t n, float *x, float m)
{
    float sum = 0.0f;
    size_t c;
    for (c = 0; c < n; c++) {
        x[c] = moa_expf(x[c] - m);
        sum += x[c];
    }
    return sum;
}

void moa_attn_scale_f32_u1_scalar(size_t n, float alpha, const float *x, float *y)
{
    size_t c;
    for (c = 0; c < n; c++) {
        y[c] = alpha * x[c];
    }
}

void moa_vexp_f32_u1_scalar(size_t n, const float *x, float *y)
{
    size_t c;
    for (c = 0; c < n; c++) {
        y[c] = moa_expf(x[c]);
    }
}

void moa_attn_softmax_f32_1x1_scalar(size_t rows, size_t cols, float *s, ptrdiff_t lds, float *m, float *l,
                                     float *alpha)
{
    moa_attn_softmax_f32_composed(rows, cols, s, lds, m, l, alpha, moa_attn_max_f32_u1_scalar,
                                  moa_attn_exp_f32_u1_scalar);
}

/* --- over an int8 key/value cache: the same equations, each cached element k_scale[c] * k[c][j] --- */

void moa_attn_scores_f32_s8_1x1_scalar(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                       ptrdiff_t ldq, const int8_t *k, ptrdiff_t ldk, const float *k_scale,
                                       float *s, ptrdiff_t lds)
{
    size_t r, c, j;
    for (r = 0; r < rows; r++) {
        for (c = 0; c < cols; c++) {
            const float *q_row = q + (ptrdiff_t)r * ldq;
            const int8_t *k_row = k + (ptrdiff_t)c * ldk;
            float dot = 0.0f;
            for (j = 0; j < depth; j++) {
                dot += q_row[j] * (float)k_row[j];
            }
            s[(ptrdiff_t)r * lds + (ptrdiff_t)c] = (scale * k_scale[c]) * dot;
        }
    }
}

void moa_attn_pv_f32_s8_1x1_scalar(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                   const int8_t *v, ptrdiff_t ldv, const float *v_scale, float *acc, ptrdiff_t lda)
{
    size_t r, c, e;
    for (r = 0; r < rows; r++) {
        float *acc_row = acc + (ptrdiff_t)r * lda;
        for (c = 0; c < cols; c++) {
            const float weight = p[(ptrdiff_t)r * ldp + (ptrdiff_t)c] * v_scale[c];
            const int8_t *v_row = v + (ptrdiff_t)c * ldv;
            for (e = 0; e < dv; e++) {
                acc_row[e] += weight * (float)v_row[e];
            }
        }
    }
}

void moa_attn_quantize_s8(size_t n, const float *x, int8_t *q, float *scale)
{
    float largest = 0.0f, step;
    size_t j;
    for (j = 0; j < n; j++) {
        const float a = fabsf(x[j]);
        if (!(a <= largest)) { /* a NaN wins and stays */
            largest = isnan(largest) ? largest : a;
        }
    }
    step = largest / 127.0f;
    *scale = step;
    for (j = 0; j < n; j++) {
        float level = 0.0f;
        if (step > 0.0f && step <= FLT_MAX) { /* else all zero, or NaN/inf: the scale carries it */
            level = x[j] / step;
            level = level > 127.0f ? 127.0f : level < -127.0f ? -127.0f : level; /* x/step may round past 127 */
        }
        q[j] = (int8_t)lrintf(level);
    }
}

/* --- over a float16 key/value cache: the same equations, each cached element the half it holds --- */

void moa_attn_scores_f32_f16_1x1_scalar(size_t rows, size_t cols, size_t depth, float scale, const float *q,
                                        ptrdiff_t ldq, const uint16_t *k, ptrdiff_t ldk, float *s, ptrdiff_t lds)
{
    size_t r, c, j;
    for (r = 0; r < rows; r++) {
        for (c = 0; c < cols; c++) {
            const float *q_row = q + (ptrdiff_t)r * ldq;
            const uint16_t *k_row = k + (ptrdiff_t)c * ldk;
            float dot = 0.0f;
            for (j = 0; j < depth; j++) {
                dot += q_row[j] * moa_f16_to_f32(k_row[j]);
            }
            s[(ptrdiff_t)r * lds + (ptrdiff_t)c] = scale * dot;
        }
    }
}

void moa_attn_pv_f32_f16_1x1_scalar(size_t rows, size_t cols, size_t dv, const float *p, ptrdiff_t ldp,
                                    const uint16_t *v, ptrdiff_t ldv, float *acc, ptrdiff_t lda)
{
    size_t r, c, e;
    for (r = 0; r < rows; r++) {
        float *acc_row = acc + (ptrdiff_t)r * lda;
        for (c = 0; c < cols; c++) {
            const float weight = p[(ptrdiff_t)r * ldp + (ptrdiff_t)c];
            const uint16_t *v_row = v + (ptrdiff_t)c * ldv;
            for (e = 0; e < dv; e++) {
                acc_row[e] += weight * moa_f16_to_f32(v_row[e]);
            }
        }
    }
}

void moa_attn_round_f16(size_t n, const float *x, uint16_t *h)
{
    size_t j;
    for (j = 0; j < n; j++) {
        h[j] = moa_f32_to_f16(x[j]);
    }
}
