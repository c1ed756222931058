/* The 7 x 16 GEMM register tile for RVV 1.0: one register group per row of A holds its 16
 * accumulators, the B panel's row in another, A[i][p] a scalar operand of vfmacc.vf. The
 * group size is chosen at run time from VLEN: at VLEN 128 16 floats need LMUL=4 (7 + 1 groups
 * fill all 32 registers, so one B row at a time); at VLEN >= 256 LMUL=2 holds them, the 7
 * accumulators take 14 registers, and the loop is unrolled by 8 steps with B rows in flight.
 * The edge tile is the same with vl = nr and only its mr rows. */
#include "moa/gemm_tile.h"

#if MOA_ISA_RVV
#include <riscv_vector.h>

/* acc_i += A[i][p] * B[p][:] for the rows i < rows (a constant at every call), with
 * A[i][p] = row_i[offset]: one step of the sum, in register groups of LMUL `m`. Register
 * groups cannot sit in an array, hence seven named accumulators. */
#define MOA_RVV_STEP(m, b_row, row0, row1, row2, row3, row4, row5, row6, offset)             \
    do {                                                                                     \
        acc0 = __riscv_vfmacc_vf_f32##m(acc0, (row0)[offset], b_row, vl);                    \
        if (rows > 1) acc1 = __riscv_vfmacc_vf_f32##m(acc1, (row1)[offset], b_row, vl);      \
        if (rows > 2) acc2 = __riscv_vfmacc_vf_f32##m(acc2, (row2)[offset], b_row, vl);      \
        if (rows > 3) acc3 = __riscv_vfmacc_vf_f32##m(acc3, (row3)[offset], b_row, vl);      \
        if (rows > 4) acc4 = __riscv_vfmacc_vf_f32##m(acc4, (row4)[offset], b_row, vl);      \
        if (rows > 5) acc5 = __riscv_vfmacc_vf_f32##m(acc5, (row5)[offset], b_row, vl);      \
        if (rows > 6) acc6 = __riscv_vfmacc_vf_f32##m(acc6, (row6)[offset], b_row, vl);      \
    } while (0)

/* One step for any strides of A: A[i][p] = a[i * a_row_stride + p * a_col_stride]. */
#define MOA_RVV_STRIDED_STEP(m)                                                                                  \
    do {                                                                                                         \
        const vfloat32##m##_t b_row = __riscv_vle32_v_f32##m(b + (ptrdiff_t)p * b_row_stride, vl);                \
        const float *a_col = a + (ptrdiff_t)p * a_col_stride;                                                    \
        MOA_RVV_STEP(m, b_row, a_col, a_col + a_row_stride, a_col + 2 * a_row_stride, a_col + 3 * a_row_stride,  \
                     a_col + 4 * a_row_stride, a_col + 5 * a_row_stride, a_col + 6 * a_row_stride, 0);           \
    } while (0)

/* y_row = alpha * acc + (accumulate ? y_row : 0), for each of the rows. */
#define MOA_RVV_STORE_ROW(m, i, acc)                                                                             \
    do {                                                                                                         \
        float *y_row = y + (i) * y_row_stride;                                                                   \
        const vfloat32##m##_t before =                                                                           \
            accumulate ? __riscv_vle32_v_f32##m(y_row, vl) : __riscv_vfmv_v_f_f32##m(0.0f, vl);                   \
        __riscv_vse32_v_f32##m(y_row, __riscv_vfmacc_vf_f32##m(before, alpha, acc, vl), vl);                     \
    } while (0)
#define MOA_RVV_STORE_ROWS(m)                                                                                    \
    do {                                                                                                         \
        MOA_RVV_STORE_ROW(m, 0, acc0);                                                                           \
        if (rows > 1) MOA_RVV_STORE_ROW(m, 1, acc1);                                                             \
        if (rows > 2) MOA_RVV_STORE_ROW(m, 2, acc2);                                                             \
        if (rows > 3) MOA_RVV_STORE_ROW(m, 3, acc3);                                                             \
        if (rows > 4) MOA_RVV_STORE_ROW(m, 4, acc4);                                                             \
        if (rows > 5) MOA_RVV_STORE_ROW(m, 5, acc5);                                                             \
        if (rows > 6) MOA_RVV_STORE_ROW(m, 6, acc6);                                                             \
    } while (0)

/* VLEN 128, LMUL 4: rows i < rows, vl <= 16 columns, one step at a time. */
MOA_GEMM_INLINE void tile_rows_m4(int rows, size_t vl, MOA_GEMM_TILE_PARAMS)
{
    vfloat32m4_t acc0 = __riscv_vfmv_v_f_f32m4(0.0f, vl), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    vfloat32m4_t acc4 = acc0, acc5 = acc0, acc6 = acc0;
    size_t p;
    (void)b_next; /* the cores' own prefetchers follow the panel stream (not measured here) */
    (void)b_panel_stride; /* a tile is one panel wide */
    for (p = 0; p < kc; p++) {
        MOA_RVV_STRIDED_STEP(m4);
    }
    MOA_RVV_STORE_ROWS(m4);
}

