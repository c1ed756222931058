"""MatMul, Gemm and MoaGemm: one moa_gemm_f32 call per matrix of the product.

MatMul follows numpy: 1-D operands gain (and the result loses) a unit row or column, and
the batch axes broadcast; the generated C loops over the output's batch axes and offsets
each operand by its row-major batch strides (0 on an axis it broadcasts), so no operand is
ever expanded. Gemm's transposes and its broadcast bias C are strides of the views the
kernel reads through, never copies.

MoaGemm (made by passes/pack.py) is a MatMul or Gemm whose B is a weight, packed at
conversion in the kernel's panel layout (matmul.h), Y[..., M, N] = alpha A[..., M, K] B + beta C
with C a bias row or scalar; A's batch axes are more rows of one product, since B is shared.
"""
from __future__ import annotations

import math
import re

import numpy as np
from moa_edge.lazy import torch

from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text, c_float_short
from moa_edge.moa import Layout

from .contract import EmittedUnit, OpCost, TensorType, check_status, operand_bytes

OPS = ("MatMul", "Gemm", "MoaGemm")
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"MatMul": 13, "Gemm": 13}
# The driver, its worker pool (moa/pool.h), every ISA's register tile (moa/gemm_tile.h) and
# quantized-weight panel kernels (moa/qgemm_panel.h, which the driver also serves); all but one
# variant compile empty.
C_SOURCES = ["matmul.c", "pool.c", "x86/gemm_f32_avx512.c", "x86/gemm_f32_avx2.c", "neon/gemm_f32_neon.c",
             "rvv/gemm_f32_rvv.c", "helium/gemm_f32_helium.c", "qgemm_panel.c", "x86/qgemm_avx512.c", "x86/qgemm_avx2.c",
             "neon/qgemm_neon.c", "rvv/qgemm_rvv.c", "qgemm_f16.c", "x86/qgemm_f16_avx512.c",
             "x86/qgemm_f16_avx2.c", "neon/qgemm_f16_neon.c", "rvv/qgemm_f16_rvv.c"]
PANEL = 16  # MOA_GEMM_NR: the columns of B in one packed panel
HEADER = '#include "moa/matmul.h"'
C_LOCALS = frozenset(f"batch{k}" for k in range(16))  # the batch loops' indices (_loop_names avoids buffers too)


def infer(node, graph) -> list[TensorType]:
    """numpy matmul (1-D operands gain and lose a unit axis, batch axes broadcast); Gemm
    [M, K] x [K, N] after its transposes; MoaGemm A's rows x n (B packed as panels)."""
    a = tuple(graph.tensors[node.inputs[0]].shape)
    dtype = graph.tensors[node.inputs[0]].dtype
    if node.op == "MoaGemm":
        shape = (a[-1], node.attrs["n"]) if node.attrs["trans_a"] else a[:-1] + (node.attrs["n"],)
    elif node.op == "Gemm":
        b = graph.tensors[node.inputs[1]].shape
        shape = (a[1 if node.attrs.get("transA", 0) else 0], b[0 if node.attrs.get("transB", 0) else 1])
    else:
        b = tuple(graph.tensors[node.inputs[1]].shape)
        a2, b2 = ((1,) + a if len(a) == 1 else a), (b + (1,) if len(b) == 1 else b)
        shape = tuple(np.broadcast_shapes(a2[:-2], b2[:-2])) + (a2[-2], b2[-1])
        shape = shape[:-2] + shape[-2 + (len(a) == 1):len(shape) - (len(b) == 1)]
    return [TensorType(tuple(shape), dtype)]


def op_cost(node, graph) -> OpCost:
    """2 M N K flops: two per output element and step of the contraction."""
    a = graph.tensors[node.inputs[0]].shape
    k = a[0] if node.attrs.get("transA") or node.attrs.get("trans_a") else a[-1]
    moved = operand_bytes(node, graph)
    return OpCost(2 * graph.tensors[node.outputs[0]].size * k, moved.weight_bytes, moved.activation_bytes)


