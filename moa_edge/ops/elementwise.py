"""Element-wise ops: y[i] = f(a[i], b[i], ...) with numpy broadcasting.

Every operand is read through a broadcast access map (stride 0 on a broadcast axis), so
no operand is ever expanded in memory; axes that every operand walks contiguously are
merged, so the common same-shape case is a single flat loop. Each op is one C expression
(the scalar function, from <math.h>, moa/elementwise.h or moa/vmath.h) and one torch
function for the float64 reference.

MoaElementwise (made by passes/fuse.py) is a tree of these ops in one loop: its body Graph
lists the members in order, each one C statement over the values before it, and its
reference runs the members' own references in the same order.
"""
from __future__ import annotations

import math
import re

import ml_dtypes
import numpy as np
import onnx.numpy_helper
from moa_edge.lazy import torch

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Tensor, attribute_text, dtypes
from moa_edge.ir.c_syntax import c_comment_text, c_float_short
from moa_edge.moa import Layout

from .activations import FORMULAS
from .contract import EmittedUnit, OpCost, TensorType, operand_bytes

C_SOURCES: list[str] = []
IN_PLACE = True  # element i of the output is written after element i of each same-shape input is read
HEADER = '#include "moa/elementwise.h"'
HALF_HEADER = '#include "moa/half.h"'  # the conversions of a Cast to or from float16 and bfloat16
SMALL_HEADER = '#include "moa/small_types.h"'  # ... and float8, float4 and the 4- and 2-bit integers


def _approximate(node) -> str:
    value = node.attrs.get("approximate", "none")
    return value.decode() if isinstance(value, bytes) else value


def _gelu_c(node) -> str:
    return "moa_gelu_tanh(a)" if _approximate(node) == "tanh" else "moa_gelu_erf(a)"


def _gelu_torch(node, a):
    return torch.nn.functional.gelu(a, approximate=_approximate(node))


# op -> (C expression over a, b, c; torch function over the operand tensors)
_C_EXPR = {
    "Add": "a + b", "Sub": "a - b", "Mul": "a * b", "Div": "a / b", "Pow": "moa_pow(a, b)",
    "Sqrt": "sqrtf(a)", "Reciprocal": "1.0f / a", "Neg": "-a", "Exp": "expf(a)", "Log": "logf(a)",
    "Erf": "moa_erf_f32(a)", "Tanh": "moa_tanh_f32(a)", "Sigmoid": "moa_sigmoid(a)", "Relu": "(a < 0 ? 0 : a)",
    "Abs": "fabsf(a)", "Floor": "floorf(a)", "Ceil": "ceilf(a)", "Sin": "sinf(a)", "Cos": "cosf(a)",
    "Where": "(a ? b : c)", "Equal": "(a == b)", "Less": "(a < b)", "Greater": "(a > b)",
    "LessOrEqual": "(a <= b)", "GreaterOrEqual": "(a >= b)", "And": "(a && b)", "Or": "(a || b)",
    "Xor": "(!a != !b)", "Not": "!a", "IsNaN": "(a != a)",
    "Max": "moa_max(a, b)", "Min": "moa_min(a, b)", "Clip": "moa_clip(a, b, c)",
    "Tan": "tanf(a)", "Asin": "asinf(a)", "Acos": "acosf(a)", "Atan": "atanf(a)", "Sinh": "sinhf(a)",
    "Cosh": "coshf(a)", "Asinh": "asinhf(a)", "Acosh": "acoshf(a)", "Atanh": "atanhf(a)",
    "BitwiseAnd": "(a & b)", "BitwiseOr": "(a | b)", "BitwiseXor": "(a ^ b)", "BitwiseNot": "~a",
}
# Integer-only ops, computed in the reference on numpy's own types (torch lacks most unsigned
# ones). A shift by the type's width or more gives 0, where C's would be undefined.
_BITWISE = {"BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or, "BitwiseXor": np.bitwise_xor,
            "BitwiseNot": np.invert, "BitShift": None}
