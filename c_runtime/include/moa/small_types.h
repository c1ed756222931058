/* The small types ONNX casts to and from: float8 (e4m3fn, e4m3fnuz, e5m2, e5m2fnuz), float4 e2m1
 * and the 4- and 2-bit integers, one element per byte in its low bits (a uint8_t), as ml_dtypes
 * holds them. Widening to float32 is exact; narrowing rounds to
 * nearest, ties to even, as ONNX's Cast and ml_dtypes do.
 *
 * A minifloat has `mantissa` bits, an exponent of (width - 1 - mantissa) bits with `bias`, and one
 * of these NaN and infinity encodings:
 *     MOA_IEEE  the top exponent is inf (mantissa 0) or NaN (e5m2)
 *     MOA_FN    no infinities; all ones (either sign) is NaN (e4m3fn)
 *     MOA_FNUZ  no infinities, no -0; the sign bit alone (0x80) is NaN (e4m3fnuz, e5m2fnuz)
 *     MOA_NONE  no infinities, no NaN (float4 e2m1: NaN becomes the zero of the other sign, as in
 *               ml_dtypes)
 * Past the largest finite value (after rounding) a value saturates to it when `saturate` (and
 * always where there is nothing else), else becomes inf (IEEE) or NaN. */
#ifndef MOA_SMALL_TYPES_H
#define MOA_SMALL_TYPES_H

#include <math.h>
#include <stdint.h>
#include <string.h>

enum { MOA_IEEE, MOA_FN, MOA_FNUZ, MOA_NONE };

static inline float moa_minifloat_to_f32(unsigned bits, int width, int mantissa, int bias, int kind)
{
    const unsigned sign = (bits >> (width - 1)) & 1u;
    const unsigned top = (1u << (width - 1 - mantissa)) - 1u; /* the exponent field's largest value */
    const unsigned exponent = (bits >> mantissa) & top;
    const unsigned fraction = bits & ((1u << mantissa) - 1u);
    float magnitude;
    if ((kind == MOA_FNUZ && bits == 1u << (width - 1)) ||
        (kind == MOA_FN && (bits & ((1u << (width - 1)) - 1u)) == (1u << (width - 1)) - 1u) ||
        (kind == MOA_IEEE && exponent == top && fraction != 0)) {
        return NAN;
    }
    if (kind == MOA_IEEE && exponent == top) {
        magnitude = INFINITY;
    } else if (exponent == 0) { /* subnormal: fraction * 2^(1 - bias - mantissa) */
        magnitude = ldexpf((float)fraction, 1 - bias - mantissa);
    } else {
        magnitude = ldexpf((float)(fraction | (1u << mantissa)), (int)exponent - bias - mantissa);
    }
    return sign ? -magnitude : magnitude;
}

static inline uint8_t moa_f32_to_minifloat(float x, int width, int mantissa, int bias, int kind, float largest,
                                           int saturate)
{
    const unsigned sign = signbit(x) ? 1u << (width - 1) : 0u;
    const unsigned top = (1u << (width - 1 - mantissa)) - 1u;
    const unsigned nan = kind == MOA_FNUZ ? 1u << (width - 1) : kind == MOA_NONE ? sign ^ (1u << (width - 1))
                       : sign | ((1u << (width - 1)) - 1u);
    const unsigned largest_bits = kind == MOA_IEEE ? (top - 1u) << mantissa | ((1u << mantissa) - 1u)
                                : kind == MOA_FN ? ((1u << (width - 1)) - 2u)
                                : (1u << (width - 1)) - 1u;
    const int least_exponent = 1 - bias; /* of the normal numbers; below it the step stays 2^(it - mantissa) */
    float magnitude = fabsf(x), rounded;
    int exponent, step;
    if (isnan(x)) {
        return (uint8_t)nan;
    }
    if (isinf(magnitude) || magnitude == 0.0f) {
        rounded = magnitude;
    } else {
        (void)frexpf(magnitude, &exponent); /* magnitude in [2^(exponent-1), 2^exponent) */
        step = (exponent - 1 > least_exponent ? exponent - 1 : least_exponent) - mantissa;
        rounded = ldexpf(nearbyintf(ldexpf(magnitude, -step)), step);
    }
    if (rounded > largest) {
        if (saturate || kind == MOA_NONE) {
            return (uint8_t)(sign | largest_bits);
        }
        return (uint8_t)(kind == MOA_IEEE ? sign | top << mantissa : nan);
    }
    if (rounded == 0.0f) {
        return (uint8_t)(kind == MOA_FNUZ ? 0u : sign);
    }
    (void)frexpf(rounded, &exponent);
    if (exponent - 1 < least_exponent) { /* subnormal */
        return (uint8_t)(sign | (unsigned)ldexpf(rounded, mantissa - least_exponent));
    }
    return (uint8_t)(sign | (unsigned)(exponent - 1 + bias) << mantissa |
                     ((unsigned)ldexpf(rounded, mantissa - (exponent - 1)) - (1u << mantissa)));
}

