/* Branch-free float32 erf and tanh that gcc (x86: AVX2 and AVX-512) and clang (RVV) vectorise
 * inside a generated loop (libm's erff/tanhf are a call per element); for NEON, gcc -O2 keeps
 * the loop scalar at its very-cheap cost model (too many constants): moa/vectorise.h asks for
 * the cheap one in generated code.
 * No exp: each function is three polynomial pieces of a = |x|, all evaluated, one selected
 * per element:
 *
 *   a <  T1      a + a R(a^2)                (the leading a exact, the correction small)
 *   T1 .. T2     P(a - m)                    (a polynomial around the middle of the range)
 *   T2 .. clamp  1 - k / Q(a - mc)^16        (Abramowitz & Stegun 7.1.28's form, k = 1 for
 *                                             erf, 2 for tanh: Q, the 16th root of
 *                                             k / (1 - f), is smooth and grows slowly, so
 *                                             a low degree fits it; ^16 is four squarings)
 *
 * then the sign of x is put back with copysignf. a is clamped where the float32 result is
 * already 1 (erf beyond 3.92, tanh beyond 9.01); NaN stays NaN, +-inf gives +-1, -0 gives -0.
 * Coefficients: Lawson minimax fits of relative error in float64, rounded to float32
 * (tests/fit_vmath.py prints these statements). Maximum error against float64 erf/tanh,
 * measured by tests/vmath_ulp.c over every float32 input on the host (gcc -O2 -march=native,
 * vectorised, with and without FMA contraction); tests/test_fusion.py samples the same on
 * host, rpi4 and k230:
 *
 *   moa_erf_f32   1.30 ulp   (T1 0.75, T2 2, clamp 4)
 *   moa_tanh_f32  2.31 ulp   (T1 0.6, T2 2.25, clamp 9.1)
 */
#ifndef MOA_VMATH_H
#define MOA_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Always inlined: gcc -O2 otherwise keeps a call in some of a model's loops (it judges the
 * body too large to inline everywhere), and a loop with a call is not vectorised. */
#if defined(__GNUC__) || defined(__clang__)
#define MOA_VMATH_INLINE static inline __attribute__((always_inline))
#else
#define MOA_VMATH_INLINE static inline
#endif

/* c ? t : f, as bits: t and f are used whatever c is, so gcc neither sinks the work of one
 * piece into a branch of its own (nor threads the clamped path into constants): a loop with
 * such a branch is not if-converted where floating-point work cannot be masked (AVX2, NEON),
 * and then not vectorised at all (-march=x86-64-v3: erf 2.9 ns an element instead of 0.8). */
MOA_VMATH_INLINE float moa_select_f32(int c, float t, float f)
{
    const uint32_t take_t = 0u - (uint32_t)(c != 0);
    uint32_t t_bits, f_bits;
    memcpy(&t_bits, &t, sizeof t_bits);
    memcpy(&f_bits, &f, sizeof f_bits);
    t_bits = (t_bits & take_t) | (f_bits & ~take_t);
    memcpy(&t, &t_bits, sizeof t);
    return t;
}

MOA_VMATH_INLINE float moa_erf_f32(float x)
{
    const float a = moa_select_f32(fabsf(x) > 4.0f, 4.0f, fabsf(x)); /* NaN > 4 is false: NaN flows on */
    const float u = a * a, t = a - 1.375f, s = a - 3.0f;
    float small = 9.461504669e-05f;
    small = small * u - 8.355411119e-04f;
    small = small * u + 5.216693040e-03f;
    small = small * u - 2.686474286e-02f;
    small = small * u + 1.128377840e-01f;
    small = small * u - 3.761263788e-01f;
    small = small * u + 1.283791661e-01f;

    float middle = 3.628770064e-04f;
    middle = middle * t + 1.242514583e-03f;
    middle = middle * t - 4.285050556e-03f;
    middle = middle * t - 1.291390276e-03f;
    middle = middle * t + 2.216799557e-02f;
    middle = middle * t - 3.062757477e-02f;
    middle = middle * t - 3.050145693e-02f;
    middle = middle * t + 1.579392105e-01f;
    middle = middle * t - 2.342446446e-01f;
    middle = middle * t + 1.703597456e-01f;
    middle = middle * t + 9.481700659e-01f;

    float q = 4.934679600e-04f;
    q = q * s + 2.951055299e-03f;
    q = q * s + 1.473262161e-02f;
    q = q * s + 6.682877243e-02f;
    q = q * s + 2.686099708e-01f;
    q = q * s + 7.699651718e-01f;
    q = q * s + 1.954281926e+00f;
    q = q * q; /* q^16: four squarings */
    q = q * q;
    q = q * q;
    q = q * q;
    small = a + a * small;
    q = 1.0f - 1.0f / q;
    return copysignf(moa_select_f32(a < 0.75f, small, moa_select_f32(a < 2.0f, middle, q)), x);
}

MOA_VMATH_INLINE float moa_tanh_f32(float x)
{
    const float a = moa_select_f32(fabsf(x) > 9.1f, 9.1f, fabsf(x));
    const float u = a * a, t = a - 1.425f, s = a - 5.675f;
    float small = -8.415032062e-04f;
    small = small * u + 3.275387222e-03f;
    small = small * u - 8.773608133e-03f;
    small = small * u + 2.185521647e-02f;
    small = small * u - 5.396702513e-02f;
    small = small * u + 1.333332807e-01f;
    small = small * u - 3.333333433e-01f;

    float middle = 4.646988964e-05f;
    middle = middle * t + 1.085127951e-04f;
    middle = middle * t - 5.635495763e-04f;
    middle = middle * t + 5.906096194e-04f;
    middle = middle * t + 8.218123694e-04f;
    middle = middle * t - 4.551406484e-03f;
    middle = middle * t + 9.316671640e-03f;
    middle = middle * t - 6.336590741e-03f;
    middle = middle * t - 2.330651507e-02f;
    middle = middle * t + 9.509099275e-02f;
    middle = middle * t - 1.841527820e-01f;
    middle = middle * t + 2.067651004e-01f;
    middle = middle * t + 8.906373382e-01f;

    float q = -3.586886788e-09f;
    q = q * s + 1.585775955e-08f;
    q = q * s + 1.561229901e-08f;
    q = q * s - 1.467753830e-08f;
    q = q * s - 3.869487486e-08f;
    q = q * s + 2.194166700e-05f;
    q = q * s + 6.607747637e-04f;
    q = q * s + 1.588255167e-02f;
    q = q * s + 2.540867031e-01f;
    q = q * s + 2.032721996e+00f;
    q = q * q;
    q = q * q;
    q = q * q;
    q = q * q;
    small = a + a * (u * small);
    q = 1.0f - 2.0f / q;
    return copysignf(moa_select_f32(a < 0.6f, small, moa_select_f32(a < 2.25f, middle, q)), x);
}

#endif
