"""`moa-edge bench attention`: the generated ONF kernel side by side with PyTorch, onnxruntime
and a naive C kernel, in one run.

Host time: one C driver per shape holds the generated kernel (onf.emit_kernel, the schedule
the cost model picks for the host board) and a naive kernel that materialises the Sq x Skv
scores; it times either inside C with clock_gettime, best of N. PyTorch runs
`scaled_dot_product_attention` in fp32 with one thread; onnxruntime a one-node opset-23
`Attention` model with one intra-op thread. Every side's output is compared with PyTorch
float64 (compare.py's tolerances): a side that computes garbage fails the benchmark.

Instructions: the same driver built for the boards (aarch64 NEON and -DMOA_FORCE_SCALAR;
RISC-V RVV and -DMOA_FORCE_SCALAR, plus the rv64gc visionfive2 build) runs under qemu-user
with a small TCG plugin that adds each executed translation block's instruction count
(exact: it equals the `-d in_asm,exec,nochain` trace sum). The kernel's count is the run's
minus a run of the same program that skips the kernel, both under `env -i`. Each build's
count is set against its ideal: the instructions the attention's FMAs alone would take,
flops / (2 x FMA lanes per instruction) (4 for NEON, VLEN / 32 for RVV at LMUL 1, 1 for
scalar code), so count / ideal is how far the whole kernel (softmax included) is from its
FMA floor.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
import os
from pathlib import Path
import platform
import re
import shutil
import subprocess
import time

import numpy as np

from moa_edge import C_RUNTIME_DIR
from moa_edge.errors import MoaEdgeError
from moa_edge.moa import Layout, cost, onf
from moa_edge.moa.spec import AttentionSpec
from moa_edge.ops.attention import C_SOURCES
from moa_edge.target import Board, load_board

from . import compare, insn_count
from .build import check_march, selected_isa
from .kernel_harness import RUNTIME_INCLUDE, runtime_objects
from .scratch_folder import scratch_folder
from .ssh import RemoteFolder

SEQS = (128, 512, 1024, 2048, 4096)
SIDES = ("moa_edge", "torch_sdpa", "onnxruntime", "naive_c")
ISA_TITLE = {"avx512": "AVX-512", "avx2": "AVX2", "neon": "NEON", "rvv": "RVV", "scalar": "scalar"}

NAIVE_KERNEL = r"""
/* The unfused shape of attention: S = scale Q K^T (Sq x Skv, in memory; causal: only the
 * keys k <= i), row softmax in place, O = S V. */
static void naive(const float *Q, const float *K, const float *V, float *S, float *O)
{
    long h, i, k, j, q;
    for (h = 0; h < HEADS; h++) {
        const float *Qh = Q + h * SQ * D, *Kh = K + h * SKV * D, *Vh = V + h * SKV * DV;
        float *Oh = O + h * SQ * DV;
        for (i = 0; i < SQ; i++) {
            const long keys = CAUSAL ? i + 1 : SKV;
            float *Si = S + i * SKV, m = -INFINITY, l = 0;
            for (k = 0; k < keys; k++) {
                float s = 0;
                for (j = 0; j < D; j++) { s += Qh[i * D + j] * Kh[k * D + j]; }
                Si[k] = s * SCALE;
            }
            for (k = 0; k < keys; k++) { m = Si[k] > m ? Si[k] : m; }
            for (k = 0; k < keys; k++) { Si[k] = expf(Si[k] - m); l += Si[k]; }
            for (k = 0; k < keys; k++) { Si[k] /= l; }
            for (q = 0; q < DV; q++) { Oh[i * DV + q] = 0; }
            for (k = 0; k < keys; k++) {
                for (q = 0; q < DV; q++) { Oh[i * DV + q] += Si[k] * Vh[k * DV + q]; }
            }
        }
    }
}
"""

# The benchmark drivers' clock and file reader (bench gemm's driver uses them too).
C_HELPERS = r"""
static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* An operand's memory as numpy gives PyTorch's and onnxruntime's (numpy advises every array of
 * 4 MiB or more onto transparent huge pages), here 2 MiB-aligned as their copies are
 * (_huge_page_aligned): each side's Q, K and V then sit on the same kind of pages. */
static void *operand_alloc(size_t bytes)
{
#ifdef MADV_HUGEPAGE
    void *p = NULL;
    if (bytes >= ((size_t)1 << 22)) {
        const size_t huge = (size_t)1 << 21, rounded = (bytes + huge - 1) / huge * huge;
        if (posix_memalign(&p, huge, rounded) != 0) { return NULL; }
        (void)madvise(p, rounded, MADV_HUGEPAGE); /* advice: refused, the pages are small */
        return p;
    }
#endif
    return malloc(bytes);
}

static float *load(const char *path, size_t n)
{
    FILE *f = fopen(path, "rb");
    float *p = operand_alloc(n * sizeof *p + 1); /* + 1: n may be 0 */
    if (!f || !p || fread(p, sizeof *p, n, f) != n) { fprintf(stderr, "cannot read %s\n", path); exit(2); }
    fclose(f);
    return p;
}
"""

MAIN = C_HELPERS + r"""
/* bench MODE REPEAT BUDGET_S Q.bin K.bin V.bin Y.bin; MODE is fused, naive or empty (the
 * same program without a kernel: the instruction-count baseline). Runs MODE up to REPEAT
 * times, stopping once BUDGET_S seconds are spent, and prints the fastest run. The fused
 * kernel runs on MOA_THREADS threads (default one), a scratch each. */
