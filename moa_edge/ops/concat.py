"""MoaConcat: parts read through access maps, written one after another along an axis
into a row-major output (the present key/value cache: past keys, then new ones)."""
from __future__ import annotations

import torch

from moa_edge.moa import Layout

from .attention import gather

OPS = ("MoaConcat",)
C_SOURCES: list[str] = []


def scratch_bytes(node, graph=None) -> int:
    return 0


def reference(node, parts: list[torch.Tensor]) -> torch.Tensor:
    views = [gather(p.reshape(-1), lay) for p, lay in zip(parts, node.attrs["layouts"])]
    return torch.cat(views, dim=node.attrs["axis"])


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    return [reference(node, inputs)]


def emit(node, ctx):
    from . import EmittedUnit
    layouts, axis = node.attrs["layouts"], node.attrs["axis"]
    out_shape = list(layouts[0].shape)
    out_shape[axis] = sum(lay.shape[axis] for lay in layouts)
    out_strides = Layout.row_major(out_shape).strides
    dst = ctx.where[node.outputs[0]]
    lines = [f"    {{ /* {node.name}: concatenate {len(layouts)} parts along axis {axis} */"]
    start = 0
    for part, lay in zip(node.inputs, layouts):
        idx = [f"i{k}" for k in range(len(lay.shape))]
        src = " + ".join([str(lay.offset)] + [
            f"({v} / {d}) * {s}" if d != 1 else f"{v} * {s}"
            for v, s, d in zip(idx, lay.strides, lay.axis_divisors()) if s]) or "0"
        dst_index = " + ".join(f"({v} + {start}) * {st}" if k == axis else f"{v} * {st}"
                               for k, (v, st) in enumerate(zip(idx, out_strides)))
        lines.append("        {")
        lines.append(f"            ptrdiff_t {', '.join(idx)};")
        for k, (v, n) in enumerate(zip(idx, lay.shape)):
            lines.append("            " + "    " * k + f"for ({v} = 0; {v} < {n}; {v}++)")
        lines.append("            " + "    " * len(idx) + f"{dst}[{dst_index}] = {ctx.where[part]}[{src}];")
        lines.append("        }")
        start += lay.shape[axis]
    lines.append("    }")
    return EmittedUnit("\n".join(lines) + "\n")
