"""Scores reshaped to another rank to add the mask, and back around the Softmax (the BART-era
attention of transformers' XGLM, TrOCR, FSMT, LED, SpeechT5, ...: heads folded into the batch,
unfolded only for the mask):

    s = Reshape(MatMul(q[B*H, Sq, d], kT[B*H, d, Sk]), [B, H, Sq, Sk]) + mask
    p = Softmax(Reshape(s, [B*H, Sq, Sk]))
    y = MatMul(Reshape(p, ...), v[B*H, Sk, dv])

becomes the 4-D chain rewrite_attention knows, each step exact (a Reshape that keeps the last two
axes commutes with a batched MatMul; one that keeps the last axis with a Softmax over it):

    s = MatMul(Reshape(q, [B, H, Sq, d]), Reshape(kT, [B, H, d, Sk])) + mask
    p = Softmax(s)
    y = Reshape(MatMul(p, Reshape(v, [B, H, Sk, dv])), [B*H, Sq, dv])"""
from __future__ import annotations

import math

import numpy as np

from moa_edge.ir import Graph, Node, Tensor



def _reshape(graph: Graph, source: str, shape: tuple, out: str | None = None) -> Node:
    target = graph.fresh_name(f"{source}__shape")
    graph.tensors[target] = Tensor(target, (len(shape),), "int64", np.array(shape, np.int64))
    if out is None:
        out = graph.fresh_name(f"{source}__{len(shape)}d")
        graph.tensors[out] = Tensor(out, tuple(shape), graph.tensors[source].dtype)
    return Node("Reshape", graph.fresh_name(f"{source}__reshape"), [source, target], [out])


def _splits_batch(before: tuple, after: tuple, kept: int) -> bool:
    """`after` splits `before`'s leading axis and keeps its last `kept` axes."""
    return (len(after) > len(before) == kept + 1 and tuple(after[-kept:]) == tuple(before[-kept:])
            and math.prod(after[:-kept]) == before[0])


def _reshaped_source(graph: Graph, name: str) -> str:
    """Through a chain of Reshapes up to the tensor they view."""
    node = graph.producer(name)
    while node is not None and node.op == "Reshape" and graph.tensors.get(node.inputs[0]) is not None:
        name, node = node.inputs[0], graph.producer(node.inputs[0])
    return name


def unfold_batched_scores(graph: Graph) -> int:
    """Rewrite every such block as the module's docstring says; returns how many Softmaxes moved."""
    moved = 0
    for softmax in [n for n in graph.nodes if n.op == "Softmax"]:
        fold = graph.producer(softmax.inputs[0])
        if fold is None or fold.op != "Reshape" or len(graph.consumers(fold.outputs[0])) != 1:
            continue
        wide, narrow = graph.tensors[fold.inputs[0]].shape, graph.tensors[fold.outputs[0]].shape
        axis = softmax.attrs.get("axis", -1)
        if axis not in (-1, len(narrow) - 1) or not _splits_batch(tuple(narrow), tuple(wide), 2):
            continue
        # The scores' MatMul behind the mask terms, reshaped from the batch the heads were folded into.
        scores = fold.inputs[0]
        node = graph.producer(scores)
        while node is not None and node.op in ("Add", "Max", "Where") and len(graph.consumers(scores)) == 1:
            scores = next((i for i in node.inputs if graph.tensors.get(i) is not None
                           and tuple(graph.tensors[i].shape) == tuple(wide) and graph.constant(i) is None), "")
            node = graph.producer(scores) if scores else None
        split = node
        qk = graph.producer(split.inputs[0]) if split is not None and split.op == "Reshape" else None
        if (qk is None or qk.op != "MatMul" or len(graph.consumers(qk.outputs[0])) != 1
                or qk.outputs[0] in graph.outputs or tuple(graph.tensors[qk.outputs[0]].shape) != tuple(narrow)):
            continue
        operands = [graph.tensors[i].shape for i in qk.inputs]
        if any(len(shape) != 3 or shape[0] != narrow[0] for shape in operands):
            continue
        # Q K^T on the 4-D views: the split Reshape's output is the MatMul's now.
        lead = tuple(wide[:-2])
        views = [_reshape(graph, i, lead + tuple(shape[1:])) for i, shape in zip(qk.inputs, operands)]
        batched = Node("MatMul", qk.name, [v.outputs[0] for v in views], list(split.outputs))
        at = graph.nodes.index(qk)
        graph.nodes[at:at + 1] = [*views, batched]
        graph.nodes.remove(split)
        # Softmax over the 4-D scores, folded after it for the readers of the 3-D probabilities.
        probs = softmax.outputs[0]
        wide_probs = graph.fresh_name(f"{probs}__{len(wide)}d")
        graph.tensors[wide_probs] = Tensor(wide_probs, tuple(wide), graph.tensors[probs].dtype)
        softmax.inputs, softmax.outputs, softmax.attrs = [fold.inputs[0]], [wide_probs], {"axis": -1}
        graph.nodes[graph.nodes.index(fold)] = _reshape(graph, wide_probs, tuple(narrow), out=probs)
        for pv in [u for u in graph.nodes if u.op == "MatMul" and _reshaped_source(graph, u.inputs[0]) == wide_probs]:
            _unfold_product(graph, pv, wide_probs, lead)
        moved += 1
    if moved:
        graph.toposort()
        graph.remove_dead()
    return moved


def _unfold_product(graph: Graph, pv: Node, probs: str, lead: tuple) -> None:
    """MatMul(Reshape(p4 -> 3-D), v) -> Reshape(MatMul(p4, Reshape(v -> 4-D)) -> 3-D)."""
    p_shape, v_shape = graph.tensors[pv.inputs[0]].shape, graph.tensors[pv.inputs[1]].shape
    out_shape = graph.tensors[pv.outputs[0]].shape
    wide = graph.tensors[probs].shape
    if (len(p_shape) != 3 or tuple(p_shape) != (math.prod(lead), *wide[-2:]) or len(v_shape) != 3
            or len(out_shape) != 3 or v_shape[0] != math.prod(lead)):
        return
    value = _reshape(graph, pv.inputs[1], lead + tuple(v_shape[1:]))
    wide_out = graph.fresh_name(f"{pv.outputs[0]}__{len(lead) + 2}d")
    graph.tensors[wide_out] = Tensor(wide_out, lead + tuple(out_shape[1:]), graph.tensors[pv.outputs[0]].dtype)
    product = Node("MatMul", pv.name, [probs, value.outputs[0]], [wide_out])
    at = graph.nodes.index(pv)
    graph.nodes[at:at + 1] = [value, product, _reshape(graph, wide_out, tuple(out_shape), out=pv.outputs[0])]
