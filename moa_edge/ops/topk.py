"""TopK: the k largest (or smallest) elements along one axis, and their int64 indices.

x is seen as outer x n x inner; for each (outer, inner) line the outputs hold the best k met so
far in order, and each element j = 0 .. n-1 is inserted into them (an insertion sort cut at k):
it passes an entry only when strictly better, so of equal values the lower index comes first,
as the spec says. A NaN counts as the largest element (last when smallest), as torch's sort
puts it. The outputs are always sorted (sorted=0 leaves the order free). k must be a constant
(the output shapes are static) and at most the axis's extent.
"""
from __future__ import annotations

import math
import re

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text
from moa_edge.lazy import torch

from .contract import EmittedUnit, OpCost, TensorType, operand_bytes

OPS = ("TopK",)
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"TopK": 24}
C_SOURCES: list[str] = []
C_LOCALS = frozenset({"o", "r", "j", "slot", "filled", "v", "line"})


def _axis(node, rank: int) -> int:
    axis = int(node.attrs.get("axis", -1))
    if not -rank <= axis < rank:
        raise MoaEdgeError(f"TopK node {node.name!r}: axis {axis} is outside a rank-{rank} input")
    return axis % rank


def _k(node, graph) -> int | None:
    value = graph.constant(node.inputs[1])
    return None if value is None else int(value.reshape(-1)[0])


def infer(node, graph) -> list[TensorType]:
    """x's shape with k along the axis: the values in x's dtype, the indices int64."""
    x = graph.tensors[node.inputs[0]]
    axis, k = _axis(node, len(x.shape)), _k(node, graph)
    shape = None if k is None else tuple(k if a == axis else d for a, d in enumerate(x.shape))
    return [TensorType(shape, x.dtype), TensorType(shape, "int64")]


def op_cost(node, graph) -> OpCost:
    """About n * k comparisons per line."""
    moved = operand_bytes(node, graph)
    k = _k(node, graph) or 0
    return OpCost(graph.tensors[node.inputs[0]].size * k, moved.weight_bytes, moved.activation_bytes)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    """A stable sort along the axis (equal values keep their order), cut at k."""
    x = inputs[0]
    axis, k = _axis(node, x.dim()), int(inputs[1].reshape(-1)[0])
    if not 0 <= k <= x.shape[axis]:
        raise MoaEdgeError(f"TopK node {node.name!r}: k {k} is outside [0, {x.shape[axis]}]")
    largest = bool(node.attrs.get("largest", 1))
    values, indices = torch.sort(x, dim=axis, descending=largest, stable=True)
    return [values.narrow(axis, 0, k), indices.narrow(axis, 0, k)]


def _better(node, floating: bool, v: str, w: str) -> str:
    """C: value v goes before value w."""
    if not node.attrs.get("largest", 1):
        return f"({v} < {w}{f' || ({w} != {w} && {v} == {v})' if floating else ''})"
    return f"({v} > {w}{f' || ({v} != {v} && {w} == {w})' if floating else ''})"


def emit(node, ctx) -> EmittedUnit:
    graph = ctx.graph
    x = graph.tensors[node.inputs[0]]
    dtypes.require_dtypes(node, graph, dtypes.RUNTIME_DTYPES, names=[x.name])
    axis, k = _axis(node, len(x.shape)), _k(node, graph)
    if k is None:
        raise MoaEdgeError(f"TopK node {node.name!r}: k ({node.inputs[1]!r}) is computed at run time; "
                           f"moa-edge needs a constant k (static output shapes)")
    n = x.shape[axis]
    if not 0 <= k <= n:
        raise MoaEdgeError(f"TopK node {node.name!r}: k {k} is outside [0, {n}]")
    outer, inner = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
    where = {name: ctx.where[name] for name in [node.inputs[0], *node.outputs] if name}
    for name, expr in where.items():
        if set(re.findall(r"[A-Za-z_]\w*", expr)) & C_LOCALS:
            raise MoaEdgeError(f"TopK node {node.name!r}: the C name of tensor {name!r} ({expr}) collides with "
                               f"a local of the generated loop; rename the tensor")
    src = where[node.inputs[0]]
    values = where.get(node.outputs[0])
    indices = where.get(node.outputs[1]) if len(node.outputs) > 1 else None
    if values is None or indices is None:  # both are written: the values are what later elements compare with
        raise MoaEdgeError(f"TopK node {node.name!r}: both outputs (values and indices) must be kept")
    if k == 0 or outer * inner == 0:
        return EmittedUnit(f"    /* {c_comment_text(node.name)}: TopK with k = 0: nothing to write */\n")
    ctype = dtypes.dtype(x.dtype).c_type
    floating = x.dtype in ("float32", "float64")
    slot, before, last = (f"line + {at}" for at in (f"slot * {inner}", f"(slot - 1) * {inner}", (k - 1) * inner))
    direction = "largest" if node.attrs.get("largest", 1) else "smallest"
    lines = [
        f"    {{ /* {c_comment_text(node.name)}: TopK, the {k} {direction} of {n} along axis {axis}, sorted */",
        "        ptrdiff_t o, r, j, slot, filled;",
        f"        for (o = 0; o < {outer}; o++) {{",
        f"            for (r = 0; r < {inner}; r++) {{",
        f"                const ptrdiff_t line = o * {k * inner} + r;  /* the outputs' entry 0 of this line */",
        "                filled = 0;",
        f"                for (j = 0; j < {n}; j++) {{",
        f"                    const {ctype} v = {src}[(o * {n} + j) * {inner} + r];",
        f"                    if (filled == {k} && !{_better(node, floating, 'v', f'{values}[{last}]')}) {{",
        "                        continue;  /* not among the best k so far */",
        "                    }",
        f"                    slot = filled < {k} ? filled++ : {k - 1};",
        "                    /* move the worse entries down one place; an equal one stays ahead */",
        f"                    while (slot > 0 && {_better(node, floating, 'v', f'{values}[{before}]')}) {{",
        f"                        {values}[{slot}] = {values}[{before}];",
        f"                        {indices}[{slot}] = {indices}[{before}];",
        "                        slot--;",
        "                    }",
        f"                    {values}[{slot}] = v;",
        f"                    {indices}[{slot}] = (int64_t)j;",
        "                }", "            }", "        }", "    }"]
    return EmittedUnit("\n".join(lines) + "\n")
