"""Weights packed for the GEMM kernel once, at conversion, never at run time.

A MatMul or Gemm whose B is a float32 weight becomes MoaGemm over B in the kernel's panel
layout (ops/matmul.py pack_b). A bias added right after a MatMul (a constant row [N] or a
scalar, as every Linear layer exports it) becomes MoaGemm's C: the kernel writes Y = bias
first and adds A B to it, so the bias costs no pass of its own.

With --weights (passes/quantize.py) B is quantized instead (MoaQGemm), and so is the table of an
embedding Gather (MoaQGather), stored as E^T in the same layout: quantized tensors are keyed by
the content of B (K x N bytes) and the format, not by the initializer's name, so a tied lm_head
(whose weight the exporter wrote as a second initializer or a folded Transpose of E) and the
embedding lookup read one stored copy. A Conv's float32 weight becomes MoaQConv's (ops/qconv.py),
each output channel a row of R = C/groups * KH * KW weights; a Conv whose R the format's block does
not divide (a network's first layer: 3 x 7 x 7 = 147) is stored int8 per output channel instead.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

from moa_edge.ir import Graph, Node, Tensor
from moa_edge.ir.dtypes import Quantization
from moa_edge.ops import qconv, qmatmul
from moa_edge.ops.matmul import pack_b

from .quantize import WeightFormat, quantize, two_level


def _packed_weight(graph: Graph, name: str, transposed: bool) -> str:
    """The name of B packed (made once per weight and orientation)."""
    packed = f"{name}__packed{'_t' if transposed else ''}"
    if packed not in graph.tensors:
        b = graph.constant(name)
        data = pack_b(np.ascontiguousarray(b.T if transposed else b))
        graph.tensors[packed] = Tensor(packed, tuple(data.shape), "float32", data)
    return packed


def _key(graph: Graph, name: str, transposed: bool, fmt: WeightFormat, node: str, two_levels: bool = False) -> tuple:
    """What makes two quantized weights one: the format and B's bytes (K x N)."""
    b = graph.constant(name)
    b = np.ascontiguousarray(b.T if transposed else b)
    return (fmt.qtype, fmt.block_for(b.shape[0], node), two_levels, b.shape,
            hashlib.blake2b(b, digest_size=32).digest())


def _quantized_weight(graph: Graph, name: str, transposed: bool, fmt: WeightFormat, node: str,
                      made: dict[tuple, list[str]], two_levels: bool = False) -> list[str]:
    """The names of B quantized in the kernel's layout: [values, scale or "", offset or ""], made once per
    content of B and format (`made` remembers them by a digest of B's bytes: equal weights under
    two names, or E and its transpose, share one set)."""
    b = graph.constant(name)
    b = np.ascontiguousarray(b.T if transposed else b)
    block = fmt.block_for(b.shape[0], node)
    key = _key(graph, name, transposed, fmt, node, two_levels)
    if key not in made:
        stem = f"{name}__{fmt.qtype}_{block}{'_t' if transposed else ''}{'_k' if two_levels else ''}"
        q, scale, offset, zero = quantize(b, fmt.qtype, block, f"the weight {name!r} of node {node!r}", two_levels)
        levels = None
        if two_levels and scale is not None and scale.dtype == np.float32 and block < b.shape[0]:
            levels = (two_level(scale), None if offset is None else two_level(offset))  # H s back from H * s
            if levels[0] is None or (offset is not None and levels[1] is None):  # quantize kept float32 scales
                levels = None
        values, scales, offsets = qmatmul.pack_quantized(q, scale, offset, fmt.qtype, block, levels)
        quant = None if scale is None else Quantization(scale, np.array(zero), axis=0, block_size=block,
                                                         bits=4 if fmt.qtype == "u4" else 8)  # float16: the values
        graph.tensors[stem] = Tensor(stem, tuple(values.shape), qmatmul.STORAGE[fmt.qtype], values, quant=quant)
        parts = {"_scale": scales, "_offset": offsets}
        for suffix, data in parts.items():
            if data is not None:
                graph.tensors[stem + suffix] = Tensor(stem + suffix, tuple(data.shape), str(data.dtype), data)
        made[key] = [stem, *(stem + suffix if data is not None else "" for suffix, data in parts.items())]
    return made[key]


def _block_and_zero(graph: Graph, values: str, k: int) -> tuple[int, int]:
    """MoaQGemm's block and zero attributes for stored weights (float16 ones: no scale, one block)."""
    quant = graph.tensors[values].quant
    return (quant.block_size, int(quant.zero_point)) if quant is not None else (k, 0)


