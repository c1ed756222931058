"""Inputs for validation: user-given (.npz) or seeded random ones."""
from __future__ import annotations

from pathlib import Path
import zipfile

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes


def random_inputs(io: list[dict], seed: int = 0) -> dict[str, np.ndarray]:
    """Standard normal floats; bool masks with at least one True per row (as padding masks are);
    integers 1 (a token id every vocabulary has, and "attend" in a 0/1 attention mask)."""
    rng = np.random.default_rng(seed)
    out = {}
    for e in io:
        if e["kind"] != "input":
            continue
        shape = tuple(e["shape"])
        if e["dtype"] == "bool":
            keep = rng.random(shape) < 0.75
            if keep.ndim:
                first = rng.integers(0, shape[-1], size=shape[:-1])
                np.put_along_axis(keep, first[..., None], True, axis=-1)
            out[e["name"]] = keep
        elif not dtypes.dtype(e["dtype"]).is_float:
            out[e["name"]] = np.ones(shape, dtype=dtypes.dtype(e["dtype"]).numpy)
        elif e["dtype"] == "float64":
            out[e["name"]] = rng.standard_normal(shape)
        else:
            out[e["name"]] = rng.standard_normal(shape).astype(np.float32)
    return out


def load_npz(path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise MoaEdgeError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise MoaEdgeError(f"{path}: not a readable .npz file ({exc})") from None
