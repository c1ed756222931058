"""LayerNormalization, RMSNormalization and Softmax: each row (or axis) at a time, by the
kernels of c_runtime/src/normalization.c, the rows lifted onto the run's worker pool. The tensors stay where they are: a norm's rows
are the trailing axes from `axis` on (contiguous), softmax walks its axis with a stride."""
from __future__ import annotations

import math

from moa_edge.lazy import torch

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text, c_float_short

from .contract import EmittedUnit, OpCost, TensorType, check_status, operand_bytes

OPS = ("LayerNormalization", "RMSNormalization", "Softmax", "LogSoftmax", "Hardmax")
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"LayerNormalization": 17, "RMSNormalization": 23, "Softmax": 13, "LogSoftmax": 13, "Hardmax": 13}
C_SOURCES = ["normalization.c", "pool.c", "reductions.c"]  # pool.c: rows lifted onto the workers
DECLARATIONS = ['#include "moa/normalization.h"\n']
# The kernels write each element after its last read of the input, so y may be x.
IN_PLACE = True
# flops per input element (the norms: mean, variance, scale, shift)
_FLOPS_PER_ELEMENT = {"LayerNormalization": 8, "RMSNormalization": 5, "Softmax": 5, "LogSoftmax": 5, "Hardmax": 2}
# Along an axis by reductions.c: LogSoftmax, Hardmax.
_AXIS_KERNELS = {"LogSoftmax": "moa_log_softmax_f32", "Hardmax": "moa_hardmax_f32"}


def _axis(node, rank: int) -> int:
    axis = node.attrs.get("axis", -1)
    if not -rank <= axis < rank:
        raise MoaEdgeError(f"{node.op} node {node.name!r}: axis {axis} is outside a rank-{rank} input")
    return axis % rank


def infer(node, graph) -> list[TensorType]:
    """Y as X; LayerNormalization's Mean and InvStdDev one float32 per row, the normalized axes kept as 1s."""
    x = graph.tensors[node.inputs[0]]
    axis = _axis(node, len(x.shape))
    stats = TensorType(tuple(x.shape[:axis]) + (1,) * (len(x.shape) - axis), "float32")
    return [TensorType(tuple(x.shape), x.dtype), stats, stats][:len(node.outputs)]


def op_cost(node, graph) -> OpCost:
    moved = operand_bytes(node, graph)
    return OpCost(_FLOPS_PER_ELEMENT[node.op] * graph.tensors[node.inputs[0]].size, moved.weight_bytes,
                  moved.activation_bytes)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    x = inputs[0]
    axis = _axis(node, x.dim())
    if node.op == "Softmax":
        return [torch.softmax(x, dim=axis)]
    if node.op == "LogSoftmax":
        return [torch.log_softmax(x, dim=axis)]
    if node.op == "Hardmax":
        return [torch.nn.functional.one_hot(x.argmax(dim=axis), x.shape[axis]).movedim(-1, axis).to(x.dtype)]
    normalized = x.shape[axis:]
    eps = node.attrs.get("epsilon", 1e-5)
    if node.op == "RMSNormalization":
        return [torch.nn.functional.rms_norm(x, normalized, eps=eps) * inputs[1]]
    # The scale and bias broadcast as ONNX's Mul and Add do (they may have leading 1s).
    bias = inputs[2] if len(inputs) > 2 and inputs[2] is not None else 0.0
    y = torch.nn.functional.layer_norm(x, normalized, eps=eps) * inputs[1] + bias
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    inv_std_dev = 1.0 / torch.sqrt(x.var(dim=dims, unbiased=False, keepdim=True) + eps)
    return [y, mean, inv_std_dev][:len(node.outputs)]


def _rows_cols(node, graph) -> tuple[int, int]:
    shape = graph.tensors[node.inputs[0]].shape
    axis = _axis(node, len(shape))
    return math.prod(shape[:axis]), math.prod(shape[axis:])


def _per_column(node, graph, k: int, what: str, cols: int) -> None:
    """The kernels read scale and bias as one value per column: refuse other broadcasts."""
    t = graph.tensors[node.inputs[k]]
    if t.size != cols:
        raise MoaEdgeError(f"{node.op} node {node.name!r}: {what} {t.name!r} of shape {list(t.shape)} is not "
                           f"one value per normalized element ({cols}); broadcast {what}s are not supported")


def emit(node, ctx):
    graph, where = ctx.graph, ctx.where
    dtypes.require_dtypes(node, graph)
    x, y = where[node.inputs[0]], where[node.outputs[0]]
    if graph.tensors[node.outputs[0]].shape != graph.tensors[node.inputs[0]].shape:
        raise MoaEdgeError(f"{node.op} node {node.name!r}: the output shape differs from the input's "
                           f"(broadcast scale or bias); not supported")
    if node.op in _AXIS_KERNELS:
        shape = graph.tensors[node.inputs[0]].shape
        axis = _axis(node, len(shape))
        call = (f"{_AXIS_KERNELS[node.op]}({x}, {y}, {math.prod(shape[:axis])}u, {shape[axis]}u, "
                f"{math.prod(shape[axis + 1:])}u)")
        return EmittedUnit(f"    /* {c_comment_text(node.name)}: {node.op} along axis {axis} */\n" + check_status(call),
                           declarations=[*DECLARATIONS, '#include "moa/reductions.h"\n'])
    if node.op == "Softmax":
        shape = graph.tensors[node.inputs[0]].shape
        axis = _axis(node, len(shape))
        call = f"moa_softmax_f32_on(pool, {x}, {y}, {math.prod(shape[:axis])}u, {shape[axis]}u, {math.prod(shape[axis + 1:])}u)"
        return EmittedUnit(f"    /* {c_comment_text(node.name)}: Softmax along axis {axis} */\n" + check_status(call),
                           declarations=DECLARATIONS)
    rows, cols = _rows_cols(node, graph)
    eps = float(node.attrs.get("epsilon", 1e-5))
    _per_column(node, graph, 1, "scale", cols)
    scale = where[node.inputs[1]]
    if node.op == "RMSNormalization":
        call = f"moa_rms_norm_f32_on(pool, {x}, {scale}, {y}, {rows}u, {cols}u, {c_float_short(eps)})"
    else:
        has_bias = len(node.inputs) > 2 and node.inputs[2]
        if has_bias:
            _per_column(node, graph, 2, "bias", cols)
        bias = where[node.inputs[2]] if has_bias else "NULL"
        # Mean and InvStdDev, when the graph keeps them: one value per row, written alongside.
        stats = [where.get(name, "NULL") if name else "NULL" for name in (node.outputs[1:] + ["", ""])[:2]]
        call = f"moa_layer_norm_f32_on(pool, {x}, {scale}, {bias}, {y}, {stats[0]}, {stats[1]}, {rows}u, {cols}u, {c_float_short(eps)})"
    return EmittedUnit(f"    /* {c_comment_text(node.name)}: {node.op} of {rows} rows of {cols} */\n" + check_status(call),
                       declarations=DECLARATIONS)
