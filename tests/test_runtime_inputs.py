"""Run-time inputs, runners that never return, and the generated runner under ASan/UBSan
(issue 18). Every bad case ends in one clear error (non-zero exit, one `moa-edge: error:` line,
no traceback) and leaves nothing in $TMPDIR; token ids out of range stop the model with its
status code, never a sanitizer report."""
import os
from pathlib import Path
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto as T, helper, numpy_helper
import pytest

from conftest import SANITIZE, board_file, require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.runner import check_inputs, run
from moa_edge.pipeline import convert

VOCAB, WIDTH, OUT = 10, 8, 4
RNG = np.random.default_rng(0)
TABLE = RNG.standard_normal((VOCAB, WIDTH)).astype(np.float32)
W = RNG.standard_normal((WIDTH, OUT)).astype(np.float32)
IDS = np.array([[0, 1, 2], [3, 4, 9]], np.int64)
X = np.zeros((2, 3, OUT), np.float32)
SANITIZER_REPORTS = ("AddressSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


def _token_model(path: Path) -> None:
    """y = embedding(ids) @ W + x: a Gather on an embedding table from int64 token ids, then a
    MatMul and an Add with a float input."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["h"], name="proj"),
             helper.make_node("Add", ["h", "x"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("ids", T.INT64, [2, 3]),
                                                helper.make_tensor_value_info("x", T.FLOAT, [2, 3, OUT])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [2, 3, OUT])],
                              initializer=[numpy_helper.from_array(TABLE, "table"), numpy_helper.from_array(W, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _expected(ids, x):
    """ONNX's Gather: a negative id in [-vocab, 0) counts from the end."""
    return TABLE[np.where(ids < 0, ids + VOCAB, ids)] @ W + x


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.onnx"
    _token_model(path)
    return path


@pytest.fixture(scope="module")
def project(model):
    report = convert(model, model.parent / "p")
    return model.parent / "p", report["io"]


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    """$TMPDIR pointed at an empty folder, for this process and the CLI's."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR anew
    return folder


def moa(*args):
    return subprocess.run([sys.executable, "-m", "moa_edge.cli", *map(str, args)], capture_output=True, text=True,
                          env=os.environ.copy())


def assert_one_clear_error(r, tmpdir, *needles):
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("moa-edge: error:")]
    assert len(errors) == 1, r.stderr
    assert not [line for line in r.stderr.splitlines() if line.strip() and not line.startswith(("moa-edge:", "  .. "))], \
        r.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert not list(tmpdir.iterdir()), list(tmpdir.iterdir())
    return errors[0]


# --- dtypes, names and shapes, through the CLI ---------------------------------------------

BAD_INPUTS = {
    "float token ids": ({"ids": IDS.astype(np.float64) + 0.7, "x": X}, ["'ids'", "float64", "int64"]),
    "uint64 ids past int64": ({"ids": np.array([[0, 1, 2], [3, 4, 2**64 - 1]], np.uint64), "x": X},
                              ["'ids'", "uint64", "int64", "not every value fits"]),
    "complex input": ({"ids": IDS, "x": X.astype(np.complex64)}, ["'x'", "complex64", "float32"]),
    "string ids": ({"ids": IDS.astype(str), "x": X}, ["'ids'", "<U", "int64"]),
    "missing input": ({"ids": IDS}, ["missing ['x']"]),
    "extra input": ({"ids": IDS, "x": X, "mask": X}, ["unknown ['mask']"]),
    "wrong shape": ({"ids": IDS[:1], "x": X}, ["'ids'", "[1, 3]", "[2, 3]"]),
    "id out of range": ({"ids": IDS + 9, "x": X}, ["board host", "MOA_ERR_INDEX_OUT_OF_RANGE"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_are_one_clear_error(case, project, tmp_path, tmpdir_env):
    require_board("host")
    feeds, needles = BAD_INPUTS[case]
    np.savez(tmp_path / "in.npz", **feeds)
    r = moa("run", project[0], "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz")
    assert_one_clear_error(r, tmpdir_env, *needles)
    assert not (tmp_path / "out.npz").exists()


def test_good_inputs_run_and_negative_ids_wrap(project, tmp_path, tmpdir_env):
    require_board("host")
    ids = np.array([[-1, -10, 0], [9, 5, -3]], np.int32)  # int32 for an int64 input: every value fits
    np.savez(tmp_path / "in.npz", ids=ids, x=np.ones((2, 3, OUT)))  # float64 for float32: rounded
    r = moa("run", project[0], "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz")
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_allclose(out["y"], _expected(ids, 1.0), rtol=1e-5, atol=1e-5)
    assert not list(tmpdir_env.iterdir())


# --- casts, through the harness ----------------------------------------------------------

IO = [{"kind": "input", "name": "ids", "dtype": "int64", "shape": [3]},
      {"kind": "input", "name": "n", "dtype": "int32", "shape": [3]},
      {"kind": "input", "name": "mask", "dtype": "bool", "shape": [3]},
      {"kind": "input", "name": "x", "dtype": "float32", "shape": [3]}]
GOOD = {"ids": np.array([0, 1, 2]), "n": np.array([1, 2, 3], np.int32), "mask": np.array([True, False, True]),
        "x": np.array([0.5, np.nan, np.inf], np.float32)}


@pytest.mark.parametrize("name, value", [
    ("ids", np.array([0, 1, 2], np.uint64)), ("ids", np.array([0, 1, 2], np.int8)), ("ids", np.array([True] * 3)),
    ("n", np.array([0, 2**31 - 1, -2**31])), ("mask", np.array([1, 0, 1], np.uint8)),
    ("x", np.array([0.5, np.nan, -np.inf])), ("x", np.array([1, 2, 3], np.int64)),
    ("x", np.array([1, 2, 3], np.float16))])
def test_exact_casts_are_made(name, value):
    fed = check_inputs(IO, {**GOOD, name: value}, "t")
    want = {e["name"]: e["dtype"] for e in IO}[name]
    assert fed[name].dtype == np.dtype(want) and fed[name].flags.c_contiguous
    np.testing.assert_array_equal(fed[name].astype(np.float64), value.astype(np.float64))


@pytest.mark.parametrize("name, value, needle", [
    ("ids", np.array([0.0, 1.0, 2.0]), "has dtype float64, the model expects int64"),
    ("ids", np.array([0, 1, 2**63], np.uint64), "has dtype uint64, the model expects int64 (not every value fits)"),
    ("n", np.array([0, 1, 2**31]), "has dtype int64, the model expects int32 (not every value fits)"),
    ("n", np.array([0, 1, -2**31 - 1]), "not every value fits"),
    ("mask", np.array([0, 1, 2]), "has dtype int64, the model expects bool"),
    ("mask", np.array([0.0, 1.0, 1.0]), "has dtype float64, the model expects bool"),
    ("ids", np.array([0.0, 1.0, 2.0], np.float32), "has dtype float32, the model expects int64"),
    ("x", np.array([1, 2, 3], np.complex64), "has dtype complex64, the model expects float32"),
    ("x", np.array([1, 2, 2**24 + 1]), "has dtype int64, the model expects float32 (not every value fits)"),
    ("x", np.array([1.0, 2.0, 1e300]), "has dtype float64, the model expects float32 (not every value fits)"),
    ("x", np.array(["a", "b", "c"]), "the model expects float32")])
def test_inexact_casts_are_refused(name, value, needle):
    with pytest.raises(MoaEdgeError) as err:
        check_inputs(IO, {**GOOD, name: value}, "feeds.npz")
    assert str(err.value).startswith(f"feeds.npz: input {name!r}") and needle in str(err.value)


# --- a damaged project -----------------------------------------------------------------------

def test_a_damaged_model_c_is_refused(model, tmp_path, tmpdir_env):
    """A change to model.c that still compiles (a constant) used to run with exit 0."""
    require_board("host")
    convert(model, tmp_path / "p")
    np.savez(tmp_path / "in.npz", ids=IDS, x=X)
    assert moa("run", tmp_path / "p", "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "a.npz").returncode == 0
    source = (tmp_path / "p" / "model.c").read_text()
    (tmp_path / "p" / "model.c").write_text(source.replace(f">= {VOCAB})", f">= {VOCAB + 1000})", 1))
    r = moa("run", tmp_path / "p", "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "b.npz")
    assert_one_clear_error(r, tmpdir_env, "model.c", "not as `moa-edge convert` wrote it")
    r = moa("build", tmp_path / "p")
    assert_one_clear_error(r, tmpdir_env, "model.c")


def test_a_damaged_runner_is_linked_anew(project, tmp_path):
    """SCons never checks its outputs: a runner changed since the last build would be run."""
    board = require_board("host")
    folder, io = project
    binary = build(folder, board)
    binary.write_bytes(b"#!/bin/sh\nexit 0\n")
    binary = build(folder, board)
    outputs, _ = run(binary, board, io, {"ids": IDS, "x": X})
    np.testing.assert_allclose(outputs["y"], _expected(IDS, X), rtol=1e-5, atol=1e-5)


# --- runners that never return ---------------------------------------------------------------

def _hanging_board(folder: Path) -> tuple[Path, Path]:
    """A board whose run command (an emulator's place) starts a child that never ends and waits
    for it; the child's pid goes to a file, to check that the whole group is stopped."""
    pid_file = folder / "child.pid"
    script = folder / "hang.sh"
    script.write_text(f"#!/bin/sh\nsleep 1000 &\necho $! > '{pid_file}'\nwait\n")
    script.chmod(0o755)
    toml = board_file(folder, "hangs")
    text = toml.read_text().replace('kind = "native"\ncommand = []', f'kind = "qemu"\ncommand = ["{script}"]', 1)
    assert str(script) in text
    toml.write_text(text)
    return toml, pid_file


def _assert_stopped(pid_file: Path) -> None:
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    # a zombie whose parent is gone is reaped by init soon; one that still runs is a failure
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] if Path(f"/proc/{pid}").exists() else "X"
    assert state in "ZX", f"the runner's child {pid} still runs ({state})"


@pytest.mark.parametrize("verb", ["run", "validate", "energy"])
def test_a_runner_that_never_returns_is_stopped_at_the_time_limit(verb, model, project, tmp_path, tmpdir_env):
    require_board("host")
    toml, pid_file = _hanging_board(tmp_path)
    np.savez(tmp_path / "in.npz", ids=IDS, x=X)
    if verb == "run":
        args = ["run", project[0], "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz"]
    elif verb == "validate":
        args = ["validate", model, "--inputs", tmp_path / "in.npz"]
    else:
        hwmon = tmp_path / "sys" / "class" / "hwmon" / "hwmon3"
        hwmon.mkdir(parents=True)
        (hwmon / "power1_input").write_text("2000000\n")
        args = ["energy", project[0], "--sensor", "hwmon:/sys/class/hwmon/hwmon3", "--sysfs-root", tmp_path,
                "--idle-ms", "50"]
    r = moa(*args, "--board", toml, "--timeout", "2")
    needles = ["board hangs", "within the time limit of 2 s"]
    if verb == "validate":  # the table, then the board's error, on stdout
        assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr
        assert all(n in r.stdout for n in needles) and "FAILED" in r.stdout, r.stdout
        assert not list(tmpdir_env.iterdir())
    else:
        assert_one_clear_error(r, tmpdir_env, *needles)
    _assert_stopped(pid_file)


def test_the_harness_stops_a_runner_at_its_time_limit(project, tmp_path, tmpdir_env):
    require_board("host")
    from moa_edge.target import load_board
    toml, pid_file = _hanging_board(tmp_path)
    board = load_board(str(toml))
    folder, io = project
    with pytest.raises(MoaEdgeError, match=r"^board hangs: model_main did not finish within the time limit of 1 s"):
        run(build(folder, board), board, io, {"ids": IDS, "x": X}, timeout=1)
    _assert_stopped(pid_file)
    assert not list(tmpdir_env.iterdir())


def test_timeout_must_be_a_positive_number(project, tmp_path):
    for value in ("0", "-3", "soon", "inf", "nan"):
        r = moa("run", project[0], "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "o.npz", "--timeout", value)
        assert r.returncode == 2 and "positive number of seconds" in r.stderr and "Traceback" not in r.stderr


# --- the generated runner under ASan/UBSan with adversarial inputs ---------------------------

@pytest.fixture(scope="module")
def sanitized(project):
    board = require_board("host")
    folder, io = project
    binary = build(folder, board, extra_cflags=SANITIZE, extra_ldflags=SANITIZE[:1], variant="host-asan")
    return binary, board, io


INT64 = np.iinfo(np.int64)
OUT_OF_RANGE_IDS = {"vocab": VOCAB, "vocab+1": VOCAB + 1, "below -vocab": -VOCAB - 1, "int64 max": INT64.max,
                    "int64 min": INT64.min, "int64 min+1": INT64.min + 1, "2^32": 2**32, "-2^32": -2**32,
                    "2^31": 2**31}


@pytest.mark.parametrize("case", sorted(OUT_OF_RANGE_IDS))
def test_out_of_range_token_ids_stop_the_model_with_its_status(case, sanitized):
    binary, board, io = sanitized
    ids = IDS.copy()
    ids[1, 2] = OUT_OF_RANGE_IDS[case]
    with pytest.raises(MoaEdgeError) as err:
        run(binary, board, io, {"ids": ids, "x": X})
    message = str(err.value)
    assert "failed with status 5 (MOA_ERR_INDEX_OUT_OF_RANGE" in message, message
    assert not any(r in message for r in SANITIZER_REPORTS), message


@pytest.mark.parametrize("ids", [np.full((2, 3), -VOCAB), np.full((2, 3), VOCAB - 1), -np.arange(1, 7).reshape(2, 3)],
                         ids=["-vocab", "vocab-1", "negatives"])
def test_ids_at_the_edges_give_onnx_results(ids, sanitized):
    binary, board, io = sanitized
    outputs, _ = run(binary, board, io, {"ids": ids.astype(np.int64), "x": X})
    np.testing.assert_allclose(outputs["y"], _expected(ids, X), rtol=1e-5, atol=1e-5)


def test_nan_and_inf_inputs_flow_through(sanitized):
    binary, board, io = sanitized
    x = X.copy()
    x[0, 0] = [np.nan, np.inf, -np.inf, np.finfo(np.float32).max]
    x[1, 2] = [-0.0, np.finfo(np.float32).tiny / 2, 1e38, -1e38]
    outputs, _ = run(binary, board, io, {"ids": IDS, "x": x})
    np.testing.assert_allclose(outputs["y"], _expected(IDS, x), rtol=1e-5, atol=1e-5)
