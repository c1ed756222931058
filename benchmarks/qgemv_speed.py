"""Speed of the decode GEMV (moa_gemm_qw_f32 with one row) on this machine, per x86 build: the
matmuls of a SmolLM2-135M decode step (per layer q 576x576, k and v 576x192, o 576x576, gate and
up 576x1536, down 1536x576; K x N) with int8 weights (one scale per column, as `convert --weights
int8` stores them) and 4-bit weights (blocks of 32, offsets, two-level scales: `--weights int4`),
beside float32 panels.

Three working sets: `hot`, one 576 x 1536 matrix called again and again (it stays in L2: the
kernel's arithmetic alone); `layer`, one layer's seven matrices; `model`, 30 layers and the
576 x 49152 output layer at int8 (weights streamed from beyond the caches, as in a decode step).
Each figure is the best of its passes, in billions of weights per second; the builds take turns,
so that a shared machine's load reaches them alike. Not a test (tests/test_qmatmul.py checks the
kernels' values against numpy): a tool for tuning the x86 kernels.

    PYTHONPATH=$PWD python benchmarks/qgemv_speed.py [--march x86-64-v3,native] [--runtime OTHER/c_runtime]

--runtime adds the same builds of another runtime tree (e.g. `git worktree add /tmp/base main`
then --runtime /tmp/base/c_runtime) to compare kernels before and after a change.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import subprocess
import sys
import tempfile

from moa_edge import C_RUNTIME_DIR
from moa_edge.errors import MoaEdgeError
from moa_edge.ops.matmul import C_SOURCES
from moa_edge.target import load_board

DRIVER = r"""
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moa/isa.h"
#include "moa/qmatmul.h"

/* argv: f32|i8|u4 hot|layer|model passes; prints "isa Gweights/s". Values are random bytes (timing
 * does not depend on them); half scales are 2^-8, so that every sum stays finite. */
static const size_t SHAPES[7][2] = {{576, 576}, {576, 192}, {576, 192}, {576, 576}, {576, 1536}, {576, 1536}, {1536, 576}};
static uint64_t state = 88172645463325252ull;

static uint8_t next_byte(void)
{
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return (uint8_t)state;
}

static void *random_bytes(size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    size_t i;
    if (p == NULL) {
        exit(2);
    }
    for (i = 0; i < n; i++) {
        p[i] = next_byte();
    }
    return p;
}

typedef struct {
    moa_qweights w;
    float *packed;
    size_t K, N;
} matrix;

