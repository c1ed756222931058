/* Attention kernels: Y = softmax(scale * Q K^T + bias) V, per (batch, head).
 *
 * Every operand is read through an access map (gamma): the element at index
 * (b, h, s, d) lives at base[offset + b*stride[0] + h*stride[1] + s*stride[2] + d*stride[3]],
 * so transposed or head-interleaved operands are read in place, never copied.
 * No Sq x Skv score matrix exists: the caller gives value_dim floats of scratch.
 */
#ifndef MOA_ATTENTION_H
#define MOA_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "moa/status.h"

typedef struct {
    int64_t offset;
    int64_t stride[4];
} moa_access;

typedef enum { MOA_MASK_NONE = 0, MOA_MASK_FLOAT = 1, MOA_MASK_BOOL = 2 } moa_mask_kind;

typedef struct {
    int32_t batch, q_heads, kv_heads, q_len, kv_len, head_dim, value_dim;
    float scale;
    int32_t is_causal;     /* key j is hidden from query i when j > i (top-left aligned) */
    moa_mask_kind mask_kind;
    float mask_fill;       /* bias of a false entry of a bool mask (-INFINITY or a finite minimum) */
    moa_access q, k, v;    /* k and v are indexed by kv head = h / (q_heads / kv_heads) */
    moa_access out;
    moa_access mask;       /* broadcast over (batch, q_heads, q_len, kv_len) with zero strides */
} moa_attention_params;

/* Bytes of scratch moa_attention_f32 needs. */
size_t moa_attention_f32_scratch_bytes(const moa_attention_params *p);

/* mask: const float * (MOA_MASK_FLOAT), const uint8_t * (MOA_MASK_BOOL, nonzero = attend) or NULL. */
moa_status moa_attention_f32(const moa_attention_params *p, const float *q, const float *k, const float *v,
                             const void *mask, float *out, float *scratch);

#endif
