/* moa_conv2d_f32: a convolution as GEMMs.
 *
 * A kernel larger than 1 x 1 with float weights is one implicit GEMM per group (and image):
 *
 *     Y[m][oh OW + ow] = B[m] + sum_r W[m][r] * P[r][oh OW + ow],   r = (c KH + kh) KW + kw,
 *     P[r][oh OW + ow] = X[c][oh*sh + kh*dh - pad_top][ow*sw + kw*dw - pad_left]  (0 outside X)
 *
 * W is the A operand as it is stored (row m holds its R = Cg KH KW weights); the patches P are
 * never stored: the GEMM driver asks gather_patches for each KC x 16 panel as it needs it.
 *
 * Otherwise (1 x 1 kernels, depthwise groups, weights in fewer bits) each kernel tap is one
 * GEMM. For a fixed tap (kh, kw) and output row oh, the equation of conv.h is a matrix product
 *
 *     Y[m][ow] += sum_c W[m][c][kh][kw] * X[c][ih][ow*sw + kw*dw - pad_left]
 *                 ih = oh*sh + kh*dh - pad_top
 *
 * with W read at row stride Cg*KH*KW and column stride KH*KW, and X at row stride H*W and
 * column stride sw: both are strided views of the tensors as they are, so nothing is copied.
 * Only the output positions whose tap lands inside X take part; the padding adds nothing.
 * When a tap covers whole output rows and the rows follow one another in X at the same
 * stride as the columns (a 1x1 convolution, any 1-D one), the rows merge into one GEMM. */
#include "moa/conv.h"

#include "moa/half.h"
#include "moa/matmul.h"

/* The output positions o in [begin, end) whose input o*stride + offset - pad lies in [0, size). */
typedef struct {
    size_t begin, end;
} moa_span;

static moa_span taps_inside(size_t out, size_t stride, size_t offset, size_t pad, size_t size)
{
    moa_span s;
    s.begin = offset >= pad ? 0 : (pad - offset + stride - 1) / stride;
    s.end = offset >= pad + size ? 0 : (pad + size - offset - 1) / stride + 1;
    s.end = s.end < out ? s.end : out;
    s.begin = s.begin < s.end ? s.begin : s.end;
    return s;
}

static moa_matrix_f32 view(const float *data, size_t row_stride, size_t col_stride)
{
    moa_matrix_f32 v;
    v.data = data;
    v.row_stride = (ptrdiff_t)row_stride;
    v.col_stride = (ptrdiff_t)col_stride;
    return v;
}

/* Y (Mg rows at stride OH*OW) = B, or 0: the sum over the taps then accumulates into it. */
static void fill_bias(const moa_conv2d_params *p, const float *bias, size_t out_group, float *y)
{
    const size_t plane = p->out_height * p->out_width, mg = p->out_channels / p->groups;
    size_t m, i;
    for (m = 0; m < mg; m++) {
        const float b = bias != NULL ? bias[out_group * mg + m] : 0.0f;
        for (i = 0; i < plane; i++) {
            y[m * plane + i] = b;
        }
    }
}

/* Y[n][group] += W[group][:, :, kh, kw] X[n][group] at one tap: one GEMM per output row, or
 * one for all the rows the tap reaches when they merge. */
static moa_status conv_tap(moa_pool *pool, const moa_conv2d_params *p, const float *x, moa_matrix_f32 w_tap,
                           float *y, size_t kh, size_t kw)
{
    const size_t cg = p->channels / p->groups, mg = p->out_channels / p->groups;
    const size_t plane = p->out_height * p->out_width;
    const moa_span rows = taps_inside(p->out_height, p->stride_height, kh * p->dilation_height, p->pad_top,
                                      p->height);
    const moa_span cols = taps_inside(p->out_width, p->stride_width, kw * p->dilation_width, p->pad_left,
                                      p->width);
    const int whole_rows = cols.begin == 0 && cols.end == p->out_width
                           && p->stride_height * p->width == p->stride_width * p->out_width;
    const size_t row_count = whole_rows ? rows.end - rows.begin : 1, n_cols = cols.end - cols.begin;
    size_t oh;
    if (n_cols == 0) {
        return MOA_OK; /* the tap lies in the padding for every output column */
    }
    for (oh = rows.begin; oh < rows.end; oh += row_count) {
        const size_t ih = oh * p->stride_height + kh * p->dilation_height - p->pad_top;
        const size_t iw = cols.begin * p->stride_width + kw * p->dilation_width - p->pad_left;
        const moa_matrix_f32 x_tap = view(x + ih * p->width + iw, p->height * p->width, p->stride_width);
        float *y_tap = y + oh * p->out_width + cols.begin;
        const moa_status status = moa_gemm_f32_on(pool, mg, row_count * n_cols, cg, 1.0f, w_tap, x_tap,
                                                  1.0f, view(y_tap, plane, 1), y_tap, (ptrdiff_t)plane);
        if (status != MOA_OK) {
            return status;
        }
    }
    return MOA_OK;
}

