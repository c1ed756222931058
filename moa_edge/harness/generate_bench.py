"""`moa-edge bench generate`: a decoder exported with its key/value cache, prefill and decode
tokens/s and peak resident memory side by side in one run, on the same prompt and the same number
of greedy new tokens:

- moa-edge: converted for generation, built, the runner's own clock (prefill + token loop in C);
- onnxruntime on the same ONNX file: the whole prompt in one call with an empty past, then one
  token per call with the presents fed back as the next past;
- llama.cpp (llama-cpp-python, built from source by benchmarks/setup_llama_cpp.sh) on a GGUF of
  the same weights (benchmarks/gguf_f32.py makes an F32 one from a quantised file).

Each peer runs in a child process that reports its own peak resident memory (VmHWM), so the
figure is that runtime's alone, its Python interpreter included. The first new token comes from
the prefill on every side; decode is the remaining new tokens - 1 single-token steps. Each side
keeps its best prefill and best decode time over `repeat` runs. Every side's greedy tokens are
recorded and compared: a difference is flagged, not hidden."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
import platform
import subprocess
import sys
from typing import Callable

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.target import Board, load_board

from .build import build
from .generation import generate_ids, generation_info
from .scratch_folder import scratch_folder
from .ssh import TIMEOUT_S, SshTarget

LLAMA_NOT_BUILT = "not built: run benchmarks/setup_llama_cpp.sh"
CONTEXT_STEP = 16  # --max-context is the prompt + new tokens rounded up to this

# Shared by both children: the process's own peak and current resident memory, in bytes.
_MEMORY = r"""
def status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
"""

# argv: model.onnx, request.json ({prompt, new_tokens, threads, repeat}); prints one JSON line.
_ORT_CHILD = _MEMORY + r"""
import json, sys, time
import numpy as np
import onnxruntime as ort

model, request = sys.argv[1], json.load(open(sys.argv[2]))
prompt, new_tokens = request["prompt"], request["new_tokens"]
before = status_bytes("VmRSS")
options = ort.SessionOptions()
options.intra_op_num_threads = request["threads"]
options.inter_op_num_threads = 1
options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
inputs = {i.name: i for i in session.get_inputs()}
pasts = [name for name in inputs if name.startswith("past")]
outputs = [o.name for o in session.get_outputs()]
presents = [name for name in outputs if name.startswith("present")]
logits_at = outputs.index("logits") if "logits" in outputs else 0
if len(pasts) != len(presents):
    sys.exit(f"{len(pasts)} past inputs but {len(presents)} present outputs: not a decoder exported with its cache")

def empty_past(name):  # [batch, kv heads, 0, head dim]: the symbolic past length at 0
    shape = inputs[name].shape
    return np.zeros([d if isinstance(d, int) else 1 for d in shape[:2]] + [0]
                    + [d if isinstance(d, int) else 1 for d in shape[3:]], np.float32)

def step(ids, position, past):
    feed = {"input_ids": np.array([ids], np.int64)}
    if "attention_mask" in inputs:
        feed["attention_mask"] = np.ones((1, position + len(ids)), np.int64)
    if "position_ids" in inputs:
        feed["position_ids"] = np.arange(position, position + len(ids), dtype=np.int64)[None]
    feed.update(zip(pasts, past))
    result = session.run(None, feed)
    by_name = dict(zip(outputs, result))
    return int(np.argmax(result[logits_at][0, -1])), [by_name[name] for name in presents]

best_prefill = best_decode = float("inf")
for _ in range(request["repeat"]):
    t0 = time.perf_counter()
    token, past = step(prompt, 0, [empty_past(name) for name in pasts])
    t1 = time.perf_counter()
    tokens, position = [token], len(prompt)
    while len(tokens) < new_tokens:
        token, past = step([tokens[-1]], position, past)
        tokens.append(token)
        position += 1
    t2 = time.perf_counter()
    best_prefill, best_decode = min(best_prefill, t1 - t0), min(best_decode, t2 - t1)
print(json.dumps({"prefill_s": best_prefill, "decode_s": best_decode, "tokens": tokens,
                  "version": ort.__version__, "peak_rss_bytes": status_bytes("VmHWM"),
                  "rss_before_load_bytes": before}))
"""

# argv: model.gguf, request.json ({prompt, new_tokens, threads, repeat, n_ctx, vocab}); prints one JSON line.
_LLAMA_CHILD = _MEMORY + r"""
import json, sys, time
import numpy as np
import llama_cpp

