"""Run-time indexing ops: GatherElements, GatherND, Trilu, CumSum, CumProd, Range, OneHot and EyeLike.

Each is a short loop nest in the model's run function over the static shapes:
  GatherElements  out[i] = data[i with i[axis] := wrap(idx[i])]
  GatherND        out[b, n, r] = data[b, wrap(idx[b, n, 0]), ..., wrap(idx[b, n, m-1]), r]
  Trilu           out[.., i, j] = x[.., i, j] if j - i >= k (upper; <= k lower) else 0
  CumSum          out[o, t, r] = out[o, t-1, r] + x[o, t, r]  (exclusive: + x[o, t-1, r]; reverse: t+1)
  CumProd         the same with * (and 1 before the first element where CumSum has 0)
  Range           out[i] = start + i * delta
  OneHot          out[o, t, r] = values[1] if wrap(idx[o, r]) == t else values[0]   (t along `axis`)
  EyeLike         out[i, j] = 1 if j - i == k else 0
Constant-index gathers and all-constant Ranges never reach here (they are copies through
access maps and folded constants). A negative index counts from the end, as ONNX says; one
outside its axis stops the model with MOA_ERR_INDEX_OUT_OF_RANGE rather than read past it.
Trilu's k and the axis of CumSum and CumProd may be constants or run-time scalars; a
run-time axis outside the rank is out of range too. Range checks the element count its run-time scalars give
against the static output shape (MOA_ERR_BAD_PARAMS when they disagree, or delta is 0).
OneHot's depth must be a constant (it is the new axis's extent); an index outside
[-depth, depth) gives an all-off row, as the spec says, and so does a fractional float index
(as ONNX's reference evaluator compares them).
"""
from __future__ import annotations

import math
import re

from moa_edge.lazy import torch

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text

from .contract import EmittedUnit, TensorType

OPS = ("GatherElements", "GatherND", "Trilu", "CumSum", "CumProd", "Range", "OneHot", "EyeLike")
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"GatherElements": 13, "GatherND": 13, "Trilu": 14, "CumSum": 14, "CumProd": 26,
                 "Range": 27, "OneHot": 28, "EyeLike": 22}
C_SOURCES: list[str] = []
# Locals of the generated blocks that codegen keeps every tensor's C name clear of (the rest
# of _LOCALS are checked by _buffers instead).
C_LOCALS = frozenset({"o", "s", "t", "r", "row", "at", "src", *(f"d{k}" for k in range(16))})

_OUT_OF_RANGE = "return MOA_ERR_INDEX_OUT_OF_RANGE;"
# The locals the emitted blocks declare: a buffer named like one of them would be shadowed.
_LOCALS = {"at", "src", "row", "ax", "outer_of", "extent_of", "inner_of", "outer", "extent", "inner", "o", "s", "t",
           "r", "prev", "before", "steps", "count", "diff", "begin", "end", "step", "value", "hot"}


# ---- the shape and dtype rule -----------------------------------------------------------

def infer(node, graph) -> list[TensorType]:
    """GatherElements: the indices' shape; GatherND: the index tuples' shape then the slices';
    Trilu, CumSum and CumProd: the input's; Range: the element count of constant scalars (shape None
    when they arrive at run time: run-time checked against the recorded shape); OneHot: the
    indices' shape with depth inserted at axis, the values' type; EyeLike: the input's shape, in
    its `dtype` (the input's when absent)."""
    x = graph.tensors[node.inputs[0]]
    if node.op == "OneHot":
        depth, values = _scalar(graph, node.inputs[1]), graph.tensors[node.inputs[2]]
        if depth is None:
            return [TensorType(None, values.dtype)]
        axis = _one_hot_axis(node, len(x.shape))
        return [TensorType(tuple(x.shape[:axis]) + (int(depth),) + tuple(x.shape[axis:]), values.dtype)]
    if node.op == "EyeLike":
        if "dtype" not in node.attrs:
            return [TensorType(tuple(x.shape), x.dtype)]
        record = dtypes.from_onnx(node.attrs["dtype"])
        return [TensorType(tuple(x.shape), record.name if record else f"onnx type {node.attrs['dtype']}")]
    if node.op == "GatherElements":
        return [TensorType(tuple(graph.tensors[node.inputs[1]].shape), x.dtype)]
    if node.op == "GatherND":
        idx = tuple(graph.tensors[node.inputs[1]].shape)
        b = node.attrs.get("batch_dims", 0)
        return [TensorType(idx[:-1] + tuple(x.shape[b + idx[-1]:]), x.dtype)]
    if node.op == "Range":
        start, limit, delta = (_scalar(graph, n) for n in node.inputs[:3])
        if None in (start, limit, delta) or delta == 0:
            return [TensorType(None, x.dtype)]
        return [TensorType((max(math.ceil((limit - start) / delta), 0),), x.dtype)]
    return [TensorType(tuple(x.shape), x.dtype)]


