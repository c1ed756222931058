/* The integer GEMM's micro-kernels (moa/igemm_tile.h) for AVX-512: a packed group (16 columns x
 * 4 k, 64 bytes) is one zmm. With VNNI, vpdpbusd multiplies it by 4 bytes of an A row broadcast
 * (u8 x s8) and adds each column's 4 products to its int32 lane: one instruction per row and
 * group. Without it (AVX-512BW), both sides are widened to int16 and vpmaddwd adds pairs of
 * products (no saturation, unlike vpmaddubsw's int16 sums): each column keeps two lanes, added
 * at the end. With AMX (Sapphire Rapids on), tdpbusd multiplies 16 rows by 16 columns over 64 k
 * in one instruction, from tiles loaded straight from the block of A and the packed panel. */
#define _GNU_SOURCE /* syscall(), for the AMX permission */
#include <string.h>

#include "moa/igemm_tile.h"

#if defined(MOA_IGEMM_AVX512VNNI) || defined(MOA_IGEMM_AVX512BW)
#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))

/* The 4 bytes of A at a, as one int32. */
INLINE int32_t four_bytes(const uint8_t *a)
{
    int32_t value;
    memcpy(&value, a, sizeof value);
    return value;
}
#endif

#if defined(MOA_IGEMM_AVX512VNNI)
/* `rows` (a constant once inlined) rows of A, one zmm of sums each. */
INLINE void vnni_tile(int rows, MOA_IGEMM_TILE_PARAMS)
{
    __m512i sum[16];
    size_t g;
    int i;
#pragma GCC unroll 16
    for (i = 0; i < rows; i++) {
        sum[i] = _mm512_setzero_si512();
    }
    for (g = 0; g < groups; g++) {
        const __m512i b_g = _mm512_loadu_si512(b + g * 64);
        const uint8_t *a_g = a + 4 * g;
#pragma GCC unroll 16
        for (i = 0; i < rows; i++) {
            sum[i] = _mm512_dpbusd_epi32(sum[i], _mm512_set1_epi32(four_bytes(a_g + i * a_row_stride)), b_g);
        }
    }
#pragma GCC unroll 16
    for (i = 0; i < rows; i++) {
        _mm512_storeu_si512(acc + 16 * i, sum[i]);
    }
}

void moa_igemm_tile_12x16_avx512vnni(MOA_IGEMM_TILE_PARAMS)
{
    vnni_tile(12, groups, a, a_row_stride, b, acc);
}

/* One row: four sums over alternate groups, so that consecutive vpdpbusd do not wait on each other. */
void moa_igemm_row_12x16_avx512vnni(MOA_IGEMM_ROW_PARAMS)
{
    __m512i sum0 = _mm512_setzero_si512(), sum1 = sum0, sum2 = sum0, sum3 = sum0;
    size_t g = 0;
    for (; g + 4 <= groups; g += 4) {
        sum0 = _mm512_dpbusd_epi32(sum0, _mm512_set1_epi32(four_bytes(a + 4 * g)), _mm512_loadu_si512(b + g * 64));
        sum1 = _mm512_dpbusd_epi32(sum1, _mm512_set1_epi32(four_bytes(a + 4 * g + 4)),
                                   _mm512_loadu_si512(b + g * 64 + 64));
        sum2 = _mm512_dpbusd_epi32(sum2, _mm512_set1_epi32(four_bytes(a + 4 * g + 8)),
                                   _mm512_loadu_si512(b + g * 64 + 128));
        sum3 = _mm512_dpbusd_epi32(sum3, _mm512_set1_epi32(four_bytes(a + 4 * g + 12)),
                                   _mm512_loadu_si512(b + g * 64 + 192));
    }
    for (; g < groups; g++) {
        sum0 = _mm512_dpbusd_epi32(sum0, _mm512_set1_epi32(four_bytes(a + 4 * g)), _mm512_loadu_si512(b + g * 64));
    }
    _mm512_storeu_si512(acc, _mm512_add_epi32(_mm512_add_epi32(sum0, sum1), _mm512_add_epi32(sum2, sum3)));
}
#endif

#if defined(MOA_IGEMM_AMX)
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int moa_igemm_amx_ready(void)
{
#if defined(MOA_IGEMM_AMX_REFUSED) /* tests: the fallback, as on a kernel that refuses */
    return 0;
#else
    unsigned long features = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &features) == 0 && (features >> XFEATURE_XTILEDATA & 1)) {
        return 1;
    }
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#endif
}

void moa_igemm_tile_16x16_avx512vnni(MOA_IGEMM_TILE_PARAMS)
{
    vnni_tile(16, groups, a, a_row_stride, b, acc);
}

