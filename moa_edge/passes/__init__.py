"""Graph rewrites, run in a fixed order by `lower`."""
from __future__ import annotations

from collections import defaultdict

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph
from moa_edge.ops import SUPPORTED_OPS

from .attention import rewrite_attention
from .fold import fold_constants


def lower(graph: Graph, source: str = "model") -> Graph:
    """Fold shape plumbing, rewrite attention, drop dead nodes, then insist every op is supported."""
    fold_constants(graph)
    rewrite_attention(graph)
    fold_constants(graph)
    graph.remove_dead()
    unsupported = defaultdict(list)
    for node in graph.nodes:
        if node.op not in SUPPORTED_OPS:
            unsupported[node.op].append(node.name)
    if unsupported:
        listing = "; ".join(f"{op} (nodes: {', '.join(names)})" for op, names in sorted(unsupported.items()))
        raise MoaEdgeError(f"{source}: unsupported ops: {listing}")
    for name in graph.outputs:
        if graph.producer(name) is None:
            raise MoaEdgeError(f"{source}: output {name!r} is not computed by any node (constant or pass-through outputs are not supported yet)")
    return graph


__all__ = ["fold_constants", "lower", "rewrite_attention"]