int main(int argc, char **argv)
{
    const size_t nq = (size_t)HEADS * SQ * D, nk = (size_t)HEADS * SKV * D, nv = (size_t)HEADS * SKV * DV;
    const size_t no = (size_t)HEADS * SQ * DV;
    float *Q, *K, *V, *O, *S = NULL, *scratch;
    double best = INFINITY, spent = 0, budget;
    int repeat, runs = 0;
    FILE *out;
    moa_pool pool;
    const size_t threads = getenv("MOA_THREADS") ? strtoul(getenv("MOA_THREADS"), NULL, 10) : 1;
    if (argc != 8 || moa_pool_init(&pool, threads) != MOA_OK) { return 2; }
    repeat = atoi(argv[2]);
    budget = atof(argv[3]) * 1e9;
    Q = load(argv[4], nq), K = load(argv[5], nk), V = load(argv[6], nv);
    O = calloc(no, sizeof *O);
    scratch = malloc(SCRATCH_ELEMS * moa_pool_threads(&pool) * sizeof *scratch);
    if (strcmp(argv[1], "naive") == 0) { S = malloc((size_t)SQ * SKV * sizeof *S); }
    if (!O || !scratch || (strcmp(argv[1], "naive") == 0 && !S)) { return 2; }
    while (runs < repeat && (runs == 0 || spent < budget)) {
        const double t0 = now_ns();
        double t;
        if (strcmp(argv[1], "fused") == 0) {
            if (kernel_on(&pool, Q, K, V, NULL, O, scratch) != MOA_OK) { return 3; }
        } else if (strcmp(argv[1], "naive") == 0) {
            naive(Q, K, V, S, O);
        } else if (strcmp(argv[1], "empty") != 0) {
            return 2;
        }
        t = now_ns() - t0;
        best = t < best ? t : best;
        spent += t;
        runs++;
    }
    fprintf(stderr, "isa=%s\n", MOA_ISA_NAME);
    printf("best_ns=%.0f runs=%d\n", best, runs);
    out = fopen(argv[7], "wb");
    if (!out || fwrite(O, sizeof *O, no, out) != no) { return 2; }
    fclose(out);
    free(Q), free(K), free(V), free(O), free(S), free(scratch);
    moa_pool_destroy(&pool);
    return 0;
}
"""


@dataclass(frozen=True)
class CountBuild:
    """A cross build whose kernel instructions are counted under qemu."""
    name: str
    board: str           # whose compiler and flags build it
    isa: str             # the MOA_ISA_NAME it must report
    schedule_board: str  # whose cost model picks the tiles (one per architecture, so only the ISA differs)
    extra: tuple = ()
    vlen: int = 0        # RVV: the qemu vector length (0: the board's runner as it is)


COUNT_BUILDS = (
    CountBuild("aarch64-neon", "rpi4", "neon", "rpi4"),
    CountBuild("aarch64-scalar", "rpi4", "scalar", "rpi4", ("-DMOA_FORCE_SCALAR",)),
    CountBuild("rvv-vlen128", "k230", "rvv", "k230", vlen=128),
    CountBuild("rvv-vlen256", "k230", "rvv", "k230", vlen=256),
    CountBuild("riscv-scalar", "k230", "scalar", "k230", ("-DMOA_FORCE_SCALAR",), vlen=128),
    CountBuild("visionfive2-rv64gc", "visionfive2", "scalar", "k230"),
)
# (what, numerator build, denominator build): "x times fewer instructions"
COUNT_RATIOS = (
    ("scalar_over_neon", "aarch64-scalar", "aarch64-neon"),
    ("scalar_over_rvv128", "riscv-scalar", "rvv-vlen128"),
    ("rvv128_over_rvv256", "rvv-vlen128", "rvv-vlen256"),
    ("rv64gc_over_rvv128", "visionfive2-rv64gc", "rvv-vlen128"),
)


def fma_lanes(isa: str, vlen: int) -> int:
    """float32 FMA lanes of one instruction: NEON 4, RVV VLEN / 32 at LMUL 1, scalar 1."""
    return {"neon": 4, "rvv": vlen // 32}.get(isa, 1)


def attention_flops(seq: int, heads: int, head_dim: int, causal: bool) -> int:
    """Q K^T and P V, 2 flops per multiply-add each (causal: only the keys k <= i)."""
    return 4 * heads * head_dim * (seq * (seq + 1) // 2 if causal else seq * seq)


def bench_spec(seq: int, heads: int, head_dim: int, causal: bool) -> AttentionSpec:
    lay = Layout.row_major((1, heads, seq, head_dim))
    return AttentionSpec(1, heads, heads, seq, seq, head_dim, head_dim, 1 / math.sqrt(head_dim), causal, "none", 0.0,
                         lay, lay, lay, lay, None, pattern="benchmark")


def program(spec: AttentionSpec, schedule: onf.Schedule) -> str:
    header = ["#define _DEFAULT_SOURCE", "#include <math.h>", "#include <stddef.h>", "#include <stdint.h>",
              "#include <stdio.h>", "#include <stdlib.h>", "#include <string.h>", "#include <sys/mman.h>", "#include <time.h>",
              '#include "moa/attention.h"', '#include "moa/isa.h"', '#include "moa/pool.h"', '#include "moa/status.h"',
              f"#define HEADS {spec.q_heads}L", f"#define SQ {spec.q_len}L", f"#define SKV {spec.kv_len}L",
              f"#define D {spec.head_dim}L", f"#define DV {spec.value_dim}L", f"#define SCALE {spec.scale!r}f",
              f"#define CAUSAL {int(spec.is_causal)}",
              f"#define SCRATCH_ELEMS {max(1, onf.scratch_layout(spec, schedule).elements)}u"]
    return ("\n".join(header) + "\n" + onf.emit_kernel(spec, schedule, "kernel") + onf.emit_lifted(spec, schedule, "kernel")
            + NAIVE_KERNEL + MAIN)


def _schedule(spec, board) -> tuple[onf.Schedule, dict]:
    c = cost.choose(spec, board)
    return onf.Schedule(c.strategy, c.block_q, c.block_k), {"strategy": c.strategy, "block_q": c.block_q,
                                                           "block_k": c.block_k}


HUGE_PAGE = 1 << 21


def _huge_page_aligned(a: np.ndarray) -> np.ndarray:
    """a copied to a 2 MiB boundary. numpy advises an array of 4 MiB or more onto transparent
    huge pages from its first 4 KiB page, which leaves its first and last 2 MiB on small pages;
    aligned, all of it can be on huge ones, as the C side's operands are (operand_alloc). At
    4096 tokens the pages alone moved the C kernel's time by 8% on the AVX-512 host."""
    raw = np.empty(a.nbytes + HUGE_PAGE, np.uint8)
    start = -raw.ctypes.data % HUGE_PAGE
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _operands(spec, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (1, spec.q_heads, spec.q_len, spec.head_dim)
    return {n: _huge_page_aligned(rng.standard_normal(shape).astype(np.float32)) for n in "QKV"}


def _write_operands(ops: dict, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in "QKV":
        path = folder / f"{name}.bin"
        ops[name].tofile(path)
        paths.append(str(path))
    return paths


def _reference(ops: dict, causal: bool) -> np.ndarray:
    import torch
    q, k, v = (torch.from_numpy(ops[n]).double() for n in "QKV")
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal).numpy()


def _check(side: str, got: np.ndarray, ref: np.ndarray, where: str) -> dict:
    result = compare.compare(got.reshape(ref.shape), ref)
    if not result["ok"]:
        raise MoaEdgeError(f"bench attention: {side} at {where} disagrees with PyTorch float64 "
                           f"(max abs err {result['max_abs_err']:.3g}, max rel err {result['max_rel_err']:.3g}; "
                           f"tolerance {compare.MAX_ABS_ERR:g} / {compare.MAX_REL_ERR:g})"
                           + (f": {result['error']}" if "error" in result else ""))
    return {k: result[k] for k in ("max_abs_err", "max_rel_err", "max_ulp")}


def compile_program(what: str, cc: str, cflags: list, ldflags: list, source: str, folder: Path, sources,
                    include: Path = RUNTIME_INCLUDE, name: str = "bench") -> Path:
    """A benchmark's C program (source) with the runtime sources it needs, strict warnings on;
    `what` names the benchmark in the error."""
    folder.mkdir(parents=True, exist_ok=True)
    src, exe = folder / f"{name}.c", folder / name
    src.write_text(source)
    cmd = [cc, *cflags, "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{include}", str(src), *map(str, sources),
           "-o", str(exe), *ldflags, "-lm", "-lpthread"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise MoaEdgeError(f"{what}: {folder.name} failed to compile ({' '.join(cmd[:4])} ...):\n{proc.stderr[-3000:]}")
    return exe


def _compile(cc: str, cflags: list, ldflags: list, source: str, folder: Path, objects=None) -> Path:
    sources = objects if objects is not None else [C_RUNTIME_DIR / "src" / s for s in C_SOURCES]
    return compile_program("bench attention", cc, cflags, ldflags, source, folder, sources)


def _build_isa(cc: str, cflags: list) -> str:
    """The MOA_ISA_NAME moa/isa.h selects under these flags."""
    isa = selected_isa(cc, cflags, RUNTIME_INCLUDE)
    if isa is None:
        raise MoaEdgeError(f"bench attention: {cc} {' '.join(cflags)} cannot preprocess moa/isa.h")
    return isa


def _run_c(cmd: list, mode: str, repeat: int, budget: float, paths: list, y_path: Path,
           threads: int = 1) -> tuple[dict, np.ndarray]:
    proc = subprocess.run([*cmd, mode, str(repeat), repr(budget), *paths, str(y_path)], capture_output=True, text=True,
                          env={**os.environ, "MOA_THREADS": str(threads)})
    if proc.returncode:
        raise MoaEdgeError(f"bench attention: the {mode} C kernel exited with status {proc.returncode}: "
                           f"{proc.stderr.strip()[-500:]}")
    m = re.search(r"best_ns=(\d+) runs=(\d+)", proc.stdout)
    isa = re.search(r"isa=(\w+)", proc.stderr)
    return ({"best_ns": int(m.group(1)), "runs": int(m.group(2)), "isa": isa.group(1) if isa else None},
            np.fromfile(y_path, np.float32))


# PyTorch as an ISA-limited host runs it, for the moa-edge builds of an older ISA than the host's
# (-march=x86-64-v3 on an AVX-512 machine): ATen's kernels dispatched for that ISA, and MKL's and
# oneDNN's GEMMs limited to it. They are read when torch loads, so that SDPA runs in a child.
SDPA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}

SDPA_CHILD = r"""
import sys, time
import numpy as np
import torch
heads, seq, d, causal, repeat, budget, threads = (int(a) if i != 5 else float(a) for i, a in enumerate(sys.argv[1:8]))
from moa_edge.harness.attention_bench import _huge_page_aligned
q, k, v = (torch.from_numpy(_huge_page_aligned(np.fromfile(p, np.float32).reshape(1, heads, seq, d)))
           for p in sys.argv[8:11])
torch.set_num_threads(threads)
best, spent, runs = float("inf"), 0.0, 0
with torch.inference_mode():
    while runs < repeat and (runs == 0 or spent < budget):
        t0 = time.perf_counter()
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
        t = time.perf_counter() - t0
        best, spent, runs = min(best, t), spent + t, runs + 1
out.numpy().tofile(sys.argv[11])
print(f"best_s={best!r} runs={runs} capability={torch.backends.cpu.get_cpu_capability()}")
"""


def _sdpa_child(isa: str, spec, causal: bool, repeat: int, budget: float, threads: int, paths: list,
                y_path: Path) -> tuple[float, int, np.ndarray, str]:
    """PyTorch SDPA in a child limited to `isa` (SDPA_ENV): best seconds, runs, output, ATen's capability."""
    import sys
    args = [spec.q_heads, spec.q_len, spec.head_dim, int(causal), repeat, budget, threads, *paths, y_path]
    proc = subprocess.run([sys.executable, "-c", SDPA_CHILD, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **SDPA_ENV[isa]})
    m = re.search(r"best_s=(\S+) runs=(\d+) capability=(\w+)", proc.stdout)
    if proc.returncode or m is None:
        raise MoaEdgeError(f"bench attention: PyTorch SDPA limited to {isa} failed: {proc.stderr.strip()[-500:]}")
    if m.group(3).lower() != isa:
        raise MoaEdgeError(f"bench attention: ATEN_CPU_CAPABILITY={isa} gave PyTorch's {m.group(3)} kernels")
    return float(m.group(1)), int(m.group(2)), np.fromfile(y_path, np.float32), m.group(3)


def _time_python(fn, repeat: int, budget: float) -> tuple[float, int, object]:
    best, spent, runs, out = math.inf, 0.0, 0, None
    while runs < repeat and (runs == 0 or spent < budget):
        t0 = time.perf_counter()
        out = fn()
        t = time.perf_counter() - t0
        best, spent, runs = min(best, t), spent + t, runs + 1
    return best, runs, out


def _ort_model(spec) -> bytes:
    from onnx import TensorProto, helper
    shape = [1, spec.q_heads, spec.q_len, spec.head_dim]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("Q", "K", "V", "Y")]
    node = helper.make_node("Attention", ["Q", "K", "V"], ["Y"], is_causal=int(spec.is_causal))
    graph = helper.make_graph([node], "attention", io[:3], io[3:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]).SerializeToString()


