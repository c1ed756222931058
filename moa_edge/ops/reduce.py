"""ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceLogSum and ReduceLogSumExp
over constant axes, by the kernels of c_runtime/src/normalization.c and reductions.c.

Adjacent axes merge, so any axis set is a few (outer, n, inner) passes: one per run of
reduced axes, innermost first, each reducing the previous pass's result. That is exact
for every op here (a mean of equal-sized means is the mean, a log-sum-exp of log-sum-exps the
log-sum-exp); ReduceLogSum sums in passes and takes the log of the last. Passes before the
last write to the node's scratch."""
from __future__ import annotations

import math

import numpy as np
from moa_edge.lazy import torch

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text

from .contract import EmittedUnit, OpCost, TensorType, check_status, operand_bytes
from .normalization import DECLARATIONS

OPS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceLogSum", "ReduceLogSumExp")
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"ReduceMean": 18, "ReduceSum": 13, "ReduceMax": 20, "ReduceMin": 20, "ReduceProd": 18,
                 "ReduceLogSum": 28, "ReduceLogSumExp": 28}
C_SOURCES = ["normalization.c", "reductions.c"]
_KERNEL = {"ReduceSum": "moa_reduce_sum_f32", "ReduceMean": "moa_reduce_mean_f32", "ReduceMax": "moa_reduce_max_f32",
           "ReduceMin": "moa_reduce_min_f32", "ReduceProd": "moa_reduce_prod_f32",
           "ReduceLogSum": "moa_reduce_sum_f32", "ReduceLogSumExp": "moa_reduce_logsumexp_f32"}
_DECLARATIONS = [*DECLARATIONS, '#include "moa/reductions.h"\n']


def reduced_axes(node, graph, rank: int) -> list[int]:
    """The axes reduced, sorted; [] for none (noop_with_empty_axes with empty axes)."""
    if len(node.inputs) > 1 and node.inputs[1]:  # opset 18 (ReduceSum: 13): axes is an input
        axes = graph.constant(node.inputs[1])
        if axes is None:
            raise MoaEdgeError(f"{node.op} node {node.name!r}: axes {node.inputs[1]!r} are computed at run time; "
                               f"only constant axes are supported")
        axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    else:  # older ReduceMean/ReduceMax: an attribute, or nothing
        axes = list(node.attrs.get("axes", []))
    if not axes:
        return [] if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    if any(not -rank <= a < rank for a in axes):
        raise MoaEdgeError(f"{node.op} node {node.name!r}: axes {axes} are outside a rank-{rank} input")
    return sorted({a % rank for a in axes})


def infer(node, graph) -> list[TensorType]:
    """The input's shape less the reduced axes (kept as 1s with keepdims), and its dtype."""
    x = graph.tensors[node.inputs[0]]
    axes = reduced_axes(node, graph, len(x.shape))
    keep = bool(node.attrs.get("keepdims", 1))
    shape = tuple(1 if k in axes else d for k, d in enumerate(x.shape) if keep or k not in axes)
    return [TensorType(shape, x.dtype)]


def op_cost(node, graph) -> OpCost:
    """One flop per input element."""
    moved = operand_bytes(node, graph)
    return OpCost(graph.tensors[node.inputs[0]].size, moved.weight_bytes, moved.activation_bytes)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    x = inputs[0]
    axes = reduced_axes(node, graph, x.dim())
    if not axes:
        return [x.clone()]
    keep = bool(node.attrs.get("keepdims", 1))
    if node.op in ("ReduceSum", "ReduceLogSum"):
        total = x.sum(dim=axes, keepdim=keep)
        return [total.log() if node.op == "ReduceLogSum" else total]
    if node.op == "ReduceMean":
        return [x.mean(dim=axes, keepdim=keep)]
    if node.op == "ReduceProd":
        for axis in sorted(axes, reverse=True):  # torch's prod takes one dim
            x = x.prod(dim=axis, keepdim=keep)
        return [x]
    if node.op == "ReduceLogSumExp":
        return [torch.logsumexp(x, dim=axes, keepdim=keep)]
    if x.numel() == 0:  # the empty minimum is +inf and the empty maximum -inf (torch refuses both)
        shape = [1 if k in axes else d for k, d in enumerate(x.shape) if keep or k not in axes]
        return [torch.full(shape, float("inf") if node.op == "ReduceMin" else float("-inf"), dtype=x.dtype)]
    return [x.amin(dim=axes, keepdim=keep) if node.op == "ReduceMin" else x.amax(dim=axes, keepdim=keep)]


