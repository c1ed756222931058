"""Scatter ops: the data copied to the output, then updates written at run-time indices.

  ScatterElements  out[i with i[axis] := wrap(idx[i])] (op)= updates[i]      over i in idx.shape
  ScatterND        out[wrap(idx[n, 0]), ..., wrap(idx[n, m-1]), r] (op)= updates[n, r]
  TensorScatter    cache[p, w[b] + s, r] = update[p, s, r]  (circular: (w[b] + s) % max_sequence)
where (op) is the reduction: none (=), add, mul, max or min, applied in the order of the
updates (with none, duplicate indices leave the last update, which ONNX leaves undefined).
A negative ScatterElements/ScatterND index counts from the end, as ONNX says. An index that is
still outside its axis (or a TensorScatter write position past the cache in linear mode) stops
the model with MOA_ERR_INDEX_OUT_OF_RANGE before anything is written outside the output: the
updates before it have been applied, the rest not. Nothing is clamped.
"""
from __future__ import annotations

import math

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import attribute_text
from moa_edge.ir.c_syntax import c_comment_text
from moa_edge.lazy import torch

from .contract import EmittedUnit, TensorType
from .indexing import _buffers, _ctype, _declare_loop_indices, _loops, _offset, _strides, _wrap_index, _wrapped

OPS = ("ScatterElements", "ScatterND", "TensorScatter")
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"ScatterElements": 18, "ScatterND": 18, "TensorScatter": 24}
C_SOURCES: list[str] = []
C_LOCALS = frozenset({"o", "t", "r", "at", "row", "src", *(f"d{k}" for k in range(16))})

_REDUCTIONS = ("none", "add", "mul", "max", "min")
# reduction -> torch's name for it (scatter_reduce_, include_self)
_TORCH_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _reduction(node) -> str:
    reduction = attribute_text(node.attrs.get("reduction", "none"))
    if reduction not in _REDUCTIONS:
        raise MoaEdgeError(f"{node.op} node {node.name!r}: reduction {reduction!r} is not one of "
                           f"{', '.join(_REDUCTIONS)}")
    return reduction


def infer(node, graph) -> list[TensorType]:
    """The data's (the past cache's) shape and dtype, once the indices and updates fit it (the
    loops trust these shapes when they write)."""
    data = graph.tensors[node.inputs[0]]
    _check_shapes(node, graph)
    return [TensorType(tuple(data.shape), data.dtype)]


def _check_shapes(node, graph) -> None:
    data = tuple(graph.tensors[node.inputs[0]].shape)
    rank = len(data)

    def refuse(why: str):
        raise MoaEdgeError(f"{node.op} node {node.name!r}: {why}")
    if node.op == "ScatterElements":
        indices, updates = (tuple(graph.tensors[n].shape) for n in node.inputs[1:3])
        axis = node.attrs.get("axis", 0) % max(rank, 1)
        if updates != indices or len(indices) != rank:
            refuse(f"indices {list(indices)} and updates {list(updates)} must have one shape, of the data's rank {rank}")
        if any(i > d for k, (i, d) in enumerate(zip(indices, data)) if k != axis):
            refuse(f"indices {list(indices)} reach past the data {list(data)} on an axis other than {axis}")
    elif node.op == "ScatterND":
        indices, updates = (tuple(graph.tensors[n].shape) for n in node.inputs[1:3])
        m = indices[-1] if indices else 0
        if not indices or m > rank or updates != indices[:-1] + data[m:]:
            refuse(f"updates {list(updates)} must have the shape indices[:-1] + data[m:] "
                   f"(indices {list(indices)}, data {list(data)})")
    else:  # TensorScatter: the update is the cache with `steps` positions along the axis
        update = tuple(graph.tensors[node.inputs[1]].shape)
        axis = _cache_axis(node, rank)
        if len(update) != rank or any(u != d for k, (u, d) in enumerate(zip(update, data)) if k != axis):
            refuse(f"update {list(update)} must match the cache {list(data)} on every axis but {axis}")


def in_place_inputs(node, graph) -> list[str]:
    """The output may take the data's buffer: each element is copied onto itself, then updated."""
    return [node.inputs[0]]


# ---- the torch references ------------------------------------------------------------

def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    return [_EVALUATE[node.op](node, inputs)]