/* VLEN >= 256, LMUL 2: rows i < rows, vl <= 16 columns. */
MOA_GEMM_INLINE void tile_rows_m2(int rows, size_t vl, MOA_GEMM_TILE_PARAMS)
{
    vfloat32m2_t acc0 = __riscv_vfmv_v_f_f32m2(0.0f, vl), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    vfloat32m2_t acc4 = acc0, acc5 = acc0, acc6 = acc0;
    size_t p = 0;
    (void)b_next, (void)b_panel_stride;
    /* Row-major A: each row's pointer moves by 8 floats per 8 steps and the steps read
     * A[i][p .. p + 7] at immediate offsets from it, so a step costs one scalar load per row
     * and no address arithmetic of A's. Rows past `rows` alias row 0 and are never read.
     * Each accumulator still sums over p in order. */
    if (a_col_stride == 1) {
        const float *row0 = a, *row1 = rows > 1 ? a + a_row_stride : a, *row2 = rows > 2 ? a + 2 * a_row_stride : a;
        const float *row3 = rows > 3 ? a + 3 * a_row_stride : a, *row4 = rows > 4 ? a + 4 * a_row_stride : a;
        const float *row5 = rows > 5 ? a + 5 * a_row_stride : a, *row6 = rows > 6 ? a + 6 * a_row_stride : a;
        for (; p + 8 <= kc; p += 8) {
#define MOA_RVV_ROW_MAJOR_STEP(s)                                                                               \
    do {                                                                                                        \
        const vfloat32m2_t b_row = __riscv_vle32_v_f32m2(b + (ptrdiff_t)(p + (s)) * b_row_stride, vl);          \
        MOA_RVV_STEP(m2, b_row, row0 + p, row1 + p, row2 + p, row3 + p, row4 + p, row5 + p, row6 + p, s);       \
    } while (0)
            MOA_RVV_ROW_MAJOR_STEP(0);
            MOA_RVV_ROW_MAJOR_STEP(1);
            MOA_RVV_ROW_MAJOR_STEP(2);
            MOA_RVV_ROW_MAJOR_STEP(3);
            MOA_RVV_ROW_MAJOR_STEP(4);
            MOA_RVV_ROW_MAJOR_STEP(5);
            MOA_RVV_ROW_MAJOR_STEP(6);
            MOA_RVV_ROW_MAJOR_STEP(7);
#undef MOA_RVV_ROW_MAJOR_STEP
        }
    }
    for (; p < kc; p++) { /* any A strides, and the last kc % 8 steps of a row-major A */
        MOA_RVV_STRIDED_STEP(m2);
    }
    MOA_RVV_STORE_ROWS(m2);
}

/* Each LMUL's tile and edge in a function of its own (not inlined into the dispatch below),
 * so that the VLEN 128 path keeps the stack frame and registers it had alone. */
#if defined(__GNUC__)
#define MOA_RVV_NOINLINE __attribute__((noinline))
#else
#define MOA_RVV_NOINLINE
#endif

static MOA_RVV_NOINLINE void tile_m4(MOA_GEMM_TILE_PARAMS)
{
    tile_rows_m4(7, __riscv_vsetvl_e32m4(MOA_GEMM_NR), kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y,
                 y_row_stride, accumulate, b_next);
}

static MOA_RVV_NOINLINE void tile_m2(MOA_GEMM_TILE_PARAMS)
{
    tile_rows_m2(7, __riscv_vsetvl_e32m2(MOA_GEMM_NR), kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y,
                 y_row_stride, accumulate, b_next);
}

#define EDGE_ROWS(tile_rows, r)                                                                               \
    case r:                                                                                                   \
        tile_rows(r, vl, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next); \
        break
#define EDGE(tile_rows)                                                                                        \
    switch (mr) {                                                                                              \
        EDGE_ROWS(tile_rows, 1); EDGE_ROWS(tile_rows, 2); EDGE_ROWS(tile_rows, 3); EDGE_ROWS(tile_rows, 4);   \
        EDGE_ROWS(tile_rows, 5); EDGE_ROWS(tile_rows, 6); EDGE_ROWS(tile_rows, 7);                            \
    default:                                                                                                   \
        break;                                                                                                 \
    }

static MOA_RVV_NOINLINE void edge_m4(MOA_GEMM_EDGE_PARAMS)
{
    const size_t vl = __riscv_vsetvl_e32m4(nr);
    EDGE(tile_rows_m4)
}

static MOA_RVV_NOINLINE void edge_m2(MOA_GEMM_EDGE_PARAMS)
{
    const size_t vl = __riscv_vsetvl_e32m2(nr);
    EDGE(tile_rows_m2)
}

/* Whether 16 floats fit an LMUL=2 group: VLEN >= 256. */
static int wide_vectors(void)
{
    return __riscv_vsetvlmax_e32m2() >= MOA_GEMM_NR;
}

void moa_gemm_tile_f32_7x16_rvv(MOA_GEMM_TILE_PARAMS)
{
    if (wide_vectors()) {
        tile_m2(kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next);
    } else {
        tile_m4(kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next);
    }
}

void moa_gemm_edge_f32_rvv(MOA_GEMM_EDGE_PARAMS)
{
    if (wide_vectors()) {
        edge_m2(kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next, mr, nr);
    } else {
        edge_m4(kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next, mr, nr);
    }
}
#endif
