/* moa_gemm_f32 and moa_gemm_packed_f32: Goto's loop order around one register tile.
 *
 * A block of NC columns when the product is wider (matmul.h), a KC-deep slice of the sum, an
 * MC-tall block of rows of A (kept in L2), the NT-wide panels
 * of one tile of B (KC x 16 each, kept in L1), then MR x NT register tiles (moa/gemm_tile.h,
 * one per ISA) and, at the bottom and right edges, the edge tile of the rows and columns left.
 * Weights arrive packed (the panel layout of matmul.h, made at conversion); any other B is
 * read in place when a tile's columns are contiguous and copied to stack panels when they
 * are not. Y = beta * C is written first, so every slice of the sum only adds to Y. */
#include <string.h>

#include "moa/matmul.h"
#include "moa/gemm_tile.h"
#include "moa/qgemm_panel.h"
#include "moa/qmatmul.h"

#define MOA_GEMM_MC (MOA_GEMM_MR * MOA_GEMM_MC_TILES)

#if MOA_GEMM_NC % MOA_GEMM_NT != 0
#error "MOA_GEMM_NC must be a whole number of register tiles"
#endif

/* Where B comes from: a packed copy (from its row first_row on, of panels packed_rows tall),
 * quantized weights (qmatmul.h), a gathering function (its columns counted from first_col), or a
 * strided view. */
typedef struct {
    const float *packed;
    size_t packed_rows;
    const moa_qweights *quantized;
    moa_gemm_gather gather;
    const void *gather_ctx;
    size_t first_col;
    moa_matrix_f32 view;
} b_source;

static size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

static int half_values(const moa_qweights *w)
{
    return w->type == MOA_QW_F16 || w->type == MOA_QW_F16_NATIVE;
}

/* Bytes of a panel's scales (or offsets) for `blocks` blocks. */
static size_t panel_scale_bytes(const moa_qweights *w, size_t blocks)
{
    return w->half_scales == MOA_QS_SUPER ? MOA_QS_SUPER_BYTES(blocks)
                                          : blocks * MOA_GEMM_NR * (w->half_scales ? sizeof(uint16_t) : sizeof(float));
}

/* Panel `panel` of quantized weights: its values, scales and offsets. */
static moa_qweights quantized_panel(const moa_qweights *w, size_t K, size_t panel)
{
    const size_t rows = MOA_QW_ROWS(K, w->block), blocks = MOA_QW_BLOCKS(K, w->block);
    const size_t panel_bytes = w->type == MOA_QW_U4 ? rows / 2 * MOA_GEMM_NR : rows * MOA_GEMM_NR * (half_values(w) ? 2 : 1);
    const size_t scales = panel_scale_bytes(w, blocks);
    moa_qweights p = *w;
    p.q = (const uint8_t *)w->q + panel * panel_bytes;
    p.scale = w->scale != NULL ? (const uint8_t *)w->scale + panel * scales : NULL; /* float16 weights have none */
    p.offset = w->offset != NULL ? (const uint8_t *)w->offset + panel * scales : NULL;
    return p;
}

/* The panel kernels of the weights' type (moa/qgemm_panel.h). */
static void quantized_dot(const moa_qweights *w, size_t K, const float *x, ptrdiff_t x_stride, float *y16)
{
    void (*dot)(MOA_QW_DOT_PARAMS) = w->type == MOA_QW_I8 ? moa_qw_dot_i8
                                     : w->type == MOA_QW_U4 ? moa_qw_dot_u4
                                     : w->type == MOA_QW_F16_NATIVE ? moa_qw_dot_f16_native : moa_qw_dot_f16;
    dot(K, w->block, x, x_stride, w->q, w->scale, w->offset, w->half_scales, w->zero, y16);
}

static void quantized_dequant(const moa_qweights *w, size_t p0, size_t kc, float *out)
{
    void (*dequant)(MOA_QW_DEQUANT_PARAMS) = w->type == MOA_QW_I8 ? moa_qw_dequant_i8
                                             : w->type == MOA_QW_U4 ? moa_qw_dequant_u4 : moa_qw_dequant_f16;
    dequant(w->block, w->q, w->scale, w->offset, w->half_scales, w->zero, p0, kc, out);
}

