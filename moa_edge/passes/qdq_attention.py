"""Attention over quantized activations (QDQ files): Q, K and V read as the int8 tensors the file's
QuantizeLinears make, with their scales, instead of float32 copies of their dequantized values.

onnxruntime.quantization.quantize_static (QuantFormat.QDQ) puts a QuantizeLinear ->
DequantizeLinear pair on every activation it quantizes; passes/qdq.py turns each pair into one
rounding, MoaFakeQuantize: y = clamp(round_half_even(x / scale), qmin - zp, qmax - zp) * scale. When
the pair's integers fit int8 (int8 with zero point 0, uint8 with 128, int4, uint4 with 8: the
rounding's range within -128..127) and a detected attention is the only reader of its result as Q,
K or V, the pair is split where the spec splits it (K and V together, or neither):

    MoaQuantize (ops/elementwise.py)   i = clamp(round_half_even(x / scale), low, high), stored int8
    MoaAttention, K and V int8         the value of element (b, g, k, j) is scale * i, as the
                                       DequantizeLinear's float32 product, exactly

The attention then runs the int8 key/value kernel set of the same ONF loop nest (moa/attention.h's
_s8 score and P V micro-kernels, as over `--kv-cache int8`), its row scales a constant vector of
the one scale (layout (B, Hkv, Skv) with strides (0, 0, 1)): s = (scale_qk * k_scale) * sum_j q_j
i_j and acc += (p * v_scale) * i_v, every sum, the scores and the softmax in float32. The arena
holds the int8 K and V (a quarter of the float32 ones) and no float copy of them.

Q is read likewise when its pair fits int8 and the attention alone reads it: the kernel packs each
row block's Q rows into scratch as scale * i in float32 (the DequantizeLinear's values exactly), as
it packs rows it cannot read in place, so the arena holds int8 Q too. Anything else stays on the
float path, unchanged and exact: a pair per axis or with integers outside int8 (uint8 with another
zero point, int16), an operand the graph reads elsewhere too, a block that also outputs its scores,
K or V whose rows are not contiguous as the int8 kernels read them.

quantize_static also writes K^T as roundings (and a scalar scaling) of a Transpose of K (a
TorchScript export scales Q and K^T by 1/sqrt(sqrt(D)) each, then rounds them): the rounded K^T
cannot be read by rows. sink_key_transposes moves such a Transpose below the roundings and
scalings (they commute with it exactly), so the detector absorbs it as an access map and the
attention reads K's rows where the last rounding wrote them.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from moa_edge.ir import Graph, Node, Tensor
from moa_edge.moa import Layout, onf

from .match import scalar

INT8 = (-128, 127)


def _per_tensor_rounding(node: Node | None) -> bool:
    return node is not None and node.op == "MoaFakeQuantize" and len(node.inputs) == 1


def _scalar_operand(graph: Graph, node: Node, name: str) -> int | None:
    """The position of the operand other than `name` when it is a one-element constant of no
    higher rank (Mul by it, or Div of x by it), else None."""
    if node.op not in ("Mul", "Div") or len(node.inputs) != 2 or node.inputs[0] == node.inputs[1]:
        return None
    k = node.inputs.index(name)
    other = node.inputs[1 - k]
    if scalar(graph, other) is None or (node.op == "Div" and k != 0) or \
            graph.tensors[other].data.ndim > len(graph.tensors[name].shape):
        return None
    return 1 - k


def sink_key_transposes(graph: Graph) -> int:
    """MatMul(A, f(Transpose(K))) with f per-tensor roundings and scalar Mul/Div, one of them a
    rounding, each read only by the next: becomes MatMul(A, Transpose(f(K))). Returns how many."""
    count = 0
    for matmul in [n for n in graph.nodes if n.op == "MatMul"]:
        chain, name = [], matmul.inputs[1]
        while name not in graph.outputs and len(graph.consumers(name)) == 1:
            node = graph.producer(name)
            if _per_tensor_rounding(node):
                chain.append(node)
                name = node.inputs[0]
            elif node is not None and node.inputs and name == node.outputs[0] and \
                    any(_scalar_operand(graph, node, i) is not None for i in node.inputs[:2] if graph.constant(i) is None):
                chain.append(node)
                name = next(i for i in node.inputs if graph.constant(i) is None)
            else:
                break
        transpose = graph.producer(name)
        if not any(n.op == "MoaFakeQuantize" for n in chain) or transpose is None or transpose.op != "Transpose" or \
                name in graph.outputs or len(graph.consumers(name)) != 1:
            continue
        source = transpose.inputs[0]
        shape, top = tuple(graph.tensors[source].shape), chain[0].outputs[0]
        if any(graph.tensors[n.outputs[0]].dtype != "float32" for n in chain):
            continue
        untransposed = f"{top}__untransposed"
        while untransposed in graph.tensors:
            untransposed += "_"
        for node in chain[1:]:  # their results keep their names, in K's order now
            graph.tensors[node.outputs[0]] = Tensor(node.outputs[0], shape, "float32")
        graph.tensors[untransposed] = Tensor(untransposed, shape, "float32")
        last = chain[-1]
        last.inputs = [source if i == name else i for i in last.inputs]
        chain[0].outputs = [untransposed]
        transpose.inputs, transpose.outputs = [untransposed], [top]
        del graph.tensors[name]
        count += 1
    if count:
        graph.toposort()
    return count


def _int8_rounding(graph: Graph, name: str, attention: Node) -> Node | None:
    """The MoaFakeQuantize making `name` when its integers fit int8 and only `attention` reads it."""
    node = graph.producer(name)
    if not _per_tensor_rounding(node) or name in graph.outputs or graph.tensors[name].dtype != "float32":
        return None
    low, high, scale = node.attrs["low"], node.attrs["high"], node.attrs["scale"]
    if not (INT8[0] <= low <= high <= INT8[1]) or not np.isfinite(scale) or scale <= 0:
        return None
    return node if all(r is attention for r in graph.consumers(name)) else None


def _scales(graph: Graph, node: Node, length: int) -> str:
    """A constant vector of `length` copies of the rounding's scale: the row scales the int8 kernels
    read (one per key of a tile)."""
    name = f"{node.outputs[0]}__scales"
    while name in graph.tensors and graph.tensors[name].shape != (length,):
        name += "_"
    graph.tensors[name] = Tensor(name, (length,), "float32", np.full(length, node.attrs["scale"], np.float32))
    return name


def _quantize(graph: Graph, rounding: Node) -> None:
    """The rounding's result as int8 integers (MoaQuantize) instead of float32 values."""
    rounding.op = "MoaQuantize"
    out = rounding.outputs[0]
    graph.tensors[out] = Tensor(out, graph.tensors[out].shape, "int8")


