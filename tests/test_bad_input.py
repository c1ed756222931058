"""Bad input: one clear error naming what is wrong, a non-zero exit, nothing half-written."""
import subprocess
import sys

import onnx
from onnx import TensorProto, helper
import pytest

from models import Case, export


def moa(*args):
    return subprocess.run([sys.executable, "-m", "moa_edge.cli", *map(str, args)], capture_output=True, text=True)


def assert_clean_failure(r, out_dir, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    message = r.stderr.strip()
    assert message.startswith("moa-edge: error:"), message
    for needle in needles:
        assert needle in message, (needle, message)
    assert not out_dir.exists()
    if out_dir.parent.exists():
        assert not any("partial" in p.name for p in out_dir.parent.iterdir())


def test_not_onnx(tmp_path):
    f = tmp_path / "notes.onnx"
    f.write_text("this is a text file, not a model\n")
    r = moa("convert", f, "-o", tmp_path / "out")
    assert_clean_failure(r, tmp_path / "out", "notes.onnx", "not a valid ONNX model")


def test_truncated_file(tmp_path):
    good = tmp_path / "good.onnx"
    export(Case("t", "sdpa18", q_len=4, kv_len=4, head_dim=8), good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    r = moa("convert", bad, "-o", tmp_path / "out")
    assert_clean_failure(r, tmp_path / "out", "truncated.onnx", "not a valid ONNX model")


def test_missing_file(tmp_path):
    r = moa("convert", tmp_path / "nope.onnx", "-o", tmp_path / "out")
    assert_clean_failure(r, tmp_path / "out", "nope.onnx", "no such file")


def test_unsupported_ops_are_all_listed(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu_a"),
             helper.make_node("Sigmoid", ["a"], ["b"], name="sig_b"),
             helper.make_node("Relu", ["b"], ["y"], name="relu_y")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "ops.onnx")
    r = moa("convert", tmp_path / "ops.onnx", "-o", tmp_path / "sub" / "out")
    assert_clean_failure(r, tmp_path / "sub" / "out", "unsupported ops", "Relu (nodes: relu_a, relu_y)",
                         "Sigmoid (nodes: sig_b)")
    assert not (tmp_path / "sub").exists()


def _symbolic_model(path):
    dims = [1, 2, "seq", 8]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("q", "k", "v")]
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")
    model = helper.make_model(helper.make_graph([node], "g", io, [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)]),
                              opset_imports=[helper.make_opsetid("", 23)])
    onnx.save(model, path)


def test_symbolic_dim_needs_input_shape(tmp_path):
    _symbolic_model(tmp_path / "sym.onnx")
    r = moa("convert", tmp_path / "sym.onnx", "-o", tmp_path / "out")
    assert_clean_failure(r, tmp_path / "out", "symbolic", "seq", "--input-shape")


def test_symbolic_dim_pinned_converts(tmp_path):
    _symbolic_model(tmp_path / "sym.onnx")
    r = moa("convert", tmp_path / "sym.onnx", "-o", tmp_path / "out",
            "--input-shape", "q=1x2x5x8", "--input-shape", "k=1x2x5x8", "--input-shape", "v=1x2x5x8")
    assert r.returncode == 0, r.stderr
    assert "#define MODEL_INPUT_Q_SHAPE {1, 2, 5, 8}" in (tmp_path / "out" / "model.h").read_text()


def test_malformed_input_shape(tmp_path):
    _symbolic_model(tmp_path / "sym.onnx")
    r = moa("convert", tmp_path / "sym.onnx", "-o", tmp_path / "out", "--input-shape", "q=1xbanana")
    assert_clean_failure(r, tmp_path / "out", "--input-shape", "q=1xbanana")


@pytest.mark.parametrize("verb", ["convert", "validate"])
def test_unknown_board(tmp_path, verb):
    model = tmp_path / "m.onnx"
    export(Case("t", "op23", q_len=4, kv_len=4, head_dim=8), model)
    args = [verb, model, "--board", "host,nosuchboard" if verb == "validate" else "nosuchboard"]
    if verb == "convert":
        args += ["-o", tmp_path / "out"]
    r = moa(*args)
    assert_clean_failure(r, tmp_path / "out", "unknown board 'nosuchboard'", "rpi4")


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    model = tmp_path / "m.onnx"
    export(Case("t", "op23", q_len=4, kv_len=4, head_dim=8), model)
    precious = tmp_path / "out"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    r = moa("convert", model, "-o", precious)
    assert r.returncode != 0 and "refusing to overwrite" in r.stderr
    assert (precious / "thesis.tex").read_text() == "do not delete"