_TORCH = {  # the torch functions' names (torch is imported when first used)
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow",
    "Sqrt": "sqrt", "Reciprocal": "reciprocal", "Neg": "neg", "Exp": "exp", "Log": "log",
    "Erf": "erf", "Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu", "Abs": "abs",
    "Floor": "floor", "Ceil": "ceil", "Sin": "sin", "Cos": "cos", "Where": "where",
    "Equal": "eq", "Less": "lt", "Greater": "gt", "LessOrEqual": "le",
    "GreaterOrEqual": "ge", "And": "logical_and", "Or": "logical_or", "Xor": "logical_xor",
    "Not": "logical_not", "IsNaN": "isnan", "Max": "maximum",
    "Min": "minimum", "Clip": "clamp", "Tan": "tan", "Asin": "asin", "Acos": "acos", "Atan": "atan", "Sinh": "sinh",
    "Cosh": "cosh", "Asinh": "asinh", "Acosh": "acosh", "Atanh": "atanh",
}
_VARIADIC = {"Max", "Min", "Sum", "Mean"}  # any number of operands, folded left to right
OPS = tuple(_C_EXPR) + tuple(FORMULAS) + ("BitShift", "Sum", "Mean", "Gelu", "Cast", "IsInf", "MoaFakeQuantize", "MoaQuantize",
                                          "MoaElementwise")
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py); the
# versions after 13 add types, which the dtype rules check.
ONNX_VERSIONS = {"Add": 14, "Sub": 14, "Mul": 14, "Div": 14, "Pow": 15, "Sqrt": 13, "Reciprocal": 13, "Neg": 13,
                 "Exp": 13, "Log": 13, "Erf": 13, "Tanh": 13, "Sigmoid": 13, "Relu": 14, "Abs": 13, "Floor": 13,
                 "Ceil": 13, "Sin": 22, "Cos": 22, "Where": 16, "Equal": 19, "Less": 13, "Greater": 13,
                 "LessOrEqual": 16, "GreaterOrEqual": 16, "And": 7, "Or": 7, "Xor": 7, "Not": 1, "IsNaN": 20,
                 "Max": 13, "Min": 13, "Clip": 13, "Gelu": 20, "Cast": 28, "IsInf": 20, "Tan": 22, "Asin": 22,
                 "Acos": 22, "Atan": 22, "Sinh": 22, "Cosh": 22, "Asinh": 22, "Acosh": 22, "Atanh": 22,
                 "LeakyRelu": 16, "Elu": 22, "Selu": 22, "Celu": 28, "ThresholdedRelu": 22, "HardSigmoid": 22,
                 "HardSwish": 22, "Shrink": 9, "Softplus": 22, "Softsign": 22, "Mish": 22, "Swish": 24, "SwiGLU": 28,
                 "Round": 22, "Sign": 13, "PRelu": 16, "Mod": 28, "Sum": 13, "Mean": 13, "BitwiseAnd": 18,
                 "BitwiseOr": 18, "BitwiseXor": 18, "BitwiseNot": 18, "BitShift": 28}
# Integer forms of the ops whose float form would round (|x| > 2^24) or not compile.
# Integer Div never traps (moa_idiv in moa/elementwise.h): x / 0 is 0 and INT_MIN / -1 wraps to
# INT_MIN, as numpy gives; onnxruntime stops with an error on the first and traps on the second.
# Sums, differences and products in uint64_t, whose arithmetic wraps (C's signed overflow, and an
# int16 promoted to int, would be undefined), converted back to the type as the loop stores them.
_INTEGER_C_EXPR = {"Pow": "moa_ipow(a, b)", "Abs": "(a < 0 ? 0 - (uint64_t)a : (uint64_t)a)", "Div": "moa_idiv(a, b)",
                   "Add": "((uint64_t)a + (uint64_t)b)", "Sub": "((uint64_t)a - (uint64_t)b)",
                   "Mul": "((uint64_t)a * (uint64_t)b)", "Neg": "(0 - (uint64_t)a)"}
_FLOAT_ONLY = {"Sqrt", "Reciprocal", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Floor", "Ceil", "Sin", "Cos", "Gelu",
               "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Sum", "Mean"}

VECTOR_BLOCK = 16  # elements: a whole number of vectors of every type on every ISA the boards have
# A loop over this many elements or more is lifted onto the run's worker pool (fewer: waking the
# threads would cost more than they save); a one-axis loop in chunks of LIFT_CHUNK elements.
LIFT_ELEMENTS = 1 << 15
LIFT_CHUNK = 1 << 12

