"""Bad input: one clear error naming what is wrong, a non-zero exit, nothing half-written."""
import os
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
    if out_dir.parent.is_dir():
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
    """Ops without a kernel and without a function body to expand (converters/expand.py)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3, 3])
    grid = helper.make_tensor_value_info("grid", TensorProto.FLOAT, [2, 3, 3, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 3, 3])
    nodes = [helper.make_node("LRN", ["x"], ["a"], name="lrn_a", size=3),
             helper.make_node("GridSample", ["a", "grid"], ["b"], name="grid_b"),
             helper.make_node("LRN", ["b"], ["y"], name="lrn_y", size=3)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, grid], [y]), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "ops.onnx")
    r = moa("convert", tmp_path / "ops.onnx", "-o", tmp_path / "sub" / "out")
    assert_clean_failure(r, tmp_path / "sub" / "out", "unsupported ops", "LRN (nodes: lrn_a, lrn_y)",
                         "GridSample (nodes: grid_b)")
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


def _attention_model(dims=(1, 2, 5, 8), opset=23, **attrs):
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(dims)) for n in ("q", "k", "v")]
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn", **attrs)
    return helper.make_model(helper.make_graph([node], "g", io, [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(dims))]),
                             opset_imports=[helper.make_opsetid("", opset)])


def test_every_unpinned_dimension_is_named(tmp_path):
    io = [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", 2, "seq", 8]),
          helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 2, "kv_seq", 8]),
          helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2, "kv_seq", 8])]
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, "seq", 8])
    model = helper.make_model(helper.make_graph([node], "g", io, [out]), opset_imports=[helper.make_opsetid("", 23)])
    onnx.save(model, tmp_path / "m.onnx")
    r = moa("convert", tmp_path / "m.onnx", "-o", tmp_path / "out")
    assert_clean_failure(r, tmp_path / "out", "batch (axis 0)", "seq (axis 2)", "kv_seq (axis 2)", "--input-shape q=Nx2xNx8")


def test_graph_with_a_cycle(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add_a"), helper.make_node("Relu", ["a"], ["b"], name="relu_b"),
             helper.make_node("Identity", ["a"], ["y"], name="out")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "cycle.onnx")
    r = moa("convert", tmp_path / "cycle.onnx", "-o", tmp_path / "out")
    assert_clean_failure(r, tmp_path / "out", "cycle.onnx", "not a valid ONNX model")


def test_mismatched_shapes(tmp_path):
    io = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 2, 5, 8]),
          helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 2, 5, 6]),
          helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2, 5, 8])]
    node = helper.make_node("MatMul", ["q", "k"], ["y"], name="mm")
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5, 5])
    model = helper.make_model(helper.make_graph([node], "g", io[:2], [out]), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "shapes.onnx")
    r = moa("convert", tmp_path / "shapes.onnx", "-o", tmp_path / "out")
    assert_clean_failure(r, tmp_path / "out", "shapes.onnx", "shape inference failed")


def test_attention_feature_the_kernel_cannot_do_names_the_node(tmp_path):
    """Rotary embedding inside onnxruntime's GroupQueryAttention is not something the kernel does."""
    from onnx import numpy_helper
    import numpy as np
    shapes = {"q": [1, 4, 32], "k": [1, 4, 16], "v": [1, 4, 16]}
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens", "total"], ["y"],
                            domain="com.microsoft", name="gqa", num_heads=4, kv_num_heads=2, do_rotary=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32])],
                              initializer=[numpy_helper.from_array(np.array([3], np.int32), "seqlens"),
                                           numpy_helper.from_array(np.array([4], np.int32), "total")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]),
              tmp_path / "rotary.onnx")
    r = moa("convert", tmp_path / "rotary.onnx", "-o", tmp_path / "out")
    assert_clean_failure(r, tmp_path / "out", "GroupQueryAttention node 'gqa'", "do_rotary=1")


def test_an_opset_newer_than_the_installed_onnx_is_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    newest = onnx.defs.onnx_opset_version()
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
                              opset_imports=[helper.make_opsetid("", newest + 1)])
    onnx.save(model, tmp_path / "new.onnx")
    r = moa("convert", tmp_path / "new.onnx", "-o", tmp_path / "out")
    assert_clean_failure(r, tmp_path / "out", f"opset {newest + 1}")


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    from onnx import numpy_helper
    import numpy as np
    (tmp_path / "models").mkdir()
    (tmp_path / "secret.bin").write_bytes(np.zeros(16, np.float32).tobytes())
    mask = numpy_helper.from_array(np.zeros((5, 5), np.float32), "mask")
    mask.data_location = TensorProto.EXTERNAL
    mask.ClearField("raw_data")
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "100")):
        entry = mask.external_data.add()
        entry.key, entry.value = key, value
    model = _attention_model()
    model.graph.initializer.append(mask)
    model.graph.node[0].input.append("mask")
    onnx.save(model, tmp_path / "models" / "m.onnx")
    r = moa("convert", tmp_path / "models" / "m.onnx", "-o", tmp_path / "out")
    assert_clean_failure(r, tmp_path / "out", "outside the model's folder", "../secret.bin")


def test_external_data_inside_the_folder_loads(tmp_path):
    import numpy as np
    from onnx import numpy_helper
    model = _attention_model()
    model.graph.initializer.append(numpy_helper.from_array(np.tril(np.ones((5, 5), bool)), "mask"))
    model.graph.node[0].input.append("mask")
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.data", size_threshold=0)
    assert (tmp_path / "m.data").is_file()
    r = moa("convert", tmp_path / "m.onnx", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr


def test_output_paths_that_cannot_be_written(tmp_path):
    model = tmp_path / "m.onnx"
    export(Case("t", "op23", q_len=4, kv_len=4, head_dim=8), model)
    r = moa("convert", model, "-o", tmp_path / "out", "--json", tmp_path / "missing" / "r.json")
    assert_clean_failure(r, tmp_path / "out", "--json", "does not exist")
    r = moa("convert", model, "-o", tmp_path / "m.onnx" / "sub")
    assert_clean_failure(r, tmp_path / "m.onnx" / "sub", "is a file, not a folder")
    r = moa("convert", tmp_path, "-o", tmp_path / "out")
    assert_clean_failure(r, tmp_path / "out", "is a folder, not an ONNX file")


@pytest.mark.parametrize("launcher", ["ccache;touch PWNED", "ccache --verbose", "no-such-launcher"])
def test_a_compiler_launcher_that_is_not_one_program_is_refused(tmp_path, launcher):
    model, project = tmp_path / "m.onnx", tmp_path / "proj"
    export(Case("t", "sdpa18", q_len=4, kv_len=4, head_dim=8), model)
    assert moa("convert", model, "-o", project).returncode == 0
    r = subprocess.run([sys.executable, "-m", "moa_edge.cli", "build", str(project)], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "MOA_EDGE_CC_LAUNCHER": launcher})
    assert_clean_failure(r, tmp_path / "never-made", "MOA_EDGE_CC_LAUNCHER", "not a program on PATH")
    assert not (tmp_path / "PWNED").exists() and not (project / "build").exists()
