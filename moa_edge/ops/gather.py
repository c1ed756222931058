"""Gather: rows of a table picked by run-time indices (the token embedding lookup).

out[o, i, r] = data[o, wrap(idx[i]), r] over (outer, indices, inner) = (data.shape[:axis],
indices.shape, data.shape[axis+1:]); a negative index counts from the end, as ONNX says, and
one outside the axis stops the model with MOA_ERR_INDEX_OUT_OF_RANGE rather than read past it.
"""
from __future__ import annotations

import math

from moa_edge.lazy import torch

from moa_edge.ir.c_syntax import c_comment_text

from .contract import EmittedUnit, TensorType

OPS = ("Gather",)
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"Gather": 13}
C_SOURCES: list[str] = []
C_LOCALS = frozenset({"o", "i", "r", "row"})  # its loop's indices and the wrapped row


def _axis(node, graph) -> int:
    return node.attrs.get("axis", 0) % len(graph.tensors[node.inputs[0]].shape)


def infer(node, graph) -> list[TensorType]:
    """data.shape[:axis] + indices.shape + data.shape[axis + 1:], of data's dtype."""
    data, indices = graph.tensors[node.inputs[0]], graph.tensors[node.inputs[1]]
    axis = _axis(node, graph)
    return [TensorType(tuple(data.shape[:axis]) + tuple(indices.shape) + tuple(data.shape[axis + 1:]), data.dtype)]


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    data, indices = inputs
    axis = _axis(node, graph)
    wrapped = torch.where(indices < 0, indices + data.shape[axis], indices).long()
    picked = torch.index_select(data, axis, wrapped.reshape(-1))
    shape = data.shape[:axis] + indices.shape + data.shape[axis + 1:]
    return [picked.reshape(shape)]


def emit(node, ctx):
    graph = ctx.graph
    data_shape = graph.tensors[node.inputs[0]].shape
    axis = _axis(node, graph)
    outer, extent = math.prod(data_shape[:axis]), data_shape[axis]
    inner, count = math.prod(data_shape[axis + 1:]), graph.tensors[node.inputs[1]].size
    data, idx, out = (ctx.where[n] for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    return EmittedUnit(
        f"    {{ /* {c_comment_text(node.name)}: Gather along axis {axis} */\n"
        f"        ptrdiff_t o, i, r;\n"
        f"        for (o = 0; o < {outer}; o++) {{\n"
        f"            for (i = 0; i < {count}; i++) {{\n"
        f"                const ptrdiff_t row = {idx}[i] < 0 ? (ptrdiff_t){idx}[i] + {extent} : (ptrdiff_t){idx}[i];\n"
        f"                if (MOA_UNLIKELY(row < 0 || row >= {extent})) {{ return MOA_ERR_INDEX_OUT_OF_RANGE; }}\n"
        f"                for (r = 0; r < {inner}; r++) {{\n"
        f"                    {out}[(o * {count} + i) * {inner} + r] = {data}[(o * {extent} + row) * {inner} + r];\n"
        f"                }}\n"
        f"            }}\n"
        f"        }}\n"
        f"    }}\n")