static float at(moa_matrix_f32 m, size_t i, size_t j)
{
    return m.data[(ptrdiff_t)i * m.row_stride + (ptrdiff_t)j * m.col_stride];
}

#if MOA_ISA_SCALAR
/* The reference tile: kc rank-1 updates, a column of A times a row of B, over mr x nr. */
void moa_gemm_edge_f32_scalar(MOA_GEMM_EDGE_PARAMS)
{
    float acc[MOA_GEMM_MR][MOA_GEMM_NR] = {{0.0f}};
    size_t i, j, p;
    (void)b_next, (void)b_panel_stride; /* a tile is one panel wide */
    for (p = 0; p < kc; p++) {
        const float *b_row = b + (ptrdiff_t)p * b_row_stride;
        for (i = 0; i < mr; i++) {
            const float a_ip = a[(ptrdiff_t)i * a_row_stride + (ptrdiff_t)p * a_col_stride];
            for (j = 0; j < MOA_GEMM_NR; j++) {
                acc[i][j] += a_ip * b_row[j];
            }
        }
    }
    for (i = 0; i < mr; i++) {
        float *y_row = y + (ptrdiff_t)i * y_row_stride;
        for (j = 0; j < nr; j++) {
            y_row[j] = alpha * acc[i][j] + (accumulate ? y_row[j] : 0.0f);
        }
    }
}

void moa_gemm_tile_f32_4x16_scalar(MOA_GEMM_TILE_PARAMS)
{
    moa_gemm_edge_f32_scalar(kc, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, alpha, y, y_row_stride,
                             accumulate, b_next, MOA_GEMM_MR, MOA_GEMM_NR);
}
#endif

/* Rows p0 .. p0 + kc of B's panels q .. q + MOA_GEMM_TILE_PANELS - 1 (those that hold a column
 * < N) as (pointer, row stride, panel stride): in place when they are packed, or the tile's
 * contiguous columns of a view, else made in `buffer` (a kc x 16 panel every MOA_GEMM_KC x 16
 * floats, zero past column N). */
static const float *tile_panels(b_source b, size_t K, size_t N, size_t q, size_t p0, size_t kc, float *buffer,
                                ptrdiff_t *row_stride, ptrdiff_t *panel_stride)
{
    const size_t j0 = q * MOA_GEMM_NR, nt = min_size(MOA_GEMM_NT, N - j0);
    size_t t, p, j;
    *row_stride = MOA_GEMM_NR;
    if (b.packed != NULL) {
        *panel_stride = (ptrdiff_t)(b.packed_rows * MOA_GEMM_NR);
        return b.packed + (q * b.packed_rows + p0) * MOA_GEMM_NR;
    }
    *panel_stride = MOA_GEMM_KC * MOA_GEMM_NR;
    if (b.view.data != NULL && b.view.col_stride == 1 && nt == MOA_GEMM_NT) {
        *row_stride = b.view.row_stride, *panel_stride = MOA_GEMM_NR;
        return b.view.data + (ptrdiff_t)p0 * b.view.row_stride + (ptrdiff_t)j0;
    }
    for (t = 0; t * MOA_GEMM_NR < nt; t++) {
        const size_t col = j0 + t * MOA_GEMM_NR, nr = min_size(MOA_GEMM_NR, N - col);
        float *panel = buffer + t * MOA_GEMM_KC * MOA_GEMM_NR;
        if (b.quantized != NULL) {
            const moa_qweights w = quantized_panel(b.quantized, K, q + t);
            quantized_dequant(&w, p0, kc, panel);
        } else if (b.gather != NULL) {
            b.gather(b.gather_ctx, p0, kc, b.first_col + col, nr, panel);
        } else {
            for (p = 0; p < kc; p++) {
                for (j = 0; j < MOA_GEMM_NR; j++) {
                    panel[p * MOA_GEMM_NR + j] = j < nr ? at(b.view, p0 + p, col + j) : 0.0f;
                }
            }
        }
    }
    return buffer;
}

/* Fewer rows than one register tile (a decode step's GEMV) over quantized panels: each panel is
 * streamed once, over the whole of K, the scales applied per block to sums of x * q; Y holds
 * beta * C already when `accumulate`. (Packed float32 panels take the edge tile: mr rows,
 * no wider.) */
