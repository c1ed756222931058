"""`moa-edge bench generate`: a decoder exported with its key/value cache, prefill and decode
tokens/s and peak resident memory side by side in one run, on the same prompt and the same number
of greedy new tokens:

- moa-edge: converted for generation, built, the runner's own clock (prefill + token loop in C);
- onnxruntime on the same ONNX file: the whole prompt in one call with an empty past, then one
  token per call with the presents fed back as the next past;
- llama.cpp (llama-cpp-python, built from source by benchmarks/setup_llama_cpp.sh) on a GGUF of
  the same weights (benchmarks/gguf_f32.py makes an F32 one from a quantised file), run by this
  interpreter or by each of `llama_pythons` (one build a peer, e.g. an AVX2-only build beside the
  -march=native one); each build's ISA is what it reports (llama_print_system_info), and a target
  compares a moa-edge build only with a llama.cpp build of the same ISA.

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
import re
import subprocess
import sys
from typing import Callable

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.target import Board, load_board

from .build import build, build_for_march, build_isa, check_march
from .generation import generate_ids, generation_info
from .gguf_weights import FILE_TYPES, MATCHING, write_gguf
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


# A build's instruction sets, as ggml reports them: "CPU : SSE3 = 1 | ... | AVX2 = 1 | ... |".
_PROBE = ("import json, llama_cpp; print(json.dumps({'version': llama_cpp.__version__, "
          "'system_info': llama_cpp.llama_print_system_info().decode(errors='replace')}))")
# moa/isa.h's names, widest first, and the ggml feature that stands for each.
_GGML_ISA = (("avx512", "AVX512"), ("avx2", "AVX2"), ("neon", "NEON"), ("rvv", "RISCV_V"))
ISA_TITLE = {"avx512": "AVX-512", "avx2": "AVX2", "neon": "NEON", "rvv": "RVV", "scalar": "scalar"}


def llama_isa(system_info: str) -> tuple[str, list[str]]:
    """A llama.cpp build's widest vector ISA in moa/isa.h's names, and every feature it was built with."""
    features = sorted({m.group(1) for m in re.finditer(r"([A-Za-z0-9_]+) = 1\b", system_info)})
    return next((isa for isa, flag in _GGML_ISA if flag in features), "scalar"), features


def llama_python(given: str | None) -> str:
    """The interpreter of a llama.cpp peer: a Python executable, or a venv folder (its bin/python)."""
    if given is None:
        return sys.executable
    path = Path(given)
    if path.is_dir():
        path = path / "bin" / "python"
    if not path.is_file():
        raise MoaEdgeError(f"--llama-python {given}: no Python interpreter there (a venv folder or its bin/python)")
    return str(path)


def probe_llama(python: str, timeout: float = 120) -> dict:
    """A peer interpreter's llama-cpp-python: {"status": "ok", version, system_info, isa, features}, or why not."""
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"status": f"{LLAMA_NOT_BUILT} ({python}: {e})"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"status": f"{LLAMA_NOT_BUILT} ({python}: {last})"}
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    isa, features = llama_isa(found["system_info"])
    return {"status": "ok", "python": python, **found, "isa": isa, "features": features}


def _rates(prompt_tokens: int, new_tokens: int, prefill_s: float, decode_s: float) -> dict:
    steps = new_tokens - 1
    return {"prefill_s": prefill_s, "decode_s": decode_s, "decode_steps": steps,
            "prefill_tokens_per_s": prompt_tokens / prefill_s if prefill_s > 0 else None,
            "decode_tokens_per_s": steps / decode_s if steps and decode_s > 0 else None}


def _child(script: str, path: Path, request: dict, folder: Path, timeout: float, python: str | None = None) -> dict:
    """Run a peer in its own interpreter (this one, or `python`); its JSON line, or {"status": "failed: ..."}."""
    (folder / "request.json").write_text(json.dumps(request))
    try:
        proc = subprocess.run([python or sys.executable, "-c", script, str(path), str(folder / "request.json")],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: no result within {timeout:.0f} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"status": f"failed: {last}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"status": "ok", **result, **_rates(len(request["prompt"]), request["new_tokens"],
                                               result["prefill_s"], result["decode_s"])}


