/* Included first by a generated model's C files, before any function is defined (gcc inlines
 * no function across a change of target options). gcc's tuning for Intel cores vectorises a
 * loop 256 bits wide even where AVX-512 is enabled; the register tiles run on zmm anyway, so
 * the element-wise loops (GELU's erf, residual adds) take the full width: ViT-B/16's GELU
 * 0.86 -> 0.59 ns an element (-march=native, AVX-512 Xeon). clang is left to its own choice. */
#ifndef MOA_VECTOR_WIDTH_H
#define MOA_VECTOR_WIDTH_H

#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif

#endif
