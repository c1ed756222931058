"""The verbs as a user types them (subprocess, real exit codes)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import board_file, require_board
from models import Case, case_inputs, expected, export
from moa_edge.harness import compare as cmp

CASE = Case("cli", "op23", q_len=6, kv_len=6, head_dim=8, causal=True)


def moa(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "moa_edge.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "attn.onnx"
    export(CASE, path)
    return path


def test_boards_lists_the_catalogue(tmp_path):
    r = moa("boards", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    names = [b["name"] for b in json.loads((tmp_path / "b.json").read_text())["boards"]]
    assert {"host", "rpi4", "k230"} <= set(names)
    for name in ("host", "rpi4", "k230"):
        assert name in r.stdout


def test_convert_build_run(model, tmp_path):
    require_board("rpi4")
    project = tmp_path / "proj"
    r = moa("convert", model, "-o", project)
    assert r.returncode == 0, r.stderr
    header = (project / "model.h").read_text()
    assert "#define MODEL_ARENA_BYTES" in header and "#define MODEL_WEIGHTS_BYTES" in header
    for f in ("model.c", "attention.c", "attention.h", "main.c", "SConstruct", "weights.S", "weights.bin",
              "runtime/include/moa/status.h", "report.json"):
        assert (project / f).is_file(), f
    r = moa("build", project, "--board", "rpi4")
    assert r.returncode == 0, r.stderr
    inputs = case_inputs(CASE)
    np.savez(tmp_path / "in.npz", **inputs)
    r = moa("run", project, "--board", "rpi4", "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz")
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "out.npz") as out:
        assert cmp.compare(out["y"], expected(CASE, inputs))["ok"]


def test_standalone_project_builds_with_plain_scons(model, tmp_path):
    """The generated folder builds on a machine without moa-edge: only scons and a C compiler."""
    moa("convert", model, "-o", tmp_path / "proj")
    r = subprocess.run([sys.executable, "-m", "SCons", "-Q"], cwd=tmp_path / "proj", capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "proj" / "build" / "host" / "model_main").is_file()


def test_validate_json_and_exit_code(model, tmp_path):
    for b in ("host", "rpi4", "k230"):
        require_board(b)
    np.savez(tmp_path / "in.npz", **case_inputs(CASE, seed=7))
    r = moa("validate", model, "--board", "host,rpi4,k230", "--inputs", tmp_path / "in.npz", "--json", tmp_path / "v.json")
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads((tmp_path / "v.json").read_text())
    assert result["ok"] is True
    assert set(result["boards"]) == {"host", "rpi4", "k230"}
    for row in result["boards"].values():
        assert row["ok"] is True and row["max_abs_err"] <= 1e-5
    assert "pass" in r.stdout and "FAIL" not in r.stdout


def test_validate_fails_when_a_board_is_out_of_tolerance(model, tmp_path, monkeypatch, capsys):
    """Exit 1 and ok=false when the error exceeds the tolerance (tolerance forced to zero)."""
    from moa_edge import cli
    from moa_edge.harness import compare
    monkeypatch.setattr(compare, "MAX_ABS_ERR", 0.0)
    code = cli.main(["validate", str(model), "--board", "host", "--json", str(tmp_path / "v.json")])
    assert code == 1
    result = json.loads((tmp_path / "v.json").read_text())
    assert result["ok"] is False and result["boards"]["host"]["ok"] is False
    assert "FAIL" in capsys.readouterr().out


def test_inspect_reports_blocks_schedule_and_derivation(model, tmp_path):
    r = moa("inspect", model, "--board", "k230", "--derivation", "--json", tmp_path / "i.json")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "i.json").read_text())
    assert result["unsupported_ops"] == {} and result["op_types"] == ["MoaAttention"]
    (block,) = result["attention_blocks"]
    assert block["is_causal"] is True and block["shape"]["head_dim"] == CASE.head_dim
    predicted = block["predicted"]
    for key in ("strategy", "block_q", "block_k", "dram_bytes", "l1_fill_bytes", "flops", "scratch_bytes", "energy_uj"):
        assert key in predicted
    for rule in ("psi-inner-product", "psi-transpose", "psi-causal", "psi-load"):
        assert rule in block["derivation"] and rule in r.stdout


def test_bench_traffic_writes_json_and_png(tmp_path):
    import shutil
    if shutil.which("valgrind") is None:
        require_board("host")  # skip (or fail under CI) like a missing toolchain
        pytest.skip("valgrind not installed")
    r = moa("bench", "attention", "--traffic", "--board", "k230", "--seq", "64", "--heads", "1", "--head-dim", "16",
            "--out", tmp_path / "bench")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "bench" / "traffic.json").read_text())
    (point,) = result["points"]
    assert point["fused_dram_bytes"] > 0 and point["naive_dram_bytes"] > 0 and point["compulsory_bytes"] > 0
    assert (tmp_path / "bench" / "traffic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.board
def test_bench_model_writes_its_figures(tmp_path):
    """bench model measures both sides in one run and says what it measured (no timing asserted)."""
    require_board("host")
    model = tmp_path / "attn.onnx"
    export(Case("bench", "sdpa18", q_len=6, kv_len=6, head_dim=8, causal=True), model)
    r = moa("bench", "model", model, "--repeat", "2", "--out", tmp_path, "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["latency_us"]["moa_edge"] > 0 and result["latency_us"]["onnxruntime"] > 0
    memory = result["memory_bytes"]
    assert memory["arena_without_attention_rewrite"] > 0 and memory["onnxruntime_resident_growth"] > 0
    # The unfused baseline materialises the 6 x 6 scores the fused kernel never stores.
    assert memory["arena_without_attention_rewrite"] >= 6 * 6 * 4
    assert (tmp_path / "model-attn.png").is_file() and "onnxruntime" in r.stdout


# --- every verb that takes --board takes a board's TOML file too ----------------------------

@pytest.fixture(scope="module")
def my_board(tmp_path_factory):
    """A renamed copy of the host board, given by its path (a space in the name on purpose)."""
    require_board("host")
    return board_file(tmp_path_factory.mktemp("my_board"))


@pytest.fixture(scope="module")
def my_project(model, my_board, tmp_path_factory):
    project = tmp_path_factory.mktemp("my_project") / "proj"
    r = moa("convert", model, "-o", project, "--board", my_board)
    assert r.returncode == 0, r.stderr
    assert "on my board" in r.stdout
    return project


def test_convert_takes_a_board_file(my_project):
    assert json.loads((my_project / "report.json").read_text())["board"] == "my board"
    assert "for board my board." in (my_project / "model.c").read_text()


def test_build_takes_a_board_file(my_project, my_board, tmp_path):
    r = moa("build", my_project, "--board", my_board, "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["board"] == "my board" and result["binary"] == str(my_project / "build" / "my board" / "model_main")


def test_run_takes_a_board_file(my_project, my_board, tmp_path):
    inputs = case_inputs(CASE)
    np.savez(tmp_path / "in.npz", **inputs)
    r = moa("run", my_project, "--board", my_board, "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz",
            "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["board"] == "my board"
    with np.load(tmp_path / "out.npz") as out:
        assert cmp.compare(out["y"], expected(CASE, inputs))["ok"]


def test_validate_takes_board_files_among_names(model, my_board, tmp_path):
    r = moa("validate", model, "--board", f"host,{my_board}", "--json", tmp_path / "v.json")
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads((tmp_path / "v.json").read_text())
    assert list(result["boards"]) == ["host", "my board"] and result["ok"] is True


def test_inspect_takes_a_board_file(model, my_board, tmp_path):
    r = moa("inspect", model, "--board", my_board, "--json", tmp_path / "i.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "i.json").read_text())["board"] == "my board"
    assert "predictions for board my board" in r.stdout


def test_bench_traffic_takes_a_board_file(my_board, tmp_path):
    import shutil
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind not installed")
    r = moa("bench", "attention", "--traffic", "--board", my_board, "--seq", "64", "--heads", "1", "--head-dim", "16",
            "--no-naive", "--out", tmp_path / "bench")
    assert r.returncode == 0, r.stderr
    (point,) = json.loads((tmp_path / "bench" / "traffic.json").read_text())["points"]
    assert point["board"] == "my board" and point["fused_dram_bytes"] > 0


def test_a_missing_board_file_is_one_clear_error(model, tmp_path):
    r = moa("inspect", model, "--board", tmp_path / "nowhere.toml")
    assert r.returncode == 1
    assert "nowhere.toml: cannot read the board file" in r.stderr


def test_a_signal_inside_a_finalizer_still_ends_the_run_as_interrupted(monkeypatch, capsys):
    """Python runs a signal's handler wherever the main thread is, a __del__ included, and there
    it only prints the exception ("Exception ignored", a traceback) and goes on: main() still
    ends the run as interrupted, in one line."""
    import gc
    import os
    import signal

    from moa_edge import cli

    class SignalledWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGHUP)
            sum(range(10_000))  # the handler runs at one of these steps, inside __del__

    def verb(args):
        SignalledWhileCollected()
        gc.collect()
        return 0

    monkeypatch.setattr(cli, "cmd_boards", verb)
    code = cli.main(["boards"])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGHUP, err
    assert err.strip() == "moa-edge: interrupted (SIGHUP)"
