"""The verbs' work: convert a model to a C project, validate it on boards."""
from __future__ import annotations

import os
from pathlib import Path
import secrets
import shutil

import numpy as np

from moa_edge.codegen import emit_generation_project, emit_project
from moa_edge.converters import import_decoder, import_onnx, model_path
from moa_edge.errors import MoaEdgeError
from moa_edge.harness import compare as cmp
from moa_edge.harness import ownership
from moa_edge.harness.build import build
from moa_edge.harness.inputs import load_npz, random_inputs
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import MAX_THREADS, check_inputs, run
from moa_edge.harness.scratch_folder import scratch_folder, signals_held
from moa_edge.harness.ssh import TIMEOUT_S
from moa_edge.ir import Graph, check_sizes
from moa_edge.ir.c_syntax import check_prefix
from moa_edge.moa import dnf
from moa_edge.moa.onf import STRATEGIES, Schedule
from moa_edge.ops import attention
from moa_edge.passes import WeightFormat, lower, unsupported_ops
from moa_edge.passes import kv_cache as kv_cache_pass
from moa_edge.codegen.pools import graph_pools
from moa_edge.plan import plan_arena
from moa_edge.target import Board, load_board


def load_graph(model: Path, input_shapes=None, strict: bool = True, fuse_attention: bool = True,
               weights: WeightFormat | None = None, activations: str | None = None) -> Graph:
    graph = lower(import_onnx(model, input_shapes), source=str(model), strict=strict, fuse_attention=fuse_attention,
                  weights=weights, activations=activations)
    check_sizes(graph, str(model))  # again: folding and the rewrites made tensors of their own
    return graph


PREFILL_CHUNK = 16  # prompt tokens per prefill call: a GEMM of 16 rows, not 16 GEMVs


def load_decoder(model: Path, max_context: int, prefill_chunk: int = PREFILL_CHUNK,
                 weights: WeightFormat | None = None, activations: str | None = None,
                 kv_cache: str = "float32") -> dict[int, Graph]:
    """A decoder exported with its cache, lowered once per chunk size: chunk -> graph (1, the
    decode step, always; prefill_chunk when larger and within max_context); kv_cache "int8"
    stores the caches quantized, "fp16" as halves (kv_cache.quantize_cache)."""
    if kv_cache not in kv_cache_pass.KV_CACHE_TYPES:
        raise MoaEdgeError(f"--kv-cache {kv_cache!r}: choose one of {', '.join(kv_cache_pass.KV_CACHE_TYPES)}")
    if max_context < 1:
        raise MoaEdgeError(f"--max-context {max_context}: must be a positive number of tokens")
    chunks = sorted({1, min(prefill_chunk, max_context)}, reverse=True)
    graphs = {}
    for chunk, graph in zip(chunks, import_decoder(model, max_context, chunks)):
        lower(graph, source=str(model), weights=weights, activations=activations,
              half_outputs=False)  # the sampler reads float32 logits
        kv_cache_pass.bind_cache_attention(graph, chunk, str(model))
        kv_cache_pass.quantize_cache(graph, kv_cache, str(model))
        check_sizes(graph, str(model))
        graphs[chunk] = graph
    return graphs


def inspect(model, board: Board, input_shapes=None, scratch_budget: int | None = None,
            max_context: int | None = None, weights: WeightFormat | None = None,
            activations: str | None = None) -> dict:
    """What convert would do: blocks found and absorbed, schedules and predicted cost, ops left
    (with max_context, of a decoder's decode step over its cache)."""
    if max_context is not None:
        graph = load_decoder(model_path(model), max_context, prefill_chunk=1, weights=weights,
                             activations=activations)[1]  # the step alone
    else:
        graph = load_graph(model_path(model), input_shapes, strict=False, weights=weights, activations=activations)
    blocks = []
    for node in graph.nodes:
        if node.op == "MoaAttention":
            attention.schedule(node, board, scratch_budget, workers=board.threads())  # as convert's default
            spec = node.attrs["spec"]
            blocks.append(dict(node=node.name, **spec.describe(), predicted=node.attrs["cost"].describe(),
                               derivation=dnf.format_derivation(dnf.derive(spec.features()))))
    unsupported = unsupported_ops(graph)
    memory = None
    if not unsupported:  # the memory plan convert would make (views, in-place writes, kernel scratch, pools)
        pools = graph_pools(graph, board) if max_context is None else None  # a decoder's arena stands alone
        memory = {**plan_arena(graph, pools=pools).describe(), "weights_bytes": sum(t.nbytes for t in graph.weights()),
                  "weights_bytes_by_type": graph.weight_bytes_by_type()}
        memory["placement"] = {b["name"]: b["pool"] for b in memory.pop("buffers")}  # buffer -> pool ("": arena)
    return {"model": str(model), "board": board.name, "attention_blocks": blocks,
            "op_types": sorted({n.op for n in graph.nodes}), "unsupported_ops": unsupported, "memory": memory}