# ---- helpers -------------------------------------------------------------------------

def _strides(shape) -> list[int]:
    return [math.prod(shape[k + 1:]) for k in range(len(shape))]


def _offset(terms) -> str:
    """' + '.join of (variable, stride) terms, dropping zero strides; '0' when empty."""
    parts = [v if s == 1 else f"{v} * {s}" for v, s in terms if s]
    return " + ".join(parts) or "0"


def _loops(shape, body: list[str], depth: int = 2) -> list[str]:
    """Nested loops over `shape` with indices d0, d1, ... around `body`."""
    lines = []
    for k, n in enumerate(shape):
        lines.append("    " * (depth + k) + f"for (d{k} = 0; d{k} < {n}; d{k}++) {{")
    lines += ["    " * (depth + len(shape)) + b for b in body]
    lines += ["    " * (depth + k) + "}" for k in reversed(range(len(shape)))]
    return lines


def _declare_loop_indices(rank: int) -> list[str]:
    return [f"        ptrdiff_t {', '.join(f'd{k}' for k in range(rank))};"] if rank else []


def _buffers(node, ctx) -> dict[str, str]:
    """Tensor name -> its buffer expression; refuses a buffer named like a local of the block."""
    where = {n: ctx.where[n] for n in [*node.inputs, *node.outputs] if n}
    for name, expr in where.items():
        if set(re.findall(r"[A-Za-z_]\w*", expr)) & (_LOCALS | {f"d{k}" for k in range(16)}):
            raise MoaEdgeError(f"{node.op} node {node.name!r}: the C name of tensor {name!r} ({expr}) "
                               f"collides with a local of the generated loop; rename the tensor")
    return where


def _wrap_index(node, var: str, value: str, extent: int, indent: str) -> list[str]:
    """`var` = the index `value` wrapped into [0, extent), or a return when it is outside."""
    return [f"{indent}const ptrdiff_t {var} = {value} < 0 ? (ptrdiff_t){value} + {extent} : (ptrdiff_t){value};",
            f"{indent}if (MOA_UNLIKELY({var} < 0 || {var} >= {extent})) {{ {_OUT_OF_RANGE} }}"]


def _wrapped(indices: torch.Tensor, extent: int, node) -> torch.Tensor:
    indices = indices.long()
    wrapped = torch.where(indices < 0, indices + extent, indices)
    if wrapped.numel() and (wrapped.min() < 0 or wrapped.max() >= extent):
        raise MoaEdgeError(f"{node.op} node {node.name!r}: an index is outside [-{extent}, {extent})")
    return wrapped


def _ctype(graph, name) -> str:
    dtype = graph.tensors[name].dtype
    if dtype not in dtypes.RUNTIME_DTYPES:
        raise MoaEdgeError(f"tensor {name!r} has dtype {dtype}; the runtime supports {', '.join(dtypes.RUNTIME_DTYPES)}")
    return dtypes.dtype(dtype).c_type


def _one_hot_axis(node, rank: int) -> int:
    """OneHot's axis in the output (of rank + 1 axes), counted from the front."""
    axis = node.attrs.get("axis", -1)
    if not -rank - 1 <= axis <= rank:
        raise MoaEdgeError(f"OneHot node {node.name!r}: axis {axis} is outside an output of rank {rank + 1}")
    return axis % (rank + 1)


