"""Writes the C project of a decoder with a key/value cache: one static function per chunk size
(a prefill chunk, and the single-token step), the public init/prefill/step entry points over the
caller's state, and the generation runner (prefill, then a token loop with sampling)."""
from __future__ import annotations

import json
from pathlib import Path
import shutil

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, dtypes
from moa_edge.ir.graph import bytes_by_type
from moa_edge.ir.c_syntax import c_comment_text, check_prefix
from moa_edge.ops.kv_cache import POSITION
from moa_edge.passes.kv_cache import KV_LENGTH, POSITIONS, TOKENS
from moa_edge.plan.predict import predict_model
from moa_edge.target import Board, load_board

from .project import GraphCode, WeightSymbols, check_memory, graph_code, weight_type_macros, write_project

STATE_HEADER = 64  # the position and a tag, padded so that every cache starts 64-byte aligned
ALIGN = 64
SAMPLING_SOURCE = "sampling.c"  # the runner's token sampler (moa/sampling.h)
# What is copied from beside the model into BUILD/tokenizer, when it is there: `generate` reads it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model")


# model.h's statement of the cache bytes, by the caches' element type.
CACHE_FORMULAS = {
    "float32": "layers x 2 x kv_heads x max_context x head_dim x 4 bytes",
    "int8": ("layers x 2 x kv_heads x max_context x (head_dim + 4) bytes: each key and value row\n"
             " * (one position of one kv head) as head_dim int8 and its float32 scale, max|x| / 127, the scales\n"
             " * of a cache in an array of their own after it"),
    "float16": ("layers x 2 x kv_heads x max_context x head_dim x 2 bytes: each key and value as an IEEE\n"
                " * half (uint16_t bits, no scale), the float32 row rounded to nearest, ties to even, when it\n"
                " * is written; attention widens the halves and computes in float32"),
}


def copy_tokenizer(model_folder: Path, project: Path) -> bool:
    """The tokenizer files beside the model into project/tokenizer; False when there are none."""
    found = [model_folder / name for name in TOKENIZER_FILES if (model_folder / name).is_file()]
    if not any(p.name in ("tokenizer.json", "tokenizer.model", "vocab.json") for p in found):
        return False
    (project / "tokenizer").mkdir()
    for path in found:
        shutil.copyfile(path, project / "tokenizer" / path.name)
    return True


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def state_layout(graph: Graph) -> dict[str, int]:
    """Each cache's byte offset in the caller's state, after the header."""
    offsets, end = {}, STATE_HEADER
    for name in graph.state:
        offsets[name] = end
        end = _aligned(end + graph.tensors[name].nbytes)
    return offsets


def _chunk_function(prefix: str, chunk: int, code: GraphCode) -> str:
    """static moa_status <p>_chunk_<C>(token_ids, logits, state, position, arena, pool): one chunk
    of C tokens at `position`; the caller has checked every argument."""
    return (f"/* {chunk} token(s) at cache row `{POSITION}`: the graph specialised for a chunk of {chunk}. */\n"
            f"static moa_status {prefix}_chunk_{chunk}(const int64_t *restrict token_ids, float *restrict logits,\n"
            f"    uint8_t *restrict state, int64_t {POSITION}, void *restrict arena, moa_pool *pool)\n"
            "{\n"
            "    uint8_t *const base = (uint8_t *)arena;\n"
            "    moa_status status = MOA_OK;\n"
            f"    int64_t positions[{chunk}], kv_length[1];\n"
            "    ptrdiff_t t;\n"
            f"    for (t = 0; t < {chunk}; t++) {{\n"
            f"        positions[t] = {POSITION} + t;\n"
            "    }\n"
            f"    kv_length[0] = {POSITION} + {chunk};  /* the cache rows attention reads, these included */\n"
            "    (void)base;\n    (void)state;\n    (void)positions;\n    (void)kv_length;\n    (void)pool;\n"
            + "".join(code.calls) + "    return status;\n}\n")


