"""BitCast: the same bits read as another type of the same width (float32 <-> int32, bool -> uint8, ...).

The C copies the bytes (a memcpy written as a loop over unsigned char, which C lets alias any
type); the reference reinterprets numpy's array in the source type (numpy's view)."""
from __future__ import annotations

import numpy as np
from moa_edge.lazy import torch

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text

from .contract import EmittedUnit, OpCost, TensorType

OPS = ("BitCast",)
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"BitCast": 26}
C_SOURCES: list[str] = []
C_LOCALS = frozenset({"from", "to", "n"})


def _types(node, graph) -> tuple[dtypes.DType, dtypes.DType]:
    source = dtypes.dtype(graph.tensors[node.inputs[0]].dtype)
    target = dtypes.from_onnx(node.attrs.get("to", 0))
    for record, what in ((source, "input"), (target, "target")):
        if record is None or record.name not in dtypes.RUNTIME_DTYPES:
            raise MoaEdgeError(f"BitCast node {node.name!r}: the {what} type "
                               f"{record.name if record else node.attrs.get('to')} is not supported "
                               f"(the runtime has {', '.join(dtypes.RUNTIME_DTYPES)})")
    if source.itemsize != target.itemsize:
        raise MoaEdgeError(f"BitCast node {node.name!r}: {source.name} and {target.name} differ in width "
                           f"({source.itemsize} and {target.itemsize} bytes)")
    return source, target


def infer(node, graph) -> list[TensorType]:
    """The input's shape, in the `to` type."""
    return [TensorType(tuple(graph.tensors[node.inputs[0]].shape), _types(node, graph)[1].name)]


def op_cost(node, graph) -> OpCost:
    return OpCost(0, 0, 2 * graph.tensors[node.inputs[0]].nbytes)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    """The reference widens floats to float64 and uint16/32/64 to int64: back to the source type,
    reinterpreted, widened again."""
    source, target = _types(node, graph)
    bits = inputs[0].numpy().astype(source.numpy).view(target.numpy)
    if target.is_float:
        return [torch.from_numpy(bits.astype(np.float64))]
    if target.name in ("uint16", "uint32", "uint64"):
        return [torch.from_numpy(bits.astype(np.int64))]
    return [torch.from_numpy(bits.copy())]


def emit(node, ctx) -> EmittedUnit:
    x, y = node.inputs[0], node.outputs[0]
    source, target = _types(node, ctx.graph)
    count = ctx.graph.tensors[x].nbytes
    return EmittedUnit(f"    {{ /* {c_comment_text(node.name)}: BitCast {source.name} -> {target.name}, "
                       f"{count} bytes */\n"
                       f"        const unsigned char *from = (const unsigned char *){ctx.where[x]};\n"
                       f"        unsigned char *to = (unsigned char *){ctx.where[y]};\n"
                       f"        ptrdiff_t n;\n"
                       f"        for (n = 0; n < {count}; n++) {{ to[n] = from[n]; }}\n"
                       f"    }}\n")
