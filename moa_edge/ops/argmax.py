"""ArgMax and ArgMin: the index of the largest (smallest) element along one axis, as int64, by
moa_arg_extreme_f32 (c_runtime/src/reductions.c) over x seen as outer x n x inner.

select_last_index picks the last of equal extremes instead of the first; a NaN counts as the
extreme, as numpy's argmax and argmin take the first NaN."""
from __future__ import annotations

import math

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text
from moa_edge.lazy import torch

from .contract import EmittedUnit, OpCost, TensorType, check_status, operand_bytes

OPS = ("ArgMax", "ArgMin")
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"ArgMax": 13, "ArgMin": 13}
C_SOURCES = ["reductions.c"]
DECLARATIONS = ['#include "moa/reductions.h"\n']


def _axis(node, rank: int) -> int:
    axis = int(node.attrs.get("axis", 0))
    if not -rank <= axis < max(rank, 1):
        raise MoaEdgeError(f"{node.op} node {node.name!r}: axis {axis} is outside a rank-{rank} input")
    return axis % max(rank, 1)


def infer(node, graph) -> list[TensorType]:
    x = graph.tensors[node.inputs[0]]
    axis = _axis(node, len(x.shape))
    keep = bool(node.attrs.get("keepdims", 1))
    return [TensorType(tuple(1 if k == axis else d for k, d in enumerate(x.shape) if keep or k != axis), "int64")]


def op_cost(node, graph) -> OpCost:
    moved = operand_bytes(node, graph)
    return OpCost(graph.tensors[node.inputs[0]].size, moved.weight_bytes, moved.activation_bytes)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    x = inputs[0]
    axis = _axis(node, x.dim())
    keep = bool(node.attrs.get("keepdims", 1))
    if node.attrs.get("select_last_index", 0):  # the first extreme of the reversed axis, counted from the end
        flipped = x.flip(axis)
        index = (flipped.argmax if node.op == "ArgMax" else flipped.argmin)(dim=axis, keepdim=keep)
        return [x.shape[axis] - 1 - index]
    return [(x.argmax if node.op == "ArgMax" else x.argmin)(dim=axis, keepdim=keep)]


def emit(node, ctx) -> EmittedUnit:
    graph = ctx.graph
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    dtypes.require_dtypes(node, graph, names=[x.name])
    axis = _axis(node, len(x.shape))
    shape = tuple(x.shape) or (1,)
    outer, n, inner = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    call = (f"moa_arg_extreme_f32({ctx.where[x.name]}, {ctx.where[y.name]}, {outer}u, {n}u, {inner}u, "
            f"{int(node.op == 'ArgMax')}, {int(bool(node.attrs.get('select_last_index', 0)))})")
    return EmittedUnit(f"    /* {c_comment_text(node.name)}: {node.op} over axis {axis} of {list(x.shape)} */\n"
                       + check_status(call), declarations=DECLARATIONS)