def _prefill_loop(prefix: str, P: str, chunk: int, logits_offset: int, rows: int) -> str:
    """Whole chunks of the prompt through the chunk function; the last of its `rows` rows of
    scores (the last token's) are the logits."""
    return (f"    for (; count - done >= {chunk}; done += {chunk}) {{\n"
            f"        float *const chunk_logits = (float *)((uint8_t *)arena + {logits_offset});\n"
            f"        status = {prefix}_chunk_{chunk}(token_ids + done, chunk_logits, (uint8_t *)state, header->position, arena,\n"
            "                               pool);\n"
            "        if (status != MOA_OK) {\n            return status;\n        }\n"
            f"        header->position += {chunk};\n"
            f"        if (count - done == {chunk}) {{\n"
            f"            memcpy(logits, chunk_logits + ({rows} - 1) * (size_t){P}_VOCAB, sizeof(float) * {P}_VOCAB);\n"
            "        }\n    }\n")


def _check_interface(graph: Graph, first: Graph, source: str) -> None:
    if sorted(graph.inputs) != sorted([TOKENS, POSITIONS, KV_LENGTH]):
        raise MoaEdgeError(f"{source}: the decoder's inputs after binding the cache are {graph.inputs}; "
                           f"expected {TOKENS}, {POSITIONS} and the key lengths")
    if graph.tensors[TOKENS].dtype != "int64":
        raise MoaEdgeError(f"{source}: {TOKENS} is {graph.tensors[TOKENS].dtype}; generation feeds int64 token ids")
    logits = graph.tensors[graph.outputs[0]]
    if logits.dtype != "float32" or len(logits.shape) != 3:
        raise MoaEdgeError(f"{source}: output {logits.name!r} is {logits.dtype} {list(logits.shape)}; "
                           "expected float32 logits (batch, sequence, vocabulary)")
    if [(n, graph.tensors[n].shape) for n in graph.state] != [(n, first.tensors[n].shape) for n in first.state]:
        raise MoaEdgeError(f"{source}: the chunk graphs disagree on the caches")


