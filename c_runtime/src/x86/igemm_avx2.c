/* The integer GEMM's micro-kernels (moa/igemm_tile.h) for AVX2: a packed group (16 columns x 4 k)
 * is four chunks of 4 columns, each widened to int16 in one ymm; 4 bytes of an A row are widened
 * and repeated in every 64-bit lane, and vpmaddwd adds pairs of products into int32 (exact, where
 * vpmaddubsw's int16 pair sums would saturate: 255 * 127 * 2 > 32767). Each column keeps two
 * lanes, added at the end. Two rows: eight accumulators, a chunk of B and two rows of A. */
#include <string.h>

#include "moa/igemm_tile.h"

#if defined(MOA_IGEMM_AVX2)
#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))

INLINE __m256i row_group(const uint8_t *a)
{
    int32_t value;
    memcpy(&value, a, sizeof value);
    return _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(value)));
}

/* Columns 4c .. 4c + 3 of a group, widened: lane 4j + t holds B[4g + t][4c + j]. */
INLINE __m256i chunk(const int8_t *b_g, int c)
{
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b_g + 16 * c)));
}

/* sum[c] lane 2j + h holds column 4c + j's pair sum h: 16 column sums in order. */
INLINE void store_columns(int32_t *acc, const __m256i sum[4])
{
    /* hadd gives, per 128-bit half, columns (0, 1, 4, 5 | 2, 3, 6, 7) of the pair; the 64-bit
     * permute puts them in order. */
    const __m256i first = _mm256_permute4x64_epi64(_mm256_hadd_epi32(sum[0], sum[1]), _MM_SHUFFLE(3, 1, 2, 0));
    const __m256i second = _mm256_permute4x64_epi64(_mm256_hadd_epi32(sum[2], sum[3]), _MM_SHUFFLE(3, 1, 2, 0));
    _mm256_storeu_si256((__m256i *)acc, first);
    _mm256_storeu_si256((__m256i *)(acc + 8), second);
}

void moa_igemm_tile_2x16_avx2(MOA_IGEMM_TILE_PARAMS)
{
    __m256i sum0[4], sum1[4];
    size_t g;
    int c;
#pragma GCC unroll 4
    for (c = 0; c < 4; c++) {
        sum0[c] = sum1[c] = _mm256_setzero_si256();
    }
    for (g = 0; g < groups; g++) {
        const __m256i a0 = row_group(a + 4 * g), a1 = row_group(a + a_row_stride + 4 * g);
#pragma GCC unroll 4
        for (c = 0; c < 4; c++) {
            const __m256i b_c = chunk(b + g * 64, c);
            sum0[c] = _mm256_add_epi32(sum0[c], _mm256_madd_epi16(b_c, a0));
            sum1[c] = _mm256_add_epi32(sum1[c], _mm256_madd_epi16(b_c, a1));
        }
    }
    store_columns(acc, sum0);
    store_columns(acc + 16, sum1);
}

void moa_igemm_row_2x16_avx2(MOA_IGEMM_ROW_PARAMS)
{
    __m256i sum[4];
    size_t g;
    int c;
#pragma GCC unroll 4
    for (c = 0; c < 4; c++) {
        sum[c] = _mm256_setzero_si256();
    }
    for (g = 0; g < groups; g++) {
        const __m256i a_g = row_group(a + 4 * g);
#pragma GCC unroll 4
        for (c = 0; c < 4; c++) {
            sum[c] = _mm256_add_epi32(sum[c], _mm256_madd_epi16(chunk(b + g * 64, c), a_g));
        }
    }
    store_columns(acc, sum);
}
#endif
