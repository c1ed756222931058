"""The board catalogue: boards/*.toml, each checked against one schema when it is loaded.

Adding a board is adding one TOML file. Every key is checked: an unknown key (at any
level), a missing required field, a value of the wrong type or unit (sizes are integers of
bytes, energy constants positive numbers of picojoules) is an error naming the file, the
table and the key.
"""
from __future__ import annotations

from pathlib import Path
import re
import tomllib

from moa_edge import BOARDS_DIR
from moa_edge.errors import MoaEdgeError

from .board import CACHE_LEVELS, MEMORY_ROLES, Board, CacheLevel, Memory, shown

ISAS = ("native", "neon", "rvv", "avx2", "avx512", "helium", "none")
# ISA extensions a board's core has beyond its ISA, which kernels may use when the board's flags
# enable them: each is the compiler's macro that says so (tests/test_boards.py checks the flags
# define it and the board's emulator runs an instruction of it).
EXTENSIONS = {
    "dotprod": ("neon", "__ARM_FEATURE_DOTPROD"),                  # SDOT/UDOT (armv8.2-a+dotprod)
    "fp16": ("neon", "__ARM_FEATURE_FP16_VECTOR_ARITHMETIC"),       # half-precision vector arithmetic
    "i8mm": ("neon", "__ARM_FEATURE_MATMUL_INT8"),                  # SMMLA/USDOT (armv8.6-a)
    "zvfh": ("rvv", "__riscv_zvfh"),                               # RVV half-precision arithmetic
    "avx512vnni": ("avx512", "__AVX512VNNI__"),                     # VPDPBUSD
}
RUN_KINDS = ("native", "qemu", "qemu-system")  # qemu-system: a bare-metal board (needs [memories])
MEMORY_KINDS = ("flash", "sram", "tcm", "psram")
SENSOR_KINDS = ("none", "hwmon", "hwmon-label", "jetson", "rapl", "command")


# --- the schema -------------------------------------------------------------------------------
# A field is (required, check); a check returns None when the value is right, or what it
# should have been.

def _text(v):
    return None if isinstance(v, str) and v.strip() else "a non-empty string"


def _words(v):
    return None if isinstance(v, list) and all(isinstance(w, str) and w for w in v) else "a list of strings"


def _some_words(v):
    return _words(v) if v else "a non-empty list of strings"


def _version(v):
    return None if isinstance(v, str) and re.fullmatch(r"\d+(\.\d+)*", v) else "a version such as \"8.0\""


def _one_of(*choices):
    return lambda v: None if v in choices else "one of " + ", ".join(repr(c) for c in choices)


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _bytes(v):
    return None if _int(v) and v > 0 else "a positive integer number of bytes (no units: 32 KiB is 32768)"


def _bytes_or_zero(v):
    return None if _int(v) and v >= 0 else "an integer number of bytes, 0 or more (no units: 2 MiB is 2097152)"


def _ways(v):
    return None if _int(v) and v > 0 else "a positive integer (ways)"


def _count(v):
    return None if _int(v) and v > 0 else "a positive integer"


def _bits(v):
    return None if _int(v) and v >= 0 else "an integer number of bits, 0 or more (0: no vector unit, or the host's)"


def _address(v):
    return None if _int(v) and 0 <= v < 1 << 32 else "an address from 0 to 0xFFFFFFFF"


def _table(v):
    return None if isinstance(v, dict) else "a table"


def _flag(v):
    return None if isinstance(v, bool) else "true or false"


def _words32(v):
    return (None if isinstance(v, list) and v and all(_int(w) and 0 <= w < 1 << 32 for w in v)
            else "a non-empty list of 32-bit words (integers from 0 to 0xFFFFFFFF)")


def _picojoules(v):
    return (None if (_int(v) or isinstance(v, float)) and v > 0 and v != float("inf")
            else "a positive number of picojoules")


CACHE = {"size": (True, _bytes), "line": (True, _bytes), "assoc": (True, _ways)}

SCHEMA = {
    "name": (True, _text),
    "description": (True, _text),
    "arch": (True, _text),
    "isa": (True, _one_of(*ISAS)),
    "vlen": (True, _bits),
    "cores": (False, _count),
    "extensions": (False, _words),
    "toolchain": (True, {"cc": (True, _some_words), "cflags": (True, _words), "ldflags": (True, _words),
                         "nm": (False, _some_words), "apt": (False, _words)}),
    "run": (True, {"kind": (True, _one_of(*RUN_KINDS)), "command": (False, _words), "apt": (False, _words),
                   "min_version": (False, _version), "ssh": (False, _text)}),
    "caches": (True, {"source": (True, _text), "l1d": (True, CACHE), "l2": (False, CACHE), "l3": (False, CACHE)}),
    "memory": (True, {"dram_bytes": (True, _bytes_or_zero), "sram_bytes": (True, _bytes_or_zero),
                      "source": (True, _text)}),
    # A bare-metal board's memories: each a table (MEMORY), and which one holds the code, the
    # weights and the data (MEMORY_ROLES), checked in _check_memories.
    "memories": (False, _table),
    # What a bare-metal board's generated startup.c does before picolibc's crt0 (codegen.startup).
    "startup": (False, {"source": (True, _text), "icache": (False, _flag), "boot_block": (False, _words32)}),
    "energy": (True, {"pj_per_flop": (True, _picojoules), "pj_per_byte_l1": (True, _picojoules),
                      "pj_per_byte_l2": (True, _picojoules), "pj_per_byte_dram": (True, _picojoules),
                      "source": (True, _text)}),
    "power_sensor": (True, {"kind": (True, _one_of(*SENSOR_KINDS)), "spec": (False, _text)}),
}