_TORCH_DTYPES = {"float32": "float64", "bool": "bool", "int64": "int64", "int32": "int32", "float64": "float64",
                 "int8": "int8", "uint8": "uint8", "int16": "int16", "uint16": "int32", "uint32": "int64",
                 "uint64": "int64",  # torch computes little in its unsigned types: a wider signed one
                 "float16": "float64", "bfloat16": "float64"}  # halves are held as their float64 values
_TORCH_HALVES = {"float16": "float16", "bfloat16": "bfloat16"}
# The operand letters of the C expressions, and the loop's indices and values (i0.., d0..).
C_LOCALS = frozenset([*"abcdefgh", "c", "lo", *(f"{v}{k}" for v in ("i", "d") for k in range(16))])

_BOOLEAN = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not", "IsNaN", "IsInf"}
_ONNX_DTYPE = {r.onnx: r.name for r in map(dtypes.dtype, dtypes.HELD_DTYPES)}  # Cast's `to`


def infer(node, graph) -> list[TensorType]:
    """numpy broadcasting of the operands; comparisons and logic give bool, Cast its `to`,
    Where its branches' type, everything else its first operand's."""
    if node.op == "MoaElementwise":
        return _infer_fused(node, graph)
    operands = [graph.tensors[n] for n in node.inputs if n]
    shape = tuple(np.broadcast_shapes(*(tuple(t.shape) for t in operands)))
    if node.op == "Cast":
        to = node.attrs.get("to")
        return [TensorType(shape, _ONNX_DTYPE.get(to, f"onnx type {to}"))]
    if node.op in _BOOLEAN:
        return [TensorType(shape, "bool")]
    if node.op == "MoaQuantize":
        return [TensorType(shape, "int8")]
    return [TensorType(shape, operands[1 if node.op == "Where" else 0].dtype)]


def _infer_fused(node, graph) -> list[TensorType]:
    """The members' rules in order, from the fused node's operands."""
    body = node.attrs["body"]
    tensors = {**body.tensors, **{n: graph.tensors[n] for n in node.inputs if n}}
    scope = Graph(body.name, list(body.inputs), list(body.outputs), body.nodes, tensors, dict(body.opsets))
    for member in body.nodes:
        (made,) = infer(member, scope)
        tensors[member.outputs[0]] = Tensor(member.outputs[0], made.shape, made.dtype)
    out = tensors[node.outputs[0]]
    return [TensorType(tuple(out.shape), out.dtype)]


def op_cost(node, graph) -> OpCost:
    """One flop per output element and member; every operand moved once."""
    members = len(node.attrs["body"].nodes) if node.op == "MoaElementwise" else 1
    moved = operand_bytes(node, graph)
    return OpCost(graph.tensors[node.outputs[0]].size * members, moved.weight_bytes, moved.activation_bytes)


def literal(tensor) -> str | None:
    """A one-element constant as a C literal (fused loops inline them), or None."""
    if tensor.data is None or tensor.data.size != 1:
        return None
    value = tensor.data.reshape(())
    if tensor.dtype == "float32":
        text = c_float_short(value)
        return f"({text})" if text.startswith("-") else text  # `-a` of it must not read `--`
    if tensor.dtype in ("bool", "int32", "int64") and abs(int(value)) < 2 ** 31:
        return f"(({dtypes.dtype(tensor.dtype).c_type}){int(value)})"
    return None


def _evaluate_fused(node, inputs, graph) -> list[torch.Tensor]:
    """The members' own references, in order: the float64 result of the unfused ops."""
    body = node.attrs["body"]
    env = dict(zip(node.inputs, inputs))
    for name in body.inputs:
        if name not in env:  # an inlined scalar constant
            data = np.asarray(body.tensors[name].data)
            env[name] = torch.from_numpy(data.astype(np.float64) if data.dtype.kind == "f" else data.copy())
    for member in body.nodes:
        env[member.outputs[0]] = evaluate(member, [env[n] if n else None for n in member.inputs], body)[0]
    return [env[node.outputs[0]]]


