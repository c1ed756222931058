"""The board catalogue (issue 7): every shipped board validates, and a broken board file is
one clear error naming the file, the table and the key."""
import ast
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

from conftest import require_board
from moa_edge import BOARDS_DIR
from moa_edge.errors import MoaEdgeError
from moa_edge.target import board_names, load_board, load_catalogue
from moa_edge.target.catalogue import EXTENSIONS

SHIPPED = ["alif-e7", "bpi-f3", "host", "jetson-orin-nano", "k230", "nucleo-h743zi", "pico2", "rpi4", "rpi5",
           "visionfive2"]


def test_every_shipped_board_validates():
    boards = load_catalogue()
    assert [b.name for b in boards] == SHIPPED == board_names()
    for b in boards:
        assert b.energy["source"] and b.cache_source and b.memory["source"]
        assert b.l1d().size % (b.l1d().line * b.l1d().associativity) == 0


def test_the_new_boards_carry_their_published_figures():
    rpi5, orin = load_board("rpi5"), load_board("jetson-orin-nano")
    assert (rpi5.isa, rpi5.vlen, rpi5.cores) == ("neon", 128, 4)
    assert [(c.name, c.size) for c in rpi5.caches] == [("l1d", 64 << 10), ("l2", 512 << 10), ("l3", 2 << 20)]
    assert "-mcpu=cortex-a76" in rpi5.toolchain["cflags"] and rpi5.runner()[-1] == "cortex-a76"
    assert (orin.isa, orin.cores) == ("neon", 6)
    assert [(c.name, c.size) for c in orin.caches] == [("l1d", 64 << 10), ("l2", 256 << 10), ("l3", 2 << 20)]
    assert orin.power_sensor == {"kind": "jetson", "spec": "jetson:VDD_IN"}


def test_the_mcu_boards_carry_their_parts_memories():
    """Each MCU board: its core under qemu-system-arm, its memories as the part's documents map
    them, and the emulator's stand-ins at least as large (QEMU's machines, docs/system/arm/mps2.rst)."""
    alif, pico, nucleo = load_board("alif-e7"), load_board("pico2"), load_board("nucleo-h743zi")
    assert (alif.isa, alif.vlen, alif.runner()[1:]) == ("helium", 128, ["-machine", "mps3-an547", "-cpu", "cortex-m55"])
    assert pico.runner()[1:] == ["-machine", "mps2-an505", "-cpu", "cortex-m33"]
    assert nucleo.runner()[1:] == ["-machine", "mps2-an500", "-cpu", "cortex-m7"]
    sizes = {b.name: {m.name: (m.base, m.size) for m in b.memories} for b in (alif, pico, nucleo)}
    assert sizes["alif-e7"]["mram"] == (0x80000000, 5632 << 10) and sizes["alif-e7"]["sram0"] == (0x02000000, 4 << 20)
    assert sizes["pico2"]["sram"] == (0x20000000, 512 << 10) and sizes["pico2"]["flash"] == (0x10000000, 4 << 20)
    assert sizes["nucleo-h743zi"]["axi_sram"] == (0x24000000, 512 << 10)
    assert sizes["nucleo-h743zi"]["flash"] == (0x08000000, 2 << 20)
    qemu_ram = {"mps3-an547": [(0x0, 512 << 10), (0x20000000, 512 << 10), (0x01000000, 2 << 20),
                               (0x21000000, 4 << 20), (0x28000000, 8 << 20), (0x60000000, 1 << 30)],
                "mps2-an505": [(0x0, 4 << 20), (0x10000000, 4 << 20), (0x28000000, 2 << 20), (0x28200000, 2 << 20)],
                "mps2-an500": [(0x0, 4 << 20), (0x20000000, 4 << 20), (0x60000000, 16 << 20)]}
    for board in (alif, pico, nucleo):
        regions = qemu_ram[board.runner()[2]]
        for m in board.memories:
            assert any(lo <= m.emulated_base and m.emulated_base + m.size <= lo + size for lo, size in regions), m
        assert board.memory_for("code").emulated_base in (0x0, 0x10000000)  # where the core finds its vector table


def _broken(tmp_path: Path, old: str, new: str, name: str = "rpi5") -> Path:
    """A copy of a shipped board with one edit, alone in a folder."""
    text = (BOARDS_DIR / f"{name}.toml").read_text()
    assert old in text, old
    (tmp_path / f"{name}.toml").write_text(text.replace(old, new, 1))
    return tmp_path


