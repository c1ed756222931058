"""A user's folders are precious (issue 18): convert replaces only what moa-edge provably wrote,
a path never reaches a shell as code, output paths that cannot be written are one clear error,
and a signal during convert or validate leaves no half-written, staging or temporary folder.
Every case runs through the CLI as a user would; the user's files are compared byte for byte."""
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper
import pytest

from conftest import REPO

MARKER = ".moa-edge-project.json"
HOSTILE = "o`touch PWNED`x $HOME; echo \"q'é"  # backticks, $, ;, both quotes, a space, non-ASCII


@pytest.fixture
def tmpdir_env(tmp_path):
    """The CLI's environment with $TMPDIR in the test's folder: it must be empty after every case."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)}
    yield env
    assert sorted(p.name for p in tmp.iterdir()) == [], "left in $TMPDIR"


def moa(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "moa_edge.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


def attention_model(path: Path) -> Path:
    """One ONNX Attention node, [1, 2, 4, 8]: converts in about a second."""
    dims = [1, 2, 4, 8]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("q", "k", "v")]
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")
    graph = helper.make_graph([node], "g", io, [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), path)
    return path


@pytest.fixture
def model(tmp_path):
    (tmp_path / "models").mkdir()
    return attention_model(tmp_path / "models" / "attn.onnx")


def snapshot(folder: Path) -> dict:
    """Every entry under folder: file bytes, link targets, None for folders."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = ("link", os.readlink(p)) if p.is_symlink() else None if p.is_dir() else p.read_bytes()
    return out


def assert_refused(r, *needles):
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    message = r.stderr.strip()
    assert message.startswith("moa-edge: error:") and "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def no_leftovers(parent: Path):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# --- convert replaces only what it wrote --------------------------------------------------------

def test_dot_in_a_working_folder_holding_another_tools_report_json(model, tmp_path, tmpdir_env):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "report.json").write_text('{"tool": "someone else"}\n')
    (work / "notes.txt").write_bytes(b"mine\x00\xff")
    (work / "data" / "table.csv").write_text("a,b\n1,2\n")
    before = snapshot(work)
    assert_refused(moa(tmpdir_env, "convert", model, "-o", ".", cwd=work), "refusing")
    assert_refused(moa(tmpdir_env, "convert", model, "-o", work), str(work), "not a moa-edge project", MARKER)
    assert snapshot(work) == before
    assert no_leftovers(tmp_path) == []


def test_user_files_saved_into_an_earlier_project_survive(model, tmp_path, tmpdir_env):
    project = tmp_path / "proj"
    r = moa(tmpdir_env, "convert", model, "-o", project)
    assert r.returncode == 0, r.stderr
    (project / "thesis.txt").write_text("three years of work\n")
    (project / "photos").mkdir()
    (project / "photos" / "cat.jpg").write_bytes(bytes(range(256)))
    before = snapshot(project)
    assert_refused(moa(tmpdir_env, "convert", model, "-o", project), str(project), "'thesis.txt'", "refusing")
    (project / "thesis.txt").unlink()
    before.pop("thesis.txt")
    assert_refused(moa(tmpdir_env, "convert", model, "-o", project), str(project), "'photos/'")
    assert snapshot(project) == before
    assert no_leftovers(tmp_path) == []


def test_a_generated_file_the_user_edited_is_theirs(model, tmp_path, tmpdir_env):
    project = tmp_path / "proj"
    assert moa(tmpdir_env, "convert", model, "-o", project).returncode == 0
    with open(project / "model.c", "a") as f:
        f.write("/* my tuning */\n")
    before = snapshot(project)
    assert_refused(moa(tmpdir_env, "convert", model, "-o", project), "'model.c'", "changed since")
    assert snapshot(project) == before


def test_a_symlink_in_a_project_is_not_followed_or_removed(model, tmp_path, tmpdir_env):
    project, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    assert moa(tmpdir_env, "convert", model, "-o", project).returncode == 0
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (project / "build").mkdir()
    (project / "build" / "link").symlink_to(elsewhere)  # inside build/, which moa-edge owns as a whole
    before, kept = snapshot(project), snapshot(elsewhere)
    assert_refused(moa(tmpdir_env, "convert", model, "-o", project), "'build/link'")
    assert snapshot(project) == before and snapshot(elsewhere) == kept
    link = tmp_path / "link-to-proj"
    link.symlink_to(project)
    assert_refused(moa(tmpdir_env, "convert", model, "-o", link), "symbolic link")
    assert link.is_symlink() and snapshot(project) == before


