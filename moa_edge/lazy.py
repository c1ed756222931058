"""torch, imported where first used. The ops' references and constant folding need it; most
commands never do, and importing it costs every `moa-edge` process over a second."""
from __future__ import annotations

import importlib


class _Torch:
    def __getattr__(self, name: str):
        return getattr(importlib.import_module("torch"), name)


torch = _Torch()
