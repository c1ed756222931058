/* Included first by a generated model's C files, before any function is defined (gcc inlines
 * no function across a change of options), for the element-wise loops gcc vectorises there:
 *   AVX-512: gcc's tuning for Intel cores vectorises 256 bits wide even where AVX-512 is
 *     enabled; the register tiles run on zmm anyway, so the loops take the full width
 *     (ViT-B/16's GELU 0.86 -> 0.59 ns an element, -march=native on an AVX-512 Xeon);
 *   AArch64: at -O2 gcc's very-cheap cost model refuses a vector loop that needs many
 *     constants (erf's and tanh's coefficients, moa/vmath.h), so GELU stayed scalar; the cheap
 *     model vectorises it (BERT-base for rpi4: 22 of model.c's loops vectorised, not 9).
 * clang is left to its own choices (it vectorises these loops, RVV included). */
#ifndef MOA_VECTORISE_H
#define MOA_VECTORISE_H

#if defined(__GNUC__) && !defined(__clang__)
#if defined(__AVX512F__)
#pragma GCC target("prefer-vector-width=512")
#elif defined(__aarch64__)
#pragma GCC optimize("vect-cost-model=cheap")
#endif
#endif

#endif