def test_the_folder_holding_the_model_is_never_replaced(model, tmp_path, tmpdir_env):
    project = tmp_path / "proj"
    assert moa(tmpdir_env, "convert", model, "-o", project).returncode == 0
    (project / "build").mkdir()  # a folder moa-edge owns as a whole: the model must still survive
    inside = project / "build" / "attn.onnx"
    inside.write_bytes(model.read_bytes())
    before = snapshot(project)
    assert_refused(moa(tmpdir_env, "convert", inside, "-o", project), "holds the model being converted")
    assert snapshot(project) == before
    before = snapshot(model.parent)
    assert_refused(moa(tmpdir_env, "convert", model, "-o", model.parent), "holds the model being converted")
    assert snapshot(model.parent) == before


def test_the_current_folder_is_never_replaced(model, tmp_path, tmpdir_env):
    project = tmp_path / "proj"
    assert moa(tmpdir_env, "convert", model, "-o", project).returncode == 0
    before = snapshot(project)
    assert_refused(moa(tmpdir_env, "convert", model, "-o", ".", cwd=project), "current folder")
    assert_refused(moa(tmpdir_env, "convert", model, "-o", "..", cwd=project / "runtime"), "current folder")
    assert snapshot(project) == before


def test_what_moa_edge_wrote_later_is_replaced_with_the_project(model, tmp_path, tmpdir_env):
    """build/, run's outputs and JSON, and the report written into the project are moa-edge's:
    converting again replaces the whole folder, leaving nothing aside."""
    project = tmp_path / "proj"
    assert moa(tmpdir_env, "convert", model, "-o", project).returncode == 0
    fresh = snapshot(project)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", **{n: rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for n in "qkv"})
    r = moa(tmpdir_env, "run", project, "--inputs", tmp_path / "in.npz", "--outputs", project / "out.npz",
            "--json", project / "run.json")
    assert r.returncode == 0, r.stderr
    r = moa(tmpdir_env, "report", project)
    assert r.returncode == 0, r.stderr
    assert {"build", ".sconsign.dblite", "out.npz", "run.json", "report.html"} <= {p.name for p in project.iterdir()}
    r = moa(tmpdir_env, "convert", model, "-o", project)
    assert r.returncode == 0, r.stderr
    assert snapshot(project).keys() == fresh.keys()
    assert no_leftovers(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert moa(tmpdir_env, "convert", model, "-o", empty).returncode == 0  # an empty folder is fine
    assert (empty / MARKER).is_file() and (empty / "model.c").is_file()


# --- a path is never code ---------------------------------------------------------------------

def test_a_project_path_with_shell_syntax_builds_and_runs_nothing(model, tmp_path, tmpdir_env):
    project = tmp_path / HOSTILE / HOSTILE
    r = moa(tmpdir_env, "convert", model, "-o", project, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = moa(tmpdir_env, "build", project, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (project / "build" / "host" / "model_main").is_file()
    # The standalone build (plain scons in the folder), and the repository's SConstruct, which
    # refuses such a model= path rather than hand it to a shell.
    r = subprocess.run([sys.executable, "-m", "SCons", "-Q", "VARIANT=plain"], cwd=project, capture_output=True,
                       text=True, env=tmpdir_env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "SCons", "-Q", "board=host", f"model={project}"], cwd=REPO,
                       capture_output=True, text=True, env=tmpdir_env)
    assert r.returncode != 0 and "scons -C PROJECT" in r.stderr, r.stdout + r.stderr
    assert list(tmp_path.rglob("PWNED")) == [] and not (REPO / "PWNED").exists()


# --- output paths -----------------------------------------------------------------------------

def test_output_paths_that_cannot_be_written(model, tmp_path, tmpdir_env):
    out = tmp_path / "out"
    long_name = "n" * 300
    cases = [(["-o", ""], "-o is empty"),
             (["-o", out, "--json", ""], "--json is empty"),
             (["-o", tmp_path / long_name], "300 bytes"),
             (["-o", out, "--json", tmp_path / (long_name + ".json")], "305 bytes"),
             (["-o", out, "--json", tmp_path], "is a folder"),
             (["-o", out, "--json", out], "same path"),
             (["-o", "/proc/moa-edge-project"], "cannot create"),
             (["-o", "/sys/moa-edge-project"], "cannot create")]
    for args, needle in cases:
        r = moa(tmpdir_env, "convert", model, *args, cwd=tmp_path)
        assert_refused(r, needle)
        assert not out.exists() and no_leftovers(tmp_path) == []
    for bad in ("/dev/full", "/proc/moa-edge.json", "/sys/moa-edge.json"):
        r = moa(tmpdir_env, "convert", model, "-o", out, "--json", bad)
        assert_refused(r, "--json", bad)
    assert not Path("/proc/moa-edge.json").exists()


def test_json_into_an_immutable_folder(model, tmp_path, tmpdir_env):
    locked = tmp_path / "locked"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("this file system (or user) cannot make a folder immutable")
    try:
        r = moa(tmpdir_env, "convert", model, "-o", locked / "proj")
        assert_refused(r, "cannot create")
        r = moa(tmpdir_env, "convert", model, "-o", tmp_path / "proj", "--json", locked / "r.json")
        assert_refused(r, "--json", "cannot write")
    finally:
        subprocess.run(["chattr", "-i", str(locked)])


def test_run_outputs_that_cannot_be_written(model, tmp_path, tmpdir_env):
    project = tmp_path / "proj"
    assert moa(tmpdir_env, "convert", model, "-o", project).returncode == 0
    np.savez(tmp_path / "in.npz", **{n: np.ones((1, 2, 4, 8), np.float32) for n in "qkv"})
    (tmp_path / "existing").mkdir()
    run = ["run", project, "--inputs", tmp_path / "in.npz", "--outputs"]
    assert_refused(moa(tmpdir_env, *run, tmp_path / "existing"), "is a folder")
    assert_refused(moa(tmpdir_env, *run, tmp_path / "result"), ".npz")
    assert not (tmp_path / "result.npz").exists()
    assert_refused(moa(tmpdir_env, *run, tmp_path / "o.npz", "--json", tmp_path / "o.npz"), "same path")
    assert_refused(moa(tmpdir_env, *run, "/dev/full"), "--outputs /dev/full", ".npz")
    assert_refused(moa(tmpdir_env, *run, tmp_path / "out.npz", "--json", "/dev/full"), "--json /dev/full", "cannot write")
    assert_refused(moa(tmpdir_env, *run, "/proc/o.npz"), "--outputs /proc/o.npz", "cannot write")


# --- signals ----------------------------------------------------------------------------------

# Runs the CLI with one pipeline function made to stop for a while after it returns, so that the
# signal lands inside the work whatever the machine's load (a tiny model converts faster than a
# busy test machine polls).
_PAUSED_CLI = """
import sys, time, importlib
module, name = sys.argv.pop(1).rsplit(":", 1)
module = importlib.import_module(module)
work = getattr(module, name)
def paused(*args, **kwargs):
    result = work(*args, **kwargs)
    print("test: paused in", name, file=sys.stderr, flush=True)
    time.sleep(120)
    return result
setattr(module, name, paused)
from moa_edge.cli import main
sys.exit(main())
"""


def _interrupt(env, args, ready, sig, cwd, pause_after=None):
    """Start the CLI, wait until ready() (at most 120 s), send sig; returns (exit code, stderr).
    pause_after="module:function" holds the CLI still once that function has returned."""
    err = cwd / "stderr.txt"
    start = [sys.executable, "-c", _PAUSED_CLI, pause_after] if pause_after else [sys.executable, "-m", "moa_edge.cli"]
    with open(err, "w") as f:
        proc = subprocess.Popen([*start, *map(str, args)], stdout=subprocess.DEVNULL, stderr=f, env=env, cwd=cwd)
    if pause_after:
        ready = lambda text, ready=ready: "test: paused in" in text and ready(text)  # noqa: E731
    deadline = time.monotonic() + 120
    while not ready(err.read_text()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be interrupted: " + err.read_text()
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    text = err.read_text()
    err.unlink()
    return code, text


SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_during_convert_leaves_no_folder_behind(model, tmp_path, tmpdir_env, sig):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "new" / "proj"
    code, err = _interrupt(tmpdir_env, ["convert", model, "-o", out],
                           lambda _: (work / "new").is_dir() and no_leftovers(work / "new"), sig, work,
                           pause_after="moa_edge.pipeline:schedule_graph")
    assert code == 128 + sig and f"interrupted ({sig.name})" in err and "Traceback" not in err, err
    assert sorted(p.name for p in work.iterdir()) == []  # not the project, its staging folder, nor new/


def test_a_signal_during_a_reconvert_keeps_the_old_project(model, tmp_path, tmpdir_env):
    project = tmp_path / "proj"
    assert moa(tmpdir_env, "convert", model, "-o", project).returncode == 0
    before = snapshot(project)
    code, err = _interrupt(tmpdir_env, ["convert", model, "-o", project], lambda _: no_leftovers(tmp_path),
                           signal.SIGTERM, tmp_path, pause_after="moa_edge.pipeline:schedule_graph")
    assert code == 128 + signal.SIGTERM, err
    assert snapshot(project) == before and no_leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_during_validate_leaves_no_temporary_folder(model, tmp_path, tmpdir_env, sig):
    work = tmp_path / "work"
    work.mkdir()
    code, err = _interrupt(tmpdir_env, ["validate", model], lambda text: "host: build" in text, sig, work)
    assert code == 128 + sig and f"interrupted ({sig.name})" in err and "Traceback" not in err, err
    assert sorted(p.name for p in work.iterdir()) == []
    # tmpdir_env checks $TMPDIR: no moa-validate- folder, no compiler temporaries