def _small_cast(node, x: torch.Tensor, record) -> torch.Tensor:
    """Cast to a float8, float4 or small integer by ml_dtypes' conversion, as ONNX's reference casts
    (saturating floats clipped to the type's range first), held as float64 or int64 values."""
    x = x.numpy()
    if not record.is_float:
        return torch.from_numpy(x.astype(record.numpy).astype(np.int64))
    x = x.astype(np.float32)
    if record.name == "float8_e8m0fnu":
        return torch.from_numpy(onnx.numpy_helper.to_float8e8m0(x, bool(node.attrs.get("saturate", 1)),
                                                                _round_mode(node)).astype(np.float64))
    if node.attrs.get("saturate", 1):
        largest = float(ml_dtypes.finfo(record.numpy).max)
        x = np.where(np.isnan(x), x, np.clip(x, -largest, largest))
    return torch.from_numpy(x.astype(record.numpy).astype(np.float64))


def _integer_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C's truncating a / b, with moa_idiv's results where C has none: a / 0 = 0, a / -1 = -a
    (wrapping, so INT_MIN / -1 = INT_MIN)."""
    a, b = torch.broadcast_tensors(a, b)
    plain = torch.div(a, torch.where((b == 0) | (b == -1), torch.ones_like(b), b), rounding_mode="trunc")
    return torch.where(b == 0, torch.zeros_like(a), torch.where(b == -1, -a, plain))


def _fake_quantize(node, x, scale=None, low=None, high=None) -> torch.Tensor:
    """MoaFakeQuantize (passes/qdq.py: a QuantizeLinear -> DequantizeLinear pair): x / scale in
    float32, as the spec divides in the scale's type, rounded half to even onto low..high (the
    type's range less the zero point), times scale."""
    if scale is None:
        scale, low, high = (torch.tensor(node.attrs[k], dtype=torch.float64) for k in ("scale", "low", "high"))
    ratio = (x.to(torch.float32) / scale.to(torch.float32)).to(torch.float64)
    return (torch.clamp(torch.round(ratio), low, high) + 0.0) * scale  # + 0: no -0, as the spec's integers


def _quantize(node, x) -> torch.Tensor:
    """MoaQuantize (passes/qdq_attention.py: the QuantizeLinear of a pair whose DequantizeLinear an
    attention reads as int8 with its scale): MoaFakeQuantize's integers, x / scale in float32 rounded
    half to even onto low..high (within int8's range), held as float64 values; NaN gives 0, as in
    moa_quantize."""
    scale, low, high = (torch.tensor(node.attrs[k], dtype=torch.float64) for k in ("scale", "low", "high"))
    ratio = (x.to(torch.float32) / scale.to(torch.float32)).to(torch.float64)
    return torch.nan_to_num(torch.clamp(torch.round(ratio), low, high), nan=0.0) + 0.0


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    if node.op == "MoaElementwise":
        return _evaluate_fused(node, inputs, graph)
    if node.op == "MoaFakeQuantize":
        return [_fake_quantize(node, *inputs)]
    if node.op == "MoaQuantize":
        return [_quantize(node, *inputs)]
    if node.op == "Cast":
        target = graph.tensors[node.outputs[0]].dtype
        if target in dtypes.SMALL_DTYPES:
            return [_small_cast(node, inputs[0], dtypes.dtype(target))]
        if target in _TORCH_HALVES:  # rounded from float32, as the C rounds the float32 it computed
            return [inputs[0].to(torch.float32).to(getattr(torch, _TORCH_HALVES[target])).to(torch.float64)]
        return [inputs[0].to(getattr(torch, _TORCH_DTYPES[target]))]
    if node.op == "Gelu":
        return [_gelu_torch(node, inputs[0])]
    if node.op == "IsInf":
        a = inputs[0]
        return [((a == float("inf")) & bool(node.attrs.get("detect_positive", 1)))
                | ((a == float("-inf")) & bool(node.attrs.get("detect_negative", 1)))]
    if node.op == "Clip":
        lo, hi = (inputs + [None, None])[1:3]
        return [torch.clamp(inputs[0], lo, hi)]
    if node.op == "Div" and not inputs[0].is_floating_point() and inputs[0].dtype != torch.bool:
        return [_integer_div(*inputs)]
    if node.op in _BITWISE:
        return [_bitwise(node, inputs, graph)]
    if node.op in _VARIADIC:
        out = inputs[0]
        for other in inputs[1:]:
            out = getattr(torch, _TORCH[node.op])(out, other) if node.op in ("Max", "Min") else out + other
        return [out / len(inputs) if node.op == "Mean" else out]
    out = FORMULAS[node.op].torch(node, *inputs) if node.op in FORMULAS else getattr(torch, _TORCH[node.op])(*inputs)
    return [out.to(getattr(torch, _TORCH_DTYPES[graph.tensors[node.outputs[0]].dtype]))]