def emit_generation_project(graphs: dict[int, Graph], out_dir: Path, max_context: int, prefix: str = "model",
                            board: Board | None = None, source: str = "", model_folder: Path | None = None) -> dict:
    """The project for a decoder specialised once per chunk size (graphs: chunk -> graph; chunk 1
    is the decode step), with the tokenizer found in model_folder; returns report.json's content."""
    out_dir = Path(out_dir)
    board = board or load_board("host")
    P = check_prefix(prefix).upper()
    if 1 not in graphs:
        raise MoaEdgeError("a generation build needs the single-token graph")
    first = graphs[1]
    for graph in graphs.values():
        _check_interface(graph, first, source)
    cache = [first.tensors[n] for n in first.state]
    caches = [t for t in cache if len(t.shape) == 4]  # (B, H, max_context, D); an int8 cache's scales are 3-D
    _, kv_heads, _, head_dim = caches[0].shape
    kv_cache = caches[0].dtype  # float32, int8 (--kv-cache int8: a float32 scale per row beside it), float16
    vocab = first.tensors[first.outputs[0]].shape[-1]
    offsets = state_layout(first)
    cache_bytes = sum(t.nbytes for t in cache)
    # The header and the caches, each cache from a 64-byte boundary (no padding when, as usual,
    # max_context x head_dim x 4 is a multiple of 64).
    state_bytes = _aligned(max(o + first.tensors[n].nbytes for n, o in offsets.items()))

    symbols = WeightSymbols(prefix)
    codes, functions, arena_bytes, prefill, sources = {}, [], 0, [], {SAMPLING_SOURCE}
    for chunk in sorted(graphs, reverse=True):
        graph = graphs[chunk]
        where = {TOKENS: "token_ids", POSITIONS: "positions", KV_LENGTH: "kv_length", graph.outputs[0]: "logits"}
        where.update({name: f"(({dtypes.dtype(graph.tensors[name].dtype).c_type} *)(state + {offset}))"
                      for name, offset in offsets.items()})
        code = codes[chunk] = graph_code(graph, prefix, board, f"{prefix}_c{chunk}", where, symbols)
        functions.append(_chunk_function(prefix, chunk, code))
        sources |= code.sources
        logits_offset = code.plan.total_bytes  # a multiple of the arena's alignment
        if chunk > 1:  # its logits (chunk x vocab) go to the arena, after the graph's own buffers
            rows = graph.tensors[graph.outputs[0]].shape[-2]  # one when only the last token's are computed
            prefill.append(_prefill_loop(prefix, P, chunk, logits_offset, rows))
            arena_bytes = max(arena_bytes, logits_offset + graph.tensors[graph.outputs[0]].nbytes)
        else:
            arena_bytes = max(arena_bytes, logits_offset)
    weights = [(t, sym) for sym, t in {sym: t for code in codes.values() for t, sym in code.weights}.items()]
    weights_bytes = sum(t.nbytes for t, _ in weights)
    check_memory(board, source, {"weights": weights_bytes, "arena": arena_bytes, "state": state_bytes})

    subst = {
        "P": P, "p": prefix, "SOURCE": c_comment_text(source), "BOARD": c_comment_text(board.name),
        "MAX_CONTEXT": str(max_context), "VOCAB": str(vocab), "PREFILL_CHUNK": str(max(graphs)),
        "LAYERS": str(len(caches) // 2), "KV_HEADS": str(kv_heads), "HEAD_DIM": str(head_dim),
        "CACHE_FORMULA": CACHE_FORMULAS[kv_cache], "STATE_HEADER": str(STATE_HEADER),
        "CACHE_BYTES": str(cache_bytes), "STATE_BYTES": str(state_bytes),
        "ARENA_BYTES": str(arena_bytes), "WEIGHTS_BYTES": str(weights_bytes), "MAX_THREADS": str(first.max_threads),
        "WEIGHTS_BY_TYPE": weight_type_macros(P, weights),
        "CHUNK_FUNCTIONS": "\n".join(functions), "PREFILL_CHUNKS": "".join(prefill),
        "KERNELS": "\n".join(k for code in codes.values() for k in code.kernels),
        "KERNEL_DECLS": "\n".join(dict.fromkeys(d for code in codes.values() for d in code.kernel_decls)),
    }
    write_project(out_dir, subst, {"model.h": "generate_model.h", "model.c": "generate_model.c",
                                   "main.c": "generate_main.c", "attention.h": "attention.h",
                                   "attention.c": "attention.c", "weights.h": "weights.h", "weights.S": "weights.S",
                                   "SConstruct": "SConstruct"}, weights, sources, board)
    tokenizer = model_folder is not None and copy_tokenizer(Path(model_folder), out_dir)
    step = graphs[1]
    report = {
        "source": source,
        "board": board.name,
        "max_threads": first.max_threads,
        "prefix": prefix,
        "generation": {"max_context": max_context, "vocab": vocab, "prefill_chunk": max(graphs),
                       "layers": len(caches) // 2, "kv_heads": kv_heads, "head_dim": head_dim, "kv_cache": kv_cache,
                       "token_input": TOKENS, "logits": step.outputs[0], "tokenizer": bool(tokenizer)},
        "io": [],
        "attention_blocks": [dict(node=n.name, chunk=chunk, **n.attrs["spec"].describe(),
                                  predicted=n.attrs["cost"].describe())
                             for chunk, graph in graphs.items() for n in graph.nodes if n.op == "MoaAttention"],
        "ops": [{"node": n.name, "op": n.op} for n in step.nodes],
        "memory": {"arena_bytes": arena_bytes, "state_bytes": state_bytes, "weights_bytes": weights_bytes,
                   "weights_bytes_by_type": bytes_by_type(t for t, _ in weights),
                   "cache_bytes": cache_bytes,
                   "chunks": {str(chunk): code.plan.describe() for chunk, code in codes.items()}},
        "predicted": predict_model(step, board, codes[1].plan.total_bytes),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
