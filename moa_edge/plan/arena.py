"""Liveness and first-fit arena placement.

Graph inputs and outputs are caller-owned and constants live in weights.c, so the arena
holds only intermediates (live from producer to last consumer) and each node's kernel
scratch (live during that node alone).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from moa_edge.ir import Graph
from moa_edge.ops import SUPPORTED_OPS

ALIGN = 16  # MOA_ARENA_ALIGN in c_runtime/include/moa/status.h


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class ArenaPlan:
    offsets: dict[str, int] = field(default_factory=dict)  # tensor name or "scratch:<node>" -> byte offset
    sizes: dict[str, int] = field(default_factory=dict)
    total_bytes: int = 0

    def describe(self) -> dict:
        return {"arena_bytes": self.total_bytes,
                "buffers": [{"name": k, "offset": self.offsets[k], "bytes": self.sizes[k]} for k in self.offsets]}


def plan_arena(graph: Graph) -> ArenaPlan:
    # Live interval [first step, last step] of every arena buffer.
    intervals: dict[str, tuple[int, int, int]] = {}
    caller_owned = set(graph.inputs) | set(graph.outputs)
    ready = set(graph.inputs) | {t.name for t in graph.tensors.values() if t.is_constant}
    for node in graph.nodes:  # the schedule is the node order: every input must exist by then
        missing = [name for name in node.inputs if name and name not in ready]
        assert not missing, f"node {node.name} reads {missing} before they are computed"
        ready.update(node.outputs)
    for step, node in enumerate(graph.nodes):
        for name in node.outputs:
            t = graph.tensors[name]
            if name not in caller_owned and not t.is_constant:
                intervals[name] = (step, step, t.nbytes)
        for name in node.inputs:
            if name in intervals:
                first, _, size = intervals[name]
                intervals[name] = (first, step, size)
        scratch = SUPPORTED_OPS[node.op].scratch_bytes(node, graph)
        if scratch:
            intervals[f"scratch:{node.name}"] = (step, step, scratch)

    plan = ArenaPlan()
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    for name, (first, last, size) in sorted(intervals.items(), key=lambda kv: -kv[1][2]):
        size = _aligned(size)
        offset = 0
        for o, e, f, l in sorted(placed):
            overlaps_in_time = not (last < f or l < first)
            if overlaps_in_time and offset < e and o < offset + size:
                offset = _aligned(e)
        placed.append((offset, offset + size, first, last))
        plan.offsets[name] = offset
        plan.sizes[name] = size
        plan.total_bytes = max(plan.total_bytes, offset + size)
    return plan
