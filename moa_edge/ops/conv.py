"""Conv (fp32, 1-D and 2-D, grouped and depthwise): one moa_conv2d_f32_on call over NCHW.

A 1-D convolution is the 2-D one with H = 1. The kernel is an implicit GEMM, W times the
patches of X gathered a packed panel at a time, or (1 x 1, depthwise) a sum of GEMMs, one
per kernel tap, over strided views of X and W (c_runtime/src/conv.c); the GEMMs run on the
run's worker pool. The padding is never written out and there is no im2col buffer, so the
node needs no scratch. auto_pad is resolved here
into begin pads; the end pads only shape the output, which the kernel is told directly.
"""
from __future__ import annotations

from dataclasses import dataclass
import math

from moa_edge.lazy import torch

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text

from . import matmul
from .contract import EmittedUnit, OpCost, TensorType, check_status, operand_bytes

OPS = ("Conv",)
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"Conv": 22}
C_SOURCES = ["conv.c", *matmul.C_SOURCES]
HEADER = '#include "moa/conv.h"'


@dataclass(frozen=True)
class Geometry:
    """One entry per spatial axis (1 or 2 of them), in ONNX order."""
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    group: int

    def out_shape(self, spatial) -> tuple[int, ...]:
        return tuple((size + b + e - (d * (k - 1) + 1)) // s + 1 for size, k, s, d, b, e in
                     zip(spatial, self.kernel, self.strides, self.dilations, self.pads_begin, self.pads_end))


def _refuse(node, feature: str):
    raise MoaEdgeError(f"Conv node {node.name!r}: {feature} is not supported")