def pack_b(b: np.ndarray) -> np.ndarray:
    """B (K x N) as matmul.h's packed panels (panels, K, 16): panel q holds columns
    16q .. 16q + 15 row after row, the last zero-padded."""
    k, n = b.shape
    panels = -(-n // PANEL)
    padded = np.zeros((k, panels * PANEL), np.float32)
    padded[:, :n] = b
    return np.ascontiguousarray(padded.reshape(k, panels, PANEL).transpose(1, 0, 2))


def unpack_b(packed: torch.Tensor, n: int) -> torch.Tensor:
    """pack_b undone: the K x N matrix."""
    panels, k, _ = packed.shape
    return packed.permute(1, 0, 2).reshape(k, panels * PANEL)[:, :n]


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    if node.op == "MoaGemm":
        a = inputs[0].T if node.attrs["trans_a"] else inputs[0]
        y = node.attrs["alpha"] * (a @ unpack_b(inputs[1], node.attrs["n"]))
        if len(inputs) > 2 and inputs[2] is not None:
            y = y + node.attrs["beta"] * inputs[2]
        return [y]
    if node.op == "MatMul":
        return [torch.matmul(inputs[0], inputs[1])]
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    if node.attrs.get("transA", 0):
        a = a.T
    if node.attrs.get("transB", 0):
        b = b.T
    y = node.attrs.get("alpha", 1.0) * (a @ b)
    if c is not None:
        y = y + node.attrs.get("beta", 1.0) * c
    return [y]


def _view(pointer: str, row_stride: int, col_stride: int) -> str:
    return f"(moa_matrix_f32){{{pointer}, {row_stride}, {col_stride}}}"


def _offset(pointer: str, terms) -> str:
    """pointer + sum of index * stride, leaving out the zero strides."""
    return " + ".join([pointer] + [f"{v} * {s}" for v, s in terms if s])


def _gemm_call(M, N, K, alpha, a, b, beta, c, y, function="moa_gemm_f32_on") -> str:
    """The call grouped as the equation reads: alpha A B, beta C, then Y; on the run's worker
    pool (moa/pool.h), which lifts columns or rows of the product onto its threads. beta may
    be a C expression."""
    indent = " " * len(f"status = {function}(")
    beta = beta if isinstance(beta, str) else c_float_short(beta)
    return check_status(f"{function}(pool, {M}, {N}, {K},\n"
                        f"{indent}{c_float_short(alpha)}, {a}, {b},\n"
                        f"{indent}{beta}, {c},\n"
                        f"{indent}{y}, {N})", indent="")


def _indent(text: str, depth: int) -> list[str]:
    return ["    " * depth + line for line in text.splitlines()]


def _loop_names(count: int, ctx) -> list[str]:
    """Batch loop variables that shadow no buffer the call names (inputs and weights are
    named after the model's tensors, so a plain `b0` could be one)."""
    used = set(re.findall(r"[A-Za-z_]\w*", " ".join(ctx.where.values())))
    stem = "batch"
    while any(f"{stem}{k}" in used for k in range(count)):
        stem += "_"
    return [f"{stem}{k}" for k in range(count)]


def emit(node, ctx):
    dtypes.require_dtypes(node, ctx.graph)
    emit_op = {"Gemm": _emit_gemm, "MatMul": _emit_matmul, "MoaGemm": _emit_packed}[node.op]
    return EmittedUnit(emit_op(node, ctx), declarations=[HEADER])


def _bias_view(node, ctx) -> str:
    """C broadcast to [M, N]: a size-1 (or missing) axis is read with stride 0."""
    if len(node.inputs) < 3 or not node.inputs[2]:
        return _view("NULL", 0, 0)
    rows, cols = ((1, 1) + tuple(ctx.graph.tensors[node.inputs[2]].shape))[-2:]
    return _view(ctx.where[node.inputs[2]], cols if rows != 1 else 0, 1 if cols != 1 else 0)


def _emit_packed(node, ctx) -> str:
    a_shape = tuple(ctx.graph.tensors[node.inputs[0]].shape)
    _, packed_rows, _ = ctx.graph.tensors[node.inputs[1]].shape
    N, trans_a = node.attrs["n"], node.attrs["trans_a"]
    M = a_shape[-1] if trans_a else math.prod(a_shape[:-1])  # transA only on a 2-D Gemm
    # A slice of the sum (ops/mlp.py's hidden blocks): rows first_row .. first_row + K of B.
    first_row = node.attrs.get("first_row")
    K = packed_rows if first_row is None else a_shape[0 if trans_a else -1]
    a = _view(ctx.where[node.inputs[0]], *((1, M) if trans_a else (K, 1)))
    y = ctx.where[node.outputs[0]]
    if first_row is None:
        call = _gemm_call(M, N, K, node.attrs["alpha"], a, ctx.where[node.inputs[1]], node.attrs["beta"],
                          _bias_view(node, ctx), y, function="moa_gemm_packed_f32_on")
    else:  # the first slice adds beta C, the others add to Y what the slices before it left there
        beta, c = node.attrs["beta"], _bias_view(node, ctx)
        if first_row.isdigit():
            beta, c = (beta, c) if first_row == "0" else (1.0, _view(y, N, 1))
        else:
            beta = 1.0 if beta == 1.0 else f"{first_row} == 0 ? {c_float_short(beta)} : 1.0f"
            c = f"{first_row} == 0 ? {c} : {_view(y, N, 1)}"
        call = _gemm_call(M, N, K, node.attrs["alpha"], a, f"{ctx.where[node.inputs[1]]}, {packed_rows}, {first_row}",
                          beta, c, y, function="moa_gemm_packed_rows_f32_on")
    slice_text = f", rows {first_row} .. of {packed_rows} of B" if first_row is not None else ""
    return "\n".join([f"    /* {c_comment_text(node.name)}: {node.attrs.get('source', 'MatMul')} with packed weights, "
                      f"M={M} N={N} K={K}{slice_text}{' (transA)' if trans_a else ''} */", *_indent(call, 1)]) + "\n"


def _emit_gemm(node, ctx) -> str:
    shapes = [ctx.graph.tensors[n].shape if n else None for n in (node.inputs + [""])[:3]]
    trans_a, trans_b = node.attrs.get("transA", 0), node.attrs.get("transB", 0)
    (M, K), N = (shapes[0][::-1] if trans_a else shapes[0]), shapes[1][0 if trans_b else 1]
    # A stored [K, M] when transposed: A[m][k] sits at k * M + m; likewise B stored [N, K].
    a = _view(ctx.where[node.inputs[0]], *((1, M) if trans_a else (K, 1)))
    b = _view(ctx.where[node.inputs[1]], *((1, K) if trans_b else (N, 1)))
    c = _bias_view(node, ctx)
    flags = ", ".join(f for f, on in (("transA", trans_a), ("transB", trans_b)) if on)
    call = _gemm_call(M, N, K, node.attrs.get("alpha", 1.0), a, b, node.attrs.get("beta", 1.0), c,
                      ctx.where[node.outputs[0]])
    return "\n".join([f"    /* {c_comment_text(node.name)}: Gemm{f' ({flags})' if flags else ''} M={M} N={N} K={K} */",
                      *_indent(call, 1)]) + "\n"


def _emit_matmul(node, ctx) -> str:
    a_shape, b_shape = (tuple(ctx.graph.tensors[n].shape) for n in node.inputs)
    # numpy's 1-D rules: a vector on the left is one row, on the right one column.
    a_shape = (1,) + a_shape if len(a_shape) == 1 else a_shape
    b_shape = b_shape + (1,) if len(b_shape) == 1 else b_shape
    (M, K), N = a_shape[-2:], b_shape[-1]
    batch = tuple(torch.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    a_strides = Layout.row_major(a_shape).broadcast_to(batch + (M, K)).strides[:-2]
    b_strides = Layout.row_major(b_shape).broadcast_to(batch + (K, N)).strides[:-2]
    y_strides = Layout.row_major(batch + (M, N)).strides[:-2]
    # Unit batch axes need no loop.
    axes = [d for d, n in enumerate(batch) if n != 1]
    names = _loop_names(len(axes), ctx)
    a_ptr = _offset(ctx.where[node.inputs[0]], [(v, a_strides[d]) for v, d in zip(names, axes)])
    b_ptr = _offset(ctx.where[node.inputs[1]], [(v, b_strides[d]) for v, d in zip(names, axes)])
    y_ptr = _offset(ctx.where[node.outputs[0]], [(v, y_strides[d]) for v, d in zip(names, axes)])
    call = _gemm_call(M, N, K, 1.0, _view(a_ptr, K, 1), _view(b_ptr, N, 1), 0.0, _view("NULL", 0, 0), y_ptr)

    count = math.prod(batch)
    lines = [f"    {{ /* {c_comment_text(node.name)}: MatMul, {count} product{'s' if count != 1 else ''} of [{M}, {K}] x [{K}, {N}] */"]
    if names:
        lines.append(f"        ptrdiff_t {', '.join(names)};")
    for depth, (v, d) in enumerate(zip(names, axes)):
        lines.append("    " * (depth + 2) + f"for ({v} = 0; {v} < {batch[d]}; {v}++) {{")
    lines += _indent(call, len(names) + 2)
    lines += ["    " * (depth + 2) + "}" for depth in reversed(range(len(names)))]
    lines.append("    }")
    return "\n".join(lines) + "\n"