def _bias_row(graph: Graph, y: str) -> tuple[Node, str] | None:
    """The Add consuming Y alone that adds a constant row [N] or scalar, and that bias."""
    consumers = graph.consumers(y)
    if y in graph.outputs or len(consumers) != 1 or consumers[0].op != "Add":
        return None
    add = consumers[0]
    if len(add.inputs) != 2 or add.inputs.count(y) != 1:
        return None
    bias = add.inputs[1] if add.inputs[0] == y else add.inputs[0]
    data, shape = graph.constant(bias), tuple(graph.tensors[y].shape)
    if data is None or data.dtype != np.float32 or tuple(graph.tensors[add.outputs[0]].shape) != shape:
        return None
    if math.prod(data.shape[:-1]) != 1 or data.ndim > len(shape) or (data.ndim and data.shape[-1] not in (1, shape[-1])):
        return None
    return add, bias


def _transposed_constant(graph: Graph, name: str) -> str | None:
    """W when `name` is Transpose(W) of a 2-D float32 constant W that fold_constants left unfolded
    (over its size limit: a tied lm_head E^T over a large vocabulary, as dynamo exports it), else None.
    Packing from W transposed spares the run-time copy of E^T and its float GEMM."""
    node = graph.producer(name)
    if node is None or node.op != "Transpose" or list(node.attrs.get("perm", [1, 0])) != [1, 0]:
        return None
    w = graph.constant(node.inputs[0])
    return node.inputs[0] if w is not None and w.ndim == 2 and w.dtype == np.float32 else None


def packs_its_transpose(graph: Graph, node: Node) -> bool:
    """A Transpose that pack_weights will absorb: every reader is a MatMul taking it as the weight B
    (lower_copies leaves it for pack_weights instead of making it a run-time copy)."""
    if node.op != "Transpose" or node.outputs[0] in graph.outputs or _transposed_constant(graph, node.outputs[0]) is None:
        return False
    readers = graph.consumers(node.outputs[0])
    return bool(readers) and all(r.op == "MatMul" and r.inputs[1] == node.outputs[0] and r.inputs[0] != node.outputs[0]
                                 and _packable(graph, r, node.inputs[0]) for r in readers)


def _packable(graph: Graph, node: Node, weight_name: str) -> bool:
    if node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
        return False
    a, weight = graph.tensors.get(node.inputs[0]), graph.constant(weight_name)
    return (a is not None and weight is not None and weight.ndim == 2 and weight.dtype == np.float32
            and a.dtype == "float32" and len(a.shape) >= 2)


def _embedding(graph: Graph, node: Node) -> bool:
    """A Gather of rows of a float32 constant table [V, D] by run-time integer indices."""
    if node.op != "Gather" or len(node.inputs) != 2:
        return False
    table, indices = graph.constant(node.inputs[0]), graph.tensors.get(node.inputs[1])
    return (table is not None and table.ndim == 2 and table.dtype == np.float32
            and node.attrs.get("axis", 0) in (0, -2) and indices is not None and not indices.is_constant
            and indices.dtype in ("int32", "int64"))


def pack_weights(graph: Graph, weights: WeightFormat | None = None) -> int:
    """Rewrite every MatMul and Gemm with a weight B (quantized to `weights` when given, and then the
    tables of embedding Gathers too); returns how many."""
    count, made = 0, {}
    for node in list(graph.nodes):
        if node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
            continue
        # MatMul(A, Transpose(W)) is Gemm(A, W, transB=1); the Transpose, then unused, goes with remove_dead.
        source = _transposed_constant(graph, node.inputs[1]) if node.op == "MatMul" else None
        if not _packable(graph, node, source or node.inputs[1]):
            continue
        a, weight = node.inputs[0], source or node.inputs[1]
        trans_b = (node.op == "Gemm" and bool(node.attrs.get("transB", 0))) or source is not None
        k, n = graph.constant(weight).shape[::-1] if trans_b else graph.constant(weight).shape
        if node.op == "Gemm":
            attrs = node.attrs
            bias, outputs = node.inputs[2:3], list(node.outputs)
            gemm_attrs = {"n": n, "trans_a": int(attrs.get("transA", 0)), "alpha": float(attrs.get("alpha", 1.0)),
                          "beta": float(attrs.get("beta", 1.0)), "source": "Gemm"}
        else:
            bias, outputs = [], list(node.outputs)
            found = _bias_row(graph, node.outputs[0])
            if found is not None:  # Y = A B + bias: the Add's output is the MoaGemm's
                add, bias_name = found
                bias, outputs = [bias_name], list(add.outputs)
                graph.nodes.remove(add)
            gemm_attrs = {"n": n, "trans_a": 0, "alpha": 1.0, "beta": 1.0,
                          "source": "MatMul + Add" if found is not None else "MatMul"}
        if weights is None:
            gemm = Node("MoaGemm", node.name, [a, _packed_weight(graph, weight, trans_b), *bias], outputs, gemm_attrs)
        else:
            fmt = weights.for_output_layer() if any(o in graph.outputs for o in outputs) else weights
            # int4 blocks of a MatMul or Gemm: two-level scales (quantize.py); a table keeps halves
            values, scale, offset = _quantized_weight(graph, weight, trans_b, fmt, node.name, made,
                                                      two_levels=fmt.qtype == "u4")
            block, zero = _block_and_zero(graph, values, k)
            gemm = Node("MoaQGemm", node.name, [a, values, scale, offset, *bias], outputs,
                        {**gemm_attrs, "k": k, "qtype": fmt.qtype, "block": block, "zero": zero,
                         **({"native": 1} if fmt.native else {})})
        graph.nodes[graph.nodes.index(node)] = gemm
        count += 1
    if weights is not None:  # after the MatMuls, so that a table tied to the output layer shares its format
        count += _quantize_embeddings(graph, weights, made) + _quantize_convs(graph, weights)
    return count


