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
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node, Tensor, dtypes
from moa_edge.moa.mask import MASK_NONE

CACHE_INPUT = re.compile(r"^(?:past_key_values|past)[._](\d+)[._](key|value)$")
CACHE_OUTPUT = re.compile(r"^present[._](\d+)[._](key|value)$")
TOKENS, POSITIONS, ATTENTION_MASK = "input_ids", "position_ids", "attention_mask"
KV_LENGTH = "moa_kv_length"  # added input (int64, one per batch): the valid cache rows, position + C
BATCH = 1  # one sequence: the cache holds one


def is_decoder_with_cache(input_names) -> bool:
    return any(CACHE_INPUT.match(name) for name in input_names)


def generation_shapes(inputs: dict[str, list[int | None]], max_context: int, chunk: int,
                      source: str) -> dict[str, tuple[int, ...]]:
    """The static shape of every graph input for one chunk of `chunk` tokens over a cache of
    `max_context` rows; `inputs` gives each input's dims (None where symbolic)."""
    if not 1 <= chunk <= max_context:
        raise MoaEdgeError(f"chunk of {chunk} tokens does not fit --max-context {max_context}")
    shapes = {}
    for name, dims in inputs.items():
        if CACHE_INPUT.match(name):
            if len(dims) != 4 or dims[1] is None or dims[3] is None:
                raise MoaEdgeError(f"{source}: cache input {name!r} has dims {_dims_text(dims)}; "
                                   "expected (batch, kv_heads, past_length, head_dim) with static heads and head_dim")
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
                               "past_key_values.N.key/value: moa-edge cannot feed it during generation")
    if TOKENS not in shapes:
        raise MoaEdgeError(f"{source}: a decoder with a cache must take token ids as input {TOKENS!r}")
    if POSITIONS not in shapes:
        raise MoaEdgeError(f"{source}: a decoder with a cache must take input {POSITIONS!r} (export it with "
                           "position ids): positions computed inside the graph from the past length cannot be "
                           "mapped onto a cache of fixed size")
    return shapes


def _dims_text(dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def attach_cache(graph: Graph, max_context: int, chunk: int, source: str) -> None:
    """Every present = Concat(past, new) becomes MoaKvWrite(new) -> present, a tensor of the
    caller's state; the past inputs and present outputs leave the interface, attention_mask
    becomes a constant of ones, and the key-lengths input is added."""
    layers: dict[tuple[int, str], str] = {}
    for name in list(graph.outputs):
        match = CACHE_OUTPUT.match(name)
        if match is None:
            continue
        layers[(int(match.group(1)), match.group(2))] = name
    pasts = {(int(m.group(1)), m.group(2)): name for name in graph.inputs if (m := CACHE_INPUT.match(name))}
    if set(layers) != set(pasts):
        unpaired = sorted(set(layers) ^ set(pasts))
        raise MoaEdgeError(f"{source}: cache inputs and present outputs do not pair up (layer, kind): {unpaired}")
    for key, present in sorted(layers.items()):
        past = pasts[key]
        node = graph.producer(present)
        while node is not None and node.op == "Identity":
            node = graph.producer(node.inputs[0])
        axis = node.attrs.get("axis") if node is not None else None
        passed: list[Node] = []  # copies of the past on its way to the Concat
        if (node is None or node.op != "Concat" or len(node.inputs) != 2 or axis not in (2, -2)
                or _peel_copies(graph, node.inputs[0], passed) != past):
            made_by = f"node {node.name!r} ({node.op})" if node is not None else "no node"
            raise MoaEdgeError(f"{source}: {present!r} is made by {made_by}, not Concat({past}, new keys) on the "
                               "sequence axis: this cache layout cannot be mapped onto a fixed-size cache")
        for reader in [r for copy in [past, *(n.outputs[0] for n in passed)] for r in graph.consumers(copy)]:
            if reader is not node and reader not in passed and reader.op != "Shape":
                raise MoaEdgeError(f"{source}: node {reader.name!r} ({reader.op}) reads the cache input {past!r} "
                                   "other than to append to it: this cache layout cannot be mapped")
        write = Node("MoaKvWrite", f"kv_write_{key[0]}_{key[1]}", [node.inputs[1]], [present],
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
    if len(graph.outputs) != 1:
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
