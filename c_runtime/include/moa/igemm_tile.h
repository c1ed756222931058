/* The integer GEMM's micro-kernels (moa/igemm.h), one set per ISA, picked at compile time:
 *
 *     tile: acc[i][j] = sum_{k < 4 groups} A_i[k] B[k][j]     i < MOA_IGEMM_MR, j < 16
 *     row:  the same for one row (the decode step's GEMV, and the rows past the last tile)
 *
 * with A_i = a + i * a_row_stride (Kp bytes of row i, zero-padded) and B one packed panel
 * (groups x 64 bytes, igemm.h's layout). A is in the form the instruction multiplies:
 * unsigned on x86 (vpdpbusd is u8 x s8; the widening kernels take it too), signed elsewhere
 * (SDOT and the widening multiplies are s8 x s8); the driver (igemm.c) writes it so and
 * corrects the sums for the 128 it moved A by.
 *
 *     variant                                    MR   how
 *     moa_igemm_tile_16x16_amx                   16   AMX tdpbusd: 16 x 16 sums in one tile, 64 k a step
 *                                                     (row: the VNNI one); where Linux does not grant the
 *                                                     tile state (moa_igemm_amx_ready), the VNNI tile of 16
 *     moa_igemm_{tile,row}_12x16_avx512vnni      12   vpdpbusd: 4 products per lane, 1 zmm per row
 *     moa_igemm_{tile,row}_8x16_avx512bw          8   widen to int16, vpmaddwd, 2 zmm per row
 *     moa_igemm_{tile,row,panels}_6x16_avx2       6   B's bytes split to int16 pairs by shifts, A's widened
 *                                                     once for 4 panels, vpmaddwd, 2 ymm per row
 *     moa_igemm_{tile,row}_6x16_neondot           6   SDOT (armv8.2 dotprod), 4 q per row
 *     moa_igemm_{tile,row}_2x16_neon              2   vmull_s8 + vpadalq_s16, 8 q per row
 *     moa_igemm_{tile,row}_4x16_rvv               4   vlseg4e8, vsext to int16, vwmacc.vx into int32 m4
 *     moa_igemm_{tile,row}_4x16_helium            4   a column's 16 k gathered, VMLADAVA: 16 products into a register
 *     moa_igemm_{tile,row}_4x16_dsp               4   Cortex-M DSP (M4, M7, M33): SXTB16 + SMLAD, 2 products each
 *     moa_igemm_{tile,row}_4x16_scalar            4   the portable reference */
#ifndef MOA_IGEMM_TILE_H
#define MOA_IGEMM_TILE_H

#include <stddef.h>
#include <stdint.h>

#include "moa/igemm.h"
#include "moa/isa.h"

#if MOA_ISA_AVX512 && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AMX_TILE__) && \
    defined(__AMX_INT8__) && defined(__linux__)
