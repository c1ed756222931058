"""ReverseSequence: each batch entry's first lens[b] time steps in reverse order, the rest as they are.

  out[.., t, .., b, ..] = x[.., lens[b] - 1 - t, .., b, ..]  for t < lens[b], else x[.., t, .., b, ..]
over the time axis and the batch axis the attributes name, with sequence_lens read at run time.
A length outside [0, max_time] stops the model with MOA_ERR_INDEX_OUT_OF_RANGE before any
element of that batch entry is read (nothing is clamped).
"""
from __future__ import annotations

from moa_edge.errors import MoaEdgeError
from moa_edge.ir.c_syntax import c_comment_text
from moa_edge.lazy import torch

from .contract import EmittedUnit, TensorType
from .indexing import _buffers, _ctype, _declare_loop_indices, _loops, _offset, _strides

OPS = ("ReverseSequence",)
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"ReverseSequence": 28}
C_SOURCES: list[str] = []
C_LOCALS = frozenset({"count", "row", *(f"d{k}" for k in range(16))})


def _axes(node, rank: int) -> tuple[int, int]:
    time, batch = int(node.attrs.get("time_axis", 0)), int(node.attrs.get("batch_axis", 1))
    if rank < 2 or {time, batch} != {0, 1}:
        raise MoaEdgeError(f"ReverseSequence node {node.name!r}: time_axis {time} and batch_axis {batch} must be "
                           f"0 and 1 of an input of rank >= 2 (rank {rank})")
    return time, batch


def infer(node, graph) -> list[TensorType]:
    """The input's shape and dtype."""
    x = graph.tensors[node.inputs[0]]
    return [TensorType(tuple(x.shape), x.dtype)]


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    x, lens = inputs
    time, batch = _axes(node, x.dim())
    out = x.clone()
    for b, length in enumerate(lens.long().reshape(-1).tolist()):
        if not 0 <= length <= x.shape[time]:
            raise MoaEdgeError(f"ReverseSequence node {node.name!r}: sequence length {length} of batch entry {b} "
                               f"is outside [0, {x.shape[time]}]")
        entry = out.select(batch, b)  # the time axis is axis 0 of an entry
        entry[:length] = x.select(batch, b)[:length].flip(0)
    return [out]


def emit(node, ctx) -> EmittedUnit:
    graph = ctx.graph
    for name in [*node.inputs, *node.outputs]:
        _ctype(graph, name)
    where = _buffers(node, ctx)
    shape = graph.tensors[node.inputs[0]].shape
    time, batch = _axes(node, len(shape))
    x, lens, out = (where[n] for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    loop = [f"d{k}" for k in range(len(shape))]
    strides = _strides(shape)
    at = _offset(zip(loop, strides))
    src = _offset((("row" if k == time else v), s) for k, (v, s) in enumerate(zip(loop, strides)))
    body = [f"const ptrdiff_t count = (ptrdiff_t){lens}[d{batch}];",
            f"if (MOA_UNLIKELY(count < 0 || count > {shape[time]})) {{ return MOA_ERR_INDEX_OUT_OF_RANGE; }}",
            f"const ptrdiff_t row = d{time} < count ? count - 1 - d{time} : d{time};",
            f"{out}[{at}] = {x}[{src}];"]
    return EmittedUnit("\n".join([f"    {{ /* {c_comment_text(node.name)}: ReverseSequence, time axis {time}, "
                                  f"batch axis {batch} */"]
                                 + _declare_loop_indices(len(shape)) + _loops(shape, body) + ["    }"]) + "\n")
