"""One module per op family: its shape rule, torch reference and C emission.

Each module offers:
  OPS                           the IR op types it implements (ONNX names, or Moa* for our own)
  C_SOURCES                     the c_runtime/src files its calls need (copied into the project)
  scratch_bytes(node, graph)    arena bytes the node needs while it runs (0: none)
  emit(node, ctx)               -> EmittedUnit: the C statements that run it
  evaluate(node, inputs, graph) -> the outputs as float64 torch tensors (the reference executor)
and, for ops whose output is its input seen another way (Reshape, Squeeze, ...):
  ALIASES = True                the output shares the input's storage; emit is never called
and, for ops that may write their output over an input that dies there:
  IN_PLACE = True               over any input of the output's shape and type, or
  in_place_inputs(node, graph)  -> the inputs it may overwrite
"""
from dataclasses import dataclass, field

from moa_edge.ir import Graph
from moa_edge.target import Board

from . import (attention, concat, conv, elementwise, gather, indexing, matmul, mlp, normalization, reduce,
               reduce_norm, rotary, views)


@dataclass(frozen=True)
class EmitContext:
    name: str                # a unique C symbol stem for this node
    board: Board             # the target: the kernels' tiles were chosen for its caches
    where: dict              # tensor name -> C expression of its buffer
    scratch: str             # C expression of the node's scratch, or "NULL"
    graph: Graph | None = None  # shapes and dtypes of every tensor


@dataclass
class EmittedUnit:
    call: str                                             # statements in <prefix>_run
    kernels: list[str] = field(default_factory=list)      # functions for attention.c
    declarations: list[str] = field(default_factory=list)  # their prototypes for attention.h


_MODULES = (attention, concat, conv, elementwise, gather, indexing, matmul, mlp, normalization, reduce, reduce_norm,
            rotary, views)

# IR op name -> the module that implements it. An op missing here is unsupported.
SUPPORTED_OPS = {op: module for module in _MODULES for op in module.OPS}

__all__ = ["EmitContext", "EmittedUnit", "SUPPORTED_OPS", "attention", "concat"]
