"""ConvTranspose (fp32, 1-, 2- and 3-D, grouped): one moa_conv_transpose_f32 call over NC(D)(H)W
(c_runtime/src/conv_transpose.c), a direct scatter of every input element times the kernel.

The geometry is resolved here. On each axis the taps reach the full extent
    full = stride (in - 1) + dilation (kernel - 1) + 1,
and output o is full position o + pad_begin: explicit pads crop both ends, output_padding extends
the end, auto_pad SAME_UPPER / SAME_LOWER make the output in * stride with the odd pad at the end
or the beginning, and output_shape fixes the output with pads derived from it as ONNX's spec says
(where ONNX's reference implementation differs, cropping only at the end, onnxruntime follows the
spec). Where the output reaches past the full extent (negative pads), those positions hold the
bias alone."""
from __future__ import annotations

from dataclasses import dataclass
import math

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text
from moa_edge.lazy import torch

from .contract import EmittedUnit, OpCost, TensorType, check_status, operand_bytes

OPS = ("ConvTranspose",)
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"ConvTranspose": 22}
C_SOURCES = ["conv_transpose.c"]
DECLARATIONS = ['#include "moa/conv_transpose.h"\n']


@dataclass(frozen=True)
class Geometry:
    """One entry per spatial axis, in ONNX order. Pads may be negative: the output then reaches
    past the positions the taps land on."""
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    out: tuple[int, ...]
    group: int


def _refuse(node, feature: str):
    raise MoaEdgeError(f"ConvTranspose node {node.name!r}: {feature} is not supported")