static void gemv_quantized(size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a, const moa_qweights *quantized,
                           int accumulate, float *y, ptrdiff_t y_row_stride)
{
    size_t q, i, j;
    for (q = 0; q * MOA_GEMM_NR < N; q++) {
        const size_t j0 = q * MOA_GEMM_NR, nr = min_size(MOA_GEMM_NR, N - j0);
        const moa_qweights w = quantized_panel(quantized, K, q);
        for (i = 0; i < M; i++) {
            float *y_row = y + (ptrdiff_t)i * y_row_stride + (ptrdiff_t)j0;
            float sum[MOA_GEMM_NR];
            quantized_dot(&w, K, a.data + (ptrdiff_t)i * a.row_stride, a.col_stride, sum);
            for (j = 0; j < nr; j++) {
                y_row[j] = alpha * sum[j] + (accumulate ? y_row[j] : 0.0f);
            }
        }
    }
}

static moa_status check_gemm(size_t M, size_t N, size_t K, moa_matrix_f32 a, b_source b, const float *y,
                             ptrdiff_t y_row_stride)
{
    if (M == 0 || N == 0) {
        return MOA_OK;
    }
    if (y == NULL ||
        (K > 0 && (a.data == NULL || (b.packed == NULL && b.quantized == NULL && b.gather == NULL && b.view.data == NULL)))) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    return M > 1 && y_row_stride < (ptrdiff_t)N ? MOA_ERR_BAD_PARAMS : MOA_OK;
}

/* `body` for j = 0 .. n - 1, in blocks of 16 of a constant trip count: gcc -O2 vectorises only
 * such loops (no epilogue at its cheap cost model). */
#define EACH_COLUMN(j, n, body)                                                  \
    do {                                                                         \
        size_t block_;                                                           \
        for (block_ = 0; block_ + 16 <= (n); block_ += 16) {                     \
            for ((j) = block_; (j) < block_ + 16; (j)++) {                       \
                body;                                                            \
            }                                                                    \
        }                                                                        \
        for ((j) = block_; (j) < (n); (j)++) {                                   \
            body;                                                                \
        }                                                                        \
    } while (0)

/* Row i of Y = beta * C (0 without C). C is Y itself or does not overlap it (matmul.h), so the
 * common forms, a row of C or one broadcast bias row, are loops the compiler vectorises. */
static void init_row(moa_matrix_f32 c, float beta, size_t i, size_t N, float *restrict y_row)
{
    const float *c_row = c.data != NULL ? c.data + (ptrdiff_t)i * c.row_stride : NULL;
    size_t j;
    if (c_row == NULL) {
        EACH_COLUMN(j, N, y_row[j] = 0.0f);
    } else if (c_row == (const float *)y_row && c.col_stride == 1) {
        if (beta != 1.0f) {
            float *row = y_row;
            for (j = 0; j < N; j++) {
                row[j] *= beta;
            }
        }
    } else if (c.col_stride == 1) {
        const float *restrict in = c_row;
        EACH_COLUMN(j, N, y_row[j] = beta * in[j]);
    } else if (c.col_stride == 0) {
        const float value = beta * c_row[0];
        EACH_COLUMN(j, N, y_row[j] = value);
    } else {
        for (j = 0; j < N; j++) {
            y_row[j] = beta * c_row[(ptrdiff_t)j * c.col_stride];
        }
    }
}

#if MOA_GEMM_PACK_A
/* Rows i0 .. i0 + mc, columns p0 .. p0 + kc of A copied to `block`, row after row MOA_GEMM_KC
 * floats apart (moa/gemm_tile.h). */
static void pack_a_block(moa_matrix_f32 a, size_t i0, size_t mc, size_t p0, size_t kc, float *block)
{
    size_t i, p;
    for (i = 0; i < mc; i++) {
        const float *row = a.data + (ptrdiff_t)(i0 + i) * a.row_stride + (ptrdiff_t)p0 * a.col_stride;
        float *out = block + i * MOA_GEMM_KC;
        if (a.col_stride == 1) {
            memcpy(out, row, kc * sizeof *out);
        } else {
            for (p = 0; p < kc; p++) {
                out[p] = row[(ptrdiff_t)p * a.col_stride];
            }
        }
    }
}
#endif

