"""Small matchers the attention rules share."""
from __future__ import annotations

from moa_edge.ir import Graph, Node

# A float bias at or below this is "masked" (exporters use finfo(float32).min, not -inf).
MASKED = -1e30


def produced_by(graph: Graph, name: str, op: str) -> Node | None:
    node = graph.producer(name)
    return node if node is not None and node.op == op else None


def scalar(graph: Graph, name: str) -> float | None:
    data = graph.constant(name)
    if data is None or data.size != 1:
        return None
    return float(data.reshape(()))
