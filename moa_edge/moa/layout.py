"""Layouts: an array's shape plus the map gamma from an index to a storage offset.

gamma(i) = offset + sum_k (i_k // divisors_k) * strides_k. Transpose, view-compatible
reshapes, slices, head split and merge, repeat_kv and broadcasts compose into a new
Layout over the same storage, so a kernel can read an operand where its producer
wrote it instead of copying it into a new shape. The divisors express repeat_kv
(grouped-query attention): query head h reads kv head h // group.
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np


@dataclass(frozen=True)
class Layout:
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements
    offset: int = 0
    divisors: tuple[int, ...] | None = None  # None: every axis divides by 1

    def __post_init__(self):
        assert len(self.strides) == len(self.shape)
        if self.divisors is not None:
            assert len(self.divisors) == len(self.shape) and all(d >= 1 for d in self.divisors)
            if all(d == 1 for d in self.divisors):
                # One spelling for "no repeats", so equal maps compare equal.
                object.__setattr__(self, "divisors", None)

    @staticmethod
    def fit(offsets: np.ndarray) -> "Layout | None":
        """The strided map whose storage offsets are exactly `offsets` (one per index of its
        shape), or None when they are not affine in the index."""
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.size == 0 or offsets.min() < 0:
            return None
        origin = (0,) * offsets.ndim
        strides = tuple(int(offsets[tuple(1 if a == axis else 0 for a in range(offsets.ndim))] - offsets[origin])
                        if n > 1 else 0 for axis, n in enumerate(offsets.shape))
        if min(strides, default=0) < 0:
            return None
        layout = Layout(tuple(int(n) for n in offsets.shape), strides, int(offsets[origin]))
        return layout if np.array_equal(layout.offsets().reshape(offsets.shape), offsets) else None

    @staticmethod
    def row_major(shape) -> "Layout":
        shape = tuple(int(s) for s in shape)
        strides, step = [], 1
        for extent in reversed(shape):
            strides.append(step)
            step *= extent
        return Layout(shape, tuple(reversed(strides)))

    def axis_divisors(self) -> tuple[int, ...]:
        return self.divisors or (1,) * len(self.shape)

    def gamma(self, index) -> int:
        """Storage offset of a full index (the paper's gamma, generalised to strides and repeats)."""
        assert len(index) == len(self.shape)
        return self.offset + sum((i // d) * s for i, s, d in zip(index, self.strides, self.axis_divisors()))

    def transpose(self, perm) -> "Layout":
        perm = [p % len(self.shape) for p in perm]
        assert sorted(perm) == list(range(len(self.shape))), f"{perm} is not a permutation"
        divisors = self.axis_divisors()
        return Layout(tuple(self.shape[p] for p in perm), tuple(self.strides[p] for p in perm), self.offset,
                      tuple(divisors[p] for p in perm))

    def reshape(self, new_shape) -> "Layout | None":
        """The same elements seen with another shape, or None when that needs a copy.

        Each axis is a factor (extent e, stride s, divisor d) contributing (i // d) * s.
        New axes are carved from the factors, innermost first: a factor splits into an
        inner and an outer part, and two neighbouring factors merge when the outer one
        continues the inner one. A broadcast (stride 0) axis merged under a real one
        becomes a divisor: that is how Unsqueeze -> Expand -> Reshape (repeat_kv) is a view.
        """
        new_shape = tuple(int(s) for s in new_shape)
        if math.prod(new_shape) != math.prod(self.shape):
            return None
        factors = [[n, s, d] for n, s, d in zip(self.shape, self.strides, self.axis_divisors()) if n != 1][::-1]
        if any(n % d for n, _, d in factors):
            return None
        new_strides, new_divisors = [0] * len(new_shape), [1] * len(new_shape)
        for k in reversed(range(len(new_shape))):
            extent = new_shape[k]
            if extent == 1:
                continue
            while factors[0][0] % extent:  # grow the innermost factor until it divides
                merged = _merge_factors(factors[0], factors[1])
                if merged is None:
                    return None
                factors[:2] = [merged]
            inner, outer = _split_factor(factors[0], extent)
            if inner is None:
                return None
            new_strides[k], new_divisors[k] = inner[1], inner[2]
            if outer[0] == 1:
                factors.pop(0)
            else:
                factors[0] = outer
        return Layout(new_shape, tuple(new_strides), self.offset, tuple(new_divisors))

    def broadcast_to(self, shape) -> "Layout":
        """Right-aligned numpy broadcasting: new or size-1 axes get stride 0."""
        shape = tuple(int(s) for s in shape)
        pad = len(shape) - len(self.shape)
        assert pad >= 0
        src_shape = (1,) * pad + self.shape
        src_strides = (0,) * pad + self.strides
        src_divisors = (1,) * pad + self.axis_divisors()
        strides = []
        for n, m, s in zip(shape, src_shape, src_strides):
            assert m in (1, n), f"cannot broadcast {self.shape} to {shape}"
            strides.append(0 if m == 1 and n != 1 else s)
        return Layout(shape, tuple(strides), self.offset, src_divisors)

    def slice(self, axis: int, start, stop, step: int = 1) -> "Layout | None":
        """numpy's A[..., start:stop:step, ...] on one axis (step > 0; None bounds and negatives as numpy).

        None when the axis is repeated and the slice cuts across its groups unevenly:
        the kept indices then no longer map to i // divisor for any one divisor.
        """
        assert step > 0
        axis %= len(self.shape)
        kept = range(*slice(start, stop, step).indices(self.shape[axis]))
        stride, divisor = self.strides[axis], self.axis_divisors()[axis]
        # Index i reads old index kept.start + i * step, i.e. repeat group (kept.start + i * step) // divisor.
        if step % divisor == 0 or len(kept) <= 1:
            new_stride, new_divisor = stride * (step // divisor), 1  # every kept index is in its own group
        elif divisor % step == 0 and kept.start % divisor == 0:
            new_stride, new_divisor = stride, divisor // step  # divisor // step picks share a group
        else:
            return None
        return Layout(self._replace_axis(self.shape, axis, len(kept)),
                      self._replace_axis(self.strides, axis, new_stride),
                      self.offset + (kept.start // divisor) * stride,
                      self._replace_axis(self.axis_divisors(), axis, new_divisor))

    def split_axis(self, axis: int, parts: int) -> "Layout | None":
        """Head split: axis of extent parts * inner becomes (parts, inner), e.g. (B, S, H*d) -> (B, S, H, d)."""
        axis %= len(self.shape)
        extent = self.shape[axis]
        assert extent % parts == 0, f"axis {axis} of extent {extent} does not split into {parts} parts"
        return self.reshape(self.shape[:axis] + (parts, extent // parts) + self.shape[axis + 1:])

    def merge_axes(self, axis: int) -> "Layout | None":
        """Head merge: axes axis and axis + 1 become one, or None when that needs a copy."""
        axis %= len(self.shape)
        assert axis + 1 < len(self.shape)
        merged = self.shape[axis] * self.shape[axis + 1]
        return self.reshape(self.shape[:axis] + (merged,) + self.shape[axis + 2:])

    def repeat_kv(self, axis: int, group: int) -> "Layout":
        """np.repeat(A, group, axis) (torch repeat_interleave): new index h reads old index h // group."""
        axis %= len(self.shape)
        return Layout(self._replace_axis(self.shape, axis, self.shape[axis] * group), self.strides, self.offset,
                      self._replace_axis(self.axis_divisors(), axis, self.axis_divisors()[axis] * group))

    def is_row_major(self) -> bool:
        """True when the elements fill one contiguous row-major run starting at offset."""
        return self.divisors is None and all(
            n == 1 or s == r for n, s, r in zip(self.shape, self.strides, Layout.row_major(self.shape).strides))

    def contiguous_axis(self) -> int | None:
        """The innermost axis that steps through consecutive storage elements, if any."""
        for axis in reversed(range(len(self.shape))):
            if self.shape[axis] > 1 and self.strides[axis] == 1 and self.axis_divisors()[axis] == 1:
                return axis
        return None

    def offsets(self) -> np.ndarray:
        """gamma of every index, as an array of the layout's shape."""
        offsets = np.full(self.shape, self.offset)
        for axis, (n, s, d) in enumerate(zip(self.shape, self.strides, self.axis_divisors())):
            along_axis = (np.arange(n) // d) * s
            offsets = offsets + along_axis.reshape([n if k == axis else 1 for k in range(len(self.shape))])
        return offsets

    def storage_extent(self) -> int:
        """Elements of storage the layout reaches: the largest offset plus one."""
        return self.offset + sum(((n - 1) // d) * s for n, s, d in zip(self.shape, self.strides, self.axis_divisors())) + 1

    def materialise(self, storage: np.ndarray) -> np.ndarray:
        """Gather the array this layout describes: element i is rav(storage)[gamma(i)], for all i at once."""
        return np.ravel(storage)[self.offsets()]

    @staticmethod
    def _replace_axis(values: tuple[int, ...], axis: int, value: int) -> tuple[int, ...]:
        return values[:axis] + (value,) + values[axis + 1:]


def _merge_factors(inner, outer):
    """One factor for inner-then-outer (index i = i_outer * e_inner + i_inner), or None."""
    (e1, s1, d1), (e2, s2, d2) = inner, outer
    if s1 == 0 and s2 == 0:
        return [e1 * e2, 0, 1]
    if s1 == 0 and d1 == 1:  # a broadcast axis under a real one: it divides the merged index
        s1, d1 = s2, e1
    if d2 != 1 or e1 % d1 or s2 != s1 * (e1 // d1):
        return None
    return [e1 * e2, s1, d1]


def _split_factor(factor, extent):
    """(inner part of `extent`, outer remainder) of a factor, or (None, None)."""
    e, s, d = factor
    if e % extent:
        return None, None
    if extent % d == 0:
        return [extent, s, d], [e // extent, s * (extent // d), 1]
    if d % extent == 0:  # the inner part moves within one repeat group
        return [extent, 0, 1], [e // extent, s, d // extent]
    return None, None
