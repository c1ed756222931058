"""One module per op family: its shape rule, torch reference and C emission."""
from . import attention

# IR op name -> the module that implements it. An op missing here is unsupported.
SUPPORTED_OPS = {"MoaAttention": attention}

__all__ = ["SUPPORTED_OPS", "attention"]
