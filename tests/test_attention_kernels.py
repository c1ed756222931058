"""The attention micro-kernels (c_runtime/include/moa/attention.h): every variant (AVX-512,
AVX2, NEON under qemu-aarch64, RVV under qemu-riscv64 at VLEN 128 and 256, and the forced
scalar build) runs one table of cases; each output is checked against PyTorch float64 and
against the scalar reference of the same build. One process per build runs the whole table,
every buffer at its exact size on the heap (one build under ASan and UBSan). The shared exp
is measured in ulp against float64 over the range softmax uses, and the bound is the one
the header states."""
from __future__ import annotations

from dataclasses import dataclass
import math
import os
from pathlib import Path
import platform
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from conftest import SANITIZE, bare_metal_harness_script, require_board, run_bare_metal
from moa_edge import C_RUNTIME_DIR
from moa_edge.ops.attention import C_SOURCES

HEADER = C_RUNTIME_DIR / "include" / "moa" / "attention.h"

HARNESS = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moa/attention.h"

/* stdin: records of 8 int32 (op, six sizes, unused) then the op's float32 operands; stdout:
 * per record the variant's outputs, then the scalar reference's. Buffers are exactly sized.
 * Given two paths, those files stand for stdin and stdout (bare metal: semihosting has files). */
static FILE *in, *out;

static float *take(size_t n)
{
    float *p = malloc(n ? n * sizeof *p : 1);
    if (p == NULL || fread(p, sizeof *p, n, in) != n) {
        exit(2);
    }
    return p;
}

static float *copy(const float *x, size_t n)
{
    float *p = malloc(n ? n * sizeof *p : 1);
    if (p == NULL) {
        exit(2);
    }
    memcpy(p, x, n * sizeof *p);
    return p;
}

static int8_t *take_s8(size_t n) /* int8 values sent as floats, into an exact int8 buffer */
{
    float *f = take(n);
    int8_t *p = malloc(n ? n : 1);
    size_t i;
    if (p == NULL) {
        exit(2);
    }
    for (i = 0; i < n; i++) { /* lrintf, not a cast: clang vectorises the cast to an RVV narrowing
                                 * convert that qemu-riscv64 7.2 aborts on */
        p[i] = (int8_t)lrintf(f[i]);
    }
    free(f);
    return p;
}

static uint16_t *take_f16(size_t n) /* halves sent as their bits' values, into an exact uint16_t buffer */
{
    float *f = take(n);
    uint16_t *p = malloc(n ? n * sizeof *p : 1);
    size_t i;
    if (p == NULL) {
        exit(2);
    }
    for (i = 0; i < n; i++) {
        p[i] = (uint16_t)lrintf(f[i]);
    }
    free(f);
    return p;
}

static void put_f16(const uint16_t *x, size_t n) /* bits as float values */
{
    size_t i;
    for (i = 0; i < n; i++) {
        const float f = (float)x[i];
        if (fwrite(&f, sizeof f, 1, out) != 1) {
            exit(2);
        }
    }
}

static void put_s8(const int8_t *x, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        const float f = (float)x[i];
        if (fwrite(&f, sizeof f, 1, out) != 1) {
            exit(2);
        }
    }
}

static void put(const float *x, size_t n)
{
    if (fwrite(x, sizeof *x, n, out) != n) {
        exit(2);
    }
}