def _prepare(model: Path, convert, board: Board, folder: Path, max_context: int, weights, progress,
             threads: int = 1) -> tuple[Path, Path, dict]:
    """Convert for generation (an arena for `threads` threads) and build: the project, its runner
    and its generation_info."""
    project = folder / f"moa-{board.name}"
    form = f", --weights {weights.text}" if weights is not None else ""
    progress(f"moa-edge: convert for {board.name} (--max-context {max_context}{form}, --threads {threads})")
    convert(model, project, board=board, max_context=max_context, weights=weights, threads=threads)
    progress(f"moa-edge: build for {board.name}")
    return project, build(project, board), generation_info(project)


def _moa_edge(binary: Path, info: dict, board: Board, isa: str | None, prompt: list[int], new_tokens: int,
              repeat: int, ssh: SshTarget | None, timeout: float, progress, label: str = "moa-edge",
              threads: int = 1) -> dict:
    progress(f"{label} on {board.name}{f' over ssh {ssh.destination}' if ssh else ''}: {repeat} runs, "
             f"{threads} thread(s)")
    runs = [generate_ids(binary, board, info, prompt, new_tokens, ssh=ssh, timeout=timeout, threads=threads)
            for _ in range(repeat)]
    rss = [r["max_rss_bytes"] for r in runs if r["max_rss_bytes"]]
    memory = info["memory"]
    return {"status": "ok", "board": board.name, "isa": isa, "ssh": ssh.destination if ssh else None,
            "threads": threads, "max_context": info["max_context"], "tokens": runs[-1]["tokens"],
            "peak_rss_bytes": max(rss) if rss else None, "weights_bytes": memory["weights_bytes"],
            "weights_bytes_by_type": memory.get("weights_bytes_by_type"),
            "state_bytes": memory["state_bytes"], "arena_bytes": memory["arena_bytes"],
            **_rates(len(prompt), new_tokens, min(r["prefill_s"] for r in runs), min(r["decode_s"] for r in runs))}


def onnx_weights_bytes(model: Path) -> int | None:
    """The bytes of the ONNX file's initializers (what onnxruntime loads as weights)."""
    import onnx
    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - a figure for the table, not worth failing the run over
        return None
    total = 0
    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next((e.value for e in t.external_data if e.key == "length"), 0))
            continue
        count = int(np.prod(t.dims)) if t.dims else 1
        total += len(t.raw_data) if t.raw_data else count * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def gguf_summary(path: Path) -> dict:
    """A GGUF file's type (a FILE_TYPES name, else the number), tensor count per type, weights bytes."""
    import gguf as gguf_package  # optional: only with --gguf
    reader = gguf_package.GGUFReader(path, "r")
    field = reader.get_field(gguf_package.Keys.General.FILE_TYPE)
    number = int(field.contents()) if field is not None else None
    names = {int(v): k for k, v in FILE_TYPES.items()}
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"gguf_type": names.get(number, f"file type {number}"), "tensor_types": types,
            "weights_bytes": sum(int(t.n_bytes) for t in reader.tensors), "file_bytes": path.stat().st_size}


def _best_turn(turns: list[dict], prompt_tokens: int, new_tokens: int) -> dict:
    """A side's turns as one result: the best prefill and decode of all, the highest peak resident
    memory, the last turn's tokens; each turn's times kept. A failed turn is the side's result."""
    failed = next((t for t in turns if t["status"] != "ok"), None)
    if failed is not None or len(turns) == 1:
        return failed or turns[0]
    prefill, decode = min(t["prefill_s"] for t in turns), min(t["decode_s"] for t in turns)
    rss = [t["peak_rss_bytes"] for t in turns if t.get("peak_rss_bytes")]
    return {**turns[-1], "peak_rss_bytes": max(rss) if rss else None,
            **_rates(prompt_tokens, new_tokens, prefill, decode),
            "turns": [{"prefill_s": t["prefill_s"], "decode_s": t["decode_s"],
                       "decode_tokens_per_s": t["decode_tokens_per_s"]} for t in turns]}


def _ratio(a, b):
    return a / b if a and b else None