@pytest.mark.parametrize("old, new, message", [
    # unknown keys, at every level
    ("l3 = {", "l4 = { size = 1, line = 1, assoc = 1 }\nl3 = {", r"\[caches\] unknown key 'l4'"),
    ("vlen = 128", "vlen = 128\nvlan = 128", r"rpi5.toml: unknown key 'vlan'"),
    ("l1d = { size = 65536,", "l1d = { sets = 256, size = 65536,", r"\[caches.l1d\] unknown key 'sets'"),
    ('kind = "none"', 'kind = "none"\nchip = "DA9091"', r"\[power_sensor\] unknown key 'chip'"),
    # missing fields and tables
    ('isa = "neon"\n', "", r"missing required field 'isa'"),
    ("pj_per_flop = 2.3\n", "", r"\[energy\] missing required field 'pj_per_flop'"),
    ("line = 64, assoc = 8 }", "line = 64 }", r"\[caches.l2\] missing required field 'assoc'"),
    ("[memory]", "[memroy]", r"missing required table 'memory'.*|unknown key 'memroy'"),
    # wrong types and units
    ("size = 65536,", 'size = "64K",', r"\[caches.l1d\] size must be a positive integer number of bytes.*'64K'"),
    ("size = 524288,", "size = -524288,", r"\[caches.l2\] size must be a positive integer number of bytes"),
    ("size = 65536,", "size = 65536.0,", r"size must be a positive integer number of bytes.*65536.0"),
    ("dram_bytes = 4294967296", 'dram_bytes = "4 GiB"', r"\[memory\] dram_bytes must be an integer number of bytes, 0 or more"),
    ("pj_per_byte_dram = 250.0", "pj_per_byte_dram = -250.0", r"\[energy\] pj_per_byte_dram must be a positive number of picojoules"),
    ("pj_per_flop = 2.3", 'pj_per_flop = "2.3 pJ"', r"\[energy\] pj_per_flop must be a positive number"),
    ("vlen = 128", 'vlen = "128b"', r"vlen must be an integer number of bits"),
    ('isa = "neon"', 'isa = "sve"', r"isa must be one of 'native', 'neon'"),
    ('cflags = ["-O2", "-mcpu=cortex-a76"]', 'cflags = "-O2 -mcpu=cortex-a76"', r"\[toolchain\] cflags must be a list of strings"),
    ('kind = "qemu"', 'kind = "docker"', r"\[run\] kind must be one of 'native', 'qemu'"),
    ('kind = "qemu"', 'kind = "qemu"\nmin_version = "eight"', r"\[run\] min_version must be a version such as \"8.0\""),
    ('kind = "none"', 'kind = "ina219"', r"\[power_sensor\] kind must be one of"),
    ('[power_sensor]\nkind = "none"', "", r"missing required table 'power_sensor'"),
    # what the fields mean together
    ("assoc = 4 }", "assoc = 3 }", r"\[caches\] l1d: size 65536 is not a whole number of sets"),
    ("l2 = { size = 524288, line = 64, assoc = 8 }\n", "", r"\[caches\] l3 without l2"),
    ('kind = "none"', 'kind = "jetson"', r"\[power_sensor\] kind 'jetson' needs spec"),
    ('kind = "none"', 'kind = "hwmon"\nspec = "rapl:/sys/class/powercap/intel-rapl:0"', r"does not start with its kind"),
    ('name = "rpi5"', 'name = "rpi6"', r"name 'rpi6' differs from the file's name \('rpi5'\)"),
    ("[energy]", "[energy", r"not valid TOML"),
    ('extensions = ["dotprod", "fp16"]', 'extensions = ["sve2"]', r"extensions: 'sve2' is not one of dotprod, fp16"),
    ('extensions = ["dotprod", "fp16"]', 'extensions = ["zvfh"]', r"'zvfh' is an extension of isa 'rvv', not of 'neon'"),
])
def test_a_broken_board_is_one_clear_error(tmp_path, old, new, message):
    _one_clear_error(tmp_path, "rpi5", old, new, message)


def _one_clear_error(tmp_path: Path, name: str, old: str, new: str, message: str) -> None:
    folder = _broken(tmp_path, old, new, name)
    with pytest.raises(MoaEdgeError, match=message) as e:
        load_board(name, folder)
    assert str(e.value).startswith(str(folder / f"{name}.toml") + ": ")


