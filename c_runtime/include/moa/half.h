/* IEEE binary16 (float16) and bfloat16 <-> float32, bit by bit: C99 has no half type, so a half
 * is its 16 bits in a uint16_t. Widening is exact; narrowing rounds to nearest, ties to even, as
 * ONNX's Cast, numpy and the hardware conversions (F16C, vcvt) do:
 *
 *     float16:  1 sign, 5 exponent (bias 15), 10 mantissa bits; |x| >= 65520 rounds to infinity,
 *               |x| < 2^-14 to a subnormal (multiples of 2^-24), |x| <= 2^-25 to zero
 *     bfloat16: the top 16 bits of a float32, rounded
 *
 * NaN stays NaN (quiet, with the sign and the top payload bits). */
#ifndef MOA_HALF_H
#define MOA_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t moa_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float moa_f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float moa_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0x1fu) { /* infinity, NaN */
        return moa_f32_from_bits(sign | 0x7f800000u | mantissa << 13);
    }
    if (exponent == 0) { /* zero and subnormals: mantissa * 2^-24, exact in float32 */
        return moa_f32_from_bits(sign | moa_f32_bits((float)mantissa * 0x1p-24f));
    }
    return moa_f32_from_bits(sign | (exponent + 112u) << 23 | mantissa << 13); /* exponent bias 127 - 15 */
}

static inline uint16_t moa_f32_to_f16(float f)
{
    const uint32_t u = moa_f32_bits(f), magnitude = u & 0x7fffffffu;
    const uint16_t sign = (uint16_t)(u >> 16 & 0x8000u);
    if (magnitude > 0x7f800000u) { /* NaN */
        return (uint16_t)(sign | 0x7e00u | (magnitude >> 13 & 0x3ffu));
    }
    if (magnitude >= 0x477ff000u) { /* 65520 and above: half way to 2^16 or past, infinity */
        return (uint16_t)(sign | 0x7c00u);
    }
    if (magnitude >= 0x38800000u) { /* 2^-14 and above: a normal half, the mantissa rounded to 10 bits */
        const uint32_t rounded = magnitude + 0xfffu + (magnitude >> 13 & 1u);
        return (uint16_t)(sign | (rounded - 0x38000000u) >> 13);
    }
    if (magnitude <= 0x33000000u) { /* 2^-25 and below: zero (2^-25 is a tie, to the even 0) */
        return sign;
    }
    { /* a subnormal: the 24-bit significand in units of 2^-24, rounded to an integer */
        const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u, shift = 126u - (magnitude >> 23);
        const uint32_t half = 1u << (shift - 1), rest = significand & ((1u << shift) - 1u);
        uint32_t units = significand >> shift;
        if (rest > half || (rest == half && (units & 1u))) {
            units++;
        }
        return (uint16_t)(sign | units);
    }
}

static inline float moa_bf16_to_f32(uint16_t b)
{
    return moa_f32_from_bits((uint32_t)b << 16);
}

static inline uint16_t moa_f32_to_bf16(float f)
{
    const uint32_t u = moa_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) { /* NaN: quiet, whatever the low payload bits held */
        return (uint16_t)(u >> 16 | 0x40u);
    }
    return (uint16_t)((u + 0x7fffu + (u >> 16 & 1u)) >> 16); /* a carry past the largest finite is infinity */
}

#endif
