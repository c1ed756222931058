"""`moa-edge bench gemm`: the float32 packed GEMM (c_runtime/src/matmul.c around the per-ISA
register tiles) on its own, against numpy's matmul (OpenBLAS) in the same run.

Host time: one C driver, built once per ISA (the host's native build, AVX-512 on an AVX-512
machine, and `-march=x86-64-v3`, the AVX2 kernels), packs B outside the timed region and times
moa_gemm_packed_f32_on (Y = A B, no C) with clock_gettime, best of N. numpy runs in a child
Python process with OPENBLAS_NUM_THREADS (and threadpoolctl) at the same thread count; on an
AVX-512 host a second numpy side forces OpenBLAS's Haswell (AVX2) kernels (OPENBLAS_CORETYPE),
the peer of the AVX2 build. The sides take turns for --rounds rounds, so a change of load on a
shared machine reaches each.

Instructions: the same driver built for rpi4 (NEON), k230 (RVV) and run under qemu-user (VLEN
128 and 256) with attention_bench's TCG plugin; the GEMM's count is the run's minus a run that
skips it, per FMA lane: instructions / (M N K / lanes), lanes 4 for NEON and VLEN / 32 for RVV
(1.0 would be one instruction per vector FMA and nothing else).

Every build's Y, and numpy's float32 Y, is checked against numpy in float64 before its figure
counts (check_gemm): a wrong kernel fails the benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass
import json
import os
from pathlib import Path
import re
import subprocess
import sys

import numpy as np

from moa_edge import C_RUNTIME_DIR
from moa_edge.errors import MoaEdgeError
from moa_edge.ops.matmul import C_SOURCES
from moa_edge.target import load_board

from .attention_bench import C_HELPERS, compile_program, count_instructions, host_cpu
from .scratch_folder import scratch_folder

# (M, K, N): BERT-base's GEMMs at 128 tokens (QKV/output projection, FFN up, FFN down), a
# decode step's GEMV, and an edge shape that is no multiple of any tile.
SHAPES = ((128, 768, 768), (128, 768, 3072), (128, 3072, 768), (1, 576, 1536), (77, 300, 515))

DRIVER = r"""
#define _DEFAULT_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "moa/isa.h"
#include "moa/matmul.h"
#include "moa/pool.h"
""" + C_HELPERS + r"""
/* bench MODE ISA REPEAT BUDGET_S M K N A.bin B.bin Y.bin: MODE gemm times Y = A B (B packed
 * first, outside the clock) up to REPEAT times or until BUDGET_S seconds are spent and prints
 * the fastest; MODE empty is the same program without the product (the instruction-count
 * baseline). Exits 4 when the build's kernels are not ISA's. MOA_THREADS threads (default 1). */
