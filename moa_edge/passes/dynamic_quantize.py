"""Dynamically quantized activations: MatMuls whose kernel quantizes its float input to 8 bits at
run time and multiplies it with int8 weights, MoaIGemm (ops/igemm.py). Two sources:

onnxruntime's quantize_dynamic files (fold_dynamic_quantization), and `convert --weights int8
--activations int8` (quantize_activations): the int8 weights of passes/quantize.py (one scale per
output column) times the activations quantized to int8 per row, instead of the float activations
of MoaQGemm.

onnxruntime.quantization.quantize_dynamic writes, for each MatMul with a weight:

    x_q, x_scale, x_zero = DynamicQuantizeLinear(x)
    scale = Mul(x_scale, w_scale)                        w_scale: one, or one per column
    y = Mul(Cast<float>(MatMulInteger(x_q, w_q, x_zero, w_zero)), scale)   [+ bias]

and its optimizer fuses the chain into com.microsoft.DynamicQuantizeMatMul(x, w_q, w_scale, w_zero,
bias), or, when x_q feeds several MatMuls, into com.microsoft.MatMulIntegerToFloat(x_q, w_q,
x_scale, w_scale, x_zero, w_zero, bias) after one DynamicQuantizeLinear. All three compute the same
numbers, which the kernel reproduces exactly. Anything else quantized (an A not from
DynamicQuantizeLinear, a weight that is not a 2-D constant) is left alone, and refused by name
as the unsupported op it is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node, Tensor
from moa_edge.ir.dtypes import Quantization

# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"MatMulInteger": 10, "DynamicQuantizeLinear": 11}
from moa_edge.ops import igemm

from .match import produced_by
from .quantize import WeightFormat


@dataclass
class Chain:
    """One matched product: what MoaIGemm needs, and the node whose output it takes over."""
    x: str              # the float activations
    weight: str         # int8 or uint8 [K, N]
    weight_zero: str    # "" for 0
    weight_scale: str
    bias: str           # "" for none
    last: Node
    source: str


def _sole_consumer(graph: Graph, name: str, op: str) -> Node | None:
    consumers = graph.consumers(name)
    if name in graph.outputs or len(consumers) != 1 or consumers[0].op != op:
        return None
    return consumers[0]


def _input(node: Node, k: int) -> str:
    return node.inputs[k] if len(node.inputs) > k else ""


def _quantizer(graph: Graph, q: str, scale: str, zero: str) -> Node | None:
    """The DynamicQuantizeLinear making all three of q, scale and zero."""
    dql = produced_by(graph, q, "DynamicQuantizeLinear")
    if dql is None or list(dql.outputs[:3]) != [q, scale, zero]:
        return None
    return dql


def _bias(graph: Graph, y: str) -> tuple[str, Node] | None:
    """An Add of a constant float32 row [N] (or scalar) to y, y read by nothing else."""
    add = _sole_consumer(graph, y, "Add")
    if add is None or len(add.inputs) != 2 or add.inputs.count(y) != 1:
        return None
    bias = add.inputs[1] if add.inputs[0] == y else add.inputs[0]
    data, shape = graph.constant(bias), tuple(graph.tensors[y].shape)
    if data is None or data.dtype != np.float32 or tuple(graph.tensors[add.outputs[0]].shape) != shape:
        return None
    if data.size not in (1, shape[-1]) or (data.ndim and data.shape[-1] not in (1, shape[-1])):
        return None
    return bias, add


def _chain(graph: Graph, mmi: Node) -> Chain | None:
    """MatMulInteger -> Cast -> Mul(.., Mul(x_scale, w_scale)) [-> Add bias], A from DynamicQuantizeLinear."""
    cast = _sole_consumer(graph, mmi.outputs[0], "Cast")
    if cast is None or cast.attrs.get("to") != 1:  # TensorProto.FLOAT
        return None
    mul = _sole_consumer(graph, cast.outputs[0], "Mul")
    if mul is None or len(mul.inputs) != 2:
        return None
    other = mul.inputs[1] if mul.inputs[0] == cast.outputs[0] else mul.inputs[0]
    scale_product = produced_by(graph, other, "Mul")
    if scale_product is None:
        return None
    dql = produced_by(graph, mmi.inputs[0], "DynamicQuantizeLinear")
    if dql is None or _quantizer(graph, mmi.inputs[0], dql.outputs[1], _input(mmi, 2)) is None:
        return None
    if dql.outputs[1] not in scale_product.inputs:
        return None
    weight_scale = [n for n in scale_product.inputs if n != dql.outputs[1]]
    if len(weight_scale) != 1:
        return None
    last, bias = mul, ""
    found = _bias(graph, mul.outputs[0])
    if found is not None:
        bias, last = found
    return Chain(dql.inputs[0], mmi.inputs[1], _input(mmi, 3), weight_scale[0], bias, last,
                 "MatMulInteger, Cast, Mul" + (", Add" if bias else "") + " (quantize_dynamic)")


def _fused(graph: Graph, node: Node) -> Chain | None:
    if node.op == "com.microsoft.DynamicQuantizeMatMul":
        return Chain(node.inputs[0], node.inputs[1], _input(node, 3), node.inputs[2], _input(node, 4), node,
                     "DynamicQuantizeMatMul")
    dql = _quantizer(graph, node.inputs[0], node.inputs[2], _input(node, 4))
    if dql is None:
        return None
    return Chain(dql.inputs[0], node.inputs[1], _input(node, 5), node.inputs[3], _input(node, 6), node,
                 "DynamicQuantizeLinear, MatMulIntegerToFloat")


def _per_column(graph: Graph, name: str, n: int, what: str, node: Node) -> np.ndarray | None:
    """A constant of one value or one per column, as N values; None for an absent input."""
    if not name:
        return None
    data = graph.constant(name)
    if data is None:
        raise MoaEdgeError(f"{node.op} node {node.name!r}: its {what} {name!r} is computed at run time; "
                           f"only a constant {what} can be folded into the integer GEMM")
    if data.size not in (1, n) or (data.size == n and data.shape[-1:] != (n,)):
        raise MoaEdgeError(f"{node.op} node {node.name!r}: its {what} {name!r} has shape {list(data.shape)}; "
                           f"it must hold one value or one per column ([{n}]) of the weight")
    return np.broadcast_to(data.reshape(-1), (n,))


def _same_quantization(quant: Quantization, scale: np.ndarray, zero: np.ndarray | None) -> bool:
    if (quant.zero_point is None) != (zero is None):
        return False
    return np.array_equal(quant.scale, scale) and (zero is None or np.array_equal(quant.zero_point, zero))


def _weights(graph: Graph, chain: Chain, node: Node) -> list[str] | None:
    """The weight packed for the kernel: [q, col_sum, zero or "", b_scale per padded column]."""
    weight = graph.constant(chain.weight)
    if weight is None or weight.ndim != 2 or weight.dtype not in (np.int8, np.uint8):
        return None
    k, n = weight.shape
    zero = _per_column(graph, chain.weight_zero, n, "weight zero point", node)
    scale = _per_column(graph, chain.weight_scale, n, "weight scale", node)
    if zero is not None and zero.dtype != weight.dtype:
        raise MoaEdgeError(f"{node.op} node {node.name!r}: weight zero point {chain.weight_zero!r} is {zero.dtype}, "
                           f"the weight {weight.dtype}")
    if scale is None or scale.dtype != np.float32:
        raise MoaEdgeError(f"{node.op} node {node.name!r}: the weight scale must be a float32 constant")
    if zero is not None and weight.dtype == np.int8 and not zero.any():
        zero = None  # symmetric: no row sums needed
    stem, copies = f"{chain.weight}__igemm", 1
    while stem in graph.tensors and not _same_quantization(graph.tensors[stem].quant, scale, zero):
        copies += 1  # the weight again, with other scales or zero points
        stem = f"{chain.weight}__igemm{copies}"
    if stem not in graph.tensors:
        q, col_sum, zeros = igemm.pack_weights(weight, zero)
        padded_scale = np.zeros(igemm.columns(n), np.float32)
        padded_scale[:n] = scale
        quant = Quantization(scale.copy(), None if zero is None else zero.copy(), axis=1)
        graph.tensors[stem] = Tensor(stem, tuple(q.shape), "int8", q, quant=quant)
        graph.tensors[stem + "_col_sum"] = Tensor(stem + "_col_sum", col_sum.shape, "int32", col_sum)
        if zeros is not None:
            graph.tensors[stem + "_zero"] = Tensor(stem + "_zero", zeros.shape, "int32", zeros)
        graph.tensors[stem + "_scale"] = Tensor(stem + "_scale", padded_scale.shape, "float32", padded_scale)
    zero_name = stem + "_zero" if stem + "_zero" in graph.tensors else ""
    return [stem, stem + "_col_sum", zero_name, stem + "_scale"]


def _bias_row(graph: Graph, bias: str, n: int, node: Node) -> str:
    """The bias as N floats (a scalar repeated)."""
    if not bias:
        return ""
    data = graph.constant(bias)
    if data is None or data.dtype != np.float32 or data.size not in (1, n):
        raise MoaEdgeError(f"{node.op} node {node.name!r}: bias {bias!r} must be a float32 constant of one value "
                           f"or [{n}]")
    if data.shape == (n,):
        return bias
    row = f"{bias}__row{n}"
    graph.tensors.setdefault(row, Tensor(row, (n,), "float32", np.ascontiguousarray(np.broadcast_to(data.reshape(-1),
                                                                                                     (n,)))))
    return row


def fold_dynamic_quantization(graph: Graph) -> int:
    """Rewrite every dynamically quantized MatMul (the three forms above) into MoaIGemm; returns how
    many. The nodes it replaces are left to graph.remove_dead."""
    count = 0
    for node in list(graph.nodes):
        if node.op == "MatMulInteger":
            chain = _chain(graph, node)
        elif node.op in ("com.microsoft.DynamicQuantizeMatMul", "com.microsoft.MatMulIntegerToFloat"):
            chain = _fused(graph, node)
        else:
            continue
        if chain is None or graph.tensors.get(chain.x) is None or graph.tensors[chain.x].dtype != "float32":
            continue
        stored = _weights(graph, chain, node)
        if stored is None:
            continue
        k, n = graph.constant(chain.weight).shape
        if graph.tensors[chain.x].shape[-1:] != (k,):
            raise MoaEdgeError(f"{node.op} node {node.name!r}: activations {chain.x!r} of shape "
                               f"{list(graph.tensors[chain.x].shape)} do not fit a weight of K={k}")
        gemm = Node("MoaIGemm", node.name, [chain.x, *stored, _bias_row(graph, chain.bias, n, node)],
                    [chain.last.outputs[0]], {"n": n, "k": k, "mode": "tensor_u8", "source": chain.source})
        graph.nodes[graph.nodes.index(chain.last)] = gemm
        count += 1
    return count


def expand_dynamic_quantizers(graph: Graph) -> int:
    """Each DynamicQuantizeLinear no kernel took, as the spec's ops (uint8, over the whole tensor):

        scale = (max(0, max(x)) - min(0, min(x))) / 255, or 1 where that range is 0 (onnxruntime's)
        zero  = saturate(round_half_even(-min(0, min(x)) / scale))
        y     = saturate(round_half_even(x / scale) + zero)

    A NaN in x makes the scale NaN and y 0 (onnxruntime's kernel skips NaNs)."""
    expanded = 0
    for node in [n for n in graph.nodes if n.op == "DynamicQuantizeLinear"]:
        x = node.inputs[0]
        if graph.tensors.get(x) is None or graph.tensors[x].dtype != "float32":
            continue
        y, scale, zero = (list(node.outputs) + ["", "", ""])[:3]
        made: list[Node] = []

        def step(op: str, inputs: list[str], shape: tuple = (), out: str = "", dtype: str = "float32", **attrs) -> str:
            out = out or graph.fresh_name(f"{node.name}__{op}")
            graph.tensors[out] = Tensor(out, shape, dtype)
            made.append(Node(op, f"{node.name}__{op}_{len(made)}", inputs, [out], attrs))
            return out

        def constant(value: float) -> str:
            name = graph.fresh_name(f"{node.name}__{value:g}")
            graph.tensors[name] = Tensor(name, (), "float32", np.array(value, np.float32))
            return name

        full = tuple(graph.tensors[x].shape)
        low = step("Min", [step("ReduceMin", [x], keepdims=0), constant(0.0)])
        high = step("Max", [step("ReduceMax", [x], keepdims=0), constant(0.0)])
        spread = step("Sub", [high, low])
        flat = step("Equal", [spread, constant(0.0)], dtype="bool")
        scale = step("Where", [flat, constant(1.0), step("Div", [spread, constant(255.0)])], out=scale)
        zero_value = step("Clip", [step("Round", [step("Div", [step("Neg", [low]), scale])]), constant(0.0),
                                   constant(255.0)])
        if zero:
            step("Cast", [zero_value], out=zero, dtype="uint8", to=2)
        ratio = step("Round", [step("Div", [x, scale], full)], full)
        quantized = step("Clip", [step("Add", [ratio, zero_value], full), constant(0.0), constant(255.0)], full)
        step("Cast", [quantized], full, out=y, dtype="uint8", to=2)
        at = graph.nodes.index(node)
        graph.nodes[at:at + 1] = made
        expanded += 1
    return expanded


def parse_activations(text: str | None, weights: WeightFormat | None) -> str | None:
    """`--activations`: 'int8' (per row, into the integer GEMM; needs `--weights int8`, one scale per
    output column) or None / 'float32' (the activations stay float)."""
    if text is None or text in ("float32", "fp32"):
        return None
    if text != "int8":
        raise MoaEdgeError(f"--activations {text!r} is not int8 or float32")
    if weights is None or weights.qtype != "i8" or weights.block is not None:
        given = f"--weights {weights.text}" if weights is not None else "no --weights"
        raise MoaEdgeError(f"--activations int8 multiplies int8 activations by int8 weights with one scale per output "
                           f"column: it needs --weights int8 ({given} given)")
    return "int8"


def _row_bias(graph: Graph, node: Node) -> str | None:
    """MoaQGemm's C as the kernel's bias: "" for none, a constant row [N] or scalar with beta 1;
    None for any other C (a full matrix, scaled)."""
    c = node.inputs[4] if len(node.inputs) > 4 else ""
    if not c:
        return ""
    data, n = graph.constant(c), node.attrs["n"]
    if data is None or node.attrs["beta"] != 1.0 or data.dtype != np.float32 or data.size not in (1, n):
        return None
    return c if data.shape == (n,) else _bias_row(graph, c, n, node)


def quantize_activations(graph: Graph) -> int:
    """Every MoaQGemm over int8 weights with one scale per column (block K, no offset), A not
    transposed, alpha 1 and at most a bias row becomes MoaIGemm quantizing A per row to int8;
    returns how many. The others keep float activations."""
    count = 0
    for node in list(graph.nodes):
        attrs = node.attrs
        if node.op != "MoaQGemm" or attrs["qtype"] != "i8" or attrs["block"] != attrs["k"] or attrs["trans_a"]:
            continue
        bias = _row_bias(graph, node)
        if attrs["alpha"] != 1.0 or (len(node.inputs) > 3 and node.inputs[3]) or bias is None:
            continue
        k, n = attrs["k"], attrs["n"]
        values, scale = graph.constant(node.inputs[1]), graph.constant(node.inputs[2])
        stem = f"{node.inputs[1]}__igemm"
        if stem not in graph.tensors:
            # qmatmul.h's panels of one block (panels, K, 16) back to K x N, then igemm.h's.
            q = values.transpose(1, 0, 2).reshape(k, -1)[:, :n]
            packed, col_sum, _ = igemm.pack_weights(np.ascontiguousarray(q))
            column_scale = scale.reshape(-1)[:n]
            padded_scale = np.zeros(igemm.columns(n), np.float32)
            padded_scale[:n] = column_scale
            graph.tensors[stem] = Tensor(stem, tuple(packed.shape), "int8", packed,
                                         quant=Quantization(column_scale.copy(), axis=1))
            graph.tensors[stem + "_col_sum"] = Tensor(stem + "_col_sum", col_sum.shape, "int32", col_sum)
            graph.tensors[stem + "_scale"] = Tensor(stem + "_scale", padded_scale.shape, "float32", padded_scale)
        source = f"{attrs.get('source', 'MatMul')} (--activations int8)"
        graph.nodes[graph.nodes.index(node)] = Node(
            "MoaIGemm", node.name, [node.inputs[0], stem, stem + "_col_sum", "", stem + "_scale", bias],
            list(node.outputs), {"n": n, "k": k, "mode": "row_i8", "source": source})
        count += 1
    return count
