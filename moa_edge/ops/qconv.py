"""MoaQConv: a Conv whose weight W [M, C/groups, *kernel] is stored quantized by convert --weights
(int8 per output channel, 4 bits in blocks, or float16), one moa_conv2d_qw_f32_on call (moa/conv.h).

    W[m][r] = scale[m][r // block] (q[m][r] - zero) + offset[m][r // block],   r < R = C/groups * KH * KW
    (f16: W[m][r] = q[m][r])

Inputs: X, q (M x R, or M x R/2 bytes for u4: r even in the low nibble), scale ("" for f16),
offset ("" for none), B ("" or absent); attributes: Conv's, and w_shape, qtype, block, zero (0 for
convert's own quantizers; a QDQ file's int8 zero point, passes/qdq.py).
Each kernel tap's weights are dequantized into the node's scratch (Mg x Cg floats) before the
float GEMMs of conv.c, so only the stored weights stay in memory.
"""
from __future__ import annotations

import math

import numpy as np
from moa_edge.lazy import torch

from moa_edge.ir import dtypes

from . import conv
from .contract import EmittedUnit, OpCost, TensorType, operand_bytes
from .qmatmul import C_TYPES, STORAGE, describe, optional_input, require_scales

OPS = ("MoaQConv",)
C_SOURCES = conv.C_SOURCES
HEADER = conv.HEADER


def pack(q: np.ndarray, scale, offset, qtype: str):
    """quantize()'s R x M integers and blocks x M scales as conv.h's rows: (values, scales, offsets)."""
    rows = np.ascontiguousarray(q.T)
    if qtype == "u4":
        rows = np.ascontiguousarray(rows[:, 0::2] | (rows[:, 1::2] << 4)).astype(np.uint8)
    per_row = lambda x: None if x is None else np.ascontiguousarray(x.T)  # noqa: E731
    return rows, per_row(scale), per_row(offset)


def dequantize(values, scale, offset, qtype: str, block: int, w_shape, zero: int = 0) -> torch.Tensor:
    """pack undone and applied: W as float64 in its ONNX shape."""
    values = torch.as_tensor(np.asarray(values))
    if qtype == "u4":
        values = values.to(torch.int16)
        values = torch.stack([values & 15, values >> 4], dim=2).reshape(values.shape[0], -1)
    w = values.to(torch.float64)
    if qtype != "f16":
        expand = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float64).repeat_interleave(block, dim=1)  # noqa: E731
        w = expand(scale) * (w - zero) + (expand(offset) if offset is not None else 0.0)
    return w.reshape(w_shape)


def _w_shape(node) -> tuple[int, ...]:
    return tuple(node.attrs["w_shape"])


def infer(node, graph) -> list[TensorType]:
    x = graph.tensors[node.inputs[0]]
    g = conv.geometry(node, tuple(x.shape), _w_shape(node))
    return [TensorType((x.shape[0], _w_shape(node)[0]) + g.out_shape(x.shape[2:]), x.dtype)]


def op_cost(node, graph) -> OpCost:
    moved = operand_bytes(node, graph)
    return OpCost(2 * graph.tensors[node.outputs[0]].size * math.prod(_w_shape(node)[1:]), moved.weight_bytes,
                  moved.activation_bytes)


def scratch_bytes(node, graph) -> int:
    """MOA_CONV_QW_SCRATCH: one tap's Mg x Cg weights as floats."""
    groups = node.attrs.get("group", 1)
    m, cg = _w_shape(node)[:2]
    return 4 * (m // groups) * cg


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    attrs = node.attrs
    w = dequantize(inputs[1], optional_input(inputs, 2), optional_input(inputs, 3), attrs["qtype"], attrs["block"],
                   _w_shape(node), attrs.get("zero", 0))
    x = inputs[0].to(torch.float64)
    bias = optional_input(inputs, 4)
    g = conv.geometry(node, tuple(x.shape), _w_shape(node))
    padding = [p for axis in reversed(range(len(g.kernel))) for p in (g.pads_begin[axis], g.pads_end[axis])]
    fn = torch.nn.functional.conv1d if x.dim() == 3 else torch.nn.functional.conv2d
    return [fn(torch.nn.functional.pad(x, padding), w, None if bias is None else bias.to(torch.float64),
               stride=g.strides, dilation=g.dilations, groups=g.group)]


def emit(node, ctx) -> EmittedUnit:
    graph, attrs = ctx.graph, node.attrs
    bias = node.inputs[4:5]
    dtypes.require_dtypes(node, graph, names=[node.inputs[0], node.outputs[0], *bias])
    dtypes.require_dtypes(node, graph, (STORAGE[attrs["qtype"]],), names=node.inputs[1:2])
    half = require_scales(node, graph, ("float32", "float16"))
    x_shape, y_shape = (tuple(graph.tensors[n].shape) for n in (node.inputs[0], node.outputs[0]))
    where = lambda k: ctx.where[node.inputs[k]] if len(node.inputs) > k and node.inputs[k] else "NULL"  # noqa: E731
    weights = (f"(moa_qweights){{{C_TYPES[attrs['qtype']]}, {attrs['block']}, {where(1)}, {where(2)}, {where(3)}, "
               f"{attrs.get('zero', 0)}, {int(half)}}}")
    stored = describe(attrs, math.prod(_w_shape(node)[1:]))
    return conv.emit_call(node, ctx, x_shape, _w_shape(node), y_shape, "moa_conv2d_qw_f32_on", weights,
                          scratch=f"(float *){ctx.scratch}", stored=stored)
