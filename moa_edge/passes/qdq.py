"""QDQ models: QuantizeLinear and DequantizeLinear as the ONNX spec defines them, as
onnxruntime.quantization.quantize_static (QuantFormat.QDQ) and onnxruntime's weight-only quantizer
in QDQ form write them, folded into the kernels:

    DequantizeLinear:  y = (x - zero_point) * scale
    QuantizeLinear:    y = saturate(round_half_even(x / scale) + zero_point)

scale and zero_point are one value (per tensor), one per element of `axis` (per axis), or one per
`block_size` elements along `axis` (blocked, opset 21; the last block may be shorter).

  weights      A DequantizeLinear of a constant that a MatMul or Gemm reads as B (directly or
               through a Transpose) makes that node a MoaQGemm over the file's integers, when the
               scale runs along N and in whole blocks of K (per tensor, per output channel, or
               blocked along K):
                 8 bits: MOA_QW_I8 of q - zero_point where that fits int8 (W exactly the spec's);
                         else q (uint8: q - 128), a single zero point the kernel's `zero` and
                         others offset = -zero_point * scale;
                 4 bits: MOA_QW_U4 of q (int4: q + 8), a single zero point the kernel's `zero`
                         (8 for int4 without one), uint4's others offset = -zero_point * scale;
                         int4 with several zero points (whose offsets would be -(zp + 8) scale)
                         and blocks of odd length (the u4 panels pair rows) are MOA_QW_I8 of
                         q - zero_point, exact.
               The offset, rounded once to float32, makes W differ from the spec's by at most an
               ulp of the larger of the kernel's two terms, |scale q| and |offset| (uint8: of
               q - 128 and (zp - 128) scale); everything else is exact.
  tables       Gather(table) -> DequantizeLinear, as quantize_dynamic writes a quantized embedding
               (an int8 or uint8 table [V, D], one scale and zero point): MoaQGather over the
               table's integers (uint8: q - 128), stored once in the lm_head's layout
               (ops/qgather.py), the zero point the kernel's `zero`: exact.
  conv weights A DequantizeLinear of an int8 weight, per tensor or per output channel (axis 0),
               one zero point for all of it (quantize_static's symmetric weights: 0), read only as
               the weight of Conv nodes over float32: MoaQConv over the file's integers (ops/qconv.py),
               each output channel's scale its row's, the zero point the kernel's `zero`: exact.
  constants    Any other DequantizeLinear of a constant (other Conv weights, biases, the per-row scales
               the GEMM kernel has no form for, Gather tables, Add constants) is folded to the
               float32 values the spec defines (passes/fold.py runs onnx's reference implementation).
  activations  QuantizeLinear -> DequantizeLinear on a run-time tensor (same scale and zero point)
               is MoaFakeQuantize (ops/elementwise.py): x rounded onto the quantization grid,
                 y = clamp(round_half_even(x / scale), qmin - zp, qmax - zp) * scale,
               exactly the pair's float32 result; per tensor or per axis.
               When the int8 x int8 GEMM lands, QuantizeLinear -> DequantizeLinear -> MatMul over a
               quantized weight can run on the integers instead (scale_a * scale_w on the int32
               sums): that is where it would be matched, before this pass turns the pair into a
               rounding.

Refused by node name: scale or zero point shapes that do not fit the tensor, axis or block, a zero
point of another type than the quantized tensor, a float8 or 2-bit run-time pair, a pair whose
DequantizeLinear has other parameters than its QuantizeLinear, a quantized tensor read by anything
but its DequantizeLinear, and the QOperator format's quantized operators (QLinearConv,
QLinearMatMul, ConvInteger, com.microsoft's QLinear* and QGemm).
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node, Tensor, dtypes
from moa_edge.ir.dtypes import Quantization
from moa_edge.ops import qmatmul

from .pack import _bias_row

QUANTIZE, DEQUANTIZE = "QuantizeLinear", "DequantizeLinear"
# The integer types a quantized tensor may have (numpy's names; int4/uint4 are ml_dtypes'), their ranges.
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
# 19 on add float8, int4 and float4 types, 28 the float6 ones: refused by the dtype rules.
ONNX_VERSIONS = {"QuantizeLinear": 28, "DequantizeLinear": 28}
RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535),
          "int4": (-8, 7), "uint4": (0, 15)}
BITS = {"int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int4": 4, "uint4": 4}
# The QOperator format (quantize_static's other format, quantize_dynamic's Conv): integer kernels
# whose rounding the float kernels cannot reproduce.
QOPERATOR_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "com.microsoft.QGemm",
                 "com.microsoft.QLinearAdd", "com.microsoft.QLinearMul", "com.microsoft.QLinearSigmoid",
                 "com.microsoft.QLinearLeakyRelu", "com.microsoft.QLinearSoftmax", "com.microsoft.QLinearConcat",
                 "com.microsoft.QLinearAveragePool", "com.microsoft.QLinearGlobalAveragePool",
                 "com.microsoft.QLinearWhere", "com.microsoft.QLinearReduceMean", "com.microsoft.QAttention",
                 "com.microsoft.QEmbedLayerNormalization", "com.microsoft.QOrderedMatMul"}


def _refuse(node: Node, what: str):
    raise MoaEdgeError(f"{node.op} node {node.name!r}: {what}")


def _input(node: Node, index: int) -> str:
    return node.inputs[index] if len(node.inputs) > index else ""


def _type_name(elem_type: int) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


@dataclass(frozen=True)
class Params:
    """One QuantizeLinear's or DequantizeLinear's quantization, checked against the spec."""
    qtype: str                 # numpy's name of the quantized type
    scale: np.ndarray | None   # None: a run-time scale
    zero: np.ndarray | None    # None: absent (0), or a run-time zero point
    axis: int | None           # None: per tensor
    block: int                 # 0: per tensor or per axis

    def same(self, other: Params) -> bool:
        """The same quantization: type, granularity and values (an absent zero point is zeros)."""
        def values(a: np.ndarray | None, zeros_are_none: bool = False):
            return None if a is None or (zeros_are_none and not a.any()) else a.ravel().tolist()
        return (self.qtype, self.axis, self.block, values(self.scale), values(self.zero, True)) == \
            (other.qtype, other.axis, other.block, values(other.scale), values(other.zero, True))


def _x_shape(graph: Graph, node: Node) -> tuple | None:
    """The shape of the quantized (DequantizeLinear) or float (QuantizeLinear) input x: recorded,
    or for a DequantizeLinear after a QuantizeLinear (whose integer output the importer need not
    record), that QuantizeLinear's input's."""
    t = graph.tensors.get(node.inputs[0])
    if t is not None:
        return tuple(t.shape)
    producer = graph.producer(node.inputs[0])
    if producer is not None and producer.op == QUANTIZE:
        return _x_shape(graph, producer)
    return None


def _quantized_type(graph: Graph, node: Node) -> str | None:
    """The integer (or other) type of the quantized side: x's for DequantizeLinear; for
    QuantizeLinear the zero point's, else output_dtype's, else uint8."""
    zero = graph.tensors.get(_input(node, 2))
    if node.op == DEQUANTIZE:
        x = graph.tensors.get(node.inputs[0])
        if x is not None:
            return x.dtype
        producer = graph.producer(node.inputs[0])
        return _quantized_type(graph, producer) if producer is not None and producer.op == QUANTIZE else None
    if zero is not None:
        return zero.dtype
    if node.attrs.get("output_dtype"):
        return _type_name(node.attrs["output_dtype"])
    return "uint8"


def check_node(graph: Graph, node: Node) -> Params | None:
    """A QuantizeLinear's or DequantizeLinear's parameters, or None while x's shape is unknown;
    one error naming the node for any the spec does not allow."""
    shape = _x_shape(graph, node)
    scale_t, zero_t = graph.tensors.get(_input(node, 1)), graph.tensors.get(_input(node, 2))
    if shape is None or scale_t is None:
        return None
    qtype = _quantized_type(graph, node)
    scale_name, zero_name = node.inputs[1], _input(node, 2)
    if zero_t is not None and qtype is not None and zero_t.dtype != qtype:
        side = "x" if node.op == DEQUANTIZE else "the output (output_dtype)"
        _refuse(node, f"zero point {zero_name!r} is {zero_t.dtype}, but {side} is {qtype}: they must be one type")
    if node.op == QUANTIZE and zero_t is not None and node.attrs.get("output_dtype") and \
            _type_name(node.attrs["output_dtype"]) != zero_t.dtype:
        _refuse(node, f"output_dtype {_type_name(node.attrs['output_dtype'])} is not the zero point "
                      f"{zero_name!r}'s type {zero_t.dtype}")
    one = {(), (1,)}  # quantize_static writes a bias's scale as [1] and its zero point as a scalar
    if zero_t is not None and tuple(zero_t.shape) != tuple(scale_t.shape) and \
            not {tuple(zero_t.shape), tuple(scale_t.shape)} <= one:
        _refuse(node, f"zero point {zero_name!r} has shape {list(zero_t.shape)}, but scale {scale_name!r} has "
                      f"{list(scale_t.shape)}: they must be one shape")
    block = int(node.attrs.get("block_size", 0))
    rank = len(shape)
    axis = int(node.attrs.get("axis", 1))
    scale_shape = tuple(scale_t.shape)
    if block < 0:
        _refuse(node, f"block_size={block} is negative")
    if block == 0 and (len(scale_shape) == 0 or (len(scale_shape) == 1 and scale_shape[0] == 1)):
        axis = None  # per tensor
    elif not -rank <= axis < rank:
        _refuse(node, f"axis={axis} is outside [{-rank}, {rank - 1}] for x of shape {list(shape)}")
    else:
        axis %= rank
        if block == 0 and len(scale_shape) != 1:
            _refuse(node, f"scale {scale_name!r} has shape {list(scale_shape)}: without block_size it must be a "
                          f"scalar (per tensor) or 1-D (per axis)")
        if block == 0 and scale_shape[0] != shape[axis]:
            _refuse(node, f"scale {scale_name!r} has shape {list(scale_shape)}, expected [{shape[axis]}] (one per "
                          f"element of axis {axis} of x {list(shape)})")
        if block:
            expected = tuple(-(-d // block) if k == axis else d for k, d in enumerate(shape))
            if scale_shape != expected:
                _refuse(node, f"scale {scale_name!r} has shape {list(scale_shape)}, expected {list(expected)} for "
                              f"x {list(shape)} in blocks of {block} along axis {axis}")
    return Params(qtype, graph.constant(scale_name), graph.constant(zero_name) if zero_name else None, axis, block)


def _gemm_readers(graph: Graph, node: Node) -> list[tuple[Node, bool, Node | None]] | None:
    """Every node reading a DequantizeLinear's output as a weight: (MatMul or Gemm, whether B is
    the output transposed, the Transpose between or None); None when anything reads it otherwise."""
    y = node.outputs[0]
    if y in graph.outputs:
        return None
    readers = []
    for reader in graph.consumers(y):
        transpose = None
        if reader.op == "Transpose" and list(reader.attrs.get("perm", [1, 0])) == [1, 0] and \
                reader.outputs[0] not in graph.outputs:
            transpose, gemms = reader, graph.consumers(reader.outputs[0])
        else:
            gemms = [reader]
        for gemm in gemms:
            if gemm.op not in ("MatMul", "Gemm") or gemm.inputs[1] != (transpose.outputs[0] if transpose else y) \
                    or gemm.inputs[0] in (y, transpose.outputs[0] if transpose else y):
                return None
            trans_b = gemm.op == "Gemm" and bool(gemm.attrs.get("transB", 0))
            readers.append((gemm, trans_b != (transpose is not None), transpose))
    return readers or None


def is_gemm_weight(graph: Graph, node: Node) -> bool:
    """A DequantizeLinear of a 2-D constant read only as MatMul's or Gemm's B, or of an int8 one
    read only as Conv's weight: kept for lower_qdq (folding it would turn its integers into float32
    weights)."""
    if node.op != DEQUANTIZE:
        return False
    x = graph.constant(node.inputs[0])
    if x is not None and x.ndim >= 3 and x.dtype == np.int8:
        readers = graph.consumers(node.outputs[0])
        return bool(readers) and all(r.op == "Conv" and r.inputs[1:2] == [node.outputs[0]] for r in readers)
    return x is not None and x.ndim == 2 and x.dtype.name in RANGES and _gemm_readers(graph, node) is not None


# --- weights --------------------------------------------------------------------------------

@dataclass(frozen=True)
class KernelWeights:
    """W (K x N) as MoaQGemm reads it: W[k][n] = scale[k / block][n] (q[k][n] - zero) + offset[k / block][n]."""
    qtype: str                  # "i8" | "u4"
    q: np.ndarray               # K x N, int8 or 0..15
    scale: np.ndarray           # blocks x N, float32
    offset: np.ndarray | None   # blocks x N, float32
    zero: int
    block: int
    zero_point: np.ndarray      # blocks x N, in q's terms (the Quantization record's)


def _along_k(values: np.ndarray | None, params: Params, q_shape: tuple, transposed: bool) -> np.ndarray | None:
    """A scale or zero point (None: 0) as rows of blocks along K, one column per n: (blocks, N);
    None when it varies along K by element (a per-row scale: no kernel form)."""
    k_axis = 1 if transposed else 0
    n = q_shape[1 - k_axis]
    if values is None:
        return np.zeros((1, n), np.int64)
    if params.axis is None:
        return np.full((1, n), values.reshape(()))
    if params.block == 0:
        return values.reshape(1, n) if params.axis != k_axis else None
    if params.axis != k_axis:
        return None
    return values.T if transposed else values


def kernel_weights(q: np.ndarray, params: Params, transposed: bool) -> KernelWeights | None:
    """The DequantizeLinear of q (B, or B^T when `transposed`) in MoaQGemm's form, or None when
    the kernel has no form for its scales (they vary along K row by row, or along N in blocks)."""
    scale = _along_k(params.scale, params, q.shape, transposed)
    zero = _along_k(params.zero, params, q.shape, transposed)
    if scale is None or zero is None or params.scale.dtype != np.float32:
        return None
    ints = (q.T if transposed else q).astype(np.int64)
    zero = np.broadcast_to(zero.astype(np.int64), scale.shape)
    k = ints.shape[0]
    block = params.block if params.block and scale.shape[0] > 1 else k
    rows = np.arange(k) // block
    bits, signed = BITS[params.qtype], params.qtype.startswith("int")
    if bits == 4 and block % 2 and scale.shape[0] == 1:
        block += 1  # one block for all of K: padded to an even length, which the u4 panels pair
    if bits != 4 or block % 2 or (signed and np.any(zero != zero.flat[0])):
        exact = ints - zero[rows]
        if exact.min(initial=0) >= -128 and exact.max(initial=0) <= 127:
            return KernelWeights("i8", exact.astype(np.int8), scale.astype(np.float32), None, 0, block,
                                 np.zeros(scale.shape, np.int8))
        if bits != 8:
            return None  # 16-bit integers: float32 weights hold them exactly
        shift = 0 if signed else 128
        qtype, values, zero = "i8", ints - shift, zero - shift
    else:
        shift = -8 if signed else 0
        qtype, values, zero = "u4", ints - shift, zero - shift
    uniform = bool(np.all(zero == zero.flat[0]))
    offset = None if uniform else (-zero * scale.astype(np.float64)).astype(np.float32)
    storage = np.int8 if qtype == "i8" else np.uint8
    return KernelWeights(qtype, values.astype(storage), scale.astype(np.float32), offset,
                         int(zero.flat[0]) if uniform else 0, block, zero.astype(storage))


def _store(graph: Graph, stem: str, w: KernelWeights) -> list[str]:
    """q, scale and offset ("" for none) in qmatmul.h's panels, as tensors named after `stem`."""
    values, scales, offsets = qmatmul.pack_quantized(w.q, w.scale, w.offset, w.qtype, w.block)
    while stem in graph.tensors:
        stem += "_"
    quant = Quantization(w.scale, w.zero_point, axis=0, block_size=w.block, bits=4 if w.qtype == "u4" else 8)
    graph.tensors[stem] = Tensor(stem, tuple(values.shape), qmatmul.STORAGE[w.qtype], values, quant=quant)
    graph.tensors[stem + "_scale"] = Tensor(stem + "_scale", tuple(scales.shape), "float32", scales)
    if offsets is None:
        return [stem, stem + "_scale", ""]
    graph.tensors[stem + "_offset"] = Tensor(stem + "_offset", tuple(offsets.shape), "float32", offsets)
    return [stem, stem + "_scale", stem + "_offset"]


