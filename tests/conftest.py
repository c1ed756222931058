import os
from pathlib import Path
import tempfile

import pytest

# Keep onnxruntime's and torch's caches out of $HOME.
os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="moa-test-cache-"))

from moa_edge.harness.boards import load_board  # noqa: E402

BOARDS = ["host", "rpi4", "k230"]
REPO = Path(__file__).resolve().parent.parent


def require_board(name: str):
    """The board, or a skip when its toolchain is missing; under CI=true that is a failure."""
    board = load_board(name)
    missing = board.missing_tools()
    if missing:
        message = f"board {name} is not ready here: missing {'; '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: skipping is not allowed)")
        pytest.skip(message)
    return board
