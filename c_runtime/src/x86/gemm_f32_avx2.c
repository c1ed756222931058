/* The 6 x 16 GEMM register tile for AVX2 + FMA: two ymm accumulators per row of A (12 of
 * the 16 registers), the B panel's row in two ymm, A[i][p] broadcast. The edge tile runs mr
 * rows, only the low ymm of each when nr <= 8, and reads and writes Y through a lane mask. */
#include "moa/gemm_tile.h"

#if MOA_ISA_AVX2
#include <immintrin.h>

/* Lanes j < n of a ymm as an AVX2 load/store mask (all bits of a lane set). */
static __m256i first_lanes(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* y[j] = alpha * acc[j] + (accumulate ? y[j] : 0) for j < n (n <= 8), lanes past n untouched. */
static void store_lanes(float *y, __m256 acc, float alpha, int accumulate, int n)
{
    const __m256 va = _mm256_set1_ps(alpha);
    if (n >= 8) {
        _mm256_storeu_ps(y, _mm256_fmadd_ps(va, acc, accumulate ? _mm256_loadu_ps(y) : _mm256_setzero_ps()));
    } else {
        const __m256i mask = first_lanes(n);
        const __m256 before = accumulate ? _mm256_maskload_ps(y, mask) : _mm256_setzero_ps();
        _mm256_maskstore_ps(y, mask, _mm256_fmadd_ps(va, acc, before));
    }
}

/* Rows i < rows, columns j < nr: the high ymm only when wide (nr > 8); `rows` and `wide` are
 * constants at every call. */
MOA_GEMM_INLINE void tile_rows(int rows, int wide, int nr, MOA_GEMM_TILE_PARAMS)
{
    __m256 lo[6], hi[6];
    size_t p;
    int i;
    (void)b_panel_stride; /* a tile is one panel wide */
#pragma GCC unroll 6
    for (i = 0; i < rows; i++) {
        lo[i] = _mm256_setzero_ps();
        hi[i] = _mm256_setzero_ps();
    }
#pragma GCC unroll 4 /* four steps an iteration: 1-3% faster (bench gemm, -march=x86-64-v3) */
    for (p = 0; p < kc; p++) {
        const float *b_row = b + (ptrdiff_t)p * b_row_stride;
        const __m256 b_lo = _mm256_loadu_ps(b_row), b_hi = wide ? _mm256_loadu_ps(b_row + 8) : _mm256_setzero_ps();
        const float *a_col = a + (ptrdiff_t)p * a_col_stride;
        _mm_prefetch((const char *)(b_next + (ptrdiff_t)p * b_row_stride), _MM_HINT_T0);
#pragma GCC unroll 6
        for (i = 0; i < rows; i++) {
            const __m256 a_ip = _mm256_broadcast_ss(&a_col[i * a_row_stride]);
            lo[i] = _mm256_fmadd_ps(a_ip, b_lo, lo[i]);
            if (wide) {
                hi[i] = _mm256_fmadd_ps(a_ip, b_hi, hi[i]);
            }
        }
    }
#pragma GCC unroll 6
    for (i = 0; i < rows; i++) {
        float *y_row = y + i * y_row_stride;
        store_lanes(y_row, lo[i], alpha, accumulate, nr);
        if (wide) {
            store_lanes(y_row + 8, hi[i], alpha, accumulate, nr - 8);
        }
    }
}

/* A packed by matmul.c and B's packed rows (moa/gemm_tile.h): constant strides, so every load
 * is at a fixed offset from two pointers; any other strides take the general loop. */
MOA_GEMM_INLINE void tile(int rows, int wide, int nr, MOA_GEMM_TILE_PARAMS)
{
    if (MOA_GEMM_PACKED_STRIDES(a_row_stride, a_col_stride, b_row_stride)) {
        tile_rows(rows, wide, nr, kc, a, MOA_GEMM_KC, 1, b, MOA_GEMM_NR, b_panel_stride, alpha, y, y_row_stride,
                  accumulate, b_next);
    } else {
        tile_rows(rows, wide, nr, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y,
                  y_row_stride, accumulate, b_next);
    }
}

void moa_gemm_tile_f32_6x16_avx2(MOA_GEMM_TILE_PARAMS)
{
    tile(6, 1, 16, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, accumulate, b_next);
}

#define EDGE_ROWS(r)                                                                                             \
    case r:                                                                                                      \
        if (nr > 8) {                                                                                            \
            tile(r, 1, (int)nr, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, \
                      accumulate, b_next);                                                                       \
        } else {                                                                                                 \
            tile(r, 0, (int)nr, kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride, \
                      accumulate, b_next);                                                                       \
        }                                                                                                        \
        break

void moa_gemm_edge_f32_avx2(MOA_GEMM_EDGE_PARAMS)
{
    switch (mr) {
        EDGE_ROWS(1); EDGE_ROWS(2); EDGE_ROWS(3); EDGE_ROWS(4); EDGE_ROWS(5); EDGE_ROWS(6);
    default:
        break;
    }
}
#endif