def _activation_fits(graph: Graph, gemm: Node) -> bool:
    a = graph.tensors.get(gemm.inputs[0])
    return a is not None and a.dtype == "float32" and len(a.shape) >= 2 and (gemm.op == "MatMul" or len(a.shape) == 2)


def _gemm(graph: Graph, gemm: Node, stored: list[str], w: KernelWeights) -> Node:
    """MoaQGemm in the place of a MatMul (with the bias Add right after it) or a Gemm."""
    k, n = w.q.shape
    if gemm.op == "Gemm":
        attrs = gemm.attrs
        bias, outputs = gemm.inputs[2:3], list(gemm.outputs)
        kind = {"trans_a": int(attrs.get("transA", 0)), "alpha": float(attrs.get("alpha", 1.0)),
                "beta": float(attrs.get("beta", 1.0)), "source": "QDQ Gemm"}
    else:
        bias, outputs = [], list(gemm.outputs)
        found = _bias_row(graph, gemm.outputs[0])
        if found is not None:
            add, row = found
            bias, outputs = [row], list(add.outputs)
            graph.nodes.remove(add)
        kind = {"trans_a": 0, "alpha": 1.0, "beta": 1.0,
                "source": "QDQ MatMul + Add" if bias else "QDQ MatMul"}
    return Node("MoaQGemm", gemm.name, [gemm.inputs[0], *stored, *bias], outputs,
                {"n": n, "k": k, **kind, "qtype": w.qtype, "block": w.block, "zero": w.zero})