MEMORY = {"base": (True, _address), "size": (True, _bytes), "kind": (True, _one_of(*MEMORY_KINDS)),
          "emulated_base": (False, _address)}
MEMORIES_FIELDS = {"source": (True, _text), "stack_bytes": (True, _bytes),
                   **{role: (True, _text) for role in MEMORY_ROLES}}


def _check_memories(memories: dict, errors: list[str]) -> None:
    """[memories]: its fields, then every other key a memory; the roles name memories of the
    table, the code and the weights not in the data's memory, no two memories overlap (on the
    part or under the emulator), each within 32-bit addresses."""
    fields = {k: v for k, v in memories.items() if k in MEMORIES_FIELDS}
    _check_table(fields, MEMORIES_FIELDS, "memories", errors)
    found = {k: v for k, v in memories.items() if k not in MEMORIES_FIELDS}
    for name, memory in found.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):  # it names a linker script region and a C macro
            errors.append(f"[memories] {name!r}: a memory's name is lower-case letters, digits and _")
        elif not isinstance(memory, dict):
            errors.append(f"[memories] {name!r} must be a table (base, size, kind), got {memory!r}")
        else:
            _check_table(memory, MEMORY, f"memories.{name}", errors)
    if errors:
        return
    for role in MEMORY_ROLES:
        if memories[role] not in found:
            errors.append(f"[memories] {role} = {memories[role]!r} is not one of its memories "
                          f"({', '.join(found) or 'none'})")
    if not errors and memories["data"] in (memories["code"], memories["weights"]):
        errors.append(f"[memories] the data's memory {memories['data']!r} cannot also hold the code or the weights")
    for where, key in (("on the part", "base"), ("under the emulator", "emulated_base")):
        spans = sorted((m.get(key, m["base"]), m.get(key, m["base"]) + m["size"], n) for n, m in found.items())
        for (lo, hi, name), (lo2, _, name2) in zip(spans, spans[1:]):
            if lo2 < hi:
                errors.append(f"[memories] {name} and {name2} overlap {where} (at {lo2:#x})")
        for lo, hi, name in spans:
            if hi > 1 << 32:
                errors.append(f"[memories] {name} ends past 0xFFFFFFFF {where}")


def _where(table: str) -> str:
    return f"[{table}] " if table else ""


def _check_table(data: dict, schema: dict, table: str, errors: list[str]) -> None:
    for key in data:
        if key not in schema:
            errors.append(f"{_where(table)}unknown key {key!r} (expected {', '.join(schema)})")
    for key, (required, check) in schema.items():
        name = f"{table}.{key}" if table else key
        if key not in data:
            if required:
                errors.append(f"{_where(table)}missing required {'table' if isinstance(check, dict) else 'field'} "
                              f"{key!r}")
            continue
        value = data[key]
        if isinstance(check, dict):
            if not isinstance(value, dict):
                errors.append(f"{_where(table)}{key!r} must be a table, got {value!r}")
            else:
                _check_table(value, check, name, errors)
            continue
        wanted = check(value)
        if wanted is not None:
            errors.append(f"{_where(table)}{key} must be {wanted}, got {value!r}")


