"""Build a generated project for a board with SCons."""
from __future__ import annotations

import json
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys

from moa_edge.errors import MoaEdgeError
from moa_edge.target import Board

from . import ownership
from .runner import run_limited

BUILD_SUFFIXES = (".c", ".h", ".S", ".bin", ".ld")  # and SConstruct: what the build reads
EMULATED_MEMORY = "memory-qemu.ld"  # a bare-metal board's memories as its emulator maps them (codegen.linker)
# A compiler cache put before the board's compiler (as CMake's CMAKE_C_COMPILER_LAUNCHER):
# MOA_EDGE_CC_LAUNCHER=ccache makes the runtime's sources, the same in every project, compile once.
CC_LAUNCHER = "MOA_EDGE_CC_LAUNCHER"


def _is_build_input(rel: str) -> bool:
    return rel == "SConstruct" or rel.endswith(BUILD_SUFFIXES)


def cc_launcher() -> str:
    """$MOA_EDGE_CC_LAUNCHER (e.g. ccache), or "" when unset: one program, named plainly, as SCons
    hands CC to the shell."""
    launcher = os.environ.get(CC_LAUNCHER, "").strip()
    if launcher and (not re.fullmatch(r"[A-Za-z0-9_./+-]+", launcher) or shutil.which(launcher) is None):
        raise MoaEdgeError(f"{CC_LAUNCHER}={launcher!r}: not a program on PATH (one name or path, "
                           "no spaces or shell characters)")
    return launcher


def build(project: Path, board: Board, extra_cflags: list[str] = (), extra_ldflags: list[str] = (),
          variant: str | None = None) -> Path:
    """Compile project/ for the board; returns the path of the runner executable."""
    project = Path(project)
    if not (project / "SConstruct").is_file() or not (project / "model.h").is_file():
        raise MoaEdgeError(f"{project}: not a project made by `moa-edge convert` (no SConstruct/model.h)")
    changed = ownership.changed_files(project, _is_build_input)
    if changed:
        raise MoaEdgeError(f"{project}: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} "
                           f"{'is' if len(changed) == 1 else 'are'} missing or not as `moa-edge convert` wrote "
                           f"{'it' if len(changed) == 1 else 'them'} ({ownership.MARKER}); convert the model again "
                           f"(or, to build an edited project, run scons in it yourself)")
    cc = board.compiler()
    if cc is None:
        raise MoaEdgeError(f"board {board.name}: missing {'; '.join(board.missing_tools())}; run `make setup` as root")
    launcher = cc_launcher()
    if launcher:
        cc = f"{launcher} {cc}"
    variant = variant or board.name
    cflags = list(board.toolchain.get("cflags", [])) + list(extra_cflags)
    ldflags = list(board.toolchain.get("ldflags", [])) + list(extra_ldflags)
    if board.bare_metal:  # built to run here, under the board's emulator
        if not (project / EMULATED_MEMORY).is_file():
            raise MoaEdgeError(f"{project}: converted for board {_converted_for(project)}, not for bare-metal board "
                               f"{board.name} (no {EMULATED_MEMORY}); convert it with --board {board.name}")
        ldflags += ["-T", EMULATED_MEMORY]
    cmd = [sys.executable, "-m", "SCons", "-Q", "-C", str(project), f"CC={cc}",
           f"CFLAGS={' '.join(cflags)}", f"LINKFLAGS={' '.join(ldflags)}", f"VARIANT={variant}"]
    # SCons rebuilds what changed sources need, but never checks its outputs: a runner changed
    # or damaged since would be run as it is. Linking it anew is cheap.
    (project / "build" / variant / "model_main").unlink(missing_ok=True)
    # Its own process group: if we are interrupted, scons and the compilers it started stop with
    # us, before our caller removes the folder they write into.
    proc = run_limited(cmd, None, dict(os.environ), f"build of {project}")
    if proc.returncode != 0:
        raise MoaEdgeError(f"build of {project} for {board.name} failed:\n{proc.stdout}{proc.stderr}".rstrip())
    return project / "build" / variant / "model_main"


def _converted_for(project: Path) -> str:
    try:
        return json.loads((project / "report.json").read_text())["board"]
    except (OSError, ValueError, KeyError):
        return "another board"


def selected_isa(cc: str, cflags: list[str], include: Path) -> str | None:
    """The kernels a build with this compiler and these flags selects: moa/isa.h's MOA_ISA_NAME
    as the preprocessor sees it (include: the runtime's include folder); None if it cannot tell."""
    try:
        proc = subprocess.run([cc, *cflags, "-I", str(include), "-E", "-P", "-x", "c", "-"], capture_output=True,
                              text=True, timeout=60, input='#include "moa/isa.h"\nmoa_isa_name = MOA_ISA_NAME\n')
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = [line.split("=", 1)[1].strip().strip('"') for line in proc.stdout.splitlines()
             if line.startswith("moa_isa_name =")]
    return found[-1] if proc.returncode == 0 and found else None


def build_isa(project: Path, board: Board, extra_cflags: list[str] = ()) -> str | None:
    """The kernels a build of project with the board's compiler and flags selects (None if it
    cannot be asked)."""
    cc = board.compiler()
    if cc is None:
        return None
    cflags = list(board.toolchain.get("cflags", [])) + list(extra_cflags)
    return selected_isa(cc, cflags, project / "runtime" / "include")


def check_march(march: str) -> str:
    """march, if it is a -march value (letters, digits and . _ + -): it becomes a compiler flag and
    part of a build folder's name, so a space or a slash in it must not reach either."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", march):
        raise MoaEdgeError(f"--host-march {march!r}: not a -march value (letters, digits and . _ + -)")
    return march


def build_for_march(project: Path, board: Board, march: str) -> tuple[Path, str | None]:
    """project built again with -march=ARCH (x86-64-v3: the AVX2 kernels on any x86 host), into
    build/<board>-ARCH/: the runner's path and the kernels that build selects."""
    flags = [f"-march={check_march(march)}"]
    return build(project, board, extra_cflags=flags, variant=f"{board.name}-{march}"), build_isa(project, board, flags)
