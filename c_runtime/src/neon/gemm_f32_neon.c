/* The 5 x 16 GEMM register tile for AArch64 NEON: four q accumulators per row of A (20 of
 * the 32 registers), the B panel's row in four q, and per row of A a fifth q: A[i][p .. p + 3]
 * when A is row-major (multiplied by lane), else A[i][p] broadcast (a sixth row would spill:
 * its A values need registers too). The edge tile runs mr rows and only the q registers that
 * hold a column < nr; the last, partly outside Y, goes through a small copy. */
#include "moa/gemm_tile.h"

#if MOA_ISA_NEON
#include <arm_neon.h>

/* GCC's first scheduling pass (before register allocation) hoists the 4 steps' 16 loads of B
 * above the multiplies; with the 20 accumulators and 5 vectors of A that is 41 live q
 * registers of 32, and the loop spills to the stack. Without that pass the loads stay next
 * to their multiplies (the second pass, after allocation, still interleaves them). */
#if defined(__GNUC__) && !defined(__clang__)
#define MOA_NEON_NO_PRESCHEDULE __attribute__((optimize("no-schedule-insns")))
#else
#define MOA_NEON_NO_PRESCHEDULE
#endif

/* y[j] = alpha * acc[j] + (accumulate ? y[j] : 0) for j < n (n <= 4). */
static void store_lanes(float *y, float32x4_t acc, float alpha, int accumulate, int n)
{
    float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int j;
    if (n >= 4) {
        const float32x4_t before = accumulate ? vld1q_f32(y) : vdupq_n_f32(0.0f);
        vst1q_f32(y, vfmaq_n_f32(before, acc, alpha));
        return;
    }
    for (j = 0; j < n && accumulate; j++) {
        part[j] = y[j];
    }
    vst1q_f32(part, vfmaq_n_f32(vld1q_f32(part), acc, alpha));
    for (j = 0; j < n; j++) {
        y[j] = part[j];
    }
}

/* Rows i < rows, q registers v < vecs (columns j < nr <= 4 vecs); `rows` and `vecs` are
 * constants at every call. */
MOA_GEMM_INLINE void tile_rows(int rows, int vecs, int nr, MOA_GEMM_TILE_PARAMS)
{
    float32x4_t acc[5][4];
    size_t p = 0;
    int i, v;
    (void)b_next; /* the cores' own prefetchers follow the panel stream (not measured here) */
    (void)b_panel_stride; /* a tile is one panel wide */
#pragma GCC unroll 5
    for (i = 0; i < rows; i++) {
#pragma GCC unroll 4
        for (v = 0; v < vecs; v++) {
            acc[i][v] = vdupq_n_f32(0.0f);
        }
    }
    /* Row-major A: one load brings A[i][p .. p + 3], and each of the 4 steps multiplies B's
     * row by one lane of it (fmla by element), so a row of A costs one load per 4 steps and
     * no address of its own per step. Every accumulator still sums over p in order. */
    if (a_col_stride == 1) {
        for (; p + 4 <= kc; p += 4) {
            const float *b_rows = b + (ptrdiff_t)p * b_row_stride;
            float32x4_t a_i[5], b_v[4];
#pragma GCC unroll 5
            for (i = 0; i < rows; i++) {
                a_i[i] = vld1q_f32(a + i * a_row_stride + p);
            }
#define MOA_NEON_STEP(lane)                                                            \
    do {                                                                               \
        _Pragma("GCC unroll 4") for (v = 0; v < vecs; v++) {                           \
            b_v[v] = vld1q_f32(b_rows + (lane) * b_row_stride + 4 * v);                \
        }                                                                              \
        _Pragma("GCC unroll 5") for (i = 0; i < rows; i++) {                           \
            _Pragma("GCC unroll 4") for (v = 0; v < vecs; v++) {                       \
                acc[i][v] = vfmaq_laneq_f32(acc[i][v], b_v[v], a_i[i], (lane));        \
            }                                                                          \
        }                                                                              \
    } while (0)
            MOA_NEON_STEP(0);
            MOA_NEON_STEP(1);
            MOA_NEON_STEP(2);
            MOA_NEON_STEP(3);
#undef MOA_NEON_STEP
        }
    }
    for (; p < kc; p++) { /* any A strides, and the last kc % 4 steps of a row-major A */
        const float *b_row = b + (ptrdiff_t)p * b_row_stride;
        float32x4_t b_v[4];
        const float *a_col = a + (ptrdiff_t)p * a_col_stride;
#pragma GCC unroll 4
        for (v = 0; v < vecs; v++) {
            b_v[v] = vld1q_f32(b_row + 4 * v);
        }
#pragma GCC unroll 5
        for (i = 0; i < rows; i++) {
            const float32x4_t a_ip = vld1q_dup_f32(&a_col[i * a_row_stride]);
#pragma GCC unroll 4
            for (v = 0; v < vecs; v++) {
                acc[i][v] = vfmaq_f32(acc[i][v], a_ip, b_v[v]);
            }
        }
    }
#pragma GCC unroll 5
    for (i = 0; i < rows; i++) {
        float *y_row = y + i * y_row_stride;
#pragma GCC unroll 4
        for (v = 0; v < vecs; v++) {
            store_lanes(y_row + 4 * v, acc[i][v], alpha, accumulate, nr - 4 * v);
        }
    }
}

/* All 16 columns. A packed panel's rows are 16 floats apart: with that stride a constant, B's
 * rows load in pairs of q registers at immediate offsets (ldp), half the loads. */
MOA_GEMM_INLINE void full_width_rows(int rows, MOA_GEMM_TILE_PARAMS)
{
    if (b_row_stride == MOA_GEMM_NR) {
        tile_rows(rows, 4, 16, kc, a, a_row_stride, a_col_stride, b, MOA_GEMM_NR, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next);
    } else {
        tile_rows(rows, 4, 16, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next);
    }
}

MOA_NEON_NO_PRESCHEDULE void moa_gemm_tile_f32_5x16_neon(MOA_GEMM_TILE_PARAMS)
{
    full_width_rows(5, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next);
}

/* The rows r of an edge, with as many q registers as its columns need. */
MOA_GEMM_INLINE void edge_rows(int r, int nr, MOA_GEMM_TILE_PARAMS)
{
    switch ((nr + 3) / 4) {
    case 1:
        tile_rows(r, 1, nr, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next);
        break;
    case 2:
        tile_rows(r, 2, nr, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next);
        break;
    case 3:
        tile_rows(r, 3, nr, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next);
        break;
    default:
        if (nr == 16) { /* the bottom edge */
            full_width_rows(r, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next);
        } else {
            tile_rows(r, 4, nr, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next);
        }
        break;
    }
}

#define EDGE_ROWS(r)                                                                                                \
    case r:                                                                                                         \
        edge_rows(r, (int)nr, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next); \
        break

MOA_NEON_NO_PRESCHEDULE void moa_gemm_edge_f32_neon(MOA_GEMM_EDGE_PARAMS)
{
    switch (mr) {
        EDGE_ROWS(1); EDGE_ROWS(2); EDGE_ROWS(3); EDGE_ROWS(4); EDGE_ROWS(5);
    default:
        break;
    }
}
#endif
