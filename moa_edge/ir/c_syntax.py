"""C identifiers and literals, as the generated C spells them (op emitters and codegen alike)."""
from __future__ import annotations

import math
import re

import numpy as np


def c_identifier(name: str, taken: set[str]) -> str:
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name) or "t"
    if ident[0].isdigit():
        ident = "t_" + ident
    base, k = ident, 1
    while ident in taken:
        ident = f"{base}_{k}"
        k += 1
    taken.add(ident)
    return ident


def c_float(x: float) -> str:
    """Exact C99 literal for a float32 value (hex float), with math.h names for inf and nan."""
    x = float(np.float32(x))
    if math.isnan(x):
        return "NAN"
    if math.isinf(x):
        return "INFINITY" if x > 0 else "-INFINITY"
    return x.hex() + "f"


def c_float_short(x: float) -> str:
    """A float32 literal as short as reads back as the same float32 (1.0f, 0.5f, 1e-10f); c_float
    for inf and nan."""
    x = np.float32(x)
    if not np.isfinite(x):
        return c_float(float(x))
    text = str(x)
    return text + ("f" if "." in text or "e" in text else ".0f")