def host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_host(seqs, causals, heads: int, head_dim: int, repeat: int, budget: float, workdir: Path,
              progress=lambda msg: None, threads: int = 1, host_march=(), rounds: int = 1) -> tuple[list[dict], dict]:
    """Host wall time of the four sides at every (seq, causal), best of `repeat` runs (fewer
    once a side has spent `budget` seconds), each output checked against PyTorch float64;
    moa-edge, PyTorch and onnxruntime on `threads` threads (the naive kernel on one).
    `host_march`: moa-edge's kernel also built with each -march=ARCH added (x86-64-v3: the AVX2
    kernels on an AVX-512 host), each build a row named by the ISA it selected. `rounds`: the
    sides take turns that many times (each turn up to `repeat` runs; the best of all counts), so
    that a change of load on a shared machine reaches all of them."""
    import onnxruntime as ort
    import torch
    board = load_board("host")
    cc = board.compiler()
    if cc is None:
        raise MoaEdgeError("bench attention: no host C compiler (cc, gcc or clang) on PATH")
    for march in host_march:
        check_march(march)
    if rounds < 1:
        raise MoaEdgeError(f"--rounds {rounds}: need at least 1")
    cflags = list(board.toolchain["cflags"])
    # moa-edge's builds: the board's flags, then each -march added (the last -march wins)
    builds = [("native", [])] + [(march, [f"-march={march}"]) for march in host_march]
    objects = {name: runtime_objects(cc, tuple(cflags + added)) for name, added in builds}
    isa_of = {name: _build_isa(cc, cflags + added) for name, added in builds}
    native_isa = isa_of["native"]
    torch_capability = torch.backends.cpu.get_cpu_capability().lower()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    points, isa = [], None
    try:
        for seq in seqs:
            for causal in causals:
                where = f"seq {seq}, {'causal' if causal else 'not causal'}"
                spec = bench_spec(seq, heads, head_dim, causal)
                schedule, sched = _schedule(spec, board)
                folder = workdir / f"host-{seq}-{'causal' if causal else 'full'}"
                exes = {}
                for name, added in builds:
                    progress(f"host {where}: build {name} (ONF {sched['strategy']} {sched['block_q']}x{sched['block_k']})")
                    exes[name] = _compile(cc, cflags + added, list(board.toolchain["ldflags"]), program(spec, schedule),
                                          folder / name, objects[name])
                ops = _operands(spec, seed=seq)
                paths = _write_operands(ops, folder)
                ref = _reference(ops, causal)
                q, k, v = (torch.from_numpy(ops[n]) for n in "QKV")
                session = ort.InferenceSession(_ort_model(spec), options, providers=["CPUExecutionProvider"])
                feeds = {n: ops[n] for n in "QKV"}

                def fused(name):
                    r, y = _run_c([str(exes[name])], "fused", repeat, budget, paths, folder / f"Y.fused.{name}.bin",
                                  threads)
                    return r["best_ns"] / 1e3, r["runs"], y, r["isa"]

                def sdpa():
                    with torch.inference_mode():
                        t, n, out = _time_python(lambda: torch.nn.functional.scaled_dot_product_attention(
                            q, k, v, is_causal=causal), repeat, budget)
                    return t * 1e6, n, out.numpy(), None

                def onnxruntime():
                    t, n, out = _time_python(lambda: session.run(None, feeds)[0], repeat, budget)
                    return t * 1e6, n, out, None

                def naive():
                    r, y = _run_c([str(exes["native"])], "naive", repeat, budget, paths, folder / "Y.naive.bin")
                    return r["best_ns"] / 1e3, r["runs"], y, None

                def limited_sdpa(limit):
                    t, n, out, _ = _sdpa_child(limit, spec, causal, repeat, budget, threads, paths,
                                               folder / f"Y.sdpa.{limit}.bin")
                    return t * 1e6, n, out, limit

                turns = {**{("moa_edge", name): (lambda name=name: fused(name)) for name, _ in builds},
                         ("torch_sdpa", None): sdpa, ("onnxruntime", None): onnxruntime, ("naive_c", None): naive}
                limits = sorted({isa_of[name] for name, _ in builds[1:]} & set(SDPA_ENV) - {native_isa})
                turns.update({("torch_sdpa", limit): (lambda limit=limit: limited_sdpa(limit)) for limit in limits})
                labels = {"torch_sdpa": f"PyTorch SDPA (fp32, {threads} thread(s))",
                          "onnxruntime": f"onnxruntime Attention-23 ({threads} thread(s))",
                          "naive_c": "naive C kernel (scores in memory)"}
                checked = {"moa_edge": "the moa-edge kernel", "torch_sdpa": "PyTorch SDPA fp32",
                           "onnxruntime": "onnxruntime", "naive_c": "the naive C kernel"}  # as errors name them
                best, runs, errors, isas = {}, {}, {}, {}
                for turn in range(rounds):
                    for key, run in turns.items():
                        side, name = key
                        label = (f"moa-edge fused kernel ({name} build)" if side == "moa_edge" else
                                 f"PyTorch SDPA limited to {name} ({' '.join(f'{k}={v}' for k, v in SDPA_ENV[name].items())})"
                                 if name else labels[side])
                        progress(f"host {where}: {label}" + (f", round {turn + 1} of {rounds}" if rounds > 1 else ""))
                        t, n, out, got_isa = run()
                        best[key] = min(best.get(key, math.inf), t)
                        runs[key] = runs.get(key, 0) + n
                        isas[key] = got_isa
                        if key not in errors:
                            errors[key] = _check(checked[side] + (f" limited to {name}" if side == "torch_sdpa" else
                                                                  f" -march={name}" if name != "native" else "")
                                                 if name else checked[side], out, ref, where)
                times = {side: best[(side, None)] for side in SIDES if side != "moa_edge"}
                times["moa_edge"] = best[("moa_edge", "native")]
                isa = isas[("moa_edge", "native")]
                flops = attention_flops(seq, heads, head_dim, causal)
                moa_builds = []
                for name, added in builds:
                    build_isa = isas[("moa_edge", name)]
                    # the SDPA this row is compared with: PyTorch limited to the build's ISA when the
                    # host has a newer one (an AVX2 host's PyTorch), else PyTorch as it is
                    peer = ("torch_sdpa", build_isa) if ("torch_sdpa", build_isa) in best else ("torch_sdpa", None)
                    moa_builds.append({
                        "build": name, "cflags_added": added, "isa": build_isa, "time_us": best[("moa_edge", name)],
                        "runs": runs[("moa_edge", name)], "gflops": flops / (best[("moa_edge", name)] * 1e3),
                        "torch_sdpa_isa": peer[1] or torch_capability, "torch_sdpa_time_us": best[peer],
                        "torch_sdpa_runs": runs[peer], "ratio_to_torch": best[("moa_edge", name)] / best[peer],
                        "ratio_to_torch_native": best[("moa_edge", name)] / times["torch_sdpa"],
                        "errors": errors[("moa_edge", name)],
                        **({"torch_sdpa_errors": errors[peer], "torch_sdpa_env": SDPA_ENV[peer[1]]} if peer[1] else {})})
                points.append({"seq": seq, "causal": causal, "schedule": sched, "isa": isa,
                               "time_us": {s: times[s] for s in SIDES},
                               "runs": {s: runs[("moa_edge", "native") if s == "moa_edge" else (s, None)] for s in SIDES},
                               "ratio_to_torch": {s: times[s] / times["torch_sdpa"] for s in SIDES},
                               "gflops": {s: flops / (times[s] * 1e3) for s in SIDES},
                               "errors": {s: errors[("moa_edge", "native") if s == "moa_edge" else (s, None)]
                                          for s in SIDES},
                               "moa_edge_builds": moa_builds})
                progress(f"host {where}: " + ", ".join(
                    [f"moa-edge {b['isa']} {b['time_us']:.0f} us" for b in moa_builds]
                    + [f"{s} {times[s]:.0f} us" for s in SIDES if s != "moa_edge"]))
    finally:
        torch.set_num_threads(torch_threads)
    return points, {"cpu": host_cpu(), "isa": isa, "cc": cc, "cflags": cflags, "torch": torch.__version__,
                    "threads": threads, "torch_threads": threads, "onnxruntime": ort.__version__,
                    "onnxruntime_intra_op_threads": threads, "host_march": list(host_march), "rounds": rounds,
                    "torch_cpu_capability": torch_capability, "operand_pages": _operand_pages()}