def _lower_conv_weight(graph: Graph, node: Node) -> bool:
    """A DequantizeLinear of an int8 Conv weight (see the module's docstring) as MoaQConv's stored
    rows; False (nothing changed) when a reader or the quantization does not fit."""
    params, q = check_node(graph, node), graph.constant(node.inputs[0])
    readers = graph.consumers(node.outputs[0])
    if params is None or q is None or q.dtype != np.int8 or q.ndim < 3 or params.scale is None or params.block or \
            params.axis not in (None, 0) or node.outputs[0] in graph.outputs or not readers:
        return False
    zeros = np.zeros(1, np.int64) if params.zero is None else np.unique(params.zero.astype(np.int64))
    if len(zeros) != 1 or params.scale.dtype != np.float32:
        return False
    for conv in readers:
        x = graph.tensors.get(conv.inputs[0])
        if conv.op != "Conv" or conv.inputs[1:2] != [node.outputs[0]] or conv.inputs[0] == node.outputs[0] or \
                x is None or x.dtype != "float32":
            return False
    m, r = q.shape[0], int(np.prod(q.shape[1:]))
    stem = f"{node.inputs[0]}__conv_i8"
    scale = np.ascontiguousarray(np.broadcast_to(params.scale.reshape(-1, 1), (m, 1)), np.float32)
    graph.tensors[stem] = Tensor(stem, (m, r), "int8", np.ascontiguousarray(q.reshape(m, r)))
    graph.tensors[stem + "_scale"] = Tensor(stem + "_scale", (m, 1), "float32", scale)
    for conv in readers:
        bias = conv.inputs[2:3] if len(conv.inputs) > 2 and conv.inputs[2] else []
        graph.nodes[graph.nodes.index(conv)] = Node(
            "MoaQConv", conv.name, [conv.inputs[0], stem, stem + "_scale", "", *bias], list(conv.outputs),
            {**conv.attrs, "w_shape": list(q.shape), "qtype": "i8", "block": r, "zero": int(zeros[0])})
    graph.nodes.remove(node)
    return True


