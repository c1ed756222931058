/* Portable scalar attention with online softmax: one pass over the keys per query row.
 *
 * For query row i the running maximum m, normaliser l and output accumulator acc obey
 *   m' = max(m, s_j),  l' = l * e^(m - m') + e^(s_j - m'),  acc' = acc * e^(m - m') + e^(s_j - m') * V_j
 * and the row's output is acc / l. Scratch is one value row (value_dim floats).
 */
#include <math.h>

#include "moa/attention.h"

static int64_t gamma4(const moa_access *a, int64_t i0, int64_t i1, int64_t i2, int64_t i3)
{
    return a->offset + i0 * a->stride[0] + i1 * a->stride[1] + i2 * a->stride[2] + i3 * a->stride[3];
}

size_t moa_attention_f32_scratch_bytes(const moa_attention_params *p)
{
    return (size_t)p->value_dim * sizeof(float);
}

/* Bias of entry (b, h, i, j); -INFINITY means the key is hidden. */
static float bias_at(const moa_attention_params *p, const void *mask, int32_t b, int32_t h, int32_t i, int32_t j)
{
    if (p->is_causal && j > i) {
        return -INFINITY;
    }
    if (p->mask_kind == MOA_MASK_FLOAT) {
        return ((const float *)mask)[gamma4(&p->mask, b, h, i, j)];
    }
    if (p->mask_kind == MOA_MASK_BOOL) {
        return ((const uint8_t *)mask)[gamma4(&p->mask, b, h, i, j)] ? 0.0f : p->mask_fill;
    }
    return 0.0f;
}

static void attend_row(const moa_attention_params *p, const float *q, const float *k, const float *v,
                       const void *mask, float *out, float *acc, int32_t b, int32_t h, int32_t i)
{
    const int32_t kv_head = h / (p->q_heads / p->kv_heads);
    const int64_t dq = p->q.stride[3], dk = p->k.stride[3], dv = p->v.stride[3], dout = p->out.stride[3];
    const float *q_row = q + gamma4(&p->q, b, h, i, 0);
    float m = -INFINITY, l = 0.0f;
    int32_t d, j;

    for (d = 0; d < p->value_dim; d++) {
        acc[d] = 0.0f;
    }
    for (j = 0; j < p->kv_len; j++) {
        const float bias = bias_at(p, mask, b, h, i, j);
        const float *k_row = k + gamma4(&p->k, b, kv_head, j, 0);
        const float *v_row = v + gamma4(&p->v, b, kv_head, j, 0);
        float s = 0.0f, weight;
        if (bias == -INFINITY) {
            continue; /* contributes e^-inf = 0 */
        }
        for (d = 0; d < p->head_dim; d++) {
            s += q_row[d * dq] * k_row[d * dk];
        }
        s = s * p->scale + bias;
        if (s > m) {
            const float rescale = expf(m - s); /* 0 on the first key: m = -inf */
            l *= rescale;
            for (d = 0; d < p->value_dim; d++) {
                acc[d] *= rescale;
            }
            m = s;
        }
        weight = expf(s - m);
        l += weight;
        for (d = 0; d < p->value_dim; d++) {
            acc[d] += weight * v_row[d * dv];
        }
    }
    {
        /* A row with every key hidden has l = 0 and gives 0 (ONNX 1.23 semantics). */
        const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
        float *out_row = out + gamma4(&p->out, b, h, i, 0);
        for (d = 0; d < p->value_dim; d++) {
            out_row[d * dout] = acc[d] * inv_l;
        }
    }
}

moa_status moa_attention_f32(const moa_attention_params *p, const float *q, const float *k, const float *v,
                             const void *mask, float *out, float *scratch)
{
    int32_t b, h, i;
    if (!p || !q || !k || !v || !out || !scratch || (p->mask_kind != MOA_MASK_NONE && !mask)) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    if (p->kv_heads <= 0 || p->q_heads % p->kv_heads != 0) {
        return MOA_ERR_BAD_PARAMS;
    }
    for (b = 0; b < p->batch; b++) {
        for (h = 0; h < p->q_heads; h++) {
            for (i = 0; i < p->q_len; i++) {
                attend_row(p, q, k, v, mask, out, scratch, b, h, i);
            }
        }
    }
    return MOA_OK;
}