#define MOA_IGEMM_AMX 1
#define MOA_IGEMM_AVX512VNNI 1 /* its row kernel, and the tile where AMX is refused */
#define MOA_IGEMM_MR 16
#define MOA_IGEMM_VARIANT(name) name##_16x16_amx
#define MOA_IGEMM_NAME "amx"
#elif MOA_ISA_AVX512 && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define MOA_IGEMM_AVX512VNNI 1
#define MOA_IGEMM_MR 12
#define MOA_IGEMM_VARIANT(name) name##_12x16_avx512vnni
#define MOA_IGEMM_NAME "avx512vnni"
#elif MOA_ISA_AVX512 && defined(__AVX512BW__)
#define MOA_IGEMM_AVX512BW 1
#define MOA_IGEMM_MR 8
#define MOA_IGEMM_VARIANT(name) name##_8x16_avx512bw
#define MOA_IGEMM_NAME "avx512bw"
#elif MOA_ISA_AVX2 || MOA_ISA_AVX512
#define MOA_IGEMM_AVX2 1
#define MOA_IGEMM_MR 6
#define MOA_IGEMM_VARIANT(name) name##_6x16_avx2
#define MOA_IGEMM_PANELS 4 /* moa_igemm_panels: A's rows widened once for 4 panels */
#define MOA_IGEMM_NAME "avx2"
#elif MOA_ISA_NEON && defined(__ARM_FEATURE_DOTPROD)
#define MOA_IGEMM_NEONDOT 1
#define MOA_IGEMM_MR 6
#define MOA_IGEMM_VARIANT(name) name##_6x16_neondot
#define MOA_IGEMM_NAME "neondot"
#elif MOA_ISA_NEON
#define MOA_IGEMM_NEON 1
#define MOA_IGEMM_MR 2
#define MOA_IGEMM_VARIANT(name) name##_2x16_neon
#define MOA_IGEMM_NAME "neon"
#elif MOA_ISA_RVV
#define MOA_IGEMM_RVV 1
#define MOA_IGEMM_MR 4
#define MOA_IGEMM_VARIANT(name) name##_4x16_rvv
#define MOA_IGEMM_NAME "rvv"
#elif MOA_ISA_HELIUM
#define MOA_IGEMM_HELIUM 1
#define MOA_IGEMM_MR 4
#define MOA_IGEMM_VARIANT(name) name##_4x16_helium
#define MOA_IGEMM_NAME "helium"
#elif MOA_ISA_SCALAR && defined(__ARM_FEATURE_SIMD32) && !defined(MOA_FORCE_SCALAR)
#define MOA_IGEMM_DSP 1
#define MOA_IGEMM_MR 4
#define MOA_IGEMM_VARIANT(name) name##_4x16_dsp
#define MOA_IGEMM_NAME "dsp"
#else
#define MOA_IGEMM_SCALAR 1
#define MOA_IGEMM_MR 4
#define MOA_IGEMM_VARIANT(name) name##_4x16_scalar
#define MOA_IGEMM_NAME "scalar"
#endif

/* The A bytes the kernels multiply, and what was added to A to make them (A = A_k - shift). */
#if defined(MOA_IGEMM_AVX512VNNI) || defined(MOA_IGEMM_AVX512BW) || defined(MOA_IGEMM_AVX2)
typedef uint8_t moa_igemm_a;
#define MOA_IGEMM_A_UNSIGNED 1
#else
typedef int8_t moa_igemm_a;
#define MOA_IGEMM_A_UNSIGNED 0
#endif

#if MOA_IGEMM_MC % MOA_IGEMM_MR != 0
#error "MOA_IGEMM_MC must be a whole number of register tiles"
#endif

#define MOA_IGEMM_TILE_PARAMS \
    size_t groups, const moa_igemm_a *a, ptrdiff_t a_row_stride, const int8_t *b, int32_t *acc
#define MOA_IGEMM_ROW_PARAMS size_t groups, const moa_igemm_a *a, const int8_t *b, int32_t *acc

#define moa_igemm_tile MOA_IGEMM_VARIANT(moa_igemm_tile)
#if defined(MOA_IGEMM_AMX)
#define moa_igemm_row moa_igemm_row_12x16_avx512vnni
void moa_igemm_tile_16x16_avx512vnni(MOA_IGEMM_TILE_PARAMS);
/* Whether this process may use the AMX tile state (Linux grants it on request, once per process:
 * arch_prctl ARCH_REQ_XCOMP_PERM); asked once per GEMM call. */
int moa_igemm_amx_ready(void);
#else
#define moa_igemm_row MOA_IGEMM_VARIANT(moa_igemm_row)
#endif

void moa_igemm_tile(MOA_IGEMM_TILE_PARAMS); /* acc: MOA_IGEMM_MR rows of 16 */
void moa_igemm_row(MOA_IGEMM_ROW_PARAMS);   /* acc: 16 */

#if defined(MOA_IGEMM_PANELS)
/* The tile over `panels` <= MOA_IGEMM_PANELS panels, panel q at b + q * panel_stride, and `rows`
 * <= MOA_IGEMM_MR rows: acc holds panels x MOA_IGEMM_MR rows of 16, row r of panel q at
 * (q MR + r) 16. Where it is defined, the driver calls it for every row, instead of tile and row. */
#define moa_igemm_panels MOA_IGEMM_VARIANT(moa_igemm_panels)
void moa_igemm_panels(size_t groups, const moa_igemm_a *a, ptrdiff_t a_row_stride, const int8_t *b,
                      size_t panel_stride, size_t panels, size_t rows, int32_t *acc);
#endif

#endif
