"""Properties of the built C: no allocation, no writable globals, strict warnings, clean under ASan/UBSan."""
import subprocess
import sys

import pytest

from conftest import BOARDS, MCU_BOARDS, SANITIZE, require_board
from models import Case, case_inputs, expected, export
from moa_edge.harness import compare as cmp
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build, build_for_march
from moa_edge.harness.runner import check_inputs, run
from moa_edge.pipeline import convert
from moa_edge.target import load_board, symbol_lister

# A model with a constant mask, so weights.S holds data too.
CASE = Case("symbols", "sdpa18", q_len=4, kv_len=6, head_dim=8, mask="const_float")
MODEL_OBJECTS = ["model.o", "attention.o", "weights.o"]  # everything but the runner's main.o
ALLOCATORS = {"malloc", "calloc", "realloc", "free", "aligned_alloc", "posix_memalign"}
WRITABLE = set("DdBbGgSsC")  # nm types of .data, .bss, small data/bss and common symbols


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("symbols")
    export(CASE, tmp / "m.onnx")
    convert(tmp / "m.onnx", tmp / "p")
    return tmp / "p"


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS + MCU_BOARDS)
def test_model_objects_never_allocate_and_have_no_writable_data(project, board_name, tmp_path):
    board = require_board(board_name)
    if board.bare_metal:  # built with the board's linker script, which its own conversion writes
        convert(project.parent / "m.onnx", tmp_path / "p", board=board)
        project = tmp_path / "p"
    build(project, board)
    nm = symbol_lister(board)
    assert nm, f"no nm for {board_name}"
    seen = 0
    objects = project / "build" / board_name / "obj"
    runtime = [p.relative_to(objects) for p in objects.rglob("*.o") if p.name not in MODEL_OBJECTS + ["main.o"]]
    assert runtime  # the attention micro-kernels
    for obj in MODEL_OBJECTS + runtime:
        path = objects / obj
        lines = subprocess.run([nm, str(path)], capture_output=True, text=True, check=True).stdout.splitlines()
        symbols = [(ln.split()[-2], ln.split()[-1]) for ln in lines if len(ln.split()) >= 2]
        seen += len(symbols)
        undefined = {name for kind, name in symbols if kind == "U"}
        assert not undefined & ALLOCATORS, (obj, undefined & ALLOCATORS)
        writable = [(kind, name) for kind, name in symbols if kind in WRITABLE]
        assert not writable, (obj, writable)
    assert seen > 0


def test_nm_check_catches_a_writable_global(tmp_path):
    """The symbol check above can fail: a C file with a global counter and malloc is caught."""
    src = tmp_path / "bad.c"
    src.write_text("#include <stdlib.h>\nint counter;\nint calls = 1;\n"
                   "void *f(void) { counter++; return malloc(calls); }\n")
    subprocess.run(["cc", "-c", "-O2", str(src), "-o", str(tmp_path / "bad.o")], check=True)
    out = subprocess.run(["nm", str(tmp_path / "bad.o")], capture_output=True, text=True, check=True).stdout
    kinds = {ln.split()[-1]: ln.split()[-2] for ln in out.splitlines()}
    assert kinds["malloc"] == "U" and kinds["counter"] in WRITABLE and kinds["calls"] in WRITABLE


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
def test_every_compile_uses_strict_warnings(project, board_name):
    board = require_board(board_name)
    cmd = [sys.executable, "-m", "SCons", "-n", "-C", str(project), f"CC={board.compiler()}",
           f"CFLAGS={' '.join(board.toolchain['cflags'])}", f"VARIANT=dryrun-{board_name}"]
    lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    compiles = [ln for ln in lines if " -c " in ln]
    runtime = [ln for ln in compiles if "runtime/src/" in ln]  # the attention micro-kernels (one file per ISA)
    assert len(compiles) - len(runtime) == len(MODEL_OBJECTS) + 1
    for line in compiles:
        for flag in ("-Wall", "-Wextra", "-Werror"):
            assert flag in line.split(), line


def test_host_build_is_clean_under_asan_and_ubsan(project):
    board = require_board("host")
    io = __import__("json").loads((project / "report.json").read_text())["io"]
    binary = build(project, load_board("host"), extra_cflags=SANITIZE, extra_ldflags=SANITIZE[:1], variant="host-asan")
    inputs = case_inputs(CASE)
    outputs, _ = run(binary, board, io, check_inputs(io, inputs, "asan"))
    assert cmp.compare(outputs["y"], expected(CASE, inputs))["ok"]


@pytest.mark.board
def test_the_runner_reports_its_peak_resident_memory(tmp_path):
    """An embedding table of 8 MB of which a run reads 4 rows: the runner's peak resident
    memory (VmHWM, reported as max_rss_kb) stays far below the table, because weights are
    file-backed pages of the program and untouched rows are never read in."""
    import numpy as np
    import onnx
    from onnx import TensorProto as T, helper, numpy_helper
    rows, width = 32768, 64
    table = np.random.default_rng(0).standard_normal((rows, width)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "embed",
                              [helper.make_tensor_value_info("ids", T.INT64, [4])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [4, width])],
                              initializer=[numpy_helper.from_array(table, "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "e.onnx")
    report = convert(tmp_path / "e.onnx", tmp_path / "p")
    board = load_board("host")
    ids = np.array([3, 70000 % rows, 12345, rows - 1], np.int64)
    stats = {}
    outputs, _ = run(build(tmp_path / "p", board), board, report["io"], {"ids": ids}, stats=stats)
    np.testing.assert_array_equal(outputs["y"], table[ids])
    assert 0 < stats["max_rss_bytes"] < table.nbytes / 2


@pytest.mark.parametrize("march", ["native -O0", "../x86-64-v3", "-mno-avx", ""])
def test_a_march_that_is_not_one_is_refused_before_any_build(march, tmp_path):
    """A --host-march value becomes a compiler flag and part of a build folder's name: a space, a
    slash or a leading dash in it is refused, and nothing is built."""
    with pytest.raises(MoaEdgeError, match="not a -march value"):
        build_for_march(tmp_path, load_board("host"), march)
    assert not any(tmp_path.iterdir())