def _conv_format(fmt: WeightFormat, r: int) -> WeightFormat:
    """fmt for a Conv of R weights per output channel: int8 per channel when the block does not divide R."""
    if fmt.block is None or (r % fmt.block == 0 and (fmt.qtype != "u4" or r % 2 == 0)):
        return fmt
    return WeightFormat("i8", None, fmt.text)


def _quantize_convs(graph: Graph, weights: WeightFormat) -> int:
    """Every Conv over float32 activations with a float32 constant weight becomes MoaQConv."""
    count = 0
    for node in list(graph.nodes):
        w = graph.constant(node.inputs[1]) if node.op == "Conv" and len(node.inputs) > 1 else None
        x = graph.tensors.get(node.inputs[0]) if w is not None else None
        if w is None or w.dtype != np.float32 or w.ndim < 3 or x is None or x.dtype != "float32":
            continue
        m, r = w.shape[0], math.prod(w.shape[1:])
        fmt = _conv_format(weights, r)
        block = fmt.block_for(r, node.name)
        q, scale, offset, zero = quantize(np.ascontiguousarray(w.reshape(m, r).T), fmt.qtype, block,
                                          f"the weight {node.inputs[1]!r} of node {node.name!r}")
        values, scales, offsets = qconv.pack(q, scale, offset, fmt.qtype)
        stem = f"{node.inputs[1]}__conv_{fmt.qtype}_{block}"
        quant = None if scale is None else Quantization(scales, np.array(zero), axis=1, block_size=block,
                                                         bits=4 if fmt.qtype == "u4" else 8)
        graph.tensors[stem] = Tensor(stem, tuple(values.shape), qmatmul.STORAGE[fmt.qtype], values, quant=quant)
        names = [stem]
        for suffix, data in (("_scale", scales), ("_offset", offsets)):
            if data is not None:
                graph.tensors[stem + suffix] = Tensor(stem + suffix, tuple(data.shape), str(data.dtype), data)
            names.append(stem + suffix if data is not None else "")
        bias = node.inputs[2:3] if len(node.inputs) > 2 and node.inputs[2] else []
        graph.nodes[graph.nodes.index(node)] = Node(
            "MoaQConv", node.name, [node.inputs[0], *names, *bias], list(node.outputs),
            {**node.attrs, "w_shape": list(w.shape), "qtype": fmt.qtype, "block": block, "zero": zero})
        count += 1
    return count


def _quantize_embeddings(graph: Graph, weights: WeightFormat, made: dict) -> int:
    """Every embedding Gather becomes MoaQGather over its table quantized; a table whose transpose
    is already stored in the output layer's format (a tied lm_head) reads that one."""
    count = 0
    for node in list(graph.nodes):
        if not _embedding(graph, node):
            continue
        table, indices = node.inputs
        vocab, dim = graph.constant(table).shape
        tied = weights.for_output_layer()
        fmt = tied if _key(graph, table, True, tied, node.name) in made else weights
        stored = _quantized_weight(graph, table, True, fmt, node.name, made)
        block, zero = _block_and_zero(graph, stored[0], dim)
        graph.nodes[graph.nodes.index(node)] = Node(
            "MoaQGather", node.name, [indices, *stored], list(node.outputs),
            {"k": dim, "n": vocab, "qtype": fmt.qtype, "block": block, "zero": zero})
        count += 1
    return count