/* Where a tap's weights come from: float W as it is, or quantized W dequantized into scratch. */
typedef struct {
    const float *w;
    const moa_qweights *quantized;
    float *scratch;
} weights_source;

static float scale_at(const void *scales, int half, size_t i)
{
    return half ? moa_f16_to_f32(((const uint16_t *)scales)[i]) : ((const float *)scales)[i];
}

/* Element r of quantized row m (conv.h's layout), dequantized. */
static float quantized_weight(const moa_qweights *w, size_t R, size_t m, size_t r)
{
    const size_t b = m * (R / w->block) + r / w->block;
    int value;
    if (w->type == MOA_QW_F16) {
        return moa_f16_to_f32(((const uint16_t *)w->q)[m * R + r]);
    }
    if (w->type == MOA_QW_I8) {
        value = ((const int8_t *)w->q)[m * R + r];
    } else {
        const uint8_t pair = ((const uint8_t *)w->q)[(m * R + r) / 2];
        value = r % 2 ? pair >> 4 : pair & 15;
    }
    return scale_at(w->scale, w->half_scales, b) * (float)(value - w->zero) +
           (w->offset != NULL ? scale_at(w->offset, w->half_scales, b) : 0.0f);
}

/* W[group][:, :, kh, kw] as an Mg x Cg view: in place for float W, else dequantized into the scratch. */
static moa_matrix_f32 tap_weights(const moa_conv2d_params *p, weights_source src, size_t group, size_t kh, size_t kw)
{
    const size_t cg = p->channels / p->groups, mg = p->out_channels / p->groups;
    const size_t taps = p->kernel_height * p->kernel_width, tap = kh * p->kernel_width + kw, R = cg * taps;
    size_t m, c;
    if (src.quantized == NULL) {
        return view(src.w + group * mg * R + tap, R, taps);
    }
    for (m = 0; m < mg; m++) {
        for (c = 0; c < cg; c++) {
            src.scratch[m * cg + c] = quantized_weight(src.quantized, R, group * mg + m, c * taps + tap);
        }
    }
    return view(src.scratch, cg, 1);
}

static int bad_geometry(const moa_conv2d_params *p)
{
    return p->stride_height == 0 || p->stride_width == 0 || p->dilation_height == 0 || p->dilation_width == 0 ||
           p->groups == 0 || p->channels % p->groups != 0 || p->out_channels % p->groups != 0;
}

/* The patches of one image's group, P of the implicit GEMM above. */
typedef struct {
    const moa_conv2d_params *p;
    const float *x; /* X[n][group * Cg] */
} patches;

/* Rows p0 .. p0 + kc of P's columns j0 .. j0 + nr (moa_gemm_gather). The columns are split
 * into runs along one output row; a run reads one row of X at the stride of the columns, so
 * with stride 1 each panel row is a few contiguous copies, zero where the window hangs over
 * the padding. */
static void gather_patches(const void *ctx, size_t p0, size_t kc, size_t j0, size_t nr, float *panel)
{
    const patches *g = (const patches *)ctx;
    const moa_conv2d_params *p = g->p;
    const size_t taps = p->kernel_height * p->kernel_width, ow_count = p->out_width;
    const ptrdiff_t H = (ptrdiff_t)p->height, W = (ptrdiff_t)p->width, sw = (ptrdiff_t)p->stride_width;
    size_t run_first[MOA_GEMM_NR + 1], runs = 0, t, r, k;
    ptrdiff_t top[MOA_GEMM_NR], left[MOA_GEMM_NR]; /* where each run's first window starts in X */
    size_t c = p0 / taps, kh = p0 % taps / p->kernel_width, kw = p0 % p->kernel_width;
    for (t = 0; t < nr; t = run_first[runs]) { /* runs of columns in one output row */
        const size_t oh = (j0 + t) / ow_count, ow = (j0 + t) % ow_count;
        top[runs] = (ptrdiff_t)(oh * p->stride_height) - (ptrdiff_t)p->pad_top;
        left[runs] = (ptrdiff_t)ow * sw - (ptrdiff_t)p->pad_left;
        run_first[runs++] = t;
        run_first[runs] = t + (ow_count - ow < nr - t ? ow_count - ow : nr - t);
    }
    for (r = 0; r < kc; r++) {
        const float *plane = g->x + c * p->height * p->width;
        const ptrdiff_t down = (ptrdiff_t)(kh * p->dilation_height), right = (ptrdiff_t)(kw * p->dilation_width);
        float *row = panel + r * MOA_GEMM_NR;
        for (k = 0; k < runs; k++) {
            const size_t first = run_first[k], count = run_first[k + 1] - first;
            const ptrdiff_t ih = top[k] + down, iw = left[k] + right;
            /* the run's columns u < count whose input iw + u sw lies in [0, W) */
            size_t lo = 0, hi = count, u;
            if (ih < 0 || ih >= H) {
                hi = 0;
            } else if (sw == 1) {
                lo = iw >= 0 ? 0 : (size_t)-iw;
                hi = iw >= W ? 0 : (size_t)(W - iw);
            } else {
                lo = iw >= 0 ? 0 : (size_t)((-iw + sw - 1) / sw);
                hi = iw >= W ? 0 : (size_t)((W - 1 - iw) / sw + 1);
            }
            hi = hi < count ? hi : count;
            lo = lo < hi ? lo : hi;
            for (u = 0; u < lo; u++) {
                row[first + u] = 0.0f;
            }
            if (sw == 1) {
                const float *src = plane + ih * W + iw;
                for (u = lo; u < hi; u++) {
                    row[first + u] = src[u];
                }
            } else {
                for (u = lo; u < hi; u++) {
                    row[first + u] = plane[ih * W + iw + (ptrdiff_t)u * sw];
                }
            }
            for (u = hi; u < count; u++) {
                row[first + u] = 0.0f;
            }
        }
        for (t = nr; t < MOA_GEMM_NR; t++) {
            row[t] = 0.0f;
        }
        if (++kw == p->kernel_width) {
            kw = 0;
            if (++kh == p->kernel_height) {
                kh = 0, c++;
            }
        }
    }
}

