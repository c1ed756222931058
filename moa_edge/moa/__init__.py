"""The MoA layer: shapes, index maps (layouts) and the attention kernels derived from them."""
from .array import drop, gamma, iota, psi, rav, rho, take
from .layout import Layout

__all__ = ["Layout", "drop", "gamma", "iota", "psi", "rav", "rho", "take"]