def _lower_weight(graph: Graph, node: Node) -> bool:
    """One DequantizeLinear read as B: every reader a MoaQGemm over one stored copy per orientation.
    False (nothing changed) when some reader or the scales do not fit the kernel."""
    params = check_node(graph, node)
    readers = _gemm_readers(graph, node)
    q = graph.constant(node.inputs[0])
    if params is None or readers is None or q is None or params.scale is None or \
            (_input(node, 2) and params.zero is None) or not all(_activation_fits(graph, g) for g, _, _ in readers):
        return False
    forms = {t: kernel_weights(q, params, t) for t in {t for _, t, _ in readers}}
    if any(w is None for w in forms.values()):
        return False
    stored = {t: _store(graph, f"{node.inputs[0]}__{w.qtype}_{w.block}{'_t' if t else ''}", w)
              for t, w in forms.items()}
    for gemm, transposed, _ in readers:
        graph.nodes[graph.nodes.index(gemm)] = _gemm(graph, gemm, stored[transposed], forms[transposed])
    for transpose in {id(t): t for _, _, t in readers if t is not None}.values():
        graph.nodes.remove(transpose)
    graph.nodes.remove(node)
    return True


def _spread(values: np.ndarray, params: Params, shape: tuple) -> np.ndarray:
    """A scale or zero point broadcast to x's shape: blocks repeated, the last one cut short."""
    if params.axis is None:
        return values.reshape(())
    if not params.block:
        return values.reshape(tuple(d if k == params.axis else 1 for k, d in enumerate(shape)))
    return np.repeat(values, params.block, axis=params.axis).take(range(shape[params.axis]), axis=params.axis)


