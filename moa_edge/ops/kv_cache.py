"""MoaKvWrite: a chunk of new keys (or values) written in place into a layer's cache.

The cache (B, H, max_context, D) lives in the caller's state buffer, not the arena; the run
function's `position` says how many rows already hold earlier tokens, and the chunk's C rows
go to rows position .. position + C - 1. The step entry point refuses a chunk that would pass
max_context before anything runs, so the copy here never leaves the cache.

The output is the whole cache; attention reads only its first position + C rows (the key
lengths input). As a pure function (evaluate), the specialised graph's view: the rows before
the chunk are an all-zero past of max_context - C rows, the chunk the last C rows.
"""
from __future__ import annotations

import torch

from moa_edge.ir.c_syntax import c_comment_text

from .contract import EmittedUnit, OpCost, TensorType

OPS = ("MoaKvWrite",)
C_SOURCES: list[str] = []
POSITION = "position"  # the run function's count of cached tokens (codegen declares it)
C_LOCALS = frozenset({POSITION})


def infer(node, graph) -> list[TensorType]:
    new = graph.tensors[node.inputs[0]]
    batch, heads, _, dim = new.shape
    return [TensorType((batch, heads, node.attrs["max_context"], dim), new.dtype)]


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    new = inputs[0]
    batch, heads, chunk, dim = new.shape
    cache = torch.zeros((batch, heads, node.attrs["max_context"], dim), dtype=new.dtype)
    cache[:, :, -chunk:, :] = new
    return [cache]


def op_cost(node, graph) -> OpCost:
    return OpCost(0, 0, 2 * graph.tensors[node.inputs[0]].nbytes)  # the chunk read and written once


def emit(node, ctx) -> EmittedUnit:
    batch, heads, chunk, dim = ctx.graph.tensors[node.inputs[0]].shape
    rows = node.attrs["max_context"]
    new, cache = ctx.where[node.inputs[0]], ctx.where[node.outputs[0]]
    return EmittedUnit(
        f"    {{ /* {c_comment_text(node.name)}: {chunk} new rows into the cache at row {POSITION} */\n"
        f"        ptrdiff_t bh, r;\n"
        f"        for (bh = 0; bh < {batch * heads}; bh++)\n"
        f"            for (r = 0; r < {chunk * dim}; r++)\n"
        f"                {cache}[(bh * {rows} + (ptrdiff_t){POSITION}) * {dim} + r] = {new}[bh * {chunk * dim} + r];\n"
        f"    }}\n")
