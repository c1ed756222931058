"""Element-wise ops: y[i] = f(a[i], b[i], ...) with numpy broadcasting.

Every operand is read through a broadcast access map (stride 0 on a broadcast axis), so
no operand is ever expanded in memory; axes that every operand walks contiguously are
merged, so the common same-shape case is a single flat loop. Each op is one C expression
(the scalar function, from <math.h> or moa/elementwise.h) and one torch function for the
float64 reference.
"""
from __future__ import annotations

import torch

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import DTYPES
from moa_edge.moa import Layout

C_SOURCES: list[str] = []
IN_PLACE = True  # element i of the output is written after element i of each same-shape input is read
HEADER = '#include "moa/elementwise.h"'


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
    "Erf": "erff(a)", "Tanh": "tanhf(a)", "Sigmoid": "moa_sigmoid(a)", "Relu": "(a < 0 ? 0 : a)",
    "Abs": "fabsf(a)", "Floor": "floorf(a)", "Ceil": "ceilf(a)", "Sin": "sinf(a)", "Cos": "cosf(a)",
    "Where": "(a ? b : c)", "Equal": "(a == b)", "Less": "(a < b)", "Greater": "(a > b)",
    "LessOrEqual": "(a <= b)", "GreaterOrEqual": "(a >= b)", "And": "(a && b)", "Or": "(a || b)",
    "Xor": "(!a != !b)", "Not": "!a", "IsNaN": "(a != a)",
    "Max": "moa_max(a, b)", "Min": "moa_min(a, b)", "Clip": "moa_clip(a, b, c)",
}
_TORCH = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow,
    "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal, "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log,
    "Erf": torch.erf, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Abs": torch.abs,
    "Floor": torch.floor, "Ceil": torch.ceil, "Sin": torch.sin, "Cos": torch.cos, "Where": torch.where,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
    "Not": torch.logical_not, "IsNaN": torch.isnan, "Max": torch.maximum,
    "Min": torch.minimum, "Clip": lambda a, lo, hi: torch.clamp(a, lo, hi),
}
OPS = tuple(_C_EXPR) + ("Gelu", "Cast", "IsInf")
# Integer forms of the ops whose float form would round (|x| > 2^24) or not compile.
_INTEGER_C_EXPR = {"Pow": "moa_ipow(a, b)", "Abs": "(a < 0 ? -a : a)"}
_FLOAT_ONLY = {"Sqrt", "Reciprocal", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Floor", "Ceil", "Sin", "Cos", "Gelu"}

_TORCH_DTYPES = {"float32": torch.float64, "bool": torch.bool, "int64": torch.int64, "int32": torch.int32}


def scratch_bytes(node, graph=None) -> int:
    return 0


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    if node.op == "Cast":
        return [inputs[0].to(_TORCH_DTYPES[graph.tensors[node.outputs[0]].dtype])]
    if node.op == "Gelu":
        return [_gelu_torch(node, inputs[0])]
    if node.op == "IsInf":
        a = inputs[0]
        return [((a == float("inf")) & bool(node.attrs.get("detect_positive", 1)))
                | ((a == float("-inf")) & bool(node.attrs.get("detect_negative", 1)))]
    if node.op == "Clip":
        lo, hi = (inputs + [None, None])[1:3]
        return [torch.clamp(inputs[0], lo, hi)]
    if node.op in ("Max", "Min") and len(inputs) > 2:
        out = inputs[0]
        for other in inputs[1:]:
            out = _TORCH[node.op](out, other)
        return [out]
    out = _TORCH[node.op](*inputs)
    return [out.to(_TORCH_DTYPES[graph.tensors[node.outputs[0]].dtype])]


def _expression(node, graph) -> tuple[str, list[str]]:
    """The C expression of one output element and the operands it reads (as a, b, c, ...)."""
    names = [n for n in node.inputs]
    if node.op == "Cast":
        target = graph.tensors[node.outputs[0]].dtype
        if target == "bool":
            return "(a != 0)", names[:1]
        return f"({DTYPES[target][1]})a", names[:1]  # float to integer: towards zero, as C and onnxruntime
    if node.op == "Gelu":
        return _gelu_c(node), names
    if node.op == "IsInf":
        sides = [f"a == {sign}INFINITY" for sign, attr in (("", "detect_positive"), ("-", "detect_negative"))
                 if node.attrs.get(attr, 1)]
        return "(" + (" || ".join(sides) or "0") + ")", names
    if node.op == "Clip" and graph.tensors[node.outputs[0]].dtype != "float32":
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
    if out_dtype != "float32" and node.op in _INTEGER_C_EXPR:
        return _INTEGER_C_EXPR[node.op], names  # integers must not round-trip through float
    if out_dtype != "float32" and node.op in _FLOAT_ONLY:
        raise MoaEdgeError(f"{node.op} node {node.name!r}: {out_dtype} operands are not supported (float32 only)")
    if node.op in ("Max", "Min"):
        # Floats propagate NaN (moa_max/moa_min); integers compare plainly.
        floating = graph.tensors[node.outputs[0]].dtype == "float32"
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


def emit(node, ctx):
    from . import EmittedUnit
    graph = ctx.graph
    out = node.outputs[0]
    out_shape = graph.tensors[out].shape
    expr, names = _expression(node, graph)
    for name in names:
        if graph.tensors[name].dtype not in DTYPES:
            raise MoaEdgeError(f"{node.op} node {node.name!r}: input {name!r} is {graph.tensors[name].dtype}")
    layouts = [Layout.row_major(out_shape)] + [_broadcast_layout(graph.tensors[n].shape, out_shape) for n in names]
    extents, strides = _merged_axes(out_shape, layouts)
    idx = [f"i{k}" for k in range(len(extents))] or ["i0"]
    extents = extents or [1]
    strides = [s or [0] for s in strides]

    def at(buffer: str, stride) -> str:
        offset = " + ".join(f"{v} * {s}" if s != 1 else v for v, s in zip(idx, stride) if s) or "0"
        return f"{buffer}[{offset}]"

    ctype = DTYPES[graph.tensors[out].dtype][1]
    lines = [f"    {{ /* {node.name}: {node.op} */", f"        ptrdiff_t {', '.join(idx)};"]
    for depth, (v, n) in enumerate(zip(idx, extents)):
        lines.append("        " + "    " * depth + f"for ({v} = 0; {v} < {n}; {v}++) {{")
    body = "        " + "    " * len(idx)
    operands = []
    for letter, name, stride in zip("abcdefgh", names, strides[1:]):
        operands.append(f"const {DTYPES[graph.tensors[name].dtype][1]} {letter} = {at(ctx.where[name], stride)};")
    lines += [body + o for o in operands]
    lines.append(body + f"{at(ctx.where[out], strides[0])} = ({ctype})({expr});")
    for depth in reversed(range(len(idx))):
        lines.append("        " + "    " * depth + "}")
    lines.append("    }")
    return EmittedUnit("\n".join(lines) + "\n", declarations=[HEADER])