int main(int argc, char **argv)
{
    size_t M, K, N;
    float *A, *B, *P, *Y;
    double best = INFINITY, spent = 0, budget;
    int repeat, runs = 0;
    moa_matrix_f32 a, b, none;
    moa_pool pool;
    FILE *out;
    const size_t threads = getenv("MOA_THREADS") ? strtoul(getenv("MOA_THREADS"), NULL, 10) : 1;
    if (argc != 11 || moa_pool_init(&pool, threads) != MOA_OK) { return 2; }
    if (strcmp(argv[2], MOA_ISA_NAME) != 0) { fprintf(stderr, "isa=%s, not %s\n", MOA_ISA_NAME, argv[2]); return 4; }
    repeat = atoi(argv[3]);
    budget = atof(argv[4]) * 1e9;
    M = strtoul(argv[5], NULL, 10), K = strtoul(argv[6], NULL, 10), N = strtoul(argv[7], NULL, 10);
    A = load(argv[8], M * K), B = load(argv[9], K * N);
    P = malloc(MOA_GEMM_PACKED_B_ELEMS(K, N) * sizeof *P + 1);
    Y = calloc(M * N, sizeof *Y);
    if (!P || !Y) { return 2; }
    a.data = A, a.row_stride = (ptrdiff_t)K, a.col_stride = 1;
    b.data = B, b.row_stride = (ptrdiff_t)N, b.col_stride = 1;
    none.data = NULL, none.row_stride = none.col_stride = 0;
    moa_gemm_pack_b_f32(K, N, b, P);
    while (strcmp(argv[1], "gemm") == 0 && runs < repeat && (runs == 0 || spent < budget)) {
        const double t0 = now_ns();
        double t;
        if (moa_gemm_packed_f32_on(&pool, M, N, K, 1.0f, a, P, 0.0f, none, Y, (ptrdiff_t)N) != MOA_OK) { return 3; }
        t = now_ns() - t0;
        best = t < best ? t : best;
        spent += t;
        runs++;
    }
    if (strcmp(argv[1], "gemm") != 0 && strcmp(argv[1], "empty") != 0) { return 2; }
    printf("best_ns=%.0f runs=%d isa=%s\n", runs ? best : 0.0, runs, MOA_ISA_NAME);
    out = fopen(argv[10], "wb");
    if (!out || fwrite(Y, sizeof *Y, M * N, out) != M * N) { return 2; }
    fclose(out);
    free(A), free(B), free(P), free(Y);
    moa_pool_destroy(&pool);
    return 0;
}
"""

# numpy's side, in a child process so that OPENBLAS_NUM_THREADS takes effect before OpenBLAS
# starts its threads: argv M K N A.bin B.bin Y.bin REPEAT BUDGET_S THREADS.
NUMPY_SIDE = r"""
import sys, time
import numpy as np
from threadpoolctl import threadpool_limits, threadpool_info
M, K, N = map(int, sys.argv[1:4])
a = np.fromfile(sys.argv[4], np.float32).reshape(M, K)
b = np.fromfile(sys.argv[5], np.float32).reshape(K, N)
repeat, budget, threads = int(sys.argv[7]), float(sys.argv[8]), int(sys.argv[9])
with threadpool_limits(limits=threads, user_api="blas"):
    best, spent, runs, y = float("inf"), 0.0, 0, None
    while runs < repeat and (runs == 0 or spent < budget):
        t0 = time.perf_counter()
        y = np.matmul(a, b)
        t = time.perf_counter() - t0
        best, spent, runs = min(best, t), spent + t, runs + 1
    blas = [f"{i['internal_api']} {i['version']} {i['architecture']} ({i['num_threads']} thread(s))"
            for i in threadpool_info() if i["user_api"] == "blas"]
