"""MoaConcat: parts read through access maps, written one after another along an axis
into a row-major output (the present key/value cache: past keys, then new ones)."""
from __future__ import annotations

from moa_edge.lazy import torch

from moa_edge.ir.c_syntax import c_comment_text
from moa_edge.moa import Layout

from .attention import gather
from .contract import EmittedUnit, TensorType

OPS = ("MoaConcat",)
C_SOURCES: list[str] = []


def _out_shape(node) -> list[int]:
    """The parts' common shape, summed along the axis."""
    layouts, axis = node.attrs["layouts"], node.attrs["axis"]
    shape = list(layouts[0].shape)
    if not shape:  # a scalar: one part, copied
        return shape
    shape[axis] = sum(lay.shape[axis] for lay in layouts)
    return shape


def infer(node, graph) -> list[TensorType]:
    return [TensorType(tuple(_out_shape(node)), graph.tensors[node.inputs[0]].dtype)]


def reference(node, parts: list[torch.Tensor]) -> torch.Tensor:
    views = [gather(p.reshape(-1), lay) for p, lay in zip(parts, node.attrs["layouts"])]
    return torch.cat(views, dim=node.attrs["axis"])


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    return [reference(node, inputs)]


def emit(node, ctx):
    layouts, axis = node.attrs["layouts"], node.attrs["axis"]
    out_strides = Layout.row_major(_out_shape(node)).strides
    dst = ctx.where[node.outputs[0]]
    lines = [f"    {{ /* {c_comment_text(node.name)}: concatenate {len(layouts)} parts along axis {axis} */"]
    start = 0
    for part, lay in zip(node.inputs, layouts):
        idx = [f"i{k}" for k in range(len(lay.shape))]
        src = " + ".join([str(lay.offset)] + [
            f"({v} / {d}) * {s}" if d != 1 else f"{v} * {s}"
            for v, s, d in zip(idx, lay.strides, lay.axis_divisors()) if s]) or "0"
        dst_index = " + ".join(f"({v} + {start}) * {st}" if k == axis else f"{v} * {st}"
                               for k, (v, st) in enumerate(zip(idx, out_strides))) or "0"
        lines.append("        {")
        if idx:
            lines.append(f"            ptrdiff_t {', '.join(idx)};")
        for k, (v, n) in enumerate(zip(idx, lay.shape)):
            lines.append("            " + "    " * k + f"for ({v} = 0; {v} < {n}; {v}++)")
        lines.append("            " + "    " * len(idx) + f"{dst}[{dst_index}] = {ctx.where[part]}[{src}];")
        lines.append("        }")
        start += lay.shape[axis] if lay.shape else 0
    lines.append("    }")
    return EmittedUnit("\n".join(lines) + "\n")
