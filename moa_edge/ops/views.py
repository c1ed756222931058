"""Reshape, Squeeze, Unsqueeze and Flatten: the same elements in the same order, seen with
another shape. The output aliases the input's storage (the planner gives it no buffer of
its own); only where the output is a caller-owned graph output is there a copy."""
from __future__ import annotations

import torch

OPS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")
C_SOURCES: list[str] = []
ALIASES = True


def scratch_bytes(node, graph=None) -> int:
    return 0


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    return [inputs[0].reshape(graph.tensors[node.outputs[0]].shape)]


def emit(node, ctx):
    """Only called when the output is the caller's buffer: copy the elements into it."""
    from . import EmittedUnit
    source, out = node.inputs[0], node.outputs[0]
    count = ctx.graph.tensors[out].size
    return EmittedUnit(f"    {{ /* {node.name}: {node.op} into the caller's output */\n"
                       f"        ptrdiff_t n;\n"
                       f"        for (n = 0; n < {count}; n++) {{ {ctx.where[out]}[n] = {ctx.where[source]}[n]; }}\n"
                       f"    }}\n")
