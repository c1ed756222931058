/* moa_igemm_i32 and moa_igemm_f32 (moa/igemm.h): a block of up to MOA_IGEMM_MC rows of A is
 * written to the scratch in the kernels' form (moa_igemm_a, zero-padded to Kp) with its row sums,
 * then every 16-column panel of B runs under it in register tiles (moa/igemm_tile.h), each tile's
 * whole K in registers; the tile's raw sums are corrected for the zero points and stored, as
 * int32 or scaled to float, once.
 *
 * With A_k = A + shift the byte a kernel multiplies (shift: 0 or +-128, igemm_tile.h) and
 * d = a_zero + shift,
 *     sum_k (A - a_zero)(B - b_zero) = sum_k A_k B  -  b_zero sum_k A_k  -  d (col_sum - K b_zero),
 * every term in uint32, so that the sums wrap as MatMulInteger's int32 do. */
#include <string.h>

#include "moa/igemm.h"
#include "moa/igemm_tile.h"

#define NR MOA_GEMM_NR
#define MR MOA_IGEMM_MR

/* What the rows of Y become: int32 (yi) or float (yf) scaled by a_scale[m] * b_scale[n], + bias. */
typedef struct {
    int32_t *yi;
    float *yf;
    ptrdiff_t row_stride;
    const float *b_scale;
    const float *bias;
} output;

/* A block of rows in the scratch: the kernels' bytes, their sums, each row's scale. */
typedef struct {
    moa_igemm_a *a;
    int32_t *sum;
    float *scale;
    int32_t offset; /* d above: a_zero + shift */
} block_rows;

static size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* x rounded to the nearest integer, ties to even, for |x| < 2^22: adding 1.5 * 2^23 leaves no
 * bits for a fraction, so the default rounding mode does it (no libm, the same on every ISA). */
static float round_half_even(float x)
{
    const float magic = 12582912.0f;
    return (x + magic) - magic;
}

/* x clamped to [lo, hi]; NaN gives lo (as MAXPS and FMAXNM in onnxruntime's quantizer). */
static float clamp(float x, float lo, float hi)
{
    x = x > lo ? x : lo;
    return x < hi ? x : hi;
}

static block_rows block_in(void *scratch, size_t M)
{
    const size_t rows = MOA_IGEMM_BLOCK_ROWS(M);
    block_rows block;
    block.sum = (int32_t *)scratch;
    block.scale = (float *)(block.sum + rows);
    block.a = (moa_igemm_a *)(block.scale + rows);
    block.offset = 0;
    return block;
}

/* Zeros from K to Kp: the padded k of the last group add nothing. */
static void pad_row(moa_igemm_a *row, size_t K)
{
    size_t k;
    for (k = K; k < MOA_IGEMM_KP(K); k++) {
        row[k] = 0;
    }
}

/* The shift that brings an A of `type` to the kernels' bytes. */
static int32_t shift_of(moa_ia_type type)
{
    if (type == MOA_IA_U8) {
        return MOA_IGEMM_A_UNSIGNED ? 0 : -128;
    }
    return MOA_IGEMM_A_UNSIGNED ? 128 : 0;
}

/* Rows i0 .. i0 + rows of an integer A in the kernels' bytes, zero-padded to Kp, and their sums. */
static void integer_rows(block_rows *block, moa_imatrix a, size_t i0, size_t rows, size_t K)
{
    const int32_t shift = shift_of(a.type);
    const size_t kp = MOA_IGEMM_KP(K);
    size_t r, k;
    block->offset = a.zero + shift;
    for (r = 0; r < rows; r++) {
        moa_igemm_a *row = block->a + r * kp;
        uint32_t sum = 0;
        for (k = 0; k < K; k++) {
            const ptrdiff_t at = (ptrdiff_t)(i0 + r) * a.row_stride + (ptrdiff_t)k;
            const int32_t value =
                (a.type == MOA_IA_U8 ? (int32_t)((const uint8_t *)a.data)[at] : (int32_t)((const int8_t *)a.data)[at]) +
                shift;
            row[k] = (moa_igemm_a)value;
            sum += (uint32_t)value;
        }
        pad_row(row, K);
        block->sum[r] = (int32_t)sum;
        block->scale[r] = 1.0f;
    }
}

/* The float loops below run over whole chunks of CHUNK values into local arrays, then a scalar
 * tail: a fixed count and no aliasing, which compilers vectorize. */
#define CHUNK 16

/* The smallest and largest of A and 0. CHUNK independent minima and maxima (one running minimum
 * would wait on itself every element); a NaN compares false and is passed over. */