def parse_schedule(text: str | None) -> Schedule | None:
    """'online:16x64' -> Schedule('online', 16, 64); 'online:16x64/s4' splits the key axis in 4
    (split-K, online only); None keeps the cost model's choice."""
    if not text:
        return None
    strategy, _, tiles = text.partition(":")
    tiles, slash, splits = tiles.partition("/")
    try:
        br, bc = (int(x) for x in tiles.split("x"))
        if slash and not splits.startswith("s"):
            raise ValueError(splits)
        return Schedule(strategy, br, bc, int(splits[1:]) if slash else 1)
    except (ValueError, AssertionError):
        raise MoaEdgeError(f"--schedule {text!r} is not STRATEGY:BRxBC[/sS] with STRATEGY one of "
                           f"{', '.join(STRATEGIES)}, positive tile sizes and S key splits (online only)") from None


def schedule_graph(graph: Graph, board: Board, scratch_budget: int | None = None,
                   forced: Schedule | None = None, threads: int | None = None) -> Graph:
    """Choose every attention block's ONF schedule for the board (the cost model decides), and
    plan the runs for up to `threads` threads (default: the board's cores): a kernel whose work
    is lifted onto cores gets a scratch per thread."""
    threads = threads or board.threads()
    if not 1 <= threads <= MAX_THREADS:
        raise MoaEdgeError(f"--threads {threads}: give 1 to {MAX_THREADS}")
    graph.max_threads = threads
    for node in graph.nodes:
        if node.op == "MoaAttention":
            attention.schedule(node, board, scratch_budget, forced, workers=threads)
            node.attrs["threads"] = threads
    return graph


def _check_replaceable(out_dir: Path, model: Path) -> None:
    """out_dir may be created, or replaced if it is empty or holds only what moa-edge wrote;
    anything else is the user's, and convert refuses before any work."""
    if out_dir.is_symlink():
        raise MoaEdgeError(f"{out_dir} is a symbolic link; refusing to replace it: give the folder it points to, or another -o")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise MoaEdgeError(f"{out_dir} exists and is not a moa-edge project; refusing to overwrite it")
    here, target = Path.cwd().resolve(), out_dir.resolve()
    if here == target or target in here.parents:
        raise MoaEdgeError(f"{out_dir} is the current folder or holds it; refusing to replace it: choose another -o")
    if target in model.resolve().parents:
        raise MoaEdgeError(f"{out_dir} holds the model being converted ({model}); refusing to replace it: choose another -o")
    if not any(out_dir.iterdir()):
        return
    if not ownership.is_project(out_dir):
        raise MoaEdgeError(f"{out_dir} exists and is not a moa-edge project (it has no {ownership.MARKER}); "
                           "refusing to overwrite it")
    foreign = ownership.foreign_entry(out_dir)
    if foreign is not None:
        raise MoaEdgeError(f"{out_dir} holds {foreign!r}, which moa-edge did not write (or which was changed since); "
                           "refusing to overwrite it: move it out, or choose another -o")