/* The value of an integer's low `bits` bits: a small integer's value from the byte that holds it,
 * or what an integer wraps to in its type. */
static inline int64_t moa_wrap_small_int(int64_t value, int bits, int is_signed)
{
    const uint64_t low = (uint64_t)value & ((1u << bits) - 1u);
    return is_signed && (low >> (bits - 1)) ? (int64_t)low - ((int64_t)1 << bits) : (int64_t)low;
}

/* A float to a small integer: towards zero, then wrapped to `bits` bits as ml_dtypes does (NaN and
 * infinities give 0). */
static inline int64_t moa_f32_to_small_int(float x, int bits, int is_signed)
{
    const int64_t whole = isfinite(x) && fabsf(x) < 9.2e18f ? (int64_t)x : 0;
    return moa_wrap_small_int(whole, bits, is_signed);
}

/* float8 e8m0: a bare exponent, 2^(bits - 127), 0xFF NaN; no sign, no zero. A float keeps its own
 * exponent field, rounded by its fraction as Cast's round_mode says (ONNX's reference, bit for bit):
 * up (any fraction), down (none) or nearest (guard bit, then round, sticky or a nonzero exponent);
 * saturate stops the rounding at the largest exponent, 0xFE. NaN and infinities give 0xFF. */
enum { MOA_ROUND_UP, MOA_ROUND_DOWN, MOA_ROUND_NEAREST };

static inline float moa_f8e8m0_to_f32(uint8_t b)
{
    return b == 0xFFu ? NAN : ldexpf(1.0f, (int)b - 127);
}

static inline uint8_t moa_f32_to_f8e8m0(float x, int saturate, int round_mode)
{
    uint32_t bits;
    unsigned exponent;
    int up;
    memcpy(&bits, &x, sizeof bits);
    exponent = (bits >> 23) & 0xFFu;
    if (exponent == 0xFFu) {
        return 0xFF;
    }
    if (round_mode == MOA_ROUND_UP) {
        up = (bits & 0x7FFFFFu) != 0;
    } else if (round_mode == MOA_ROUND_NEAREST) {
        up = (bits & 0x400000u) && ((bits & 0x200000u) || (bits & 0x1FFFFFu) || exponent > 0);
    } else {
        up = 0;
    }
    if (up && !(saturate && exponent == 0xFEu)) {
        exponent++;
    }
    return (uint8_t)exponent;
}

/* The types by name (moa_<suffix>_to_f32, moa_f32_to_<suffix>), as ops/elementwise.py calls them. */
static inline float moa_f8e4m3fn_to_f32(uint8_t b) { return moa_minifloat_to_f32(b, 8, 3, 7, MOA_FN); }
static inline float moa_f8e4m3fnuz_to_f32(uint8_t b) { return moa_minifloat_to_f32(b, 8, 3, 8, MOA_FNUZ); }
static inline float moa_f8e5m2_to_f32(uint8_t b) { return moa_minifloat_to_f32(b, 8, 2, 15, MOA_IEEE); }
static inline float moa_f8e5m2fnuz_to_f32(uint8_t b) { return moa_minifloat_to_f32(b, 8, 2, 16, MOA_FNUZ); }
static inline float moa_f4e2m1_to_f32(uint8_t b) { return moa_minifloat_to_f32(b, 4, 1, 1, MOA_NONE); }

static inline uint8_t moa_f32_to_f8e4m3fn(float x, int saturate)
{
    return moa_f32_to_minifloat(x, 8, 3, 7, MOA_FN, 448.0f, saturate);
}
static inline uint8_t moa_f32_to_f8e4m3fnuz(float x, int saturate)
{
    return moa_f32_to_minifloat(x, 8, 3, 8, MOA_FNUZ, 240.0f, saturate);
}
static inline uint8_t moa_f32_to_f8e5m2(float x, int saturate)
{
    return moa_f32_to_minifloat(x, 8, 2, 15, MOA_IEEE, 57344.0f, saturate);
}
static inline uint8_t moa_f32_to_f8e5m2fnuz(float x, int saturate)
{
    return moa_f32_to_minifloat(x, 8, 2, 16, MOA_FNUZ, 57344.0f, saturate);
}
static inline uint8_t moa_f32_to_f4e2m1(float x, int saturate)
{
    return moa_f32_to_minifloat(x, 4, 1, 1, MOA_NONE, 6.0f, saturate);
}

#endif