gguf, request = sys.argv[1], json.load(open(sys.argv[2]))
prompt, new_tokens, threads = request["prompt"], request["new_tokens"], request["threads"]
before = status_bytes("VmRSS")
llm = llama_cpp.Llama(model_path=gguf, n_ctx=request["n_ctx"], n_threads=threads, n_threads_batch=threads,
                      n_batch=max(len(prompt), 8), n_ubatch=max(len(prompt), 8), verbose=False)

vocab = llm.n_vocab()
if vocab != request["vocab"]:
    sys.exit(f"the GGUF's vocabulary has {vocab} tokens, the ONNX model's {request['vocab']}: not the same model")

def feed(ids):  # greedy on llama.cpp's logits of the last position fed (Llama.scores stays empty
    llm.eval(ids)  # without logits_all, which would compute every position's)
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
    return int(np.argmax(logits))

best_prefill = best_decode = float("inf")
for _ in range(request["repeat"]):
    llm.reset()  # position 0 again: the next eval drops the cache beyond it
    t0 = time.perf_counter()
    tokens = [feed(prompt)]
    t1 = time.perf_counter()
    while len(tokens) < new_tokens:
        tokens.append(feed([tokens[-1]]))
    t2 = time.perf_counter()
    best_prefill, best_decode = min(best_prefill, t1 - t0), min(best_decode, t2 - t1)
print(json.dumps({"prefill_s": best_prefill, "decode_s": best_decode, "tokens": tokens,
                  "version": llama_cpp.__version__, "gguf_file_type": int(llm.metadata.get("general.file_type", -1)),
                  "peak_rss_bytes": status_bytes("VmHWM"), "rss_before_load_bytes": before}))
"""


def cpu_isa() -> str:
    """The host's widest vector ISA among those moa-edge has kernels for (moa/isa.h)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith(("flags", "Features"))), [])
    except OSError:
        flags = []
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    if "asimd" in flags:
        return "NEON"
    return platform.machine()