@pytest.mark.parametrize("old, new, message", [
    ('data = "sram"', 'data = "sdram"', r"\[memories\] data = 'sdram' is not one of its memories \(flash, sram"),
    ('data = "sram"', 'data = "flash"', r"the data's memory 'flash' cannot also hold the code or the weights"),
    ("emulated_base = 0x28000000 }", "emulated_base = 0x28000000, speed = 1 }", r"\[memories.sram\] unknown key 'speed'"),
    ('kind = "sram", emulated_base = 0x28000000', 'kind = "dram", emulated_base = 0x28000000',
     r"\[memories.sram\] kind must be one of 'flash', 'sram', 'tcm', 'psram'"),
    ("base = 0x20080000,", "base = 0x2007F000,", r"\[memories\] sram and scratch_x overlap on the part \(at 0x2007f000\)"),
    ("emulated_base = 0x28200000", "emulated_base = 0x28000100", r"sram and scratch_x overlap under the emulator"),
    ("stack_bytes = 16384\n", "", r"\[memories\] missing required field 'stack_bytes'"),
    ("size = 524288,", 'size = "512K",', r"\[memories.sram\] size must be a positive integer number of bytes"),
    ('kind = "qemu-system"', 'kind = "qemu"', r"\[memories\] is for a bare-metal board \(run kind 'qemu-system'\)"),
    ("0xab123579]", "0x1ab123579]", r"\[startup\] boot_block must be a non-empty list of 32-bit words"),
    ("boot_block =", 'icache = "yes"\nboot_block =', r"\[startup\] icache must be true or false, got 'yes'"),
])
def test_a_broken_mcu_board_is_one_clear_error(tmp_path, old, new, message):
    _one_clear_error(tmp_path, "pico2", old, new, message)


def test_a_bare_metal_board_needs_its_memories(tmp_path):
    text = (BOARDS_DIR / "pico2.toml").read_text()
    (tmp_path / "pico2.toml").write_text(text[:text.index("[memories]")] + text[text.index("# No data cache"):])
    with pytest.raises(MoaEdgeError, match=r"\[run\] kind 'qemu-system' \(a bare-metal board\) needs a \[memories\] table"):
        load_board("pico2", tmp_path)


def test_a_value_where_a_table_belongs(tmp_path):
    text = (BOARDS_DIR / "rpi5.toml").read_text().replace('[power_sensor]\nkind = "none"', "")
    (tmp_path / "rpi5.toml").write_text('power_sensor = "none"\n' + text)
    with pytest.raises(MoaEdgeError, match=r"rpi5.toml: 'power_sensor' must be a table, got 'none'"):
        load_board("rpi5", tmp_path)


def test_every_error_of_a_file_is_listed(tmp_path):
    folder = _broken(tmp_path, "vlen = 128", 'vlen = "wide"\nflavour = "pi"')
    with pytest.raises(MoaEdgeError) as e:
        load_catalogue(folder)
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and any("unknown key 'flavour'" in x for x in lines)
    assert any("vlen must be" in x for x in lines)


def test_adding_a_board_is_adding_one_file(tmp_path):
    """A copy of rpi4 under a new name is a board: by name from its folder, or by its path."""
    text = (BOARDS_DIR / "rpi4.toml").read_text().replace('name = "rpi4"', 'name = "my-pi"')
    (tmp_path / "my-pi.toml").write_text(text)
    assert board_names(tmp_path) == ["my-pi"]
    assert load_board("my-pi", tmp_path).caches == load_board("rpi4").caches
    assert load_board(str(tmp_path / "my-pi.toml")).name == "my-pi"
    with pytest.raises(MoaEdgeError, match="unknown board 'rpi9'; known boards: my-pi"):
        load_board("rpi9", tmp_path)


def _moa(*args):
    return subprocess.run([sys.executable, "-m", "moa_edge.cli", *map(str, args)], capture_output=True, text=True)


def test_boards_verb_prints_the_whole_catalogue(tmp_path):
    r = _moa("boards", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    rows = {b["name"]: b for b in json.loads((tmp_path / "b.json").read_text())["boards"]}
    assert sorted(rows) == SHIPPED
    orin = rows["jetson-orin-nano"]
    for key in ("isa", "vlen", "cores", "toolchain", "run", "caches", "memory", "energy", "power_sensor", "ready"):
        assert key in orin, key
    assert orin["caches"]["l2"] == {"size": 262144, "line": 64, "assoc": 8}
    assert orin["energy"]["pj_per_byte_dram"] == 250.0 and "Horowitz" in orin["energy"]["source"]
    assert orin["power_sensor"]["spec"] == "jetson:VDD_IN" and "jetson:VDD_IN" in r.stdout


def test_boards_verb_reports_a_broken_folder(tmp_path):
    shutil.copy(BOARDS_DIR / "host.toml", tmp_path)
    _broken(tmp_path, "size = 65536,", 'size = "32K",')
    r = _moa("boards", "--dir", tmp_path)
    assert r.returncode != 0
    assert "rpi5.toml: [caches.l1d] size must be a positive integer number of bytes" in r.stderr


def test_the_target_imports_nothing_above_it():
    """moa_edge/target sits above errors and ir only, below moa/, ops, codegen, energy and the
    harness, which all take a Board."""
    below = ("moa_edge", "moa_edge.errors", "moa_edge.ir")
    for path in (Path(__file__).parent.parent / "moa_edge" / "target").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.startswith("moa_edge"):
                assert node.module in below or node.module.startswith("moa_edge.ir."), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("moa_edge") for a in node.names), path.name