def dequantize(q: np.ndarray, params: Params) -> np.ndarray:
    """The spec's y = (x - zero_point) * scale, in the scale's type: the difference is an integer
    and its product with the scale exact in float64, so one rounding, as the spec's."""
    zero = 0 if params.zero is None else _spread(params.zero.astype(np.int64), params, q.shape)
    product = (q.astype(np.int64) - zero) * _spread(params.scale.astype(np.float64), params, q.shape)
    return product.astype(params.scale.dtype)


def _fold(graph: Graph, node: Node, params: Params) -> None:
    """A DequantizeLinear of constants replaced by its float values."""
    y = dequantize(graph.constant(node.inputs[0]), params)
    graph.tensors[node.outputs[0]] = Tensor(node.outputs[0], tuple(y.shape), y.dtype.name, y)
    graph.nodes.remove(node)


# --- activations ----------------------------------------------------------------------------

def _fake_quantize(graph: Graph, quantize: Node, dequantize: Node, params: Params) -> Node:
    """The pair as one MoaFakeQuantize: per tensor with the scale and range as attributes, per axis
    with them as constants shaped to broadcast against x."""
    x = graph.tensors[quantize.inputs[0]]
    if not np.all(params.scale > 0) or not np.all(np.isfinite(params.scale)):
        _refuse(quantize, f"scale {quantize.inputs[1]!r} has a value that is not finite and positive")
    qmin, qmax = RANGES[params.qtype]
    zero = np.zeros(params.scale.shape, np.int64) if params.zero is None else params.zero.astype(np.int64)
    low, high = (qmin - zero).astype(np.float32), (qmax - zero).astype(np.float32)
    name = dequantize.name
    if params.axis is None:
        return Node("MoaFakeQuantize", name, [x.name], list(dequantize.outputs),
                    {"scale": float(params.scale.reshape(())), "low": float(low.reshape(())),
                     "high": float(high.reshape(())), "qtype": params.qtype})
    shape = tuple(d if k == params.axis else 1 for k, d in enumerate(x.shape))
    operands = [x.name]
    for what, value in (("scale", params.scale), ("low", low), ("high", high)):
        stem = f"{dequantize.outputs[0]}__{what}"
        while stem in graph.tensors:
            stem += "_"
        graph.tensors[stem] = Tensor(stem, shape, "float32", value.astype(np.float32).reshape(shape))
        operands.append(stem)
    return Node("MoaFakeQuantize", name, operands, list(dequantize.outputs), {"qtype": params.qtype})