def read_quantized_operands(graph: Graph) -> int:
    """Every MoaAttention whose Q, or K and V, are int8-sized roundings it alone reads: those int8 (the
    module's docstring). Returns how many blocks read an int8 operand."""
    count = 0
    for attention in [n for n in graph.nodes if n.op == "MoaAttention"]:
        spec = attention.attrs["spec"]
        q, k, v = attention.inputs[:3]
        if spec.kv_dtype != "float32" or spec.q_dtype != "float32" or spec.qk_mode >= 0 or q in (k, v):
            continue
        changed = spec
        q_rounding = _int8_rounding(graph, q, attention)
        if q_rounding is not None:  # Q's rows are dequantized as the kernel packs them
            _quantize(graph, q_rounding)
            changed = dataclasses.replace(changed, q_dtype="int8", q_scale=float(np.float32(q_rounding.attrs["scale"])))
        roundings = [_int8_rounding(graph, name, attention) for name in (k, v)]
        broadcast = Layout((spec.batch, spec.kv_heads, spec.kv_len), (0, 0, 1))
        with_kv = dataclasses.replace(changed, kv_dtype="int8", k_scale=broadcast, v_scale=broadcast)
        rows = onf.rows_of(with_kv)
        if None not in roundings and rows.k is not None and rows.v is not None and rows.k_form == "nt":
            for node in {id(r): r for r in roundings}.values():  # the int8 kernels read K and V rows in place
                _quantize(graph, node)
            scales = [_scales(graph, r, spec.kv_len) for r in roundings]
            attention.inputs = (attention.inputs + [""] * 5)[:5] + scales
            changed = with_kv
        attention.attrs["spec"] = changed
        count += changed != spec
    return count


__all__ = ["read_quantized_operands", "sink_key_transposes"]
