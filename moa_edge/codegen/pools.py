"""The memory pools a model's intermediates are spread over (plan.arena.Pool), in fill order:
the hottest buffers go to the first.

On a bare-metal board every RAM memory but the code's and the weights' is a pool, the fastest
kind first (TCM, SRAM, PSRAM); the data's memory is the run's `arena` (with the stack, the
inputs and outputs and the C library's static data beside it), the others regions the runner
places in their memories by section (the linker script maps `.bss.moa_pool.<name>` there).
`--pool NAME:SIZE` caps one of them. On a Linux board `--pool NAME:SIZE[:SECTION]` adds a
region of its own (an SRAM the board maps, say), filled before the arena."""
from __future__ import annotations

from dataclasses import dataclass
import re

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph
from moa_edge.plan.arena import ARENA, Pool
from moa_edge.target import Board

KIND_ORDER = ("tcm", "sram", "psram")  # fastest first
STATIC_RESERVE = 8192  # the runner's and picolibc's own static data in the data memory (stdio's
                       # buffers); the linker counts it exactly


@dataclass(frozen=True)
class PoolRequest:
    """--pool NAME:SIZE[:SECTION]."""
    name: str
    size: int
    section: str | None = None

    @property
    def text(self) -> str:
        return f"{self.name}:{self.size}" + (f":{self.section}" if self.section else "")


def parse_pool(text: str) -> PoolRequest:
    """NAME:SIZE[:SECTION]: a lower-case name (it names C macros and a linker region), a size in
    bytes, a section name (it is written into C and linker scripts: letters, digits, . and _)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", parts[0]):
        raise MoaEdgeError(f"--pool {text!r}: give NAME:SIZE[:SECTION], NAME in lower-case letters, digits and _")
    if not re.fullmatch(r"[1-9][0-9]{0,12}", parts[1]):
        raise MoaEdgeError(f"--pool {text!r}: SIZE is a positive number of bytes (no units: 64 KiB is 65536)")
    if len(parts) == 3 and not re.fullmatch(r"\.?[A-Za-z_][A-Za-z0-9_.]{0,62}", parts[2]):
        raise MoaEdgeError(f"--pool {text!r}: SECTION is a section name (letters, digits, . and _)")
    return PoolRequest(parts[0], int(parts[1]), parts[2] if len(parts) == 3 else None)


def memory_pools(board: Board, requests: list[PoolRequest], reserved: int) -> list[Pool]:
    """The pools, fill order. `reserved`: the data memory's bytes besides the arena (stack,
    inputs and outputs, state), on a bare-metal board."""
    names = [r.name for r in requests]
    if len(set(names)) != len(names):
        raise MoaEdgeError(f"--pool: {sorted(n for n in names if names.count(n) > 1)[0]!r} is given twice")
    if not board.bare_metal:
        return [Pool(r.name, r.size, r.section or "") for r in requests] + [ARENA]
    code, weights, data = (board.memory_for(role) for role in ("code", "weights", "data"))
    ram = [m for m in board.memories if m.kind != "flash" and m.name not in (code.name, weights.name)]
    caps = {}
    for r in requests:
        if r.name not in {m.name for m in ram}:
            raise MoaEdgeError(f"--pool {r.text}: board {board.name} is bare metal, its pools are its data memories "
                               f"({', '.join(m.name for m in ram)}); --pool NAME:SIZE caps one of them")
        size = next(m.size for m in ram if m.name == r.name)
        if r.section or r.size > size:
            raise MoaEdgeError(f"--pool {r.text}: on board {board.name}, give NAME:SIZE with SIZE <= {size} "
                               f"(the memory's bytes; the linker script places it)")
        caps[r.name] = r.size
    order = sorted(ram, key=lambda m: (KIND_ORDER.index(m.kind), m.name != data.name, board.memories.index(m)))
    pools = []
    for m in order:
        capacity = caps.get(m.name, m.size)
        if m.name == data.name:
            pools.append(Pool("", max(capacity - reserved - STATIC_RESERVE, 0), kind=m.kind, memory=m.name))
        else:
            pools.append(Pool(m.name, capacity, f".bss.moa_pool.{m.name}", m.kind, m.name))
    return pools


def io_bytes(graph: Graph) -> int:
    """The bytes of the graph's inputs and outputs: the runner's buffers, beside the arena."""
    return sum(graph.tensors[n].nbytes for n in [*graph.inputs, *graph.outputs])


def graph_pools(graph: Graph, board: Board, requests: list[PoolRequest] = ()) -> list[Pool]:
    """The pools of `graph` on `board`: the data memory keeps room for its inputs, outputs and stack."""
    return memory_pools(board, list(requests), io_bytes(graph) + board.stack_bytes)
