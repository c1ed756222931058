"""MoaQGather: a Gather of rows of a float32 table E [V, D] (axis 0, run-time integer indices: the
token embedding lookup) whose table is stored quantized (convert --weights), one
moa_gather_qw_f32 call (qgather.h) per index.

    out[i, :] = E[wrap(idx[i]), :],   E = W^T,   W[k][v] = scale[k // block][v] q[k][v] + offset[k // block][v]
                                                  (float16: W[k][v] = q[k][v])

The table is stored as W = E^T (K = D, N = V) in exactly MoaQGemm's layout (ops/qmatmul.py
pack_quantized), so a tied lm_head, whose weight is E^T, reads the very same tensors.
Inputs: indices, q, scale ("" for none: float16), offset ("" for none). A negative index counts
from the end, as ONNX says; one outside the table stops the model with MOA_ERR_INDEX_OUT_OF_RANGE.
"""
from __future__ import annotations

from moa_edge.lazy import torch

from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text

from .contract import EmittedUnit, OpCost, TensorType, check_status
from .qmatmul import PANEL, STORAGE, c_weights, dequantize, describe, require_scales

OPS = ("MoaQGather",)
C_SOURCES = ["qgather.c"]
HEADER = '#include "moa/qgather.h"'
C_LOCALS = frozenset({"i", "row"})  # its loop's index and the wrapped row


def infer(node, graph) -> list[TensorType]:
    """indices.shape + [D], float32."""
    return [TensorType(tuple(graph.tensors[node.inputs[0]].shape) + (node.attrs["k"],), "float32")]


def op_cost(node, graph) -> OpCost:
    """The rows picked, not the whole table: each index reads one column of every weight tensor."""
    count, columns = graph.tensors[node.inputs[0]].size, -(-node.attrs["n"] // PANEL) * PANEL
    table = sum(graph.tensors[n].nbytes for n in node.inputs[1:] if n)
    moved = graph.tensors[node.inputs[0]].nbytes + graph.tensors[node.outputs[0]].nbytes
    return OpCost(0, count * table // columns, moved)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    attrs = node.attrs
    scale, offset = (inputs[k] if len(inputs) > k else None for k in (2, 3))
    table = dequantize(inputs[1], scale, offset, attrs["qtype"], attrs["block"], attrs["k"], attrs["n"],
                       attrs.get("zero", 0)).T
    indices = inputs[0]
    wrapped = torch.where(indices < 0, indices + attrs["n"], indices).long()
    return [torch.index_select(table, 0, wrapped.reshape(-1)).reshape(*indices.shape, attrs["k"])]


def emit(node, ctx):
    graph, attrs = ctx.graph, node.attrs
    dtypes.require_dtypes(node, graph, ("int32", "int64"), names=node.inputs[:1])
    dtypes.require_dtypes(node, graph, names=node.outputs)
    dtypes.require_dtypes(node, graph, (STORAGE[attrs["qtype"]],), names=node.inputs[1:2])
    D, V, count = attrs["k"], attrs["n"], graph.tensors[node.inputs[0]].size
    idx, out = ctx.where[node.inputs[0]], ctx.where[node.outputs[0]]
    require_scales(node, graph, ("float32", "float16"))  # a lookup reads no two-level scales
    call = f"moa_gather_qw_f32({D}, {V}, {c_weights(node, ctx)}, row, {out} + i * {D})"
    return EmittedUnit(
        f"    {{ /* {c_comment_text(node.name)}: Gather of {V} rows of {D} stored as {describe(attrs, D)} */\n"
        f"        ptrdiff_t i;\n"
        f"        for (i = 0; i < {count}; i++) {{\n"
        f"            const ptrdiff_t row = {idx}[i] < 0 ? (ptrdiff_t){idx}[i] + {V} : (ptrdiff_t){idx}[i];\n"
        f"{check_status(call, ' ' * 12)}"
        f"        }}\n"
        f"    }}\n", declarations=[HEADER])