static void range(size_t M, size_t K, const float *a, ptrdiff_t a_row_stride, float *lo, float *hi)
{
    float lows[CHUNK] = {0.0f}, highs[CHUNK] = {0.0f};
    size_t i, k, j;
    *lo = *hi = 0.0f;
    for (i = 0; i < M; i++) {
        const float *row = a + (ptrdiff_t)i * a_row_stride;
        for (k = 0; k + CHUNK <= K; k += CHUNK) {
            for (j = 0; j < CHUNK; j++) {
                lows[j] = row[k + j] < lows[j] ? row[k + j] : lows[j];
                highs[j] = row[k + j] > highs[j] ? row[k + j] : highs[j];
            }
        }
        for (; k < K; k++) {
            *lo = row[k] < *lo ? row[k] : *lo;
            *hi = row[k] > *hi ? row[k] : *hi;
        }
    }
    for (j = 0; j < CHUNK; j++) {
        *lo = lows[j] < *lo ? lows[j] : *lo;
        *hi = highs[j] > *hi ? highs[j] : *hi;
    }
}

/* DynamicQuantizeLinear's scale and zero point over all of A (igemm.h), as onnxruntime
 * computes them: the range includes 0, the zero point is clamped, then rounded. */
static void tensor_range(size_t M, size_t K, const float *a, ptrdiff_t a_row_stride, float *scale, int32_t *zero)
{
    float lo, hi;
    range(M, K, a, a_row_stride, &lo, &hi);
    *scale = hi == lo ? 1.0f : (hi - lo) / 255.0f;
    *zero = (int32_t)round_half_even(clamp(0.0f - lo / *scale, 0.0f, 255.0f));
}

/* One quantized value: round(clamp(x / scale, lo, hi)) + add (x / scale as onnxruntime divides,
 * not a multiply by 1 / scale, which rounds differently). */
static int32_t quantized(float x, float scale, float lo, float hi, int32_t add)
{
    return (int32_t)round_half_even(clamp(x / scale, lo, hi)) + add;
}

/* A row of K values quantized into the kernels' bytes; returns their sum. */
static uint32_t quantize_row(const float *x, size_t K, float scale, float lo, float hi, int32_t add,
                             moa_igemm_a *out)
{
    uint32_t sum = 0;
    size_t k, j;
    for (k = 0; k + CHUNK <= K; k += CHUNK) {
        int32_t q[CHUNK];
        for (j = 0; j < CHUNK; j++) {
            q[j] = quantized(x[k + j], scale, lo, hi, add);
        }
        for (j = 0; j < CHUNK; j++) {
            out[k + j] = (moa_igemm_a)q[j];
            sum += (uint32_t)q[j];
        }
    }
    for (; k < K; k++) {
        const int32_t q = quantized(x[k], scale, lo, hi, add);
        out[k] = (moa_igemm_a)q;
        sum += (uint32_t)q;
    }
    return sum;
}

/* Rows i0 .. i0 + rows of a float A quantized: per tensor to uint8 (scale, zero given), or per
 * row to int8 (each row's own scale); in the kernels' bytes, zero-padded to Kp, with their sums. */
static void quantized_rows(block_rows *block, const float *a, ptrdiff_t a_row_stride, moa_iq_mode mode, float scale,
                           int32_t zero, size_t i0, size_t rows, size_t K)
{
    const int32_t shift = shift_of(mode == MOA_IQ_TENSOR_U8 ? MOA_IA_U8 : MOA_IA_I8);
    const size_t kp = MOA_IGEMM_KP(K);
    size_t r;
    block->offset = (mode == MOA_IQ_TENSOR_U8 ? zero : 0) + shift;
    for (r = 0; r < rows; r++) {
        const float *x = a + (ptrdiff_t)(i0 + r) * a_row_stride;
        moa_igemm_a *row = block->a + r * kp;
        float row_scale = scale, lo = (float)-zero, hi = (float)(255 - zero);
        if (mode == MOA_IQ_ROW_I8) {
            float smallest, largest;
            range(1, K, x, 0, &smallest, &largest);
            largest = -smallest > largest ? -smallest : largest;
            row_scale = largest == 0.0f ? 1.0f : largest / 127.0f;
            lo = -127.0f, hi = 127.0f; /* and zero is 0 */
        }
        block->sum[r] = (int32_t)quantize_row(x, K, row_scale, lo, hi, zero + shift, row);
        pad_row(row, K);
        block->scale[r] = row_scale;
    }
}

/* What every row of a block needs of one panel's 16 columns, 0 past N. */
typedef struct {
    size_t j0, nr;
    uint32_t zero[NR];        /* b_zero */
    uint32_t column_term[NR]; /* -d (col_sum - K b_zero) */
    float scale[NR];          /* b_scale */
    float bias[NR];
} panel_terms;

