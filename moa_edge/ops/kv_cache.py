"""MoaKvWrite: a chunk of new keys (or values) written in place into a layer's cache.

The cache (B, H, max_context, D) lives in the caller's state buffer, not the arena; the run
function's `position` says how many rows already hold earlier tokens, and the chunk's C rows
go to rows position .. position + C - 1. The step entry point refuses a chunk that would pass
max_context before anything runs, so the copy here never leaves the cache.

The output is the whole cache; attention reads only its first position + C rows (the key
lengths input). As a pure function (evaluate), the specialised graph's view: the rows before
the chunk are an all-zero past of max_context - C rows, the chunk the last C rows.

With kv_dtype "int8" (convert --kv-cache int8) the cache is int8 and a second output holds one
float32 scale per row, (B, H, max_context): each new row is quantized as it is written
(moa_attn_quantize_s8: scale = max|x| / 127, q = x / scale rounded to nearest, ties to even).
With kv_dtype "float16" (convert --kv-cache fp16) the cache holds IEEE halves (uint16_t bits) and
there is no second output: each new value is rounded to the nearest half, ties to even, as it is
written (moa_attn_round_f16, moa/half.h).
"""
from __future__ import annotations

from moa_edge.lazy import torch

from moa_edge.ir.c_syntax import c_comment_text

from .contract import EmittedUnit, OpCost, TensorType

OPS = ("MoaKvWrite",)
C_SOURCES: list[str] = ["attention_f32.c"]  # moa_attn_quantize_s8 and moa_attn_round_f16, for a reduced cache
POSITION = "position"  # the run function's count of cached tokens (codegen declares it)
C_LOCALS = frozenset({POSITION})


# moa/attention.h's, repeated in the generated attention.h, which model.c includes.
QUANTIZE_DECLARATION = "void moa_attn_quantize_s8(size_t n, const float *x, int8_t *q, float *scale);\n"
ROUND_DECLARATION = "void moa_attn_round_f16(size_t n, const float *x, uint16_t *h);\n"


def _quantized(node) -> bool:
    return node.attrs.get("kv_dtype", "float32") == "int8"


def _halves(node) -> bool:
    return node.attrs.get("kv_dtype", "float32") == "float16"


def infer(node, graph) -> list[TensorType]:
    new = graph.tensors[node.inputs[0]]
    batch, heads, _, dim = new.shape
    rows = node.attrs["max_context"]
    if _quantized(node):
        return [TensorType((batch, heads, rows, dim), "int8"), TensorType((batch, heads, rows), "float32")]
    if _halves(node):
        return [TensorType((batch, heads, rows, dim), "float16")]
    return [TensorType((batch, heads, rows, dim), new.dtype)]


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (last axis) as the int8 cache holds them, in the float32 steps of moa_attn_quantize_s8:
    (int8 values, float32 scale per row)."""
    x = x.to(torch.float32)
    scale = x.abs().amax(dim=-1) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.where(scale[..., None] > 0, torch.round(x / safe[..., None]).clamp(-127, 127), 0)
    return q.to(torch.int8), scale


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    new = inputs[0]
    batch, heads, chunk, dim = new.shape
    rows = node.attrs["max_context"]
    if _quantized(node):
        values, scales = quantize_rows(new)  # the int8 values held as float64, as every evaluate output
        cache = torch.zeros((batch, heads, rows, dim), dtype=torch.float64)
        row_scales = torch.zeros((batch, heads, rows), dtype=torch.float64)
        cache[:, :, -chunk:, :], row_scales[:, :, -chunk:] = values.to(torch.float64), scales.to(torch.float64)
        return [cache, row_scales]
    if _halves(node):  # the halves' values, held as float64 (the float32 row rounded, as the C does)
        cache = torch.zeros((batch, heads, rows, dim), dtype=torch.float64)
        cache[:, :, -chunk:, :] = new.to(torch.float32).to(torch.float16).to(torch.float64)
        return [cache]
    cache = torch.zeros((batch, heads, rows, dim), dtype=new.dtype)
    cache[:, :, -chunk:, :] = new
    return [cache]


def op_cost(node, graph) -> OpCost:
    return OpCost(0, 0, 2 * graph.tensors[node.inputs[0]].nbytes)  # the chunk read and written once


def emit(node, ctx) -> EmittedUnit:
    batch, heads, chunk, dim = ctx.graph.tensors[node.inputs[0]].shape
    rows = node.attrs["max_context"]
    new, cache = ctx.where[node.inputs[0]], ctx.where[node.outputs[0]]
    if _quantized(node):
        scales = ctx.where[node.outputs[1]]
        return EmittedUnit(
            f"    {{ /* {c_comment_text(node.name)}: {chunk} new rows quantized into the int8 cache at row {POSITION} */\n"
            f"        ptrdiff_t bh, r;\n"
            f"        for (bh = 0; bh < {batch * heads}; bh++)\n"
            f"            for (r = 0; r < {chunk}; r++)\n"
            f"                moa_attn_quantize_s8({dim}, {new} + (bh * {chunk} + r) * {dim}, "
            f"{cache} + (bh * {rows} + (ptrdiff_t){POSITION} + r) * {dim}, {scales} + bh * {rows} + (ptrdiff_t){POSITION} + r);\n"
            f"    }}\n", declarations=[QUANTIZE_DECLARATION])
    if _halves(node):
        return EmittedUnit(
            f"    {{ /* {c_comment_text(node.name)}: {chunk} new rows rounded into the float16 cache at row {POSITION} */\n"
            f"        ptrdiff_t bh;\n"
            f"        for (bh = 0; bh < {batch * heads}; bh++)\n"
            f"            moa_attn_round_f16({chunk * dim}, {new} + bh * {chunk * dim}, "
            f"{cache} + (bh * {rows} + (ptrdiff_t){POSITION}) * {dim});\n"
            f"    }}\n", declarations=[ROUND_DECLARATION])
    return EmittedUnit(
        f"    {{ /* {c_comment_text(node.name)}: {chunk} new rows into the cache at row {POSITION} */\n"
        f"        ptrdiff_t bh, r;\n"
        f"        for (bh = 0; bh < {batch * heads}; bh++)\n"
        f"            for (r = 0; r < {chunk * dim}; r++)\n"
        f"                {cache}[(bh * {rows} + (ptrdiff_t){POSITION}) * {dim} + r] = {new}[bh * {chunk * dim} + r];\n"
        f"    }}\n")
