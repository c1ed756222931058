"""The op contract: what every op module (one per op family, moa_edge/ops/*.py) states, and
the defaults for what it leaves out, given here once so a module states only what differs.

Every module states (OpModule):
  OPS                           the IR op types it implements (ONNX names, or Moa* for our own)
  C_SOURCES                     the c_runtime/src files its calls need (copied into the project)
  infer(node, graph)            -> one TensorType per output: the shape and dtype rule, from the
                                   inputs' recorded types and the node's attributes (shape None:
                                   the rule does not fix it, e.g. a Range over run-time scalars)
  evaluate(node, inputs, graph) -> the outputs as float64 torch tensors (the reference executor)
  emit(node, ctx)               -> EmittedUnit: the C statements that run it
and may state (the default after the colon):
  scratch_bytes(node, graph)    arena bytes the node needs while it runs: 0
  op_cost(node, graph)          -> OpCost, flops and bytes moved: no flops, every operand once
  C_LOCALS                      names its C declares that no tensor's C name may take: none
  ALIASES = True                the output shares the input's storage; emit is called only
                                to copy into a caller-owned output: False
  IN_PLACE = True               the output may overwrite any input of its shape and type: False
  in_place_inputs(node, graph)  -> the inputs it may overwrite: all of them when IN_PLACE, else none
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol

from moa_edge.ir import Graph, Node
from moa_edge.target import Board

# The run function's own locals (codegen/templates/model.c.in): no tensor's C name may take one.
RUN_LOCALS = frozenset({"arena", "arena_bytes", "args", "base", "ctx", "end", "failed", "first", "pool", "status",
                        "thread"})


@dataclass(frozen=True)
class EmitContext:
    name: str                # a unique C symbol stem for this node
    board: Board             # the target: the kernels' tiles were chosen for its caches
    where: dict              # tensor name -> C expression of its buffer
    scratch: str             # C expression of the node's scratch, or "NULL"
    graph: Graph | None = None  # shapes and dtypes of every tensor
    # Lifts a loop onto the run's worker pool: lift(items, lines) makes `lines` (C statements over
    # items first .. end - 1, in the names `where` gives) a task of the pool and returns the
    # statement that runs it; None where the loop stays inline (a generation build's chunks).
    # lift(items, lines, returns_status=True): `lines` return a moa_status (errors early), which
    # the run returns.
    lift: Callable[[int, list[str]], str] | None = None


@dataclass
class EmittedUnit:
    call: str                                             # statements in <prefix>_run
    kernels: list[str] = field(default_factory=list)      # functions for attention.c
    declarations: list[str] = field(default_factory=list)  # their prototypes for attention.h


class TensorType(NamedTuple):
    shape: tuple[int, ...] | None  # None: the op's rule leaves it to the graph
    dtype: str


@dataclass(frozen=True)
class OpCost:
    """One node's estimated work: arithmetic, and the bytes it reads and writes."""
    flops: int
    weight_bytes: int      # constants read (from DRAM, once)
    activation_bytes: int  # every other operand read or written


def check_status(call: str, indent: str = "    ") -> str:
    """`status = call;` and the early return on an error. MOA_UNLIKELY (moa/status.h): gcc then
    keeps the whole schedule hot instead of judging the layers after a long chain of checks cold.
    A call written over several lines keeps its own continuation indent."""
    return (f"{indent}status = {call};\n"
            f"{indent}if (MOA_UNLIKELY(status != MOA_OK)) {{\n"
            f"{indent}    return status;\n"
            f"{indent}}}\n")


def operand_bytes(node: Node, graph: Graph) -> OpCost:
    """No arithmetic; every operand read or written once, constants counted as weights."""
    names = [n for n in node.inputs if n] + [n for n in node.outputs if n]
    weights = sum(graph.tensors[n].nbytes for n in node.inputs if n and graph.tensors[n].is_constant)
    return OpCost(0, weights, sum(graph.tensors[n].nbytes for n in names if n in graph.tensors) - weights)


class OpModule(Protocol):
    """The hooks every op module must state (the optional ones: see Op)."""
    OPS: tuple[str, ...]
    C_SOURCES: list[str]

    def infer(self, node: Node, graph: Graph) -> list[TensorType]: ...

    def evaluate(self, node: Node, inputs: list, graph: Graph) -> list: ...

    def emit(self, node: Node, ctx: EmitContext) -> EmittedUnit: ...


REQUIRED = ("OPS", "C_SOURCES", "infer", "evaluate", "emit")


@dataclass(frozen=True)
class Op:
    """An op module with every hook filled in: its own where it states one, the default otherwise."""
    module: Any
    OPS: tuple[str, ...]
    C_SOURCES: list[str]
    infer: Callable[[Node, Graph], list[TensorType]]
    evaluate: Callable
    emit: Callable[[Node, EmitContext], EmittedUnit]
    scratch_bytes: Callable[[Node, Graph], int]
    op_cost: Callable[[Node, Graph], OpCost]
    C_LOCALS: frozenset[str]
    ALIASES: bool
    IN_PLACE: bool
    in_place_inputs: Callable[[Node, Graph], list[str]]


def _no_scratch(node: Node, graph: Graph) -> int:
    return 0


def op_of(module: OpModule) -> Op:
    """The module's hooks, defaults filled in; a module missing a required hook is refused."""
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    if missing:
        raise TypeError(f"op module {module.__name__} does not state {', '.join(missing)} (ops/contract.py)")
    in_place = getattr(module, "IN_PLACE", False)

    def every_input_if_in_place(node: Node, graph: Graph) -> list[str]:
        return list(node.inputs) if in_place else []

    return Op(module=module, OPS=tuple(module.OPS), C_SOURCES=list(module.C_SOURCES), infer=module.infer,
              evaluate=module.evaluate, emit=module.emit,
              scratch_bytes=getattr(module, "scratch_bytes", _no_scratch),
              op_cost=getattr(module, "op_cost", operand_bytes),
              C_LOCALS=frozenset(getattr(module, "C_LOCALS", ())),
              ALIASES=getattr(module, "ALIASES", False), IN_PLACE=in_place,
              in_place_inputs=getattr(module, "in_place_inputs", every_input_if_in_place))
