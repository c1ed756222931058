"""The MoA layer: shapes, index maps (layouts) and the attention kernels derived from them."""
from .layout import Layout

__all__ = ["Layout"]
