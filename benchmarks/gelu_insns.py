"""Executed instructions of a generated model's GELU loops on rpi4 (NEON), under qemu-user, with
and without moa/vectorise.h (issue 15): gcc -O2's very-cheap vector cost model refuses the erf
and tanh loops (many constants) on AArch64, and a generated model's C includes moa/vectorise.h
first, which asks for the cheap model there.

The loops are the ones model.c holds for BERT's GELU (x / sqrt 2 -> erf -> + 1 -> * 0.5 -> * x)
and GPT-2's (0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))), over 184,320 elements (a
feed-forward block of 60 rows of 3072), built with the board's compiler and flags. Each count is
a run of the loop minus a run of the same program without it (the plugin and method of
`moa-edge bench attention`); every output is checked against numpy's float64 GELU first. Not a
test: prints one table and writes a JSON record.

    PYTHONPATH=$PWD python benchmarks/gelu_insns.py [--out benchmarks/results/gelu-insns.json]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import subprocess
import sys
import tempfile

import numpy as np

from moa_edge import C_RUNTIME_DIR
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.attention_bench import count_instructions
from moa_edge.target import load_board

N = 184320
PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moa/vmath.h"
#include "moa/elementwise.h"

#define N @N@
static float x[N];

static void gelu_erf(float *restrict v)
{
    long i;
    for (i = 0; i < N; i++) {
        const float d0 = v[i];
        const float d1 = (float)(d0 / 1.4142135f);
        const float d2 = (float)(moa_erf_f32(d1));
        const float d3 = (float)(d2 + 1.0f);
        const float d4 = (float)(0.5f * d3);
        v[i] = (float)(d0 * d4);
    }
}

static void gelu_tanh(float *restrict v)
{
    long i;
    for (i = 0; i < N; i++) {
        const float d0 = v[i];
        const float d1 = (float)(d0 * 0.5f);
        const float d2 = (float)(moa_pow(d0, 3.0f));
        const float d3 = (float)(d2 * 0.044715f);
        const float d4 = (float)(d0 + d3);
        const float d5 = (float)(d4 * 0.7978846f);
        const float d6 = (float)(moa_tanh_f32(d5));
        const float d7 = (float)(d6 + 1.0f);
        v[i] = (float)(d1 * d7);
    }
}

/* argv[1]: none, erf or tanh; with a second argument, x and then GELU(x) written to stdout */
int main(int argc, char **argv)
{
    static float input[N];
    long i;
    if (argc < 2) {
        return 2;
    }
    for (i = 0; i < N; i++) { /* -6 .. 6 */
        x[i] = input[i] = (float)((i * 7919) % 100003) / 100003.0f * 12.0f - 6.0f;
    }
    if (strcmp(argv[1], "erf") == 0) {
        gelu_erf(x);
    } else if (strcmp(argv[1], "tanh") == 0) {
        gelu_tanh(x);
    }
    if (argc > 2 && (fwrite(input, sizeof input[0], N, stdout) != N || fwrite(x, sizeof x[0], N, stdout) != N)) {
        return 2;
    }
    return 0;
}
"""


def reference(x: np.ndarray, kind: str) -> np.ndarray:
    x = x.astype(np.float64)
    if kind == "erf":
        return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="rpi4")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gelu-insns.json"))
    args = parser.parse_args()
    board = load_board(args.board)
    rows, record = [], {"board": board.name, "elements": N, "builds": {}}
    with tempfile.TemporaryDirectory(prefix="moa-gelu-insns-") as tmp:
        work = Path(tmp)
        (work / "gelu.c").write_text(PROGRAM.replace("@N@", str(N)))
        for build, first in (("without moa/vectorise.h", []), ("with moa/vectorise.h", ["-include", "moa/vectorise.h"])):
            exe = work / f"gelu{len(first)}"
            subprocess.run([board.compiler(), *board.toolchain.get("cflags", []), "-std=c99", "-Wall", "-Wextra",
                            "-Werror", f"-I{C_RUNTIME_DIR / 'include'}", *first, str(work / "gelu.c"),
                            *board.toolchain.get("ldflags", []), "-lm", "-o", str(exe)], check=True)
            counts = {}
            for kind in ("none", "erf", "tanh"):
                if kind != "none":
                    proc = subprocess.run([*board.runner(), str(exe), kind, "print"], capture_output=True)
                    if proc.returncode:
                        raise MoaEdgeError(f"{exe.name} {kind} failed: {proc.stderr.decode()[-300:]}")
                    x, got = np.frombuffer(proc.stdout, np.float32).reshape(2, N)
                    error = np.max(np.abs(got.astype(np.float64) - reference(x, kind)))
                    if error > 1e-5:
                        raise MoaEdgeError(f"{build}: GELU ({kind}) differs from numpy's by {error:.3g}")
                counts[kind] = count_instructions(board.runner(), exe, [kind], work)
            per = {kind: (counts[kind] - counts["none"]) / N for kind in ("erf", "tanh")}
            record["builds"][build] = {"instructions_per_element": per}
            rows.append((build, per["erf"], per["tanh"]))
    print(f"GELU loops on {board.name} ({' '.join(board.toolchain.get('cflags', []))}), {N} elements, qemu-user:")
    print("| build | erf GELU, instructions an element | tanh GELU, instructions an element |")
    print("|---|---:|---:|")
    for build, erf, tanh in rows:
        print(f"| {build} | {erf:.2f} | {tanh:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
