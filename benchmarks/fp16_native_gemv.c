/* Experiment, not part of the runtime (issue 14, item 3: native fp16 arithmetic "as an option"):
 * a decode-step GEMV y = x W (K x N, M = 1) computed five ways, for instruction counts under qemu
 * and for accuracy; benchmarks/fp16_native_gemv.py builds it for each core and runs it.
 *
 *     argv: VARIANT K N INPUT [quiet]     INPUT: x (K floats) then W (K x N floats, row-major)
 *     stdout: y (N floats), unless "quiet"
 *
 *     none    the setup alone (packing W), subtracted from the others' counts
 *     f32     moa_gemm_packed_f32: float32 weights
 *     i8      moa_gemm_qw_f32, MOA_QW_I8 (arbitrary integers: instruction count only)
 *     f16     moa_gemm_qw_f32, MOA_QW_F16: halves widened in registers, float32 FMA (the runtime's)
 *     f16n    moa_gemm_qw_f32, MOA_QW_F16_NATIVE: the runtime's native kernel (FEAT_FP16 or Zvfh)
 *     h16blk  x rounded to halves, vfmaq_f16 (FEAT_FP16) over blocks of 16 rows, blocks summed in float32
 *     h16     x rounded to halves, float16 sums over all of K
 *
 * The last two need __ARM_FEATURE_FP16_VECTOR_ARITHMETIC (-mcpu=cortex-a76: the rpi5 board; the A76 has
 * no FEAT_FHM, so no FMLAL: float16 products cannot accumulate in float32 in one instruction).
 *
 * K 576, N 1536 (SmolLM2-135M's MLP), instructions per weight / max error over sum |x w|:
 *     cortex-a76  f32 2.04 / 1.0e-7   f16 0.92 / 1.3e-7   h16blk 0.55 / 1.2e-4   h16 0.46 / 1.9e-3
 *     cortex-a72  f32 2.04            f16 0.92
 *     c908 (rvv)  f32 1.77            f16 1.12 (integer-lane widening; the scalar reference: 20.8)
 *     x60 (rvv, VLEN 256, zvfh)  f32 1.33   f16 0.65 (vfwcvt)   f16n 0.59 / 1.2e-4 (the runtime's native kernel)
 *     cortex-a76  f16n 0.76 / 1.2e-4 (the runtime's native kernel: h16blk behind the panel loop)
 * Native float16 saves 40% of the f16 kernel's instructions for a thousand times its error (x itself
 * is rounded to 11 bits): outside the numerical contract, an option at most. */
#if defined(__aarch64__)
#include <arm_neon.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "moa/matmul.h"
#include "moa/qmatmul.h"
#include "moa/half.h"

#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
static void native(size_t K, size_t N, const float *x, const uint16_t *w16, float *y, size_t block)
{
    size_t q, p, b0;
    float16_t *xh = malloc(K * sizeof *xh);
    for (p = 0; p < K; p++) xh[p] = (float16_t)x[p];
    for (q = 0; q * 16 < N; q++) {
        const float16_t *panel = (const float16_t *)(w16 + q * K * 16);
        float32x4_t s[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
        for (b0 = 0; b0 < K; b0 += block) {
            const size_t end = K - b0 < block ? K : b0 + block;
            float16x8_t a0 = vdupq_n_f16(0), a1 = vdupq_n_f16(0);
            for (p = b0; p < end; p++) {
                a0 = vfmaq_n_f16(a0, vld1q_f16(panel + p * 16), xh[p]);
                a1 = vfmaq_n_f16(a1, vld1q_f16(panel + p * 16 + 8), xh[p]);
            }
            s[0] = vaddq_f32(s[0], vcvt_f32_f16(vget_low_f16(a0)));
            s[1] = vaddq_f32(s[1], vcvt_high_f32_f16(a0));
            s[2] = vaddq_f32(s[2], vcvt_f32_f16(vget_low_f16(a1)));
            s[3] = vaddq_f32(s[3], vcvt_high_f32_f16(a1));
        }
        {
            float out[16];
            int c;
            for (c = 0; c < 4; c++) vst1q_f32(out + 4 * c, s[c]);
            for (c = 0; c < 16 && q * 16 + c < N; c++) y[q * 16 + c] = out[c];
        }
    }
    free(xh);
}
#endif

int main(int argc, char **argv)
{
    const char *variant = argv[1];
    size_t K = strtoul(argv[2], NULL, 10), N = strtoul(argv[3], NULL, 10), p, j, panels = (N + 15) / 16;
    float *x = malloc(K * 4), *w = malloc(K * N * 4), *y = calloc(N, 4), *packed = calloc(panels * 16 * K, 4);
    uint16_t *w16 = calloc(panels * 16 * K, 2);
    moa_matrix_f32 a = {0}, none = {0};
    FILE *in = fopen(argv[4], "rb");

    if (!in || fread(x, 4, K, in) != K || fread(w, 4, K * N, in) != K * N) return 2;
    a.data = x, a.row_stride = (ptrdiff_t)K, a.col_stride = 1;
    for (j = 0; j < N; j++)
        for (p = 0; p < K; p++) {
            packed[(j / 16 * K + p) * 16 + j % 16] = w[p * N + j];
            w16[(j / 16 * K + p) * 16 + j % 16] = moa_f32_to_f16(w[p * N + j]);
        }
    if (!strcmp(variant, "f32")) {
        moa_gemm_packed_f32(1, N, K, 1.0f, a, packed, 0.0f, none, y, (ptrdiff_t)N);
    } else if (!strcmp(variant, "i8")) {
        static float scale[4096];
        int8_t *q8 = calloc(panels * 16 * K, 1);
        moa_qweights q = {MOA_QW_I8, 0, NULL, NULL, NULL, 0};
        for (p = 0; p < panels * 16 * K; p++) q8[p] = (int8_t)(p % 255 - 127);
        for (p = 0; p < panels * 16; p++) scale[p] = 0.01f;
        q.block = K, q.q = q8, q.scale = scale;
        moa_gemm_qw_f32(1, N, K, 1.0f, a, q, 0.0f, none, y, (ptrdiff_t)N);
    } else if (!strcmp(variant, "f16") || !strcmp(variant, "f16n")) {
        moa_qweights q = {MOA_QW_F16, 0, NULL, NULL, NULL, 0};
        q.type = strcmp(variant, "f16n") ? MOA_QW_F16 : MOA_QW_F16_NATIVE;
        q.block = K, q.q = w16;
        moa_gemm_qw_f32(1, N, K, 1.0f, a, q, 0.0f, none, y, (ptrdiff_t)N);
    }
#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
    else if (!strcmp(variant, "h16blk")) {
        native(K, N, x, w16, y, 16);
    } else if (!strcmp(variant, "h16")) {
        native(K, N, x, w16, y, K);
    }
#endif
    if (argc == 5) fwrite(y, 4, N, stdout);
    return 0;
}