/* The product on operands gemm() has checked, M and N > 0. */
static void gemm_block(size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a, b_source b, float beta,
                       moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride)
{
    float buffer[MOA_GEMM_TILE_PANELS * MOA_GEMM_KC * MOA_GEMM_NR];
#if MOA_GEMM_PACK_A
    float a_block[MOA_GEMM_MC * MOA_GEMM_KC];
#endif
    size_t i, p0, i0, q;
    const int gemv = M < MOA_GEMM_MR && b.quantized != NULL; /* gemv_quantized() below */
    /* Y = beta * C now when no block will write it: otherwise each block's rows, just before the
     * block's first slice reads them (so they are still in cache). */
    if (K == 0 || (c.data != NULL && gemv)) {
        for (i = 0; i < M; i++) {
            init_row(c, beta, i, N, y + (ptrdiff_t)i * y_row_stride);
        }
    }
    if (gemv) {
        gemv_quantized(M, N, K, alpha, a, b.quantized, c.data != NULL, y, y_row_stride);
        return;
    }
    for (p0 = 0; p0 < K; p0 += MOA_GEMM_KC) {
        const size_t kc = min_size(MOA_GEMM_KC, K - p0);
        const int accumulate = p0 > 0 || c.data != NULL;
        moa_matrix_f32 a_slice = a;
        a_slice.data += (ptrdiff_t)p0 * a.col_stride;
        /* A gathered or dequantized panel is costly to make: it is made once, for all the rows of A. */
        const size_t block_rows = b.gather != NULL || b.quantized != NULL ? M : MOA_GEMM_MC;
        for (i0 = 0; i0 < M; i0 += block_rows) {
            const size_t mc = min_size(block_rows, M - i0);
            for (i = i0; p0 == 0 && c.data != NULL && i < i0 + mc; i++) {
                init_row(c, beta, i, N, y + (ptrdiff_t)i * y_row_stride);
            }
            /* A's rows of this block: the packed copy when there is one */
            const float *a_block_rows = a_slice.data + (ptrdiff_t)i0 * a.row_stride;
            ptrdiff_t a_row_stride = a.row_stride, a_col_stride = a.col_stride;
#if MOA_GEMM_PACK_A
            if (mc <= MOA_GEMM_MC) {
                pack_a_block(a, i0, mc, p0, kc, a_block);
                a_block_rows = a_block, a_row_stride = MOA_GEMM_KC, a_col_stride = 1;
            }
#endif
            for (q = 0; q * MOA_GEMM_NR < N; q += MOA_GEMM_TILE_PANELS) {
                const size_t j0 = q * MOA_GEMM_NR, nr = min_size(MOA_GEMM_NT, N - j0);
                ptrdiff_t b_row_stride, b_panel_stride;
                const float *b_rows = tile_panels(b, K, N, q, p0, kc, buffer, &b_row_stride, &b_panel_stride);
                /* the next tile's packed rows, for the tiles to prefetch (moa/gemm_tile.h) */
                const float *b_next = b.packed != NULL && j0 + MOA_GEMM_NT < N ? b_rows + MOA_GEMM_TILE_PANELS * b.packed_rows * MOA_GEMM_NR
                                                                                 : b_rows;
                float *y_cols = y + (ptrdiff_t)j0;
                for (i = i0; i < i0 + mc; i += MOA_GEMM_MR) {
                    const size_t mr = min_size(MOA_GEMM_MR, i0 + mc - i);
                    const float *a_rows = a_block_rows + (ptrdiff_t)(i - i0) * a_row_stride;
                    float *y_tile = y_cols + (ptrdiff_t)i * y_row_stride;
                    if (mr == MOA_GEMM_MR && nr == MOA_GEMM_NT) {
                        moa_gemm_tile_f32(kc, a_rows, a_row_stride, a_col_stride, b_rows, b_row_stride, b_panel_stride, alpha,
                                          y_tile, y_row_stride, accumulate, b_next);
                    } else { /* the bottom or right edge: mr rows, nr columns, nothing recomputed */
                        moa_gemm_edge_f32(kc, a_rows, a_row_stride, a_col_stride, b_rows, b_row_stride, b_panel_stride, alpha,
                                          y_tile, y_row_stride, accumulate, b_next, mr, nr);
                    }
                }
            }
        }
    }
}

