"""MoaQGemm: a MatMul or Gemm whose weight is stored quantized (int8, 4 bits in blocks, or float16),
one moa_gemm_qw_f32 call (qmatmul.h) over float32 activations.

    Y[..., M, N] = alpha A[..., M, K] W + beta C,
    W[k][n] = scale[k // block][n] (q[k][n] - zero) + offset[k // block][n]   (f16: W[k][n] = q[k][n])

Inputs: A, q (the panels of qmatmul.h), scale ("" for none: f16), offset ("" for none), C ("" or
absent for none);
attributes k, n, qtype, block, zero (and MoaGemm's trans_a, alpha, beta).
The weight's layout is made here (pack_quantized) and undone for the reference (dequantize), so
the C kernel, the float64 interpreter and the quantizers of passes/quantize.py agree on one form.
"""
from __future__ import annotations

import math

import numpy as np
from moa_edge.lazy import torch

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text

from .contract import EmittedUnit, OpCost, TensorType, operand_bytes
from .matmul import C_SOURCES, PANEL, _bias_view, _gemm_call, _indent, _view

OPS = ("MoaQGemm",)
C_SOURCES = C_SOURCES  # the driver of matmul.c serves both
HEADER = '#include "moa/qmatmul.h"'
C_TYPES = {"i8": "MOA_QW_I8", "u4": "MOA_QW_U4", "f16": "MOA_QW_F16"}
STORAGE = {"i8": "int8", "u4": "uint8", "f16": "float16"}  # the element type of q's tensor
KINDS = {"i8": "int8", "u4": "4-bit", "f16": "float16"}


