"""ReduceL2, ReduceL1 and ReduceSumSquare over constant axes, by the kernels of
c_runtime/src/reduce_norm.c (ReduceL2 is the norm in F.normalize, e.g. sentence
embeddings made unit length).

The axes split into (outer, n, inner) passes as in reduce.py: the first pass squares (or
takes |x|) and sums, later passes only sum (moa_reduce_sum_f32), and ReduceL2 takes the
square root of the last pass's result in place. One pass (the usual case) is one call;
noop_with_empty_axes is one pass over one element per row, so |x|, x^2 or sqrt(x^2), as
onnxruntime and the ONNX reference evaluator give."""
from __future__ import annotations

from moa_edge.lazy import torch

from .contract import EmittedUnit, check_status
from .reduce import emit_passes, infer, reduced_axes, scratch_bytes  # noqa: F401  (infer, scratch_bytes: as reduce's)

OPS = ("ReduceL2", "ReduceL1", "ReduceSumSquare")
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"ReduceL2": 18, "ReduceL1": 18, "ReduceSumSquare": 18}
C_SOURCES = ["normalization.c", "reduce_norm.c"]
DECLARATIONS = ['#include "moa/normalization.h"\n', '#include "moa/reduce_norm.h"\n']
# The whole reduction in one call, and the first of several passes.
_ONE_CALL = {"ReduceL2": "moa_reduce_l2_f32", "ReduceL1": "moa_reduce_l1_f32",
             "ReduceSumSquare": "moa_reduce_sum_square_f32"}
_FIRST_PASS = {"ReduceL2": "moa_reduce_sum_square_f32", "ReduceL1": "moa_reduce_l1_f32",
               "ReduceSumSquare": "moa_reduce_sum_square_f32"}


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    x = inputs[0]
    axes = reduced_axes(node, graph, x.dim())
    keep = bool(node.attrs.get("keepdims", 1))
    terms = x.abs() if node.op == "ReduceL1" else x * x
    # noop_with_empty_axes reduces nothing but still maps each element (|x|, x^2, sqrt(x^2)),
    # as onnxruntime and the ONNX reference evaluator do.
    total = terms.sum(dim=axes, keepdim=keep) if axes else terms
    return [total.sqrt() if node.op == "ReduceL2" else total]


def emit(node, ctx):
    lines, y, count = emit_passes(node, ctx, lambda k, count: _ONE_CALL[node.op] if count == 1
                                  else _FIRST_PASS[node.op] if k == 0 else "moa_reduce_sum_f32")
    if node.op == "ReduceL2" and count > 1:  # several passes: the root of the last sum, in place
        size = ctx.graph.tensors[node.outputs[0]].size
        lines.append(check_status(f"moa_sqrt_f32({y}, {y}, {size}u)"))
    return EmittedUnit("".join(lines), declarations=DECLARATIONS)
