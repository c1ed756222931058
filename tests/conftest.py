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


def board_file(folder: Path, name: str = "my board", like: str = "host") -> Path:
    """A copy of boards/LIKE.toml renamed NAME, outside the catalogue: a board given to --board
    by the path of its TOML file."""
    text = (REPO / "boards" / f"{like}.toml").read_text()
    assert f'name = "{like}"' in text
    path = folder / f"{name}.toml"
    path.write_text(text.replace(f'name = "{like}"', f'name = "{name}"', 1))
    return path


def pytest_terminal_summary(terminalreporter):
    """The fuzzing campaign's counts per family (tests/test_fuzz.py), when it ran."""
    from fuzz_oracle import summary_lines
    lines = summary_lines()
    if lines:
        terminalreporter.section("fuzzing campaign (issue 18): outcomes per family")
        for line in lines:
            terminalreporter.write_line(line)