/* Columns j0 .. of B (and of C) from panel q0 on (j0 = 16 q0): `w` holds a quantized source's slice. */
static b_source column_slice(b_source b, size_t K, size_t q0, moa_qweights *w)
{
    const size_t j0 = q0 * MOA_GEMM_NR;
    if (b.packed != NULL) {
        b.packed += q0 * b.packed_rows * MOA_GEMM_NR;
    } else if (b.quantized != NULL) {
        *w = quantized_panel(b.quantized, K, q0);
        b.quantized = w;
    } else if (b.gather != NULL) {
        b.first_col += j0;
    } else {
        b.view.data += (ptrdiff_t)j0 * b.view.col_stride;
    }
    return b;
}

static moa_matrix_f32 column_offset(moa_matrix_f32 c, size_t j0)
{
    if (c.data != NULL) {
        c.data += (ptrdiff_t)j0 * c.col_stride;
    }
    return c;
}

/* Y in blocks of MOA_GEMM_NC columns (matmul.h), each block the Goto loops above. A block's
 * edge is a whole number of register tiles, so every element is the same sum, in the same
 * order, as unblocked. */
static moa_status gemm(size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a, b_source b, float beta,
                       moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride)
{
    const size_t blocks = (N + MOA_GEMM_NC - 1) / MOA_GEMM_NC;
    const size_t width = ((N + blocks - 1) / blocks + MOA_GEMM_NT - 1) / MOA_GEMM_NT * MOA_GEMM_NT;
    moa_qweights w;
    size_t j0;
    const moa_status status = check_gemm(M, N, K, a, b, y, y_row_stride);
    if (status != MOA_OK || M == 0 || N == 0) {
        return status;
    }
    if (N <= MOA_GEMM_NC_MIN) {
        gemm_block(M, N, K, alpha, a, b, beta, c, y, y_row_stride);
        return MOA_OK;
    }
    for (j0 = 0; j0 < N; j0 += width) {
        gemm_block(M, min_size(width, N - j0), K, alpha, a, column_slice(b, K, j0 / MOA_GEMM_NR, &w), beta,
                   column_offset(c, j0), y + j0, y_row_stride);
    }
    return MOA_OK;
}

/* The product lifted onto the pool's threads (Pi = cores): thread s of T computes the columns
 * of tiles [P s / T, P (s + 1) / T) of the P NT-wide tiles, or rows [M s / T, M (s + 1) / T)
 * (each share then ends in its own edge tile: rounding the ends to whole register tiles gave
 * one thread a tile more, bench gemm AVX-512 256 x 384 x 384 on 2 threads 308 -> 317 GFLOP/s
 * unrounded). Rows when B is not costly to make per share (packed or a view, not gathered or
 * dequantized) and each thread would have few columns (x86 packs A per thread: a share of a
 * narrow product would copy all of A for little work; bench gemm, AVX-512, 256 x 384 x 384 on 2
 * threads: 272 GFLOP/s by columns, 298 by rows, one thread 161) or many rows (each thread then
 * packs only its own rows of A; 197 x 768 x 768, packed weights streamed from memory, on 2
 * threads: 0.88 -> 0.81 ms AVX-512, 1.29 -> 1.27 AVX2, one thread 1.55 and 2.34; 512 x 768 x 768
 * 2.33 -> 2.02 and 3.36 -> 3.08); columns otherwise. Each share is the serial gemm() on its
 * slice, and a slice's tiles compute each element as the whole product's do, so Y is bitwise
 * the same for every thread count. */
/* Fewer columns a thread than this, or this many rows or more, and the product is split by rows
 * (above; fewer rows, 24-64 of a 768 x 768 product, ran faster by columns on AVX2). */
#define MOA_GEMM_MIN_SHARE_COLUMNS 256
#define MOA_GEMM_MIN_SHARE_ROWS 64

