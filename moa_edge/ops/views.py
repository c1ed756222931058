"""Reshape, Squeeze, Unsqueeze and Flatten: the same elements in the same order, seen with
another shape. The output aliases the input's storage (the planner gives it no buffer of
its own); only where the output is a caller-owned graph output is there a copy."""
from __future__ import annotations

import math

import numpy as np
from moa_edge.lazy import torch

from moa_edge.ir.c_syntax import c_comment_text

from .contract import EmittedUnit, OpCost, TensorType

OPS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"Reshape": 25, "Squeeze": 25, "Unsqueeze": 25, "Flatten": 25}
C_SOURCES: list[str] = []
ALIASES = True
C_LOCALS = frozenset({"n"})  # the copy loop's index


def _axes(node, graph) -> list[int] | None:
    """Squeeze's and Unsqueeze's axes: the second input (opset 13) or the attribute; None when
    the input is computed at run time."""
    if len(node.inputs) > 1 and node.inputs[1]:
        axes = graph.constant(node.inputs[1])
        return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    return list(node.attrs.get("axes", []))


def _shape(node, graph) -> tuple[int, ...] | None:
    x = tuple(graph.tensors[node.inputs[0]].shape)
    if node.op == "Flatten":
        axis = node.attrs.get("axis", 1)
        axis += len(x) if axis < 0 else 0
        return (math.prod(x[:axis]), math.prod(x[axis:]))
    if node.op == "Reshape":
        target = graph.constant(node.inputs[1])
        if target is None:
            return None
        target = [int(d) for d in np.asarray(target).reshape(-1)]
        if not node.attrs.get("allowzero", 0):  # 0 copies the input's extent there
            target = [x[k] if d == 0 else d for k, d in enumerate(target)]
        if -1 in target:
            known = math.prod(d for d in target if d != -1)
            target[target.index(-1)] = math.prod(x) // known if known else 0
        return tuple(target)
    axes = _axes(node, graph)
    if axes is None:
        return None
    if node.op == "Squeeze":
        drop = {a % len(x) for a in axes} if axes else {k for k, d in enumerate(x) if d == 1}
        return tuple(d for k, d in enumerate(x) if k not in drop)
    rank = len(x) + len(axes)
    added = {a % rank for a in axes}
    rest = iter(x)
    return tuple(1 if k in added else next(rest) for k in range(rank))


def infer(node, graph) -> list[TensorType]:
    """The same elements seen with the shape the node asks for; the input's dtype."""
    return [TensorType(_shape(node, graph), graph.tensors[node.inputs[0]].dtype)]


def op_cost(node, graph) -> OpCost:
    """A view moves nothing (the copy into a caller's output is not counted)."""
    return OpCost(0, 0, 0)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    return [inputs[0].reshape(graph.tensors[node.outputs[0]].shape)]


def emit(node, ctx):
    """Only called when the output is the caller's buffer: copy the elements into it."""
    source, out = node.inputs[0], node.outputs[0]
    count = ctx.graph.tensors[out].size
    return EmittedUnit(f"    {{ /* {c_comment_text(node.name)}: {node.op} into the caller's output */\n"
                       f"        ptrdiff_t n;\n"
                       f"        for (n = 0; n < {count}; n++) {{ {ctx.where[out]}[n] = {ctx.where[source]}[n]; }}\n"
                       f"    }}\n")