/* The tile registers' shapes (palette 1): rows, and bytes per row. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes[16];
    uint8_t rows[16];
} tile_config;

/* Tile 0: the 16 x 16 int32 sums. Tiles 1 and 2: 64 k of the 16 rows of A (16 x 64 bytes) and the
 * 16 groups of B that match them (a group, 16 columns x 4 k, is one tile row: igemm.h's panel is
 * already tdpbusd's B layout). Tiles 3 and 4: the same for the last `rest` groups. */
void moa_igemm_tile_16x16_amx(MOA_IGEMM_TILE_PARAMS)
{
    const size_t rest = groups % 16;
    tile_config config;
    size_t g;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    config.rows[0] = config.rows[1] = config.rows[2] = 16;
    config.bytes[0] = config.bytes[1] = config.bytes[2] = 64;
    if (rest > 0) {
        config.rows[3] = 16, config.bytes[3] = (uint16_t)(4 * rest);
        config.rows[4] = (uint8_t)rest, config.bytes[4] = 64;
    }
    _tile_loadconfig(&config);
    _tile_zero(0);
    for (g = 0; g + 16 <= groups; g += 16) {
        _tile_loadd(1, a + 4 * g, a_row_stride);
        _tile_loadd(2, b + 64 * g, 64);
        _tile_dpbusd(0, 1, 2);
    }
    if (rest > 0) {
        _tile_loadd(3, a + 4 * g, a_row_stride);
        _tile_loadd(4, b + 64 * g, 64);
        _tile_dpbusd(0, 3, 4);
    }
    _tile_stored(0, acc, 64);
    _tile_release();
}
#endif

#if defined(MOA_IGEMM_AVX512BW)
/* 4 bytes of A zero-extended to int16 and repeated in every 64-bit lane: the 4 k of each column. */
INLINE __m512i row_group(const uint8_t *a)
{
    return _mm512_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(four_bytes(a))));
}

/* Columns 0-7 (low) and 8-15 (high) of a group, widened: lane 4j + t holds B[4g + t][j]. */
INLINE __m512i low_columns(const int8_t *b_g)
{
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)b_g));
}

INLINE __m512i high_columns(const int8_t *b_g)
{
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(b_g + 32)));
}

/* Lane 2j + h of low (columns 0-7) and of high (8-15) hold column j's two pair sums: add them. */
INLINE void store_columns(int32_t *acc, __m512i low, __m512i high)
{
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    _mm512_storeu_si512(acc, _mm512_add_epi32(_mm512_permutex2var_epi32(low, even, high),
                                              _mm512_permutex2var_epi32(low, odd, high)));
}

void moa_igemm_tile_8x16_avx512bw(MOA_IGEMM_TILE_PARAMS)
{
    __m512i low[8], high[8];
    size_t g;
    int i;
#pragma GCC unroll 8
    for (i = 0; i < 8; i++) {
        low[i] = high[i] = _mm512_setzero_si512();
    }
    for (g = 0; g < groups; g++) {
        const __m512i b_low = low_columns(b + g * 64), b_high = high_columns(b + g * 64);
#pragma GCC unroll 8
        for (i = 0; i < 8; i++) {
            const __m512i a_i = row_group(a + i * a_row_stride + 4 * g);
            low[i] = _mm512_add_epi32(low[i], _mm512_madd_epi16(b_low, a_i));
            high[i] = _mm512_add_epi32(high[i], _mm512_madd_epi16(b_high, a_i));
        }
    }
#pragma GCC unroll 8
    for (i = 0; i < 8; i++) {
        store_columns(acc + 16 * i, low[i], high[i]);
    }
}

void moa_igemm_row_8x16_avx512bw(MOA_IGEMM_ROW_PARAMS)
{
    __m512i low0 = _mm512_setzero_si512(), high0 = low0, low1 = low0, high1 = low0;
    size_t g = 0;
    for (; g + 2 <= groups; g += 2) {
        const __m512i a0 = row_group(a + 4 * g), a1 = row_group(a + 4 * g + 4);
        low0 = _mm512_add_epi32(low0, _mm512_madd_epi16(low_columns(b + g * 64), a0));
        high0 = _mm512_add_epi32(high0, _mm512_madd_epi16(high_columns(b + g * 64), a0));
        low1 = _mm512_add_epi32(low1, _mm512_madd_epi16(low_columns(b + g * 64 + 64), a1));
        high1 = _mm512_add_epi32(high1, _mm512_madd_epi16(high_columns(b + g * 64 + 64), a1));
    }
    if (g < groups) {
        const __m512i a0 = row_group(a + 4 * g);
        low0 = _mm512_add_epi32(low0, _mm512_madd_epi16(low_columns(b + g * 64), a0));
        high0 = _mm512_add_epi32(high0, _mm512_madd_epi16(high_columns(b + g * 64), a0));
    }
    store_columns(acc, _mm512_add_epi32(low0, low1), _mm512_add_epi32(high0, high1));
}
#endif