y.astype(np.float32).tofile(sys.argv[6])
print(f"best_ns={best * 1e9:.0f} runs={runs} blas={'; '.join(blas)}")
"""


@dataclass(frozen=True)
class HostBuild:
    """A host build of the driver, timed against numpy."""
    name: str
    isa: str          # the MOA_ISA_NAME it must report
    march: str        # -march= value
    runtime: Path     # the c_runtime folder it is built from (the baseline's may be another tree's)


@dataclass(frozen=True)
class CountBuild:
    """A cross build whose GEMM instructions are counted under qemu-user (of C_RUNTIME_DIR, and of
    a --baseline c_runtime as NAME-baseline)."""
    name: str
    board: str        # whose compiler and flags build it
    isa: str
    vlen: int = 0     # RVV: qemu's vector length
    lanes: int = 4    # float32 lanes of one vector FMA


COUNT_BUILDS = (
    CountBuild("rpi4-neon", "rpi4", "neon", lanes=4),
    CountBuild("k230-rvv-vlen128", "k230", "rvv", vlen=128, lanes=4),
    # bpi-f3's vector length; built with k230's rv64gcv flags and run on the system qemu, whose
    # TCG plugins count exactly (the Zvfh qemu that the bpi-f3 board runs is static: no plugins).
    CountBuild("bpi-f3-rvv-vlen256", "k230", "rvv", vlen=256, lanes=8),
)


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """"MxKxN,MxKxN,..." as (M, K, N) tuples."""
    shapes = []
    for item in filter(None, text.split(",")):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise MoaEdgeError(f"bench gemm: shape {item!r} is not MxKxN with positive integers")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def operands(M: int, K: int, N: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(M * 1_000_003 + K * 1009 + N)
    return rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)


def check_gemm(who: str, got: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    """`got` against A B in float64: |got - ref| <= 1e-5 (|ref| + sqrt(K)) everywhere (fp32 sums of
    K products of unit normals round like sqrt(K)); raises MoaEdgeError when not."""
    ref = a.astype(np.float64) @ b.astype(np.float64)
    got = np.asarray(got, np.float64)
    if got.size != ref.size:
        raise MoaEdgeError(f"bench gemm: {who} wrote {got.size} values, not {ref.size}")
    got = got.reshape(ref.shape)
    err = np.abs(got - ref)
    bound = 1e-5 * (np.abs(ref) + np.sqrt(a.shape[1]))
    if not np.all(np.isfinite(got)) or np.any(err > bound):
        worst = np.unravel_index(np.nanargmax(np.where(np.isfinite(err), err / bound, np.inf)), ref.shape)
        raise MoaEdgeError(f"bench gemm: {who} disagrees with numpy float64 at Y{list(map(int, worst))}: "
                           f"{got[worst]!r} vs {ref[worst]!r} (tolerance {bound[worst]:.3g})")
    return {"max_abs_err": float(err.max()), "max_rel_err": float((err / np.maximum(np.abs(ref), 1e-30)).max())}


def compile_driver(cc: str, cflags: list, ldflags: list, runtime: Path, folder: Path) -> Path:
    sources = [runtime / "src" / s for s in C_SOURCES if (runtime / "src" / s).exists()]
    return compile_program("bench gemm", cc, cflags, ldflags, DRIVER, folder, sources, runtime / "include",
                           "gemm_bench")


def _write(folder: Path, a: np.ndarray, b: np.ndarray) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    pa, pb = folder / "A.bin", folder / "B.bin"
    a.tofile(pa)
    b.tofile(pb)
    return pa, pb


def _run(cmd: list, env: dict, what: str) -> re.Match:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    m = re.search(r"best_ns=(\d+) runs=(\d+) (?:isa|blas)=(.*)", proc.stdout)
    if proc.returncode or m is None:
        raise MoaEdgeError(f"bench gemm: {what} exited with status {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return m


def host_builds(baseline: Path | None = None) -> list[HostBuild]:
    import platform
    if platform.machine() != "x86_64":
        return [HostBuild("native", "", "native", C_RUNTIME_DIR)]
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    native = "avx512" if " avx512f" in flags else "avx2"
    builds = [HostBuild("native", native, "native", C_RUNTIME_DIR), HostBuild("avx2", "avx2", "x86-64-v3", C_RUNTIME_DIR)]
    if baseline is not None:
        builds += [HostBuild(f"{b.name}-baseline", b.isa, b.march, Path(baseline)) for b in builds]
    return builds


def time_host(shapes, repeat: int, budget: float, rounds: int, threads: int, workdir: Path, builds: list[HostBuild],
              progress=lambda msg: None) -> tuple[list[dict], dict]:
    board = load_board("host")
    cc = board.compiler()
    if cc is None:
        raise MoaEdgeError("bench gemm: no host C compiler (cc, gcc or clang) on PATH")
    base = [f for f in board.toolchain["cflags"] if not f.startswith("-march=")]
    exes = {}
    for b in builds:
        progress(f"host: build {b.name} (-march={b.march}) from {b.runtime}")
        exes[b.name] = compile_driver(cc, [*base, f"-march={b.march}"], list(board.toolchain["ldflags"]), b.runtime,
                                      workdir / f"host-{b.name}")
    env = {"MOA_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    peers = {"numpy": {}}
    if any(b.isa == "avx512" for b in builds):  # OpenBLAS picks its SkylakeX kernels here; also time its AVX2 ones
        peers["numpy-avx2"] = {"OPENBLAS_CORETYPE": "Haswell"}
    peer_of = {b.name: "numpy-avx2" if b.isa == "avx2" and "numpy-avx2" in peers else "numpy" for b in builds}
    points, blas = [], {}
    for M, K, N in shapes:
        folder = workdir / f"host-{M}x{K}x{N}"
        a, b = operands(M, K, N)
        pa, pb = _write(folder, a, b)
        sides = [*exes, *peers]
        best = {s: float("inf") for s in sides}
        runs = {s: 0 for s in best}
        errors = {}
        for r in range(rounds):
            for side in (sides if r % 2 == 0 else sides[::-1]):  # alternate who goes first
                y = folder / f"Y.{side}.bin"
                if side in peers:
                    m = _run([sys.executable, "-c", NUMPY_SIDE, str(M), str(K), str(N), str(pa), str(pb), str(y),
                              str(repeat), repr(budget), str(threads)], {**env, **peers[side]}, f"the {side} side")
                    blas[side] = m.group(3)
                else:
                    isa = next(x.isa for x in builds if x.name == side) or _native_isa(exes[side])
                    m = _run([str(exes[side]), "gemm", isa, str(repeat), repr(budget), str(M), str(K), str(N),
                              str(pa), str(pb), str(y)], env, f"the {side} build")
                if side not in errors:
                    errors[side] = check_gemm(f"the {side} side at M={M} K={K} N={N}", np.fromfile(y, np.float32), a, b)
                best[side] = min(best[side], int(m.group(1)) / 1e3)
                runs[side] += int(m.group(2))
        flops = 2.0 * M * N * K
        point = {"M": M, "K": K, "N": N, "flops": flops, "time_us": best, "runs": runs,
                 "gflops": {s: flops / (t * 1e3) for s, t in best.items()},
                 "ratio_to_numpy": {s: best[s] / best["numpy"] for s in exes},
                 "ratio_to_numpy_same_isa": {s: best[s] / best[peer_of[s]] for s in exes}, "errors": errors}
        points.append(point)
        progress(f"host {M}x{K}x{N}: " + ", ".join(f"{s} {point['gflops'][s]:.1f} GFLOP/s" for s in best))
    host = {"cpu": host_cpu(), "cc": cc, "cflags": base, "builds": {b.name: {"isa": b.isa, "march": b.march,
                                                                             "runtime": str(b.runtime)} for b in builds},
            "threads": threads, "numpy": np.__version__, "blas": blas, "peer_of": peer_of,
            "peers": {name: env for name, env in peers.items()}}
    return points, host


def _native_isa(exe: Path) -> str:
    proc = subprocess.run([str(exe), "empty", "?", "1", "0", "1", "1", "1", "/dev/null", "/dev/null", "/dev/null"],
                          capture_output=True, text=True)
    m = re.search(r"isa=(\w+)", proc.stderr)
    return m.group(1) if m else "?"


def count_builds(shapes, workdir: Path, builds=COUNT_BUILDS, progress=lambda msg: None,
                 baseline: Path | None = None) -> list[dict]:
    """Executed instructions of the GEMM in each cross build under qemu-user, per FMA lane, with
    the build's Y checked against numpy float64; with a baseline c_runtime, its builds too
    (named NAME-baseline)."""
    runtimes = [("", C_RUNTIME_DIR)] + ([("-baseline", Path(baseline))] if baseline is not None else [])
    builds = [(c, suffix, runtime) for c in builds for suffix, runtime in runtimes]
    exes, points = {}, []
    for M, K, N in shapes:
        a, b = operands(M, K, N)
        folder = workdir / f"count-{M}x{K}x{N}"
        pa, pb = _write(folder, a, b)
        rows = []
        for c, suffix, runtime in builds:
            board = load_board(c.board)
            missing = board.missing_tools()
            if missing:
                raise MoaEdgeError(f"bench gemm: board {c.board} is not ready: missing {'; '.join(missing)}")
            key = c.board + suffix
            if key not in exes:
                progress(f"{key}: build from {runtime}")
                exes[key] = compile_driver(board.compiler(), list(board.toolchain["cflags"]),
                                           list(board.toolchain["ldflags"]), runtime, workdir / f"cross-{key}")
            runner = board.runner()
            if c.vlen:
                runner = [re.sub(r"vlen=\d+", f"vlen={c.vlen}", x) for x in runner]
            name = c.name + suffix
            y = folder / f"Y.{name}.bin"
            args = [c.isa, "1", "0", str(M), str(K), str(N), str(pa), str(pb), str(y)]
            progress(f"{name}: {M}x{K}x{N} under {' '.join(runner)}")
            base = count_instructions(runner, exes[key], ["empty", *args], workdir)
            total = count_instructions(runner, exes[key], ["gemm", *args], workdir)
            errors = check_gemm(f"the {name} build at M={M} K={K} N={N}", np.fromfile(y, np.float32), a, b)
            ideal = M * N * K / c.lanes
            rows.append({"name": name, "board": c.board, "runtime": str(runtime), "isa": c.isa, "vlen": c.vlen or board.vlen, "lanes": c.lanes,
                         "flags": list(board.toolchain["cflags"]), "instructions": total - base,
                         "fma_instructions_ideal": ideal, "per_fma_lane": (total - base) / ideal, "errors": errors})
            progress(f"{name}: {M}x{K}x{N}: {total - base:,} instructions, {(total - base) / ideal:.2f} per FMA lane")
        points.append({"M": M, "K": K, "N": N, "builds": rows})
    return points


def bench_gemm(shapes=SHAPES, repeat: int = 20, budget: float = 1.0, rounds: int = 3, threads: int = 1,
               time_host_side: bool = True, count: bool = True, baseline: Path | None = None,
               builds=COUNT_BUILDS, command: str = "", progress=lambda msg: None) -> dict:
    with scratch_folder("moa-bench-gemm-") as tmp:
        tmp = Path(tmp)
        timing, host = ([], {})
        if time_host_side:
            timing, host = time_host(shapes, repeat, budget, rounds, threads, tmp, host_builds(baseline), progress)
        counts = count_builds(shapes, tmp, builds, progress, baseline) if count else []
    return {"benchmark": "gemm", "command": command, "shapes": [list(s) for s in shapes], "repeat": repeat,
            "budget_s": budget, "rounds": rounds, "host": host, "timing": timing, "instructions": counts,
            "method": {"time": "best of all runs, sides alternating each round; GFLOP/s = 2 M N K / time",
                       "ratio_to_numpy": "moa-edge time / numpy time (below 1: faster than OpenBLAS)",
                       "instructions": "qemu-user TCG plugin (attention_bench.count_instructions): run - run "
                                       "without the GEMM, both under env -i; per FMA lane = that / (M N K / lanes)"}}


def table(result: dict) -> str:
    """The result as Markdown tables (README's Performance section holds them)."""
    lines = []
    if result["timing"]:
        sides = list(result["timing"][0]["time_us"])
        builds = list(result["host"]["builds"])
        peer_of = result["host"]["peer_of"]
        isa = {n: b["isa"] for n, b in result["host"]["builds"].items()}
        lines += ["| M x K x N | " + " | ".join(f"{s} ({isa[s]})" if s in isa else s for s in sides) + " | "
                  + " | ".join(f"{s} / {peer_of[s]}" for s in builds) + " |",
                  "|---|" + "---:|" * (len(sides) + len(builds))]
        for p in result["timing"]:
            lines.append(f"| {p['M']} x {p['K']} x {p['N']} | " + " | ".join(f"{p['gflops'][s]:.1f}" for s in sides)
                         + " | " + " | ".join(f"{p['ratio_to_numpy_same_isa'][s]:.2f}" for s in builds) + " |")
        lines.append("")
        lines.append("GFLOP/s (2 M N K / best time); the ratios are moa-edge's time over its peer's (numpy-avx2: "
                     "OpenBLAS with OPENBLAS_CORETYPE=Haswell)")
    if result["instructions"]:
        if lines:
            lines.append("")
        names = [b["name"] for b in result["instructions"][0]["builds"]]
        lines += ["| M x K x N | " + " | ".join(f"{n} instr. / FMA lane" for n in names) + " |",
                  "|---|" + "---:|" * len(names)]
        for p in result["instructions"]:
            lines.append(f"| {p['M']} x {p['K']} x {p['N']} | "
                         + " | ".join(f"{b['per_fma_lane']:.2f}" for b in p["builds"]) + " |")
    return "\n".join(lines)


def write(result: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gemm.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
