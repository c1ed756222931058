/* The scalar reference kernel of recurrent.h: each batch row of each direction steps through
 * time, its gates computed by the ONNX spec's equations (written above each step function).
 * Xt is the step's input row, Ht-1 and Ct-1 the state before the step; * is a product with a
 * matrix, (.) an element-wise product; the spec clips each activation's input. */
#include <math.h>

#include "moa/recurrent.h"

/* One direction's weights (rows of all gates, in the cell's gate order) and activations. */
typedef struct {
    const float *w, *r, *wb, *rb, *p; /* wb, rb and p may be NULL: zeros */
    moa_activation f, g, h;
} direction;

static float activate(moa_activation a, float x)
{
    switch (a.kind) {
    case MOA_ACTIVATION_RELU:
        return x > 0.0f ? x : 0.0f;
    case MOA_ACTIVATION_TANH:
        return tanhf(x);
    case MOA_ACTIVATION_SIGMOID:
        return 1.0f / (1.0f + expf(-x));
    case MOA_ACTIVATION_AFFINE:
        return a.alpha * x + a.beta;
    case MOA_ACTIVATION_LEAKY_RELU:
        return x >= 0.0f ? x : a.alpha * x;
    case MOA_ACTIVATION_THRESHOLDED_RELU:
        return x >= a.alpha ? x : 0.0f;
    case MOA_ACTIVATION_SCALED_TANH:
        return a.alpha * tanhf(a.beta * x);
    case MOA_ACTIVATION_HARD_SIGMOID:
        return fminf(fmaxf(a.alpha * x + a.beta, 0.0f), 1.0f);
    case MOA_ACTIVATION_ELU:
        return x >= 0.0f ? x : a.alpha * (expf(x) - 1.0f);
    case MOA_ACTIVATION_SOFTSIGN:
        return x / (1.0f + fabsf(x));
    case MOA_ACTIVATION_SOFTPLUS:
        return x > 20.0f ? x : log1pf(expf(x)); /* past 20, log(1 + e^x) is x in float32 */
    }
    return x;
}

/* a(clip(x)): a NaN stays NaN (both comparisons are false) */
static float gate(const moa_recurrent_params *q, moa_activation a, float x)
{
    if (q->clipped) {
        x = x > q->clip ? q->clip : (x < -q->clip ? -q->clip : x);
    }
    return activate(a, x);
}

/* out[k] = (add ? out[k] : 0) + bias[k] + m[k] . v for rows k of the row-major rows x cols m */
static void affine(float *out, const float *m, const float *bias, const float *v, size_t rows, size_t cols, int add)
{
    size_t k, j;
    for (k = 0; k < rows; k++) {
        float sum = add ? out[k] : 0.0f;
        if (bias) {
            sum += bias[k];
        }
        for (j = 0; j < cols; j++) {
            sum += m[k * cols + j] * v[j];
        }
        out[k] = sum;
    }
}

/* Ht = f(Xt*(Wi^T) + Ht-1*(Ri^T) + Wbi + Rbi) */
static void rnn_step(const moa_recurrent_params *q, const direction *d, const float *x, float *h, float *gates)
{
    const size_t hidden = q->hidden_size;
    size_t j;
    affine(gates, d->w, d->wb, x, hidden, q->input_size, 0);
    affine(gates, d->r, d->rb, h, hidden, hidden, 1);
    for (j = 0; j < hidden; j++) {
        h[j] = gate(q, d->f, gates[j]);
    }
}

/* zt = f(Xt*(Wz^T) + Ht-1*(Rz^T) + Wbz + Rbz)
 * rt = f(Xt*(Wr^T) + Ht-1*(Rr^T) + Wbr + Rbr)
 * ht = g(Xt*(Wh^T) + (rt (.) Ht-1)*(Rh^T) + Rbh + Wbh)      linear_before_reset = 0
 * ht = g(Xt*(Wh^T) + (rt (.) (Ht-1*(Rh^T) + Rbh)) + Wbh)   linear_before_reset != 0
 * Ht = (1 - zt) (.) ht + zt (.) Ht-1 */
static void gru_step(const moa_recurrent_params *q, const direction *d, const float *x, float *h, float *gates,
                     float *extra)
{
    const size_t hidden = q->hidden_size;
    float *z = gates, *r = gates + hidden, *hh = gates + 2 * hidden;
    const float *rh = d->r + 2 * hidden * hidden, *rbh = d->rb ? d->rb + 2 * hidden : NULL;
    size_t j;
    affine(gates, d->w, d->wb, x, 3 * hidden, q->input_size, 0); /* Xt*(W^T) + Wb of z, r and h */
    affine(gates, d->r, d->rb, h, 2 * hidden, hidden, 1);         /* + Ht-1*(R^T) + Rb of z and r */
    for (j = 0; j < 2 * hidden; j++) {
        gates[j] = gate(q, d->f, gates[j]);                        /* zt and rt */
    }
    if (q->linear_before_reset) {
        affine(extra, rh, rbh, h, hidden, hidden, 0);              /* Ht-1*(Rh^T) + Rbh */
        for (j = 0; j < hidden; j++) {
            hh[j] += r[j] * extra[j];
        }
    } else {
        for (j = 0; j < hidden; j++) {
            extra[j] = r[j] * h[j];                                /* rt (.) Ht-1 */
        }
        affine(hh, rh, rbh, extra, hidden, hidden, 1);
    }
    for (j = 0; j < hidden; j++) {
        const float candidate = gate(q, d->g, hh[j]);
        h[j] = (1.0f - z[j]) * candidate + z[j] * h[j];
    }
}