def context_for(prompt_tokens: int, new_tokens: int) -> int:
    """--max-context for the run: the prompt + new tokens, rounded up."""
    return -(-(prompt_tokens + new_tokens) // CONTEXT_STEP) * CONTEXT_STEP


def first_difference(ours: list[int], theirs: list[int]) -> int | None:
    """The first step at which two greedy token sequences differ (a length difference counts), or None."""
    for step, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            return step
    return None if len(ours) == len(theirs) else min(len(ours), len(theirs))


def llama_cpp_built() -> bool:
    """llama-cpp-python importable by this interpreter (benchmarks/setup_llama_cpp.sh installs it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def _rates(prompt_tokens: int, new_tokens: int, prefill_s: float, decode_s: float) -> dict:
    steps = new_tokens - 1
    return {"prefill_s": prefill_s, "decode_s": decode_s, "decode_steps": steps,
            "prefill_tokens_per_s": prompt_tokens / prefill_s if prefill_s > 0 else None,
            "decode_tokens_per_s": steps / decode_s if steps and decode_s > 0 else None}


def _child(script: str, path: Path, request: dict, folder: Path, timeout: float) -> dict:
    """Run a peer in its own interpreter; its JSON line, or {"status": "failed: ..."}."""
    (folder / "request.json").write_text(json.dumps(request))
    try:
        proc = subprocess.run([sys.executable, "-c", script, str(path), str(folder / "request.json")],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: no result within {timeout:.0f} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"status": f"failed: {last}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"status": "ok", **result, **_rates(len(request["prompt"]), request["new_tokens"],
                                               result["prefill_s"], result["decode_s"])}


def _prepare(model: Path, convert, board: Board, folder: Path, max_context: int, progress) -> tuple[Path, dict]:
    """Convert for generation and build: the runner and its generation_info."""
    project = folder / f"moa-{board.name}"
    progress(f"moa-edge: convert for {board.name} (--max-context {max_context})")
    convert(model, project, board=board, max_context=max_context)
    progress(f"moa-edge: build for {board.name}")
    return build(project, board), generation_info(project)


def _moa_edge(binary: Path, info: dict, board: Board, prompt: list[int], new_tokens: int, repeat: int,
              ssh: SshTarget | None, timeout: float, progress) -> dict:
    progress(f"moa-edge on {board.name}{f' over ssh {ssh.destination}' if ssh else ''}: {repeat} runs")
    runs = [generate_ids(binary, board, info, prompt, new_tokens, ssh=ssh, timeout=timeout) for _ in range(repeat)]
    rss = [r["max_rss_bytes"] for r in runs if r["max_rss_bytes"]]
    memory = info["memory"]
    return {"status": "ok", "board": board.name, "isa": board.isa, "ssh": ssh.destination if ssh else None,
            "threads": 1, "max_context": info["max_context"], "tokens": runs[-1]["tokens"],
            "peak_rss_bytes": max(rss) if rss else None, "weights_bytes": memory["weights_bytes"],
            "state_bytes": memory["state_bytes"], "arena_bytes": memory["arena_bytes"],
            **_rates(len(prompt), new_tokens, min(r["prefill_s"] for r in runs), min(r["decode_s"] for r in runs))}


def _ratio(a, b):
    return a / b if a and b else None


def bench_generate(model, convert, prompt_ids: list[int] | None = None, prompt_tokens: int = 64,
                   new_tokens: int = 64, threads: int = 1, repeat: int = 3, gguf=None,
                   board: Board | None = None, ssh: SshTarget | None = None, seed: int = 0,
                   timeout: float = TIMEOUT_S, progress: Callable[[str], None] = lambda msg: None) -> dict:
    """The whole comparison as one dict (see the module docstring). `convert` is pipeline.convert,
    passed in by the caller (the harness sits below the pipeline). `board`: moa-edge's side also
    runs there (over `ssh` when given); the peers and the comparison are on the host."""
    model = Path(model)
    if new_tokens < 2:
        raise MoaEdgeError(f"--new-tokens {new_tokens}: need at least 2 (the first comes from the prefill)")
    if gguf is not None and not Path(gguf).is_file():
        raise MoaEdgeError(f"--gguf {gguf}: no such file")
    host = load_board("host")
    max_context = context_for(prompt_tokens if prompt_ids is None else len(prompt_ids), new_tokens)
    with scratch_folder("moa-bench-generate-") as tmp:
        folder = Path(tmp)
        binary, info = _prepare(model, convert, host, folder, max_context, progress)
        prompt = ([int(t) for t in np.random.default_rng(seed).integers(0, info["vocab"], prompt_tokens)]
                  if prompt_ids is None else list(prompt_ids))
        runtimes = {"moa_edge": _moa_edge(binary, info, host, prompt, new_tokens, repeat, None, timeout, progress)}
        request = {"prompt": prompt, "new_tokens": new_tokens, "threads": threads, "repeat": repeat}
        progress(f"onnxruntime: {repeat} runs, {threads} thread(s)")
        runtimes["onnxruntime"] = _child(_ORT_CHILD, model, request, folder, timeout)
        if not llama_cpp_built():
            runtimes["llama_cpp"] = {"status": LLAMA_NOT_BUILT}
        elif gguf is None:
            runtimes["llama_cpp"] = {"status": "no weights: give --gguf FILE (benchmarks/gguf_f32.py makes an F32 one)"}
        else:
            progress(f"llama.cpp: {repeat} runs, {threads} thread(s)")
            runtimes["llama_cpp"] = _child(_LLAMA_CHILD, Path(gguf), {**request, "n_ctx": max_context,
                                                                      "vocab": info["vocab"]}, folder, timeout)
        on_board = None
        if board is not None and (board.name != "host" or ssh is not None):
            binary, info = _prepare(model, convert, board, folder, max_context, progress)
            on_board = _moa_edge(binary, info, board, prompt, new_tokens, repeat, ssh, timeout, progress)
    ours = runtimes["moa_edge"]
    agreement = {}
    for name in ("onnxruntime", "llama_cpp"):
        if runtimes[name]["status"] == "ok":
            step = first_difference(ours["tokens"], runtimes[name]["tokens"])
            agreement[name] = {"agree": step is None, "first_difference": step}
    if on_board is not None:
        step = first_difference(ours["tokens"], on_board["tokens"])
        agreement[f"moa_edge on {on_board['board']}"] = {"agree": step is None, "first_difference": step}
    decode = {name: r.get("decode_tokens_per_s") for name, r in runtimes.items()}
    rss = {name: r.get("peak_rss_bytes") for name, r in runtimes.items()}
    ratios = {"decode_moa_edge_over_onnxruntime": _ratio(decode["moa_edge"], decode["onnxruntime"]),
              "decode_moa_edge_over_llama_cpp": _ratio(decode["moa_edge"], decode["llama_cpp"]),
              "rss_moa_edge_over_onnxruntime": _ratio(rss["moa_edge"], rss["onnxruntime"]),
              "rss_moa_edge_over_llama_cpp": _ratio(rss["moa_edge"], rss["llama_cpp"])}
    return {
        "benchmark": "generation: prefill and decode tokens/s, peak resident memory (greedy)",
        "model": str(model), "gguf": str(gguf) if gguf else None,
        "prompt_tokens": len(prompt), "new_tokens": new_tokens, "prompt_ids": prompt, "repeat": repeat,
        "threads": {"moa_edge": 1, "onnxruntime": threads, "llama_cpp": threads},
        "isa": cpu_isa(), "machine": platform.machine(),
        "notes": ["moa-edge's runner is single-threaded today; --threads sets the peers' threads only",
                  "rates are the best of the runs; peak resident memory is the whole process (VmHWM), the peers' "
                  "Python interpreter included"],
        "runtimes": runtimes, "board": on_board, "tokens_agree": agreement, "ratios": ratios,
        "targets": _targets(ratios, threads, runtimes["llama_cpp"]),
    }


def _targets(ratios: dict, threads: int, llama: dict) -> dict:
    """Issue 13's goals for the README (not tests): met, or None when the run cannot tell."""
    def verdict(value, floor, below=False):
        return {"value": value, "met": None if value is None else (value < floor if below else value >= floor)}
    f32 = llama.get("gguf_file_type") == 0  # LLAMA_FTYPE_ALL_F32
    return {
        "decode >= onnxruntime's": verdict(ratios["decode_moa_edge_over_onnxruntime"], 1.0),
        "decode >= 0.9x llama.cpp's at float32 on one thread": verdict(
            ratios["decode_moa_edge_over_llama_cpp"] if f32 and threads == 1 else None, 0.9),
        "resident memory below onnxruntime's": verdict(ratios["rss_moa_edge_over_onnxruntime"], 1.0, below=True),
        "resident memory below llama.cpp's": verdict(ratios["rss_moa_edge_over_llama_cpp"], 1.0, below=True),
    }


def table(result: dict) -> str:
    """The comparison as printed by the verb."""
    def cell(value, digits=1):
        return "-" if value is None else f"{value:.{digits}f}"
    names = {"moa_edge": "moa-edge", "onnxruntime": "onnxruntime", "llama_cpp": "llama.cpp"}
    threads = result["threads"]
    lines = [f"{Path(result['model']).name}: prompt {result['prompt_tokens']} tokens, {result['new_tokens']} new "
             f"(greedy; decode = {result['new_tokens'] - 1} single-token steps), best of {result['repeat']}, "
             f"host {result['machine']} {result['isa']}",
             f"{'runtime':22} {'threads':>7} {'prefill tok/s':>13} {'decode tok/s':>12} {'peak RSS MiB':>12} {'':25}  tokens"]
    rows = [(name, names[name], threads[name], r) for name, r in result["runtimes"].items()]
    if result["board"]:
        key = f"moa_edge on {result['board']['board']}"
        rows.append((key, key.replace("_", "-"), 1, result["board"]))
    for key, label, count, r in rows:
        if r["status"] != "ok":
            lines.append(f"{label:22} {count:>7} {r['status']}")
            continue
        agree = result["tokens_agree"].get(key)
        same = "" if agree is None else (" same as moa-edge" if agree["agree"]
                                         else f" DIFFER from moa-edge's at step {agree['first_difference']}")
        rss = r["peak_rss_bytes"] / 2**20 if r["peak_rss_bytes"] else None
        start = r.get("rss_before_load_bytes")  # a peer's interpreter with its runtime imported, no model yet
        lines.append(f"{label:22} {count:>7} {cell(r['prefill_tokens_per_s']):>13} {cell(r['decode_tokens_per_s']):>12} "
                     f"{cell(rss):>12} {'' if start is None else f'(before the model: {start / 2**20:.1f})':>25}  "
                     f"{len(r['tokens'])}{same}")
    ratios = result["ratios"]
    lines.append(f"decode moa-edge/onnxruntime {cell(ratios['decode_moa_edge_over_onnxruntime'], 2)}, "
                 f"moa-edge/llama.cpp {cell(ratios['decode_moa_edge_over_llama_cpp'], 2)}; peak RSS moa-edge/onnxruntime "
                 f"{cell(ratios['rss_moa_edge_over_onnxruntime'], 2)}, moa-edge/llama.cpp "
                 f"{cell(ratios['rss_moa_edge_over_llama_cpp'], 2)}")
    lines += [f"note: {note}" for note in result["notes"]]
    for target, verdict in result["targets"].items():
        state = {True: "met    ", False: "not met", None: "n/a    "}[verdict["met"]]
        lines.append(f"target {state}: {target} ({cell(verdict['value'], 2)})")
    return "\n".join(lines)