typedef struct {
    size_t M, N, K;
    float alpha, beta;
    moa_matrix_f32 a, c;
    b_source b;
    float *y;
    ptrdiff_t y_row_stride;
    size_t shares;
    int by_columns;
    moa_status status[MOA_POOL_MAX_THREADS];
} gemm_job;

static void gemm_columns(gemm_job *job, size_t share)
{
    const size_t tiles = (job->N + MOA_GEMM_NT - 1) / MOA_GEMM_NT;
    const size_t q0 = tiles * share / job->shares * MOA_GEMM_TILE_PANELS;
    const size_t q1 = tiles * (share + 1) / job->shares * MOA_GEMM_TILE_PANELS;
    const size_t j0 = q0 * MOA_GEMM_NR, j1 = min_size(job->N, q1 * MOA_GEMM_NR);
    moa_qweights w;
    if (q0 == q1) {
        return;
    }
    job->status[share] = gemm(job->M, j1 - j0, job->K, job->alpha, job->a, column_slice(job->b, job->K, q0, &w),
                              job->beta, column_offset(job->c, j0), job->y + j0, job->y_row_stride);
}

/* Where share s of T starts: the row M s / T. */
static size_t share_row(size_t M, size_t s, size_t T)
{
    return M * s / T;
}

static void gemm_rows(gemm_job *job, size_t share)
{
    const size_t i0 = share_row(job->M, share, job->shares), i1 = share_row(job->M, share + 1, job->shares);
    moa_matrix_f32 a = job->a, c = job->c;
    if (i0 == i1) {
        return;
    }
    a.data += (ptrdiff_t)i0 * a.row_stride;
    if (c.data != NULL) {
        c.data += (ptrdiff_t)i0 * c.row_stride;
    }
    job->status[share] = gemm(i1 - i0, job->N, job->K, job->alpha, a, job->b, job->beta, c,
                              job->y + (ptrdiff_t)i0 * job->y_row_stride, job->y_row_stride);
}

static void gemm_shares(void *ctx, size_t first, size_t end, size_t thread)
{
    gemm_job *job = (gemm_job *)ctx;
    size_t share;
    (void)thread; /* the GEMM's scratch is on each thread's stack */
    for (share = first; share < end; share++) {
        if (job->by_columns) {
            gemm_columns(job, share);
        } else {
            gemm_rows(job, share);
        }
    }
}

static moa_status gemm_on(moa_pool *pool, size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a, b_source b,
                          float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride)
{
    const size_t threads = moa_pool_threads(pool), tiles = (N + MOA_GEMM_NT - 1) / MOA_GEMM_NT;
    const size_t row_tiles = M / MOA_GEMM_MR;
    const int cheap_b = b.packed != NULL || b.view.data != NULL;
    gemm_job job;
    size_t share;
    moa_status status = check_gemm(M, N, K, a, b, y, y_row_stride);
    if (status != MOA_OK || threads == 1 || (tiles < threads && row_tiles < 2)) {
        return status != MOA_OK ? status : gemm(M, N, K, alpha, a, b, beta, c, y, y_row_stride);
    }
    job.M = M, job.N = N, job.K = K, job.alpha = alpha, job.beta = beta, job.a = a, job.c = c, job.b = b;
    job.y = y, job.y_row_stride = y_row_stride;
    job.by_columns = tiles >= threads && !(cheap_b && (M >= MOA_GEMM_MIN_SHARE_ROWS * threads ||
                                                       (N < MOA_GEMM_MIN_SHARE_COLUMNS * threads && row_tiles >= 4 * threads)));
    job.shares = job.by_columns ? threads : (row_tiles < threads ? row_tiles : threads);
    for (share = 0; share < job.shares; share++) {
        job.status[share] = MOA_OK;
    }
    moa_pool_for(pool, job.shares, gemm_shares, &job);
    for (share = 0; share < job.shares; share++) {
        status = status != MOA_OK ? status : job.status[share];
    }
    return status;
}

static b_source view_source(moa_matrix_f32 b)
{
    b_source source = {0};
    source.view = b;
    return source;
}