def _left(node) -> bool:
    return attribute_text(node.attrs.get("direction", "")).upper() == "LEFT"


def _shift_c(node, record) -> str:
    """A left shift in uint64_t (a promoted int16 would overflow), a right shift in the type (gcc's
    is arithmetic on a signed one); a shift out of 0..width-1 gives the sign's fill, as the spec."""
    signed = record.name.startswith("int")
    inside = f"b >= 0 && b < {8 * record.itemsize}" if signed else f"b < {8 * record.itemsize}"
    shifted = "(uint64_t)a << b" if _left(node) else "a >> b"
    fill = "(a < 0 ? -1 : 0)" if signed and not _left(node) else "0"
    return f"(({inside}) ? {shifted} : {fill})"


def _bitwise(node, inputs, graph) -> torch.Tensor:
    """The integer ops on the operands' own numpy types (the reference holds uint16..uint64 wider)."""
    held = dtypes.dtype(graph.tensors[node.outputs[0]].dtype).numpy
    a, *b = (x.numpy().astype(held) for x in inputs)
    if node.op != "BitShift":
        out = _BITWISE[node.op](a, *b)
    else:  # a shift by a negative amount or by the width or more: the sign's fill alone (-1 or 0)
        a, b = np.broadcast_arrays(a, *b)
        outside = (b < 0) | (b >= held.itemsize * 8)
        fill = np.where((a < 0) & (not _left(node)), -1, 0).astype(held)
        shift = np.left_shift if _left(node) else np.right_shift
        out = np.where(outside, fill, shift(a, np.where(outside, 0, b).astype(held)))
    return torch.from_numpy(np.asarray(out).astype(np.dtype(_TORCH_DTYPES[held.name]))).reshape(
        torch.broadcast_shapes(*(x.shape for x in inputs)))


_BITS = {"int4": 4, "uint4": 4, "int2": 2, "uint2": 2}


def _cast_c(node, source: str, target: str) -> str:
    """Cast's element. A type held in bits (a half, float8, float4, a 4- or 2-bit integer) is read
    as float32 or its integer value first; to a half, float8 or float4 a value rounds from float32
    (saturating as the attribute says); to a 4- or 2-bit integer a float goes towards zero and an
    integer wraps; to any other type, C's conversion (a float towards zero, as onnxruntime)."""
    source_record, target_record = dtypes.dtype(source), dtypes.dtype(target)
    if source in _BITS:
        value = f"moa_wrap_small_int(a, {_BITS[source]}, {int(source.startswith('int'))})"
    elif source in dtypes.CAST_ONLY_DTYPES:
        value = f"moa_{source_record.suffix}_to_f32(a)"
    else:
        value = "a"
    if target in dtypes.HALF_DTYPES:  # from float32 (an integer or bool converts to it first), rounded
        return f"moa_f32_to_{target_record.suffix}((float){value})"
    if target == "float8_e8m0fnu":
        mode = {"up": "MOA_ROUND_UP", "down": "MOA_ROUND_DOWN", "nearest": "MOA_ROUND_NEAREST"}[_round_mode(node)]
        return f"moa_f32_to_f8e8m0((float){value}, {int(node.attrs.get('saturate', 1))}, {mode})"
    if target_record.is_float and target in dtypes.SMALL_DTYPES:
        return f"moa_f32_to_{target_record.suffix}((float){value}, {int(node.attrs.get('saturate', 1))})"
    if target in _BITS:
        wrapped = (f"moa_f32_to_small_int((float){value}, " if source_record.is_float
                   else f"moa_wrap_small_int((int64_t){value}, ") + f"{_BITS[target]}, {int(target.startswith('int'))})"
        return f"({wrapped} & {(1 << _BITS[target]) - 1})"  # held in the low bits
    if target == "bool":
        return f"({value} != 0)"
    if source in dtypes.CAST_ONLY_DTYPES and target == "float32":
        return value  # widened exactly
    if source_record.is_float and not target_record.is_float:  # towards zero, as onnxruntime
        return _saturating_cast(value, target_record)
    return f"({target_record.c_type}){value}"


