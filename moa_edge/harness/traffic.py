"""Measured memory traffic of the generated attention kernel against the cost model.

One C program holds the generated ONF kernel and a naive kernel that materialises the
Sq x Skv score matrix. It initialises Q, K, V, streams 8 MiB through the cache so the
kernel starts cold, then runs one kernel ("fused" or "naive") or nothing ("baseline").
Each runs under cachegrind with the board's L1D and last-level cache geometry given
explicitly; the kernel's own misses are the run's minus the baseline's. measure() runs
the benchmark block (bench_spec); measure_kernel() any block the generated kernel reads
row-major, with its run-time key count L (a decode step against a cache).
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import Path
import re
import shutil
import subprocess

from moa_edge.errors import MoaEdgeError
from moa_edge.moa import Layout, cost, onf
from moa_edge.moa.spec import AttentionSpec
from moa_edge.target import Board

from .kernel_harness import RUNTIME_INCLUDE, runtime_objects

# Vectorised, but still IEEE infinities: the kernels rely on -INFINITY.
BENCH_CFLAGS = ["-O3", "-march=x86-64-v3", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
                "-fassociative-math", "-std=c99", "-Wall", "-Wextra", "-Werror"]

NAIVE_KERNEL = r"""
/* The unfused reference shape of attention: S = scale Q K^T (Sq x Skv, in memory),
 * row softmax in place, O = S V. */
static void naive(const float *Q, const float *K, const float *V, float *S, float *O)
{
    int h, i, k, j, q;
    for (h = 0; h < HEADS; h++) {
        const float *Qh = Q + (long)h * SQ * D, *Kh = K + (long)h * SKV * D, *Vh = V + (long)h * SKV * DV;
        float *Oh = O + (long)h * SQ * DV;
        for (i = 0; i < SQ; i++) {
            for (k = 0; k < SKV; k++) {
                float s = 0;
                for (j = 0; j < D; j++) { s += Qh[i * D + j] * Kh[k * D + j]; }
                S[(long)i * SKV + k] = s * SCALE;
            }
        }
        for (i = 0; i < SQ; i++) {
            float m = -INFINITY, l = 0;
            for (k = 0; k < SKV; k++) { if (S[(long)i * SKV + k] > m) { m = S[(long)i * SKV + k]; } }
            for (k = 0; k < SKV; k++) { S[(long)i * SKV + k] = expf(S[(long)i * SKV + k] - m); l += S[(long)i * SKV + k]; }
            for (k = 0; k < SKV; k++) { S[(long)i * SKV + k] /= l; }
        }
        for (i = 0; i < SQ; i++) {
            for (q = 0; q < DV; q++) { Oh[i * DV + q] = 0; }
            for (k = 0; k < SKV; k++) {
                const float p = S[(long)i * SKV + k];
                for (q = 0; q < DV; q++) { Oh[i * DV + q] += p * Vh[k * DV + q]; }
            }
        }
    }
}
"""

MAIN = r"""
#define EVICT_BYTES (8u << 20)
static float fill(unsigned *state) { *state = *state * 1664525u + 1013904223u; return (float)(*state >> 8) / 16777216.0f - 0.5f; }

