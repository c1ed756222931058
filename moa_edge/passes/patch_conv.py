"""A Conv whose kernel tiles its input (kernel = stride, no padding: ViT's patch embedding) as one GEMM.

    Y[n, o, i, j] = B[o] + sum_{c, a, b} W[o, c, a, b] X[n, c, i KH + a, j KW + b]

is a matrix product once X is seen as patches, each read exactly once:

    X [N, C, H, W] -> Reshape [N, C, Ho, KH, Wo, KW] -> Transpose [N, Ho, Wo, C, KH, KW]
      -> Reshape P [N, Ho Wo, C KH KW] -> MatMul by W^T [C KH KW, O] (-> Add B) -> [N, Ho Wo, O]
      -> Reshape [N, Ho, Wo, O] -> Transpose Y [N, O, Ho, Wo]

The per-tap kernel (conv.c) would run a GEMM of depth C per tap and output row instead (256 x 14
of K = 3, M = 768, N = 14 for ViT-B/16's 16 x 16 patches of a 224 x 224 RGB image). The patches
cost one copy of X (the Transpose, made a copy by lower_copies). W^T is a constant, so
pack_weights packs it for the GEMM kernel (or quantizes it under --weights, a MoaQGemm) and turns
the bias Add into the GEMM's C, as for a Linear layer. ViT's flatten(2).transpose(1, 2) after the
Conv composes with the last Reshape and Transpose into the GEMM's output as it is, so a Concat
with the class token reads it in place (and lower_copies makes a Transpose that only undoes them
a view).

The MatMul keeps the Conv's name and the last Transpose makes the Conv's output, so errors and
reports name the node the file has.
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node, Tensor
from moa_edge.ops import conv

from .quantize import WeightFormat


@dataclass(frozen=True)
class PatchConv:
    """A matched Conv: X [N, C, H, W], W [O, C, KH, KW] constant, bias name or ""."""
    node: Node
    x_shape: tuple[int, ...]
    weight: np.ndarray
    bias: str

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        (n, _, h, w), (o, _, kh, kw) = self.x_shape, self.weight.shape
        return n, o, h // kh, w // kw


def match_patch_conv(graph: Graph, node: Node, weights: WeightFormat | None = None) -> PatchConv | None:
    """The Conv as a PatchConv when it is 2-D over float32, with a float32 constant weight, one group,
    no padding, dilation 1, stride = kernel (more than one tap) and H, W multiples of the kernel;
    and, under --weights, a block that divides K = C KH KW (else it stays a Conv: MoaQConv stores
    such a weight int8 per channel)."""
    if node.op != "Conv" or len(node.inputs) < 2 or len(node.outputs) != 1:
        return None
    x, w = graph.tensors.get(node.inputs[0]), graph.constant(node.inputs[1])
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    if (x is None or x.dtype != "float32" or len(x.shape) != 4 or w is None or w.dtype != np.float32 or w.ndim != 4
            or node.outputs[0] not in graph.tensors):
        return None
    try:
        g = conv.geometry(node, tuple(x.shape), w.shape)
    except MoaEdgeError:
        return None  # the Conv's own lowering names what it cannot do
    kernel = tuple(w.shape[2:])
    if (g.group != 1 or g.dilations != (1, 1) or any(g.pads_begin + g.pads_end) or g.strides != kernel
            or kernel == (1, 1) or x.shape[2] % kernel[0] or x.shape[3] % kernel[1]):
        return None
    b = graph.tensors.get(bias) if bias else None
    if bias and (b is None or b.dtype != "float32" or tuple(b.shape) != (w.shape[0],)):
        return None
    k = math.prod(w.shape[1:])
    if weights is not None and weights.block is not None and k % weights.block:
        return None
    return PatchConv(node, tuple(x.shape), w, bias)


def _steps(p: PatchConv, weight_t: str) -> list[tuple[str, object, str]]:
    """The rewrite, step by step from X to Y: (op, the new shape, perm or second operand; a stem naming it)."""
    (n, c, _, _), (o, _, kh, kw) = p.x_shape, p.weight.shape
    _, _, ho, wo = p.out_shape
    return [("Reshape", (n, c, ho, kh, wo, kw), "patch_grid"),
            ("Transpose", (0, 2, 4, 1, 3, 5), "patch_order"),
            ("Reshape", (n, ho * wo, c * kh * kw), "patches"),
            ("MatMul", weight_t, "gemm"),
            *([("Add", p.bias, "bias")] if p.bias else []),
            ("Reshape", (n, ho, wo, o), "channels_last"),
            ("Transpose", (0, 3, 1, 2), "channels_first")]


def _fresh(taken: set[str], name: str) -> str:
    """`name`, or it with underscores appended until no tensor or node in `taken` has it (then it is taken)."""
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def rewrite_patch_conv(graph: Graph, p: PatchConv) -> list[Node]:
    """The nodes replacing the Conv (which the caller removes), their tensors and constants registered."""
    node, (o, k) = p.node, (p.weight.shape[0], math.prod(p.weight.shape[1:]))
    taken = set(graph.tensors) | {n.name for n in graph.nodes} | {t for n in graph.nodes for t in n.outputs}
    weight_t = _fresh(taken, f"{node.inputs[1]}__patch_gemm")
    graph.tensors[weight_t] = Tensor(weight_t, (k, o), "float32", np.ascontiguousarray(p.weight.reshape(o, k).T))
    steps = _steps(p, weight_t)
    nodes, source, shape = [], node.inputs[0], p.x_shape
    for index, (op, arg, stem) in enumerate(steps):
        name = node.name if op == "MatMul" else _fresh(taken, f"{node.name}__{stem}")
        attrs = {}
        if op == "Reshape":
            shape, dims = tuple(arg), _fresh(taken, f"{name}__shape")
            graph.tensors[dims] = Tensor(dims, (len(arg),), "int64", np.array(arg, np.int64))
            inputs = [source, dims]
        elif op == "Transpose":
            shape, attrs, inputs = tuple(shape[a] for a in arg), {"perm": list(arg)}, [source]
        else:  # MatMul by W^T, Add of the bias
            shape, inputs = (shape[:-1] + (o,) if op == "MatMul" else shape), [source, arg]
        if index == len(steps) - 1:
            out = node.outputs[0]
            assert shape == tuple(graph.tensors[out].shape), (node.name, shape, graph.tensors[out].shape)
        else:
            out = _fresh(taken, f"{node.outputs[0]}__{stem}")
            graph.tensors[out] = Tensor(out, shape, "float32")
        nodes.append(Node(op, name, inputs, [out], attrs))
        source = out
    return nodes


def gemm_patch_convs(graph: Graph, weights: WeightFormat | None = None) -> int:
    """Rewrite every patch-embedding Conv (match_patch_conv) as one GEMM; returns how many."""
    count, rewritten = 0, []
    for node in graph.nodes:
        p = match_patch_conv(graph, node, weights)
        if p is None:
            rewritten.append(node)
            continue
        rewritten += rewrite_patch_conv(graph, p)
        count += 1
    graph.nodes = rewritten
    if count:
        graph.remove_dead()  # the Conv's own weight, unless another node reads it
    return count
