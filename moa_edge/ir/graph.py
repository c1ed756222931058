"""Graph, Node and Tensor. Deliberately small: passes rewrite it, codegen walks it."""
from __future__ import annotations

from dataclasses import dataclass, field
import math
from typing import Any

import numpy as np

from moa_edge.errors import MoaEdgeError

from . import dtypes

# No tensor may hold 2**62 bytes or more: far beyond any board, and every size the generated C
# and the planner add up stays clear of a 64-bit overflow.
MAX_TENSOR_BYTES = 1 << 62


def attribute_text(value) -> str:
    """A string attribute as text: onnx hands them over as bytes."""
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    data: np.ndarray | None = None  # set for constants (initializers)
    quant: dtypes.Quantization | None = None  # how stored integers map to reals (quantized weights)

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * dtypes.dtype(self.dtype).itemsize

    @property
    def stored_type(self) -> str:
        """What one element holds, for reports: the dtype, or int4 for 4-bit pairs in uint8."""
        return f"int{self.quant.bits}" if self.quant is not None else self.dtype


@dataclass(eq=False)  # a node is itself: list.index and `in` find this one, at once, not an equal copy
class Node:
    op: str
    name: str
    inputs: list[str]  # tensor names; "" marks an absent optional input
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    name: str
    inputs: list[str]
    outputs: list[str]
    nodes: list[Node]
    tensors: dict[str, Tensor]
    opsets: dict[str, int] = field(default_factory=lambda: {"": 18})
    # Tensors that persist across calls in the caller's state buffer (a decoder's key/value
    # caches), neither inputs, outputs nor arena.
    state: list[str] = field(default_factory=list)
    # The most threads a run may use (convert --threads): kernels lifted onto cores get a scratch
    # per thread in the arena.
    max_threads: int = 1
    # Names fresh_name has handed out (a rewrite may name several nodes before adding them).
    _given: set[str] = field(default_factory=set, repr=False, compare=False)

    def fresh_name(self, stem: str) -> str:
        """`stem`, or it with underscores appended, unused by any tensor or node and not given before."""
        taken = self._given | set(self.tensors) | {node.name for node in self.nodes}
        name = stem
        while name in taken:
            name += "_"
        self._given.add(name)
        return name

    def producer(self, name: str) -> Node | None:
        for node in self.nodes:
            if name in node.outputs:
                return node
        return None

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def constant(self, name: str) -> np.ndarray | None:
        t = self.tensors.get(name)
        return None if t is None else t.data

    def remove_dead(self) -> None:
        """Drop nodes and tensors that no graph output depends on."""
        live = set(self.outputs)
        kept: list[Node] = []
        for node in reversed(self.nodes):
            if any(o in live for o in node.outputs):
                kept.append(node)
                live.update(i for i in node.inputs if i)
        self.nodes = kept[::-1]
        live.update(self.inputs)
        self.tensors = {k: v for k, v in self.tensors.items() if k in live}

    def toposort(self) -> None:
        """Order nodes so each comes after the producers of its inputs (stable otherwise):
        a rewrite that replaces a late node may feed consumers placed before it."""
        produced_by = {o: n for n in self.nodes for o in n.outputs if o}
        ordered, placed = [], set()

        def place(node, path=()):
            if id(node) in placed:
                return
            assert id(node) not in path, f"cycle through {node.name}"
            for name in node.inputs:
                if name in produced_by:
                    place(produced_by[name], path + (id(node),))
            placed.add(id(node))
            ordered.append(node)

        for node in self.nodes:
            place(node)
        self.nodes = ordered

    def weights(self) -> list[Tensor]:
        used = {i for n in self.nodes for i in n.inputs}
        return [t for t in self.tensors.values() if t.is_constant and t.name in used]

    def weight_bytes_by_type(self) -> dict[str, int]:
        """Bytes of the weights per stored type: float32, int8, int4 (two to a byte), ... A quantized
        weight's scales and offsets count as the float32 they are."""
        return bytes_by_type(self.weights())


def bytes_by_type(tensors) -> dict[str, int]:
    totals: dict[str, int] = {}
    for t in tensors:
        totals[t.stored_type] = totals.get(t.stored_type, 0) + t.nbytes
    return dict(sorted(totals.items()))


def check_sizes(graph: Graph, source: str) -> None:
    """Every tensor's dimensions are whole and non-negative, and its element count and byte size
    (Python integers: no wrap-around) stay below MAX_TENSOR_BYTES: a model stating impossible sizes
    is refused before any byte is planned or written."""
    for t in graph.tensors.values():
        if any(not isinstance(d, (int, np.integer)) or d < 0 for d in t.shape):
            raise MoaEdgeError(f"{source}: tensor {t.name!r} has shape {list(t.shape)}; dimensions must be 0 or more")
        elems = math.prod(int(d) for d in t.shape)
        itemsize = dtypes.dtype(t.dtype).itemsize if t.dtype in dtypes.KNOWN_DTYPES else 1
        if elems * itemsize >= MAX_TENSOR_BYTES:
            raise MoaEdgeError(f"{source}: tensor {t.name!r} of shape {list(t.shape)} would hold {elems} elements "
                               f"({elems * itemsize} bytes), more than any board has (limit 2**62 bytes)")
    if not graph.outputs:
        raise MoaEdgeError(f"{source}: the graph has no outputs: nothing to compute")
