"""com.microsoft.MatMulNBits, as onnxruntime's MatMulNBitsQuantizer writes it, as one MoaQGemm.

    Y[..., N] = A[..., K] W + bias,   W[k][n] = (q[n][k] - zero_point[n][k / block]) * scale[n][k / block]

B holds q as uint8 blobs (N, k_blocks, block * bits / 8), K padded to whole blocks; 4-bit values
two to a byte, the lower k in the low nibble (ContribOperators.md, and onnxruntime's CPU kernel:
tests/test_matmul_nbits.py checks both against its output). Zero points are uint8, packed as B
(4 bits: block b in byte b / 2, low nibble first), or floats like the scales; absent, 2^(bits - 1).

    4 bits: MOA_QW_U4, q as it is; one zero point for every block (8 when the file gives none) is
            the kernel's `zero`, exact; other zero points become offset = -zero_point * scale
    8 bits: MOA_QW_I8, q - 128, offset = -(zero_point - 128) * scale (none when zero_point is 128)

The integers are kept; the offset is rounded once to float32, so W differs from onnxruntime's
(q - zero_point) * scale by at most an ulp of the larger term (none for 8 bits without zero
points). accuracy_level lets onnxruntime compute less accurately (int8 A); float32 is always
within it. g_idx, 2 bits, float16 A and any attribute not listed are refused by node name.
"""
from __future__ import annotations

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node, Tensor
from moa_edge.ir.dtypes import Quantization
from moa_edge.ops import qmatmul

from .pack import _bias_row

OP = "com.microsoft.MatMulNBits"
INPUTS = ("A", "B", "scales", "zero_points", "g_idx", "bias")
KNOWN_ATTRS = {"K", "N", "bits", "block_size", "accuracy_level", "weight_prepacked"}


def _refuse(node: Node, what: str):
    raise MoaEdgeError(f"MatMulNBits node {node.name!r}: {what}")


def _input(node: Node, index: int) -> str:
    return node.inputs[index] if len(node.inputs) > index else ""


def _constant(graph: Graph, node: Node, index: int) -> np.ndarray:
    name = _input(node, index)
    data = graph.constant(name)
    if data is None:
        _refuse(node, f"{INPUTS[index]} {name!r} is not a constant (an initializer)")
    return data


def _shape_of(node: Node, index: int, data: np.ndarray, shapes: list[tuple], sizes: str) -> None:
    if data.shape not in shapes:
        expected = " or ".join(str(list(s)) for s in shapes)
        _refuse(node, f"{INPUTS[index]} {_input(node, index)!r} has shape {list(data.shape)}, expected {expected} "
                      f"for {sizes}")


def _attributes(node: Node) -> tuple[int, int, int, int]:
    unknown = sorted(set(node.attrs) - KNOWN_ATTRS)
    if unknown:
        _refuse(node, f"attribute {unknown[0]} is not supported")
    if node.attrs.get("weight_prepacked", 0):
        _refuse(node, f"weight_prepacked={node.attrs['weight_prepacked']} (a GPU layout) is not supported")
    missing = [a for a in ("K", "N", "block_size") if a not in node.attrs]
    if missing:
        _refuse(node, f"the required attribute {missing[0]} is missing")
    k, n, block, bits = (int(node.attrs.get(a, 4)) for a in ("K", "N", "block_size", "bits"))
    if bits not in (4, 8):
        _refuse(node, f"bits={bits} is not supported (4 and 8 are)")
    if block < 16 or block & (block - 1):
        _refuse(node, f"block_size={block} is not a power of two of at least 16")
    if k < 1 or n < 1:
        _refuse(node, f"K={k} and N={n} must be positive")
    return k, n, block, bits


def _activation(graph: Graph, node: Node, k: int) -> None:
    a = graph.tensors.get(_input(node, 0))
    if a is None or a.dtype != "float32":
        scales = graph.tensors.get(_input(node, 2))
        dtype = a.dtype if a is not None else scales.dtype if scales is not None else "not float32"
        _refuse(node, f"A {_input(node, 0)!r} is {dtype}; only float32 A is supported"
                      + (" (float16 MatMulNBits is not supported yet)" if dtype == "float16" else ""))
    if not a.shape or a.shape[-1] != k:
        _refuse(node, f"A {a.name!r} has shape {list(a.shape)}, whose last axis is not K={k}")


