"""Build a generated project for a board with SCons."""
from __future__ import annotations

from pathlib import Path
import subprocess
import sys

from moa_edge.errors import MoaEdgeError
from moa_edge.target import Board


def build(project: Path, board: Board, extra_cflags: list[str] = (), extra_ldflags: list[str] = (),
          variant: str | None = None) -> Path:
    """Compile project/ for the board; returns the path of the runner executable."""
    project = Path(project)
    if not (project / "SConstruct").is_file() or not (project / "model.h").is_file():
        raise MoaEdgeError(f"{project}: not a project made by `moa-edge convert` (no SConstruct/model.h)")
    cc = board.compiler()
    if cc is None:
        raise MoaEdgeError(f"board {board.name}: missing {'; '.join(board.missing_tools())}; run `make setup` as root")
    variant = variant or board.name
    cflags = list(board.toolchain.get("cflags", [])) + list(extra_cflags)
    ldflags = list(board.toolchain.get("ldflags", [])) + list(extra_ldflags)
    cmd = [sys.executable, "-m", "SCons", "-Q", "-C", str(project), f"CC={cc}",
           f"CFLAGS={' '.join(cflags)}", f"LINKFLAGS={' '.join(ldflags)}", f"VARIANT={variant}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MoaEdgeError(f"build of {project} for {board.name} failed:\n{proc.stdout}{proc.stderr}".rstrip())
    return project / "build" / variant / "model_main"