def blocks(k: int, block: int) -> int:
    return -(-k // block)


SUPER_BLOCKS = 8  # MOA_QS_SUPER_BLOCKS


def _super_bytes(h: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Two-level scales of one panel (H supers x 16 halves, s blocks x 16 int8) in MOA_QS_SUPER's
    chunks: per super-block its 16 halves, then its blocks' rows of 16 int8."""
    parts = []
    for i in range(h.shape[0]):
        parts += [h[i].astype("<f2").view(np.uint8), s[i * SUPER_BLOCKS:(i + 1) * SUPER_BLOCKS].view(np.uint8).reshape(-1)]
    return np.concatenate(parts)


def _super_values(chunks: np.ndarray, blocks: int) -> np.ndarray:
    """_super_bytes undone and multiplied: (blocks x 16) float64."""
    out, at = [], 0
    for b0 in range(0, blocks, SUPER_BLOCKS):
        h = chunks[at:at + 32].view("<f2").astype(np.float64)
        count = min(SUPER_BLOCKS, blocks - b0)
        s = chunks[at + 32:at + 32 + 16 * count].view(np.int8).reshape(count, PANEL).astype(np.float64)
        out.append(h[None, :] * s)
        at += 32 + 16 * count
    return np.concatenate(out)


def pack_quantized(q: np.ndarray, scale: np.ndarray | None, offset: np.ndarray | None, qtype: str, block: int,
                   levels=None):
    """q (K x N integers: int8, or 0..15 for u4; or float16 values), scale and offset (blocks x N,
    float32 or float16 (half_scales); None for f16) in qmatmul.h's panels: (values, scales or None,
    offsets or None). `levels`: for MOA_QS_SUPER, the (H, s) pairs of scale and of offset
    (passes/quantize.two_level), stored as one uint8 array each."""
    k, n = q.shape
    rows, panels = blocks(k, block) * block, -(-n // PANEL)
    padded = np.zeros((rows, panels * PANEL), np.float16 if qtype == "f16" else np.int16)
    padded[:k, :n] = q
    panel_rows = padded.reshape(rows, panels, PANEL).transpose(1, 0, 2)  # panel, row, column
    if qtype == "f16":
        return np.ascontiguousarray(panel_rows), None, None
    if qtype == "i8":
        values = panel_rows.astype(np.int8)
    else:
        pairs = panel_rows.astype(np.uint8).reshape(panels, rows // 2, 2, PANEL)
        values = pairs[:, :, 0] | (pairs[:, :, 1] << 4)

    def per_panel(x):
        full = np.zeros((x.shape[0], panels * PANEL), x.dtype)
        full[:, :n] = x
        return np.ascontiguousarray(full.reshape(x.shape[0], panels, PANEL).transpose(1, 0, 2))

    def two_levels(pair):
        h, s = (per_panel(x) for x in pair)
        return np.ascontiguousarray(np.stack([_super_bytes(h[p], s[p]) for p in range(panels)]))
    if levels is not None:
        return (np.ascontiguousarray(values), two_levels(levels[0]),
                None if levels[1] is None else two_levels(levels[1]))
    return np.ascontiguousarray(values), per_panel(scale), None if offset is None else per_panel(offset)


def dequantize(values, scale, offset, qtype: str, block: int, k: int, n: int, zero: int = 0) -> torch.Tensor:
    """pack_quantized undone and applied: W (K x N) as float64, from the tensors the C reads."""
    values = torch.as_tensor(np.asarray(values))
    if qtype == "f16":  # the values themselves
        return values.permute(1, 0, 2).reshape(values.shape[1], -1).to(torch.float64)[:k, :n]
    if qtype == "u4":
        values = values.to(torch.int16)
        values = torch.stack([values & 15, values >> 4], dim=2).reshape(values.shape[0], -1, PANEL)
    q = values.permute(1, 0, 2).reshape(values.shape[1], -1).to(torch.float64)  # rows x padded columns

    def expand(x):
        x = np.asarray(x)
        if x.dtype == np.uint8:  # MOA_QS_SUPER's chunks, per panel
            x = np.stack([_super_values(panel, blocks(k, block)) for panel in x])
        return torch.as_tensor(x, dtype=torch.float64).permute(1, 0, 2).reshape(-1, q.shape[1]).repeat_interleave(
            block, dim=0)
    w = expand(scale) * (q - zero) + (expand(offset) if offset is not None else 0.0)
    return w[:k, :n]


def infer(node, graph) -> list[TensorType]:
    a = tuple(graph.tensors[node.inputs[0]].shape)
    shape = (a[-1], node.attrs["n"]) if node.attrs["trans_a"] else a[:-1] + (node.attrs["n"],)
    return [TensorType(shape, graph.tensors[node.inputs[0]].dtype)]


def op_cost(node, graph) -> OpCost:
    """2 M N K flops; the weight bytes are the stored ones (int8, 4-bit), not float32's."""
    moved = operand_bytes(node, graph)
    return OpCost(2 * graph.tensors[node.outputs[0]].size * node.attrs["k"], moved.weight_bytes,
                  moved.activation_bytes)


def optional_input(inputs, i):
    """The reference executor's input i, or None when it is absent or empty."""
    return inputs[i] if len(inputs) > i and inputs[i] is not None else None


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    attrs = node.attrs
    w = dequantize(inputs[1], optional_input(inputs, 2), optional_input(inputs, 3), attrs["qtype"], attrs["block"], attrs["k"],
                   attrs["n"], attrs.get("zero", 0))
    a = inputs[0].T if attrs["trans_a"] else inputs[0]
    y = attrs["alpha"] * (a.to(torch.float64) @ w)
    c = optional_input(inputs, 4)
    return [y if c is None else y + attrs["beta"] * c]


def describe(attrs, k: int) -> str:
    """The stored form, for the generated C's comments: 'int8 (per column)', '4-bit (blocks of 32)', 'float16'."""
    if attrs["qtype"] == "f16":
        return KINDS["f16"] + (", multiplied in float16" if attrs.get("native") else "")
    per = "per column" if attrs["block"] >= k else f"blocks of {attrs['block']}"
    return f"{KINDS[attrs['qtype']]} ({per})"


SCALE_KINDS = {"float32": 0, "float16": 1, "uint8": 2}  # moa_qweights.half_scales: MOA_QS_FLOAT, _HALF, _SUPER


def require_scales(node, graph, kinds=tuple(SCALE_KINDS)) -> int:
    """Refuse scales and offsets (inputs 2 and 3) not both of one of `kinds`' types (floats,
    halves, or MOA_QS_SUPER's chunks as bytes); their moa_qweights.half_scales."""
    names = [name for name in node.inputs[2:4] if name]
    dtypes.require_dtypes(node, graph, kinds, names=names)
    if len({graph.tensors[name].dtype for name in names}) > 1:
        raise MoaEdgeError(f"{node.op} node {node.name!r}: its scales and offsets differ in type")
    return SCALE_KINDS[graph.tensors[names[0]].dtype] if names else 0


def c_weights(node, ctx) -> str:
    """The moa_qweights literal of a node whose inputs 1, 2 and 3 are q, scale and offset ("": NULL)."""
    def where(k):
        return ctx.where[node.inputs[k]] if len(node.inputs) > k and node.inputs[k] else "NULL"
    attrs = node.attrs
    c_type = "MOA_QW_F16_NATIVE" if attrs.get("native") else C_TYPES[attrs["qtype"]]
    return (f"(moa_qweights){{{c_type}, {attrs['block']}, {where(1)}, {where(2)}, {where(3)}, "
            f"{attrs.get('zero', 0)}, {require_scales(node, ctx.graph)}}}")


def emit(node, ctx):
    graph, attrs = ctx.graph, node.attrs
    dtypes.require_dtypes(node, graph, names=[node.inputs[0], node.outputs[0]])
    dtypes.require_dtypes(node, graph, (STORAGE[attrs["qtype"]],), names=node.inputs[1:2])
    a_shape = tuple(graph.tensors[node.inputs[0]].shape)
    K, N, trans_a = attrs["k"], attrs["n"], attrs["trans_a"]
    M = a_shape[-1] if trans_a else math.prod(a_shape[:-1])
    a = _view(ctx.where[node.inputs[0]], *((1, M) if trans_a else (K, 1)))
    weights = c_weights(node, ctx)
    bias = type(node)(node.op, node.name, [node.inputs[0], "", *node.inputs[4:5]], node.outputs)
    call = _gemm_call(M, N, K, attrs["alpha"], a, weights, attrs["beta"], _bias_view(bias, ctx),
                      ctx.where[node.outputs[0]], function="moa_gemm_qw_f32_on")
    text = "\n".join([f"    /* {c_comment_text(node.name)}: {attrs.get('source', 'MatMul')} with {describe(attrs, K)} "
                      f"weights, M={M} N={N} K={K}{' (transA)' if trans_a else ''} */", *_indent(call, 1)]) + "\n"
    return EmittedUnit(text, declarations=[HEADER])
