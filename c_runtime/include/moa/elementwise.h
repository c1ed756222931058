/* Scalar functions of the element-wise ops that <math.h> does not spell directly.
 * Generated loops call them once per element; NaN propagates as ONNX expects. */
#ifndef MOA_ELEMENTWISE_H
#define MOA_ELEMENTWISE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "moa/vmath.h"

static inline float moa_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* Gelu(x) = x/2 (1 + erf(x / sqrt 2)), and the tanh approximation of opset 20. */
MOA_VMATH_INLINE float moa_gelu_erf(float x) { return 0.5f * x * (1.0f + moa_erf_f32(x * 0.70710678118654752f)); }
MOA_VMATH_INLINE float moa_gelu_tanh(float x)
{
    return 0.5f * x * (1.0f + moa_tanh_f32(0.79788456080286536f * (x + 0.044715f * x * x * x)));
}

/* x^2 and x^3 are what exporters emit (RMSNorm's variance, GPT-2's tanh GELU): products, which
 * vectorise, as onnxruntime computes them (x^2 is powf's value; x^3 within an ulp of it). */
static inline float moa_pow(float x, float y) { return y == 2.0f ? x * x : y == 3.0f ? x * x * x : powf(x, y); }

/* Integer power by squaring, wrapping on overflow as onnxruntime does (unsigned arithmetic:
 * signed overflow would be undefined); a negative exponent gives 0 unless |a| = 1. */
static inline int64_t moa_ipow(int64_t a, int64_t b)
{
    uint64_t result = 1, base = (uint64_t)a;
    if (b < 0) { return a == 1 ? 1 : (a == -1 ? ((-b) % 2 ? -1 : 1) : 0); }
    while (b > 0) {
        if (b & 1) { result *= base; }
        base *= base;
        b >>= 1;
    }
    return (int64_t)result;
}

/* Integer a / b, truncating as C does, and defined where C traps (SIGFPE on x86): a / 0 is 0,
 * and a / -1 is -a wrapped, so INT64_MIN / -1 is INT64_MIN (numpy's results for both).
 * int32 operands convert to int64 and back, which gives the same. */
static inline int64_t moa_idiv(int64_t a, int64_t b)
{
    if (b == 0) { return 0; }
    if (b == -1) { return (int64_t)(0u - (uint64_t)a); }
    return a / b;
}

/* Integer Mod: with fmod=1 the remainder of the truncating division (a's sign), with fmod=0 the
 * one that takes b's sign (Python's, numpy's). a % 0 is 0 and a % -1 is 0 (where C traps). */
static inline int64_t moa_imod_trunc(int64_t a, int64_t b)
{
    return (b == 0 || b == -1) ? 0 : a % b;
}

static inline int64_t moa_imod(int64_t a, int64_t b)
{
    const int64_t r = moa_imod_trunc(a, b);
    return (r != 0 && (r < 0) != (b < 0)) ? r + b : r;
}

/* Float Mod with fmod=0 (ONNX Mod 28, numpy's mod): a - floor(a / b) * b, the sign of b; a zero
 * result takes b's sign, and a finite a against an infinite b of the other sign gives b. */
static inline float moa_fmod_floor(float a, float b)
{
    const float r = fmodf(a, b);
    if (r == 0.0f) {
        return copysignf(0.0f, b);
    }
    return ((r < 0.0f) != (b < 0.0f)) ? r + b : r;
}

static inline float moa_max(float a, float b) { return (a > b || a != a) ? a : b; }
static inline float moa_min(float a, float b) { return (a < b || a != a) ? a : b; }
static inline float moa_clip(float x, float lo, float hi) { return moa_min(moa_max(x, lo), hi); }

/* QuantizeLinear then DequantizeLinear (ONNX): x / scale rounded half to even onto the integers
 * low..high (the type's range less the zero point), times scale. Clamping to integer bounds before
 * rounding gives the same as after; rintf rounds half to even in the default rounding mode and is
 * one instruction on every board (roundps, frintx, vfcvt), so the loop vectorises. Adding +0 turns
 * a -0 (x in (-scale/2, 0]) into the +0 the spec's integers give. NaN stays NaN. */
static inline float moa_fake_quantize(float x, float scale, float low, float high)
{
    float v = x / scale;
    v = v < low ? low : v;
    v = v > high ? high : v;
    return (rintf(v) + 0.0f) * scale;
}

/* QuantizeLinear alone, onto integers low..high within int8's range: moa_fake_quantize's integer
 * before its product with scale, which the caller stores as int8_t (an attention reads it with
 * the scale: passes/qdq_attention.py). Rounded by adding 1.5 * 2^23 (half to even, as rintf; its
 * low bits hold the integer), so no float-to-integer conversion is vectorised: qemu 7.2 aborts on
 * RVV's vfcvt.rtz. NaN, for which the spec names no integer, gives 0. */
static inline int32_t moa_quantize(float x, float scale, float low, float high)
{
    float v = x / scale;
    uint32_t bits;
    v = v < low ? low : v;
    v = v > high ? high : v;
    v = (v == v ? v : 0.0f) + 12582912.0f;
    memcpy(&bits, &v, sizeof bits);
    return (int32_t)bits - 0x4B400000;
}

#endif