int main(int argc, char **argv)
{
    int32_t h[8];
    in = argc == 3 ? fopen(argv[1], "rb") : stdin, out = argc == 3 ? fopen(argv[2], "wb") : stdout;
    if (in == NULL || out == NULL) {
        return 2;
    }
    fprintf(stderr, "isa=%s\n", MOA_ISA_NAME);
    while (fread(h, sizeof h, 1, in) == 1) {
        const size_t a = (size_t)h[1], b = (size_t)h[2], c = (size_t)h[3];
        const ptrdiff_t la = h[4], lb = h[5], lc = h[6];
        if (h[0] == 0) { /* scores: rows a, cols b, depth c, ldq la, ldk lb, lds lc */
            float *scale = take(1), *q = take(a * (size_t)la), *k = take(b * (size_t)lb), *s = take(a * (size_t)lc);
            float *s2 = copy(s, a * (size_t)lc);
            moa_attn_scores_f32(a, b, c, *scale, q, la, k, lb, s, lc);
            moa_attn_scores_f32_1x1_scalar(a, b, c, *scale, q, la, k, lb, s2, lc);
            put(s, a * (size_t)lc), put(s2, a * (size_t)lc);
            free(scale), free(q), free(k), free(s), free(s2);
        } else if (h[0] == 1) { /* pv: rows a, cols b, dv c, ldp la, ldv lb, lda lc */
            float *p = take(a * (size_t)la), *v = take(b * (size_t)lb), *acc = take(a * (size_t)lc);
            float *acc2 = copy(acc, a * (size_t)lc);
            moa_attn_pv_f32(a, b, c, p, la, v, lb, acc, lc);
            moa_attn_pv_f32_1x1_scalar(a, b, c, p, la, v, lb, acc2, lc);
            put(acc, a * (size_t)lc), put(acc2, a * (size_t)lc);
            free(p), free(v), free(acc), free(acc2);
        } else if (h[0] == 2) { /* max of a */
            float *x = take(a), m[2];
            m[0] = moa_attn_max_f32(a, x), m[1] = moa_attn_max_f32_u1_scalar(a, x);
            put(m, 1), put(m + 1, 1);
            free(x);
        } else if (h[0] == 3) { /* exp: x[a] = exp(x - m), returns the sum */
            float *m = take(1), *x = take(a), *x2 = copy(x, a), sum[2];
            sum[0] = moa_attn_exp_f32(a, x, *m), sum[1] = moa_attn_exp_f32_u1_scalar(a, x2, *m);
            put(x, a), put(sum, 1), put(x2, a), put(sum + 1, 1);
            free(m), free(x), free(x2);
        } else if (h[0] == 4) { /* scale: y = alpha x, out of place, and in place */
            float *alpha = take(1), *x = take(a), *y = take(a), *y2 = copy(y, a), *x_in = copy(x, a), *x_in2 = copy(x, a);
            moa_attn_scale_f32(a, *alpha, x, y), moa_attn_scale_f32(a, *alpha, x_in, x_in);
            moa_attn_scale_f32_u1_scalar(a, *alpha, x, y2), moa_attn_scale_f32_u1_scalar(a, *alpha, x_in2, x_in2);
            put(y, a), put(x_in, a), put(y2, a), put(x_in2, a);
            free(alpha), free(x), free(y), free(y2), free(x_in), free(x_in2);
        } else if (h[0] == 5) { /* vexp: y = exp(x) */
            float *x = take(a), *y = take(a), *y2 = copy(y, a);
            moa_vexp_f32(a, x, y), moa_vexp_f32_u1_scalar(a, x, y2);
            put(y, a), put(y2, a);
            free(x), free(y), free(y2);
        } else if (h[0] == 6) { /* softmax tile: rows a, cols b, lds la; s, m, l in; s, m, l, alpha out */
            float *s = take(a * (size_t)la), *m = take(a), *l = take(a), *alpha = take(a);
            float *s2 = copy(s, a * (size_t)la), *m2 = copy(m, a), *l2 = copy(l, a), *alpha2 = copy(alpha, a);
            moa_attn_softmax_f32(a, b, s, la, m, l, alpha);
            moa_attn_softmax_f32_1x1_scalar(a, b, s2, la, m2, l2, alpha2);
            put(s, a * (size_t)la), put(m, a), put(l, a), put(alpha, a);
            put(s2, a * (size_t)la), put(m2, a), put(l2, a), put(alpha2, a);
            free(s), free(m), free(l), free(alpha), free(s2), free(m2), free(l2), free(alpha2);
        } else if (h[0] == 7) { /* scores over int8 keys: as 0, K int8 with a scale per key */
            float *scale = take(1), *q = take(a * (size_t)la);
            int8_t *k = take_s8(b * (size_t)lb);
            float *k_scale = take(b), *s = take(a * (size_t)lc), *s2 = copy(s, a * (size_t)lc);
            moa_attn_scores_f32_s8(a, b, c, *scale, q, la, k, lb, k_scale, s, lc);
            moa_attn_scores_f32_s8_1x1_scalar(a, b, c, *scale, q, la, k, lb, k_scale, s2, lc);
            put(s, a * (size_t)lc), put(s2, a * (size_t)lc);
            free(scale), free(q), free(k), free(k_scale), free(s), free(s2);
        } else if (h[0] == 8) { /* pv over int8 values: as 1, V int8 with a scale per key */
            float *p = take(a * (size_t)la);
            int8_t *v = take_s8(b * (size_t)lb);
            float *v_scale = take(b), *acc = take(a * (size_t)lc), *acc2 = copy(acc, a * (size_t)lc);
            moa_attn_pv_f32_s8(a, b, c, p, la, v, lb, v_scale, acc, lc);
            moa_attn_pv_f32_s8_1x1_scalar(a, b, c, p, la, v, lb, v_scale, acc2, lc);
            put(acc, a * (size_t)lc), put(acc2, a * (size_t)lc);
            free(p), free(v), free(v_scale), free(acc), free(acc2);
        } else if (h[0] == 9) { /* quantize a row of a into the int8 cache (one implementation: twice) */
            float *x = take(a), scale[2];
            int8_t *q = malloc(a ? a : 1);
            if (q == NULL) {
                exit(2);
            }
            moa_attn_quantize_s8(a, x, q, scale);
            put_s8(q, a), put(scale, 1);
            moa_attn_quantize_s8(a, x, q, scale + 1);
            put_s8(q, a), put(scale + 1, 1);
            free(x), free(q);
        } else if (h[0] == 10) { /* scores over float16 keys: as 0, K halves */
            float *scale = take(1), *q = take(a * (size_t)la);
            uint16_t *k = take_f16(b * (size_t)lb);
            float *s = take(a * (size_t)lc), *s2 = copy(s, a * (size_t)lc);
            moa_attn_scores_f32_f16(a, b, c, *scale, q, la, k, lb, s, lc);
            moa_attn_scores_f32_f16_1x1_scalar(a, b, c, *scale, q, la, k, lb, s2, lc);
            put(s, a * (size_t)lc), put(s2, a * (size_t)lc);
            free(scale), free(q), free(k), free(s), free(s2);
        } else if (h[0] == 11) { /* pv over float16 values: as 1, V halves */
            float *p = take(a * (size_t)la);
            uint16_t *v = take_f16(b * (size_t)lb);
            float *acc = take(a * (size_t)lc), *acc2 = copy(acc, a * (size_t)lc);
            moa_attn_pv_f32_f16(a, b, c, p, la, v, lb, acc, lc);
            moa_attn_pv_f32_f16_1x1_scalar(a, b, c, p, la, v, lb, acc2, lc);
            put(acc, a * (size_t)lc), put(acc2, a * (size_t)lc);
            free(p), free(v), free(acc), free(acc2);
        } else if (h[0] == 12) { /* round a row of a into the float16 cache (one implementation: twice) */
            float *x = take(a);
            uint16_t *half = malloc(a ? a * sizeof *half : 1);
            if (half == NULL) {
                exit(2);
            }
            moa_attn_round_f16(a, x, half);
            put_f16(half, a);
            moa_attn_round_f16(a, x, half);
            put_f16(half, a);
            free(x), free(half);
        } else {
            return 3;
        }
    }
    return fflush(out) == 0 ? 0 : 2;
}
"""

SENTINEL = np.float32(12345.0)
# float32 -> float16 at its edges: the largest half and the rounding to infinity (65520), zeros,
# the normal/subnormal boundary 2^-14, the smallest subnormal 2^-24, the tie 2^-25 (to 0) and just
# past it (to 2^-24), ties between normal halves, float32 subnormals, NaN payloads and signs.
ROUND_EDGES = np.concatenate([np.array(
    [65504, 65519.99, 65520, -65520, 1e6, np.inf, -np.inf, np.nan, 0.0, -0.0, 2.0 ** -14,
     np.nextafter(np.float32(2.0 ** -14), np.float32(0)), 2.0 ** -24, 2.0 ** -25,
     np.nextafter(np.float32(2.0 ** -25), np.float32(1)), 1.5 * 2.0 ** -25, 2.0 ** -26, 1e-30, -1e-30,
     1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -11 + 2.0 ** -20, 2049, 2051, 4097, math.pi, -math.e,
     3.0517578e-05, 6.1e-05, 1e-7, -1e-7, 0.1, -0.1, 1000.0625, 65503, 1e-45, -1e-45], np.float32),
    np.array([0x7fa00001, 0xffc12345, 0x7f800001], np.uint32).view(np.float32)])
LN_FLT_MIN = math.log(np.finfo(np.float32).tiny)  # -87.3365: below it exp(x) < FLT_MIN


# --- the table ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    op: str
    sizes: tuple
    seed: int = 0
    fill: str = "normal"  # operand values: normal | nan | hidden (-inf entries) | allhidden

    @property
    def name(self) -> str:
        return f"{self.op}{'x'.join(map(str, self.sizes))}{'' if self.fill == 'normal' else '-' + self.fill}"


def _table() -> list[Case]:
    cases = []
    # scores: rows, cols, depth (row pads are added below); tiles 4x16 / 2x4 / 4xvl and every edge
    for rows, cols, depth in [(1, 1, 1), (1, 5, 3), (2, 4, 8), (3, 7, 5), (4, 4, 16), (4, 16, 32), (5, 17, 33),
                              (8, 33, 64), (7, 64, 17), (16, 16, 80), (64, 16, 32), (4, 40, 128), (9, 3, 0),
                              # the decode form's stacked rows: a group of 3 or 9 query heads, 4 x 3 rows
                              (3, 128, 64), (9, 64, 64), (12, 37, 64),
                              # AVX2's 6x16 tile: rows 6 + 4 + 1 and 12 + 1, keys 16 + 7 and 8, two depth chunks
                              (11, 23, 300), (13, 8, 64),
                              # depths past one packed panel's (NEON 256, RVV 128): the chunks add up
                              (6, 33, 129), (10, 70, 300),
                              # AVX-512's packed query rows in chunks (24 rows at depth 256, 120 at 64),
                              # 12 to a panel, and its 32-key panels: 64 + 16 + 1 keys
                              (40, 23, 300), (150, 17, 64), (29, 81, 64)]:
        cases.append(Case("scores", (rows, cols, depth)))
    # pv: rows, cols, dv
    for rows, cols, dv in [(1, 1, 1), (1, 3, 5), (4, 4, 4), (3, 5, 8), (4, 16, 16), (5, 7, 12), (4, 9, 17),
                           (8, 16, 31), (4, 16, 32), (6, 13, 33), (4, 64, 64), (7, 20, 65), (4, 8, 80),
                           (2, 5, 100), (64, 16, 32), (3, 0, 9),
                           # stacked decode rows, and one row of split-K weights over S - 1 partials
                           (3, 128, 64), (12, 37, 64), (1, 1, 64), (1, 6, 64),
                           # AVX2's 6x16 tile: rows 6 + 4 + 1 and 12 + 1, columns 16 + 8 + 3 and 16 + 9
                           (11, 23, 40), (13, 17, 25),
                           # P's stride (cols + 1) 128, 256, 512: AVX-512's constant-stride bodies
                           (13, 127, 64), (25, 255, 33), (5, 511, 64)]:
        cases.append(Case("pv", (rows, cols, dv)))
    for n in [0, 1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 100, 257]:
        cases.append(Case("max", (n,)))
        cases.append(Case("exp", (n,)))
        cases.append(Case("scale", (n,)))
    for n in [1, 5, 16, 33, 100]:
        cases += [Case("max", (n,), fill="nan"), Case("exp", (n,), fill="hidden"),
                  Case("max", (n,), fill="allhidden")]
    cases.append(Case("exp", (37,), fill="nan"))
    for n in [1, 3, 8, 15, 16, 17, 31, 33]:
        cases.append(Case("vexp", (n,)))
    # softmax tile: rows, cols; the running max before the tile: none yet, below, above the tile's
    for rows, cols in [(1, 1), (3, 5), (4, 16), (5, 17), (8, 64), (9, 33), (4, 0), (13, 128)]:
        for fill in ("first", "normal", "hidden"):
            cases.append(Case("softmax", (rows, cols), fill=fill))
    cases.append(Case("softmax", (6, 40), fill="nan"))
    # scores 85 below the maximum: exps down to FLT_MIN, where the rounding of s - max weighs most
    cases += [Case("softmax", (13, 128), fill="wide"), Case("softmax", (5, 33), fill="wide")]
    # over an int8 cache: the decode shapes (a group of 1, 3 or 9 stacked rows, head_dim 64) and every edge
    for rows, cols, depth in [(1, 1, 1), (1, 5, 3), (3, 7, 5), (4, 4, 16), (5, 17, 33), (2, 9, 8), (7, 64, 17),
                              (16, 16, 80), (4, 40, 300), (9, 3, 0), (1, 64, 64), (3, 128, 64), (9, 64, 64),
                              (12, 37, 64), (16, 16, 64), (11, 23, 72), (13, 8, 20)]:
        cases.append(Case("scores_s8", (rows, cols, depth)))
    for rows, cols, dv in [(1, 1, 1), (1, 3, 5), (4, 4, 4), (3, 5, 8), (5, 7, 12), (4, 9, 17), (8, 16, 31),
                           (6, 13, 33), (7, 20, 65), (2, 5, 100), (3, 0, 9), (1, 64, 64), (3, 128, 64),
                           (12, 37, 64), (16, 16, 64), (11, 23, 40), (13, 17, 25)]:
        cases.append(Case("pv_s8", (rows, cols, dv)))
    for n in [1, 3, 16, 64, 100]:
        cases.append(Case("quantize", (n,)))
    cases += [Case("quantize", (64,), fill="ties"), Case("quantize", (8,), fill="zero"),
              Case("quantize", (16,), fill="nan"), Case("quantize", (16,), fill="inf"),
              Case("quantize", (16,), fill="tiny")]
    # over a float16 cache: the same shapes as the int8 ones; keys and values normal, tiny
    # (subnormal halves) and large (up to 65504)
    for rows, cols, depth in [(1, 1, 1), (1, 5, 3), (3, 7, 5), (4, 4, 16), (5, 17, 33), (2, 9, 8), (7, 64, 17),
                              (16, 16, 80), (4, 40, 300), (9, 3, 0), (1, 64, 64), (3, 128, 64), (9, 64, 64),
                              (12, 37, 64), (16, 16, 64), (11, 23, 72), (13, 8, 20)]:
        cases.append(Case("scores_f16", (rows, cols, depth)))
    for rows, cols, dv in [(1, 1, 1), (1, 3, 5), (4, 4, 4), (3, 5, 8), (5, 7, 12), (4, 9, 17), (8, 16, 31),
                           (6, 13, 33), (7, 20, 65), (2, 5, 100), (3, 0, 9), (1, 64, 64), (3, 128, 64),
                           (12, 37, 64), (16, 16, 64), (11, 23, 40), (13, 17, 25)]:
        cases.append(Case("pv_f16", (rows, cols, dv)))
    cases += [Case("scores_f16", (4, 8, 24), fill="extremes"), Case("pv_f16", (4, 8, 24), fill="extremes")]
    for n in [1, 3, 16, 64, 100]:
        cases.append(Case("round_f16", (n,)))
    cases += [Case("round_f16", (64,), fill="ties"), Case("round_f16", (ROUND_EDGES.size,), fill="edges")]
    return cases


TABLE = _table()
OPS = {"scores": 0, "pv": 1, "max": 2, "exp": 3, "scale": 4, "vexp": 5, "softmax": 6, "scores_s8": 7, "pv_s8": 8,
       "quantize": 9, "scores_f16": 10, "pv_f16": 11, "round_f16": 12}


def _operands(case: Case) -> dict:
    rng = np.random.default_rng(sum(map(ord, case.name)) + case.seed)
    f32 = np.float32
    if case.op == "scores":
        rows, cols, depth = case.sizes
        ldq, ldk, lds = depth + 3, depth + 1, cols + 2  # padded rows: strides are honoured
        return dict(ld=(ldq, ldk, lds), scale=f32(1 / math.sqrt(max(depth, 1))),
                    q=rng.standard_normal((rows, ldq)).astype(f32), k=rng.standard_normal((cols, ldk)).astype(f32),
                    s=np.full((rows, lds), SENTINEL, f32))
    if case.op == "pv":
        rows, cols, dv = case.sizes
        ldp, ldv, lda = cols + 1, dv + 5, dv + 3
        return dict(ld=(ldp, ldv, lda), p=rng.random((rows, ldp)).astype(f32),
                    v=rng.standard_normal((cols, ldv)).astype(f32), acc=rng.standard_normal((rows, lda)).astype(f32))
    if case.op == "scores_s8":
        rows, cols, depth = case.sizes
        ldq, ldk, lds = depth + 3, depth + 5, cols + 2
        return dict(ld=(ldq, ldk, lds), scale=f32(1 / math.sqrt(max(depth, 1))),
                    q=rng.standard_normal((rows, ldq)).astype(f32), k=rng.integers(-127, 128, (cols, ldk)).astype(f32),
                    k_scale=(rng.random(cols) / 40).astype(f32), s=np.full((rows, lds), SENTINEL, f32))
    if case.op == "pv_s8":
        rows, cols, dv = case.sizes
        ldp, ldv, lda = cols + 1, dv + 7, dv + 3
        return dict(ld=(ldp, ldv, lda), p=rng.random((rows, ldp)).astype(f32),
                    v=rng.integers(-127, 128, (cols, ldv)).astype(f32), v_scale=(rng.random(cols) / 40).astype(f32),
                    acc=rng.standard_normal((rows, lda)).astype(f32))
    if case.op == "scores_f16":
        rows, cols, depth = case.sizes
        ldq, ldk, lds = depth + 3, depth + 5, cols + 2
        return dict(ld=(ldq, ldk, lds), scale=f32(1 / math.sqrt(max(depth, 1))),
                    q=rng.standard_normal((rows, ldq)).astype(f32), k=_halves(rng, (cols, ldk), case.fill),
                    s=np.full((rows, lds), SENTINEL, f32))
    if case.op == "pv_f16":
        rows, cols, dv = case.sizes
        ldp, ldv, lda = cols + 1, dv + 7, dv + 3
        return dict(ld=(ldp, ldv, lda), p=rng.random((rows, ldp)).astype(f32), v=_halves(rng, (cols, ldv), case.fill),
                    acc=rng.standard_normal((rows, lda)).astype(f32))
    if case.op == "round_f16":
        (n,) = case.sizes
        x = (3 * rng.standard_normal(n)).astype(f32)
        if case.fill == "ties":  # exactly half way between two halves, normal and subnormal: ties to even
            j, sign = np.arange(n // 2), np.where(np.arange(n // 2) % 2 == 0, 1.0, -1.0)
            x = np.concatenate([sign * (1 + (j + 0.5) * 2.0 ** -10), sign * (3 * j + 0.5) * 2.0 ** -24]).astype(f32)
        if case.fill == "edges":
            x = ROUND_EDGES
        return dict(x=x)
    if case.op == "quantize":
        (n,) = case.sizes
        x = (3 * rng.standard_normal(n)).astype(f32)
        if case.fill == "ties":  # x / scale exactly k + 1/2 for many k: the rounding is ties to even
            x = (np.arange(n) - n // 2 + 0.5).astype(f32) * f32(2.0 ** -3)
            x[0] = f32(127 * 2.0 ** -3)  # the largest: scale = 2^-3 exactly
        if case.fill == "zero":
            x[:] = 0
        if case.fill == "nan":
            x[5] = np.nan
        if case.fill == "inf":
            x[3] = -np.inf
        if case.fill == "tiny":  # subnormal: the scale underflows
            x = (x * f32(1e-44)).astype(f32)
        return dict(x=x)
    if case.op == "softmax":
        rows, cols = case.sizes
        lds = cols + 3
        s = (3 * rng.standard_normal((rows, lds))).astype(f32)
        m = (3 * rng.standard_normal(rows) + 1).astype(f32)  # some above the tile's maxima, some below
        if case.fill == "first":
            m[:] = -np.inf
        if case.fill == "hidden":  # half the keys hidden; row 0 all hidden, with no max before
            s[rng.random((rows, lds)) < 0.5] = -np.inf
            s[0, :] = -np.inf
            m[0] = -np.inf
        if case.fill == "nan" and cols:
            s[rows // 2, cols // 2] = np.nan
        if case.fill == "wide":
            s = rng.uniform(-80, 5, (rows, lds)).astype(f32)
        l = np.where(np.isneginf(m), 0, rng.random(rows) * cols).astype(f32)
        return dict(ld=(lds, 0, 0), s=s, m=m, l=l, alpha=np.full(rows, SENTINEL, f32))
    (n,) = case.sizes
    x = (3 * rng.standard_normal(n)).astype(f32)
    if case.fill == "nan" and n:
        x[rng.integers(n)] = np.nan
    if case.fill == "hidden":
        x[rng.random(n) < 0.5] = -np.inf
        x[0] = 0.5
    if case.fill == "allhidden":
        x[:] = -np.inf
    if case.op == "exp":
        finite = x[np.isfinite(x)]
        m = f32(finite.max()) if finite.size else f32(0)
        return dict(m=m, x=x)
    if case.op == "scale":
        return dict(alpha=f32(rng.standard_normal()), x=x, y=np.full(n, SENTINEL, f32))
    if case.op == "vexp":
        return dict(x=np.minimum(x, 0), y=np.full(n, SENTINEL, f32))
    return dict(x=x)


def _halves(rng, shape, fill: str = "normal") -> np.ndarray:
    """Random IEEE halves, as the float values of their bits (the harness makes them uint16_t):
    normal, or (extremes) a mixture of subnormal, tiny normal and large (to 65504) magnitudes."""
    x = rng.standard_normal(shape)
    if fill == "extremes":
        x *= np.choose(rng.integers(0, 4, shape), [2.0 ** -20, 2.0 ** -13, 1.0, 8000.0])
    return np.asarray(x, np.float16).view(np.uint16).astype(np.float32)


def _f16_values(bits) -> np.ndarray:
    """The float64 values of halves given as their bits' values."""
    return np.asarray(bits, np.float32).astype(np.uint16).view(np.float16).astype(np.float64)