static matrix make(const char *type, size_t K, size_t N)
{
    matrix m;
    size_t i;
    memset(&m, 0, sizeof m);
    m.K = K, m.N = N;
    if (strcmp(type, "f32") == 0) {
        m.packed = malloc(MOA_GEMM_PACKED_B_ELEMS(K, N) * sizeof(float));
        for (i = 0; i < MOA_GEMM_PACKED_B_ELEMS(K, N); i++) {
            m.packed[i] = (float)next_byte() / 1024.0f;
        }
    } else if (strcmp(type, "i8") == 0) {
        float *s = malloc(MOA_QW_SCALES(K, N, K) * sizeof(float));
        for (i = 0; i < MOA_QW_SCALES(K, N, K); i++) {
            s[i] = 0.01f;
        }
        m.w.type = MOA_QW_I8, m.w.block = K, m.w.q = random_bytes(MOA_QW_I8_BYTES(K, N, K)), m.w.scale = s;
        m.w.half_scales = MOA_QS_FLOAT;
    } else {
        const size_t bytes = MOA_QW_PANELS(N) * MOA_QS_SUPER_BYTES(MOA_QW_BLOCKS(K, 32));
        uint8_t *s = random_bytes(bytes), *o = random_bytes(bytes);
        size_t chunk, j;
        for (chunk = 0; chunk < bytes; chunk += MOA_QS_SUPER_CHUNK) { /* the super-blocks' halves: 2^-8 */
            for (j = 0; j < 2 * 16 && chunk + j < bytes; j += 2) {
                s[chunk + j] = o[chunk + j] = 0x00, s[chunk + j + 1] = o[chunk + j + 1] = 0x1C;
            }
        }
        m.w.type = MOA_QW_U4, m.w.block = 32, m.w.q = random_bytes(MOA_QW_U4_BYTES(K, N, 32));
        m.w.scale = s, m.w.offset = o, m.w.half_scales = MOA_QS_SUPER;
    }
    return m;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
    const char *type, *set;
    size_t passes, pass, i, layer, count = 0, weights = 0;
    matrix mats[30 * 7 + 1];
    float *x = malloc(1536 * sizeof(float)), *y = malloc(49152 * sizeof(float));
    double best = 1e30;
    moa_matrix_f32 a, none = {NULL, 0, 0};
    if (argc != 4 || x == NULL || y == NULL) {
        return 2;
    }
    type = argv[1], set = argv[2], passes = strtoul(argv[3], NULL, 10);
    for (i = 0; i < 1536; i++) {
        x[i] = (float)((int)next_byte() - 128) / 128.0f;
    }
    if (strcmp(set, "hot") == 0) {
        mats[count++] = make(type, 576, 1536);
    } else {
        for (layer = 0; layer < (strcmp(set, "model") == 0 ? 30u : 1u); layer++) {
            for (i = 0; i < 7; i++) {
                mats[count++] = make(type, SHAPES[i][0], SHAPES[i][1]);
            }
        }
        if (strcmp(set, "model") == 0) {
            mats[count++] = make(strcmp(type, "f32") == 0 ? "f32" : "i8", 576, 49152);
        }
    }
    for (i = 0; i < count; i++) {
        weights += mats[i].K * mats[i].N;
    }
    a.data = x, a.col_stride = 1;
    for (pass = 0; pass < passes; pass++) {
        const double t0 = now();
        for (i = 0; i < count; i++) {
            moa_status status;
            a.row_stride = (ptrdiff_t)mats[i].K;
            status = mats[i].packed != NULL
                         ? moa_gemm_packed_f32(1, mats[i].N, mats[i].K, 1.0f, a, mats[i].packed, 0.0f, none, y,
                                               (ptrdiff_t)mats[i].N)
                         : moa_gemm_qw_f32(1, mats[i].N, mats[i].K, 1.0f, a, mats[i].w, 0.0f, none, y,
                                           (ptrdiff_t)mats[i].N);
            if (status != MOA_OK) {
                return 3;
            }
        }
        if (now() - t0 < best) {
            best = now() - t0;
        }
    }
    printf("%s %.3f\n", MOA_ISA_NAME, (double)weights / best * 1e-9);
    return 0;
}
"""

SETS = {"hot": 4000, "layer": 400, "model": 30}  # passes of each working set
TYPES = ("f32", "i8", "u4")


def build(runtime: Path, march: str | None, folder: Path) -> Path:
    """The driver with one runtime tree's GEMM sources, host flags, then -march=MARCH."""
    board = load_board("host")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "driver.c").write_text(DRIVER)
    exe = folder / "qgemv_speed"
    flags = [*board.toolchain.get("cflags", []), *([f"-march={march}"] if march else [])]
    cmd = [board.compiler(), *flags, "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{runtime / 'include'}",
           str(folder / "driver.c"), *(str(runtime / "src" / s) for s in C_SOURCES), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise MoaEdgeError(f"qgemv_speed: the build for {march or 'the host'} failed:\n{proc.stderr[-3000:]}")
    return exe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--march", default="x86-64-v3,native",
                        help="comma-separated -march values, native: the host board's own flags (default x86-64-v3,native)")
    parser.add_argument("--runtime", type=Path, action="append", default=[],
                        help="another c_runtime folder to build and time beside this tree's")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every build (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    runtimes = [Path(C_RUNTIME_DIR), *options.runtime]
    marches = [m for m in options.march.split(",") if m]
    rates: dict[tuple, float] = {}
    isas: dict[tuple, str] = {}
    with tempfile.TemporaryDirectory(prefix="qgemv-speed-") as tmp:
        exes = {(str(rt), m): build(rt, None if m == "native" else m, Path(tmp) / f"{i}-{m}")
                for i, rt in enumerate(runtimes) for m in marches}
        for _ in range(options.rounds):
            for work, passes in SETS.items():
                for kind in TYPES:
                    for (rt, m), exe in exes.items():
                        out = subprocess.run([str(exe), kind, work, str(passes)], capture_output=True, text=True,
                                             check=True).stdout.split()
                        key = (rt, m, work, kind)
                        isas[(rt, m)] = out[0]
                        rates[key] = max(rates.get(key, 0.0), float(out[1]))
    print(f"decode GEMV (M = 1), SmolLM2-135M shapes, Gweights/s, best of {options.rounds} rounds")
    print(f"{'runtime':<40} {'build':<18} " + " ".join(f"{w + ' ' + k:>11}" for w in SETS for k in TYPES))
    for (rt, m), isa in isas.items():
        print(f"{rt[-40:]:<40} {m + ' (' + isa + ')':<18} "
              + " ".join(f"{rates[(rt, m, w, k)]:>11.2f}" for w in SETS for k in TYPES))
    if options.json:
        options.json.write_text(json.dumps([{"runtime": rt, "march": m, "isa": isas[(rt, m)], "set": w, "type": k,
                                             "gweights_per_s": rates[(rt, m, w, k)]}
                                            for (rt, m, w, k) in rates], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