def _scatter_elements(node, inputs):
    data, indices, updates = inputs
    axis = node.attrs.get("axis", 0) % data.dim()
    index = _wrapped(indices, data.shape[axis], node)
    reduction = _reduction(node)
    if reduction == "none":
        return data.clone().scatter_(axis, index, updates)
    return data.clone().scatter_reduce_(axis, index, updates, _TORCH_REDUCE[reduction], include_self=True)


def _scatter_nd(node, inputs):
    """Each index tuple picks one row of the data seen as [prod(shape[:m]), rest]."""
    data, indices, updates = inputs
    m = indices.shape[-1]
    rows = data.reshape(math.prod(data.shape[:m]), -1).clone()
    picks = [_wrapped(indices[..., k], data.shape[k], node).reshape(-1) for k in range(m)]
    row = sum((p * math.prod(data.shape[k + 1:m]) for k, p in enumerate(picks)), torch.zeros_like(picks[0]))
    source = updates.reshape(row.numel(), -1)
    reduction = _reduction(node)
    if reduction == "none":
        rows[row] = source
    else:
        rows.scatter_reduce_(0, row[:, None].expand_as(source), source, _TORCH_REDUCE[reduction], include_self=True)
    return rows.reshape(data.shape)


def _tensor_scatter(node, inputs):
    cache, update = inputs[0], inputs[1]
    axis = _cache_axis(node, cache.dim())
    batch, steps, extent = cache.shape[0], update.shape[axis], cache.shape[axis]
    starts = (inputs[2].long().reshape(-1) if len(inputs) > 2 and inputs[2] is not None
              else torch.zeros(batch, dtype=torch.long))
    out = cache.clone()
    for b in range(batch):
        position = starts[b] + torch.arange(steps)
        if attribute_text(node.attrs.get("mode", "linear")) == "circular":
            position = position % extent
        elif steps and (position.min() < 0 or position.max() >= extent):
            raise MoaEdgeError(f"TensorScatter node {node.name!r}: writes at {int(starts[b])}..."
                               f"{int(starts[b]) + steps - 1} fall outside the cache's {extent} positions")
        out[b].index_copy_(axis - 1, position, update[b])
    return out


_EVALUATE = {"ScatterElements": _scatter_elements, "ScatterND": _scatter_nd, "TensorScatter": _tensor_scatter}


# ---- the C emission ------------------------------------------------------------------

def emit(node, ctx):
    for name in [*node.inputs, *node.outputs]:
        if name:
            _ctype(ctx.graph, name)
    where = _buffers(node, ctx)
    data, out = where[node.inputs[0]], where[node.outputs[0]]
    count = ctx.graph.tensors[node.outputs[0]].size
    # the data first, unless the output took its buffer (in place)
    copy = [] if data == out else [
        "    {",
        "        ptrdiff_t at;",
        f"        for (at = 0; at < {count}; at++) {{ {out}[at] = {data}[at]; }}",
        "    }"]
    return EmittedUnit("\n".join(copy + _EMIT[node.op](node, ctx, where)) + "\n")


def _combine(node, ctx, old: str, new: str) -> str:
    """The reduction's value of the output element `old` and the update `new`."""
    reduction = _reduction(node)
    floating = ctx.graph.tensors[node.outputs[0]].dtype in ("float32", "float64")
    if reduction == "none":
        return new
    if reduction in ("add", "mul"):
        if ctx.graph.tensors[node.outputs[0]].dtype == "bool":
            raise MoaEdgeError(f"{node.op} node {node.name!r}: reduction {reduction} of bool elements is not supported")
        return f"{old} {'+' if reduction == 'add' else '*'} {new}"
    better = ">" if reduction == "max" else "<"
    nan = f" || {new} != {new}" if floating else ""  # a NaN update wins, a NaN element stays: NaN propagates
    return f"(({new} {better} {old}{nan}) ? {new} : {old})"


