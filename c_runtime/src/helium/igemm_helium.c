/* The integer GEMM's micro-kernels (moa/igemm_tile.h) for Arm Helium (MVE), A and B signed
 * (uint8 A arrives moved by -128, igemm.c). MVE has no per-lane 4-way dot product (SDOT, VNNI),
 * but VMLADAVA multiplies 16 int8 pairs and adds them all into a general register: 16
 * multiply-adds of one row of A and one column of B. Column j's 16 k of four packed groups
 * (4 bytes at 4j of each 64-byte group) come in one byte gather, its offsets all under 256;
 * each gathered column then serves the tile's 4 rows. A tail of fewer than 4 groups is
 * predicated (VCTP): its missing bytes read as 0, nothing past the row of A is read. */
#include "moa/igemm_tile.h"

#if defined(MOA_IGEMM_HELIUM)
#include <arm_mve.h>

/* The byte offsets of column 0's k = 4q + t in four groups: 64 q + t. Column j adds 4 j. */
static const uint8_t COLUMN_BYTES[16] = {0, 1, 2, 3, 64, 65, 66, 67, 128, 129, 130, 131, 192, 193, 194, 195};

#define ROWS 4

/* acc[i * 16 + j] for i < rows: the tile's sums, one column at a time; `rows` is a constant at each call. */
static inline __attribute__((always_inline)) void columns(int rows, size_t groups, const int8_t *a,
                                                          ptrdiff_t a_row_stride, const int8_t *b, int32_t *acc)
{
    const uint8x16_t spread = vld1q_u8(COLUMN_BYTES);
    int32_t sum[ROWS];
    size_t g;
    int i, j;
    for (j = 0; j < MOA_GEMM_NR; j++) {
        const uint8x16_t at = vaddq_n_u8(spread, (uint8_t)(4 * j));
#pragma GCC unroll 4
        for (i = 0; i < rows; i++) {
            sum[i] = 0;
        }
        for (g = 0; g < groups; g += 4) {
            const mve_pred16_t keep = vctp8q((uint32_t)(groups - g < 4 ? 4 * (groups - g) : 16));
            const int8x16_t column = vldrbq_gather_offset_z_s8(b + 64 * g, at, keep);
#pragma GCC unroll 4
            for (i = 0; i < rows; i++) {
                sum[i] = vmladavaq_s8(sum[i], vldrbq_z_s8(a + i * a_row_stride + 4 * (ptrdiff_t)g, keep), column);
            }
        }
#pragma GCC unroll 4
        for (i = 0; i < rows; i++) {
            acc[i * MOA_GEMM_NR + j] = sum[i];
        }
    }
}

void moa_igemm_tile_4x16_helium(MOA_IGEMM_TILE_PARAMS)
{
    columns(ROWS, groups, a, a_row_stride, b, acc);
}

void moa_igemm_row_4x16_helium(MOA_IGEMM_ROW_PARAMS)
{
    columns(1, groups, a, 0, b, acc);
}
#endif