/* Rows first_row .. of B packed in panels of packed_rows rows. */
static b_source packed_source(const float *packed_b, size_t packed_rows, size_t first_row)
{
    b_source source = {0};
    source.packed = packed_b != NULL ? packed_b + first_row * MOA_GEMM_NR : NULL;
    source.packed_rows = packed_rows;
    return source;
}

static moa_status check_quantized(size_t M, size_t N, size_t K, const moa_qweights *w)
{
    if ((w->type != MOA_QW_I8 && w->type != MOA_QW_U4 && !half_values(w)) || w->block == 0 ||
        (w->type == MOA_QW_U4 && w->block % 2 != 0) || w->half_scales < MOA_QS_FLOAT || w->half_scales > MOA_QS_SUPER) {
        return MOA_ERR_BAD_PARAMS;
    }
    if ((w->q == NULL || (w->scale == NULL && !half_values(w))) && K > 0 && M > 0 && N > 0) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    return MOA_OK;
}

moa_status moa_gemm_f32(size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a, moa_matrix_f32 b,
                        float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride)
{
    return moa_gemm_f32_on(NULL, M, N, K, alpha, a, b, beta, c, y, y_row_stride);
}

moa_status moa_gemm_f32_on(moa_pool *pool, size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a,
                           moa_matrix_f32 b, float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride)
{
    return gemm_on(pool, M, N, K, alpha, a, view_source(b), beta, c, y, y_row_stride);
}

moa_status moa_gemm_packed_f32(size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a, const float *packed_b,
                               float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride)
{
    return moa_gemm_packed_f32_on(NULL, M, N, K, alpha, a, packed_b, beta, c, y, y_row_stride);
}

moa_status moa_gemm_packed_f32_on(moa_pool *pool, size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a,
                                  const float *packed_b, float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride)
{
    return moa_gemm_packed_rows_f32_on(pool, M, N, K, alpha, a, packed_b, K, 0, beta, c, y, y_row_stride);
}

moa_status moa_gemm_packed_rows_f32_on(moa_pool *pool, size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a,
                                       const float *packed_b, size_t packed_rows, size_t first_row, float beta,
                                       moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride)
{
    if (packed_b == NULL && K > 0 && M > 0 && N > 0) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    if (first_row + K > packed_rows) {
        return MOA_ERR_BAD_PARAMS;
    }
    return gemm_on(pool, M, N, K, alpha, a, packed_source(packed_b, packed_rows, first_row), beta, c, y, y_row_stride);
}

moa_status moa_gemm_qw_f32(size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a, moa_qweights w,
                           float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride)
{
    return moa_gemm_qw_f32_on(NULL, M, N, K, alpha, a, w, beta, c, y, y_row_stride);
}

moa_status moa_gemm_qw_f32_on(moa_pool *pool, size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a,
                              moa_qweights w, float beta, moa_matrix_f32 c, float *y, ptrdiff_t y_row_stride)
{
    b_source source = {0};
    const moa_status status = check_quantized(M, N, K, &w);
    if (status != MOA_OK) {
        return status;
    }
    source.quantized = &w;
    return gemm_on(pool, M, N, K, alpha, a, source, beta, c, y, y_row_stride);
}

moa_status moa_gemm_gathered_f32_on(moa_pool *pool, size_t M, size_t N, size_t K, float alpha, moa_matrix_f32 a,
                                    moa_gemm_gather gather, const void *gather_ctx, float beta, moa_matrix_f32 c,
                                    float *y, ptrdiff_t y_row_stride)
{
    b_source source = {0};
    if (gather == NULL && K > 0 && M > 0 && N > 0) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    source.gather = gather, source.gather_ctx = gather_ctx;
    return gemm_on(pool, M, N, K, alpha, a, source, beta, c, y, y_row_stride);
}

void moa_gemm_pack_b_f32(size_t K, size_t N, moa_matrix_f32 b, float *packed)
{
    size_t q, p, j;
    for (q = 0; q * MOA_GEMM_NR < N; q++) {
        for (p = 0; p < K; p++) {
            for (j = 0; j < MOA_GEMM_NR; j++) {
                const size_t col = q * MOA_GEMM_NR + j;
                *packed++ = col < N ? at(b, p, col) : 0.0f;
            }
        }
    }
}