# One instruction of each extension, checked by its result: the board's flags must define the
# compiler's macro for it and its emulator must run it (issue 14: "qemu runs each").
EXTENSION_PROBES = {
    "dotprod": ("#include <arm_neon.h>",
                "ok &= vgetq_lane_s32(vdotq_s32(vdupq_n_s32(1), vdupq_n_s8(2), vdupq_n_s8(-3)), 0) == 1 - 24;"),
    "fp16": ("#include <arm_neon.h>",
             "ok &= (float)vgetq_lane_f16(vfmaq_f16(vdupq_n_f16(0.5), vdupq_n_f16(1.5), vdupq_n_f16(2.0)), 0) == 3.5f;"),
    "zvfh": ("#include <riscv_vector.h>",
             "ok &= (float)__riscv_vfmv_f_s_f16m1_f16(__riscv_vfmacc_vf_f16m1(__riscv_vfmv_v_f_f16m1(0.5, 4), 1.5, "
             "__riscv_vfmv_v_f_f16m1(2.0, 4), 4)) == 3.5f;"),
}


@pytest.mark.board
@pytest.mark.parametrize("name, extension", [(b, e) for b in SHIPPED for e in load_board(b).extensions], ids=str)
def test_a_boards_extensions_are_enabled_by_its_flags_and_run_by_its_emulator(tmp_path, name, extension):
    board = require_board(name)
    header, statement = EXTENSION_PROBES[extension]
    macro = EXTENSIONS[extension][1]
    (tmp_path / "probe.c").write_text(f"{header}\n#ifndef {macro}\n#error {macro} is not defined by the flags of the board\n"
                                      f"#endif\nint main(void)\n{{\n    int ok = 1;\n    {statement}\n    return !ok;\n}}\n")
    subprocess.run([board.compiler(), *board.toolchain["cflags"], "-Wall", "-Werror", str(tmp_path / "probe.c"),
                    *board.toolchain["ldflags"], "-o", str(tmp_path / "probe")], check=True)
    assert subprocess.run([*board.runner(), str(tmp_path / "probe")]).returncode == 0


def test_an_emulator_older_than_the_board_needs_is_missing(tmp_path, monkeypatch):
    """run.min_version: the emulator on PATH is used when new enough, else the Python environment's
    (where scripts/setup.sh puts one); with neither, the board is not ready and says what it needs."""
    from moa_edge.target.catalogue import load_board_file
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    emulator = fake_bin / "qemu-fake"
    emulator.write_text("#!/bin/sh\necho 'qemu-fake version 7.2.22 (Debian)'\n")
    emulator.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    (tmp_path / "boards").mkdir()
    folder = _broken(tmp_path / "boards", 'command = ["qemu-aarch64", "-cpu", "cortex-a76"]',
                     'command = ["qemu-fake", "-cpu", "cortex-a76"]\nmin_version = "7.2"')
    assert load_board_file(folder / "rpi5.toml").runner()[0] == "qemu-fake"
    (folder / "rpi5.toml").write_text((folder / "rpi5.toml").read_text().replace('min_version = "7.2"',
                                                                                  'min_version = "8.0"'))
    board = load_board_file(folder / "rpi5.toml")
    assert any(m.startswith("qemu-fake >= 8.0 (found 7.2.22;") for m in board.missing_tools()), board.missing_tools()


def test_the_system_emulator_comes_before_the_environments(tmp_path, monkeypatch):
    """A board that names no min_version runs the system's emulator even when an activated Python
    environment puts its own (scripts/setup.sh's static qemu, which loads no TCG plugins) first on
    PATH; with only the environment's, that one."""
    from moa_edge.target.catalogue import load_board_file
    environment, system = tmp_path / "env" / "bin", tmp_path / "usr" / "bin"
    for folder in (environment, system):
        folder.mkdir(parents=True)
        (folder / "qemu-fake").write_text("#!/bin/sh\necho 'qemu-fake version 10.0.1'\n")
        (folder / "qemu-fake").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(environment / "python"))
    monkeypatch.setenv("PATH", f"{environment}:{system}:{os.environ['PATH']}")
    (tmp_path / "boards").mkdir()
    folder = _broken(tmp_path / "boards", 'command = ["qemu-aarch64", "-cpu", "cortex-a76"]',
                     'command = ["qemu-fake", "-cpu", "cortex-a76"]')
    assert load_board_file(folder / "rpi5.toml").runner()[0] == str(system / "qemu-fake")
    (system / "qemu-fake").unlink()
    assert load_board_file(folder / "rpi5.toml").runner()[0] == "qemu-fake"  # the environment's, by name


def test_every_extension_has_a_probe():
    assert set(EXTENSIONS) >= set(EXTENSION_PROBES) >= {e for b in SHIPPED for e in load_board(b).extensions}
