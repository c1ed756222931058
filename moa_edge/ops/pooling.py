"""MaxPool, AveragePool, LpPool and their Global forms (fp32, 1-, 2- and 3-D): one
moa_pooling_f32 call over the NC(D)(H)W input (c_runtime/src/pooling.c).

The geometry is ONNX's: explicit pads or auto_pad, dilations, and ceil_mode, whose last window
must still start inside the input or its begin pad. Padding is never written out: the kernel
skips it (MaxPool) or counts it as zeros. MaxPool's second output (Indices) is not supported."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import math

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text, c_float_short
from moa_edge.lazy import torch

from .contract import EmittedUnit, OpCost, TensorType, check_status, operand_bytes

OPS = ("MaxPool", "AveragePool", "LpPool", "GlobalMaxPool", "GlobalAveragePool", "GlobalLpPool")
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"MaxPool": 22, "AveragePool": 22, "LpPool": 22, "GlobalMaxPool": 22, "GlobalAveragePool": 22,
                 "GlobalLpPool": 22}
C_SOURCES = ["pooling.c"]
DECLARATIONS = ['#include "moa/pooling.h"\n']
_KIND = {"Max": "MOA_POOLING_MAX", "Average": "MOA_POOLING_AVERAGE", "Lp": "MOA_POOLING_LP"}


@dataclass(frozen=True)
class Window:
    """One entry per spatial axis, in ONNX order."""
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    out: tuple[int, ...]


def _kind(node) -> str:
    return node.op.removeprefix("Global").removesuffix("Pool")


def _refuse(node, feature: str):
    raise MoaEdgeError(f"{node.op} node {node.name!r}: {feature} is not supported")


def window(node, spatial: tuple[int, ...]) -> Window:
    axes, attrs = len(spatial), node.attrs
    if not 1 <= axes <= 3:
        _refuse(node, f"a {axes}-D pooling")
    if node.op.startswith("Global"):
        ones = (1,) * axes
        return Window(tuple(spatial), ones, ones, (0,) * axes, (0,) * axes, ones)
    kernel = tuple(attrs.get("kernel_shape", ()))
    strides = tuple(attrs.get("strides", (1,) * axes))
    dilations = tuple(attrs.get("dilations", (1,) * axes))
    if len(kernel) != axes or len(strides) != axes or len(dilations) != axes or min(kernel + strides + dilations) < 1:
        _refuse(node, f"kernel_shape {list(kernel)}, strides {list(strides)} or dilations {list(dilations)} "
                      f"for {axes} spatial axes")
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    ceil = bool(attrs.get("ceil_mode", 0))
    if auto_pad == "NOTSET":
        pads = tuple(attrs.get("pads", (0,) * 2 * axes))
        if len(pads) != 2 * axes or min(pads) < 0:
            _refuse(node, f"pads {list(pads)} for {axes} spatial axes")
        begin, end = pads[:axes], pads[axes:]
        out = []
        for size, s, w, b, e in zip(spatial, strides, span, begin, end):
            n = (size + b + e - w) / s + 1
            o = math.ceil(n) if ceil else math.floor(n)
            if ceil and (o - 1) * s >= size + b:  # the last window must start inside the input or its begin pad
                o -= 1
            out.append(o)
    elif auto_pad == "VALID":
        begin = end = (0,) * axes
        out = [(size - w) // s + 1 for size, s, w in zip(spatial, strides, span)]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-size // s) for size, s in zip(spatial, strides)]
        total = [max(0, (o - 1) * s + w - size) for o, s, w, size in zip(out, strides, span, spatial)]
        small, big = [t // 2 for t in total], [t - t // 2 for t in total]
        begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    else:
        _refuse(node, f"auto_pad {auto_pad!r}")
    if min(out) < 1:
        _refuse(node, f"a window larger than the padded input {list(spatial)}")
    return Window(kernel, strides, dilations, tuple(begin), tuple(end), tuple(out))


def infer(node, graph) -> list[TensorType]:
    x = graph.tensors[node.inputs[0]]
    if len(x.shape) < 3:
        _refuse(node, f"an input of rank {len(x.shape)} (N, C and 1 to 3 spatial axes are needed)")
    shape = tuple(x.shape[:2]) + window(node, tuple(x.shape[2:])).out
    return [TensorType(shape, x.dtype), TensorType(shape, "int64")][:len(node.outputs)]  # MaxPool's Indices


def op_cost(node, graph) -> OpCost:
    """One flop per output element and window element."""
    x = graph.tensors[node.inputs[0]]
    moved = operand_bytes(node, graph)
    return OpCost(graph.tensors[node.outputs[0]].size * math.prod(window(node, tuple(x.shape[2:])).kernel),
                  moved.weight_bytes, moved.activation_bytes)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    """By the definition: the padded input (and a mask of what counts), every window element a
    strided slice of it, reduced over the window."""
    x = inputs[0]
    _check(node, graph)
    g = window(node, tuple(x.shape[2:]))
    axes, kind = len(g.kernel), _kind(node)
    # Taps at or past the end pad for every output count for nothing: a kernel larger than the input stops there.
    g = dataclasses.replace(g, kernel=tuple(min(k, -(-(size + b + e) // d)) for k, size, b, e, d in
                                            zip(g.kernel, x.shape[2:], g.pads_begin, g.pads_end, g.dilations)))
    # Past the end pads, a ceil_mode window's overhang: pad that far too, counted by nothing.
    reach = [(o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip(g.out, g.strides, g.dilations, g.kernel)]
    over = [max(0, r - (size + b + e)) for r, size, b, e in zip(reach, x.shape[2:], g.pads_begin, g.pads_end)]
    widths = [w for axis in reversed(range(axes))
              for w in (g.pads_begin[axis], g.pads_end[axis] + over[axis])]
    fill = float("-inf") if kind == "Max" else 0.0
    padded = torch.nn.functional.pad(x, widths, value=fill)
    inside = torch.nn.functional.pad(torch.ones_like(x), widths, value=0.0)
    with_pads = torch.nn.functional.pad(torch.ones_like(x), [w for axis in reversed(range(axes))
                                                             for w in (g.pads_begin[axis], g.pads_end[axis])], value=1.0)
    with_pads = torch.nn.functional.pad(with_pads, [w for axis in reversed(range(axes)) for w in (0, over[axis])])
    taps = []
    for offset in _offsets(g.kernel):
        index = (...,) + tuple(slice(k * d, k * d + (o - 1) * s + 1, s)
                               for k, d, o, s in zip(offset, g.dilations, g.out, g.strides))
        taps.append((padded[index], inside[index], with_pads[index]))
    values = torch.stack([t[0] for t in taps])
    if kind == "Max":
        return [values.amax(dim=0)]
    if kind == "Lp":
        p = float(node.attrs.get("p", 2))
        return [(values.abs() ** p).sum(dim=0) ** (1.0 / p)]
    counts = torch.stack([t[2] if node.attrs.get("count_include_pad", 0) else t[1] for t in taps]).sum(dim=0)
    return [values.sum(dim=0) / counts]


def _check(node, graph) -> None:
    """What the kernel does not do: other types than float32, MaxPool's Indices."""
    dtypes.require_dtypes(node, graph, names=[node.inputs[0], node.outputs[0]])
    if len(node.outputs) > 1 and node.outputs[1]:
        _refuse(node, "MaxPool's Indices output")


