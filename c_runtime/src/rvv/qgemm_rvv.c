/* The quantized-weight panel kernels (moa/qgemm_panel.h) for RVV 1.0: a row of a panel's 16
 * columns is one LMUL=4 float group (vl = 16 fits one m4 group for every VLEN >= 128, and
 * its 16 int8 one m1 register: e8m1 and e32m4 share SEW/LMUL, so one vl serves both). The
 * int8 (or nibbles) are widened to int32 in one vsext.vf4 (vzext.vf4), converted, then one
 * vfmacc.vf with x[p] as the scalar operand. Rows go in pairs into two accumulators, so that
 * consecutive FMAs do not wait on each other, and a 4-bit pair of rows is one 16-byte load. */
#include "moa/qgemm_panel.h"

#if MOA_ISA_RVV
#include "moa/half_rvv.h"

#define INLINE static inline __attribute__((always_inline))

INLINE vfloat32m4_t row_i8(const void *q, size_t p, size_t vl)
{
    const vint8m1_t row = __riscv_vle8_v_i8m1((const int8_t *)q + p * MOA_GEMM_NR, vl);
    return __riscv_vfcvt_f_x_v_f32m4(__riscv_vsext_vf4_i32m4(row, vl), vl);
}

/* Pair r of a 4-bit panel, each byte zero-extended to its int32 lane: the nibbles are split
 * there, at e32 like everything else, so the loop never changes vtype (at e8 it would, twice
 * per nibble). */
INLINE vuint32m4_t pair_u4(const void *q, size_t r, size_t vl)
{
    return __riscv_vzext_vf4_u32m4(__riscv_vle8_v_u8m1((const uint8_t *)q + r * MOA_GEMM_NR, vl), vl);
}

INLINE vfloat32m4_t low_u4(vuint32m4_t pair, size_t vl)
{
    return __riscv_vfcvt_f_xu_v_f32m4(__riscv_vand_vx_u32m4(pair, 15, vl), vl);
}

INLINE vfloat32m4_t high_u4(vuint32m4_t pair, size_t vl)
{
    return __riscv_vfcvt_f_xu_v_f32m4(__riscv_vsrl_vx_u32m4(pair, 4, vl), vl);
}

/* sum + scale * (acc - zero * x_sum) (+ offset * x_sum) for block b. */
/* Row b of a panel's scales or offsets: 16 floats, 16 halves converted, or (MOA_QS_SUPER) the
 * super-block's halves times the block's int8s. */
INLINE vfloat32m4_t scales_row(const void *scales, int half, size_t b, size_t vl)
{
    if (half == MOA_QS_SUPER) {
        const vint32m4_t own = __riscv_vsext_vf4_i32m4(__riscv_vle8_v_i8m1(moa_qs_block_row(scales, b), vl), vl);
        return __riscv_vfmul_vv_f32m4(moa_rvv_f16_to_f32(moa_qs_super_row(scales, b), vl),
                                      __riscv_vfcvt_f_x_v_f32m4(own, vl), vl);
    }
    return half ? moa_rvv_f16_to_f32((const uint16_t *)scales + b * MOA_GEMM_NR, vl)
                : __riscv_vle32_v_f32m4((const float *)scales + b * MOA_GEMM_NR, vl);
}

INLINE vfloat32m4_t apply_block(vfloat32m4_t sum, vfloat32m4_t acc, float x_sum, const void *scale,
                                const void *offset, int half, int zero, size_t b, size_t vl)
{
    acc = __riscv_vfsub_vf_f32m4(acc, (float)zero * x_sum, vl);
    sum = __riscv_vfmacc_vv_f32m4(sum, scales_row(scale, half, b, vl), acc, vl);
    if (offset != NULL) {
        sum = __riscv_vfmacc_vf_f32m4(sum, x_sum, scales_row(offset, half, b, vl), vl);
    }
    return sum;
}

void moa_qw_dot_i8_rvv(MOA_QW_DOT_PARAMS)
{
    const size_t vl = __riscv_vsetvl_e32m4(MOA_GEMM_NR);
    vfloat32m4_t sum = __riscv_vfmv_v_f_f32m4(0.0f, vl);
    size_t b0, p;
    for (b0 = 0; b0 < K; b0 += block) {
        const size_t end = K - b0 < block ? K : b0 + block;
        vfloat32m4_t even = __riscv_vfmv_v_f_f32m4(0.0f, vl), odd = even;
        float x_sum = 0.0f;
        for (p = b0; p + 1 < end; p += 2) {
            const float x0 = x[(ptrdiff_t)p * x_stride], x1 = x[(ptrdiff_t)(p + 1) * x_stride];
            even = __riscv_vfmacc_vf_f32m4(even, x0, row_i8(q, p, vl), vl);
            odd = __riscv_vfmacc_vf_f32m4(odd, x1, row_i8(q, p + 1, vl), vl);
            x_sum += x0 + x1;
        }
        if (p < end) {
            const float x0 = x[(ptrdiff_t)p * x_stride];
            even = __riscv_vfmacc_vf_f32m4(even, x0, row_i8(q, p, vl), vl);
            x_sum += x0;
        }
        sum = apply_block(sum, __riscv_vfadd_vv_f32m4(even, odd, vl), x_sum, scale, offset, half, zero, b0 / block, vl);
    }
    __riscv_vse32_v_f32m4(y16, sum, vl);
}

