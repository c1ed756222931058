"""Liveness and static arena placement.

Graph inputs, outputs and state (a decoder's caches) are caller-owned and constants live in
weights.c, so the arena holds only intermediates (live from their producer to their last
reader) and each node's kernel scratch (live during that node alone). A view (Reshape, Squeeze, ...) has no buffer
of its own: it names its input's storage, which then lives until the view's last reader.
An element-wise op whose input dies at that op writes over it (in place).

Two placement algorithms run and the smaller arena wins; a validator proves that no two
buffers that are live at the same step share a byte.

With memory pools (a microcontroller's TCM and SRAM banks, or --pool), the buffers are spread
over them first: the hottest (kernel scratch, then the activations read most often per byte)
into the fastest pool while its live bytes fit, the rest into the next; then each pool is
placed as one arena. A pool whose placement outgrows it (fragmentation past its live bytes)
hands its coldest buffers on.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph
from moa_edge.ops import SUPPORTED_OPS

ALIGN = 16  # MOA_ARENA_ALIGN in c_runtime/include/moa/status.h


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Buffer:
    name: str     # a tensor, or "scratch:<node>"
    first: int    # the step that writes it
    last: int     # the last step that reads it
    size: int     # bytes, aligned


@dataclass(frozen=True)
class Pool:
    """A memory the arena's buffers may go to: the run's `arena` itself (name ""), or one more
    region the caller owns (model.h's <P>_POOL_<NAME>_BYTES, placed in `section`)."""
    name: str
    capacity: int | None  # bytes it can hold (None: what the plan needs, a Linux board's arena)
    section: str = ""
    kind: str = ""        # the memory's kind (tcm, sram, psram), or "" for --pool and the arena
    memory: str = ""      # the board memory it is in, when known


ARENA = Pool("", None)


@dataclass
class ArenaPlan:
    offsets: dict[str, int] = field(default_factory=dict)  # buffer name -> byte offset in its pool
    sizes: dict[str, int] = field(default_factory=dict)
    total_bytes: int = 0
    storage_of: dict[str, str] = field(default_factory=dict)  # view or in-place tensor -> the tensor it shares
    algorithm: str = ""
    buffers: list[Buffer] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # node names in schedule order
    pool_of: dict[str, str] = field(default_factory=dict)    # buffer -> its pool's name ("": the arena)
    pools: list[Pool] = field(default_factory=list)          # the pools besides the arena that hold buffers
    pool_bytes: dict[str, int] = field(default_factory=dict)  # their sizes

    def live_bytes(self, step: int) -> int:
        return sum(b.size for b in self.buffers if b.first <= step <= b.last)

    def describe(self) -> dict:
        per_step = [self.live_bytes(k) for k in range(len(self.steps))]
        peak_step = max(range(len(per_step)), key=per_step.__getitem__) if per_step else 0
        span = {b.name: (b.first, b.last) for b in self.buffers}  # schedule steps that write and last read it
        return {"arena_bytes": self.total_bytes, "algorithm": self.algorithm,
                "live_bytes_lower_bound": max(per_step, default=0),
                "peak_step": self.steps[peak_step] if self.steps else "",
                "live_at_peak": [b.name for b in self.buffers if b.first <= peak_step <= b.last],
                "per_op_live_bytes": dict(zip(self.steps, per_step)),
                "shared_storage": dict(self.storage_of),
                "pools": [{"name": p.name, "bytes": self.pool_bytes[p.name], "section": p.section, "kind": p.kind,
                           "memory": p.memory} for p in self.pools],
                "buffers": [{"name": k, "pool": self.pool_of.get(k, ""), "offset": self.offsets[k],
                             "bytes": self.sizes[k], "first_step": span[k][0], "last_step": span[k][1]}
                            for k in self.offsets]}


def shared_storage(graph: Graph) -> dict[str, str]:
    """Tensor -> the tensor whose storage it uses: views of their input, in-place outputs of
    the input they overwrite. Caller-owned outputs always keep their own storage."""
    caller_owned = set(graph.inputs) | set(graph.outputs) | set(graph.state)
    last_reader: dict[str, int] = {}
    for step, node in enumerate(graph.nodes):
        for name in node.inputs:
            last_reader[name] = step
    storage: dict[str, str] = {}
    for step, node in enumerate(graph.nodes):
        op = SUPPORTED_OPS[node.op]
        out = node.outputs[0] if node.outputs else ""
        if not out or out in caller_owned:
            continue
        if op.ALIASES:
            storage[out] = node.inputs[0]
        else:
            for name in op.in_place_inputs(node, graph):  # the inputs the op may overwrite
                base = _root(name, storage) if name else ""
                if (base and base not in caller_owned and graph.constant(base) is None
                        and graph.tensors[name].shape == graph.tensors[out].shape
                        and graph.tensors[name].dtype == graph.tensors[out].dtype
                        and _dies_at(base, step, storage, last_reader)
                        # another operand reading the same storage another way would see overwritten elements
                        and all(other == name or _root(other, storage) != base for other in node.inputs if other)):
                    storage[out] = name
                    break
    return storage


def _dies_at(base: str, step: int, storage: dict[str, str], last_reader: dict[str, int]) -> bool:
    """No tensor sharing `base`'s storage is read after `step`."""
    sharing = [base] + [name for name in storage if _root(name, storage) == base]
    return all(last_reader.get(name, -1) <= step for name in sharing)


def _root(name: str, storage: dict[str, str]) -> str:
    while name in storage:
        name = storage[name]
    return name


def live_buffers(graph: Graph, storage: dict[str, str]) -> list[Buffer]:
    caller_owned = set(graph.inputs) | set(graph.outputs) | set(graph.state)
    ready = set(graph.inputs) | {t.name for t in graph.tensors.values() if t.is_constant}
    for node in graph.nodes:  # the schedule is the node order: every input must exist by then
        missing = [name for name in node.inputs if name and name not in ready]
        assert not missing, f"node {node.name} reads {missing} before they are computed"
        ready.update(node.outputs)
    spans: dict[str, list[int]] = {}
    for step, node in enumerate(graph.nodes):
        for name in filter(None, node.outputs):  # an optional output left out ("") takes no buffer
            base = _root(name, storage)
            if base not in caller_owned and graph.constant(base) is None:
                spans.setdefault(base, [step, step])
        for name in node.inputs:
            base = _root(name, storage) if name else ""
            if base in spans:
                spans[base][1] = step
    buffers = [Buffer(name, first, last, _aligned(graph.tensors[name].nbytes)) for name, (first, last) in spans.items()]
    for step, node in enumerate(graph.nodes):
        scratch = SUPPORTED_OPS[node.op].scratch_bytes(node, graph)
        if scratch:
            buffers.append(Buffer(f"scratch:{node.name}", step, step, _aligned(scratch)))
    return buffers


def _overlap_in_time(a: Buffer, b: Buffer) -> bool:
    return not (a.last < b.first or b.last < a.first)


def greedy_by_size(buffers: list[Buffer]) -> dict[str, int]:
    """Largest first, each at the lowest offset clear of every placed buffer live at the same time."""
    placed: list[tuple[int, Buffer]] = []
    offsets = {}
    for buf in sorted(buffers, key=lambda b: (-b.size, b.first, b.name)):
        offset = 0
        for o, other in sorted(placed, key=lambda p: p[0]):
            if _overlap_in_time(buf, other) and offset < o + other.size and o < offset + buf.size:
                offset = o + other.size
        placed.append((offset, buf))
        offsets[buf.name] = offset
    return offsets


def greedy_by_conflicts(buffers: list[Buffer]) -> dict[str, int]:
    """Longest-lived, most-contended buffers first, each into the tightest gap (best fit)
    left by those live with it: long lives settle low and short ones fill the holes."""
    contention = {b.name: sum(o.size for o in buffers if o is not b and _overlap_in_time(b, o)) for b in buffers}
    placed: list[tuple[int, Buffer]] = []
    offsets = {}
    for buf in sorted(buffers, key=lambda b: (-(b.last - b.first), -contention[b.name], -b.size, b.name)):
        busy = sorted((o, o + other.size) for o, other in placed if _overlap_in_time(buf, other))
        gaps, cursor = [], 0  # (gap size, start) of every hole the buffer fits in
        for start, end in busy:
            if start - cursor >= buf.size:
                gaps.append((start - cursor, cursor))
            cursor = max(cursor, end)
        offset = min(gaps)[1] if gaps else cursor
        placed.append((offset, buf))
        offsets[buf.name] = offset
    return offsets


ALGORITHMS = {"greedy_by_size": greedy_by_size, "greedy_by_conflicts": greedy_by_conflicts}


def validate(buffers: list[Buffer], offsets: dict[str, int]) -> None:
    """Raise when two buffers live at the same step share a byte."""
    for k, a in enumerate(buffers):
        for b in buffers[k + 1:]:
            if _overlap_in_time(a, b) and offsets[a.name] < offsets[b.name] + b.size \
                    and offsets[b.name] < offsets[a.name] + a.size:
                raise AssertionError(f"arena overlap: {a} at {offsets[a.name]} and {b} at {offsets[b.name]}")
        if offsets[a.name] % ALIGN:
            raise AssertionError(f"arena buffer {a.name} at {offsets[a.name]} is not {ALIGN}-byte aligned")


def _place(buffers: list[Buffer], algorithm: str | None) -> tuple[int, str, dict[str, int]]:
    """The smaller of the algorithms' placements (or the one named): (bytes, algorithm, offsets)."""
    plans = []
    for name, place in ALGORITHMS.items():
        if algorithm not in (None, name):
            continue
        offsets = place(buffers)
        validate(buffers, offsets)
        total = max((offsets[b.name] + b.size for b in buffers), default=0)
        plans.append((total, name, offsets))
    return min(plans, key=lambda p: (p[0], p[1]))


def _hottest_first(buffers: list[Buffer], graph: Graph) -> list[Buffer]:
    """Kernel scratch (read over and over by its kernel), smallest first; then the activations
    by readers per byte."""
    readers = collections.Counter(name for n in graph.nodes for name in set(n.inputs))
    return sorted(buffers, key=lambda b: (not b.name.startswith("scratch:"),
                                          -readers[b.name] / max(b.size, 1) if not b.name.startswith("scratch:")
                                          else b.size,
                                          b.name))


def _spread(buffers: list[Buffer], graph: Graph, pools: list[Pool], steps: int) -> dict[str, str]:
    """Each buffer's pool, hottest first into the first pool (fill order) whose live bytes stay
    within its capacity at every step of the buffer's life."""
    live = {p.name: [0] * max(steps, 1) for p in pools}
    pool_of = {}
    for buf in _hottest_first(buffers, graph):
        for p in pools:
            span = live[p.name][buf.first:buf.last + 1]
            if p.capacity is None or max(span) + buf.size <= p.capacity:
                pool_of[buf.name] = p.name
                for k in range(buf.first, buf.last + 1):
                    live[p.name][k] += buf.size
                break
        else:  # every pool is bounded here (an unbounded one takes anything)
            free = {p.name: p.capacity - max(live[p.name][buf.first:buf.last + 1]) for p in pools}
            raise MoaEdgeError(f"the model's intermediates do not fit the memory pools: {buf.name} ({buf.size} bytes, "
                               f"live from step {buf.first} to {buf.last}) finds no room in "
                               + ", ".join(f"{p.name or 'the arena'}{f' (memory {p.memory})' if p.memory else ''}: "
                                           f"{free[p.name]} of {p.capacity} bytes free then" for p in pools)
                               + f"; {buf.size - max(free.values())} bytes short")
    return pool_of


def plan_arena(graph: Graph, algorithm: str | None = None, pools: list[Pool] | None = None) -> ArenaPlan:
    """The arena's placement; with `pools` (fill order, the arena among them as name ""), the
    buffers spread over them first, each pool then placed on its own."""
    storage = shared_storage(graph)
    buffers = live_buffers(graph, storage)
    pools = pools or [ARENA]
    steps = len(graph.nodes)
    pool_of = ({b.name: "" for b in buffers} if pools == [ARENA]  # the arena alone, as large as it needs
               else _spread(buffers, graph, pools, steps))
    while True:
        offsets, totals, name = {}, {}, ""
        for p in pools:
            members = [b for b in buffers if pool_of[b.name] == p.name]
            totals[p.name], algo, placed = _place(members, algorithm)
            offsets.update(placed)
            name = algo if p.name == "" else name
        over = next((p for p in pools if p.capacity is not None and totals[p.name] > p.capacity), None)
        if over is None:
            break
        # fragmentation: its coldest buffer goes on to the next pool with room (or there is none)
        later = pools[pools.index(over) + 1:]
        coldest = [b for b in reversed(_hottest_first(buffers, graph)) if pool_of[b.name] == over.name]
        moved = False
        for buf in coldest:
            for p in later:
                span_live = max((sum(o.size for o in buffers if pool_of[o.name] == p.name and o.first <= k <= o.last)
                                 for k in range(buf.first, buf.last + 1)), default=0)
                if p.capacity is None or span_live + buf.size <= p.capacity:
                    pool_of[buf.name], moved = p.name, True
                    break
            if moved:
                break
        if not moved:
            raise MoaEdgeError(f"the model's intermediates do not fit memory pool {over.name or 'arena'!r}: placed, "
                               f"they take {totals[over.name]} bytes of its {over.capacity}, "
                               f"{totals[over.name] - over.capacity} bytes short, and no later pool has room")
    used = [p for p in pools if p.name != "" and totals[p.name] > 0]
    return ArenaPlan(offsets=offsets, sizes={b.name: b.size for b in buffers}, total_bytes=totals.get("", 0),
                     storage_of=storage, algorithm=name, buffers=buffers, steps=[n.name for n in graph.nodes],
                     pool_of={k: v for k, v in pool_of.items() if v}, pools=used,
                     pool_bytes={p.name: totals[p.name] for p in used})