static int implicit_gemm(const moa_conv2d_params *p, weights_source src)
{
    return src.quantized == NULL && p->kernel_height * p->kernel_width > 1 && p->out_channels > p->groups;
}

static moa_status convolve(moa_pool *pool, const moa_conv2d_params *p, const float *x, weights_source src,
                           const float *bias, float *y)
{
    size_t n, group, kh, kw;
    for (n = 0; n < p->batch; n++) {
        for (group = 0; group < p->groups; group++) {
            const size_t cg = p->channels / p->groups, mg = p->out_channels / p->groups;
            const size_t plane = p->out_height * p->out_width, R = cg * p->kernel_height * p->kernel_width;
            const float *x_group = x + (n * p->channels + group * cg) * p->height * p->width;
            float *y_group = y + (n * p->out_channels + group * mg) * plane;
            if (implicit_gemm(p, src)) {
                const patches g = {p, x_group};
                /* B, when given, is the C operand: one value per row of Y. */
                const moa_matrix_f32 b = view(bias != NULL ? bias + group * mg : NULL, 1, 0);
                const moa_status status = moa_gemm_gathered_f32_on(pool, mg, plane, R, 1.0f,
                                                                   view(src.w + group * mg * R, R, 1),
                                                                   gather_patches, &g, 1.0f, b, y_group,
                                                                   (ptrdiff_t)plane);
                if (status != MOA_OK) {
                    return status;
                }
                continue;
            }
            fill_bias(p, bias, group, y_group);
            for (kh = 0; kh < p->kernel_height; kh++) {
                for (kw = 0; kw < p->kernel_width; kw++) {
                    const moa_status status = conv_tap(pool, p, x_group, tap_weights(p, src, group, kh, kw), y_group,
                                                       kh, kw);
                    if (status != MOA_OK) {
                        return status;
                    }
                }
            }
        }
    }
    return MOA_OK;
}

moa_status moa_conv2d_f32(const moa_conv2d_params *p, const float *x, const float *w, const float *bias,
                          float *y)
{
    return moa_conv2d_f32_on(NULL, p, x, w, bias, y);
}

moa_status moa_conv2d_f32_on(moa_pool *pool, const moa_conv2d_params *p, const float *x, const float *w,
                             const float *bias, float *y)
{
    weights_source src;
    if (p == NULL || x == NULL || w == NULL || y == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    if (bad_geometry(p)) {
        return MOA_ERR_BAD_PARAMS;
    }
    src.w = w, src.quantized = NULL, src.scratch = NULL;
    return convolve(pool, p, x, src, bias, y);
}

moa_status moa_conv2d_qw_f32(const moa_conv2d_params *p, const float *x, moa_qweights w, const float *bias,
                             float *y, float *scratch)
{
    return moa_conv2d_qw_f32_on(NULL, p, x, w, bias, y, scratch);
}

moa_status moa_conv2d_qw_f32_on(moa_pool *pool, const moa_conv2d_params *p, const float *x, moa_qweights w,
                                const float *bias, float *y, float *scratch)
{
    weights_source src;
    size_t R;
    if (p == NULL || x == NULL || y == NULL || scratch == NULL || w.q == NULL ||
        (w.scale == NULL && w.type != MOA_QW_F16)) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    if (bad_geometry(p)) {
        return MOA_ERR_BAD_PARAMS;
    }
    R = p->channels / p->groups * p->kernel_height * p->kernel_width;
    if ((w.type != MOA_QW_I8 && w.type != MOA_QW_U4 && w.type != MOA_QW_F16) || w.block == 0 || R % w.block != 0 ||
        w.half_scales > MOA_QS_HALF ||
        (w.type == MOA_QW_U4 && R % 2 != 0)) {
        return MOA_ERR_BAD_PARAMS;
    }
    src.w = NULL, src.quantized = &w, src.scratch = scratch;
    return convolve(pool, p, x, src, bias, y);
}