def _fuses_as_pair(graph: Graph, quantize: Node, params: Params) -> bool:
    """Whether QuantizeLinear and the DequantizeLinear nodes reading it are one MoaFakeQuantize: only
    those read its integers, with its parameters, and _fake_quantize has the form for them."""
    q = quantize.outputs[0]
    readers = graph.consumers(q)
    x = graph.tensors[quantize.inputs[0]]
    return (q not in graph.outputs and bool(readers) and params.qtype in RANGES and not params.block
            and (not _input(quantize, 2) or params.zero is not None)
            and x.dtype == "float32" and params.scale is not None and params.scale.dtype == np.float32
            and all(r.op == DEQUANTIZE and r.inputs[0] == q and (theirs := check_node(graph, r)) is not None
                    and params.same(theirs) for r in readers))


def _lower_quantize(graph: Graph, quantize: Node) -> None:
    params = check_node(graph, quantize)
    if params is None:
        _refuse(quantize, f"the shape of x {quantize.inputs[0]!r} is unknown")
    _require_parameters(quantize, params)
    if quantize.attrs.get("precision", onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT:
        _refuse(quantize, f"precision={quantize.attrs['precision']}: only float32 division is supported")
    if not _fuses_as_pair(graph, quantize, params):  # the integers themselves, which their readers read
        at = graph.nodes.index(quantize)
        graph.nodes[at:at + 1] = _quantize_ops(graph, quantize, params)
        return
    readers = graph.consumers(quantize.outputs[0])
    for reader in readers:
        graph.nodes[graph.nodes.index(reader)] = _fake_quantize(graph, quantize, reader, params)
    graph.nodes.remove(quantize)


# --- QuantizeLinear and DequantizeLinear on their own, as element-wise ops --------------------

def _require_parameters(node: Node, params: Params) -> None:
    """Scale and zero point: constants, or computed at run time when one value (per tensor)."""
    if params.axis is not None and (params.scale is None or (_input(node, 2) and params.zero is None)):
        _refuse(node, "its scale and zero point must be constants (initializers) unless one value each (per tensor)")


def _parameter(graph: Graph, nodes: list[Node], node: Node, index: int, values: np.ndarray | None, params: Params,
               shape: tuple, stem: str) -> str | None:
    """A scale (index 1) or zero point (2) as a float32 operand broadcasting against x: a constant
    spread to x's shape, or the run-time value cast to float32; None for a zero point of zeros."""
    if values is not None:
        if index == 2 and not values.astype(np.float32).any():
            return None
        return _constant(graph, stem, _spread(values.astype(np.float32), params, shape))
    name = _input(node, index)
    if not name:
        return None
    if graph.tensors[name].dtype == "float32":
        return name
    return _step(graph, nodes, "Cast", [name], stem, attrs={"to": onnx.TensorProto.FLOAT})

def _constant(graph: Graph, stem: str, values: np.ndarray) -> str:
    name = graph.fresh_name(stem)
    graph.tensors[name] = Tensor(name, tuple(values.shape), values.dtype.name, values)
    return name


def _step(graph: Graph, nodes: list[Node], op: str, inputs: list[str], stem: str, dtype: str = "float32",
          attrs: dict | None = None, out: str | None = None) -> str:
    """Append `op` over `inputs` to `nodes`, its output a new tensor of x's shape (or `out`)."""
    shape = tuple(graph.tensors[inputs[0]].shape)
    out = out or graph.fresh_name(stem)
    graph.tensors[out] = Tensor(out, shape, dtype)
    nodes.append(Node(op, graph.fresh_name(f"{stem}__{op}"), inputs, [out], attrs or {}))
    return out


def _quantize_ops(graph: Graph, quantize: Node, params: Params) -> list[Node]:
    """y = saturate(round_half_even(x / scale) + zero_point), in float32: to an integer type clamped
    to its range, then Cast; to a float8 or float4 type Cast rounds and saturates as asked."""
    x, y = quantize.inputs[0], quantize.outputs[0]
    shape, stem, nodes = tuple(graph.tensors[x].shape), y, []
    scale = _parameter(graph, nodes, quantize, 1, params.scale, params, shape, f"{stem}__scale")
    value = _step(graph, nodes, "Div", [x, scale], f"{stem}__ratio")
    qtype = dtypes.dtype(params.qtype)
    if not qtype.is_float:
        value = _step(graph, nodes, "Round", [value], f"{stem}__rounded")
    zero = _parameter(graph, nodes, quantize, 2, params.zero, params, shape, f"{stem}__zero")
    if zero is not None:
        value = _step(graph, nodes, "Add", [value, zero], f"{stem}__shifted")
    if not qtype.is_float:
        info = ml_dtypes.iinfo(qtype.numpy)
        low, high = (_constant(graph, f"{stem}__{k}", np.array(v, np.float32)) for k, v in (("low", info.min),
                                                                                           ("high", info.max)))
        value = _step(graph, nodes, "Clip", [value, low, high], f"{stem}__clamped")
    attrs = {"to": qtype.onnx, "saturate": int(quantize.attrs.get("saturate", 1))}
    _step(graph, nodes, "Cast", [value], stem, params.qtype, attrs, out=y)
    return nodes


def _dequantize_ops(graph: Graph, node: Node, params: Params) -> list[Node]:
    """y = (x - zero_point) * scale in float32 (then y's type, if another)."""
    x, y = node.inputs[0], node.outputs[0]
    shape, stem, nodes = tuple(graph.tensors[x].shape), y, []
    value = _step(graph, nodes, "Cast", [x], f"{stem}__float32", attrs={"to": onnx.TensorProto.FLOAT})
    zero = _parameter(graph, nodes, node, 2, params.zero, params, shape, f"{stem}__zero")
    if zero is not None:
        value = _step(graph, nodes, "Sub", [value, zero], f"{stem}__centred")
    scale = _parameter(graph, nodes, node, 1, params.scale, params, shape, f"{stem}__scale")
    wanted = graph.tensors[y].dtype
    if wanted == "float32":
        _step(graph, nodes, "Mul", [value, scale], stem, out=y)
    else:
        value = _step(graph, nodes, "Mul", [value, scale], f"{stem}__product")
        _step(graph, nodes, "Cast", [value], stem, wanted, {"to": dtypes.dtype(wanted).onnx}, out=y)
    return nodes


def refuse_quantized_operators(nodes: list[Node]) -> None:
    """One error naming the first QOperator-format node (the importer asks before onnxruntime's
    shape inference, which gives up on some of them without saying where)."""
    for node in nodes:
        if node.op in QOPERATOR_OPS:
            _refuse(node, "is a quantized operator (the QOperator format), which moa-edge does not support; "
                          "quantize the float model with quant_format=QuantFormat.QDQ instead")


def _lower_gathered_table(graph: Graph, node: Node) -> bool:
    """Gather of an integer table's rows -> this per-tensor DequantizeLinear: MoaQGather."""
    gather = graph.producer(node.inputs[0])
    if gather is None or gather.op != "Gather" or gather.attrs.get("axis", 0) not in (0, -2):
        return False
    table, indices = graph.constant(gather.inputs[0]), graph.tensors.get(gather.inputs[1])
    scale, zero = graph.constant(node.inputs[1]), graph.constant(_input(node, 2)) if _input(node, 2) else None
    if (table is None or table.ndim != 2 or table.dtype not in (np.int8, np.uint8) or indices is None
            or indices.is_constant or scale is None or scale.size != 1 or (zero is not None and zero.size != 1)
            or len(graph.consumers(gather.outputs[0])) != 1 or gather.outputs[0] in graph.outputs):
        return False
    shift = 128 if table.dtype == np.uint8 else 0  # uint8 as int8 q - 128, the zero point with it
    vocab, dim = table.shape
    q = (table.astype(np.int16) - shift).T.astype(np.int8)  # B = E^T: K = dim, N = vocab
    zero_point = int(zero.reshape(-1)[0]) - shift if zero is not None else -shift
    scales = np.full((1, vocab), scale.reshape(-1)[0], np.float32)
    stored = _store(graph, f"{gather.inputs[0]}__i8_{dim}",
                    KernelWeights("i8", q, scales, None, zero_point, dim, np.full((1, vocab), zero_point)))
    graph.nodes[graph.nodes.index(node)] = Node(
        "MoaQGather", node.name, [gather.inputs[1], *stored], list(node.outputs),
        {"k": dim, "n": vocab, "qtype": "i8", "block": dim, "zero": zero_point})
    graph.nodes.remove(gather)
    return True


def lower_qdq(graph: Graph) -> int:
    """Fold every QuantizeLinear and DequantizeLinear (module docstring); returns how many nodes
    it rewrote."""
    refuse_quantized_operators(graph.nodes)
    count = 0
    for node in [n for n in graph.nodes if n.op == DEQUANTIZE]:
        if graph.constant(node.inputs[0]) is None and _lower_gathered_table(graph, node):
            count += 1
    for node in [n for n in graph.nodes if n.op == DEQUANTIZE]:
        if any(graph.constant(i) is None for i in node.inputs if i):
            continue
        if not _lower_weight(graph, node) and not _lower_conv_weight(graph, node):  # no kernel form for it
            _fold(graph, node, check_node(graph, node))
        count += 1
    for node in [n for n in graph.nodes if n.op == QUANTIZE]:
        _lower_quantize(graph, node)
        count += 1
    for node in [n for n in graph.nodes if n.op == DEQUANTIZE]:
        params = check_node(graph, node)
        if params is None:
            _refuse(node, f"the shape or type of x {node.inputs[0]!r} is unknown")
        _require_parameters(node, params)
        at = graph.nodes.index(node)
        graph.nodes[at:at + 1] = _dequantize_ops(graph, node, params)
        count += 1
    if count:
        graph.remove_dead()
    return count


__all__ = ["check_node", "is_gemm_weight", "kernel_weights", "lower_qdq", "refuse_quantized_operators"]
