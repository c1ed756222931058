/* The integer GEMM's micro-kernels (moa/igemm_tile.h) for AVX2: vpmaddwd on int16 (exact, where
 * vpmaddubsw's int16 pair sums would saturate: 255 * 127 * 2 > 32767), one int32 lane per column.
 *
 * Half a packed group (8 columns x 4 k, 32 bytes, byte 4j + t = B[t][j]) read as 16-bit words
 * holds column j's (B[0], B[1]) in word 2j and (B[2], B[3]) in word 2j + 1: shifted left then
 * right by 8 (arithmetic), its low bytes become the int16 pairs (B[0][j], B[2][j]) in dword j,
 * shifted right, its high bytes (B[1][j], B[3][j]). An A row's pairs (A0, A2) and (A1, A3),
 * broadcast, meet them in one vpmaddwd each: column j's 4 products in lane j, no lane to add at
 * the end. Two ymm per row for 16 columns, so 6 rows (12 accumulators, the half's two pairs and
 * two temporaries: all 16 registers; the loop is asm, as GCC 12 spilled accumulators of it).
 *
 * A's rows are staged as int16 (A0, A2, A1, A3) per group, 64 groups at a time on the stack, and
 * that staging serves 4 panels (moa_igemm_panels): the broadcasts are then plain loads, no shuffle.
 * Per group and 6 rows: 2 loads and 6 shifts of B, 24 vpmaddwd + 24 vpaddd.
 *
 * Measured on a Xeon (Sapphire Rapids) at -march=x86-64-v3, 6 x 192 groups against the former
 * 2-row tile (B chunks widened by vpmovsxbw, 2 lanes a column added at the end): ~14.5 -> ~18.5
 * products a cycle with A pre-staged, ~16.5 when staged per panel (hence the 4 panels); the
 * bound of vpmaddwd + vpaddd on this core is ~22.6. A row from the uint8 bytes in registers
 * (vpand + vpsrlw per row and group) was slower as the 6-row tile: ~14; it serves fewer rows (the
 * rows past the last tile, GEMVs), 3 at a time. Whole GEMM (igemm.c), M = 256, K and N of 768 and
 * 3072: 1.16-1.19x; M = 1 to 5: 0.92-1.1x (M = 1, 2, 4 a few % slower than the former kernel). */
#include <string.h>

#include "moa/igemm_tile.h"

#if defined(MOA_IGEMM_AVX2)
#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))
#define MR MOA_IGEMM_MR
#define CHUNK 64 /* groups of A staged at a time: 6 x 512 bytes */

#if MR != 6
#error "the AVX2 tile's asm is written for 6 rows"
#endif

/* n groups of a row as int16 (A0, A2, A1, A3) each, 8 bytes a group. */
INLINE void stage_row(const uint8_t *a, size_t n, int16_t *out)
{
    const __m128i order = _mm_setr_epi8(0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15);
    size_t g = 0;
    for (; g + 4 <= n; g += 4) {
        const __m128i x = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(a + 4 * g)), order);
        _mm256_storeu_si256((__m256i *)(out + 4 * g), _mm256_cvtepu8_epi16(x));
    }
    for (; g < n; g++) {
        int32_t value;
        memcpy(&value, a + 4 * g, sizeof value);
        _mm_storel_epi64((__m128i *)(out + 4 * g), _mm_cvtepu8_epi16(_mm_shuffle_epi8(_mm_cvtsi32_si128(value), order)));
    }
}

#define STR_(x) #x
#define STR(x) STR_(x)
/* Row r, one half: its pairs broadcast from the staging (rows CHUNK * 8 bytes apart), times the
 * half's low-byte pairs (ymm12) and high-byte pairs (ymm13), into the row's accumulator. */
#define ROW_STEP(r, acc)                                                                                     \
    "vpbroadcastd " STR(r) "*" STR(CHUNK) "*8(%[a]), %%ymm14\n\t"                                             \
    "vpbroadcastd " STR(r) "*" STR(CHUNK) "*8+4(%[a]), %%ymm15\n\t"                                           \
    "vpmaddwd %%ymm14, %%ymm12, %%ymm14\n\t"                                                                  \
    "vpmaddwd %%ymm15, %%ymm13, %%ymm15\n\t"                                                                  \
    "vpaddd %%ymm14, %%" acc ", %%" acc "\n\t"                                                                \
    "vpaddd %%ymm15, %%" acc ", %%" acc "\n\t"
/* Half h of the group: the low bytes of its words sign-extended (ymm12), the high bytes (ymm13). */
#define HALF(offset)                                                                                         \
    "vmovdqu " #offset "(%[b]), %%ymm13\n\t"                                                                  \
    "vpsllw $8, %%ymm13, %%ymm12\n\t"                                                                         \
    "vpsraw $8, %%ymm13, %%ymm13\n\t"                                                                         \
    "vpsraw $8, %%ymm12, %%ymm12\n\t"
#define LOAD(i) "vmovdqu " #i "*32(%[acc]), %%ymm" #i "\n\t"
#define STORE(i) "vmovdqu %%ymm" #i ", " #i "*32(%[acc])\n\t"

/* acc (6 rows of 16) += n >= 1 groups of the staged rows times the panel's groups from b. Row r's
 * columns 0 .. 7 in ymm(2r), 8 .. 15 in ymm(2r + 1). */
