"""The paper's MoA primitives (section 1) over numpy arrays, named as in the paper.

rho A       shape vector
iota n      index vector 0..n-1; iota of a shape vector: every index vector of that shape
gamma(v, s) row-major index -> offset, Eq. (3): sum_k v_k * prod_{j>k} s_j
rav A       row-major flattening
i psi A     (rav A)[gamma(i, rho A)]; a partial index selects a sub-array of shape (tau i) drop (rho A)
take/drop   n take v / n drop v on vectors (n >= 0)
"""
from __future__ import annotations

import math

import numpy as np


def rho(A) -> tuple[int, ...]:
    return tuple(int(n) for n in np.shape(A))


def iota(n):
    """iota n = <0 .. n-1>; iota s (s a shape vector) has shape s # <tau s>: entry i is the index vector i itself.

    Flattening the leading axes lists the index vectors in row-major order.
    """
    if np.ndim(n) == 0:
        return np.arange(int(n))
    shape = tuple(int(k) for k in n)
    return np.moveaxis(np.indices(shape, dtype=int), 0, -1)


def take(n: int, v) -> tuple:
    assert n >= 0
    return tuple(v)[:n]


def drop(n: int, v) -> tuple:
    assert n >= 0
    return tuple(v)[n:]


def gamma(index, shape) -> int:
    """Row-major offset of a full index into an array of the given shape (paper Eq. 3)."""
    assert len(index) == len(shape), f"index {tuple(index)} is not a full index of shape {tuple(shape)}"
    offset = 0
    for i, n in zip(index, shape):
        assert 0 <= i < n, f"index {tuple(index)} is outside shape {tuple(shape)}"
        offset = offset * n + i  # Horner form of sum_k v_k * prod_{j>k} s_j
    return int(offset)


def rav(A) -> np.ndarray:
    return np.ravel(A, order="C")


def psi(index, A) -> np.ndarray:
    """i psi A, read straight from the definition: rav A at gamma(i, ...), one cell of shape (tau i) drop (rho A).

    A full index gives a 0-d array; a partial index the whole sub-array it selects.
    """
    shape, rank = rho(A), len(index)
    assert rank <= len(shape), f"index {tuple(index)} is longer than shape {shape}"
    cell_shape = drop(rank, shape)
    cell_size = math.prod(cell_shape)
    # Cells are contiguous in row-major order, so cell i starts at gamma(i, ...) whole cells in.
    start = gamma(index, take(rank, shape)) * cell_size
    return rav(A)[start:start + cell_size].reshape(cell_shape)