def _round_mode(node) -> str:
    """Cast's round_mode (opset 24: how a float8 e8m0 rounds), checked."""
    mode = attribute_text(node.attrs.get("round_mode", "up"))
    if mode not in ("up", "down", "nearest"):
        raise MoaEdgeError(f"Cast node {node.name!r}: round_mode {mode!r} is not up, down or nearest")
    return mode


def _saturating_cast(value: str, record) -> str:
    """A float to an integer type towards zero, NaN to 0 and values past the type's range to its
    ends: C's conversion of those is undefined. The bounds are powers of two, exact in any float."""
    bits, signed = 8 * record.itemsize, record.name.startswith("int")
    macro = record.c_type.removesuffix("_t").upper()
    high = f"{float(2 ** (bits - 1 if signed else bits))!r}"
    low, least = (f"{-float(2 ** (bits - 1))!r}", f"{macro}_MIN") if signed else ("-1.0", "0")
    return (f"(({value}) != ({value}) ? 0 : ({value}) >= {high} ? {macro}_MAX : ({value}) <= {low} ? {least} "
            f": ({record.c_type})({value}))")


def _expression(node, graph) -> tuple[str, list[str]]:
    """The C expression of one output element and the operands it reads (as a, b, c, ...)."""
    names = [n for n in node.inputs]
    if node.op == "Cast":
        return _cast_c(node, graph.tensors[names[0]].dtype, graph.tensors[node.outputs[0]].dtype), names[:1]
    halves = [n for n in [*names, *node.outputs] if n and graph.tensors[n].dtype in dtypes.CAST_ONLY_DTYPES]
    if halves:
        raise MoaEdgeError(f"{node.op} node {node.name!r}: {halves[0]!r} is {graph.tensors[halves[0]].dtype}; "
                           f"only Cast reads or writes it (the runtime computes in float32)")
    if node.op == "Gelu":
        return _gelu_c(node), names
    if node.op == "MoaFakeQuantize" and len(names) == 1:  # per tensor: scale and range are literals
        scale, low, high = (c_float_short(node.attrs[k]) for k in ("scale", "low", "high"))
        return f"moa_fake_quantize(a, {scale}, {low}, {high})", names
    if node.op == "MoaFakeQuantize":
        return "moa_fake_quantize(a, b, c, d)", names
    if node.op == "MoaQuantize":  # per tensor, onto integers within int8's range: the int8 value itself
        scale, low, high = (c_float_short(node.attrs[k]) for k in ("scale", "low", "high"))
        return f"moa_quantize(a, {scale}, {low}, {high})", names
    if node.op == "IsInf":
        sides = [f"a == {sign}INFINITY" for sign, attr in (("", "detect_positive"), ("-", "detect_negative"))
                 if node.attrs.get(attr, 1)]
        return "(" + (" || ".join(sides) or "0") + ")", names
    if node.op == "Clip" and not dtypes.dtype(graph.tensors[node.outputs[0]].dtype).is_float:
        lo = names[1] if len(names) > 1 and names[1] else ""
        hi = names[2] if len(names) > 2 and names[2] else ""
        low, high = ("(a < b ? b : a)", "c" if lo else "b") if lo else ("a", "b")
        expr = f"({low} > {high} ? {high} : {low})" if hi else low
        return expr, [names[0]] + [n for n in (lo, hi) if n]
    if node.op == "Clip":
        lo = names[1] if len(names) > 1 and names[1] else ""
        hi = names[2] if len(names) > 2 and names[2] else ""
        bound = {("", ""): "a", ("x", ""): "moa_max(a, b)", ("", "x"): "moa_min(a, b)", ("x", "x"): "moa_clip(a, b, c)"}
        return bound[("x" if lo else "", "x" if hi else "")], [names[0]] + [n for n in (lo, hi) if n]
    out_dtype = graph.tensors[node.outputs[0]].dtype
    if node.op in _BITWISE:
        dtypes.require_dtypes(node, graph, allowed=tuple(n for n in dtypes.RUNTIME_DTYPES
                                                          if n.startswith(("int", "uint"))), names=node.outputs)
    if node.op == "BitShift":
        return _shift_c(node, dtypes.dtype(out_dtype)), names
    if node.op == "Abs" and out_dtype.startswith("uint"):
        return "a", names  # (a < 0 on an unsigned type is a warning, and always false)
    if not dtypes.dtype(out_dtype).is_float and node.op in _INTEGER_C_EXPR:
        return _INTEGER_C_EXPR[node.op], names  # integers must not round-trip through float
    if node.op in _FLOAT_ONLY:
        dtypes.require_dtypes(node, graph, allowed=("float32", "float64"), names=node.outputs)
    floating = dtypes.dtype(out_dtype).is_float
    if node.op in FORMULAS:
        return FORMULAS[node.op].c(node, floating), names
    if node.op in ("Sum", "Mean"):
        total = " + ".join("abcdefgh"[:len(names)])
        return (f"(({total}) / {len(names)}.0f)" if node.op == "Mean" else f"({total})"), names
    if node.op in ("Max", "Min"):
        # Floats propagate NaN (moa_max/moa_min); integers compare plainly.
        pick = (lambda x, y: f"moa_{node.op.lower()}({x}, {y})") if floating else (
            lambda x, y: f"({x} {'>' if node.op == 'Max' else '<'} {y} ? {x} : {y})")
        expr = "a"
        for letter in "bcdefgh"[:len(names) - 1]:
            expr = pick(expr, letter)
        return expr, names
    return _C_EXPR[node.op], names


