/* The integer GEMM's micro-kernels (moa/igemm_tile.h) for Cortex-M cores with the DSP extension
 * and no vector unit (M4, M7, M33), A and B signed (uint8 A arrives moved by -128, igemm.c).
 * One packed group holds, per column, 4 consecutive k as one 32-bit word, and a row of A its 4
 * k as another; SXTB16 widens a word's bytes 0 and 2 (or, rotated by 8, 1 and 3) to two 16-bit
 * halves, and SMLAD adds both halves' products: 4 multiply-adds in two SMLAD, where the portable
 * C takes 4 loads, 4 multiply-adds and the byte widenings. The sums wrap as MatMulInteger's. */
#include "moa/igemm_tile.h"

#if defined(MOA_IGEMM_DSP)
#include <arm_acle.h>
#include <string.h>

#define ROWS 4

static inline __attribute__((always_inline)) uint32_t rotated(uint32_t x) /* bytes 1 and 3 to 0 and 2: one ROR */
{
    return x >> 8 | x << 24;
}

static inline __attribute__((always_inline)) uint32_t word(const int8_t *x)
{
    uint32_t w;
    memcpy(&w, x, sizeof w); /* one LDR: the groups and A's rows are 4-byte aligned */
    return w;
}

/* acc[i * 16 + j] for i < rows, one column at a time; `rows` is a constant at each call. */
static inline __attribute__((always_inline)) void columns(int rows, size_t groups, const int8_t *a,
                                                          ptrdiff_t a_row_stride, const int8_t *b, int32_t *acc)
{
    int32_t sum[ROWS];
    size_t g;
    int i, j;
    for (j = 0; j < MOA_GEMM_NR; j++) {
#pragma GCC unroll 4
        for (i = 0; i < rows; i++) {
            sum[i] = 0;
        }
        for (g = 0; g < groups; g++) {
            const uint32_t bw = word(b + 64 * g + 4 * j);
            const int16x2_t b_even = __sxtb16(bw), b_odd = __sxtb16(rotated(bw));
#pragma GCC unroll 4
            for (i = 0; i < rows; i++) {
                const uint32_t aw = word(a + i * a_row_stride + 4 * (ptrdiff_t)g);
                sum[i] = __smlad(__sxtb16(rotated(aw)), b_odd, __smlad(__sxtb16(aw), b_even, sum[i]));
            }
        }
#pragma GCC unroll 4
        for (i = 0; i < rows; i++) {
            acc[i * MOA_GEMM_NR + j] = sum[i];
        }
    }
}

void moa_igemm_tile_4x16_dsp(MOA_IGEMM_TILE_PARAMS)
{
    columns(ROWS, groups, a, a_row_stride, b, acc);
}

void moa_igemm_row_4x16_dsp(MOA_IGEMM_ROW_PARAMS)
{
    columns(1, groups, a, 0, b, acc);
}
#endif