def _ints(node, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = tuple(node.attrs.get(name, default))
    if len(value) != len(default):
        _refuse(node, f"{name} {list(value)} for {len(default) // (2 if name == 'pads' else 1)} spatial axes")
    return value


def geometry(node, x_shape, w_shape) -> Geometry:
    """The geometry from the node's attributes and its operands' shapes (ONNX's defaults)."""
    axes = len(x_shape) - 2
    if not 1 <= axes <= 3 or len(w_shape) != len(x_shape):
        _refuse(node, f"an input of shape {list(x_shape)} with a weight of shape {list(w_shape)}")
    kernel = tuple(w_shape[2:])
    if _ints(node, "kernel_shape", kernel) != kernel:
        _refuse(node, f"kernel_shape {list(node.attrs['kernel_shape'])} differing from the weight's {list(kernel)}")
    strides, dilations = _ints(node, "strides", (1,) * axes), _ints(node, "dilations", (1,) * axes)
    output_padding = _ints(node, "output_padding", (0,) * axes)
    if min(strides + dilations) < 1 or min(output_padding) < 0:
        _refuse(node, f"strides {list(strides)}, dilations {list(dilations)} or output_padding "
                      f"{list(output_padding)}")
    group = node.attrs.get("group", 1)
    if group < 1 or x_shape[1] % group or w_shape[0] != x_shape[1]:
        _refuse(node, f"group {group} with {x_shape[1]} input channels and a weight of shape {list(w_shape)}")

    spatial = tuple(x_shape[2:])
    full = [s * (size - 1) + d * (k - 1) + 1 + extra
            for size, k, s, d, extra in zip(spatial, kernel, strides, dilations, output_padding)]
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        _refuse(node, f"auto_pad {auto_pad!r}")
    pads = _ints(node, "pads", (0,) * 2 * axes)
    if min(pads) < 0 or (auto_pad != "NOTSET" and any(pads)):
        _refuse(node, f"pads {list(pads)} with auto_pad {auto_pad}")
    wanted = tuple(node.attrs["output_shape"]) if "output_shape" in node.attrs else None
    if wanted is not None and len(wanted) not in (axes, axes + 2):
        _refuse(node, f"output_shape {list(wanted)} for {axes} spatial axes")
    wanted = wanted[-axes:] if wanted is not None else None

    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = wanted or tuple(size * s for size, s in zip(spatial, strides))
        # Floor halves, as ONNX's reference: the odd pad at the end (UPPER) or the beginning (LOWER).
        total = [f - o for f, o in zip(full, out)]
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
    elif wanted is not None:
        if any(pads):
            _refuse(node, f"output_shape {list(wanted)} together with pads {list(pads)}")
        # The spec's split, the larger half first, as onnxruntime; an output past the full extent
        # reaches past it at its end, as onnxruntime and ONNX's reference.
        out, begin = wanted, [max(0, t - t // 2) for t in (f - o for f, o in zip(full, wanted))]
    else:
        begin = pads[:axes]
        out = tuple(f - b - e for f, b, e in zip(full, begin, pads[axes:]))
    end = [f - o - b for f, o, b in zip(full, out, begin)]
    if min(out) < 1:
        _refuse(node, f"an empty output {list(out)}")
    return Geometry(kernel, strides, dilations, tuple(begin), tuple(end), tuple(out), group)


def infer(node, graph) -> list[TensorType]:
    """[N, W's channels per group x group, *the geometry's output extents], of X's dtype."""
    x, w = graph.tensors[node.inputs[0]], graph.tensors[node.inputs[1]]
    g = geometry(node, tuple(x.shape), tuple(w.shape))
    return [TensorType((x.shape[0], w.shape[1] * g.group) + g.out, x.dtype)]


def op_cost(node, graph) -> OpCost:
    """Two flops per input element and weight it meets (out channels of a group x kernel taps)."""
    x, w = graph.tensors[node.inputs[0]], graph.tensors[node.inputs[1]]
    moved = operand_bytes(node, graph)
    return OpCost(2 * x.size * math.prod(w.shape[1:]), moved.weight_bytes, moved.activation_bytes)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    """torch's transposed convolution without padding gives every full position; the output is
    its window [pad_begin, pad_begin + out) on each axis, zero where it reaches past it, plus B."""
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    g = geometry(node, tuple(x.shape), tuple(w.shape))
    axes = len(g.kernel)
    transpose = (torch.nn.functional.conv_transpose1d, torch.nn.functional.conv_transpose2d,
                 torch.nn.functional.conv_transpose3d)[axes - 1]
    full = transpose(x, w, stride=g.strides, dilation=g.dilations, groups=g.group)
    # pad takes (begin, end) pairs from the last axis backwards; a negative width crops.
    widths = [p for axis in reversed(range(axes))
              for p in (-g.pads_begin[axis], g.pads_begin[axis] + g.out[axis] - full.shape[2 + axis])]
    y = torch.nn.functional.pad(full, widths)
    return [y if bias is None else y + bias.reshape(1, -1, *(1,) * axes)]


def _check(node, graph) -> None:
    dtypes.require_dtypes(node, graph)
    w = graph.tensors[node.inputs[1]]
    if len(node.inputs) > 2 and node.inputs[2]:
        group = node.attrs.get("group", 1)
        if tuple(graph.tensors[node.inputs[2]].shape) != (w.shape[1] * group,):
            _refuse(node, f"bias {node.inputs[2]!r} of shape {list(graph.tensors[node.inputs[2]].shape)} "
                          f"(it must hold one value per output channel)")


def emit(node, ctx) -> EmittedUnit:
    graph = ctx.graph
    _check(node, graph)
    x, w, y = (graph.tensors[n] for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    g = geometry(node, tuple(x.shape), tuple(w.shape))
    lead = 3 - len(g.kernel)  # leading axes of extent 1

    def triple(values, unit, suffix="u"):
        return "{" + ", ".join(f"{v}{suffix}" for v in (unit,) * lead + tuple(values)) + "}"
    fields = [("batch", f"{x.shape[0]}u"), ("channels", f"{x.shape[1]}u"), ("out_channels", f"{y.shape[1]}u"),
              ("groups", f"{g.group}u"), ("in", triple(x.shape[2:], 1)), ("out", triple(g.out, 1)),
              ("kernel", triple(g.kernel, 1)), ("stride", triple(g.strides, 1)),
              ("dilation", triple(g.dilations, 1)), ("pad_begin", triple(g.pads_begin, 0, suffix=""))]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else ""
    args = [ctx.where[x.name], ctx.where[w.name], ctx.where[bias] if bias else "NULL", ctx.where[y.name]]
    kind = f"{len(g.kernel)}-D" + (f", {g.group} groups" if g.group > 1 else "")
    lines = [f"    {{ /* {c_comment_text(node.name)}: ConvTranspose {kind}, kernel {list(g.kernel)}, "
             f"strides {list(g.strides)}, pads {list(g.pads_begin + g.pads_end)}, dilations {list(g.dilations)} */",
             "        const moa_conv_transpose_params params = {",
             *[f"            .{name} = {value}," for name, value in fields],
             "        };",
             check_status(f"moa_conv_transpose_f32(&params, {', '.join(args)})", indent="        ").rstrip("\n"),
             "    }"]
    return EmittedUnit("\n".join(lines) + "\n", declarations=DECLARATIONS)
