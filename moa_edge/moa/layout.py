"""Layouts: an array's shape plus the map gamma from an index to a storage offset.

gamma(i) = offset + sum_k i_k * strides_k. Transpose and view-compatible reshapes
compose into a new Layout over the same storage, so a kernel can read an operand
where its producer wrote it instead of copying it into a new shape.
"""
from __future__ import annotations

from dataclasses import dataclass
import math


@dataclass(frozen=True)
class Layout:
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements
    offset: int = 0

    @staticmethod
    def row_major(shape) -> "Layout":
        shape = tuple(int(s) for s in shape)
        strides, step = [], 1
        for extent in reversed(shape):
            strides.append(step)
            step *= extent
        return Layout(shape, tuple(reversed(strides)))

    def gamma(self, index) -> int:
        """Storage offset of a full index (the paper's gamma, generalised to strides)."""
        assert len(index) == len(self.shape)
        return self.offset + sum(i * s for i, s in zip(index, self.strides))

    def transpose(self, perm) -> "Layout":
        perm = [p % len(self.shape) for p in perm]
        return Layout(tuple(self.shape[p] for p in perm), tuple(self.strides[p] for p in perm), self.offset)

    def reshape(self, new_shape) -> "Layout | None":
        """The same elements seen with another shape, or None when that needs a copy."""
        new_shape = tuple(int(s) for s in new_shape)
        if math.prod(new_shape) != math.prod(self.shape):
            return None
        old = [(n, s) for n, s in zip(self.shape, self.strides) if n != 1]
        new = [k for k, n in enumerate(new_shape) if n != 1]
        new_strides = [0] * len(new_shape)  # size-1 axes are never stepped
        oi = ni = 0
        while oi < len(old) and ni < len(new):
            # Grow a group of old axes and a group of new axes until both hold the same count.
            oj, nj = oi + 1, ni + 1
            old_count, new_count = old[oi][0], new_shape[new[ni]]
            while old_count != new_count:
                if new_count < old_count:
                    new_count *= new_shape[new[nj]]
                    nj += 1
                else:
                    old_count *= old[oj][0]
                    oj += 1
            # The old group must be one contiguous run to be re-split freely.
            for (_, s0), (n1, s1) in zip(old[oi:oj], old[oi + 1:oj]):
                if s0 != n1 * s1:
                    return None
            step = old[oj - 1][1]
            for k in reversed(new[ni:nj]):
                new_strides[k] = step
                step *= new_shape[k]
            oi, ni = oj, nj
        return Layout(new_shape, tuple(new_strides), self.offset)

    def broadcast_to(self, shape) -> "Layout":
        """Right-aligned numpy broadcasting: new or size-1 axes get stride 0."""
        shape = tuple(int(s) for s in shape)
        pad = len(shape) - len(self.shape)
        assert pad >= 0
        src_shape = (1,) * pad + self.shape
        src_strides = (0,) * pad + self.strides
        strides = []
        for n, m, s in zip(shape, src_shape, src_strides):
            assert m in (1, n), f"cannot broadcast {self.shape} to {shape}"
            strides.append(0 if m == 1 and n != 1 else s)
        return Layout(shape, tuple(strides), self.offset)
