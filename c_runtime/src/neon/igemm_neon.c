/* The integer GEMM's micro-kernels (moa/igemm_tile.h) for AArch64 NEON, A and B signed (uint8 A
 * arrives moved by -128, igemm.c). A packed group (16 columns x 4 k) is four q registers of 4
 * columns each.
 *
 * With dotprod (armv8.2: Cortex-A76, A78; -mcpu=cortex-a76): SDOT adds each column's 4 products
 * to its int32 lane, 4 bytes of an A row repeated in every lane; six rows, 24 accumulators.
 * Without (Cortex-A72): vmull_s8 multiplies 8 bytes (2 columns x 4 k) into int16 products (at
 * most 128 * 128, no overflow) and vpadalq_s16 adds pairs of them into int32; each column keeps
 * two lanes, added at the end (vpaddq); two rows, 16 accumulators. */
#include <string.h>

#include "moa/igemm_tile.h"

#if defined(MOA_IGEMM_NEONDOT) || defined(MOA_IGEMM_NEON)
#include <arm_neon.h>

#define INLINE static inline __attribute__((always_inline))

INLINE int32_t four_bytes(const int8_t *a)
{
    int32_t value;
    memcpy(&value, a, sizeof value);
    return value;
}
#endif

#if defined(MOA_IGEMM_NEONDOT)
void moa_igemm_tile_6x16_neondot(MOA_IGEMM_TILE_PARAMS)
{
    int32x4_t sum[6][4];
    size_t g;
    int i, c;
#pragma GCC unroll 6
    for (i = 0; i < 6; i++) {
#pragma GCC unroll 4
        for (c = 0; c < 4; c++) {
            sum[i][c] = vdupq_n_s32(0);
        }
    }
    for (g = 0; g < groups; g++) {
        const int8_t *b_g = b + g * 64;
        const int8x16_t b0 = vld1q_s8(b_g), b1 = vld1q_s8(b_g + 16), b2 = vld1q_s8(b_g + 32), b3 = vld1q_s8(b_g + 48);
#pragma GCC unroll 6
        for (i = 0; i < 6; i++) {
            const int8x16_t a_i = vreinterpretq_s8_s32(vdupq_n_s32(four_bytes(a + i * a_row_stride + 4 * g)));
            sum[i][0] = vdotq_s32(sum[i][0], b0, a_i);
            sum[i][1] = vdotq_s32(sum[i][1], b1, a_i);
            sum[i][2] = vdotq_s32(sum[i][2], b2, a_i);
            sum[i][3] = vdotq_s32(sum[i][3], b3, a_i);
        }
    }
#pragma GCC unroll 6
    for (i = 0; i < 6; i++) {
#pragma GCC unroll 4
        for (c = 0; c < 4; c++) {
            vst1q_s32(acc + 16 * i + 4 * c, sum[i][c]);
        }
    }
}

/* One row: two sets of sums over alternate groups, so that consecutive SDOTs do not wait on each other. */
void moa_igemm_row_6x16_neondot(MOA_IGEMM_ROW_PARAMS)
{
    int32x4_t even[4], odd[4];
    size_t g = 0;
    int c;
#pragma GCC unroll 4
    for (c = 0; c < 4; c++) {
        even[c] = odd[c] = vdupq_n_s32(0);
    }
    for (; g + 2 <= groups; g += 2) {
        const int8x16_t a0 = vreinterpretq_s8_s32(vdupq_n_s32(four_bytes(a + 4 * g)));
        const int8x16_t a1 = vreinterpretq_s8_s32(vdupq_n_s32(four_bytes(a + 4 * g + 4)));
#pragma GCC unroll 4
        for (c = 0; c < 4; c++) {
            even[c] = vdotq_s32(even[c], vld1q_s8(b + g * 64 + 16 * c), a0);
            odd[c] = vdotq_s32(odd[c], vld1q_s8(b + g * 64 + 64 + 16 * c), a1);
        }
    }
    if (g < groups) {
        const int8x16_t a0 = vreinterpretq_s8_s32(vdupq_n_s32(four_bytes(a + 4 * g)));
#pragma GCC unroll 4
        for (c = 0; c < 4; c++) {
            even[c] = vdotq_s32(even[c], vld1q_s8(b + g * 64 + 16 * c), a0);
        }
    }
#pragma GCC unroll 4
    for (c = 0; c < 4; c++) {
        vst1q_s32(acc + 4 * c, vaddq_s32(even[c], odd[c]));
    }
}
#endif

#if defined(MOA_IGEMM_NEON)
/* sum[2c] lanes hold columns 4c, 4c + 1 and sum[2c + 1] columns 4c + 2, 4c + 3, two pair sums
 * each: vpaddq adds neighbours, giving columns 4c .. 4c + 3 in order. */
INLINE void store_columns(int32_t *acc, const int32x4_t sum[8])
{
    int c;
#pragma GCC unroll 4
    for (c = 0; c < 4; c++) {
        vst1q_s32(acc + 4 * c, vpaddq_s32(sum[2 * c], sum[2 * c + 1]));
    }
}

/* sum[2c], sum[2c + 1] += the products of chunk c of a group (columns 4c .. 4c + 3) with a row's
 * 4 bytes, repeated twice in a8. */
INLINE void multiply_add(int32x4_t sum[8], int8x16_t b_c, int8x8_t a8, int c)
{
    sum[2 * c] = vpadalq_s16(sum[2 * c], vmull_s8(vget_low_s8(b_c), a8));
    sum[2 * c + 1] = vpadalq_s16(sum[2 * c + 1], vmull_s8(vget_high_s8(b_c), a8));
}

void moa_igemm_tile_2x16_neon(MOA_IGEMM_TILE_PARAMS)
{
    int32x4_t sum0[8], sum1[8];
    size_t g;
    int c;
#pragma GCC unroll 8
    for (c = 0; c < 8; c++) {
        sum0[c] = sum1[c] = vdupq_n_s32(0);
    }
    for (g = 0; g < groups; g++) {
        const int8x8_t a0 = vreinterpret_s8_s32(vdup_n_s32(four_bytes(a + 4 * g)));
        const int8x8_t a1 = vreinterpret_s8_s32(vdup_n_s32(four_bytes(a + a_row_stride + 4 * g)));
#pragma GCC unroll 4
        for (c = 0; c < 4; c++) {
            const int8x16_t b_c = vld1q_s8(b + g * 64 + 16 * c);
            multiply_add(sum0, b_c, a0, c);
            multiply_add(sum1, b_c, a1, c);
        }
    }
    store_columns(acc, sum0);
    store_columns(acc + 16, sum1);
}

void moa_igemm_row_2x16_neon(MOA_IGEMM_ROW_PARAMS)
{
    int32x4_t sum[8];
    size_t g;
    int c;
#pragma GCC unroll 8
    for (c = 0; c < 8; c++) {
        sum[c] = vdupq_n_s32(0);
    }
    for (g = 0; g < groups; g++) {
        const int8x8_t a_g = vreinterpret_s8_s32(vdup_n_s32(four_bytes(a + 4 * g)));
#pragma GCC unroll 4
        for (c = 0; c < 4; c++) {
            multiply_add(sum, vld1q_s8(b + g * 64 + 16 * c), a_g, c);
        }
    }
    store_columns(acc, sum);
}
#endif