def _operand_pages() -> str:
    """How both sides' Q, K and V are backed, as the JSON records it."""
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        thp = "unknown"
    return (f"Q, K, V of 4 MiB or more 2 MiB-aligned and advised onto transparent huge pages on every side "
            f"(transparent_hugepage/enabled: {thp}); outputs where each side's allocator puts them")


def time_board(seqs, causals, heads: int, head_dim: int, repeat: int, budget: float, workdir: Path, board: Board, ssh,
               progress=lambda msg: None) -> list[dict]:
    """The generated kernel and the naive one timed on a real board over ssh (the board's own
    build and schedule; no PyTorch there to compare with), each output checked on the host."""
    cc = board.compiler()
    if cc is None:
        raise MoaEdgeError(f"board {board.name}: missing {'; '.join(board.missing_tools())}; run `make setup` as root")
    points = []
    with RemoteFolder(ssh) as remote:
        for seq in seqs:
            for causal in causals:
                where = f"{board.name} seq {seq}, {'causal' if causal else 'not causal'}"
                spec = bench_spec(seq, heads, head_dim, causal)
                schedule, sched = _schedule(spec, board)
                folder = workdir / f"{board.name}-{seq}-{'causal' if causal else 'full'}"
                progress(f"{where}: build (ONF {sched['strategy']} {sched['block_q']}x{sched['block_k']}), copy")
                exe = _compile(cc, list(board.toolchain["cflags"]), list(board.toolchain["ldflags"]),
                               program(spec, schedule), folder)
                ops = _operands(spec, seed=seq)
                paths = [Path(x) for x in _write_operands(ops, folder)]
                ssh.copy([exe, *paths], remote + "/")
                ref = _reference(ops, causal)
                times, errors = {}, {}
                for mode, side in (("fused", "moa_edge"), ("naive", "naive_c")):
                    progress(f"{where}: {side}")
                    proc = ssh.run([*board.runner(), "./" + exe.name, mode, str(repeat), repr(budget),
                                    *(x.name for x in paths), f"Y.{mode}.bin"], cwd=remote)
                    m = re.search(r"best_ns=(\d+) runs=(\d+)", proc.stdout)
                    if proc.returncode or m is None:
                        raise MoaEdgeError(f"bench attention: the {mode} kernel on {board.name} failed "
                                           f"({proc.returncode}): {proc.stderr.strip()[-500:]}")
                    ssh.copy([f"{remote}/Y.{mode}.bin"], folder, upload=False)
                    times[side] = int(m.group(1)) / 1e3
                    errors[side] = _check(f"{side} on {board.name}", np.fromfile(folder / f"Y.{mode}.bin", np.float32),
                                          ref, where)
                points.append({"seq": seq, "causal": causal, "schedule": sched, "time_us": times, "errors": errors,
                               "naive_over_moa_edge": times["naive_c"] / times["moa_edge"]})
    return points