def passes(shape: tuple[int, ...], axes: list[int]) -> list[tuple[int, int, int]]:
    """(outer, n, inner) of each kernel call, innermost run of reduced axes first."""
    if math.prod(shape) == 0:  # nothing to read: every output is the empty reduction
        return [(math.prod(d for k, d in enumerate(shape) if k not in axes), 0, 1)]
    runs: list[list] = []  # [size, reduced] of runs of adjacent axes; size-1 axes join any run
    for k, size in enumerate(shape):
        if size == 1:
            continue
        if runs and runs[-1][1] == (k in axes):
            runs[-1][0] *= size
        else:
            runs.append([size, k in axes])
    calls = []
    while any(reduced for _, reduced in runs):
        last = max(j for j, (_, reduced) in enumerate(runs) if reduced)
        calls.append((math.prod(s for s, _ in runs[:last]), runs[last][0], math.prod(s for s, _ in runs[last + 1:])))
        del runs[last]
    return calls or [(math.prod(shape), 1, 1)]  # nothing reduced: a copy, one element per "row"


def scratch_bytes(node, graph) -> int:
    shape = graph.tensors[node.inputs[0]].shape
    calls = passes(shape, reduced_axes(node, graph, len(shape)))
    return dtypes.COMPUTE_DTYPE.itemsize * sum(outer * inner for outer, _, inner in calls[:-1])


def emit_passes(node, ctx, kernel_of_pass) -> tuple[list[str], str, int]:
    """The C of a reduction done in passes over (outer, n, inner) runs: pass k reads the
    previous pass's result (in the node's scratch) and calls kernel_of_pass(k, passes); the
    last writes the output. Returns the statements, the output's C expression ("" when it is
    empty) and the number of passes."""
    graph = ctx.graph
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    dtypes.require_dtypes(node, graph, names=[x.name, y.name])
    axes = reduced_axes(node, graph, len(x.shape))
    calls = passes(x.shape, axes)
    lines = [f"    /* {c_comment_text(node.name)}: {node.op} over axes {axes} of {list(x.shape)}, in {len(calls)} pass(es) */\n"]
    if y.size == 0:  # nothing to write; the casts keep -Wunused-parameter quiet
        return lines + [f"    (void){ctx.where[x.name]};\n    (void){ctx.where[y.name]};\n"], "", 0
    source, offset = ctx.where[x.name], 0
    for k, (outer, n, inner) in enumerate(calls):
        target = (ctx.where[y.name] if k == len(calls) - 1
                  else f"({ctx.scratch} + {offset})" if offset else ctx.scratch)
        lines.append(check_status(f"{kernel_of_pass(k, len(calls))}({source}, {target}, {outer}u, {n}u, {inner}u)"))
        source, offset = target, offset + outer * inner
    return lines, ctx.where[y.name], len(calls)


def emit(node, ctx):
    lines, y, _ = emit_passes(node, ctx, lambda k, count: _KERNEL[node.op])
    shape = ctx.graph.tensors[node.inputs[0]].shape
    if node.op == "ReduceLogSum" and y and reduced_axes(node, ctx.graph, len(shape)):  # the log of the last sum
        lines.append(check_status(f"moa_log_f32({y}, {y}, {ctx.graph.tensors[node.outputs[0]].size}u)"))
    return EmittedUnit("".join(lines), declarations=_DECLARATIONS)
