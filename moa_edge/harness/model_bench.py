"""`moa-edge bench model`: a whole model, side by side in one run, against onnxruntime on the
same file (as many intra-op threads as moa-edge's pool has, every graph optimisation): host latency, memory (arena +
weights against onnxruntime's resident-memory growth), the arena the same schedule would
need without the attention rewrite, and the conversion and build times."""
from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys
import time

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.target import Board, load_board

from .build import build, build_for_march, build_isa
from .cpuid_mask import peer_env
from .inputs import load_npz, random_inputs
from .runner import run
from .scratch_folder import scratch_folder

# onnxruntime timed in a fresh interpreter (so that the growth measured is the session's alone):
# python -c ORT_PROBE MODEL INPUTS.npz REPEAT THREADS; four_models.py runs it too.
ORT_PROBE = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

model, feeds, repeat, threads = sys.argv[1], dict(np.load(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4])
before = rss()
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
session.run(None, feeds)
grown = rss() - before
best = float("inf")
for _ in range(repeat):
    t0 = time.perf_counter()
    session.run(None, feeds)
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"run_us": best * 1e6, "resident_growth_bytes": grown}))
"""


def onnxruntime_probe(model: Path, inputs: Path, repeat: int, threads: int, env: dict | None = None) -> dict:
    """ORT_PROBE in a child process (in `env`: cpuid_mask.peer_env's): its run_us and resident_growth_bytes."""
    probe = subprocess.run([sys.executable, "-c", ORT_PROBE, str(model), str(inputs), str(repeat), str(threads)],
                           capture_output=True, text=True, check=True, env=env)
    return json.loads(probe.stdout)


def bench_model(model, convert, input_shapes=None, repeat: int = 20, inputs_path=None, seed: int = 0,
                remote_board: Board | None = None, ssh=None, progress=lambda msg: None, host_march=(),
                threads: int = 1) -> dict:
    """Host latency and memory against onnxruntime, both on `threads` threads; with `ssh`, also the latency on that real
    board (`remote_board`), where onnxruntime is not there to compare with. `convert` is
    pipeline.convert, passed in by the caller: the harness sits below the pipeline. Each
    `host_march` (x86-64-v3: the AVX2 kernels) times the host build again with -march=ARCH; an AVX2
    build on an AVX-512 host is compared with onnxruntime held to AVX2 (cpuid_mask.py), timed too."""
    model = Path(model)
    board = load_board("host")
    with scratch_folder("moa-bench-") as tmp:
        tmp = Path(tmp)
        progress("convert")
        t0 = time.perf_counter()
        report = convert(model, tmp / "fused", input_shapes=input_shapes, threads=threads)
        convert_s = time.perf_counter() - t0
        progress("build for the host")
        t0 = time.perf_counter()
        binary = build(tmp / "fused", board)
        build_s = time.perf_counter() - t0
        progress("convert without the attention rewrite (arena baseline)")
        try:
            unfused_arena = convert(model, tmp / "unfused", input_shapes=input_shapes,
                                    fuse_attention=False)["memory"]["arena_bytes"]
        except MoaEdgeError as exc:  # e.g. the ONNX Attention op itself: no unfused form to run
            unfused_arena, unfused_error = None, str(exc)
        else:
            unfused_error = ""

        inputs = load_npz(inputs_path) if inputs_path else random_inputs(report["io"], seed)
        np.savez(tmp / "inputs.npz", **inputs)
        progress(f"moa-edge: {repeat} runs")
        stats = {}
        _, ours_us = run(binary, board, report["io"], inputs, repeat=repeat, stats=stats, threads=threads)
        variants, ort_avx2 = {}, {}
        native_isa = build_isa(tmp / "fused", board) if host_march else None
        for march in host_march:
            progress(f"moa-edge -march={march}: {repeat} runs")
            variant, isa = build_for_march(tmp / "fused", board, march)
            variants[march] = run(variant, board, report["io"], inputs, repeat=repeat, threads=threads)[1]
            env = peer_env(native_isa, isa, tmp / "cpuid-mask")
            if env is not None:
                progress(f"onnxruntime held to AVX2: {repeat} runs, {threads} thread(s)")
                ort_avx2[march] = onnxruntime_probe(model, tmp / "inputs.npz", repeat, threads, env)["run_us"]
        progress(f"onnxruntime: {repeat} runs, {threads} thread(s)")
        ort = onnxruntime_probe(model, tmp / "inputs.npz", repeat, threads)
        remote = None
        if ssh is not None:
            progress(f"{remote_board.name} over ssh {ssh.destination}: convert, build, {repeat} runs")
            convert(model, tmp / remote_board.name, board=remote_board, input_shapes=input_shapes,
                    threads=remote_board.threads())
            _, board_us = run(build(tmp / remote_board.name, remote_board), remote_board, report["io"], inputs,
                              repeat=repeat, ssh=ssh, threads=remote_board.threads())
            remote = {"board": remote_board.name, "ssh": ssh.destination, "moa_edge_us": board_us}
    arena, weights = report["memory"]["arena_bytes"], report["memory"]["weights_bytes"]
    return {
        "model": str(model), "repeat": repeat, "threads": threads,
        "latency_us": {"moa_edge": ours_us, "onnxruntime": ort["run_us"], "ratio": ours_us / ort["run_us"],
                       **{f"moa_edge_{march}": us for march, us in variants.items()},
                       **{f"onnxruntime_avx2_{march}": us for march, us in ort_avx2.items()},
                       **{f"ratio_{march}": us / ort_avx2.get(march, ort["run_us"]) for march, us in variants.items()}},
        "memory_bytes": {"arena": arena, "weights": weights, "arena_without_attention_rewrite": unfused_arena,
                         "unfused_error": unfused_error, "onnxruntime_resident_growth": ort["resident_growth_bytes"],
                         "arena_ratio_to_unfused": arena / unfused_arena if unfused_arena else None,
                         "total_ratio_to_onnxruntime": (arena + weights) / max(ort["resident_growth_bytes"], 1),
                         # measured: the whole runner process at its peak (weights never touched stay on disk)
                         "moa_edge_max_resident": stats["max_rss_bytes"],
                         "resident_ratio_to_onnxruntime": (stats["max_rss_bytes"] or 0) / max(ort["resident_growth_bytes"], 1)},
        "convert_s": convert_s, "host_build_s": build_s, "board_latency": remote,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    lat = result["latency_us"]
    left.bar(["moa-edge", "onnxruntime"], [lat["moa_edge"] / 1e3, lat["onnxruntime"] / 1e3], color=["C0", "C1"])
    left.set_ylabel(f"host latency, {result.get('threads', 1)} thread(s) (ms)")
    mem = result["memory_bytes"]
    right.bar(["arena", "arena, no\nrewrite", "arena +\nweights", "onnxruntime\nRSS growth"],
              [mem["arena"] / 2**20, (mem["arena_without_attention_rewrite"] or 0) / 2**20,
               (mem["arena"] + mem["weights"]) / 2**20, mem["onnxruntime_resident_growth"] / 2**20],
              color=["C0", "C2", "C0", "C1"])
    right.set_ylabel("MiB")
    fig.suptitle(Path(result["model"]).name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