def convert(model, out_dir, board: Board | None = None, input_shapes=None, prefix: str = "model",
            scratch_budget: int | None = None, schedule: Schedule | None = None, fuse_attention: bool = True,
            max_context: int | None = None, prefill_chunk: int = PREFILL_CHUNK,
            weights: WeightFormat | None = None, activations: str | None = None, kv_cache: str = "float32",
            threads: int | None = None, pools=()) -> dict:
    """Write the C project for `model` and `board` (default: the host) into out_dir, all or nothing,
    its runs planned for up to `threads` threads (default: the board's cores). An existing out_dir is
    replaced only if everything in it is moa-edge's (ownership.MARKER lists what convert wrote).
    With max_context, the model is a decoder exported with its cache, built for generation (kv_cache:
    the caches' element type, float32, int8 or fp16)."""
    if not str(out_dir).strip():
        raise MoaEdgeError("-o is empty: name the project folder to create")
    model, out_dir = model_path(model), Path(out_dir)
    board = board or load_board("host")
    check_prefix(prefix)  # before any work
    if kv_cache not in kv_cache_pass.KV_CACHE_TYPES:
        raise MoaEdgeError(f"--kv-cache {kv_cache!r}: choose one of {', '.join(kv_cache_pass.KV_CACHE_TYPES)}")
    if kv_cache != "float32" and max_context is None:
        raise MoaEdgeError(f"--kv-cache {kv_cache} is for a generation build: give --max-context N too")
    if max_context is not None and pools:
        raise MoaEdgeError("--pool: generation builds (--max-context) keep their intermediates in the arena for now")
    if max_context is not None and board.bare_metal:
        raise MoaEdgeError(f"--max-context: board {board.name} is bare metal, and generation builds run on Linux "
                           "boards for now (a one-shot model converts for it)")
    if weights is not None and weights.native:
        _check_native(weights, board)
    _check_replaceable(out_dir, model)
    blocking = next((p for p in out_dir.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise MoaEdgeError(f"cannot create {out_dir}: {blocking} is a file, not a folder")

    created = [p for p in [out_dir.parent, *out_dir.parent.parents] if not p.exists()]
    # Names chosen before anything is made, so that a signal at any point finds what to clean up.
    staging, old = (out_dir.parent / f".{out_dir.name}.{kind}-{secrets.token_hex(8)}" for kind in ("partial", "old"))
    try:
        try:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
        except OSError as exc:
            raise MoaEdgeError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
        if max_context is not None:
            graphs = {chunk: schedule_graph(graph, board, scratch_budget, schedule, threads)
                      for chunk, graph in load_decoder(model, max_context, prefill_chunk, weights, activations,
                                                       kv_cache).items()}
            report = emit_generation_project(graphs, staging, max_context, prefix=prefix, board=board,
                                             source=model.name, model_folder=model.parent)
        else:
            graph = schedule_graph(load_graph(model, input_shapes, fuse_attention=fuse_attention, weights=weights,
                                              activations=activations), board, scratch_budget, schedule, threads)
            report = emit_project(graph, staging, prefix=prefix, board=board, source=model.name, pools=pools)
        ownership.write_manifest(staging)
        _check_replaceable(out_dir, model)  # again: the user may have written into it meanwhile
        with signals_held():  # both renames, or neither
            if out_dir.exists():  # moved aside in one rename, so out_dir is always whole
                os.rename(out_dir, old)
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists():  # interrupted mid-swap
            if out_dir.exists():  # the new project is already in place
                ownership.remove_owned(old)
            else:  # the old project goes back where it was
                os.rename(old, out_dir)
        for p in created:  # innermost first
            if p.exists() and not any(p.iterdir()):
                p.rmdir()
        raise
    with signals_held():
        kept = old.exists() and not ownership.remove_owned(old)
    if kept:
        raise MoaEdgeError(f"converted into {out_dir}, but files that appeared in the old project meanwhile "
                           f"are kept in {old}")
    return report


def onnx_reference(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The original file run by the ONNX reference evaluator, or by onnxruntime where the
    evaluator has no kernel (com.microsoft ops): checks the importer and the rewrites."""
    import onnx
    from onnx.reference import ReferenceEvaluator
    proto = onnx.load(str(model))
    try:
        outputs = ReferenceEvaluator(proto).run(None, inputs)
    except Exception:
        import onnxruntime
        outputs = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, inputs)
    return {o.name: np.asarray(v) for o, v in zip(proto.graph.output, outputs)}


HALF_ARITHMETIC = ("fp16", "zvfh")  # the extensions with half-precision vector arithmetic (NEON, RVV)


def _check_native(weights: WeightFormat, board: Board) -> None:
    """fp16:native only for a board whose core has half-precision arithmetic."""
    if not set(HALF_ARITHMETIC) & set(board.extensions):
        raise MoaEdgeError(f"--weights {weights.text}: board {board.name!r} has no half-precision arithmetic "
                           f"(its extensions: {', '.join(board.extensions) or 'none'}); use --weights fp16, or a "
                           f"board whose core has it (extensions = [\"fp16\"]: rpi5, jetson-orin-nano; "
                           f"[\"zvfh\"]: bpi-f3)")


def validate(model, boards: list[Board], inputs_path=None, input_shapes=None, seed: int = 0,
             scratch_budget: int | None = None, schedule: Schedule | None = None, ssh=None,
             timeout: float = TIMEOUT_S, progress=lambda msg: None, weights: WeightFormat | None = None,
             threads: int | None = None, pools=()) -> dict:
    """Convert for each board (its own schedule, its memory pools and those of `pools`), build,
    run on `threads` threads (default: each board's cores; on a real board over `ssh`),
    compare with PyTorch float64 of the same graph. With `weights` (convert --weights) that graph
    holds the quantized weights, so the boards are still held to the float32 tolerance, and
    `accuracy` reports what the format gives up against PyTorch float64 of the float model."""
    model = model_path(model)
    native = weights is not None and weights.native  # half-precision GEMVs: their own tolerance
    for board in boards if native else []:
        _check_native(weights, board)
    graph = load_graph(model, input_shapes, weights=weights)
    tolerance = ({"max_rel_err": cmp.NATIVE_HALF_REL_ERR} if native else
                 {"max_abs_err": cmp.MAX_ABS_ERR, "max_rel_err": cmp.MAX_REL_ERR})
    result = {"model": str(model), "ok": True, "tolerance": tolerance, "boards": {}}
    with scratch_folder("moa-validate-") as tmp:
        inputs = reference = None
        for board in boards:
            project = Path(tmp) / board.name
            project.mkdir()
            report = emit_project(schedule_graph(graph, board, scratch_budget, schedule, threads or board.threads()), project,
                                  board=board, source=model.name, pools=pools)
            if inputs is None:
                io = report["io"]
                given = load_npz(inputs_path) if inputs_path else random_inputs(io, seed)
                inputs = check_inputs(io, given, str(inputs_path or "generated inputs"))
                progress("reference: PyTorch float64")
                reference = run_reference(graph, inputs)
                float_reference = reference
                if weights is not None:
                    progress(f"accuracy of --weights {weights.text}: PyTorch float64 of the float model")
                    float_reference = run_reference(load_graph(model, input_shapes), inputs)
                    result["accuracy"] = {"weights": weights.text, "outputs": cmp.accuracy(reference, float_reference)}
                progress("importer check: onnx ReferenceEvaluator on the original file")
                try:
                    check = cmp.compare_all(onnx_reference(model, inputs), float_reference)
                except Exception as exc:  # the evaluator has gaps; say so rather than fail the boards
                    check = {"ok": None, "error": f"neither the ONNX reference nor onnxruntime ran the model: {exc}"}
                result["importer_check"] = check
                if check["ok"] is False:
                    result["ok"] = False
            progress(f"{board.name}: build")
            try:
                binary = build(project, board)
                progress(f"{board.name}: run")
                stats = {}
                outputs, run_us = run(binary, board, io, inputs, ssh=ssh, timeout=timeout,
                                      threads=threads or board.threads(), stats=stats)
                row = cmp.compare_all(outputs, reference, cmp.NATIVE_HALF_REL_ERR if native else None)
                row["run_us"] = run_us
                if "instructions_per_inference" in stats:  # a bare-metal board: qemu's count, no clock
                    row["instructions_per_inference"] = stats["instructions_per_inference"]
            except MoaEdgeError as exc:
                row = {"ok": False, "error": str(exc), "max_abs_err": None, "max_rel_err": None, "max_ulp": None}
            row["schedule"] = [b["predicted"] for b in report["attention_blocks"]]
            result["arena_bytes"] = report["memory"]["arena_bytes"]
            result["weights_bytes"] = report["memory"]["weights_bytes"]
            result["boards"][board.name] = row
            result["ok"] = result["ok"] and row["ok"]
    return result
