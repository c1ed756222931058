"""The target: one board as a typed object (its caches as typed levels), passed as an object
from the command line down to the cost model, codegen, energy and the harness."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys

from moa_edge import PROJECT_ROOT

CACHE_LEVELS = ("l1d", "l2", "l3")  # innermost first, as the TOML names them


@dataclass(frozen=True)
class CacheLevel:
    name: str           # "l1d", "l2" or "l3"
    size: int           # bytes
    line: int           # bytes
    associativity: int  # ways

    def as_toml(self) -> dict:
        """The level as the board file writes it."""
        return {"size": self.size, "line": self.line, "assoc": self.associativity}


@dataclass(frozen=True)
class Memory:
    """One memory of a bare-metal board (flash, SRAM, a tightly coupled memory): where it is on
    the part, and where the board's emulator has memory to stand in for it."""
    name: str
    base: int           # address on the part
    size: int           # bytes
    kind: str           # catalogue.MEMORY_KINDS
    emulated_base: int  # address under the emulator (qemu-system's machine), the part's when it has one there


# What each memory of a bare-metal board holds (the board's [memories] code, weights, data).
MEMORY_ROLES = ("code", "weights", "data")


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    arch: str
    isa: str
    vlen: int
    toolchain: dict
    run: dict
    caches: tuple[CacheLevel, ...]  # l1d first, then outwards to the last level
    cache_source: str               # where the cache figures come from
    memory: dict
    energy: dict
    power_sensor: dict
    path: Path
    cores: int | None = None   # None: the build machine's (host)
    extensions: tuple[str, ...] = ()  # beyond the ISA: dotprod, fp16, ... (catalogue.EXTENSIONS)
    memories: tuple[Memory, ...] = ()  # a bare-metal board's memories; none on a Linux board
    placement: dict | None = None      # MEMORY_ROLES -> the name of the memory that holds it
    stack_bytes: int = 0               # a bare-metal board's stack, reserved in its data memory
    startup: dict = field(default_factory=dict)  # a bare-metal board's [startup]: icache, boot_block

    @property
    def bare_metal(self) -> bool:
        """Runs without an operating system: built with the board's linker script, run as
        qemu-system's kernel with its files over semihosting."""
        return self.run["kind"] == "qemu-system"

    def memory_for(self, role: str) -> Memory:
        """The memory that holds `role` (MEMORY_ROLES) on a bare-metal board."""
        return next(m for m in self.memories if m.name == self.placement[role])

    def l1d(self) -> CacheLevel:
        return self.caches[0]

    def last_level_cache(self) -> CacheLevel:
        """The level whose misses go to DRAM."""
        return self.caches[-1]

    def memory_bytes(self) -> int:
        """The memory the board file states: DRAM and on-chip SRAM together."""
        return self.memory["dram_bytes"] + self.memory["sram_bytes"]

    def compiler(self) -> str | None:
        """The first of the board's compilers found on PATH, or None."""
        for cc in self.toolchain["cc"]:
            if shutil.which(cc):
                return cc
        return None

    def threads(self) -> int:
        """The default thread count of a run: the board's cores (the build machine's for the host)."""
        return self.cores or os.cpu_count() or 1

    def runner(self) -> list[str]:
        """The emulator's command line (empty for native runs): its program as named (found on PATH),
        or, when the board needs a newer one than PATH has (run.min_version), the Python environment's."""
        cmd = list(self.run.get("command", []))
        if cmd:
            cmd[0] = self._emulator() or cmd[0]
        return cmd

    def command(self, program: str, args: list[str], emulator_options: list[str] = ()) -> list[str]:
        """The command line that runs `program` with `args` here: natively or under qemu-user; on
        a bare-metal board as the kernel of qemu-system, its arguments over semihosting (its
        files are the host's, its exit status qemu's), with `emulator_options` (a plugin)."""
        if not self.bare_metal:
            return self.runner() + [program, *args]
        semihosting = ",".join(["enable=on", "target=native"] + [f"arg={a.replace(',', ',,')}" for a in args])
        return self.runner() + ["-nographic", "-monitor", "none", "-serial", "none",
                                "-semihosting-config", semihosting, *emulator_options, "-kernel", program]

    def _emulator(self) -> str | None:
        """The emulator's name or path, None when there is none (new enough). The system's comes
        first even when an activated Python environment puts its own first on PATH: that one is
        a static build for the boards that need a newer version, and loads no TCG plugins (which
        bench attention and bench gemm count instructions with)."""
        name = self.run["command"][0]
        environment = Path(sys.executable).parent
        others = [p for p in os.environ.get("PATH", "").split(os.pathsep)
                  if p and Path(p).resolve() != environment.resolve()]
        system = shutil.which(name, path=os.pathsep.join(others))
        as_named = name if system and shutil.which(name) == system else system  # the name when PATH finds it
        ours = shutil.which(name, path=str(environment))
        if "min_version" not in self.run:
            return as_named or (name if ours else None)
        wanted = version_tuple(self.run["min_version"])
        if system and (tool_version(system) or ()) >= wanted:
            return as_named
        return ours if ours and (tool_version(ours) or ()) >= wanted else None

    def missing_tools(self) -> list[str]:
        """What this machine lacks to build and run for the board, as a readable list."""
        missing = []
        cc = self.compiler()
        if cc is None:
            missing.append(f"a C compiler ({' or '.join(self.toolchain['cc'])}; Debian: {' '.join(self.toolchain.get('apt', []))})")
        for spec in (f[len("--specs="):] for f in self.toolchain["cflags"] if f.startswith("--specs=")):
            if cc is not None and not _compiler_finds(cc, spec):  # a C library's (picolibc.specs)
                missing.append(f"{spec} for {cc} (Debian: {' '.join(self.toolchain.get('apt', []))})")
        cmd = self.run.get("command", [])
        if cmd and self._emulator() is None and shutil.which(cmd[0]) is None:
            missing.append(f"{cmd[0]} (Debian: {' '.join(self.run.get('apt', []))})")
        elif cmd and self._emulator() is None:
            found = tool_version(shutil.which(cmd[0]))
            missing.append(f"{cmd[0]} >= {self.run['min_version']} (found {'.'.join(map(str, found or ())) or 'no version'}"
                           f"; scripts/setup.sh puts one into {Path(sys.executable).parent})")
        return missing

    def catalogue_entry(self) -> dict:
        """Everything the TOML file says, for `moa-edge boards --json`."""
        caches = {"source": self.cache_source, **{c.name: c.as_toml() for c in self.caches}}
        return {"name": self.name, "description": self.description, "arch": self.arch, "isa": self.isa,
                "vlen": self.vlen, "cores": self.cores, "extensions": list(self.extensions),
                "toolchain": self.toolchain, "run": self.run, "caches": caches,
                "memory": self.memory, "energy": self.energy, "power_sensor": self.power_sensor,
                **({"memories": {"placement": self.placement, "stack_bytes": self.stack_bytes,
                                 **{m.name: {"base": m.base, "size": m.size, "kind": m.kind,
                                             "emulated_base": m.emulated_base} for m in self.memories}}}
                   if self.memories else {}),
                "path": shown(self.path)}


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@cache
def tool_version(path: str) -> tuple[int, ...] | None:
    """The version a program prints for -version (QEMU's form: "... version 10.0.13 ..."), or None."""
    try:
        out = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version (\d+(?:\.\d+)*)", out)
    return version_tuple(match.group(1)) if match else None


@cache
def _compiler_finds(cc: str, name: str) -> bool:
    """Whether the compiler finds a file of its own by that name (GCC prints the bare name when not)."""
    try:
        out = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.strip() != name


def symbol_lister(board: Board) -> str | None:
    """The board's nm, for reading the symbols of built objects."""
    for nm in board.toolchain.get("nm", ["nm"]):
        if shutil.which(nm):
            return nm
    return None


def shown(path: Path) -> str:
    """A board file's path as messages show it: relative to the source tree when inside it."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
