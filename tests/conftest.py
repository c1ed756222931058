import os
from pathlib import Path
import tempfile

import pytest

# Keep onnxruntime's and Hugging Face's caches out of $HOME; nothing is fetched from the hub.
os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="moa-test-cache-"))
os.environ.setdefault("HF_HOME", os.path.join(os.environ["XDG_CACHE_HOME"], "huggingface"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from moa_edge.target import load_board  # noqa: E402

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
