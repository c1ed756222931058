"""Canonicalisation: ops that do nothing at inference are bypassed, so patterns need not
list every place an exporter may put them (Identity, Cast or CastLike to the same type, Dropout, Pad by zero)."""
from __future__ import annotations

import numpy as np

from moa_edge.ir import Graph

from .fold import DTYPE_OF_ONNX


def _is_no_op(graph: Graph, node) -> bool:
    if node.op == "Identity":
        return True
    if node.op == "Dropout":  # inference: the input, whatever the ratio
        return len([o for o in node.outputs if o]) == 1
    if node.op == "Cast":
        source = graph.tensors.get(node.inputs[0])
        return source is not None and DTYPE_OF_ONNX.get(node.attrs.get("to")) == source.dtype
    if node.op == "Pad":  # padding by nothing (the opset-24 function body pads masks to the key length)
        pads = graph.constant(node.inputs[1]) if len(node.inputs) > 1 else None
        return pads is not None and not np.any(pads)
    if node.op == "CastLike":
        source, like = graph.tensors.get(node.inputs[0]), graph.tensors.get(node.inputs[1])
        return source is not None and like is not None and source.dtype == like.dtype
    return False


def bypass_no_ops(graph: Graph) -> int:
    bypassed = 0
    for node in list(graph.nodes):
        if not _is_no_op(graph, node):
            continue
        old, new = node.outputs[0], node.inputs[0]
        if old in graph.outputs:
            # A no-op that names a graph output: let the producer write that output itself.
            producer = graph.producer(new)
            if producer is None or new in graph.outputs or len(graph.consumers(new)) != 1:
                continue
            producer.outputs = [old if name == new else name for name in producer.outputs]
        else:
            for user in graph.nodes:
                user.inputs = [new if name == old else name for name in user.inputs]
        graph.nodes.remove(node)
        bypassed += 1
    return bypassed


def lower_copies(graph: Graph) -> None:
    """ONNX Concat and the Identity ops still left become MoaConcat (a copy through access
    maps), the one data-movement op the runtime has."""
    from .views import trace_view  # the parts are read in place through their layout ops
    for k, node in enumerate(graph.nodes):
        if node.op not in ("Concat", "Identity") or any(graph.tensors.get(i) is None for i in node.inputs):
            continue
        if any(graph.tensors[i].dtype != "float32" for i in node.inputs):
            continue
        rank = len(graph.tensors[node.inputs[0]].shape)
        axis = node.attrs.get("axis", 0) % rank if node.op == "Concat" else 0
        traced = [trace_view(graph, i, []) for i in node.inputs]
        graph.nodes[k] = type(node)("MoaConcat", node.name, [src for src, _ in traced], list(node.outputs),
                                    {"layouts": [lay for _, lay in traced], "axis": axis})
    graph.remove_dead()