def _llama_files(gguf: Path, weights, folder: Path, progress) -> list[tuple[str, Path]]:
    """llama.cpp's files for moa-edge's weight format: (file type, path). Float weights: the given
    file as it is; quantised: the matching types written from its weights (gguf_weights)."""
    if weights is None:
        return [(gguf_summary(gguf)["gguf_type"], gguf)]
    files = []
    for file_type in MATCHING[weights.qtype]:
        target = folder / f"llama-{file_type}.gguf"
        progress(f"llama.cpp: write {file_type} weights from {gguf.name} (gguf {file_type} quantize)")
        write_gguf(gguf, target, file_type)
        files.append((file_type, target))
    return files


def bench_generate(model, convert, prompt_ids: list[int] | None = None, prompt_tokens: int = 64,
                   new_tokens: int = 64, threads: int = 1, repeat: int = 3, gguf=None,
                   board: Board | None = None, ssh: SshTarget | None = None, seed: int = 0,
                   timeout: float = TIMEOUT_S, progress: Callable[[str], None] = lambda msg: None,
                   weights=None, onnxruntime: bool = True, host_march: list[str] = (), rounds: int = 1,
                   llama_pythons: list[str] = ()) -> dict:
    """The whole comparison as one dict (see the module docstring). `convert` is pipeline.convert,
    passed in by the caller (the harness sits below the pipeline). `board`: moa-edge's side also
    runs there (over `ssh` when given); the peers and the comparison are on the host. `weights`
    (passes.quantize.WeightFormat): moa-edge's build stores its weights so, and llama.cpp runs the
    matching GGUF types written from `gguf`'s weights (int8: Q8_0; int4: Q4_0 and Q4_1).
    `host_march`: moa-edge's host build again with each -march=ARCH (x86-64-v3: the AVX2 kernels).
    `rounds`: the sides take turns that many times (each turn `repeat` runs; the best of all counts).
    `llama_pythons`: the interpreters (or venv folders) whose llama-cpp-python builds are the llama.cpp
    peers, each one its own (benchmarks/setup_llama_cpp.sh with MARCH=x86-64-v3: an AVX2 build);
    default this interpreter's."""
    model = Path(model)
    if new_tokens < 2:
        raise MoaEdgeError(f"--new-tokens {new_tokens}: need at least 2 (the first comes from the prefill)")
    if rounds < 1:
        raise MoaEdgeError(f"--rounds {rounds}: need at least 1")
    if gguf is not None and not Path(gguf).is_file():
        raise MoaEdgeError(f"--gguf {gguf}: no such file")
    for march in host_march:
        check_march(march)
    pythons = [llama_python(given) for given in llama_pythons] or [None]
    host = load_board("host")
    load_at_start = _load_average()
    max_context = context_for(prompt_tokens if prompt_ids is None else len(prompt_ids), new_tokens)
    with scratch_folder("moa-bench-generate-") as tmp:
        folder = Path(tmp)
        project, binary, info = _prepare(model, convert, host, folder, max_context, weights, progress, threads)
        prompt = ([int(t) for t in np.random.default_rng(seed).integers(0, info["vocab"], prompt_tokens)]
                  if prompt_ids is None else list(prompt_ids))
        # Each side is a turn: `repeat` runs, best of them. The sides take turns `rounds` times, so that
        # a change of load on a shared machine during the run reaches all of them.
        turns: dict[str, Callable[[], dict]] = {}
        isa = build_isa(project, host)
        turns["moa_edge"] = lambda: _moa_edge(binary, info, host, isa, prompt, new_tokens, repeat, None, timeout,
                                              progress, threads=threads)
        for march in host_march:
            variant, variant_isa = build_for_march(project, host, march)
            turns[f"moa_edge_{march}"] = lambda variant=variant, variant_isa=variant_isa, march=march: {
                **_moa_edge(variant, info, host, variant_isa, prompt, new_tokens, repeat, None, timeout, progress,
                            f"moa-edge -march={march}", threads), "cflags_added": [f"-march={march}"]}
        request = {"prompt": prompt, "new_tokens": new_tokens, "threads": threads, "repeat": repeat}
        fixed = {}  # the sides that do not run, and why
        if onnxruntime:
            ort_weights = onnx_weights_bytes(model)

            def ort_turn():
                progress(f"onnxruntime: {repeat} runs, {threads} thread(s)")
                return {**_child(_ORT_CHILD, model, request, folder, timeout), "weights_bytes": ort_weights}
            turns["onnxruntime"] = ort_turn
        else:
            fixed["onnxruntime"] = {"status": "skipped (--no-onnxruntime)"}
        builds = [{"status": LLAMA_NOT_BUILT} if python is None and not llama_cpp_built()
                  else probe_llama(python or sys.executable) for python in pythons]
        tags = _build_tags(builds) if len(builds) > 1 else [""]
        files = None
        for build_info, tag in zip(builds, tags):
            base = "llama_cpp" + (f"_{tag}" if tag else "")
            if build_info["status"] != "ok":
                fixed[base] = {"status": build_info["status"]}
                continue
            if gguf is None:
                fixed[base] = {"status": "no weights: give --gguf FILE, a GGUF of the same weights"
                               + (" (any type: the bench writes the matching types from it)" if weights else
                                  " (benchmarks/gguf_f32.py makes an F32 one)")}
                continue
            if files is None:  # written once, read by every build
                files = [(file_type, path, gguf_summary(path))
                         for file_type, path in _llama_files(Path(gguf), weights, folder, progress)]
            build_fields = {"isa": build_info["isa"], "build_features": build_info["features"],
                            "python": build_info["python"], "system_info": build_info["system_info"]}
            for index, (file_type, path, summary) in enumerate(files):
                def llama_turn(file_type=file_type, path=path, summary=summary, build_fields=build_fields):
                    progress(f"llama.cpp {file_type} ({ISA_TITLE.get(build_fields['isa'], build_fields['isa'])} "
                             f"build, {build_fields['python']}): {repeat} runs, {threads} thread(s)")
                    return {**_child(_LLAMA_CHILD, path, {**request, "n_ctx": max_context, "vocab": info["vocab"]},
                                     folder, timeout, build_fields["python"]), **summary, **build_fields}
                turns[base if index == 0 else f"{base}_{file_type}"] = llama_turn
        taken: dict[str, list[dict]] = {key: [] for key in turns}
        for round_number in range(rounds):
            if rounds > 1:
                progress(f"round {round_number + 1} of {rounds}")
            for key, turn in turns.items():
                taken[key].append(turn())
        runtimes = {key: _best_turn(taken[key], len(prompt), new_tokens) for key in turns}
        for key, why in fixed.items():  # in the table's order: onnxruntime, then llama.cpp
            runtimes[key] = why
        order = ["moa_edge", *[k for k in runtimes if k.startswith("moa_edge_")], "onnxruntime",
                 *[k for k in runtimes if k.startswith("llama_cpp")]]
        runtimes = {key: runtimes[key] for key in order}
        on_board = None
        if board is not None and (board.name != "host" or ssh is not None):
            project, binary, info = _prepare(model, convert, board, folder, max_context, weights, progress, threads)
            on_board = _moa_edge(binary, info, board, build_isa(project, board), prompt, new_tokens, repeat, ssh,
                                 timeout, progress, threads=threads)
    ours = runtimes["moa_edge"]
    agreement = {}
    for name, r in runtimes.items():
        if name != "moa_edge" and r["status"] == "ok":
            step = first_difference(ours["tokens"], r["tokens"])
            agreement[name] = {"agree": step is None, "first_difference": step}
    if on_board is not None:
        step = first_difference(ours["tokens"], on_board["tokens"])
        agreement[f"moa_edge on {on_board['board']}"] = {"agree": step is None, "first_difference": step}
    ratios = {}
    for side in [name for name in runtimes if name.startswith("moa_edge")]:
        for peer in [name for name in runtimes if not name.startswith("moa_edge")]:
            for figure, key in (("decode", "decode_tokens_per_s"), ("rss", "peak_rss_bytes"),
                                ("weights", "weights_bytes")):
                ratios[f"{figure}_{side}_over_{peer}"] = _ratio(runtimes[side].get(key), runtimes[peer].get(key))
    return {
        "benchmark": "generation: prefill and decode tokens/s, peak resident memory (greedy)",
        "model": str(model), "gguf": str(gguf) if gguf else None,
        "weights": weights.text if weights is not None else "float32",
        "prompt_tokens": len(prompt), "new_tokens": new_tokens, "prompt_ids": prompt, "repeat": repeat,
        "rounds": rounds,
        "threads": {name: threads for name in runtimes},
        "isa": cpu_isa(), "machine": platform.machine(),
        "load_average_start": load_at_start, "load_average": _load_average(),
        "notes": [f"every side runs {threads} thread(s) (--threads)",
                  "rates are the best of the runs (of every round: the sides take turns); peak resident memory is the "
                  "whole process (VmHWM), the peers' "
                  "Python interpreter included"],
        "runtimes": runtimes, "board": on_board, "tokens_agree": agreement, "ratios": ratios,
        "targets": _targets(ratios, threads, runtimes, weights),
    }