def _torch_dtype(name: str) -> torch.dtype:
    """The reference's type for a tensor of type `name`: floats in float64, uint16/32/64 in int64
    (as harness/reference.py holds them), the others as themselves."""
    if dtypes.dtype(name).is_float:
        return torch.float64
    return torch.int64 if name in ("uint16", "uint32", "uint64") else getattr(torch, name)


def _scalar(graph, name):
    """A constant scalar input's Python value, None for a run-time one."""
    value = graph.constant(name)
    return None if value is None else value.reshape(-1)[0].item()


# ---- the torch references ------------------------------------------------------------

def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    return [_EVALUATE[node.op](node, inputs, graph)]


def _gather_elements(node, inputs, graph):
    data, indices = inputs
    axis = node.attrs.get("axis", 0) % data.dim()
    return torch.gather(data, axis, _wrapped(indices, data.shape[axis], node))


def _gather_nd(node, inputs, graph):
    data, indices = inputs
    b, m = node.attrs.get("batch_dims", 0), indices.shape[-1]
    batches, rest = math.prod(data.shape[:b]), data.shape[b + m:]
    flat = indices.reshape(batches, -1, m)
    picks = [_wrapped(flat[..., k], data.shape[b + k], node) for k in range(m)]
    table = data.reshape(batches, *data.shape[b:])
    out = table[(torch.arange(batches)[:, None], *picks)]
    return out.reshape(*indices.shape[:-1], *rest)


def _trilu(node, inputs, graph):
    x = inputs[0]
    k = int(inputs[1].reshape(-1)[0]) if len(inputs) > 1 and inputs[1] is not None else 0
    return torch.triu(x, k) if node.attrs.get("upper", 1) else torch.tril(x, k)


def _cumulative(node, inputs, graph):
    """CumSum (torch.cumsum) and CumProd (torch.cumprod); exclusive shifts in the identity."""
    x, axis = inputs[0], int(inputs[1].reshape(-1)[0])
    if not -x.dim() <= axis < x.dim():
        raise MoaEdgeError(f"{node.op} node {node.name!r}: axis {axis} is outside the rank {x.dim()}")
    axis %= x.dim()
    reverse = bool(node.attrs.get("reverse", 0))
    y = torch.flip(x, [axis]) if reverse else x
    y = (torch.cumsum if node.op == "CumSum" else torch.cumprod)(y, axis, dtype=x.dtype)
    if node.attrs.get("exclusive", 0):
        identity = torch.zeros_like if node.op == "CumSum" else torch.ones_like
        first = identity(y.narrow(axis, 0, min(1, y.shape[axis])))
        y = torch.cat([first, y.narrow(axis, 0, max(y.shape[axis] - 1, 0))], axis)
    return torch.flip(y, [axis]) if reverse else y


def _range(node, inputs, graph):
    start, limit, delta = (v.reshape(-1)[0].item() for v in inputs)
    out = torch.arange(start, limit, delta, dtype=inputs[0].dtype)
    want = graph.tensors[node.outputs[0]].shape
    if tuple(out.shape) != tuple(want):
        raise MoaEdgeError(f"Range node {node.name!r}: start {start}, limit {limit}, delta {delta} give "
                           f"{out.numel()} elements; the model was converted for {list(want)}")
    return out


def _one_hot(node, inputs, graph):
    indices, depth, values = inputs
    depth = int(depth.reshape(-1)[0])
    hot = indices.to(torch.float64)
    hot = torch.where(hot < 0, hot + depth, hot)
    valid = (hot >= 0) & (hot < depth) & (hot == torch.floor(hot))
    picked = torch.nn.functional.one_hot(torch.where(valid, hot, 0).long(), depth).bool() & valid[..., None]
    picked = picked.movedim(-1, _one_hot_axis(node, indices.dim()))
    off, on = values.reshape(-1)
    return torch.where(picked, on, off)


def _eye_like(node, inputs, graph):
    rows, cols = inputs[0].shape
    k = int(node.attrs.get("k", 0))
    ones = torch.ones(rows, cols, dtype=torch.bool).triu(k).tril(k)  # the ones of diagonal k
    return ones.to(_torch_dtype(graph.tensors[node.outputs[0]].dtype))