static void panel_terms_of(panel_terms *t, const block_rows *block, size_t p, size_t N, size_t K, moa_iweights b,
                           const output *out)
{
    size_t j;
    t->j0 = p * NR, t->nr = min_size(NR, N - t->j0);
    for (j = 0; j < NR; j++) {
        t->zero[j] = b.zero != NULL ? (uint32_t)b.zero[t->j0 + j] : 0u;
        t->column_term[j] = 0u - (uint32_t)block->offset * ((uint32_t)b.col_sum[t->j0 + j] - (uint32_t)K * t->zero[j]);
        t->scale[j] = out->b_scale != NULL ? out->b_scale[t->j0 + j] : 0.0f;
        t->bias[j] = out->bias != NULL && j < t->nr ? out->bias[t->j0 + j] : 0.0f;
    }
}

/* The first `bytes` of a row of 16 four-byte values: a whole row as one copy of constant size,
 * which compilers make vector moves rather than a call. */
static void store_row(void *y, const void *row, size_t bytes)
{
    if (bytes == NR * 4) {
        memcpy(y, row, NR * 4);
    } else {
        memcpy(y, row, bytes);
    }
}

/* Row r of Y in the panel's columns from a tile row's raw sums: corrected, then stored as int32
 * or scaled. Whole rows of 16 in local arrays, so that compilers vectorize the arithmetic. */
static void finish_row(const output *out, const panel_terms *t, size_t r, const int32_t *acc, int32_t row_sum,
                       float a_scale)
{
    int32_t sum[NR];
    float value[NR];
    size_t j;
    for (j = 0; j < NR; j++) {
        sum[j] = (int32_t)((uint32_t)acc[j] - t->zero[j] * (uint32_t)row_sum + t->column_term[j]);
    }
    if (out->yi != NULL) {
        store_row(out->yi + (ptrdiff_t)r * out->row_stride + (ptrdiff_t)t->j0, sum, t->nr * sizeof *sum);
        return;
    }
    for (j = 0; j < NR; j++) {
        value[j] = (float)sum[j] * (a_scale * t->scale[j]); /* the scale product rounded first, as onnxruntime's Mul */
    }
    if (out->bias != NULL) {
        for (j = 0; j < NR; j++) {
            value[j] += t->bias[j];
        }
    }
    store_row(out->yf + (ptrdiff_t)r * out->row_stride + (ptrdiff_t)t->j0, value, t->nr * sizeof *value);
}

typedef void (*tile_kernel)(MOA_IGEMM_TILE_PARAMS);

/* The register tile of this build; with AMX, the VNNI tile of as many rows where the tile state is refused. */
static tile_kernel tile_kernel_here(void)
{
#if defined(MOA_IGEMM_AMX)
    return moa_igemm_amx_ready() ? moa_igemm_tile : moa_igemm_tile_16x16_avx512vnni;
#else
    return moa_igemm_tile;
#endif
}

/* Panels a register tile takes at a time: 1, or the ISA's moa_igemm_panels (igemm_tile.h), which
 * prepares the tile's rows of A once for them all. */
#if defined(MOA_IGEMM_PANELS)
#define PANELS MOA_IGEMM_PANELS
#else
#define PANELS 1
#endif

/* Rows i0 .. i0 + rows of Y from the block, every panel, PANELS panels at a time. */
static void multiply_block(const block_rows *block, size_t i0, size_t rows, size_t N, size_t K, moa_iweights b,
                           const output *out, tile_kernel tile)
{
    const size_t kp = MOA_IGEMM_KP(K), groups = kp / 4, panels = (N + NR - 1) / NR;
    int32_t acc[PANELS * MR * NR];
    panel_terms terms[PANELS];
    size_t p0, np, q, i;
    for (p0 = 0; p0 < panels; p0 += np) {
        const int8_t *panel = kp > 0 ? b.q + p0 * kp * NR : b.q; /* (K == 0: q may be NULL, and is not read) */
        np = min_size(PANELS, panels - p0);
        for (q = 0; q < np; q++) {
            panel_terms_of(&terms[q], block, p0 + q, N, K, b, out);
        }
#if PANELS > 1
        (void)tile;
        for (i = 0; i < rows; i += MR) {
            const size_t mr = min_size(MR, rows - i);
            size_t r;
            moa_igemm_panels(groups, block->a + i * kp, (ptrdiff_t)kp, panel, kp * NR, np, mr, acc);
            for (q = 0; q < np; q++) {
                for (r = 0; r < mr; r++) {
                    finish_row(out, &terms[q], i0 + i + r, acc + (q * MR + r) * NR, block->sum[i + r],
                               block->scale[i + r]);
                }
            }
        }
#else
        for (i = 0; i + MR <= rows; i += MR) {
            size_t r;
            tile(groups, block->a + i * kp, (ptrdiff_t)kp, panel, acc);
            for (r = 0; r < MR; r++) {
                finish_row(out, &terms[0], i0 + i + r, acc + r * NR, block->sum[i + r], block->scale[i + r]);
            }
        }
        for (; i < rows; i++) {
            moa_igemm_row(groups, block->a + i * kp, panel, acc);
            finish_row(out, &terms[0], i0 + i, acc, block->sum[i], block->scale[i]);
        }
#endif
    }
}