def _offsets(kernel: tuple[int, ...]):
    if not kernel:
        yield ()
        return
    for k in range(kernel[0]):
        for rest in _offsets(kernel[1:]):
            yield (k, *rest)


def emit(node, ctx) -> EmittedUnit:
    graph = ctx.graph
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    _check(node, graph)
    g = window(node, tuple(x.shape[2:]))
    pad = 3 - len(g.kernel)  # leading axes of extent 1

    def triple(values, unit):
        return "{" + ", ".join(f"{v}u" for v in (unit,) * pad + tuple(values)) + "}"
    kind = _kind(node)
    fields = [("kind", _KIND[kind]), ("planes", f"{x.shape[0] * x.shape[1]}u"),
              ("in", triple(x.shape[2:], 1)), ("out", triple(g.out, 1)), ("kernel", triple(g.kernel, 1)),
              ("stride", triple(g.strides, 1)), ("dilation", triple(g.dilations, 1)),
              ("pad_begin", triple(g.pads_begin, 0)), ("pad_end", triple(g.pads_end, 0)),
              ("count_include_pad", str(int(bool(node.attrs.get("count_include_pad", 0))))),
              ("p", c_float_short(float(node.attrs.get("p", 2))))]
    lines = [f"    {{ /* {c_comment_text(node.name)}: {node.op}, kernel {list(g.kernel)}, strides {list(g.strides)}, "
             f"pads {list(g.pads_begin + g.pads_end)}, dilations {list(g.dilations)} */",
             "        const moa_pooling_params params = {",
             *[f"            .{name} = {value}," for name, value in fields],
             "        };",
             check_status(f"moa_pooling_f32(&params, {ctx.where[x.name]}, {ctx.where[y.name]})",
                          indent="        ").rstrip("\n"),
             "    }"]
    return EmittedUnit("\n".join(lines) + "\n", declarations=DECLARATIONS)