def _emit_scatter_elements(node, ctx, where):
    graph = ctx.graph
    data_shape, idx_shape = graph.tensors[node.inputs[0]].shape, graph.tensors[node.inputs[1]].shape
    axis = node.attrs.get("axis", 0) % len(data_shape)
    idx, updates, out = (where[n] for n in (node.inputs[1], node.inputs[2], node.outputs[0]))
    loop = [f"d{k}" for k in range(len(idx_shape))]
    at = _offset(zip(loop, _strides(idx_shape)))
    dst = _offset((("row" if k == axis else v), s) for k, (v, s) in enumerate(zip(loop, _strides(data_shape))))
    body = (_wrap_index(node, "row", f"{idx}[{at}]", data_shape[axis], "")
            + [f"const ptrdiff_t src = {dst};", f"{out}[src] = {_combine(node, ctx, f'{out}[src]', f'{updates}[{at}]')};"])
    return ([f"    {{ /* {c_comment_text(node.name)}: ScatterElements along axis {axis}, "
             f"reduction {_reduction(node)} */"]
            + _declare_loop_indices(len(idx_shape)) + _loops(idx_shape, body) + ["    }"])


def _emit_scatter_nd(node, ctx, where):
    graph = ctx.graph
    data_shape, idx_shape = graph.tensors[node.inputs[0]].shape, graph.tensors[node.inputs[1]].shape
    m = idx_shape[-1]
    if m > len(data_shape):
        raise MoaEdgeError(f"ScatterND node {node.name!r}: index tuples of {m} exceed the data's rank {len(data_shape)}")
    picks, inner = math.prod(idx_shape[:-1]), math.prod(data_shape[m:])
    strides = _strides(data_shape)
    idx, updates, out = (where[n] for n in (node.inputs[1], node.inputs[2], node.outputs[0]))
    lines = [f"    {{ /* {c_comment_text(node.name)}: ScatterND, {m} index(es) per update, slices of {inner}, "
             f"reduction {_reduction(node)} */",
             "        ptrdiff_t t, r;",
             f"        for (t = 0; t < {picks}; t++) {{",
             "            ptrdiff_t src = 0;"]
    for k in range(m):
        lines += ["            {",
                  *_wrap_index(node, "at", f"{idx}[t * {m} + {k}]", data_shape[k], " " * 16),
                  f"                src += at * {strides[k]};",
                  "            }"]
    combined = _combine(node, ctx, f"{out}[src + r]", f"{updates}[t * {inner} + r]")
    lines += [f"            for (r = 0; r < {inner}; r++) {{",
              f"                {out}[src + r] = {combined};",
              "            }", "        }", "    }"]
    return lines


def _cache_axis(node, rank: int) -> int:
    axis = int(node.attrs.get("axis", -2))
    if not -rank <= axis < rank or axis % rank == 0:
        raise MoaEdgeError(f"TensorScatter node {node.name!r}: axis {axis} must be a non-batch axis of the rank-{rank} cache")
    return axis % rank


def _emit_tensor_scatter(node, ctx, where):
    graph = ctx.graph
    shape, update_shape = graph.tensors[node.inputs[0]].shape, graph.tensors[node.inputs[1]].shape
    axis = _cache_axis(node, len(shape))
    outer, per_batch = math.prod(shape[:axis]), math.prod(shape[1:axis])
    extent, steps, inner = shape[axis], update_shape[axis], math.prod(shape[axis + 1:])
    circular = attribute_text(node.attrs.get("mode", "linear")) == "circular"
    has_starts = len(node.inputs) > 2 and node.inputs[2]
    start = f"(ptrdiff_t){where[node.inputs[2]]}[o / {per_batch}]" if has_starts else "0"
    update, out = where[node.inputs[1]], where[node.outputs[0]]
    if circular:  # the position modulo the cache length, non-negative
        position = [f"                const ptrdiff_t row = (({start} + t) % {extent} + {extent}) % {extent};"]
    else:
        position = [f"                const ptrdiff_t row = {start} + t;",
                    f"                if (MOA_UNLIKELY(row < 0 || row >= {extent})) {{ return MOA_ERR_INDEX_OUT_OF_RANGE; }}"]
    return [f"    {{ /* {c_comment_text(node.name)}: TensorScatter of {steps} position(s) along axis {axis}, "
            f"{'circular' if circular else 'linear'} */",
            "        ptrdiff_t o, t, r;",
            f"        for (o = 0; o < {outer}; o++) {{",
            f"            for (t = 0; t < {steps}; t++) {{",
            *position,
            f"                for (r = 0; r < {inner}; r++) {{",
            f"                    {out}[(o * {extent} + row) * {inner} + r] = {update}[(o * {steps} + t) * {inner} + r];",
            "                }", "            }", "        }", "    }"]


_EMIT = {"ScatterElements": _emit_scatter_elements, "ScatterND": _emit_scatter_nd, "TensorScatter": _emit_tensor_scatter}
