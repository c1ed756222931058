"""The board catalogue: boards/*.toml."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import shutil
import tomllib

from moa_edge import BOARDS_DIR
from moa_edge.errors import MoaEdgeError


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    arch: str
    isa: str
    vlen: int
    toolchain: dict
    run: dict
    caches: dict
    memory: dict
    energy: dict
    power_sensor: dict
    path: Path

    def compiler(self) -> str | None:
        """The first of the board's compilers found on PATH, or None."""
        for cc in self.toolchain["cc"]:
            if shutil.which(cc):
                return cc
        return None

    def runner(self) -> list[str]:
        return list(self.run.get("command", []))

    def missing_tools(self) -> list[str]:
        """What this machine lacks to build and run for the board, as a readable list."""
        missing = []
        if self.compiler() is None:
            missing.append(f"a C compiler ({' or '.join(self.toolchain['cc'])}; Debian: {' '.join(self.toolchain.get('apt', []))})")
        cmd = self.runner()
        if cmd and shutil.which(cmd[0]) is None:
            missing.append(f"{cmd[0]} (Debian: {' '.join(self.run.get('apt', []))})")
        return missing


def board_names() -> list[str]:
    return sorted(p.stem for p in BOARDS_DIR.glob("*.toml"))


def load_board(name: str) -> Board:
    path = BOARDS_DIR / f"{name}.toml"
    if not path.is_file():
        raise MoaEdgeError(f"unknown board {name!r}; known boards: {', '.join(board_names())}")
    with path.open("rb") as f:
        d = tomllib.load(f)
    return Board(d["name"], d["description"], d["arch"], d["isa"], d.get("vlen", 0), d["toolchain"], d["run"],
                 d["caches"], d["memory"], d["energy"], d.get("power_sensor", {"kind": "none"}), path)


def parse_board_list(text: str) -> list[Board]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise MoaEdgeError("--board needs at least one board name")
    return [load_board(n) for n in names]


def symbol_lister(board: Board) -> str | None:
    """The board's nm, for reading the symbols of built objects."""
    for nm in board.toolchain.get("nm", ["nm"]):
        if shutil.which(nm):
            return nm
    return None