def _build_tags(builds: list[dict]) -> list[str]:
    """Each llama.cpp build's part of its runtimes' keys: its ISA (llama_cpp_avx2, llama_cpp_avx512_Q4_1),
    numbered when two builds share one."""
    isas = [b.get("isa") or f"build{i + 1}" for i, b in enumerate(builds)]
    return [isa if isas.count(isa) == 1 else f"{isa}_{isas[:i].count(isa) + 1}" for i, isa in enumerate(isas)]


def _load_average() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def _targets(ratios: dict, threads: int, runtimes: dict, weights) -> dict:
    """Issue 13's and 14's goals for the README (not tests): met, or None when the run cannot tell."""
    def verdict(value, floor, below=False):
        return {"value": value, "met": None if value is None else (value < floor if below else value >= floor)}
    matching = MATCHING[weights.qtype if weights is not None else None]
    targets = {"decode >= onnxruntime's": verdict(ratios.get("decode_moa_edge_over_onnxruntime"), 1.0)}
    pairs = _like_pairs(runtimes)
    for side, name, isa in pairs:
        kind = runtimes[name].get("gguf_type")
        # Only like against like: the llama.cpp file of moa-edge's weight format, on one thread, and a
        # moa-edge build of the llama.cpp build's ISA.
        same = kind in matching and runtimes[name].get("gguf_file_type") == int(FILE_TYPES[kind])
        kind = kind or matching[0]
        what = "at float32" if kind == "F32" else kind
        targets[f"decode >= 0.9x llama.cpp's {what} on one thread{isa}"] = verdict(
            ratios.get(f"decode_{side}_over_{name}") if same and threads == 1 else None, 0.9)
    targets["resident memory below onnxruntime's"] = verdict(ratios.get("rss_moa_edge_over_onnxruntime"), 1.0, True)
    for side, name, isa in pairs:
        kind = runtimes[name].get("gguf_type")
        targets[f"resident memory below llama.cpp's{f' {kind}' if kind else ''}{isa}"] = verdict(
            ratios.get(f"rss_{side}_over_{name}"), 1.0, below=True)
    return targets