_EVALUATE = {"GatherElements": _gather_elements, "GatherND": _gather_nd, "Trilu": _trilu, "CumSum": _cumulative,
             "CumProd": _cumulative, "Range": _range, "OneHot": _one_hot, "EyeLike": _eye_like}


# ---- the C emission ------------------------------------------------------------------

def emit(node, ctx):
    for name in [*node.inputs, *node.outputs]:
        if name:
            _ctype(ctx.graph, name)
    lines = _EMIT[node.op](node, ctx, _buffers(node, ctx))
    return EmittedUnit("\n".join(lines) + "\n")


def _emit_gather_elements(node, ctx, where):
    graph = ctx.graph
    data_shape, idx_shape = graph.tensors[node.inputs[0]].shape, graph.tensors[node.inputs[1]].shape
    axis = node.attrs.get("axis", 0) % len(data_shape)
    data, idx, out = (where[n] for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    loop = [f"d{k}" for k in range(len(idx_shape))]
    at = _offset(zip(loop, _strides(idx_shape)))
    src = _offset((("row" if k == axis else v), s) for k, (v, s) in enumerate(zip(loop, _strides(data_shape))))
    body = _wrap_index(node, "row", f"{idx}[{at}]", data_shape[axis], "") + [f"{out}[{at}] = {data}[{src}];"]
    return ([f"    {{ /* {c_comment_text(node.name)}: GatherElements along axis {axis} */"] + _declare_loop_indices(len(idx_shape))
            + _loops(idx_shape, body) + ["    }"])


def _emit_gather_nd(node, ctx, where):
    graph = ctx.graph
    data_shape, idx_shape = graph.tensors[node.inputs[0]].shape, graph.tensors[node.inputs[1]].shape
    b, m = node.attrs.get("batch_dims", 0), idx_shape[-1]
    batches, picks = math.prod(data_shape[:b]), math.prod(idx_shape[b:-1])
    inner, table = math.prod(data_shape[b + m:]), math.prod(data_shape[b:])
    data, idx, out = (where[n] for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    strides = _strides(data_shape[b:])
    lines = [f"    {{ /* {c_comment_text(node.name)}: GatherND, batch_dims {b}, {m} index(es) per pick, slices of {inner} */",
             "        ptrdiff_t o, t, r;",
             f"        for (o = 0; o < {batches}; o++) {{",
             f"            for (t = 0; t < {picks}; t++) {{",
             f"                ptrdiff_t src = o * {table};"]
    for k in range(m):
        lines += ["                {",
                  *_wrap_index(node, "at", f"{idx}[(o * {picks} + t) * {m} + {k}]", data_shape[b + k], " " * 20),
                  f"                    src += at * {strides[k]};",
                  "                }"]
    lines += [f"                for (r = 0; r < {inner}; r++) {{",
              f"                    {out}[(o * {picks} + t) * {inner} + r] = {data}[src + r];",
              "                }", "            }", "        }", "    }"]
    return lines


def _emit_trilu(node, ctx, where):
    graph = ctx.graph
    shape = graph.tensors[node.inputs[0]].shape
    if len(shape) < 2:
        raise MoaEdgeError(f"Trilu node {node.name!r}: input {node.inputs[0]!r} has rank {len(shape)}; ONNX needs >= 2")
    rows, cols = shape[-2:]
    batches = math.prod(shape[:-2])
    has_k = len(node.inputs) > 1 and node.inputs[1]
    k = _scalar(graph, node.inputs[1]) if has_k else 0
    if k is None:
        k_expr = f"{where[node.inputs[1]]}[0]"
    else:  # beyond +-(rows + cols) every k keeps all or nothing: clamp so the literal stays small
        k_expr = f"(int64_t){max(-(rows + cols), min(rows + cols, int(k)))}"
    upper = bool(node.attrs.get("upper", 1))
    x, out = where[node.inputs[0]], where[node.outputs[0]]
    keep = f"(int64_t)(d2 - d1) {'>=' if upper else '<='} {k_expr}"
    body = [f"const ptrdiff_t at = (d0 * {rows} + d1) * {cols} + d2;",
            f"{out}[at] = {keep} ? {x}[at] : 0;"]
    return ([f"    {{ /* {c_comment_text(node.name)}: Trilu, {'upper' if upper else 'lower'} triangle, k = "
             f"{k if k is not None else 'from ' + c_comment_text(node.inputs[1])} */"]
            + _declare_loop_indices(3) + _loops((batches, rows, cols), body) + ["    }"])


def _emit_cumulative(node, ctx, where):
    """CumSum and CumProd: one running sum (product) per (outer, inner) row along the axis."""
    graph = ctx.graph
    shape = graph.tensors[node.inputs[0]].shape
    rank = len(shape)
    if rank == 0:
        raise MoaEdgeError(f"{node.op} node {node.name!r}: input {node.inputs[0]!r} is a scalar; ONNX needs rank >= 1")
    x, out = where[node.inputs[0]], where[node.outputs[0]]
    reverse, exclusive = bool(node.attrs.get("reverse", 0)), bool(node.attrs.get("exclusive", 0))
    axis = _scalar(graph, node.inputs[1])
    split = [(math.prod(shape[:a]), shape[a], math.prod(shape[a + 1:])) for a in range(rank)]
    if axis is not None:
        if not -rank <= axis < rank:
            raise MoaEdgeError(f"{node.op} node {node.name!r}: axis {axis} is outside the rank {rank} "
                               f"of {node.inputs[0]!r}")
        outer, extent, inner = split[axis % rank]
        lines = [f"    {{ /* {c_comment_text(node.name)}: {node.op} along axis {axis % rank}"
                 f"{', reverse' if reverse else ''}{', exclusive' if exclusive else ''} */",
                 f"        const ptrdiff_t outer = {outer}, extent = {extent}, inner = {inner};"]
    else:  # the axis arrives at run time: the (outer, extent, inner) split of every axis is tabled
        def table(k):
            return "{" + ", ".join(str(s[k]) for s in split) + "}"
        lines = [f"    {{ /* {c_comment_text(node.name)}: {node.op} along the axis in {c_comment_text(node.inputs[1])}"
                 f"{', reverse' if reverse else ''}{', exclusive' if exclusive else ''} */",
                 f"        static const ptrdiff_t outer_of[{rank}] = {table(0)}, extent_of[{rank}] = {table(1)}, "
                 f"inner_of[{rank}] = {table(2)};",
                 *_wrap_index(node, "ax", f"{where[node.inputs[1]]}[0]", rank, " " * 8),
                 "        const ptrdiff_t outer = outer_of[ax], extent = extent_of[ax], inner = inner_of[ax];"]
    t, prev = ("extent - 1 - s", "t + 1") if reverse else ("s", "t - 1")
    op, identity = ("+", "0") if node.op == "CumSum" else ("*", "1")
    record = dtypes.dtype(graph.tensors[node.outputs[0]].dtype)
    wide = "" if record.is_float else "(uint64_t)"  # integers wrap in uint64_t: signed overflow is undefined
    value = (f"s == 0 ? {identity} : {out}[before] {op} {x}[before]" if exclusive
             else f"(s == 0 ? {identity} : {out}[before]) {op} {x}[at]")
    if wide:
        value = (f"s == 0 ? {identity} : ({record.c_type})({wide}{out}[before] {op} {wide}{x}[before])" if exclusive
                 else f"({record.c_type})({wide}(s == 0 ? {identity} : {out}[before]) {op} {wide}{x}[at])")
    lines += ["        ptrdiff_t o, s, r;",
              "        for (o = 0; o < outer; o++) {",
              "            for (s = 0; s < extent; s++) {",
              f"                const ptrdiff_t t = {t}, prev = {prev};",
              "                for (r = 0; r < inner; r++) {",
              "                    const ptrdiff_t at = (o * extent + t) * inner + r;",
              "                    const ptrdiff_t before = (o * extent + prev) * inner + r;",
              f"                    {out}[at] = {value};",
              "                }", "            }", "        }", "    }"]
    return lines


def _emit_range(node, ctx, where):
    graph = ctx.graph
    out_t = graph.tensors[node.outputs[0]]
    ctype = _ctype(graph, node.outputs[0])
    begin, end, step = (where[n] for n in node.inputs[:3])
    if out_t.dtype == "float32":
        count = ["        const double steps = ceil(((double)end - (double)begin) / (double)step);",
                 "        const ptrdiff_t count = steps > 0 ? (ptrdiff_t)steps : 0;"]
        value = "begin + (float)d0 * step"
    else:  # integers: the exact ceiling of (limit - start) / delta
        count = ["        const int64_t diff = (int64_t)end - (int64_t)begin;",
                 "        const int64_t steps = diff / step + ((diff % step != 0) && ((diff < 0) == (step < 0)));",
                 "        const ptrdiff_t count = steps > 0 ? (ptrdiff_t)steps : 0;"]
        value = f"({ctype})(begin + ({ctype})d0 * step)"
    return [f"    {{ /* {c_comment_text(node.name)}: Range, {out_t.size} elements (checked against the run-time scalars) */",
            f"        const {ctype} begin = {begin}[0], end = {end}[0], step = {step}[0];",
            "        ptrdiff_t d0;",
            "        if (step == 0) { return MOA_ERR_BAD_PARAMS; }",
            *count,
            f"        if (count != {out_t.size}) {{ return MOA_ERR_BAD_PARAMS; }}",
            f"        for (d0 = 0; d0 < {out_t.size}; d0++) {{",
            f"            {where[node.outputs[0]]}[d0] = {value};",
            "        }", "    }"]


def _emit_one_hot(node, ctx, where):
    graph = ctx.graph
    shape = graph.tensors[node.inputs[0]].shape
    depth = _scalar(graph, node.inputs[1])
    if depth is None:
        raise MoaEdgeError(f"OneHot node {node.name!r}: depth {node.inputs[1]!r} is computed at run time; "
                           f"only a constant depth is supported")
    depth, axis = int(depth), _one_hot_axis(node, len(shape))
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis:])
    idx, values, out = (where[n] for n in (node.inputs[0], node.inputs[2], node.outputs[0]))
    # In double, every index a depth can reach is exact, and a fractional one matches no t.
    return [f"    {{ /* {c_comment_text(node.name)}: OneHot, depth {depth} along axis {axis}, "
            f"off and on values from {c_comment_text(node.inputs[2])} */",
            "        ptrdiff_t o, t, r;",
            f"        for (o = 0; o < {outer}; o++) {{",
            f"            for (r = 0; r < {inner}; r++) {{",
            f"                const double value = (double){idx}[o * {inner} + r];",
            f"                const double hot = value < 0 ? value + {depth} : value; /* negative: from the end */",
            f"                for (t = 0; t < {depth}; t++) {{",
            f"                    {out}[(o * {depth} + t) * {inner} + r] = "
            f"hot == (double)t ? {values}[1] : {values}[0];",
            "                }", "            }", "        }", "    }"]


