"""MoaIGemm: a MatMul or Gemm over int8 weights whose float activations are quantized to 8 bits
at run time, one moa_igemm_f32 call (igemm.h): the integer GEMM and its float epilogue.

    Y[..., M, N] = (float)(sum_k (qA[m][k] - a_zero) (B[k][n] - b_zero[n])) * (a_scale * b_scale[n]) + bias[n]

qA: A quantized per tensor to uint8 as ONNX DynamicQuantizeLinear does ("tensor_u8", onnxruntime's
quantize_dynamic files), or to int8 per row ("row_i8", convert --activations int8).

Inputs: A, q (B in igemm.h's panels), col_sum, zero ("" for none), b_scale (per padded column),
bias ("" for none). The layout is made here (pack_weights) and undone for the reference
(unpack_weights); the reference quantizes and rounds in float32 exactly as the C does.
"""
from __future__ import annotations

import math

import numpy as np
from moa_edge.lazy import torch

from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text

from .contract import EmittedUnit, TensorType, check_status
from .qmatmul import op_cost, optional_input  # noqa: F401  (op_cost: this op's hook too)

OPS = ("MoaIGemm",)
HEADER = '#include "moa/igemm.h"'
MODES = {"tensor_u8": "MOA_IQ_TENSOR_U8", "row_i8": "MOA_IQ_ROW_I8"}
BLOCK_ROWS = 96  # MOA_IGEMM_MC: rows of A quantized into the scratch at a time
# The driver and every ISA's micro-kernels (moa/igemm_tile.h); all but one variant compile empty.
C_SOURCES = ["igemm.c", "x86/igemm_avx512.c", "x86/igemm_avx2.c", "neon/igemm_neon.c", "rvv/igemm_rvv.c",
             "helium/igemm_helium.c", "cortexm/igemm_dsp.c"]
PANEL = 16  # MOA_GEMM_NR
GROUP = 4   # consecutive k per dot-product lane