int main(int argc, char **argv)
{
    const size_t nq = NQ, nk = NK, nv = NV, no = NO;
    float *Q = malloc(nq * 4), *K = malloc(nk * 4), *V = malloc(nv * 4), *O = malloc(no * 4);
    float *S = malloc((size_t)SQ * SKV * 4), *scratch = malloc(SCRATCH_BYTES + 4);
    volatile unsigned char *evict = malloc(EVICT_BYTES);
    unsigned state = 1, sink = 0;
    size_t n;
    if (argc != 2 || !Q || !K || !V || !O || !S || !scratch || !evict) { return 2; }
    for (n = 0; n < nq; n++) { Q[n] = fill(&state); }
    for (n = 0; n < nk; n++) { K[n] = fill(&state); }
    for (n = 0; n < nv; n++) { V[n] = fill(&state); }
    for (n = 0; n < EVICT_BYTES; n += 64) { evict[n] = (unsigned char)n; }
    for (n = 0; n < EVICT_BYTES; n += 64) { sink += evict[n]; }
    if (strcmp(argv[1], "fused") == 0) {
        if (kernel(Q, K, V, NULL, O, scratch KEY_COUNT) != MOA_OK) { return 3; }
    } else if (strcmp(argv[1], "naive") == 0) {
        naive(Q, K, V, S, O);
    } else if (strcmp(argv[1], "baseline") != 0) {
        return 2;
    }
    printf("%u %g\n", sink, strcmp(argv[1], "baseline") ? (double)O[no - 1] : 0.0);
    return 0;
}
"""


@dataclass(frozen=True)
class TrafficPoint:
    board: str
    seq: int
    heads: int
    head_dim: int
    schedule: dict
    compulsory_bytes: int
    predicted_dram_bytes: int
    fused_dram_bytes: int
    naive_dram_bytes: int | None
    predicted_l1_fill_bytes: int
    fused_l1_fill_bytes: int
    scratch_bytes: int
    kv_fits_llc: bool

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["predicted_over_measured"] = self.predicted_dram_bytes / self.fused_dram_bytes
        d["fused_over_compulsory"] = self.fused_dram_bytes / self.compulsory_bytes
        d["naive_over_fused"] = (self.naive_dram_bytes / self.fused_dram_bytes) if self.naive_dram_bytes else None
        return d


def bench_spec(seq: int, heads: int, head_dim: int) -> AttentionSpec:
    lay = Layout.row_major((1, heads, seq, head_dim))
    return AttentionSpec(1, heads, heads, seq, seq, head_dim, head_dim, 1 / math.sqrt(head_dim), False, "none", 0.0,
                         lay, lay, lay, lay, None, pattern="benchmark")


def _program(spec, schedule, length: int | None = None) -> str:
    """The benchmark program; `length` is the valid key count L of a block with kv_lengths."""
    header = ["#include <math.h>", "#include <stddef.h>", "#include <stdint.h>", "#include <stdio.h>", "#include <stdlib.h>",
              "#include <string.h>", '#include "moa/attention.h"', '#include "moa/status.h"',
              f"#define HEADS {spec.q_heads}", f"#define SQ {spec.q_len}", f"#define SKV {spec.kv_len}",
              f"#define D {spec.head_dim}", f"#define DV {spec.value_dim}", f"#define SCALE {spec.scale!r}f",
              f"#define NQ {spec.q.storage_extent()}u", f"#define NK {spec.k.storage_extent()}u",
              f"#define NV {spec.v.storage_extent()}u", f"#define NO {spec.y.storage_extent()}u",
              f"#define SCRATCH_BYTES {onf.scratch_bytes(spec, schedule)}u"]
    if spec.kv_lengths:
        header += [f"static const {spec.lengths_ctype} key_count[{spec.batch}] = {{"
                   + ", ".join([str(length if length is not None else spec.kv_len)] * spec.batch) + "};",
                   "#define KEY_COUNT , key_count"]
    else:
        header.append("#define KEY_COUNT")
    return "\n".join(header) + "\n" + onf.emit_kernel(spec, schedule, "kernel") + NAIVE_KERNEL + MAIN


def _cachegrind(exe: Path, mode: str, board: Board, workdir: Path) -> dict:
    l1, llc = board.l1d(), board.last_level_cache()
    out = workdir / f"cg.{mode}.out"
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", "--I1=32768,8,64",
           f"--D1={l1.size},{l1.associativity},{l1.line}", f"--LL={llc.size},{llc.associativity},{llc.line}",
           f"--cachegrind-out-file={out}", str(exe), mode]
    proc = subprocess.run(["env", "-i", *cmd], capture_output=True, text=True)
    if proc.returncode:
        raise MoaEdgeError(f"cachegrind run failed ({mode}): {proc.stderr[-2000:]}")
    text = out.read_text()
    events = re.search(r"^events:\s*(.+)$", text, re.M).group(1).split()
    summary = [int(x) for x in re.search(r"^summary:\s*(.+)$", text, re.M).group(1).split()]
    return dict(zip(events, summary))


def _build(spec, schedule, workdir: Path, length: int | None = None) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "traffic.c"
    src.write_text(_program(spec, schedule, length))
    exe = workdir / "traffic"
    proc = subprocess.run(["cc", *BENCH_CFLAGS, f"-I{RUNTIME_INCLUDE}", str(src),
                           *map(str, runtime_objects("cc", tuple(BENCH_CFLAGS))), "-o", str(exe), "-lm"],
                          capture_output=True, text=True)
    if proc.returncode:
        raise MoaEdgeError(f"traffic benchmark failed to compile:\n{proc.stderr}")
    return exe


def _kernel_traffic(exe: Path, board: Board, workdir: Path, modes=("fused",)) -> dict[str, tuple[int, int]]:
    """(DRAM bytes, L1 fill bytes) of each mode's kernel alone: its run's misses minus the baseline's."""
    line = board.last_level_cache().line
    l1_line = board.l1d().line
    base = _cachegrind(exe, "baseline", board, workdir)
    traffic = {}
    for mode in modes:
        run = _cachegrind(exe, mode, board, workdir)
        traffic[mode] = ((run["DLmr"] + run["DLmw"] - base["DLmr"] - base["DLmw"]) * line,
                         (run["D1mr"] + run["D1mw"] - base["D1mr"] - base["D1mw"]) * l1_line)
    return traffic