def _round_f16_bits(x: np.ndarray) -> np.ndarray:
    """What moa_attn_round_f16 must write, from numpy's float32 -> float16 cast (round to nearest,
    ties to even); a NaN as moa/half.h states it: quiet, the sign and the top 10 payload bits kept."""
    with np.errstate(over="ignore"):  # 65520 and past: infinity, as it should
        bits = np.asarray(x, np.float32).astype(np.float16).view(np.uint16).astype(np.uint32)
    u = np.asarray(x, np.float32).view(np.uint32)
    nan = np.isnan(x)
    bits[nan] = ((u[nan] >> 16) & 0x8000) | 0x7e00 | ((u[nan] >> 13) & 0x3ff)
    return bits.astype(np.float64)


def _record(case: Case, ops: dict) -> bytes:
    sizes = list(case.sizes) + [0] * (3 - len(case.sizes))
    ld = list(ops.get("ld", (0, 0, 0)))
    head = np.array([OPS[case.op], *sizes, *ld, 0], np.int32).tobytes()
    order = {"scores": ("scale", "q", "k", "s"), "pv": ("p", "v", "acc"), "scores_s8": ("scale", "q", "k", "k_scale", "s"),
             "pv_s8": ("p", "v", "v_scale", "acc"), "quantize": ("x",), "scores_f16": ("scale", "q", "k", "s"),
             "pv_f16": ("p", "v", "acc"), "round_f16": ("x",), "max": ("x",), "exp": ("m", "x"),
             "scale": ("alpha", "x", "y"), "vexp": ("x", "y"), "softmax": ("s", "m", "l", "alpha")}[case.op]
    return head + b"".join(np.asarray(ops[k], np.float32).tobytes() for k in order)


