/* The 12 x 32 GEMM register tile for AVX-512F: two packed panels side by side, one zmm row of
 * each per step, A[i][p] broadcast once and multiplied into both. 24 FMAs per 14 loads (and two
 * prefetches) leave the FMA units, not the load ports, the limit; the 16 x 16 tile before it
 * had 16 FMAs per 17 loads (bench gemm, 128 x 768 x 3072: 110 -> 124 GFLOP/s from the tile,
 * 145 with A packed at constant strides, moa/gemm_tile.h; README).
 * One prefetch per panel and step brings in the next tile's rows. The edge tile runs mr
 * accumulator rows, one panel when nr <= 16, and reads and writes Y through the mask of the
 * last panel's columns. */
#include "moa/gemm_tile.h"

#if MOA_ISA_AVX512
#include <immintrin.h>

#define ALL_COLUMNS ((__mmask16)0xFFFF)

static void store_row(float *y_row, __m512 acc, float alpha, int accumulate, __mmask16 columns)
{
    if (columns == ALL_COLUMNS) {
        const __m512 before = accumulate ? _mm512_loadu_ps(y_row) : _mm512_setzero_ps();
        _mm512_storeu_ps(y_row, _mm512_fmadd_ps(_mm512_set1_ps(alpha), acc, before));
    } else {
        const __m512 before = accumulate ? _mm512_maskz_loadu_ps(columns, y_row) : _mm512_setzero_ps();
        _mm512_mask_storeu_ps(y_row, columns, _mm512_fmadd_ps(_mm512_set1_ps(alpha), acc, before));
    }
}

/* Rows i < rows of the tile over `panels` panels (1 or 2), the last panel's columns set in
 * `last_columns`; `rows` and `panels` are constants at every call. */
MOA_GEMM_INLINE void tile_rows(int rows, int panels, __mmask16 last_columns, MOA_GEMM_TILE_PARAMS)
{
    __m512 left[MOA_GEMM_MR], right[MOA_GEMM_MR];
    size_t p;
    int i;
#pragma GCC unroll 16
    for (i = 0; i < rows; i++) {
        left[i] = _mm512_setzero_ps();
        right[i] = _mm512_setzero_ps();
    }
#pragma GCC unroll 4 /* four steps an iteration: 1-2% faster (bench gemm), 6% with all in L1 */
    for (p = 0; p < kc; p++) {
        const float *b_row = b + (ptrdiff_t)p * b_row_stride, *next_row = b_next + (ptrdiff_t)p * b_row_stride;
        const __m512 b_left = _mm512_loadu_ps(b_row);
        const __m512 b_right = panels == 2 ? _mm512_loadu_ps(b_row + b_panel_stride) : _mm512_setzero_ps();
        const float *a_col = a + (ptrdiff_t)p * a_col_stride;
        _mm_prefetch((const char *)next_row, _MM_HINT_T0);
        if (panels == 2) {
            _mm_prefetch((const char *)(next_row + b_panel_stride), _MM_HINT_T0);
        }
#pragma GCC unroll 16
        for (i = 0; i < rows; i++) {
            const __m512 a_ip = _mm512_set1_ps(a_col[i * a_row_stride]);
            left[i] = _mm512_fmadd_ps(a_ip, b_left, left[i]);
            if (panels == 2) {
                right[i] = _mm512_fmadd_ps(a_ip, b_right, right[i]);
            }
        }
    }
#pragma GCC unroll 16
    for (i = 0; i < rows; i++) {
        float *y_row = y + i * y_row_stride;
        if (panels == 2) {
            store_row(y_row, left[i], alpha, accumulate, ALL_COLUMNS);
            store_row(y_row + MOA_GEMM_NR, right[i], alpha, accumulate, last_columns);
        } else {
            store_row(y_row, left[i], alpha, accumulate, last_columns);
        }
    }
}

/* A packed by matmul.c and B's packed rows (moa/gemm_tile.h): constant strides, so every load
 * is at a fixed offset from two pointers; any other strides take the general loop. */
MOA_GEMM_INLINE void tile(int rows, int panels, __mmask16 last_columns, MOA_GEMM_TILE_PARAMS)
{
    if (MOA_GEMM_PACKED_STRIDES(a_row_stride, a_col_stride, b_row_stride)) {
        tile_rows(rows, panels, last_columns, kc, a, MOA_GEMM_KC, 1, b, MOA_GEMM_NR, b_panel_stride, alpha, y,
                  y_row_stride, accumulate, b_next);
    } else {
        tile_rows(rows, panels, last_columns, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha,
                  y, y_row_stride, accumulate, b_next);
    }
}

void moa_gemm_tile_f32_12x32_avx512(MOA_GEMM_TILE_PARAMS)
{
    tile(MOA_GEMM_MR, 2, ALL_COLUMNS, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y,
         y_row_stride, accumulate, b_next);
}

#define EDGE_ROWS(r)                                                                                                  \
    case r:                                                                                                           \
        if (nr > MOA_GEMM_NR) {                                                                                       \
            tile(r, 2, last_columns, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y,   \
                 y_row_stride, accumulate, b_next);                                                                   \
        } else {                                                                                                      \
            tile(r, 1, last_columns, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y,   \
                 y_row_stride, accumulate, b_next);                                                                   \
        }                                                                                                             \
        break

void moa_gemm_edge_f32_avx512(MOA_GEMM_EDGE_PARAMS)
{
    const size_t last = nr > MOA_GEMM_NR ? nr - MOA_GEMM_NR : nr;
    const __mmask16 last_columns = (__mmask16)((1u << last) - 1u);
    switch (mr) {
        EDGE_ROWS(1); EDGE_ROWS(2); EDGE_ROWS(3); EDGE_ROWS(4); EDGE_ROWS(5); EDGE_ROWS(6);
        EDGE_ROWS(7); EDGE_ROWS(8); EDGE_ROWS(9); EDGE_ROWS(10); EDGE_ROWS(11); EDGE_ROWS(12);
    default:
        break;
    }
}
#endif
