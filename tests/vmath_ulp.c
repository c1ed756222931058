/* Maximum ulp error of moa_erf_f32 and moa_tanh_f32 (moa/vmath.h) against float64 erf and
 * tanh, over every STEP-th bit pattern of the non-negative finite floats (both functions
 * are odd; the sign is checked below), computed in blocks by loops the compiler vectorises
 * as it does a generated model's. STEP 1 is every float32 (about a minute on the host).
 *   usage: vmath_ulp STEP    prints erf_ulp=E tanh_ulp=T, or a failed special case */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moa/vmath.h"

#define BLOCK 4096
#define END 0x7f800000u /* +infinity's bits */

static double ulp_of(double y)
{
    int e;
    frexp(y, &e); /* y = m 2^e, m in [0.5, 1) */
    return ldexp(1.0, e - 24 < -149 ? -149 : e - 24);
}

int main(int argc, char **argv)
{
    const uint32_t step = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 0) : 1;
    static float x[BLOCK], y[BLOCK], z[BLOCK];
    double worst[2] = {0, 0};
    uint32_t bits = 0;
    int k, n;
    while (bits < END) {
        for (n = 0; n < BLOCK; n++) {
            const uint32_t b = bits < END ? bits : 0;
            memcpy(&x[n], &b, sizeof b);
            bits = bits < END - step ? bits + step : END;
        }
        for (k = 0; k < BLOCK; k++) { y[k] = moa_erf_f32(x[k]); }
        for (k = 0; k < BLOCK; k++) { z[k] = moa_tanh_f32(x[k]); }
        for (k = 0; k < BLOCK; k++) {
            const double e = fabs((double)y[k] - erf((double)x[k])) / ulp_of(erf((double)x[k]));
            const double t = fabs((double)z[k] - tanh((double)x[k])) / ulp_of(tanh((double)x[k]));
            if (!(e <= worst[0])) { worst[0] = e; }
            if (!(t <= worst[1])) { worst[1] = t; }
        }
    }
    if (moa_erf_f32(-0.5f) != -moa_erf_f32(0.5f) || moa_tanh_f32(-3.0f) != -moa_tanh_f32(3.0f)) { puts("odd=0"); return 1; }
    if (!signbit(moa_erf_f32(-0.0f)) || !signbit(moa_tanh_f32(-0.0f))) { puts("signed_zero=0"); return 1; }
    if (moa_erf_f32(INFINITY) != 1.0f || moa_erf_f32(-INFINITY) != -1.0f || moa_tanh_f32(INFINITY) != 1.0f
        || moa_tanh_f32(-INFINITY) != -1.0f) { puts("infinity=0"); return 1; }
    if (!isnan(moa_erf_f32(NAN)) || !isnan(moa_tanh_f32(NAN))) { puts("nan=0"); return 1; }
    printf("erf_ulp=%.4f tanh_ulp=%.4f\n", worst[0], worst[1]);
    return 0;
}