def geometry(node, x_shape, w_shape) -> Geometry:
    """The convolution's geometry from its attributes and operand shapes (ONNX defaults)."""
    rank = len(x_shape)
    if rank not in (3, 4) or len(w_shape) != rank:
        _refuse(node, f"a {rank - 2}-D convolution (input of shape {list(x_shape)})")
    spatial, axes = tuple(x_shape[2:]), rank - 2
    attrs = node.attrs
    kernel = tuple(w_shape[2:])
    if tuple(attrs.get("kernel_shape", kernel)) != kernel:
        _refuse(node, f"kernel_shape {list(attrs['kernel_shape'])} differing from the weight's {list(kernel)}")
    strides = tuple(attrs.get("strides", (1,) * axes))
    dilations = tuple(attrs.get("dilations", (1,) * axes))
    if len(strides) != axes or len(dilations) != axes or min(strides + dilations) < 1:
        _refuse(node, f"strides {list(strides)} or dilations {list(dilations)} for {axes} spatial axes")
    group = attrs.get("group", 1)
    channels, out_channels = x_shape[1], w_shape[0]
    if group < 1 or channels % group or out_channels % group or w_shape[1] * group != channels:
        _refuse(node, f"group {group} with {channels} input channels and weight of shape {list(w_shape)}")

    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "NOTSET":
        pads = tuple(attrs.get("pads", (0,) * 2 * axes))
        if len(pads) != 2 * axes or min(pads) < 0:
            _refuse(node, f"pads {list(pads)} for {axes} spatial axes")
        begin, end = pads[:axes], pads[axes:]
    elif auto_pad == "VALID":
        begin = end = (0,) * axes
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # Output ceil(size / stride); the odd pad goes at the end (UPPER) or the beginning (LOWER).
        total = [max(0, (-(-size // s) - 1) * s + d * (k - 1) + 1 - size)
                 for size, k, s, d in zip(spatial, kernel, strides, dilations)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    else:
        _refuse(node, f"auto_pad {auto_pad!r}")
    return Geometry(kernel, strides, dilations, tuple(begin), tuple(end), group)


def infer(node, graph) -> list[TensorType]:
    """[N, out channels, *the geometry's output extents], of X's dtype."""
    x, w = graph.tensors[node.inputs[0]], graph.tensors[node.inputs[1]]
    g = geometry(node, tuple(x.shape), tuple(w.shape))
    return [TensorType((x.shape[0], w.shape[0]) + g.out_shape(x.shape[2:]), x.dtype)]


def op_cost(node, graph) -> OpCost:
    """Two flops per output element and weight it meets (in channels of a group x kernel taps)."""
    w = graph.tensors[node.inputs[1]].shape
    moved = operand_bytes(node, graph)
    return OpCost(2 * graph.tensors[node.outputs[0]].size * math.prod(w[1:]), moved.weight_bytes,
                  moved.activation_bytes)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    g = geometry(node, tuple(x.shape), tuple(w.shape))
    # pad takes (begin, end) pairs from the last axis backwards.
    padding = [p for axis in reversed(range(len(g.kernel))) for p in (g.pads_begin[axis], g.pads_end[axis])]
    conv = torch.nn.functional.conv1d if x.dim() == 3 else torch.nn.functional.conv2d
    return [conv(torch.nn.functional.pad(x, padding), w, bias, stride=g.strides, dilation=g.dilations, groups=g.group)]


def _check(node, graph, g: Geometry, x_shape, w_shape, y_shape) -> None:
    dtypes.require_dtypes(node, graph)
    expected = (x_shape[0], w_shape[0]) + g.out_shape(x_shape[2:])
    if tuple(y_shape) != expected:
        raise MoaEdgeError(f"Conv node {node.name!r}: output {node.outputs[0]!r} has shape {list(y_shape)}, "
                           f"but the attributes give {list(expected)}")
    if len(node.inputs) > 2 and node.inputs[2] and tuple(graph.tensors[node.inputs[2]].shape) != (w_shape[0],):
        _refuse(node, f"bias {node.inputs[2]!r} of shape {list(graph.tensors[node.inputs[2]].shape)} "
                      f"(it must hold one value per output channel)")


def _as_2d(values, unit) -> tuple[int, int]:
    """1-D is 2-D with a unit height: the height's entry goes in front."""
    return (unit,) * (2 - len(values)) + tuple(values)


def emit(node, ctx):
    shapes = [tuple(ctx.graph.tensors[n].shape) for n in (node.inputs[0], node.inputs[1], node.outputs[0])]
    _check(node, ctx.graph, geometry(node, shapes[0], shapes[1]), *shapes)
    return emit_call(node, ctx, *shapes, "moa_conv2d_f32_on", ctx.where[node.inputs[1]])


def emit_call(node, ctx, x_shape, w_shape, y_shape, function: str, weights: str, scratch: str = "",
              stored: str = "") -> EmittedUnit:
    """One `function`(pool, &params, X, weights, B or NULL, Y[, scratch]) call over a Conv node's geometry
    (Conv and MoaQConv: X is input 0, B input 2, or 4 with `stored` weights described in the comment)."""
    g = geometry(node, x_shape, w_shape)
    (h, w), (oh, ow) = _as_2d(x_shape[2:], 1), _as_2d(y_shape[2:], 1)
    (kh, kw), (sh, sw), (dh, dw) = _as_2d(g.kernel, 1), _as_2d(g.strides, 1), _as_2d(g.dilations, 1)
    top, left = _as_2d(g.pads_begin, 0)
    fields = [("batch", x_shape[0]), ("channels", x_shape[1]), ("height", h), ("width", w),
              ("out_channels", w_shape[0]), ("out_height", oh), ("out_width", ow),
              ("kernel_height", kh), ("kernel_width", kw), ("stride_height", sh), ("stride_width", sw),
              ("dilation_height", dh), ("dilation_width", dw), ("pad_top", top), ("pad_left", left),
              ("groups", g.group)]
    bias = node.inputs[4 if stored else 2] if len(node.inputs) > (4 if stored else 2) else ""
    args = [ctx.where[node.inputs[0]], weights, ctx.where[bias] if bias else "NULL", ctx.where[node.outputs[0]],
            *([scratch] if scratch else [])]
    kind = f"{len(x_shape) - 2}-D" + (f", {g.group} groups" if g.group > 1 else "") + (f", {stored} weights" if stored else "")
    lines = [f"    {{ /* {c_comment_text(node.name)}: Conv {kind}, kernel {list(g.kernel)}, strides {list(g.strides)}, "
             f"pads {list(g.pads_begin + g.pads_end)}, dilations {list(g.dilations)} */",
             "        const moa_conv2d_params params = {",
             *[f"            .{name} = {value}u," for name, value in fields],
             "        };",
             check_status(f"{function}(pool, &params, {', '.join(args)})", indent="        ").rstrip("\n"),
             "    }"]
    return EmittedUnit("\n".join(lines) + "\n", declarations=[HEADER])
