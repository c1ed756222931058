"""`convert --weights`: float32 weights stored in fewer bits, quantized by moa-edge itself.

    int8          symmetric, one scale per output column:  W = scale[n] q,  q in -127..127
    int8:BLOCK    the same with one scale per BLOCK rows of K per column (llama.cpp's Q8_0 is 32)
    fp16          each weight rounded to the nearest float16 (no scale): half the bytes, multiplied in float32
    fp16:native   the same storage, and the decode GEMV multiplies in float16 on a board whose core has
                  half-precision arithmetic (its TOML's extensions name fp16: rpi5, Jetson; or zvfh:
                  bpi-f3): x rounded
                  to a half, sums of 16 rows in halves (about 2^-11 of sum |x w| each, not float32's)
    int4[:BLOCK]  a scale and a minimum per BLOCK rows (default 32) per column, llama.cpp's Q4_1:
                  d = (max - min) / 15,  q = min(15, floor((w - min) / d + 0.5)),  W = d q + min;
                  the output layer (a MatMul or Gemm whose result is a graph output: an LLM's
                  lm_head), and an embedding table tied to it, stay int8 per column, as llama.cpp
                  keeps its output tensor at 6 or 8 bits.

Why Q4_1 and not the symmetric Q4_0: SmolLM2's published weights are Q4_1 blocks of 32 along K,
which an asymmetric grid of 32 holds exactly; on a symmetric grid greedy decoding agreed with the
float model on 69% of 64 steps (3 prompts) against 96% (both with the lm_head at int8).

Scales and minimums in blocks (int4, int8:BLOCK) are stored as float16, as GGUF's Q4_1 and Q8_0
store theirs: a 4-bit weight in blocks of 32 takes 5 bits, not 6. The integers are chosen on the
rounded grid, so W is exactly d16 q + min16 (SmolLM2's published Q4_1 weights come back bit for bit).
A tensor whose scales would leave float16's normal range keeps float32 ones. One scale per column
stays float32: it costs nothing.

A MatMul's or Gemm's int4 weight goes one step further, as GGUF's K-quants do (two_level): the
block scales d and minimums of every 8 blocks are a float16 H times an int8 s each (H = the
largest |value| / 127), 4.625 bits a weight, which brings SmolLM2 to 0.168x of its float32 bytes;
teacher-forced top-1 agreement with the float model stays at 95% (3 prompts x 64 steps), where
blocks of 64 fell to 75% and a 4- or 6-bit lm_head to 83% and 89%.

The integers, scales and minimums go to ops/qmatmul.pack_quantized, the kernel's layout (the
minimum is the kernel's offset).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moa_edge.errors import MoaEdgeError

DEFAULT_INT4_BLOCK = 32


@dataclass(frozen=True)
class WeightFormat:
    qtype: str          # "i8", "u4" or "f16" (ops/qmatmul.py)
    block: int | None   # rows of K per scale; None: all of K (per column)
    text: str           # as the user wrote it, for messages
    native: bool = False  # fp16:native: half-precision arithmetic in the GEMV (where the board has it)

    def for_output_layer(self) -> WeightFormat:
        """The format of a layer whose result is a graph output (see the module's docstring)."""
        return WeightFormat("i8", None, self.text) if self.qtype == "u4" else self

    def block_for(self, k: int, node_name: str) -> int:
        if self.block is None:
            return k
        if k % self.block:
            raise MoaEdgeError(f"--weights {self.text}: block {self.block} does not divide K={k} of node {node_name!r}; "
                               f"choose a block that divides every weight's K")
        return self.block


def parse_weights(text: str | None) -> WeightFormat | None:
    """'int8', 'int8:32', 'int4', 'int4:64', 'fp16' -> WeightFormat; None or 'float32' keep the float weights."""
    if text is None or text in ("float32", "fp32"):
        return None
    if text in ("fp16", "float16"):
        return WeightFormat("f16", None, text)
    if text == "fp16:native":
        return WeightFormat("f16", None, text, native=True)
    kind, colon, block_text = text.partition(":")
    qtype = {"int8": "i8", "int4": "u4"}.get(kind)
    try:
        block = int(block_text) if colon else (DEFAULT_INT4_BLOCK if qtype == "u4" else None)
    except ValueError:
        block = 0
    if qtype is None or (block is not None and (block < 2 or (qtype == "u4" and block % 2))):
        raise MoaEdgeError(f"--weights {text!r} is not int8, int8:BLOCK, int4, int4:BLOCK, fp16 or fp16:native "
                           f"(BLOCK at least 2, and even for int4)")
    return WeightFormat(qtype, block, text)


def _block_rows(w: np.ndarray, block: int) -> np.ndarray:
    """K x N as (blocks, block, N)."""
    k, n = w.shape
    return w.reshape(k // block, block, n)


FLOAT16_LIMIT = 65520.0  # float16 rounds this and beyond to infinity (65504 is its largest)


SUPER_BLOCKS = 8  # blocks per float16 scale of the two-level form (moa/qmatmul.h MOA_QS_SUPER_BLOCKS)


def two_level(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Values per block (blocks x N) as float16 H per SUPER_BLOCKS blocks times int8 s each: (H
    supers x N, s blocks x N), or None when an H would not be a normal half. two_level(H * s)
    gives back H and s (the largest |s| of a super-block is 127)."""
    blocks, n = values.shape
    supers = -(-blocks // SUPER_BLOCKS)
    padded = np.zeros((supers * SUPER_BLOCKS, n), np.float32)
    padded[:blocks] = values
    largest = np.abs(padded.reshape(supers, SUPER_BLOCKS, n)).max(axis=1) / np.float32(127.0)
    nonzero = largest[largest != 0]
    if nonzero.size and (nonzero.min() < HALF_SMALLEST_NORMAL or nonzero.max() >= 65504.0):
        return None
    h = largest.astype(np.float16)
    per_block = np.repeat(h.astype(np.float32), SUPER_BLOCKS, axis=0)[:blocks]
    s = np.clip(np.rint(np.divide(values, per_block, out=np.zeros_like(per_block), where=per_block != 0)), -127, 127)
    return h, s.astype(np.int8)


def quantize(w: np.ndarray, qtype: str, block: int, what: str = "a weight",
             two_levels: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int]:
    """W (K x N float32, block dividing K) -> (q K x N, scale blocks x N, offset blocks x N or None,
    zero point): W ~ scale[k // block] (q - zero) + offset[k // block]; for f16, (W as float16,
    None, None, 0): W ~ q, refused (naming `what`) when a finite weight would become infinite."""
    w = np.asarray(w, np.float32)
    if qtype == "f16":
        finite = np.abs(w[np.isfinite(w)])
        if finite.size and finite.max() >= FLOAT16_LIMIT:
            raise MoaEdgeError(f"--weights fp16: {what} holds {finite.max():g}, beyond float16's largest 65504")
        return w.astype(np.float16), None, None, 0
    blocks = _block_rows(w, block)
    per_block = block < w.shape[0]
    if qtype == "i8":
        scale = _stored_scale(np.abs(blocks).max(axis=1) / 127.0, None, per_block)[0]
        q = np.clip(np.rint(blocks * _inverse(scale)[:, None, :]), -127, 127).astype(np.int8)
        return q.reshape(w.shape), scale, None, 0
    # Q4_1: the block's minimum maps to 0, its maximum to 15.
    low, high = blocks.min(axis=1), blocks.max(axis=1)
    d_levels = two_level(((high - low) / 15.0).astype(np.float32)) if two_levels and per_block else None
    low_levels = two_level(low.astype(np.float32)) if d_levels is not None else None
    if low_levels is not None:  # exactly H s, in float32
        d, low = (np.repeat(h.astype(np.float32), SUPER_BLOCKS, axis=0)[:len(s)] * s for h, s in (d_levels, low_levels))
    else:
        d, low = _stored_scale((high - low) / 15.0, low, per_block)
    q = np.minimum(15, np.floor((blocks - low[:, None, :]) * _inverse(d)[:, None, :] + 0.5)).clip(0, 15).astype(np.uint8)
    return q.reshape(w.shape), d, low, 0


def _inverse(scale: np.ndarray) -> np.ndarray:
    scale = scale.astype(np.float32)
    return np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)


HALF_SMALLEST_NORMAL = 2.0 ** -14


def _stored_scale(scale: np.ndarray, offset: np.ndarray | None, per_block: bool):
    """(scale, offset) as stored: float16 for blocks when every nonzero scale is a normal half and
    every offset a finite one (a subnormal scale would lose its relative precision), else float32."""
    scale = scale.astype(np.float32)
    offset = None if offset is None else offset.astype(np.float32)
    nonzero = np.abs(scale[scale != 0])
    fits = per_block and (nonzero.size == 0 or (nonzero.min() >= HALF_SMALLEST_NORMAL and nonzero.max() < 65504.0))
    if fits and offset is not None:
        fits = np.abs(offset).max(initial=0.0) < 65504.0
    if not fits:
        return scale, offset
    return scale.astype(np.float16), None if offset is None else offset.astype(np.float16)


def dequantized(w: np.ndarray, fmt: WeightFormat, two_levels: bool = False) -> np.ndarray:
    """W (K x N) as the kernels see it after `fmt`: scale (q - zero), float32. A float model given
    these weights is the reference a quantized build must match (the same weights)."""
    block = fmt.block_for(w.shape[0], "weight")
    q, scale, offset, zero = quantize(w, fmt.qtype, block, two_levels=two_levels)
    if scale is None:  # float16: the value itself
        return q.astype(np.float32)
    rows = np.arange(w.shape[0]) // block
    scale = scale.astype(np.float32)[rows]
    return (scale * (q.astype(np.float32) - zero) + (0.0 if offset is None else offset.astype(np.float32)[rows])
            ).astype(np.float32)
