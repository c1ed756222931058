/* The quantized-weight panel kernels (moa/qgemm_panel.h) for AArch64 NEON: a row of a panel's
 * 16 columns is four q registers. Its 16 int8 (or nibbles, 0..15, read as int8) are widened
 * to int32 and converted (widen, below), then one FMA per register with x[p] as a scalar
 * operand (fmla by element). Rows go in pairs into two sets of four accumulators: eight
 * independent FMA chains, and a 4-bit pair of rows is one 16-byte load. */
#include "moa/qgemm_panel.h"

#if MOA_ISA_NEON
#include <arm_neon.h>

#define INLINE static inline __attribute__((always_inline))

/* Columns 4v .. 4v + 3 of row b of a panel's scales or offsets: floats, halves converted (fcvtl),
 * or (MOA_QS_SUPER) the super-block's halves times the block's int8s. */
INLINE float32x4_t scales4(const void *scales, int half, size_t b, int v)
{
    const size_t i = b * MOA_GEMM_NR + 4 * (size_t)v;
    if (half == MOA_QS_SUPER) {
        const int16x8_t own = vmovl_s8(vld1_s8(moa_qs_block_row(scales, b) + 8 * (v / 2))); /* within the row */
        const int32x4_t ints = vmovl_s16(v % 2 ? vget_high_s16(own) : vget_low_s16(own));
        const float32x4_t super = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(moa_qs_super_row(scales, b) + 4 * v)));
        return vmulq_f32(super, vcvtq_f32_s32(ints));
    }
    return half ? vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)scales + i)))
                : vld1q_f32((const float *)scales + i);
}

/* w[v] = (float)q[4v .. 4v + 3]. A table lookup moves byte 4v + i of q to the top byte of
 * lane i (index 255 reads 0 below it), and a fixed-point convert with 24 fraction bits
 * divides that int32 by 2^24: exactly q[4v + i], sign included. Two instructions per 4
 * values, not the 2.5 of sxtl, sxtl2, scvtf (the four index vectors load once per call). */
INLINE void widen(int8x16_t q, float32x4_t w[4])
{
    static const uint8_t to_top_byte[4][16] = {
        {255, 255, 255, 0, 255, 255, 255, 1, 255, 255, 255, 2, 255, 255, 255, 3},
        {255, 255, 255, 4, 255, 255, 255, 5, 255, 255, 255, 6, 255, 255, 255, 7},
        {255, 255, 255, 8, 255, 255, 255, 9, 255, 255, 255, 10, 255, 255, 255, 11},
        {255, 255, 255, 12, 255, 255, 255, 13, 255, 255, 255, 14, 255, 255, 255, 15}};
    int v;
#pragma GCC unroll 4
    for (v = 0; v < 4; v++) {
        w[v] = vcvtq_n_f32_s32(vreinterpretq_s32_s8(vqtbl1q_s8(q, vld1q_u8(to_top_byte[v]))), 24);
    }
}

/* Row p of an int8 panel; rows p and p + 1. */
INLINE void row_i8(const void *q, size_t p, float32x4_t w[4])
{
    widen(vld1q_s8((const int8_t *)q + p * MOA_GEMM_NR), w);
}

INLINE void rows_i8(const void *q, size_t p, float32x4_t even[4], float32x4_t odd[4])
{
    row_i8(q, p, even);
    row_i8(q, p + 1, odd);
}

/* Row p of a 4-bit panel: the low (p even) or high nibbles of pair p / 2; rows p and p + 1
 * (p even: one pair). */
INLINE void row_u4(const void *q, size_t p, float32x4_t w[4])
{
    const uint8x16_t pair = vld1q_u8((const uint8_t *)q + p / 2 * MOA_GEMM_NR);
    widen(vreinterpretq_s8_u8(p % 2 ? vshrq_n_u8(pair, 4) : vandq_u8(pair, vdupq_n_u8(15))), w);
}

INLINE void rows_u4(const void *q, size_t p, float32x4_t even[4], float32x4_t odd[4])
{
    const uint8x16_t pair = vld1q_u8((const uint8_t *)q + p / 2 * MOA_GEMM_NR);
    widen(vreinterpretq_s8_u8(vandq_u8(pair, vdupq_n_u8(15))), even);
    widen(vreinterpretq_s8_u8(vshrq_n_u8(pair, 4)), odd);
}

typedef void (*one_row)(const void *, size_t, float32x4_t[4]);
typedef void (*two_rows)(const void *, size_t, float32x4_t[4], float32x4_t[4]);