moa_status moa_igemm_i32(size_t M, size_t N, size_t K, moa_imatrix a, moa_iweights b, int32_t *y,
                         ptrdiff_t y_row_stride, void *scratch)
{
    output out = {NULL, NULL, 0, NULL, NULL};
    block_rows block;
    tile_kernel tile;
    size_t i0;
    if (M == 0 || N == 0) {
        return MOA_OK;
    }
    if (a.type != MOA_IA_U8 && a.type != MOA_IA_I8) {
        return MOA_ERR_BAD_PARAMS;
    }
    if (y == NULL || scratch == NULL || b.col_sum == NULL || (K > 0 && (a.data == NULL || b.q == NULL))) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    if (M > 1 && y_row_stride < (ptrdiff_t)N) {
        return MOA_ERR_BAD_PARAMS;
    }
    out.yi = y, out.row_stride = y_row_stride;
    block = block_in(scratch, M);
    tile = M >= MR ? tile_kernel_here() : moa_igemm_tile;
    for (i0 = 0; i0 < M; i0 += MOA_IGEMM_MC) {
        const size_t rows = min_size(MOA_IGEMM_MC, M - i0);
        integer_rows(&block, a, i0, rows, K);
        multiply_block(&block, i0, rows, N, K, b, &out, tile);
    }
    return MOA_OK;
}

moa_status moa_igemm_f32(size_t M, size_t N, size_t K, const float *a, ptrdiff_t a_row_stride, moa_iq_mode mode,
                         moa_iweights b, const float *b_scale, const float *bias, float *y, ptrdiff_t y_row_stride,
                         void *scratch)
{
    output out = {NULL, NULL, 0, NULL, NULL};
    block_rows block;
    tile_kernel tile;
    float scale = 1.0f;
    int32_t zero = 0;
    size_t i0;
    if (M == 0 || N == 0) {
        return MOA_OK;
    }
    if (mode != MOA_IQ_TENSOR_U8 && mode != MOA_IQ_ROW_I8) {
        return MOA_ERR_BAD_PARAMS;
    }
    if (y == NULL || scratch == NULL || b.col_sum == NULL || b_scale == NULL ||
        (K > 0 && (a == NULL || b.q == NULL))) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    if (M > 1 && y_row_stride < (ptrdiff_t)N) {
        return MOA_ERR_BAD_PARAMS;
    }
    out.yf = y, out.row_stride = y_row_stride, out.b_scale = b_scale, out.bias = bias;
    if (mode == MOA_IQ_TENSOR_U8) {
        tensor_range(M, K, a, a_row_stride, &scale, &zero);
    }
    block = block_in(scratch, M);
    tile = M >= MR ? tile_kernel_here() : moa_igemm_tile;
    for (i0 = 0; i0 < M; i0 += MOA_IGEMM_MC) {
        const size_t rows = min_size(MOA_IGEMM_MC, M - i0);
        quantized_rows(&block, a, a_row_stride, mode, scale, zero, i0, rows, K);
        multiply_block(&block, i0, rows, N, K, b, &out, tile);
    }
    return MOA_OK;
}

#if MOA_IGEMM_SCALAR
/* The reference: B[k][j] read from the panel's groups as the layout states (igemm.h). Products
 * summed in uint32, so that a sum wraps as the SIMD kernels' do instead of overflowing. */
void moa_igemm_row_4x16_scalar(MOA_IGEMM_ROW_PARAMS)
{
    uint32_t sum[NR] = {0};
    size_t k, j;
    for (k = 0; k < 4 * groups; k++) {
        for (j = 0; j < NR; j++) {
            sum[j] += (uint32_t)((int32_t)a[k] * (int32_t)b[k / 4 * 64 + 4 * j + k % 4]);
        }
    }
    for (j = 0; j < NR; j++) {
        acc[j] = (int32_t)sum[j];
    }
}

void moa_igemm_tile_4x16_scalar(MOA_IGEMM_TILE_PARAMS)
{
    size_t i;
    for (i = 0; i < MR; i++) {
        moa_igemm_row_4x16_scalar(groups, a + (ptrdiff_t)i * a_row_stride, b, acc + i * NR);
    }
}
#endif
