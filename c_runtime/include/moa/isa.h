/* Which micro-kernel variant a build uses, decided at compile time from the target the
 * board profile's flags select (-march=native, -mcpu=cortex-a72, -march=rv64gcv, ...):
 *
 *     MOA_ISA_AVX512  x86-64 with AVX-512F (and FMA)      src/x86/
 *     MOA_ISA_AVX2    x86-64 with AVX2 and FMA            src/x86/
 *     MOA_ISA_NEON    AArch64 Advanced SIMD               src/neon/
 *     MOA_ISA_RVV     RISC-V vector extension 1.0         src/rvv/
 *     MOA_ISA_HELIUM  Arm M-profile vectors with float    src/helium/ (f32 GEMM and attention; the rest scalar)
 *     MOA_ISA_SCALAR  anything else (rv64gc, -O2 alone)   src/ itself
 *
 * Exactly one is 1. -DMOA_FORCE_SCALAR builds the portable reference on any target: the
 * tests compare every variant with it and the benchmarks count its instructions. Every
 * variant source is compiled on every target and is empty unless its ISA is selected. */
#ifndef MOA_ISA_H
#define MOA_ISA_H

#if defined(MOA_FORCE_SCALAR)
#define MOA_ISA_SCALAR 1
#elif defined(__AVX512F__) && defined(__FMA__)
#define MOA_ISA_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define MOA_ISA_AVX2 1
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define MOA_ISA_NEON 1
#elif defined(__riscv_vector) && defined(__riscv_v_intrinsic) && __riscv_v_intrinsic >= 12000
#define MOA_ISA_RVV 1
#elif defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 2) /* bit 1: floating-point MVE */
#define MOA_ISA_HELIUM 1
#else
#define MOA_ISA_SCALAR 1
#endif

#ifndef MOA_ISA_AVX512
#define MOA_ISA_AVX512 0
#endif
#ifndef MOA_ISA_AVX2
#define MOA_ISA_AVX2 0
#endif
#ifndef MOA_ISA_NEON
#define MOA_ISA_NEON 0
#endif
#ifndef MOA_ISA_RVV
#define MOA_ISA_RVV 0
#endif
#ifndef MOA_ISA_HELIUM
#define MOA_ISA_HELIUM 0
#endif
#ifndef MOA_ISA_SCALAR
#define MOA_ISA_SCALAR 0
#endif

/* The variant's name, for reports and the runner's banner. */
#if MOA_ISA_AVX512
#define MOA_ISA_NAME "avx512"
#elif MOA_ISA_AVX2
#define MOA_ISA_NAME "avx2"
#elif MOA_ISA_NEON
#define MOA_ISA_NAME "neon"
#elif MOA_ISA_RVV
#define MOA_ISA_NAME "rvv"
#elif MOA_ISA_HELIUM
#define MOA_ISA_NAME "helium"
#else
#define MOA_ISA_NAME "scalar"
#endif

#endif