/* Blocks start at even rows (a 4-bit block is even), so pairs never straddle one. */
INLINE void dot(one_row row, two_rows rows, MOA_QW_DOT_PARAMS)
{
    float32x4_t sum[4];
    size_t b0, p;
    int v;
#pragma GCC unroll 4
    for (v = 0; v < 4; v++) {
        sum[v] = vdupq_n_f32(0.0f);
    }
    for (b0 = 0; b0 < K; b0 += block) {
        const size_t end = K - b0 < block ? K : b0 + block, b = b0 / block;
        float32x4_t even[4], odd[4], w0[4], w1[4];
        const float *x_p = x + (ptrdiff_t)b0 * x_stride; /* x[p], stepped: no multiply per row */
        float x_sum = 0.0f;
#pragma GCC unroll 4
        for (v = 0; v < 4; v++) {
            even[v] = odd[v] = vdupq_n_f32(0.0f);
        }
        for (p = b0; p + 1 < end; p += 2, x_p += 2 * x_stride) {
            const float x0 = x_p[0], x1 = x_p[x_stride];
            rows(q, p, w0, w1);
#pragma GCC unroll 4
            for (v = 0; v < 4; v++) {
                even[v] = vfmaq_n_f32(even[v], w0[v], x0);
                odd[v] = vfmaq_n_f32(odd[v], w1[v], x1);
            }
            x_sum += x0 + x1;
        }
        if (p < end) {
            const float x0 = x_p[0];
            row(q, p, w0);
#pragma GCC unroll 4
            for (v = 0; v < 4; v++) {
                even[v] = vfmaq_n_f32(even[v], w0[v], x0);
            }
            x_sum += x0;
        }
#pragma GCC unroll 4
        for (v = 0; v < 4; v++) {
            const float32x4_t acc = vsubq_f32(vaddq_f32(even[v], odd[v]), vdupq_n_f32((float)zero * x_sum));
            sum[v] = vfmaq_f32(sum[v], scales4(scale, half, b, v), acc);
            if (offset != NULL) {
                sum[v] = vfmaq_n_f32(sum[v], scales4(offset, half, b, v), x_sum);
            }
        }
    }
#pragma GCC unroll 4
    for (v = 0; v < 4; v++) {
        vst1q_f32(y16 + 4 * v, sum[v]);
    }
}

/* One dequantized row at out: scale * q + shift, or scale * q without offsets (fmla overwrites
 * its addend, so a zero shift would cost a copy of it per vector). */
INLINE void store_row(float *out, const float32x4_t w[4], const float32x4_t s[4], const float32x4_t shift[4],
                      int with_offset)
{
    int v;
#pragma GCC unroll 4
    for (v = 0; v < 4; v++) {
        vst1q_f32(out + 4 * v, with_offset ? vfmaq_f32(shift[v], s[v], w[v]) : vmulq_f32(s[v], w[v]));
    }
}

/* Rows p .. end - 1 of the panel, at out: in pairs from an even row (one load for two 4-bit rows). */
INLINE void dequant_rows(one_row row, two_rows rows, const void *q, size_t p, size_t end, const float32x4_t s[4],
                         const float32x4_t shift[4], int with_offset, float *out)
{
    float32x4_t w0[4], w1[4];
    if (p % 2 && p < end) {
        row(q, p, w0);
        store_row(out, w0, s, shift, with_offset);
        p++, out += MOA_GEMM_NR;
    }
    for (; p + 1 < end; p += 2, out += 2 * MOA_GEMM_NR) {
        rows(q, p, w0, w1);
        store_row(out, w0, s, shift, with_offset);
        store_row(out + MOA_GEMM_NR, w1, s, shift, with_offset);
    }
    if (p < end) {
        row(q, p, w0);
        store_row(out, w0, s, shift, with_offset);
    }
}

/* Block by block, so that a block's scales and offsets are loaded once; scale (q - zero) + offset
 * is scale q + (offset - scale zero). */
INLINE void dequant(one_row row, two_rows rows, MOA_QW_DEQUANT_PARAMS)
{
    size_t p = p0;
    int v;
    while (p < p0 + kc) {
        const size_t b = p / block, end = (b + 1) * block < p0 + kc ? (b + 1) * block : p0 + kc;
        float32x4_t s[4], shift[4];
#pragma GCC unroll 4
        for (v = 0; v < 4; v++) {
            s[v] = scales4(scale, half, b, v);
            shift[v] = offset != NULL ? scales4(offset, half, b, v) : vdupq_n_f32(0.0f);
            shift[v] = vmlsq_n_f32(shift[v], s[v], (float)zero);
        }
        if (offset != NULL || zero != 0) {
            dequant_rows(row, rows, q, p, end, s, shift, 1, out + (p - p0) * MOA_GEMM_NR);
        } else {
            dequant_rows(row, rows, q, p, end, s, shift, 0, out + (p - p0) * MOA_GEMM_NR);
        }
        p = end;
    }
}

void moa_qw_dot_i8_neon(MOA_QW_DOT_PARAMS)
{
    dot(row_i8, rows_i8, K, block, x, x_stride, q, scale, offset, half, zero, y16);
}

void moa_qw_dot_u4_neon(MOA_QW_DOT_PARAMS)
{
    dot(row_u4, rows_u4, K, block, x, x_stride, q, scale, offset, half, zero, y16);
}

void moa_qw_dequant_i8_neon(MOA_QW_DEQUANT_PARAMS)
{
    dequant(row_i8, rows_i8, block, q, scale, offset, half, zero, p0, kc, out);
}

void moa_qw_dequant_u4_neon(MOA_QW_DEQUANT_PARAMS)
{
    dequant(row_u4, rows_u4, block, q, scale, offset, half, zero, p0, kc, out);
}
#endif