/* it = f(Xt*(Wi^T) + Ht-1*(Ri^T) + Pi (.) Ct-1 + Wbi + Rbi)
 * ft = f(Xt*(Wf^T) + Ht-1*(Rf^T) + Pf (.) Ct-1 + Wbf + Rbf)   (input_forget: ft = 1 - it)
 * ct = g(Xt*(Wc^T) + Ht-1*(Rc^T) + Wbc + Rbc)
 * Ct = ft (.) Ct-1 + it (.) ct
 * ot = f(Xt*(Wo^T) + Ht-1*(Ro^T) + Po (.) Ct + Wbo + Rbo)
 * Ht = ot (.) h(Ct)
 * Every gate's input is computed from Ht-1 before any Ht is written, so H updates in place. */
static void lstm_step(const moa_recurrent_params *q, const direction *d, const float *x, float *h, float *c,
                      float *gates)
{
    const size_t hidden = q->hidden_size;
    const float *in = gates, *out = gates + hidden, *forget = gates + 2 * hidden, *cell = gates + 3 * hidden;
    size_t j;
    affine(gates, d->w, d->wb, x, 4 * hidden, q->input_size, 0);
    affine(gates, d->r, d->rb, h, 4 * hidden, hidden, 1);
    for (j = 0; j < hidden; j++) {
        const float pi = d->p ? d->p[j] : 0.0f, po = d->p ? d->p[hidden + j] : 0.0f,
                    pf = d->p ? d->p[2 * hidden + j] : 0.0f;
        const float it = gate(q, d->f, in[j] + pi * c[j]);
        const float ft = q->input_forget ? 1.0f - it : gate(q, d->f, forget[j] + pf * c[j]);
        const float ct = gate(q, d->g, cell[j]);
        float ot;
        c[j] = ft * c[j] + it * ct;
        ot = gate(q, d->f, out[j] + po * c[j]);
        h[j] = ot * activate(d->h, c[j]);
    }
}

static void copy(float *to, const float *from, size_t n)
{
    size_t j;
    for (j = 0; j < n; j++) {
        to[j] = from ? from[j] : 0.0f;
    }
}

moa_status moa_recurrent_f32(const moa_recurrent_params *params, const moa_recurrent_tensors *t, float *scratch)
{
    const moa_recurrent_params *q = params;
    size_t gates, hidden, steps, batch, dirs, dir, n, s;
    if (q == NULL || t == NULL || t->x == NULL || t->w == NULL || t->r == NULL || scratch == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    gates = q->cell == MOA_RECURRENT_RNN ? 1 : q->cell == MOA_RECURRENT_GRU ? 3 : 4;
    hidden = q->hidden_size, steps = q->steps, batch = q->batch, dirs = q->directions;
    if (dirs < 1 || dirs > 2 || (dirs == 2 && q->reverse)) {
        return MOA_ERR_BAD_PARAMS;
    }
    for (dir = 0; dir < dirs; dir++) {
        const size_t rows = gates * hidden;
        const int backwards = dir == 1 || q->reverse;
        direction d;
        d.w = t->w + dir * rows * q->input_size;
        d.r = t->r + dir * rows * hidden;
        d.wb = t->b ? t->b + dir * 2 * rows : NULL;
        d.rb = t->b ? d.wb + rows : NULL;
        d.p = t->p ? t->p + dir * 3 * hidden : NULL;
        d.f = q->f[dir], d.g = q->g[dir], d.h = q->h[dir];
        for (n = 0; n < batch; n++) {
            float *h = scratch, *c = h + hidden, *gate_values = c + hidden, *extra = gate_values + rows;
            const size_t state = (q->layout ? n * dirs + dir : dir * batch + n) * hidden;
            copy(h, t->initial_h ? t->initial_h + state : NULL, hidden);
            copy(c, t->initial_c ? t->initial_c + state : NULL, hidden);
            for (s = 0; s < steps; s++) {
                const size_t step = backwards ? steps - 1 - s : s;
                const float *x = t->x + (q->layout ? n * steps + step : step * batch + n) * q->input_size;
                if (q->cell == MOA_RECURRENT_RNN) {
                    rnn_step(q, &d, x, h, gate_values);
                } else if (q->cell == MOA_RECURRENT_GRU) {
                    gru_step(q, &d, x, h, gate_values, extra);
                } else {
                    lstm_step(q, &d, x, h, c, gate_values);
                }
                if (t->y) {
                    copy(t->y + (q->layout ? (n * steps + step) * dirs + dir : (step * dirs + dir) * batch + n) * hidden,
                         h, hidden);
                }
            }
            if (t->y_h) {
                copy(t->y_h + state, h, hidden);
            }
            if (t->y_c) {
                copy(t->y_c + state, c, hidden);
            }
        }
    }
    return MOA_OK;
}