def _like_pairs(runtimes: dict) -> list[tuple[str, str, str]]:
    """(moa-edge side, llama.cpp peer, ", ISA both" or "") of the same ISA. A peer whose ISA is not known
    (no build ran) pairs with moa-edge's host build, as before the ISA was asked."""
    sides = [k for k in runtimes if k.startswith("moa_edge")]
    llamas = [k for k in runtimes if k.startswith("llama_cpp")]
    pairs = []
    for name in llamas:
        isa = runtimes[name].get("isa")
        for side in sides:
            if (isa is None and side == "moa_edge") or (isa is not None and runtimes[side].get("isa") == isa):
                pairs.append((side, name, f", {ISA_TITLE.get(isa, isa)} both" if isa else ""))
    return pairs


def label(key: str, r: dict) -> str:
    """A row's name in the table: moa-edge (with its -march), onnxruntime, llama.cpp with its file type."""
    isa = f" {ISA_TITLE.get(r['isa'], r['isa'])}" if r.get("isa") else ""
    if key.startswith("moa_edge"):
        return "moa-edge" + (f" {' '.join(r['cflags_added'])}" if r.get("cflags_added") else "") + isa
    if key.startswith("llama_cpp"):
        return "llama.cpp" + (f" {r['gguf_type']}" if r.get("gguf_type") else "") + isa
    return key