def _broadcast_layout(shape, out_shape) -> Layout:
    shape = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    return Layout.row_major(shape).broadcast_to(tuple(out_shape))


def _merged_axes(out_shape, layouts: list[Layout]):
    """(extents, per-operand strides) with neighbouring axes merged wherever every operand
    (the output included) steps through them as one."""
    extents = [n for n in out_shape]
    strides = [list(lay.strides) for lay in layouts]
    axis = len(extents) - 2
    while axis >= 0:
        if all(s[axis] == s[axis + 1] * extents[axis + 1] for s in strides):
            extents[axis] *= extents[axis + 1]
            del extents[axis + 1]
            for s in strides:
                s[axis] = s[axis + 1]
                del s[axis + 1]
        axis -= 1
    return extents, strides


def _loop(node, graph, title: str, where: dict, loads: list[str], statements, lift=None) -> str:
    """One loop over the elements of node's output: load each operand through its broadcast
    map, run `statements(values)` (C lines, values naming each load's local), store the last.
    With `lift` (EmitContext.lift) and enough elements, the outermost axis (one axis: its chunks)
    is lifted onto the run's worker pool; each element is computed alike on every thread."""
    out = node.outputs[0]
    out_shape = graph.tensors[out].shape
    for name in loads:
        if graph.tensors[name].dtype not in dtypes.HELD_DTYPES:
            raise MoaEdgeError(f"{node.op} node {node.name!r}: input {name!r} is {graph.tensors[name].dtype}")
    layouts = [Layout.row_major(out_shape)] + [_broadcast_layout(graph.tensors[n].shape, out_shape) for n in loads]
    extents, strides = _merged_axes(out_shape, layouts)
    idx = [f"i{k}" for k in range(len(extents))] or ["i0"]
    extents = extents or [1]
    strides = [s or [0] for s in strides]

    def at(buffer: str, stride) -> str:
        offset = " + ".join(f"{v} * {s}" if s != 1 else v for v, s in zip(idx, stride) if s) or "0"
        return f"{buffer}[{offset}]"

    inner = []
    values = {}
    for k, (name, stride) in enumerate(zip(loads, strides[1:])):
        values[name] = f"d{k}"
        inner.append(f"const {dtypes.dtype(graph.tensors[name].dtype).c_type} d{k} = {at(where[name], stride)};")
    *computed, result = statements(values)
    inner += computed + [f"{at(where[out], strides[0])} = {result};"]

    # The innermost loop runs to a multiple of VECTOR_BLOCK, then the rest: gcc -O2 vectorises
    # only a loop whose trip count the vector width divides (no epilogue at its cheap cost model).
    *outer, (last, n) = list(zip(idx, extents))
    lifted = lift is not None and math.prod(extents) >= LIFT_ELEMENTS
    if lifted and not outer:  # one axis: chunks of LIFT_CHUNK elements are the items
        chunks = -(-n // LIFT_CHUNK)
        lines = [f"    {{ /* {title}, in chunks of {LIFT_CHUNK} lifted onto the pool */", "        ptrdiff_t c, i0;",
                 "        for (c = (ptrdiff_t)first; c < (ptrdiff_t)end; c++) {",
                 f"            const ptrdiff_t lo = c * {LIFT_CHUNK};",
                 f"            if (lo + {LIFT_CHUNK} <= {n}) {{",
                 f"                for (i0 = lo; i0 < lo + {LIFT_CHUNK}; i0++) {{",
                 *("                    " + line for line in inner), "                }",
                 "            } else {", f"                for (i0 = lo; i0 < {n}; i0++) {{",
                 *("                    " + line for line in inner), "                }", "            }",
                 "        }", "    }"]
        return lift(chunks, lines)
    whole = n - n % VECTOR_BLOCK
    ranges = [(0, whole), (whole, n)] if whole and whole != n else [(0, n)]
    lines = [f"    {{ /* {title}{', its first axis lifted onto the pool' if lifted else ''} */",
             f"        ptrdiff_t {', '.join(idx)};"]
    for depth, (v, extent) in enumerate(outer):
        start, stop = ("(ptrdiff_t)first", "(ptrdiff_t)end") if lifted and depth == 0 else ("0", extent)
        lines.append("        " + "    " * depth + f"for ({v} = {start}; {v} < {stop}; {v}++) {{")
    pad = "        " + "    " * len(outer)
    for start, stop in ranges:
        lines.append(pad + f"for ({last} = {start}; {last} < {stop}; {last}++) {{")
        lines += [pad + "    " + line for line in inner]
        lines.append(pad + "}")
    for depth in reversed(range(len(outer))):
        lines.append("        " + "    " * depth + "}")
    lines.append("    }")
    return lift(outer[0][1], lines) if lifted else "\n".join(lines) + "\n"


def _value(node, graph):
    """(the operands one op reads, values -> the C expression of its element), `values`
    naming each operand's local or literal."""
    expr, names = _expression(node, graph)
    ctype = dtypes.dtype(graph.tensors[node.outputs[0]].dtype).c_type

    def value(values: dict) -> str:
        return f"({ctype})(" + re.sub(r"\b[a-h]\b", lambda m: values[names["abcdefgh".index(m.group())]], expr) + ")"
    return names, value


def emit(node, ctx):
    graph = ctx.graph
    if node.op != "MoaElementwise":
        names, value = _value(node, graph)
        call = _loop(node, graph, f"{c_comment_text(node.name)}: {node.op}", ctx.where, list(dict.fromkeys(names)),
                     lambda values: [value(values)], ctx.lift)
        return EmittedUnit(call, declarations=_headers([node], graph))

    body = node.attrs["body"]
    members = [(m, _value(m, body)[1]) for m in body.nodes]

    def statements(values: dict) -> list[str]:
        """One local per member (d<loads + k>), each from the values before it; the last is stored."""
        values = {**values, **{n: literal(body.tensors[n]) for n in body.inputs if n not in values}}
        lines = []
        for k, (m, value) in enumerate(members):
            local = f"d{len(node.inputs) + k}"
            ctype = dtypes.dtype(body.tensors[m.outputs[0]].dtype).c_type
            lines.append(f"const {ctype} {local} = {value(values)}; /* {c_comment_text(m.name)}: {m.op} */")
            values[m.outputs[0]] = local
        return lines + [values[node.outputs[0]]]

    title = f"{c_comment_text(node.name)}: " + " -> ".join(m.op for m in body.nodes) + " in one loop"
    return EmittedUnit(_loop(node, graph, title, ctx.where, node.inputs, statements, ctx.lift),
                       declarations=_headers(body.nodes, body))


def _headers(members, graph: Graph) -> list[str]:
    """elementwise.h, and half.h or small_types.h when a member converts a type they hold."""
    held = {graph.tensors[n].dtype for m in members for n in [*m.inputs, *m.outputs] if n}
    return [HEADER] + ([HALF_HEADER] if held & set(dtypes.HALF_DTYPES) else []) + (
        [SMALL_HEADER] if held & set(dtypes.SMALL_DTYPES) else [])
