/* Matrix multiply with weights stored in fewer bits (int8, 4 bits in blocks, or float16), float32
 * activations, float32 accumulation: the decode path of an LLM and every weight-only
 * quantized model.
 *
 *     Y[m][n] = alpha * sum_k A[m][k] W[k][n]  +  beta * C[m][n]
 *     W[k][n] = scale[k / block][n] * (q[k][n] - zero)  +  offset[k / block][n]   (offset 0 when NULL)
 *
 * q is int8 (MOA_QW_I8, symmetric: zero 0, no offset) or an unsigned 4-bit 0..15 (MOA_QW_U4:
 * symmetric with zero 8, as llama.cpp's Q4_0 and onnxruntime's MatMulNBits without zero points;
 * or zero 0 and offset = -zero_point * scale per block, or GGUF's block minimum). `block` rows of
 * W share one scale and offset per column: block == K is one per column (per output channel).
 * MOA_QW_F16 stores W itself as IEEE halves (uint16_t bits, moa/half.h): W[k][n] = q[k][n];
 * scale, offset and zero are unused (scale may be NULL), block only sets Kp. MOA_QW_F16_NATIVE is
 * the same storage, and asks for half-precision arithmetic in the GEMV where the core has it
 * (convert --weights fp16:native for a board with the fp16 extension): x rounded to a half,
 * products summed in halves over 16 rows, those sums added in float32, which leaves about 2^-11
 * of sum |x W| per 16 rows instead of float32's rounding. Prefill dequantizes as MOA_QW_F16.
 *
 * Layout: the panels of matmul.h (16 columns each, the last zero-padded), K padded to whole
 * blocks with zero rows (Kp = MOA_QW_ROWS(K, block)). Panel p holds
 *     MOA_QW_I8: Kp rows of 16 int8, row after row (Kp * 16 bytes);
 *     MOA_QW_U4: Kp / 2 pairs of rows in 16 bytes, byte j = q[2r][j] | q[2r + 1][j] << 4;
 *     MOA_QW_F16: Kp rows of 16 halves, row after row (Kp * 32 bytes);
 * and scale (and offset) hold, per panel, one row of 16 per block (Kp / block rows), stored as
 * half_scales says (converted to float32 in registers, a row per block):
 *     MOA_QS_FLOAT  floats;
 *     MOA_QS_HALF   IEEE halves (GGUF's Q4_1 and Q8_0 store theirs so: a 4-bit weight in blocks of
 *                   32 takes 5 bits, not 6);
 *     MOA_QS_SUPER  two levels, as GGUF's K-quants: for each MOA_QS_SUPER_BLOCKS blocks, a row of
 *                   16 halves H, then each block's row of 16 int8 s; the block's value is H * s
 *                   (4.625 bits a 4-bit weight in blocks of 32). MOA_QS_SUPER_BYTES(blocks) a panel.
 * Weights are quantized and laid out once, at conversion; the kernel reads them as they are. */
#ifndef MOA_QMATMUL_H
#define MOA_QMATMUL_H

#include <stddef.h>
#include <stdint.h>

#include "moa/matmul.h"
#include "moa/status.h"

typedef enum { MOA_QW_I8 = 1, MOA_QW_U4 = 2, MOA_QW_F16 = 3, MOA_QW_F16_NATIVE = 4 } moa_qw_type;

typedef struct {
    moa_qw_type type;
    size_t block;        /* rows of W per scale; even for MOA_QW_U4 */
    const void *q;       /* int8_t (MOA_QW_I8), uint8_t pairs (MOA_QW_U4) or uint16_t halves (MOA_QW_F16) */
    const void *scale;   /* per panel: Kp / block rows of 16 floats (MOA_QW_F16: unused, may be NULL) */
    const void *offset;  /* as scale, or NULL */
    int zero;            /* subtracted from every q */
    int half_scales;     /* how scale and offset are stored: MOA_QS_FLOAT (0), MOA_QS_HALF, MOA_QS_SUPER */
} moa_qweights;

#define MOA_QS_FLOAT 0
#define MOA_QS_HALF 1
#define MOA_QS_SUPER 2
#define MOA_QS_SUPER_BLOCKS 8
#define MOA_QS_SUPER_CHUNK (2 * 16 + MOA_QS_SUPER_BLOCKS * 16) /* bytes: the halves, then 8 rows of int8 */
#define MOA_QS_SUPER_BYTES(blocks)                                                                        \
    ((size_t)(blocks) / MOA_QS_SUPER_BLOCKS * MOA_QS_SUPER_CHUNK +                                       \
     ((size_t)(blocks) % MOA_QS_SUPER_BLOCKS ? 2 * 16 + (size_t)(blocks) % MOA_QS_SUPER_BLOCKS * 16 : 0))

/* MOA_QS_SUPER: the halves of block b's super-block, and block b's own int8s (16 each). */
static inline const uint16_t *moa_qs_super_row(const void *scales, size_t b)
{
    return (const uint16_t *)((const uint8_t *)scales + b / MOA_QS_SUPER_BLOCKS * MOA_QS_SUPER_CHUNK);
}

static inline const int8_t *moa_qs_block_row(const void *scales, size_t b)
{
    return (const int8_t *)((const uint8_t *)scales + b / MOA_QS_SUPER_BLOCKS * MOA_QS_SUPER_CHUNK + 2 * 16 +
                            b % MOA_QS_SUPER_BLOCKS * 16);
}

#define MOA_QW_BLOCKS(K, block) (((size_t)(K) + (size_t)(block) - 1) / (size_t)(block))
#define MOA_QW_ROWS(K, block) (MOA_QW_BLOCKS(K, block) * (size_t)(block))
#define MOA_QW_PANELS(N) (((size_t)(N) + MOA_GEMM_NR - 1) / MOA_GEMM_NR)
/* Bytes of q, and elements of scale (and of offset). */
#define MOA_QW_I8_BYTES(K, N, block) (MOA_QW_PANELS(N) * MOA_QW_ROWS(K, block) * MOA_GEMM_NR)
#define MOA_QW_U4_BYTES(K, N, block) (MOA_QW_PANELS(N) * MOA_QW_ROWS(K, block) / 2 * MOA_GEMM_NR)
#define MOA_QW_F16_BYTES(K, N, block) (MOA_QW_PANELS(N) * MOA_QW_ROWS(K, block) * MOA_GEMM_NR * 2)
#define MOA_QW_SCALES(K, N, block) (MOA_QW_PANELS(N) * MOA_QW_BLOCKS(K, block) * MOA_GEMM_NR)

/* As moa_gemm_f32 (matmul.h), with B = W. Fewer rows than one register tile stream each panel
 * once and apply the scale per block to sums of x * q (the decode step's GEMV); more rows
 * dequantize a KC x 16 slice of a panel to the stack and run the float register tile.
 * MOA_ERR_BAD_PARAMS for an unknown type, a block of 0 or an odd 4-bit block; MOA_ERR_NULL_ARGUMENT
 * for no q, or no scale for an integer type. */
moa_status moa_gemm_qw_f32(size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a, moa_qweights w,
                           float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride);

/* The same on a worker pool's threads, as moa_gemm_packed_f32_on (matmul.h). */
moa_status moa_gemm_qw_f32_on(moa_pool *pool, size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a,
                              moa_qweights w, float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride);

#endif
