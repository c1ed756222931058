"""Attention bias terms (masks added to the scores) classified as what the kernel does
itself (a causal triangle, per-batch key lengths) and what it reads (one mask)."""
from __future__ import annotations

import math

import numpy as np

from moa_edge.ir import Graph, Node, Tensor
from moa_edge.ops.attention import MASK_BOOL, MASK_FLOAT, MASK_NONE

from .match import MASKED, produced_by, scalar


def causal_offset_of(bias: np.ndarray, q_len: int, kv_len: int) -> int | None:
    """o when a constant 0 / masked bias is exactly the causal triangle k > i + o (o = 0:
    top-left; o = past length: bottom-right after a cache), else None."""
    if bias.ndim < 2 or bias.shape[-2:] != (q_len, kv_len) or bias.size != q_len * kv_len:
        return None
    masked = bias.reshape(q_len, kv_len).astype(np.float64) <= MASKED
    if not np.all(bias.reshape(q_len, kv_len)[~masked] == 0):
        return None
    visible = (~masked).sum(axis=1)  # keys each query row sees
    offset = int(visible[0]) - 1
    above = np.triu(np.ones((q_len, kv_len), dtype=bool), 1 + offset)
    return offset if np.array_equal(masked, above) and offset >= 0 else None


def _split_sums(graph: Graph, terms, absorbed: list[str]):
    """A bias that is itself an Add of biases (mask + causal triangle) counts as its parts."""
    out = []
    for term in terms:
        node = produced_by(graph, term[1], "Add") if term[0] == "add" else None
        if node is not None and all(graph.tensors[i].dtype == "float32" for i in node.inputs):
            absorbed.append(node.name)
            out += _split_sums(graph, [("add", i) for i in node.inputs], absorbed)
        else:
            out.append(term)
    return out


def classify_bias(graph: Graph, terms, q_len: int, kv_len: int, absorbed: list[str], exact_scores: bool = False):
    """Bias terms -> (mask kind, fill, mask tensor, causal, causal offset, new nodes). A term
    proved to be exactly a causal triangle becomes is_causal; one other term is the mask; several are
    summed by a new Add (bool terms first turned into their 0 / fill bias).

    A causal triangle drawn with a finite minimum (finfo.min, as exporters do) is is_causal
    only when nothing else can hide a row's remaining keys and the biased scores are not an
    output: otherwise -inf would change fully hidden rows and the scores the graph sees."""
    causal, offset, masks, finite_causal = False, 0, [], []
    terms = _split_sums(graph, terms, absorbed)
    for term in terms:
        if term[0] == "keep":
            _, cond, fill = term
            keep = graph.constant(cond)
            found = None if keep is None else causal_offset_of(np.where(keep, 0.0, -np.inf), q_len, kv_len)
            if found is None:
                masks.append(("bool", cond, fill))
            elif math.isinf(fill):
                causal, offset = True, found
            else:
                finite_causal.append((("bool", cond, fill), found))
            continue
        name = term[1]
        where = produced_by(graph, name, "Where")
        const = graph.constant(name)
        if const is not None and not np.any(const):
            continue  # an all-zero bias (ViT exports one): nothing to add
        found = None if const is None else causal_offset_of(const, q_len, kv_len)
        if found is not None and np.all(np.isinf(const[const != 0])):
            causal, offset = True, found
        elif found is not None:
            finite_causal.append((("float", name, 0.0), found))
        elif (where is not None and graph.tensors[where.inputs[0]].dtype == "bool"
              and scalar(graph, where.inputs[1]) == 0.0 and scalar(graph, where.inputs[2]) is not None
              and scalar(graph, where.inputs[2]) <= MASKED):  # shared by every layer: stays until dead
            masks.append(("bool", where.inputs[0], scalar(graph, where.inputs[2])))
            absorbed.append(where.name)
        elif graph.tensors[name].dtype == "float32":
            masks.append(("float", name, 0.0))
        else:
            return None, 0.0, "", False, 0, []
    for mask, found in finite_causal:
        if masks or exact_scores:
            masks.append(mask)
        else:
            causal, offset = True, found
    if not masks:
        return MASK_NONE, 0.0, "", causal, offset, []
    if len(masks) == 1:
        kind, name, fill = masks[0]
        return (MASK_BOOL if kind == "bool" else MASK_FLOAT), fill, name, causal, offset, []
    # Several masks: one float bias computed by the graph, outside the kernel.
    nodes, names = [], []
    for k, (kind, name, fill) in enumerate(masks):
        if kind == "bool":
            zero, fill_name, out = f"{name}__zero", f"{name}__fill", f"{name}__bias"
            graph.tensors[zero] = Tensor(zero, (), "float32", np.array(0.0, np.float32))
            graph.tensors[fill_name] = Tensor(fill_name, (), "float32", np.array(fill, np.float32))
            graph.tensors[out] = Tensor(out, graph.tensors[name].shape, "float32")
            nodes.append(Node("Where", f"{name}__to_bias", [name, zero, fill_name], [out]))
            name = out
        names.append(name)
    total = names[0]
    for k, name in enumerate(names[1:]):
        out = f"{total}__plus_{k}"
        shape = np.broadcast_shapes(graph.tensors[total].shape, graph.tensors[name].shape)
        graph.tensors[out] = Tensor(out, tuple(shape), "float32")
        nodes.append(Node("Add", f"{out}__add", [total, name], [out]))
        total = out
    return MASK_FLOAT, 0.0, total, causal, offset, nodes