def _check_meaning(d: dict, errors: list[str]) -> None:
    """What the schema cannot say field by field."""
    caches = d.get("caches")
    if isinstance(caches, dict):
        present = [lvl for lvl in CACHE_LEVELS if lvl in caches]
        if present != list(CACHE_LEVELS[:len(present)]):
            gap = next(lvl for lvl in CACHE_LEVELS if lvl not in caches)
            errors.append(f"[caches] {present[-1]} without {gap}: the levels are l1d, l2, l3, in order")
        for lvl in present:
            c = caches[lvl]
            if all(_int(c.get(f)) and c[f] > 0 for f in ("size", "line", "assoc")) and c["size"] % (c["line"] * c["assoc"]):
                errors.append(f"[caches] {lvl}: size {c['size']} is not a whole number of sets of "
                              f"{c['assoc']} ways x {c['line']} B lines")
    sensor = d.get("power_sensor")
    if isinstance(sensor, dict) and sensor.get("kind") in SENSOR_KINDS and isinstance(sensor.get("spec", ""), str):
        kind, spec = sensor["kind"], sensor.get("spec")
        if kind == "none" and spec is not None:
            errors.append("[power_sensor] kind 'none' takes no spec")
        elif kind != "none" and spec is None:
            errors.append(f"[power_sensor] kind {kind!r} needs spec = \"{kind}:...\"")
        elif kind != "none" and not spec.startswith(kind + ":"):
            errors.append(f"[power_sensor] spec {spec!r} does not start with its kind, {kind + ':'!r}")
    for extension in d.get("extensions", []):
        if extension not in EXTENSIONS:
            errors.append(f"extensions: {extension!r} is not one of {', '.join(EXTENSIONS)}")
        elif EXTENSIONS[extension][0] != d.get("isa"):
            errors.append(f"extensions: {extension!r} is an extension of isa {EXTENSIONS[extension][0]!r}, "
                          f"not of {d.get('isa')!r}")
    run = d.get("run")
    if isinstance(run, dict) and run.get("kind") in ("qemu", "qemu-system") and not run.get("command"):
        errors.append(f"[run] kind {run['kind']!r} needs command = [\"qemu-...\", ...]")
    bare_metal = isinstance(run, dict) and run.get("kind") == "qemu-system"
    if bare_metal and "memories" not in d:
        errors.append("[run] kind 'qemu-system' (a bare-metal board) needs a [memories] table")
    elif "memories" in d and not bare_metal:
        errors.append("[memories] is for a bare-metal board (run kind 'qemu-system')")
    elif "memories" in d:
        _check_memories(d["memories"], errors)
    if "startup" in d and not bare_metal:
        errors.append("[startup] is for a bare-metal board (run kind 'qemu-system')")


def validate_board(data: dict, path: Path) -> None:
    """Raise one MoaEdgeError listing everything wrong with a board file's contents."""
    errors: list[str] = []
    _check_table(data, SCHEMA, "", errors)
    if not errors:
        _check_meaning(data, errors)
    if isinstance(data.get("name"), str) and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._+-]*", data["name"]):
        # the name becomes a build folder and part of SCons and qemu command lines
        errors.append(f"name {data['name']!r}: use letters, digits, spaces and . _ + - only")
    if isinstance(data.get("name"), str) and data["name"] != Path(path).stem:
        errors.append(f"name {data['name']!r} differs from the file's name ({Path(path).stem!r})")
    if errors:
        where = shown(path)
        raise MoaEdgeError("\n".join(f"{where}: {e}" for e in errors))


def load_board_file(path: str | Path) -> Board:
    path = Path(path)
    try:
        with path.open("rb") as f:
            d = tomllib.load(f)
    except OSError as e:
        raise MoaEdgeError(f"{shown(path)}: cannot read the board file ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise MoaEdgeError(f"{shown(path)}: not valid TOML ({e})") from None
    except UnicodeDecodeError as e:
        raise MoaEdgeError(f"{shown(path)}: not valid TOML (not UTF-8 text: byte {e.start})") from None
    validate_board(d, path)
    caches = tuple(CacheLevel(level, d["caches"][level]["size"], d["caches"][level]["line"], d["caches"][level]["assoc"])
                   for level in CACHE_LEVELS if level in d["caches"])
    table = d.get("memories", {})
    memories = tuple(Memory(name, m["base"], m["size"], m["kind"], m.get("emulated_base", m["base"]))
                     for name, m in table.items() if name not in MEMORIES_FIELDS)
    return Board(d["name"], d["description"], d["arch"], d["isa"], d["vlen"], d["toolchain"], d["run"],
                 caches, d["caches"]["source"], d["memory"], d["energy"], d["power_sensor"], path, d.get("cores"),
                 tuple(d.get("extensions", ())), memories,
                 {role: table[role] for role in MEMORY_ROLES} if memories else None, table.get("stack_bytes", 0),
                 d.get("startup", {}))


def board_names(boards_dir: str | Path | None = None) -> list[str]:
    return sorted(p.stem for p in Path(boards_dir or BOARDS_DIR).glob("*.toml"))


def load_board(name: str, boards_dir: str | Path | None = None) -> Board:
    """A board by name from the catalogue folder (boards/, or `boards_dir`), or from a
    TOML file given by its path (NAME.toml)."""
    if name.endswith(".toml"):
        return load_board_file(name)
    folder = Path(boards_dir or BOARDS_DIR)
    path = folder / f"{name}.toml"
    if not path.is_file():
        raise MoaEdgeError(f"unknown board {name!r}; known boards: {', '.join(board_names(folder))}")
    return load_board_file(path)


def load_catalogue(boards_dir: str | Path | None = None) -> list[Board]:
    """Every board of the folder, all validated: one error lists every broken file."""
    boards, errors = [], []
    for name in board_names(boards_dir):
        try:
            boards.append(load_board(name, boards_dir))
        except MoaEdgeError as e:
            errors.append(str(e))
    if errors:
        raise MoaEdgeError("\n".join(errors))
    return boards