def table(result: dict) -> str:
    """The comparison as printed by the verb."""
    def cell(value, digits=1):
        return "-" if value is None else f"{value:.{digits}f}"
    def mib(value):
        return cell(value / 2**20 if value else None)
    threads = result["threads"]
    load, start, rounds = result.get("load_average"), result.get("load_average_start"), result.get("rounds", 1)
    lines = [f"{Path(result['model']).name}, weights {result.get('weights', 'float32')}: prompt {result['prompt_tokens']} "
             f"tokens, {result['new_tokens']} new (greedy; decode = {result['new_tokens'] - 1} single-token steps), best of "
             f"{result['repeat']}{f' x {rounds} rounds (the sides in turn)' if rounds > 1 else ''}, "
             f"host {result['machine']} {result['isa']}"
             + (f", load average {' '.join(f'{x:.2f}' for x in start)} at the start" if start else "")
             + (f", {' '.join(f'{x:.2f}' for x in load)} at the end" if load else ""),
             f"{'runtime':36} {'threads':>7} {'prefill tok/s':>13} {'decode tok/s':>12} {'weights MiB':>11} "
             f"{'peak RSS MiB':>12} {'':25}  tokens"]
    rows = [(name, label(name, r), threads.get(name, 1), r) for name, r in result["runtimes"].items()]
    if result["board"]:
        key = f"moa_edge on {result['board']['board']}"
        rows.append((key, key.replace("_", "-"), 1, result["board"]))
    for key, name, count, r in rows:
        if r["status"] != "ok":
            lines.append(f"{name:36} {count:>7} {r['status']}")
            continue
        agree = result["tokens_agree"].get(key)
        same = "" if agree is None else (" same as moa-edge" if agree["agree"]
                                         else f" DIFFER from moa-edge's at step {agree['first_difference']}")
        start = r.get("rss_before_load_bytes")  # a peer's interpreter with its runtime imported, no model yet
        lines.append(f"{name:36} {count:>7} {cell(r['prefill_tokens_per_s']):>13} {cell(r['decode_tokens_per_s']):>12} "
                     f"{mib(r.get('weights_bytes')):>11} {mib(r['peak_rss_bytes']):>12} "
                     f"{'' if start is None else f'(before the model: {start / 2**20:.1f})':>25}  {len(r['tokens'])}{same}")
    for key, name, _, r in rows:
        if key.startswith("moa_edge") and r["status"] == "ok":
            lines.append(f"{name}: {r.get('isa') or 'unknown'} kernels (moa/isa.h with the build's flags)"
                         + (f"; weights {_by_type(r['weights_bytes_by_type'])}" if r.get("weights_bytes_by_type") else ""))
    builds_shown = set()
    for key, name, _, r in rows:
        if key.startswith("llama_cpp") and r["status"] == "ok" and r.get("python") not in builds_shown:
            builds_shown.add(r.get("python"))
            lines.append(f"llama.cpp {ISA_TITLE.get(r.get('isa'), r.get('isa'))} build: llama-cpp-python "
                         f"{r.get('version')} ({r.get('python')}), built with "
                         + " ".join(f for f in r.get("build_features", []) if f not in ("SSE3", "SSSE3")))
    if rounds > 1:
        lines.append("decode tok/s per round: " + "; ".join(
            f"{name} {', '.join(cell(t['decode_tokens_per_s']) for t in r['turns'])}"
            for _, name, _, r in rows if r["status"] == "ok" and "turns" in r))
    ratios = result["ratios"]
    runtimes = result["runtimes"]
    for side in [k for k in runtimes if k.startswith("moa_edge") and runtimes[k]["status"] == "ok"]:
        parts = []
        for peer in [k for k in runtimes if not k.startswith("moa_edge") and runtimes[k]["status"] == "ok"]:
            parts.append(f"{label(peer, runtimes[peer])}: decode {cell(ratios.get(f'decode_{side}_over_{peer}'), 2)}, "
                         f"weights {cell(ratios.get(f'weights_{side}_over_{peer}'), 2)}, "
                         f"peak RSS {cell(ratios.get(f'rss_{side}_over_{peer}'), 2)}")
        if parts:
            lines.append(f"{label(side, runtimes[side])} vs " + "; ".join(parts))
    lines += [f"note: {note}" for note in result["notes"]]
    for target, verdict in result["targets"].items():
        state = {True: "met    ", False: "not met", None: "n/a    "}[verdict["met"]]
        lines.append(f"target {state}: {target} ({cell(verdict['value'], 2)})")
    return "\n".join(lines)


def _by_type(totals: dict) -> str:
    return ", ".join(f"{kind} {n / 2**20:.1f} MiB" if n >= 2**20 else f"{kind} {n / 2**10:.1f} KiB"
                     for kind, n in totals.items())