def _unpack(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """uint8 (..., bytes) -> (..., count) values of `bits` each, the lower index in the lower bits."""
    if bits == 8:
        return data[..., :count].astype(np.int32)
    nibbles = np.stack([data & 15, data >> 4], axis=-1).reshape(*data.shape[:-1], -1)
    return nibbles[..., :count].astype(np.int32)


def _weights(graph: Graph, node: Node, k: int, n: int, block: int, bits: int):
    """q (K x N integers in MoaQGemm's range), scale and offset (blocks x N, offset or None),
    and the zero point in q's terms (for the tensor's Quantization record)."""
    k_blocks = -(-k // block)
    sizes = f"K={k}, N={n}, bits={bits}, block_size={block}"
    b = _constant(graph, node, 1)
    if b.dtype != np.uint8:
        _refuse(node, f"B {_input(node, 1)!r} is {b.dtype}, not uint8")
    if b.shape != (n, k_blocks, block * bits // 8):
        hint = ""
        if b.ndim == 3 and b.shape[0] == n and b.shape[2] * 8 // bits != block:
            hint = f" (its blobs hold blocks of {b.shape[2] * 8 // bits}, not block_size={block})"
        _refuse(node, f"B {_input(node, 1)!r} has shape {list(b.shape)}, expected {[n, k_blocks, block * bits // 8]} "
                      f"for {sizes}{hint}")
    scale = _constant(graph, node, 2)
    if scale.dtype != np.float32:
        _refuse(node, f"scales {_input(node, 2)!r} is {scale.dtype}, not float32 like A")
    _shape_of(node, 2, scale, [(n, k_blocks), (n * k_blocks,)], sizes)
    scale = scale.reshape(n, k_blocks).astype(np.float64)

    zero = None
    if _input(node, 3):
        zero = _constant(graph, node, 3)
        if zero.dtype == np.uint8:
            packed = -(-k_blocks * bits // 8)
            _shape_of(node, 3, zero, [(n, packed), (n * packed,)], sizes)
            zero = _unpack(zero.reshape(n, packed), bits, k_blocks).astype(np.float64)
        elif zero.dtype == np.float32:
            _shape_of(node, 3, zero, [(n, k_blocks), (n * k_blocks,)], sizes)
            zero = zero.reshape(n, k_blocks).astype(np.float64)
        else:
            _refuse(node, f"zero_points {_input(node, 3)!r} is {zero.dtype}, not uint8 or float32")
    if _input(node, 4):
        _refuse(node, f"g_idx {_input(node, 4)!r} (a column order, act-order) is not supported")

    q = _unpack(b, bits, block).reshape(n, k_blocks * block)[:, :k].T  # K x N
    kernel_zero = 0
    if bits == 8:  # int8 around the default zero point 128: an offset only for the others
        q = q - 128
        zero = None if zero is None or not np.any(zero != 128) else zero - 128
    elif zero is None:
        zero, kernel_zero = np.full((n, k_blocks), 8.0), 8
    elif np.all(zero == zero.flat[0]) and zero.flat[0] == np.rint(zero.flat[0]):
        kernel_zero = int(zero.flat[0])
    offset = None if zero is None or kernel_zero else (-zero * scale).T.astype(np.float32)
    storage = np.int8 if bits == 8 else np.uint8
    if zero is not None:  # Quantization's zero point: of q's type, unless the file gave floats
        zero = zero.T.astype(storage if np.all(zero == np.rint(zero)) else np.float32)
    return q.astype(storage), scale.T.astype(np.float32), offset, zero, kernel_zero


def _stored(graph: Graph, node: Node, k: int, n: int, block: int, bits: int) -> tuple[list[str], int]:
    """The names of q, scale and offset ("" for none), made in qmatmul.h's panels, and the kernel's zero."""
    qtype = "u4" if bits == 4 else "i8"
    q, scale, offset, zero, kernel_zero = _weights(graph, node, k, n, block, bits)
    values, scales, offsets = qmatmul.pack_quantized(q, scale, offset, qtype, block)
    stem = f"{_input(node, 1)}__{qtype}_{block}"
    while stem in graph.tensors:
        stem += "_"
    quant = Quantization(scale, zero, axis=0, block_size=block, bits=bits)
    graph.tensors[stem] = Tensor(stem, tuple(values.shape), qmatmul.STORAGE[qtype], values, quant=quant)
    graph.tensors[stem + "_scale"] = Tensor(stem + "_scale", tuple(scales.shape), "float32", scales)
    if offsets is None:
        return [stem, stem + "_scale", ""], kernel_zero
    graph.tensors[stem + "_offset"] = Tensor(stem + "_offset", tuple(offsets.shape), "float32", offsets)
    return [stem, stem + "_scale", stem + "_offset"], kernel_zero


def _bias(graph: Graph, node: Node, n: int) -> tuple[list[str], list[str]]:
    """MoaQGemm's C and outputs: the bias input, else a constant row added right after (as pack.py
    folds a Linear layer's Add), else none."""
    bias = _input(node, 5)
    if bias:
        t = graph.tensors.get(bias)
        if t is None or t.dtype != "float32" or tuple(t.shape) != (n,):
            _refuse(node, f"bias {bias!r} is not a float32 tensor of shape [{n}]")
        return [bias], list(node.outputs[:1])
    found = _bias_row(graph, node.outputs[0])
    if found is None:
        return [], list(node.outputs[:1])
    add, row = found
    graph.nodes.remove(add)
    return [row], list(add.outputs)


def lower_matmul_nbits(graph: Graph) -> int:
    """Rewrite every com.microsoft.MatMulNBits as MoaQGemm; returns how many."""
    made: dict[tuple, tuple[list[str], int]] = {}  # a weight two nodes share (tied embeddings) is stored once
    count = 0
    for node in [n for n in graph.nodes if n.op == OP]:
        k, n, block, bits = _attributes(node)
        _activation(graph, node, k)
        key = (*node.inputs[1:5], k, n, block, bits)
        if key not in made:
            made[key] = _stored(graph, node, k, n, block, bits)
        stored, zero = made[key]
        bias, outputs = _bias(graph, node, n)
        source = "MatMulNBits + bias" if bias else "MatMulNBits"
        gemm = Node("MoaQGemm", node.name, [node.inputs[0], *stored, *bias], outputs,
                    {"n": n, "k": k, "trans_a": 0, "alpha": 1.0, "beta": 1.0, "qtype": "u4" if bits == 4 else "i8",
                     "block": block, "zero": zero, "source": source})
        graph.nodes[graph.nodes.index(node)] = gemm
        count += 1
    return count
