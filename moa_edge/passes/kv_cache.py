"""Decoders exported for generation -> one chunk graph over a persistent key/value cache.

The Hugging Face convention (optimum; torch.onnx.export of transformers' CausalLM with its
cache): inputs input_ids (B, S), attention_mask (B, P + S), position_ids (B, S) and
past_key_values.{i}.key/.value (B, H, P, D); outputs logits and present.{i}.key/.value, each
Concat(past, new) along the sequence axis.

convert pins a chunk of C new tokens and a past of max_context - C rows, so that each present
is exactly a cache of max_context rows, and binds attention_mask to ones (one sequence, no
padding). The mask the graph builds from it then folds to a constant causal triangle, which the
bias rules read as causal_offset = max_context - C. attach_cache (before lowering) turns each
Concat into a write of the new rows into the cache at the run-time position; bind_cache_attention
(after) turns the constant diagonal into key lengths read at run time: L = position + C valid
rows, key k hidden from row i when k > i + L - C.

The attention ops that hold the cache themselves (the ONNX Attention op's past_key/past_value and
present outputs, com.microsoft.GroupQueryAttention's) are left to the attention rewrite, which
appends the past as a MoaConcat with the causal diagonal moved by the past length (bottom-right);
bind_cache_attention then turns each such MoaConcat into the same write into the cache.

A cache pair is found by name first (past_key_values.N.key/value with present.N.key/value), else
by structure: a graph input that the graph only appends to (as Concat's first part, or an
attention op's past input) whose appended result is a graph output.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node, Tensor, dtypes
from moa_edge.moa import Layout
from moa_edge.moa.mask import MASK_NONE

CACHE_INPUT = re.compile(r"^(?:past_key_values|past)[._](\d+)[._](key|value)$")
CACHE_OUTPUT = re.compile(r"^present[._](\d+)[._](key|value)$")
TOKENS, POSITIONS, ATTENTION_MASK = "input_ids", "position_ids", "attention_mask"
KV_LENGTH = "moa_kv_length"  # added input (int64, one per batch): the valid cache rows, position + C
BATCH = 1  # one sequence: the cache holds one
# --kv-cache: how the caches store keys and values. int8: each row (one position of one kv head)
# as int8 with a float32 scale, max|x| / 127, in a state tensor of its own beside the cache; fp16:
# each value as an IEEE half (the cache's element type float16), no scale.
KV_CACHE_TYPES = ("float32", "int8", "fp16")
CACHE_DTYPES = {"float32": "float32", "int8": "int8", "fp16": "float16"}  # the option -> the cache's type
SCALES_SUFFIX = "__scale"


# The nodes that append to a past they read: (op, input index) -> the output holding past + new.
APPENDS = {("Concat", 0): 0, ("Attention", 4): 1, ("Attention", 5): 2,
           ("com.microsoft.GroupQueryAttention", 3): 1, ("com.microsoft.GroupQueryAttention", 4): 2}
ATTENTION_OPS = {op for op, _ in APPENDS} - {"Concat"}


def cache_pairs(nodes: list[Node], inputs: list[str], outputs: list[str]) -> list[tuple[str, str | None, Node | None]]:
    """(past input, present output, the node reading the past) for every cache of the graph:
    by name first (present None when the name has no partner), then by structure."""
    presents = {(int(m.group(1)), m.group(2)): name for name in outputs if (m := CACHE_OUTPUT.match(name))}
    named = sorted((int(m.group(1)), m.group(2), name) for name in inputs if (m := CACHE_INPUT.match(name)))
    pairs = [(name, presents.get((layer, kind)), _reader(nodes, name)) for layer, kind, name in named]
    for name in inputs:
        if CACHE_INPUT.match(name) or name in (TOKENS, POSITIONS, ATTENTION_MASK):
            continue
        copy = name
        while True:  # through copies on the way (TorchScript writes a one-input Concat)
            readers = [(n, k) for n in nodes for k, i in enumerate(n.inputs) if i == copy and n.op != "Shape"]
            if len(readers) != 1 or not _is_copy(readers[0][0]):
                break
            copy = readers[0][0].outputs[0]
        if len(readers) != 1:
            continue
        node, index = readers[0]
        out = APPENDS.get((node.op, index))
        if out is None or out >= len(node.outputs) or (node.op == "Concat" and len(node.inputs) != 2):
            continue
        present = node.outputs[out]
        while present not in outputs:  # through Identity copies
            copies = [n for n in nodes if n.op == "Identity" and n.inputs[0] == present]
            if len(copies) != 1:
                break
            present = copies[0].outputs[0]
        if present in outputs:
            pairs.append((name, present, node))
    return pairs


def _is_copy(node: Node) -> bool:
    return node.op == "Identity" or (node.op == "Concat" and len(node.inputs) == 1)


def _reader(nodes: list[Node], name: str) -> Node | None:
    return next((n for n in nodes if name in n.inputs and n.op != "Shape"), None)


def is_decoder_with_cache(nodes: list[Node], inputs: list[str], outputs: list[str]) -> bool:
    return bool(cache_pairs(nodes, inputs, outputs))


def generation_shapes(inputs: dict[str, list[int | None]], max_context: int, chunk: int, source: str,
                      caches: dict[str, Node | None]) -> dict[str, tuple[int, ...]]:
    """The static shape of every graph input for one chunk of `chunk` tokens over a cache of
    `max_context` rows; `inputs` gives each input's dims (None where symbolic), `caches` names the
    cache inputs and the node reading each."""
    if not 1 <= chunk <= max_context:
        raise MoaEdgeError(f"chunk of {chunk} tokens does not fit --max-context {max_context}")
    shapes = {}
    for name, dims in inputs.items():
        if name in caches:
            if len(dims) != 4 or dims[1] is None or dims[3] is None:
                raise MoaEdgeError(f"{source}: cache input {name!r} has dims {_dims_text(dims)}; "
                                   "expected (batch, kv_heads, past_length, head_dim) with static heads and head_dim")
            if dims[2] is not None:
                # A past of fixed length, such as the buffer of max_sequence_length rows that
                # onnxruntime-genai shares between past and present and updates in place: its rows
                # are not all a past that the call appends to, and they cannot be pinned to max_context - C.
                reader = caches[name].name if caches[name] is not None else "?"
                raise MoaEdgeError(f"{source}: node {reader!r} reads the cache input {name!r} of fixed length "
                                   f"{dims[2]} (dims {_dims_text(dims)}; a past sharing one buffer with the present "
                                   "and updated in place, or a past of one length only): moa-edge cannot map that "
                                   "cache layout; export the past with a symbolic length (past_sequence_length)")
            shapes[name] = (BATCH, dims[1], max_context - chunk, dims[3])
        elif name in (TOKENS, POSITIONS):
            if len(dims) != 2:
                raise MoaEdgeError(f"{source}: input {name!r} has dims {_dims_text(dims)}; expected (batch, sequence)")
            shapes[name] = (BATCH, chunk)
        elif name == ATTENTION_MASK:
            if len(dims) != 2:
                raise MoaEdgeError(f"{source}: input {name!r} has dims {_dims_text(dims)}; "
                                   "expected (batch, past + sequence)")
            shapes[name] = (BATCH, max_context)
        else:
            raise MoaEdgeError(f"{source}: input {name!r} is none of {TOKENS}, {POSITIONS}, {ATTENTION_MASK} or "
                               "a key/value cache: moa-edge cannot feed it during generation")
    if TOKENS not in shapes:
        raise MoaEdgeError(f"{source}: a decoder with a cache must take token ids as input {TOKENS!r}")
    # GroupQueryAttention's own rotary derives the positions (bound to the run-time ones after lowering).
    own_rotary = all(node is not None and node.op == "com.microsoft.GroupQueryAttention"
                     and node.attrs.get("do_rotary") == 1 for node in caches.values())
    if POSITIONS not in shapes and not own_rotary:
        raise MoaEdgeError(f"{source}: a decoder with a cache must take input {POSITIONS!r} (export it with "
                           "position ids): positions computed inside the graph from the past length cannot be "
                           "mapped onto a cache of fixed size")
    return shapes


def _dims_text(dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def attach_cache(graph: Graph, max_context: int, chunk: int, source: str) -> None:
    """Every present = Concat(past, new) becomes MoaKvWrite(new) -> present, a tensor of the
    caller's state; the past inputs and present outputs leave the interface, attention_mask
    becomes a constant of ones, and the key-lengths input is added. A present made by an
    attention op from its own past input stays for the attention rewrite (bind_cache_attention)."""
    pairs = cache_pairs(graph.nodes, graph.inputs, graph.outputs)
    named_presents = {name for name in graph.outputs if CACHE_OUTPUT.match(name)}
    unpaired = sorted({past for past, present, _ in pairs if present is None}
                      | (named_presents - {present for _, present, _ in pairs}))
    if unpaired:
        raise MoaEdgeError(f"{source}: cache inputs and present outputs do not pair up: {unpaired}")
    in_attention = set()  # presents an attention op makes from its past: bound after the rewrite
    for past, present, _ in pairs:
        node = graph.producer(present)
        while node is not None and node.op == "Identity":
            node = graph.producer(node.inputs[0])
        if node is not None and node.op in ATTENTION_OPS:
            appended = [APPENDS.get((node.op, k)) for k, name in enumerate(node.inputs) if name == past]
            if appended and appended[0] is not None and node.outputs[appended[0]] == present:
                _check_only_appended(graph, past, [node], source)
                in_attention.add(present)
                continue
        axis = node.attrs.get("axis") if node is not None else None
        passed: list[Node] = []  # copies of the past on its way to the Concat
        if (node is None or node.op != "Concat" or len(node.inputs) != 2 or axis not in (2, -2)
                or _peel_copies(graph, node.inputs[0], passed) != past):
            made_by = f"node {node.name!r} ({node.op})" if node is not None else "no node"
            raise MoaEdgeError(f"{source}: {present!r} is made by {made_by}, not Concat({past}, new keys) on the "
                               "sequence axis: this cache layout cannot be mapped onto a fixed-size cache")
        _check_only_appended(graph, past, [node, *passed], source)
        write = Node("MoaKvWrite", f"kv_write_{len(graph.state)}", [node.inputs[1]], [present],
                     {"max_context": max_context})
        graph.nodes[graph.nodes.index(node)] = write
        for other in graph.nodes:  # readers of the Concat's own output (behind the Identity) read the cache
            other.inputs = [present if i == node.outputs[0] else i for i in other.inputs]
        batch, heads, _, dim = graph.tensors[past].shape
        graph.tensors[present] = Tensor(present, (batch, heads, max_context, dim), graph.tensors[past].dtype)
        graph.inputs.remove(past)
        graph.outputs.remove(present)
        graph.state.append(present)
    if ATTENTION_MASK in graph.inputs:
        mask = graph.tensors[ATTENTION_MASK]
        graph.inputs.remove(ATTENTION_MASK)
        graph.tensors[ATTENTION_MASK] = Tensor(ATTENTION_MASK, mask.shape, mask.dtype,
                                               np.ones(mask.shape, dtypes.dtype(mask.dtype).numpy))
    graph.inputs.append(KV_LENGTH)
    graph.tensors[KV_LENGTH] = Tensor(KV_LENGTH, (BATCH,), "int64")
    if len([name for name in graph.outputs if name not in in_attention]) != 1:
        raise MoaEdgeError(f"{source}: a decoder with a cache must have one output besides the presents "
                           f"(the logits); it has {graph.outputs}")
    if chunk > 1:
        _last_row_logits(graph)


def _last_row_logits(graph: Graph) -> None:
    """A prefill chunk needs the scores of its last token only: the vocabulary projection
    (lm_head, a fifth of a small model's prefill work) gets that row alone, by a Slice of its
    input along the sequence axis. The logits then have one row."""
    logits = graph.outputs[0]
    head = graph.producer(logits)
    if head is None or head.op not in ("MatMul", "Gemm") or graph.constant(head.inputs[1]) is None:
        return  # another head: all rows are computed, and the last one used
    rows, name = head.inputs[0], f"{head.name}__last_row"
    for suffix, value in (("starts", -1), ("ends", np.iinfo(np.int64).max), ("axes", -2)):
        graph.tensors[f"{name}_{suffix}"] = Tensor(f"{name}_{suffix}", (1,), "int64", np.array([value], np.int64))
    graph.tensors.pop(logits, None)  # shape inference gives its one row
    graph.nodes.insert(graph.nodes.index(head), Node("Slice", name, [rows, f"{name}_starts", f"{name}_ends",
                                                                     f"{name}_axes"], [f"{name}_out"]))
    head.inputs = [f"{name}_out", *head.inputs[1:]]


def _check_only_appended(graph: Graph, past: str, appenders: list[Node], source: str) -> None:
    """The cache input (and its copies on the way) is read by nothing but the node appending to it."""
    for reader in [r for copy in [past, *(n.outputs[0] for n in appenders[1:])] for r in graph.consumers(copy)]:
        if reader not in appenders and reader.op != "Shape":
            raise MoaEdgeError(f"{source}: node {reader.name!r} ({reader.op}) reads the cache input {past!r} "
                               "other than to append to it: this cache layout cannot be mapped")


def _peel_copies(graph: Graph, name: str, passed: list[Node]) -> str:
    """The tensor `name` copies through Identity and one-input Concat (TorchScript's export of
    a cache update writes one), those nodes appended to `passed`."""
    node = graph.producer(name)
    while node is not None and (node.op == "Identity" or (node.op == "Concat" and len(node.inputs) == 1)):
        passed.append(node)
        name = node.inputs[0]
        node = graph.producer(name)
    return name


def bind_cache_attention(graph: Graph, chunk: int, source: str) -> None:
    """Attention over a cache reads its first L = position + C rows, causal on the diagonal
    k = i + L - C; any other reader, or a mask other than that diagonal, cannot be mapped."""
    _write_attention_caches(graph, source)
    _bind_rotary_positions(graph, chunk)
    state = set(graph.state)
    read = set()
    for node in graph.nodes:
        cached = [name for name in node.inputs if name in state]
        if not cached:
            continue
        if node.op == "MoaKvWrite":
            raise MoaEdgeError(f"{source}: node {node.name!r} writes a cache into another one")
        if node.op != "MoaAttention" or node.inputs[1:3] != cached:
            raise MoaEdgeError(f"{source}: node {node.name!r} ({node.op}) reads the cache {cached[0]!r} other than as "
                               "an attention's keys and values: this cache layout cannot be mapped")
        spec = node.attrs["spec"]
        # One new row sees every cached key: its causal triangle hides nothing, so it has none.
        causal = spec.is_causal and spec.causal_offset == spec.kv_len - chunk
        if (not (causal or (chunk == 1 and not spec.is_causal)) or spec.mask_kind != MASK_NONE
                or spec.kv_lengths or spec.window_start is not None or spec.batch != BATCH):
            raise MoaEdgeError(f"{source}: attention {node.name!r} over the cache is not causal over the cached "
                               f"and new tokens (its mask: {spec.describe()['mask']}, causal {spec.is_causal}, "
                               f"offset {spec.causal_offset}): this cache layout cannot be mapped")
        node.attrs["spec"] = dataclasses.replace(spec, is_causal=True, kv_lengths=True, causal_offset=-chunk,
                                                 lengths_ctype="int64_t")
        node.inputs = node.inputs[:3] + [node.inputs[3] if len(node.inputs) > 3 else "", KV_LENGTH]
        read.update(cached)
    unread = sorted(state - read)
    if unread:
        raise MoaEdgeError(f"{source}: the cache {unread[0]!r} is not read by any attention that moa-edge found")


def _write_attention_caches(graph: Graph, source: str) -> None:
    """The pasts an attention op appended to itself (the rewrite made present = MoaConcat(past,
    new)) become caches as attach_cache makes them: MoaKvWrite(new) -> present, in the state. The
    new rows are first copied out of their access map (a head split) when they are not already a
    row-major (B, H, C, D) tensor: C rows per layer."""
    for past in [name for name in graph.inputs if name not in (TOKENS, POSITIONS, KV_LENGTH)]:
        readers = graph.consumers(past)
        concat = readers[0] if len(readers) == 1 else None
        if (concat is None or concat.op != "MoaConcat" or len(concat.inputs) != 2 or concat.inputs[0] != past
                or concat.attrs["axis"] != 2 or concat.outputs[0] not in graph.outputs):
            reader = f"node {readers[0].name!r} ({readers[0].op})" if readers else "no node"
            raise MoaEdgeError(f"{source}: the cache input {past!r} is read by {reader}, not appended to by an "
                               "attention: this cache layout cannot be mapped")
        present, new = concat.outputs[0], concat.inputs[1]
        layout = concat.attrs["layouts"][1]
        position = graph.nodes.index(concat)
        if graph.tensors[new].shape != layout.shape or not layout.is_row_major() or layout.offset:
            rows = f"{present}__new_rows"
            graph.tensors[rows] = Tensor(rows, layout.shape, graph.tensors[new].dtype)
            graph.nodes.insert(position, Node("MoaConcat", f"{concat.name}__rows", [new], [rows],
                                              {"layouts": [layout], "axis": 2}))
            new, position = rows, position + 1
        graph.nodes[position] = Node("MoaKvWrite", f"kv_write_{len(graph.state)}", [new], [present],
                                     {"max_context": graph.tensors[present].shape[2]})
        graph.inputs.remove(past)
        graph.outputs.remove(present)
        graph.state.append(present)


def _bind_rotary_positions(graph: Graph, chunk: int) -> None:
    """A rotary embedding at constant positions max_context - C .. max_context - 1 (an attention
    op's own rotary, at the rows after its pinned past) turns the chunk's run-time positions:
    position_ids, an input of the chunk function (added when the file has none)."""
    if not graph.state:
        return
    rows = graph.tensors[graph.state[0]].shape[2]
    static = np.arange(rows - chunk, rows, dtype=np.int64)[None]
    for node in graph.nodes:
        positions = graph.constant(node.inputs[3]) if node.op == "RotaryEmbedding" and len(node.inputs) > 3 else None
        if positions is None or positions.shape != static.shape or np.any(positions != static):
            continue
        if POSITIONS not in graph.inputs:
            graph.inputs.append(POSITIONS)
            graph.tensors[POSITIONS] = Tensor(POSITIONS, static.shape, "int64")
        node.inputs[3] = POSITIONS


def quantize_cache(graph: Graph, kv_cache: str, source: str) -> None:
    """--kv-cache int8 (after bind_cache_attention): every cache (B, H, max_context, D) becomes int8
    with a float32 scale per row, (B, H, max_context), a state tensor placed right after its cache.
    Its write quantizes the new rows (MoaKvWrite's second output, the scales), and each attention
    reading it gets the scales as inputs 5 (keys) and 6 (values) and an int8 K/V spec.
    --kv-cache fp16: every cache becomes float16, its write rounds the new rows to halves, and each
    attention reading it gets a float16 K/V spec (no scales, no extra inputs)."""
    if kv_cache not in KV_CACHE_TYPES:
        raise MoaEdgeError(f"--kv-cache {kv_cache!r}: choose one of {', '.join(KV_CACHE_TYPES)}")
    if kv_cache == "float32":
        return
    dtype = CACHE_DTYPES[kv_cache]
    scales = {}
    for name in graph.state:
        cache = graph.tensors[name]
        if cache.dtype != "float32":
            raise MoaEdgeError(f"{source}: the cache {name!r} holds {cache.dtype}; --kv-cache {kv_cache} stores "
                               "a float32 cache in fewer bits")
        graph.tensors[name] = Tensor(name, cache.shape, dtype)
        if dtype == "int8":
            scales[name] = name + SCALES_SUFFIX
            graph.tensors[scales[name]] = Tensor(scales[name], cache.shape[:3], "float32")
    caches = set(graph.state)
    graph.state = [n for name in graph.state for n in (name, *([scales[name]] if name in scales else []))]
    for node in graph.nodes:
        if node.op == "MoaKvWrite":
            node.outputs = [node.outputs[0], *([scales[node.outputs[0]]] if node.outputs[0] in scales else [])]
            node.attrs["kv_dtype"] = dtype
        elif node.op == "MoaAttention" and node.inputs[1] in caches:
            spec, (keys, values) = node.attrs["spec"], node.inputs[1:3]
            if spec.qk_mode >= 0:
                raise MoaEdgeError(f"{source}: attention {node.name!r} also outputs its scores: --kv-cache "
                                   f"{kv_cache} keeps only the attention output over a {dtype} cache")
            for name, layout in ((keys, spec.k), (values, spec.v)):
                if not _reads_rows(layout, graph.tensors[name].shape):
                    raise MoaEdgeError(f"{source}: attention {node.name!r} reads the cache {name!r} through a "
                                       f"layout other than its rows ({layout}): --kv-cache {kv_cache} cannot "
                                       f"store it as {dtype}")
            if dtype == "float16":
                node.attrs["spec"] = dataclasses.replace(spec, kv_dtype=dtype)
                continue
            node.attrs["spec"] = dataclasses.replace(
                spec, kv_dtype=dtype, k_scale=Layout.row_major(graph.tensors[scales[keys]].shape),
                v_scale=Layout.row_major(graph.tensors[scales[values]].shape))
            node.inputs = node.inputs[:5] + [scales[keys], scales[values]]


def _reads_rows(layout: Layout, shape: tuple[int, ...]) -> bool:
    """Whether `layout` reads a row-major tensor of `shape` as it is (a stride on an axis of extent
    1 is any): element (b, g, k, j) of the cache at its own place, rows of one position."""
    plain = Layout.row_major(shape)
    return (layout.shape == plain.shape and layout.offset == 0 and layout.divisors is None
            and all(a == b or n == 1 for a, b, n in zip(layout.strides, plain.strides, shape)))
