/* The 5 x 16 GEMM register tile for AArch64 NEON: four q accumulators per row of A (20 of
 * the 32 registers), the B panel's row in four q, A[i][p] in a fifth (a sixth row would
 * spill: its A values need registers too). */
#include "moa/gemm_tile.h"

#if MOA_ISA_NEON
#include <arm_neon.h>

void moa_gemm_tile_f32_5x16_neon(MOA_GEMM_TILE_PARAMS)
{
    float32x4_t acc[5][4];
    size_t p;
    int i, v;
#pragma GCC unroll 5
    for (i = 0; i < 5; i++) {
#pragma GCC unroll 4
        for (v = 0; v < 4; v++) {
            acc[i][v] = vdupq_n_f32(0.0f);
        }
    }
    for (p = 0; p < kc; p++) {
        const float *b_row = b + (ptrdiff_t)p * b_row_stride;
        const float32x4_t b0 = vld1q_f32(b_row), b1 = vld1q_f32(b_row + 4);
        const float32x4_t b2 = vld1q_f32(b_row + 8), b3 = vld1q_f32(b_row + 12);
        const float *a_col = a + (ptrdiff_t)p * a_col_stride;
#pragma GCC unroll 5
        for (i = 0; i < 5; i++) {
            const float32x4_t a_ip = vld1q_dup_f32(&a_col[i * a_row_stride]);
            acc[i][0] = vfmaq_f32(acc[i][0], a_ip, b0);
            acc[i][1] = vfmaq_f32(acc[i][1], a_ip, b1);
            acc[i][2] = vfmaq_f32(acc[i][2], a_ip, b2);
            acc[i][3] = vfmaq_f32(acc[i][3], a_ip, b3);
        }
    }
#pragma GCC unroll 5
    for (i = 0; i < 5; i++) {
        float *y_row = y + i * y_row_stride;
#pragma GCC unroll 4
        for (v = 0; v < 4; v++) {
            const float32x4_t before = accumulate ? vld1q_f32(y_row + 4 * v) : vdupq_n_f32(0.0f);
            vst1q_f32(y_row + 4 * v, vfmaq_n_f32(before, acc[i][v], alpha));
        }
    }
}
#endif
