"""Tile, DepthToSpace and SpaceToDepth: the input's elements copied in another order.

Each is one copy through an access map (a Layout, moa_edge/moa) worked out at convert time: the
output is seen with more axes (a row-major reshape of it, no copy), and each of those axes
steps through the input's storage at a fixed stride:

  Tile          out[r0, d0, r1, d1, ...]   = x[d0, d1, ...]              (the r axes: stride 0)
  DepthToSpace  out[n, c, h, bi, w, bj]    = x[n, bi, bj, c, h, w]       (DCR; CRD: x[n, c, bi, bj, h, w])
  SpaceToDepth  out[n, bi, bj, c, h, w]    = x[n, c, h, bi, w, bj]       (DCR; CRD: out[n, c, bi, bj, h, w])

DepthToSpace and SpaceToDepth are the spec's Reshape -> Transpose -> Reshape, read as one map.
Tile's repeats must be constants (the output's shape depends on them).
"""
from __future__ import annotations

import numpy as np
from moa_edge.lazy import torch

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import attribute_text, dtypes
from moa_edge.ir.c_syntax import c_comment_text
from moa_edge.moa import Layout

from .contract import EmittedUnit, TensorType

OPS = ("Tile", "DepthToSpace", "SpaceToDepth")
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"Tile": 13, "DepthToSpace": 28, "SpaceToDepth": 28}
C_SOURCES: list[str] = []
C_LOCALS = frozenset({"at", *(f"i{k}" for k in range(16))})

# The spec's Transpose of the input seen with six axes (`_blocks`), per op and mode.
_PERM = {("DepthToSpace", "DCR"): (0, 3, 4, 1, 5, 2), ("DepthToSpace", "CRD"): (0, 1, 4, 2, 5, 3),
         ("SpaceToDepth", "DCR"): (0, 3, 5, 1, 2, 4), ("SpaceToDepth", "CRD"): (0, 1, 3, 5, 2, 4)}


def _repeats(node, graph) -> list[int] | None:
    repeats = graph.constant(node.inputs[1])
    return None if repeats is None else [int(r) for r in np.asarray(repeats).reshape(-1)]


def _blocks(node, shape) -> tuple[int, str, tuple[int, ...]]:
    """(blocksize, mode, the input seen with six axes, as the spec reshapes it)."""
    b, mode = int(node.attrs.get("blocksize", 0)), attribute_text(node.attrs.get("mode", "DCR"))
    if len(shape) != 4 or b < 1 or mode not in ("DCR", "CRD"):
        raise MoaEdgeError(f"{node.op} node {node.name!r}: needs a rank-4 input, blocksize >= 1 and mode DCR or CRD "
                           f"(has {list(shape)}, blocksize {b}, mode {mode})")
    n, c, h, w = shape
    if node.op == "DepthToSpace":
        if c % (b * b):
            raise MoaEdgeError(f"{node.op} node {node.name!r}: {c} channels are no multiple of blocksize^2 = {b * b}")
        return b, mode, (n, b, b, c // (b * b), h, w) if mode == "DCR" else (n, c // (b * b), b, b, h, w)
    if h % b or w % b:
        raise MoaEdgeError(f"{node.op} node {node.name!r}: height {h} and width {w} must be multiples of blocksize {b}")
    return b, mode, (n, c, h // b, b, w // b, b)


def _source(node, graph) -> Layout:
    """The map from the output seen with more axes to the input's storage."""
    shape = tuple(graph.tensors[node.inputs[0]].shape)
    if node.op == "Tile":
        repeats = _repeats(node, graph)
        if repeats is None:
            raise MoaEdgeError(f"Tile node {node.name!r}: repeats {node.inputs[1]!r} are computed at run time; "
                               f"only constant repeats are supported")
        if len(repeats) != len(shape) or min(repeats, default=0) < 0:
            raise MoaEdgeError(f"Tile node {node.name!r}: repeats {repeats} do not fit an input of shape {list(shape)}")
        strides = Layout.row_major(shape).strides
        return Layout(tuple(x for r, d in zip(repeats, shape) for x in (r, d)),
                      tuple(x for s in strides for x in (0, s)))
    _, mode, six = _blocks(node, shape)
    return Layout.row_major(six).transpose(_PERM[(node.op, mode)])


def infer(node, graph) -> list[TensorType]:
    """Tile: each extent times its repeat (unknown while the repeats are not constants);
    DepthToSpace: [N, C / b^2, H b, W b]; SpaceToDepth: [N, C b^2, H / b, W / b]."""
    x = graph.tensors[node.inputs[0]]
    if node.op == "Tile":
        repeats = _repeats(node, graph)
        if repeats is None or len(repeats) != len(x.shape):
            return [TensorType(None, x.dtype)]
        return [TensorType(tuple(r * d for r, d in zip(repeats, x.shape)), x.dtype)]
    b, _, _ = _blocks(node, x.shape)
    n, c, h, w = x.shape
    shape = (n, c // (b * b), h * b, w * b) if node.op == "DepthToSpace" else (n, c * b * b, h // b, w // b)
    return [TensorType(shape, x.dtype)]


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    x = inputs[0]
    if node.op == "Tile":
        return [torch.tile(x, [int(r) for r in inputs[1].reshape(-1)])]
    b, mode, six = _blocks(node, tuple(x.shape))
    n, c, h, w = x.shape
    if node.op == "DepthToSpace":
        if mode == "CRD":
            return [torch.nn.functional.pixel_shuffle(x, b)]
        return [x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c // (b * b), h * b, w * b)]
    if mode == "CRD":
        return [torch.nn.functional.pixel_unshuffle(x, b)]
    return [x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4).reshape(n, c * b * b, h // b, w // b)]


def emit(node, ctx):
    graph = ctx.graph
    dtypes.require_dtypes(node, graph, allowed=dtypes.HELD_DTYPES, names=[node.inputs[0], node.outputs[0]])
    source = _source(node, graph)
    x, out = ctx.where[node.inputs[0]], ctx.where[node.outputs[0]]
    axes = [(f"i{k}", n, s) for k, (n, s) in enumerate(zip(source.shape, source.strides)) if n != 1]
    read = " + ".join(v if s == 1 else f"{v} * {s}" for v, _, s in axes if s) or "0"
    what = node.op if node.op == "Tile" else (f"{node.op} {attribute_text(node.attrs.get('mode', 'DCR'))}, "
                                               f"blocksize {node.attrs['blocksize']}")
    lines = [f"    {{ /* {c_comment_text(node.name)}: {what}, the output seen as {list(source.shape)} */",
             f"        ptrdiff_t {''.join(v + ', ' for v, _, _ in axes)}at = 0;"]
    for depth, (v, n, _) in enumerate(axes):
        lines.append("        " + "    " * depth + f"for ({v} = 0; {v} < {n}; {v}++) {{")
    lines.append("        " + "    " * len(axes) + f"{out}[at++] = {x}[{read}];")
    lines += ["        " + "    " * depth + "}" for depth in reversed(range(len(axes)))]
    lines.append("    }")
    return EmittedUnit("\n".join(lines) + "\n")
