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

import numpy as np

# The driver and every ISA's micro-kernels (moa/igemm_tile.h); all but one variant compile empty.
C_SOURCES = ["igemm.c", "x86/igemm_avx512.c", "x86/igemm_avx2.c", "neon/igemm_neon.c", "rvv/igemm_rvv.c"]
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