def _emit_eye_like(node, ctx, where):
    graph = ctx.graph
    shape = graph.tensors[node.inputs[0]].shape
    if len(shape) != 2:
        raise MoaEdgeError(f"EyeLike node {node.name!r}: input {node.inputs[0]!r} has rank {len(shape)}; ONNX needs 2")
    rows, cols = shape
    k = int(node.attrs.get("k", 0))
    x, out = where[node.inputs[0]], where[node.outputs[0]]
    return [f"    {{ /* {c_comment_text(node.name)}: EyeLike, ones on diagonal {k} */",
            "        ptrdiff_t d0, d1;",
            f"        (void){x}; /* only its shape is read */",
            f"        for (d0 = 0; d0 < {rows}; d0++) {{",
            f"            for (d1 = 0; d1 < {cols}; d1++) {{",
            f"                {out}[d0 * {cols} + d1] = d1 - d0 == {k} ? 1 : 0;",
            "            }", "        }", "    }"]


_EMIT = {"GatherElements": _emit_gather_elements, "GatherND": _emit_gather_nd, "Trilu": _emit_trilu,
         "CumSum": _emit_cumulative, "CumProd": _emit_cumulative, "Range": _emit_range, "OneHot": _emit_one_hot,
         "EyeLike": _emit_eye_like}