INLINE void run_groups(size_t n, const int16_t *staged, const int8_t *b, int32_t *acc)
{
    __asm__ __volatile__(LOAD(0) LOAD(1) LOAD(2) LOAD(3) LOAD(4) LOAD(5) LOAD(6) LOAD(7) LOAD(8) LOAD(9) LOAD(10)
                         LOAD(11)
                         "1:\n\t"
                         HALF(0)
                         ROW_STEP(0, "ymm0") ROW_STEP(1, "ymm2") ROW_STEP(2, "ymm4")
                         ROW_STEP(3, "ymm6") ROW_STEP(4, "ymm8") ROW_STEP(5, "ymm10")
                         HALF(32)
                         ROW_STEP(0, "ymm1") ROW_STEP(1, "ymm3") ROW_STEP(2, "ymm5")
                         ROW_STEP(3, "ymm7") ROW_STEP(4, "ymm9") ROW_STEP(5, "ymm11")
                         "add $64, %[b]\n\t"
                         "add $8, %[a]\n\t"
                         "dec %[n]\n\t"
                         "jnz 1b\n\t"
                         STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5) STORE(6) STORE(7) STORE(8) STORE(9)
                         STORE(10) STORE(11)
                         : [a] "+r"(staged), [b] "+r"(b), [n] "+r"(n)
                         : [acc] "r"(acc)
                         : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                           "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

/* `rows` <= 3 rows (the rows past the last tile, few rows, a GEMV): the same pairs, B's shared by
 * the rows, A's made in registers from its bytes (the low bytes of its words masked, the high ones
 * shifted down), which costs 2 operations a row and group but no staging. */
INLINE void few_rows(size_t groups, const uint8_t *a, ptrdiff_t a_row_stride, const int8_t *b, int32_t *acc, int rows)
{
    const __m256i low = _mm256_set1_epi16(0xff);
    __m256i sum[3][2];
    size_t g;
    int r;
#pragma GCC unroll 3
    for (r = 0; r < rows; r++) {
        sum[r][0] = sum[r][1] = _mm256_setzero_si256();
    }
    for (g = 0; g < groups; g++) {
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)(b + 64 * g));
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)(b + 64 * g + 32));
        const __m256i even0 = _mm256_srai_epi16(_mm256_slli_epi16(x0, 8), 8), odd0 = _mm256_srai_epi16(x0, 8);
        const __m256i even1 = _mm256_srai_epi16(_mm256_slli_epi16(x1, 8), 8), odd1 = _mm256_srai_epi16(x1, 8);
#pragma GCC unroll 3
        for (r = 0; r < rows; r++) {
            int32_t value;
            __m256i v, even, odd;
            memcpy(&value, a + r * a_row_stride + 4 * g, sizeof value);
            v = _mm256_set1_epi32(value);
            even = _mm256_and_si256(v, low), odd = _mm256_srli_epi16(v, 8);
            sum[r][0] = _mm256_add_epi32(sum[r][0], _mm256_madd_epi16(even0, even));
            sum[r][0] = _mm256_add_epi32(sum[r][0], _mm256_madd_epi16(odd0, odd));
            sum[r][1] = _mm256_add_epi32(sum[r][1], _mm256_madd_epi16(even1, even));
            sum[r][1] = _mm256_add_epi32(sum[r][1], _mm256_madd_epi16(odd1, odd));
        }
    }
#pragma GCC unroll 3
    for (r = 0; r < rows; r++) {
        _mm256_storeu_si256((__m256i *)(acc + 16 * r), sum[r][0]);
        _mm256_storeu_si256((__m256i *)(acc + 16 * r + 8), sum[r][1]);
    }
}

void moa_igemm_panels_6x16_avx2(size_t groups, const uint8_t *a, ptrdiff_t a_row_stride, const int8_t *b,
                                size_t panel_stride, size_t panels, size_t rows, int32_t *acc)
{
    int16_t staged[MR][CHUNK * 4] __attribute__((aligned(32)));
    size_t g0, p, r0;
    int r;
    if (rows < MR) { /* 3 rows at a time, then 2 or 1 */
        for (p = 0; p < panels; p++) {
            for (r0 = 0; r0 < rows; r0 += 3) {
                const uint8_t *a_r = a + (ptrdiff_t)r0 * a_row_stride;
                int32_t *acc_r = acc + (p * MR + r0) * 16;
                if (rows - r0 >= 3) {
                    few_rows(groups, a_r, a_row_stride, b + p * panel_stride, acc_r, 3);
                } else if (rows - r0 == 2) {
                    few_rows(groups, a_r, a_row_stride, b + p * panel_stride, acc_r, 2);
                } else {
                    few_rows(groups, a_r, a_row_stride, b + p * panel_stride, acc_r, 1);
                }
            }
        }
        return;
    }
    memset(acc, 0, panels * MR * 16 * sizeof *acc);
    for (g0 = 0; g0 < groups; g0 += CHUNK) {
        const size_t n = groups - g0 < CHUNK ? groups - g0 : CHUNK;
        for (r = 0; r < MR; r++) {
            stage_row(a + r * a_row_stride + 4 * g0, n, staged[r]);
        }
        for (p = 0; p < panels; p++) {
            run_groups(n, staged[0], b + p * panel_stride + 64 * g0, acc + p * MR * 16);
        }
    }
}

void moa_igemm_tile_6x16_avx2(MOA_IGEMM_TILE_PARAMS)
{
    moa_igemm_panels_6x16_avx2(groups, a, a_row_stride, b, 0, 1, MR, acc);
}

void moa_igemm_row_6x16_avx2(MOA_IGEMM_ROW_PARAMS)
{
    few_rows(groups, a, 0, b, acc, 1);
}
#endif