def padded_k(k: int) -> int:
    return -(-k // GROUP) * GROUP


def columns(n: int) -> int:
    """MOA_IGEMM_COLUMNS: N padded to whole panels."""
    return -(-n // PANEL) * PANEL


def pack_weights(b: np.ndarray, zero=None):
    """B (K x N, int8 or uint8) and its zero points (None, a scalar or one per column) in igemm.h's
    layout: (q int8 [panels, Kp / 4, 16, 4], col_sum int32 [columns], zero int32 [columns] or None).
    uint8 weights and their zero points are moved by -128 (B - b_zero is unchanged)."""
    b = np.asarray(b)
    k, n = b.shape
    shift = -128 if b.dtype == np.uint8 else 0
    if b.dtype not in (np.uint8, np.int8):
        raise ValueError(f"weights of type {b.dtype}: int8 or uint8 only")
    stored = b.astype(np.int32) + shift
    panels, groups = columns(n) // PANEL, padded_k(k) // GROUP
    padded = np.zeros((groups * GROUP, panels * PANEL), np.int32)
    padded[:k, :n] = stored
    # [p][g][j][t] = B[4g + t][16p + j]
    q = padded.reshape(groups, GROUP, panels, PANEL).transpose(2, 0, 3, 1).astype(np.int8)
    col_sum = padded.sum(axis=0).astype(np.int32)
    zeros = None
    if zero is None and shift:
        zero = 0  # moved by -128 like B
    if zero is not None:
        zeros = np.zeros(panels * PANEL, np.int32)
        zeros[:n] = np.broadcast_to(np.asarray(zero).astype(np.int32).reshape(-1), (n,)) + shift
    return np.ascontiguousarray(q), col_sum, zeros


def unpack_weights(q: np.ndarray, zero: np.ndarray | None, k: int, n: int) -> np.ndarray:
    """pack_weights undone: B - b_zero (K x N, int64), as the kernel multiplies it."""
    q = np.asarray(q).astype(np.int64)
    panels, groups = q.shape[:2]
    b = q.transpose(1, 3, 0, 2).reshape(groups * GROUP, panels * PANEL)[:k, :n]
    return b - (np.asarray(zero, np.int64)[:n] if zero is not None else 0)


def quantize_tensor_u8(x: np.ndarray):
    """ONNX DynamicQuantizeLinear over all of x as onnxruntime (and igemm.c) compute it, in
    float32: (q uint8, scale, zero point)."""
    x = np.asarray(x, np.float32)
    lo, hi = np.float32(min(x.min(initial=0), 0)), np.float32(max(x.max(initial=0), 0))
    scale = np.float32(1) if hi == lo else np.float32((hi - lo) / np.float32(255))
    zero = int(np.rint(np.clip(np.float32(0) - lo / scale, 0, 255)))
    q = np.rint(np.clip(x / scale, np.float32(-zero), np.float32(255 - zero))) + zero
    return q.astype(np.uint8), scale, zero


def quantize_rows_i8(x: np.ndarray):
    """Symmetric int8 per row (M x K) in float32: (q int8, one scale per row)."""
    x = np.asarray(x, np.float32)
    largest = np.abs(x).max(axis=1, initial=0)
    scale = np.where(largest == 0, np.float32(1), largest / np.float32(127)).astype(np.float32)
    return np.rint(np.clip(x / scale[:, None], np.float32(-127), np.float32(127))).astype(np.int8), scale


def _rows(node, graph) -> int:
    return math.prod(graph.tensors[node.inputs[0]].shape[:-1])


def infer(node, graph) -> list[TensorType]:
    a = graph.tensors[node.inputs[0]]
    return [TensorType(tuple(a.shape[:-1]) + (node.attrs["n"],), a.dtype)]


def scratch_bytes(node, graph) -> int:
    """MOA_IGEMM_SCRATCH_BYTES: a block of rows of A quantized, each with its sum and scale."""
    return min(_rows(node, graph), BLOCK_ROWS) * (8 + padded_k(node.attrs["k"]))


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    """The C's arithmetic in numpy: A rounded to float32 and quantized, exact integer sums (wrapping
    as int32), then float32 (sum) * float32 (a_scale * b_scale) + bias, each rounded to float32."""
    k, n = node.attrs["k"], node.attrs["n"]
    a = inputs[0].numpy().astype(np.float32)
    rows = a.reshape(-1, k)
    if node.attrs["mode"] == "tensor_u8":
        q, scale, zero = quantize_tensor_u8(rows)
        row_scale = np.full(rows.shape[0], scale, np.float32)
    else:
        (q, row_scale), zero = quantize_rows_i8(rows), 0
    zeros = optional_input(inputs, 3)
    b = unpack_weights(inputs[1].numpy(), None if zeros is None else zeros.numpy(), k, n)
    sums = (q.astype(np.int64) - zero) @ b
    sums = ((sums + 2**31) % 2**32 - 2**31).astype(np.float32)
    y = sums * (row_scale[:, None] * inputs[4].numpy().astype(np.float32)[None, :n])
    bias = optional_input(inputs, 5)
    if bias is not None:
        y = y + bias.numpy().astype(np.float32)
    return [torch.from_numpy(y.astype(np.float64).reshape(*a.shape[:-1], n))]


def emit(node, ctx):
    graph, attrs = ctx.graph, node.attrs
    inputs = (node.inputs + [""] * 6)[:6]
    dtypes.require_dtypes(node, graph, names=[inputs[0], inputs[4], inputs[5], node.outputs[0]])
    dtypes.require_dtypes(node, graph, ("int8",), names=inputs[1:2])
    dtypes.require_dtypes(node, graph, ("int32",), names=inputs[2:4])
    M, N, K = _rows(node, graph), attrs["n"], attrs["k"]
    where = lambda name: ctx.where[name] if name else "NULL"  # noqa: E731
    function = "moa_igemm_f32("
    indent = " " * len(f"status = {function}")
    call = check_status(f"{function}{M}, {N}, {K}, {where(inputs[0])}, {K}, {MODES[attrs['mode']]},\n"
                        f"{indent}(moa_iweights){{{where(inputs[1])}, {where(inputs[2])}, {where(inputs[3])}}},\n"
                        f"{indent}{where(inputs[4])}, {where(inputs[5])},\n"
                        f"{indent}{ctx.where[node.outputs[0]]}, {N}, {ctx.scratch})", indent="")
    quantized = {"tensor_u8": "per tensor to uint8", "row_i8": "per row to int8"}[attrs["mode"]]
    comment = (f"    /* {c_comment_text(node.name)}: {attrs.get('source', 'MatMul')}, int8 weights x activations "
               f"quantized {quantized}, M={M} N={N} K={K} */\n")
    return EmittedUnit(comment + "".join("    " + line + "\n" for line in call.splitlines()), declarations=[HEADER])