def _require_valgrind():
    if shutil.which("valgrind") is None:
        raise MoaEdgeError("valgrind is not installed (Debian: valgrind); run make setup")


def measure(seq: int, heads: int, head_dim: int, board: Board, workdir: Path, naive: bool = True,
            schedule: onf.Schedule | None = None, scratch_budget: int | None = None) -> TrafficPoint:
    _require_valgrind()
    spec = bench_spec(seq, heads, head_dim)
    predicted = cost.predict(spec, schedule, board) if schedule else cost.choose(spec, board, scratch_budget)
    schedule = predicted.schedule
    exe = _build(spec, schedule, workdir)
    traffic = _kernel_traffic(exe, board, workdir, ("fused", "naive") if naive else ("fused",))
    fused_dram, fused_l1 = traffic["fused"]
    naive_dram = traffic["naive"][0] if naive else None
    return TrafficPoint(board.name, seq, heads, head_dim,
                        {"strategy": schedule.strategy, "block_q": schedule.block_q, "block_k": schedule.block_k},
                        predicted.compulsory_bytes, predicted.dram_bytes, fused_dram, naive_dram,
                        predicted.l1_fill_bytes, fused_l1, predicted.scratch_bytes, predicted.kv_fits_llc)


def measure_kernel(spec: AttentionSpec, schedule: onf.Schedule, board: Board, workdir: Path,
                   length: int | None = None) -> tuple[int, cost.Cost]:
    """(the DRAM bytes cachegrind counts for the generated kernel alone, the cost model's
    prediction) for a block whose operands are row-major, with `length` valid keys when it
    has run-time key lengths."""
    _require_valgrind()
    exe = _build(spec, schedule, workdir, length)
    return _kernel_traffic(exe, board, workdir)["fused"][0], cost.predict(spec, schedule, board, length)


def plot(points: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = sorted({(p["board"], p["heads"]) for p in points})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (board, heads) in zip(axes[0], groups):
        rows = sorted((p for p in points if p["board"] == board and p["heads"] == heads), key=lambda p: p["seq"])
        seqs = [p["seq"] for p in rows]
        mib = 1 / (1 << 20)
        ax.plot(seqs, [p["compulsory_bytes"] * mib for p in rows], "k:", label="compulsory (Q+K+V+O)")
        ax.plot(seqs, [p["predicted_dram_bytes"] * mib for p in rows], "b--o", label="fused, predicted")
        ax.plot(seqs, [p["fused_dram_bytes"] * mib for p in rows], "b-s", label="fused, cachegrind")
        if all(p["naive_dram_bytes"] for p in rows):
            ax.plot(seqs, [p["naive_dram_bytes"] * mib for p in rows], "r-^", label="naive (n x n), cachegrind")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("DRAM traffic (MiB)")
        ax.set_title(f"{board}, {heads} head(s), d=64")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