def count_instructions(runner: list, exe: Path, args: list, workdir: Path) -> int:
    """Instructions qemu-user executes for `runner exe args` (the whole process), exactly,
    under `env -i` so that the environment's size does not move the count."""
    qemu = shutil.which(runner[0])
    if qemu is None:
        raise MoaEdgeError(f"bench attention: {runner[0]} is not installed (Debian: qemu-user); run make setup")
    log = workdir / f"insns.{os.getpid()}.log"
    cmd = ["env", "-i", qemu, *runner[1:], "-plugin", str(insn_count.plugin()), "-d", "plugin", "-D", str(log),
           str(exe), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode and "plugin" in proc.stderr:  # a static qemu (bpi-f3's, for Zvfh) loads no plugins
        cmd = ["env", "-i", qemu, *runner[1:], "-d", "in_asm,exec,nochain", "-D", str(log), str(exe), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            count = trace_count(log.read_text(errors="replace"))
            log.unlink()
            return count
    if proc.returncode:
        raise MoaEdgeError(f"bench attention: {' '.join(map(str, cmd[2:4]))} {exe.name} failed: "
                           f"{proc.stderr.strip()[-500:]}")
    m = re.search(r"insns=(\d+)", log.read_text())
    log.unlink()
    if m is None:
        raise MoaEdgeError("bench attention: the qemu plugin reported no instruction count")
    return int(m.group(1))


def trace_count(log: str) -> int:
    """reference/toolchains.md's trace method, for a qemu without plugins: translation block sizes
    from the `IN:` blocks of `-d in_asm,exec,nochain`, one `Trace` line per execution."""
    size, total, cur = {}, 0, None
    for line in log.splitlines():
        if line.startswith("IN:"):
            cur = "new"
        elif line.startswith("0x") and cur is not None:
            if cur == "new":
                cur = int(line.split(":")[0], 16)
                size[cur] = 0
            size[cur] += 1
        elif line.startswith("Trace "):
            total += size[int(line.split("[")[1].split("/")[1], 16)]
            cur = None
        elif not line.strip():
            cur = None
    return total


def count_kernels(seq: int, heads: int, head_dim: int, causal: bool, workdir: Path, builds=COUNT_BUILDS,
                  progress=lambda msg: None) -> dict:
    """Executed instructions of the fused kernel in each cross build under qemu, with the
    kernel's output checked against PyTorch float64, and their ratio to the build's ideal
    FMA instruction count (flops / (2 x fma_lanes))."""
    spec = bench_spec(seq, heads, head_dim, causal)
    ops = _operands(spec, seed=seq + 1)
    paths = _write_operands(ops, workdir / f"count-{seq}")
    ref = _reference(ops, causal)
    where = f"seq {seq}, {heads} head(s), {'causal' if causal else 'not causal'}"
    flops = attention_flops(seq, heads, head_dim, causal)
    rows, exes = [], {}
    for b in builds:
        board = load_board(b.board)
        missing = board.missing_tools()
        if missing:
            raise MoaEdgeError(f"bench attention: board {b.board} is not ready: missing {'; '.join(missing)}")
        schedule, sched = _schedule(spec, load_board(b.schedule_board))
        key = (b.board, b.extra, b.schedule_board)
        if key not in exes:
            progress(f"{b.name}: build for {b.board}{' ' + ' '.join(b.extra) if b.extra else ''}")
            exes[key] = _compile(board.compiler(), [*board.toolchain["cflags"], *b.extra], list(board.toolchain["ldflags"]),
                                 program(spec, schedule), workdir / f"count-{seq}" / b.name)
        exe = exes[key]
        runner = board.runner()
        if b.vlen:
            runner = [re.sub(r"vlen=\d+", f"vlen={b.vlen}", a) for a in runner]
        progress(f"{b.name}: {where} under {' '.join(runner)}")
        y_path = workdir / f"count-{seq}" / f"Y.{b.name}.bin"
        r, y = _run_c([*runner, str(exe)], "fused", 1, 0.0, paths, y_path)
        if r["isa"] != b.isa:
            raise MoaEdgeError(f"bench attention: build {b.name} selected the {r['isa']} kernels, not {b.isa}")
        errors = _check(f"the {b.name} build", y, ref, where)
        total = count_instructions(runner, exe, ["fused", "1", "0", *paths, str(y_path)], workdir)
        base = count_instructions(runner, exe, ["empty", "1", "0", *paths, str(y_path)], workdir)
        vlen = b.vlen or board.vlen
        lanes = fma_lanes(r["isa"], vlen)
        ideal = flops / (2 * lanes)
        rows.append({"name": b.name, "board": b.board, "isa": r["isa"], "vlen": vlen,
                     "flags": [*board.toolchain["cflags"], *b.extra], "schedule": sched,
                     "instructions": total - base, "process_instructions": total, "baseline_instructions": base,
                     "fma_lanes": lanes, "ideal_instructions": ideal, "over_ideal": (total - base) / ideal,
                     "errors": errors})
        progress(f"{b.name}: {total - base:,} kernel instructions, {(total - base) / ideal:.2f}x the ideal "
                 f"{ideal:,.0f} ({lanes}-lane FMAs)")
    counts = {r["name"]: r["instructions"] for r in rows}
    ratios = {name: counts[a] / counts[b] for name, a, b in COUNT_RATIOS if a in counts and b in counts}
    return {"seq": seq, "heads": heads, "head_dim": head_dim, "causal": causal, "flops": flops, "builds": rows,
            "ratios": ratios,
            "method": "qemu-user 7.2 TCG plugin counting every executed translation block's instructions; "
                      "kernel = run - run without the kernel, both under env -i; ideal = flops / (2 x FMA lanes "
                      "per instruction: NEON 4, RVV VLEN/32 at LMUL 1, scalar 1)"}


TARGETS = {
    "host time(moa-edge)/time(SDPA) <= 1.0 at seq 1024 and 4096, causal and not": None,
    "NEON >= 3x fewer instructions than scalar at seq 1024": ("scalar_over_neon", 3.0),
    "RVV VLEN 128 >= 3x fewer instructions than scalar at seq 1024": ("scalar_over_rvv128", 3.0),
    "RVV VLEN 256 fewer instructions than VLEN 128": ("rvv128_over_rvv256", 1.0),
}
# (target, build): the build's kernel instructions / its ideal FMA instruction count, at most 1.5
IDEAL_TARGETS = {
    "NEON within 1.5x of ideal FMA count at seq 1024": "aarch64-neon",
    "RVV VLEN 128 within 1.5x of ideal FMA count at seq 1024": "rvv-vlen128",
    "RVV VLEN 256 within 1.5x of ideal FMA count at seq 1024": "rvv-vlen256",
}
MAX_OVER_IDEAL = 1.5


def targets(timing: list[dict], counts: dict | None) -> dict:
    out = {}
    host = [p for p in timing if p["seq"] in (1024, 4096)]
    name = next(iter(TARGETS))
    if host:
        rows = [(p, b) for p in host for b in p.get("moa_edge_builds") or
                [{"isa": p.get("isa"), "ratio_to_torch": p["ratio_to_torch"]["moa_edge"]}]]
        out[name] = {"met": all(b["ratio_to_torch"] <= 1.0 for _, b in rows),
                     "values": {f"{b['isa']} {p['seq']}{' causal' if p['causal'] else ''}": round(b["ratio_to_torch"], 3)
                                for p, b in rows}}
    if counts and counts["seq"] == 1024:
        for name, goal in list(TARGETS.items())[1:]:
            key, bound = goal
            if key in counts["ratios"]:
                value = counts["ratios"][key]
                out[name] = {"met": value >= bound if bound > 1 else value > bound, "value": round(value, 3)}
        over = {b["name"]: b["over_ideal"] for b in counts["builds"]}
        for name, build in IDEAL_TARGETS.items():
            if build in over:
                out[name] = {"met": over[build] <= MAX_OVER_IDEAL, "value": round(over[build], 3)}
    return out


def bench_attention(seqs=SEQS, causals=(False, True), heads: int = 8, head_dim: int = 64, repeat: int = 10,
                    budget: float = 3.0, count_seq: int | None = 1024, count_heads: int = 1, count_causal: bool = False,
                    time_host_side: bool = True, builds=COUNT_BUILDS, command: str = "", board: Board | None = None,
                    ssh=None, progress=lambda msg: None, threads: int = 1, host_march=(), rounds: int = 1) -> dict:
    with scratch_folder("moa-bench-attention-") as tmp:
        tmp = Path(tmp)
        timing, host = ([], {})
        if time_host_side:
            timing, host = time_host(seqs, causals, heads, head_dim, repeat, budget, tmp, progress, threads,
                                     host_march, rounds)
        remote = None
        if ssh is not None:
            remote = {"board": board.name, "ssh": ssh.destination,
                      "timing": time_board(seqs, causals, heads, head_dim, repeat, budget, tmp, board, ssh, progress)}
        counts = count_kernels(count_seq, count_heads, head_dim, count_causal, tmp, builds, progress) \
            if count_seq else None
    return {"benchmark": "attention", "command": command, "batch": 1, "heads": heads, "head_dim": head_dim,
            "repeat": repeat, "budget_s": budget, "host": host, "timing": timing, "instructions": counts,
            "board": remote, "targets": targets(timing, counts)}


def table(result: dict) -> str:
    """The result as Markdown tables (the README's Performance section is one)."""
    lines = []
    if result["timing"]:
        lines += ["| seq | causal | moa-edge ISA | moa-edge (us) | PyTorch SDPA ISA | SDPA (us) | moa-edge / SDPA "
                  "| onnxruntime / SDPA | naive C / SDPA |", "|---:|:---:|:---|---:|:---|---:|---:|---:|---:|"]
        capability = result["host"].get("torch_cpu_capability")
        for p in result["timing"]:
            t, r = p["time_us"], p["ratio_to_torch"]
            for b in p.get("moa_edge_builds") or [{"isa": p.get("isa"), "build": "native", "time_us": t["moa_edge"],
                                                    "ratio_to_torch": r["moa_edge"], "torch_sdpa_isa": capability,
                                                    "torch_sdpa_time_us": t["torch_sdpa"]}]:
                isa = ISA_TITLE.get(b["isa"], b["isa"]) + ("" if b["build"] == "native" else f" (-march={b['build']})")
                sdpa_isa = ISA_TITLE.get(b["torch_sdpa_isa"], b["torch_sdpa_isa"] or "?")
                native = b["build"] == "native"  # the other sides are compared with PyTorch as it is
                others = f"{r['onnxruntime']:.2f} | {r['naive_c']:.2f}" if native else " | "
                lines.append(f"| {p['seq']} | {'yes' if p['causal'] else 'no'} | {isa} | {b['time_us']:.0f} | {sdpa_isa} | "
                             f"{b['torch_sdpa_time_us']:.0f} | {b['ratio_to_torch']:.2f} | {others} |")
    c = result["instructions"]
    if c:
        if lines:
            lines.append("")
        lines += [f"| build (seq {c['seq']}, {c['heads']} head, qemu) | ISA | kernel instructions | ideal (FMA lanes) "
                  "| / ideal |", "|---|---|---:|---:|---:|"]
        for b in c["builds"]:
            vlen = f" VLEN {b['vlen']}" if b["isa"] == "rvv" else ""
            lines.append(f"| {b['name']} | {b['isa']}{vlen} | {b['instructions']:,} | "
                         f"{b['ideal_instructions']:,.0f} ({b['fma_lanes']}) | {b['over_ideal']:.2f} |")
        lines.append("")
        lines.append("Ratios: " + ", ".join(f"{k.replace('_over_', ' / ')} = {v:.2f}" for k, v in c["ratios"].items()))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = (1 if result["timing"] else 0) + (1 if result["instructions"] else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(6 * max(panels, 1), 4.2), squeeze=False)
    axes = list(axes[0])
    if result["timing"]:
        ax = axes.pop(0)
        colours = {"moa_edge": "tab:blue", "onnxruntime": "tab:green", "naive_c": "tab:red", "torch_sdpa": "k"}
        labels = {"moa_edge": "moa-edge ONF kernel", "onnxruntime": "onnxruntime Attention-23", "naive_c": "naive C",
                  "torch_sdpa": "PyTorch SDPA"}
        for causal, style in ((False, "-o"), (True, "--s")):
            rows = [p for p in result["timing"] if p["causal"] == causal]
            if not rows:
                continue
            for side in ("moa_edge", "onnxruntime", "naive_c"):
                ax.plot([p["seq"] for p in rows], [p["ratio_to_torch"][side] for p in rows], style, color=colours[side],
                        label=f"{labels[side]}{', causal' if causal else ''}")
        ax.axhline(1.0, color="k", lw=0.8, label="PyTorch SDPA (fp32, 1 thread)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("time / PyTorch SDPA time")
        ax.set_title(f"host, 1 thread, {result['heads']} heads, d={result['head_dim']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    c = result["instructions"]
    if c:
        ax = axes.pop(0)
        names = [b["name"] for b in c["builds"]]
        values = [b["instructions"] / 1e6 for b in c["builds"]]
        colours = ["tab:blue" if b["isa"] != "scalar" else "tab:gray" for b in c["builds"]]
        ax.bar(range(len(names)), values, color=colours)
        for x, v in enumerate(values):
            ax.text(x, v, f"{v:.0f}M", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=7)
        ax.set_ylabel("executed instructions (millions)")
        ax.set_title(f"fused kernel under qemu, seq {c['seq']}, {c['heads']} head, d={c['head_dim']}")
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