void moa_qw_dot_u4_rvv(MOA_QW_DOT_PARAMS)
{
    const size_t vl = __riscv_vsetvl_e32m4(MOA_GEMM_NR);
    vfloat32m4_t sum = __riscv_vfmv_v_f_f32m4(0.0f, vl);
    size_t b0, p;
    for (b0 = 0; b0 < K; b0 += block) { /* block is even: a block starts a pair */
        const size_t end = K - b0 < block ? K : b0 + block;
        vfloat32m4_t even = __riscv_vfmv_v_f_f32m4(0.0f, vl), odd = even;
        float x_sum = 0.0f;
        for (p = b0; p + 1 < end; p += 2) {
            const float x0 = x[(ptrdiff_t)p * x_stride], x1 = x[(ptrdiff_t)(p + 1) * x_stride];
            const vuint32m4_t pair = pair_u4(q, p / 2, vl);
            even = __riscv_vfmacc_vf_f32m4(even, x0, low_u4(pair, vl), vl);
            odd = __riscv_vfmacc_vf_f32m4(odd, x1, high_u4(pair, vl), vl);
            x_sum += x0 + x1;
        }
        if (p < end) {
            const float x0 = x[(ptrdiff_t)p * x_stride];
            even = __riscv_vfmacc_vf_f32m4(even, x0, low_u4(pair_u4(q, p / 2, vl), vl), vl);
            x_sum += x0;
        }
        sum = apply_block(sum, __riscv_vfadd_vv_f32m4(even, odd, vl), x_sum, scale, offset, half, zero, b0 / block, vl);
    }
    __riscv_vse32_v_f32m4(y16, sum, vl);
}

INLINE void store_row(float *out, vfloat32m4_t w, vfloat32m4_t s, vfloat32m4_t shift, size_t vl)
{
    __riscv_vse32_v_f32m4(out, __riscv_vfmacc_vv_f32m4(shift, s, w, vl), vl);
}

/* Rows p .. end - 1 of an int8 panel at out, scale * q + shift. */
INLINE void rows_i8(const void *q, size_t p, size_t end, vfloat32m4_t s, vfloat32m4_t shift, float *out, size_t vl)
{
    for (; p < end; p++, out += MOA_GEMM_NR) {
        store_row(out, row_i8(q, p, vl), s, shift, vl);
    }
}

/* The same for a 4-bit panel, in pairs from an even row: one load for two rows. */
INLINE void rows_u4(const void *q, size_t p, size_t end, vfloat32m4_t s, vfloat32m4_t shift, float *out, size_t vl)
{
    if (p % 2 && p < end) {
        store_row(out, high_u4(pair_u4(q, p / 2, vl), vl), s, shift, vl);
        p++, out += MOA_GEMM_NR;
    }
    for (; p + 1 < end; p += 2, out += 2 * MOA_GEMM_NR) {
        const vuint32m4_t pair = pair_u4(q, p / 2, vl);
        store_row(out, low_u4(pair, vl), s, shift, vl);
        store_row(out + MOA_GEMM_NR, high_u4(pair, vl), s, shift, vl);
    }
    if (p < end) {
        store_row(out, low_u4(pair_u4(q, p / 2, vl), vl), s, shift, vl);
    }
}

typedef void (*dequant_rows)(const void *, size_t, size_t, vfloat32m4_t, vfloat32m4_t, float *, size_t);

/* Block by block, so that a block's scales and offsets are loaded once; scale (q - zero) + offset
 * is scale q + (offset - scale zero). */
INLINE void dequant(dequant_rows rows, MOA_QW_DEQUANT_PARAMS)
{
    const size_t vl = __riscv_vsetvl_e32m4(MOA_GEMM_NR);
    size_t p = p0;
    while (p < p0 + kc) {
        const size_t b = p / block, end = (b + 1) * block < p0 + kc ? (b + 1) * block : p0 + kc;
        const vfloat32m4_t s = scales_row(scale, half, b, vl);
        const vfloat32m4_t base = offset != NULL ? scales_row(offset, half, b, vl)
                                                 : __riscv_vfmv_v_f_f32m4(0.0f, vl);
        const vfloat32m4_t shift = __riscv_vfnmsac_vf_f32m4(base, (float)zero, s, vl); /* base - zero s */
        rows(q, p, end, s, shift, out + (p - p0) * MOA_GEMM_NR, vl);
        p = end;
    }
}

void moa_qw_dequant_i8_rvv(MOA_QW_DEQUANT_PARAMS)
{
    dequant(rows_i8, block, q, scale, offset, half, zero, p0, kc, out);
}

void moa_qw_dequant_u4_rvv(MOA_QW_DEQUANT_PARAMS)
{
    dequant(rows_u4, block, q, scale, offset, half, zero, p0, kc, out);
}
#endif
