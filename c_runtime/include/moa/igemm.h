/* Integer matrix multiply: 8-bit activations times 8-bit weights, int32 sums (onnxruntime's
 * MatMulInteger, and the int8 x int8 GEMM of a model quantized to int8 weights and activations).
 *
 *     Y[m][n] = sum_k (A[m][k] - a_zero) (B[k][n] - b_zero[n])                         (int32)
 *
 * and its float form, which quantizes float activations itself and scales the sums back:
 *
 *     Y[m][n] = (float)Yint[m][n] * (a_scale[m] * b_scale[n])  +  bias[n]
 *
 * in that order and rounding, as onnxruntime computes MatMulInteger -> Cast -> Mul -> Add and
 * its fused DynamicQuantizeMatMul (the scale product is rounded to float first, no FMA).
 *
 * A is uint8 or int8 with one zero point. B is int8 (uint8 weights are stored shifted by -128,
 * their zero points too: B - b_zero is unchanged), packed once, at conversion, in panels of 16
 * columns (MOA_GEMM_NR) whose rows come in groups of 4 consecutive k, the operand of one
 * dot-product lane (VNNI vpdpbusd, Arm SDOT):
 *
 *     panel p, group g:  64 bytes, byte 4j + t = B[4g + t][16p + j]     (j < 16, t < 4)
 *
 * K padded to Kp = MOA_IGEMM_KP(K) and N to whole panels with zeros. With q come, per padded
 * column, col_sum[n] = sum_k B[k][n] (of the stored int8) and the zero points (NULL: all 0).
 * Sums wrap modulo 2^32, as MatMulInteger's int32 output does.
 *
 * Quantizing the activations (moa_igemm_f32):
 *     MOA_IQ_TENSOR_U8  ONNX DynamicQuantizeLinear over the whole of A: lo = min(A, 0),
 *                       hi = max(A, 0), scale = (hi - lo) / 255 (1 when hi == lo),
 *                       a_zero = round(clamp(-lo / scale, 0, 255)),
 *                       q = clamp(round(A / scale) + a_zero, 0, 255), rounding half to even;
 *     MOA_IQ_ROW_I8     symmetric int8 per row: scale[m] = max |A[m]| / 127 (1 when 0),
 *                       q = clamp(round(A / scale[m]), -127, 127), a_zero 0.
 *
 * No allocation: the caller gives MOA_IGEMM_SCRATCH_BYTES(M, K) of scratch, aligned to 4, for up
 * to MOA_IGEMM_MC rows of A in the kernels' form at a time. */
#ifndef MOA_IGEMM_H
#define MOA_IGEMM_H

#include <stddef.h>
#include <stdint.h>

#include "moa/matmul.h" /* MOA_GEMM_NR */
#include "moa/status.h"

typedef enum { MOA_IA_U8 = 1, MOA_IA_I8 = 2 } moa_ia_type;
typedef enum { MOA_IQ_TENSOR_U8 = 1, MOA_IQ_ROW_I8 = 2 } moa_iq_mode;

/* Quantized activations: A[m][k] = data[m * row_stride + k], uint8_t or int8_t. */
typedef struct {
    moa_ia_type type;
    const void *data;
    ptrdiff_t row_stride;
    int32_t zero;
} moa_imatrix;

/* Packed int8 weights (the layout above). */
typedef struct {
    const int8_t *q;        /* MOA_IGEMM_B_BYTES(K, N) */
    const int32_t *col_sum; /* MOA_IGEMM_COLUMNS(N) */
    const int32_t *zero;    /* MOA_IGEMM_COLUMNS(N), or NULL */
} moa_iweights;

#define MOA_IGEMM_KP(K) (((size_t)(K) + 3) / 4 * 4)
#define MOA_IGEMM_COLUMNS(N) (((size_t)(N) + MOA_GEMM_NR - 1) / MOA_GEMM_NR * MOA_GEMM_NR)
#define MOA_IGEMM_B_BYTES(K, N) (MOA_IGEMM_COLUMNS(N) * MOA_IGEMM_KP(K))

/* Rows of A quantized at a time: a multiple of every ISA's register tile (moa/igemm_tile.h). */
#define MOA_IGEMM_MC 96
#define MOA_IGEMM_BLOCK_ROWS(M) ((size_t)(M) < MOA_IGEMM_MC ? (size_t)(M) : (size_t)MOA_IGEMM_MC)
/* Per block row: its sum and scale (8 bytes), then its Kp bytes. */
#define MOA_IGEMM_SCRATCH_BYTES(M, K) (MOA_IGEMM_BLOCK_ROWS(M) * (8 + MOA_IGEMM_KP(K)))

/* Y (M x N int32, row stride y_row_stride >= N) as above. MOA_ERR_NULL_ARGUMENT for a missing
 * operand that would be read or written, MOA_ERR_BAD_PARAMS for an unknown A type or rows of Y
 * that would overlap. K == 0 gives zeros. */
moa_status moa_igemm_i32(size_t M, size_t N, size_t K, moa_imatrix a, moa_iweights b, int32_t *y,
                         ptrdiff_t y_row_stride, void *scratch);

/* Y (M x N float) from float A (row stride a_row_stride), quantized by `mode`; b_scale holds
 * MOA_IGEMM_COLUMNS(N) floats (a per-tensor scale repeated), bias N floats or NULL. */
moa_status moa_igemm_f32(size_t M, size_t N, size_t K, const float *a, ptrdiff_t a_row_stride, moa_iq_mode mode,
                         moa_iweights b, const float *b_scale, const float *bias, float *y, ptrdiff_t y_row_stride,
                         void *scratch);

#endif
