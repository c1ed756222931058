import os
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile

import pytest

# Keep onnxruntime's and Hugging Face's caches out of $HOME; nothing is fetched from the hub.
os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="moa-test-cache-"))
os.environ.setdefault("HF_HOME", os.path.join(os.environ["XDG_CACHE_HOME"], "huggingface"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from moa_edge.target import load_board  # noqa: E402

BOARDS = ["host", "rpi4", "k230"]
MCU_BOARDS = ["alif-e7", "pico2", "nucleo-h743zi"]  # bare metal under qemu-system-arm (M55, M33, M7)
REPO = Path(__file__).resolve().parent.parent
# Every sanitizer build of the suite: ASan and UBSan, stopping at the first report. -O1, last
# so that it wins over a board's -O2, is ASan's advice; at -O2 the unrolled AVX-512 GEMM tiles
# take 20 s to compile under both sanitizers. One list, so the compiler cache shares the objects
# of the runtime's sources between the test files.
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g", "-fno-omit-frame-pointer", "-O1")


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


# A kernel test program on a bare-metal board keeps its operands on the heap: the emulated
# machine's large RAM stands in for the board's data memory (QEMU docs/system/arm/mps2.rst),
# clear of every memory the boards map there.
HARNESS_RAM = {"mps3-an547": 0x61000000, "mps2-an505": 0x80000000, "mps2-an500": 0x60100000}


def bare_metal_harness_script(board, folder: Path) -> Path:
    """A linker script for a kernel test program on `board`: its code memory as the board's, its
    data (heap and stack) 15 MiB of the emulator's RAM."""
    from dataclasses import replace
    from moa_edge.codegen.linker import linker_script
    from moa_edge.target.board import Memory
    base = HARNESS_RAM[board.runner()[2]]
    ram = Memory("harness_ram", base, 15 << 20, "sram", base)
    script = folder / "memory.ld"
    script.write_text(linker_script(replace(board, memories=(*board.memories, ram),
                                            placement={**board.placement, "data": ram.name}), emulated=True))
    return script


def run_bare_metal(board, program: Path, args: list, stdin: bytes) -> subprocess.CompletedProcess:
    """A kernel test program on `board` as qemu-system's kernel: semihosting has files, not pipes,
    so stdin's bytes go through a file named after `args` and stdout's come back from another
    (the program takes the two paths last); qemu's own output is the result's stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "in").write_bytes(stdin)
        proc = subprocess.run(board.command(str(program), [*map(str, args), f"{tmp}/in", f"{tmp}/out"]),
                              capture_output=True, timeout=600)
        written = (Path(tmp) / "out").read_bytes() if (Path(tmp) / "out").exists() else b""
        return subprocess.CompletedProcess(proc.args, proc.returncode, written, proc.stdout + proc.stderr)


def board_file(folder: Path, name: str = "my board", like: str = "host") -> Path:
    """A copy of boards/LIKE.toml renamed NAME, outside the catalogue: a board given to --board
    by the path of its TOML file."""
    text = (REPO / "boards" / f"{like}.toml").read_text()
    assert f'name = "{like}"' in text
    path = folder / f"{name}.toml"
    path.write_text(text.replace(f'name = "{like}"', f'name = "{name}"', 1))
    return path


def run_cli(*args, cwd=None):
    """`moa-edge ARGS` in a child process (arguments as strings); its CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "moa_edge.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def one_error(proc, *fragments):
    """The command failed with exactly one line, moa-edge's error, holding every fragment."""
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moa-edge: error:"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# `make test` runs under pytest-xdist with --dist worksteal: each worker gets a contiguous share
# of the tests and an idle worker steals from the END of another's share. These files start first,
# at the head of worker 0's share: the longest one is then not left running alone at the end, and
# test_report's module fixture (the slowest set-up, ~45 s on a busy machine) is not made twice
# because a steal split its file between the workers.
START_FIRST = ("test_minilm.py", "test_smollm2.py", "test_report.py")


def _start_rank(item) -> int:
    name = item.path.name
    return START_FIRST.index(name) if name in START_FIRST else len(START_FIRST)


def pytest_configure(config):
    """The suite's builds share one compiler cache (ccache, installed by `make setup`): most of a
    test's build is the runtime's sources, the same in every project. The controller makes it
    before pytest-xdist starts the workers, which inherit it, and removes it at the end."""
    if os.environ.get("MOA_EDGE_CC_LAUNCHER") is not None or hasattr(config, "workerinput"):
        return
    ccache = shutil.which("ccache")
    if ccache is None:
        if os.environ.get("CI") == "true":
            raise pytest.UsageError("ccache is missing (CI=true): run `make setup` as root")
        return
    config._moa_ccache_dir = tempfile.mkdtemp(prefix="moa-test-ccache-")
    # CCACHE_NOHASHDIR: a build with -g (the sanitizer variants) is otherwise keyed by its project's
    # folder too, so every ASan build of the same runtime compiled it again (~25 s a project).
    os.environ.update(MOA_EDGE_CC_LAUNCHER=ccache, CCACHE_DIR=config._moa_ccache_dir, CCACHE_MAXSIZE="2G",
                      CCACHE_NOHASHDIR="1")


def pytest_unconfigure(config):
    folder = getattr(config, "_moa_ccache_dir", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(items):
    items.sort(key=_start_rank)  # stable: the rest stays as collected


def pytest_sessionfinish(session):
    """Under pytest-xdist a worker hands its fuzzing counts and its node cases' outcomes to the
    controller, which prints them; the controller fails the run if every node case ran and fewer
    passed than node_suite.PASS_FLOOR of those not out of scope by design."""
    import node_suite
    if hasattr(session.config, "workeroutput"):
        from fuzz_oracle import COUNTS
        session.config.workeroutput["fuzz_counts"] = {f: dict(c) for f, c in COUNTS.items()}
        session.config.workeroutput["node_outcomes"] = node_suite.OUTCOMES
        return
    shortfall = node_suite.shortfall()
    if shortfall:
        session.config._moa_node_shortfall = shortfall
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    from fuzz_oracle import COUNTS
    import node_suite
    for family, counts in getattr(node, "workeroutput", {}).get("fuzz_counts", {}).items():
        COUNTS[family].update(counts)
    node_suite.OUTCOMES.update(getattr(node, "workeroutput", {}).get("node_outcomes", {}))


def pytest_terminal_summary(terminalreporter):
    """The fuzzing campaign's counts per family (tests/test_fuzz.py) and the ONNX node cases'
    outcomes (tests/test_node_cases.py), when they ran."""
    from fuzz_oracle import summary_lines
    import node_suite
    for title, lines in (("fuzzing campaign (issue 18): outcomes per family", summary_lines()),
                         ("ONNX node test cases (issue 17): convert -> C -> host", node_suite.summary_lines())):
        if lines:
            terminalreporter.section(title)
            for line in lines:
                terminalreporter.write_line(line)
    shortfall = getattr(terminalreporter.config, "_moa_node_shortfall", None)
    if shortfall:
        terminalreporter.write_line(f"FAILED: {shortfall}", red=True)
