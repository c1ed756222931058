/* The token embedding lookup over a table stored quantized (convert --weights): row `index` of
 * E [N][K], read from W = E^T in qmatmul.h's layout, so a tied lm_head (whose weight is W) and
 * the lookup share one stored copy of the table:
 *
 *     y[k] = E[index][k] = W[k][index] = scale[k / block][index] q[k][index] + offset[k / block][index]
 *
 * Column `index` of W is lane index % 16 of panel index / 16: its K values are 16 bytes apart
 * (int8), nibbles of pairs 16 bytes apart (4-bit) or halves 32 bytes apart (float16, no scale),
 * one column of the GEMM's panels. K values per token, never the hot path: plain C, one function
 * for every ISA. */
#ifndef MOA_QGATHER_H
#define MOA_QGATHER_H

#include <stddef.h>

#include "moa/qmatmul.h"
#include "moa/status.h"

/* y[0..K) = row `index` of E = W^T (W: K x N quantized weights, qmatmul.h). An index outside
 * [0, N) is MOA_ERR_INDEX_OUT_OF_RANGE, an unknown type, a block of 0 or an odd 4-bit block
 * MOA_ERR_BAD_PARAMS; y is then untouched. */
moa_status moa_gather_qw_f32(size_t K, size_t N, moa_qweights w, ptrdiff_t index, float *y);

#endif