def _output_sizes(case: Case, ops: dict) -> list[int]:
    """Float counts of the variant's outputs (the scalar reference's follow, the same)."""
    if case.op in ("scores", "scores_s8", "scores_f16"):
        return [ops["s"].size]
    if case.op in ("pv", "pv_s8", "pv_f16"):
        return [ops["acc"].size]
    if case.op == "round_f16":
        return [case.sizes[0]]
    if case.op == "quantize":
        return [case.sizes[0], 1]
    if case.op == "softmax":
        rows = case.sizes[0]
        return [ops["s"].size, rows, rows, rows]
    (n,) = case.sizes
    return {"max": [1], "exp": [n, 1], "scale": [n, n], "vexp": [n]}[case.op]


def _expected(case: Case, ops: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """(PyTorch float64 result, its fp32 tolerance) per output, the untouched padding
    included. Tolerances are rounding bounds: a sum of d terms errs by at most ~d eps times
    the sum of their magnitudes (sqrt(d) typically; 4 sqrt(d) allowed); exp(x - m) carries
    the rounding of x - m, |x - m| eps / 2 relative, besides its own ulp."""
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    eps = float(np.finfo(np.float32).eps)
    if case.op == "scores":
        rows, cols, depth = case.sizes
        q, k = t(ops["q"])[:, :depth], t(ops["k"])[:, :depth]
        s, tol = t(ops["s"]).clone(), torch.zeros(ops["s"].shape, dtype=torch.float64)
        scale = float(ops["scale"])
        s[:, :cols] = scale * q @ k.T
        tol[:, :cols] = 4 * eps * math.sqrt(depth + 1) * scale * (q.abs() @ k.abs().T) + eps * s[:, :cols].abs()
        return [(s.numpy().reshape(-1), tol.numpy().reshape(-1))]
    if case.op == "pv":
        rows, cols, dv = case.sizes
        p, v = t(ops["p"])[:, :cols], t(ops["v"])[:, :dv]
        acc, tol = t(ops["acc"]).clone(), torch.zeros(ops["acc"].shape, dtype=torch.float64)
        acc[:, :dv] += p @ v
        tol[:, :dv] = 4 * eps * math.sqrt(cols + 1) * (t(ops["acc"])[:, :dv].abs() + p.abs() @ v.abs())
        return [(acc.numpy().reshape(-1), tol.numpy().reshape(-1))]
    if case.op == "scores_s8":  # the scores of the dequantized keys, k_scale[c] * k[c][j]
        rows, cols, depth = case.sizes
        q, k = t(ops["q"])[:, :depth], t(ops["k"])[:, :depth] * t(ops["k_scale"])[:, None]
        s, tol = t(ops["s"]).clone(), torch.zeros(ops["s"].shape, dtype=torch.float64)
        scale = float(ops["scale"])
        s[:, :cols] = scale * q @ k.T
        tol[:, :cols] = 4 * eps * math.sqrt(depth + 1) * scale * (q.abs() @ k.abs().T) + 2 * eps * s[:, :cols].abs()
        return [(s.numpy().reshape(-1), tol.numpy().reshape(-1))]
    if case.op == "pv_s8":
        rows, cols, dv = case.sizes
        p, v = t(ops["p"])[:, :cols], t(ops["v"])[:, :dv] * t(ops["v_scale"])[:, None]
        acc, tol = t(ops["acc"]).clone(), torch.zeros(ops["acc"].shape, dtype=torch.float64)
        acc[:, :dv] += p @ v
        tol[:, :dv] = 4 * eps * math.sqrt(cols + 2) * (t(ops["acc"])[:, :dv].abs() + p.abs() @ v.abs())
        return [(acc.numpy().reshape(-1), tol.numpy().reshape(-1))]
    if case.op == "scores_f16":  # the scores of the keys the halves hold (widening is exact)
        rows, cols, depth = case.sizes
        q, k = t(ops["q"])[:, :depth], t(_f16_values(ops["k"]))[:, :depth]
        s, tol = t(ops["s"]).clone(), torch.zeros(ops["s"].shape, dtype=torch.float64)
        scale = float(ops["scale"])
        s[:, :cols] = scale * q @ k.T
        tol[:, :cols] = 4 * eps * math.sqrt(depth + 1) * scale * (q.abs() @ k.abs().T) + eps * s[:, :cols].abs()
        return [(s.numpy().reshape(-1), tol.numpy().reshape(-1))]
    if case.op == "pv_f16":
        rows, cols, dv = case.sizes
        p, v = t(ops["p"])[:, :cols], t(_f16_values(ops["v"]))[:, :dv]
        acc, tol = t(ops["acc"]).clone(), torch.zeros(ops["acc"].shape, dtype=torch.float64)
        acc[:, :dv] += p @ v
        tol[:, :dv] = 4 * eps * math.sqrt(cols + 1) * (t(ops["acc"])[:, :dv].abs() + p.abs() @ v.abs())
        return [(acc.numpy().reshape(-1), tol.numpy().reshape(-1))]
    if case.op == "round_f16":  # exact: numpy's float32 -> float16 rounding, bit for bit
        return [(_round_f16_bits(ops["x"]), np.zeros(case.sizes[0]))]
    if case.op == "quantize":  # exact: the float32 steps of the contract, in numpy
        x = np.asarray(ops["x"], np.float32)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            largest = np.float32(np.abs(x).max()) if not np.isnan(x).any() else np.float32(np.nan)
            scale = np.float32(largest / np.float32(127))
            finite = np.isfinite(scale) and scale > 0
            q = np.clip(np.round(x / scale), -127, 127) if finite else np.zeros_like(x)
        return [(q.astype(np.float64), np.zeros(x.size)), (np.array([scale], np.float64), np.zeros(1))]
    if case.op == "softmax":
        rows, cols = case.sizes
        s, m, l = t(ops["s"]), t(ops["m"]), t(ops["l"])
        tile = s[:, :cols]
        nan = torch.isnan(tile).any(dim=1)
        row_max = torch.where(nan, math.nan, tile.max(dim=1).values if cols else torch.full((rows,), -math.inf, dtype=torch.float64))
        m_new = torch.where(torch.isnan(row_max) | (row_max > m), row_max, m)
        hidden = torch.isneginf(m_new)
        d = tile - torch.where(hidden, 0.0, m_new)[:, None]
        p = torch.where(hidden[:, None], 0.0, torch.exp(d))
        alpha = torch.where(hidden | (m_new == m) | torch.isneginf(m), 1.0, torch.exp(m - m_new))
        l_new = torch.where(hidden, l, l * alpha + p.sum(dim=1))
        m_out = torch.where(hidden, m, m_new)
        # exp(d) from an exp of x = d (|d| eps / 2 from rounding d), or of y = d log2(e) (AVX-512:
        # |d| eps / 2 more from rounding y; its exp measured within 0.61 (1 + |d|) eps exhaustively)
        rel = eps * (4 + 1.5 * torch.nan_to_num(d.abs(), posinf=0.0))
        s_out, s_tol = s.clone(), torch.zeros_like(s)
        s_out[:, :cols], s_tol[:, :cols] = p, rel * p
        a_tol = eps * (4 + torch.nan_to_num((m - m_new).abs(), posinf=0.0)) * alpha.abs()
        l_tol = (l * a_tol + (rel * p).sum(dim=1) + 4 * eps * (cols + 1) * l_new.abs()).nan_to_num(posinf=0.0)
        return [(s_out.numpy().reshape(-1), s_tol.numpy().reshape(-1)), (m_out.numpy(), np.zeros(rows)),
                (l_new.numpy(), l_tol.numpy()), (alpha.numpy(), a_tol.numpy())]
    x = t(ops["x"])
    if case.op == "max":
        m = -math.inf if x.numel() == 0 else (math.nan if torch.isnan(x).any() else float(x.max()))
        return [(np.array([m]), np.zeros(1))]
    if case.op == "exp":
        d = x - float(ops["m"])
        e = torch.exp(d)
        rel = eps * (4 + torch.nan_to_num(d.abs(), posinf=0.0))
        total = float(e.sum())
        return [(e.numpy(), (rel * e).numpy()), (np.array([total]), np.array([float((rel * e).sum()) + 4 * eps * x.numel() * abs(total)]))]
    if case.op == "scale":
        y = float(ops["alpha"]) * x
        return [(y.numpy(), eps * y.abs().numpy())] * 2
    e = torch.exp(x)
    return [(e.numpy(), 4 * eps * e.numpy())]


# --- builds ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Build:
    name: str
    board: str
    isa: str  # the MOA_ISA_NAME the build must select
    cflags: tuple = ()  # replaces the board's optimisation and target flags when given
    extra: tuple = ()   # added to the board's flags
    vlen: int = 0       # RVV: the qemu vector length
    flushes_subnormals: bool = False  # its vector arithmetic gives 0 for results under FLT_MIN (MVE's)


def _x86() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


def _host_has(flag: str) -> bool:
    try:
        return re.search(rf"\b{flag}\b", Path("/proc/cpuinfo").read_text()) is not None
    except OSError:
        return False


BUILDS = [
    Build("host-native", "host", "native"),
    Build("host-avx2", "host", "avx2", cflags=("-O2", "-mavx2", "-mfma", "-mf16c", "-mno-avx512f")),
    # without F16C (every AVX2 core has it, but a build may not say so): halves widened one by one
    Build("host-avx2-nof16c", "host", "avx2", cflags=("-O2", "-mavx2", "-mfma", "-mno-f16c", "-mno-avx512f")),
    Build("host-scalar", "host", "scalar", extra=("-DMOA_FORCE_SCALAR",)),
    Build("host-asan", "host", "native", cflags=("-march=native", *SANITIZE)),
    Build("host-avx2-asan", "host", "avx2", cflags=("-mavx2", "-mfma", "-mf16c", "-mno-avx512f", *SANITIZE)),
    Build("rpi4-neon", "rpi4", "neon"),
    Build("rpi4-scalar", "rpi4", "scalar", extra=("-DMOA_FORCE_SCALAR",)),
    Build("k230-rvv-vlen128", "k230", "rvv", vlen=128),
    Build("bpi-f3-rvv-zvfh", "bpi-f3", "rvv"),  # VLEN 256, halves widened by Zvfhmin's vfwcvt
    # bare metal on the M55 under qemu-system-arm; MVE's float arithmetic flushes subnormals to 0
    Build("alif-e7-helium", "alif-e7", "helium", flushes_subnormals=True),
]


def _native_isa() -> str:
    if _x86():
        return "avx512" if _host_has("avx512f") else "avx2" if _host_has("avx2") and _host_has("fma") else "scalar"
    return "neon" if platform.machine() == "aarch64" else "scalar"


@dataclass
class Built:
    build: Build
    exe: Path
    runner: list
    bare_metal: object = None  # the board, when it runs as qemu-system's kernel


_built: dict[str, Built] = {}


def build_kernels(build: Build, workdir: Path) -> Built:
    if build.name in _built:
        return _built[build.name]
    if build.board == "host" and build.isa == "avx2" and not (_x86() and _host_has("avx2")):
        pytest.skip("the AVX2 build needs an x86-64 host with AVX2")
    board = require_board(build.board)
    cc = board.compiler()
    cflags = list(build.cflags) if build.cflags else list(board.toolchain["cflags"])
    if build.cflags and board.name != "host":
        cflags = [f for f in board.toolchain["cflags"] if not f.startswith("-O")] + cflags
    cflags += list(build.extra)
    ldflags = list(board.toolchain["ldflags"])
    if any(f.startswith("-fsanitize") for f in cflags):
        ldflags += [f for f in cflags if f.startswith("-fsanitize")]
    out = workdir / build.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "main.c").write_text(HARNESS)
    exe = out / "kernels"
    sources = [str(C_RUNTIME_DIR / "src" / s) for s in C_SOURCES]
    if board.bare_metal:  # a spec file once in one command
        ldflags = [f for f in ldflags if f not in cflags] + ["-T", str(bare_metal_harness_script(board, out))]
    cmd = [cc, *cflags, "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{C_RUNTIME_DIR / 'include'}",
           str(out / "main.c"), *sources, "-o", str(exe), *ldflags, "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    runner = board.runner()
    if build.vlen:
        runner = [re.sub(r"vlen=\d+", f"vlen={build.vlen}", a) for a in runner]
    _built[build.name] = Built(build, exe, runner, board if board.bare_metal else None)
    return _built[build.name]


def run_table(built: Built, records: bytes) -> tuple[bytes, str]:
    if built.bare_metal is None:
        proc = subprocess.run([*built.runner, str(built.exe)], input=records, capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout, proc.stderr.decode()
    proc = run_bare_metal(built.bare_metal, built.exe, [], records)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout, proc.stderr.decode()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("attention_kernels")


def _expected_isa(build: Build) -> str:
    return _native_isa() if build.isa == "native" else build.isa


@pytest.mark.board
@pytest.mark.parametrize("build", BUILDS, ids=lambda b: b.name)
def test_every_variant_matches_scalar_reference_and_torch(build, workdir):
    """The whole table on one build: each output within fp32 rounding of PyTorch float64,
    and the variant within the same bound of the scalar reference; padding never written;
    NaN propagates through max and exp; a hidden (-inf) entry gives exp 0."""
    built = build_kernels(build, workdir)
    operands = [_operands(c) for c in TABLE]
    stdout, stderr = run_table(built, b"".join(_record(c, o) for c, o in zip(TABLE, operands)))
    assert f"isa={_expected_isa(build)}" in stderr
    got = np.frombuffer(stdout, np.float32)
    at = 0
    failures = []
    for case, ops in zip(TABLE, operands):
        sizes = _output_sizes(case, ops)
        n = sum(sizes)
        variant, scalar = got[at:at + n], got[at + n:at + 2 * n]
        at += 2 * n
        pieces = _expected(case, ops)
        expected = np.concatenate([e for e, _ in pieces])
        tolerance = np.concatenate([tol for _, tol in pieces]) + np.finfo(np.float32).tiny  # results under FLT_MIN give 0
        for who, out in (("variant", variant), ("scalar", scalar)):
            out = out.astype(np.float64)
            nan = np.isnan(expected)
            if not np.array_equal(np.isnan(out), nan):
                failures.append(f"{case.name} {who}: NaN where PyTorch has {expected[np.isnan(out) != nan][:3]}")
                continue
            same = out[~nan] == expected[~nan]  # infinities included
            with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity
                err = np.where(same, 0.0, np.abs(out[~nan] - expected[~nan]))
            tol = tolerance[~nan]
            if np.any(err > tol):
                k = int(np.argmax(err - tol))
                failures.append(f"{case.name} {who}: |{out[~nan][k]} - {expected[~nan][k]}| > {tol[k]:.3g}")
        close = np.isclose(variant, scalar, rtol=1e-5, atol=1e-5, equal_nan=True)
        if not np.all(close):
            failures.append(f"{case.name}: variant and scalar reference differ")
    assert at == got.size
    assert not failures, "\n".join(failures[:20])


def _exp_points() -> np.ndarray:
    """The softmax range [ln FLT_MIN, 0]: every exponent, sampled evenly in value and in
    float bits (so the small |x| near 0 are as dense as the large), plus the edges."""
    rng = np.random.default_rng(7)
    lo = np.float32(LN_FLT_MIN)
    even = np.linspace(lo, 0, 100_003, dtype=np.float32)
    lo_bits, zero_bits = int(np.float32(lo).view(np.uint32)), int(np.float32(-0.0).view(np.uint32))
    bits = rng.integers(zero_bits, lo_bits + 1, 150_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = np.array([0.0, -0.0, lo, np.nextafter(lo, np.float32(0)), -1e-30, -1e-7, -0.5 * math.log(2),
                      -math.log(2), -1, -10, -80], np.float32)
    return np.concatenate([even, bits, edges]).astype(np.float32)


def _ulp_errors(got: np.ndarray, x: np.ndarray) -> np.ndarray:
    true = np.exp(x.astype(np.float64))
    ulp = np.exp2(np.floor(np.log2(true)) - 23)  # one float32 ulp at the true value (a normal one's)
    return np.abs(got.astype(np.float64) - true) / ulp


def _header_ulp_bound() -> float:
    return float(re.search(r"#define MOA_EXPF_MAX_ULP ([0-9.]+)f", HEADER.read_text()).group(1))


EXP_BUILDS = [b for b in BUILDS if b.name != "host-asan"]


@pytest.mark.board
@pytest.mark.parametrize("build", EXP_BUILDS, ids=lambda b: b.name)
def test_exp_ulp_error_is_the_header_bound(build, workdir):
    """moa_vexp_f32 (and the scalar moa_expf of the same build) against float64 exp over
    [ln FLT_MIN, 0], sampled: the maximum error is at most MOA_EXPF_MAX_ULP (the exhaustive
    figure, test_exp_ulp_error_exhaustively). Past the range: results under FLT_MIN give 0,
    exp(-inf) = 0, exp(NaN) = NaN."""
    built = build_kernels(build, workdir)
    x = _exp_points()
    tails = np.array([LN_FLT_MIN - 0.01, -100, -104, -1e30, -np.inf, np.nan], np.float32)
    xs = np.concatenate([x, tails])
    head = np.array([OPS["vexp"], xs.size, 0, 0, 0, 0, 0, 0], np.int32).tobytes()
    stdout, _ = run_table(built, head + xs.tobytes() + np.zeros(xs.size, np.float32).tobytes())
    got = np.frombuffer(stdout, np.float32).reshape(2, -1)
    worst = 0.0
    for row, out in enumerate(got):
        normal = np.ones(x.size, bool)
        if build.flushes_subnormals and row == 0:  # the variant's row: a result under FLT_MIN is 0
            normal = np.exp(x.astype(np.float64)) >= np.finfo(np.float32).tiny
            assert np.all(out[:x.size][~normal] == 0)
        err = _ulp_errors(out[:x.size][normal], x[normal])
        worst = max(worst, float(err.max()))
        assert out[x.size:x.size + 5].tolist() == [0, 0, 0, 0, 0]
        assert np.isnan(out[-1])
    _exp_worst[build.name] = worst
    assert worst <= _header_ulp_bound(), f"{build.name}: exp is {worst:.4f} ulp off; the header states {_header_ulp_bound()}"


_exp_worst: dict[str, float] = {}


@pytest.mark.board
def test_exp_bound_is_tight():
    """The samples come within 0.02 ulp of the header's figure: it is the measured worst
    case, not a loose guess."""
    if not _exp_worst:
        pytest.skip("no exp measurement ran")
    assert max(_exp_worst.values()) >= _header_ulp_bound() - 0.02, _exp_worst


EXHAUSTIVE = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "moa/attention.h"

int main(void) /* every float in [ln FLT_MIN, 0]: the worst ulp error of moa_vexp_f32 */
{
    enum { N = 4096 };
    static float x[N], y[N];
    const float lo_f = MOA_EXPF_LO;
    uint32_t lo, bits = 0x80000000u;
    double worst = 0;
    memcpy(&lo, &lo_f, sizeof lo);
    while (bits <= lo) {
        size_t n = 0, i;
        for (; n < N && bits <= lo; n++, bits++) {
            memcpy(&x[n], &bits, sizeof bits);
        }
        moa_vexp_f32(n, x, y);
        for (i = 0; i < n; i++) {
            const double t = exp((double)x[i]);
            int e;
            double err;
            frexp(t, &e);
            err = fabs((double)y[i] - t) / ldexp(1.0, e - 24);
            worst = err > worst ? err : worst;
        }
    }
    printf("%.6f\n", worst);
    return 0;
}
"""


@pytest.mark.slow
def test_exp_ulp_error_exhaustively(workdir):
    """All 1.12e9 floats of [ln FLT_MIN, 0] through the host's own variant (about 30 s):
    the header's figure is this maximum, rounded up in the fourth decimal."""
    board = require_board("host")
    src, exe = workdir / "exhaustive.c", workdir / "exhaustive"
    src.write_text(EXHAUSTIVE)
    subprocess.run([board.compiler(), *board.toolchain["cflags"], "-std=c99", f"-I{C_RUNTIME_DIR / 'include'}",
                    str(src), *(str(C_RUNTIME_DIR / "src" / s) for s in C_SOURCES), "-o", str(exe), "-lm"],
                   check=True)
    worst = float(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout)
    assert _header_ulp_bound() - 1e-4 <= worst <= _header_ulp_bound()


def test_sources_list_every_variant_and_basenames_are_unique():
    """ops/attention.py's C_SOURCES hold the reference and one file per ISA folder; each file
    compiles to nothing unless moa/isa.h selects its ISA."""
    folders = {Path(s).parent.name for s in C_SOURCES}
    assert {"x86", "neon", "rvv", "helium"} <= folders
    names = [Path(s).name for s in C_SOURCES]
    assert len(set(names)) == len(names)
    for s in C_SOURCES:
        text = (C_RUNTIME_DIR / "src" / s).read_text()
        if "/" in s:
            assert re.search(r"#if MOA_ISA_(AVX512|AVX2|NEON|RVV|HELIUM)\b", text), s


def test_runtime_keeps_no_state_and_never_allocates():
    for s in C_SOURCES:
        text = (C_RUNTIME_DIR / "src" / s).read_text()
        assert not re.search(r"\b(malloc|calloc|realloc|free)\s*\(", text), s
        assert not re.search(r"^static\s+(?!inline)[^(]*[;=]", text, re.M), f"{s}: a file-scope static"
