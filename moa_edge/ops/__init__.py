"""One module per op family: its shape rule, torch reference and C emission.

Each module offers `reference(node, inputs, graph) -> list of torch tensors`,
`scratch_bytes(node)`, `emit(node, ctx) -> EmittedUnit` and `C_SOURCES` (runtime files).
"""
from dataclasses import dataclass, field

from . import attention, concat


@dataclass(frozen=True)
class EmitContext:
    name: str                # a unique C symbol stem for this node
    board: str
    where: dict              # tensor name -> C expression of its buffer
    scratch: str             # C expression of the node's scratch, or "NULL"


@dataclass
class EmittedUnit:
    call: str                                             # statements in <prefix>_run
    kernels: list[str] = field(default_factory=list)      # functions for attention.c
    declarations: list[str] = field(default_factory=list)  # their prototypes for attention.h


# IR op name -> the module that implements it. An op missing here is unsupported.
SUPPORTED_OPS = {"MoaAttention": attention, "MoaConcat": concat}

__all__ = ["EmitContext", "EmittedUnit", "SUPPORTED_OPS", "attention", "concat"]
