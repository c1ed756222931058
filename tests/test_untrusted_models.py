"""Models are untrusted input (issue 18): an impossible model is refused by convert with one error
line naming the node, file or option, a non-zero exit and no traceback, no output folder and
nothing left in $TMPDIR. Where onnx's checker, the reference evaluator or onnxruntime have an
opinion, they refuse the same model: the refusal is the model's fault, not a gap of moa-edge."""
import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import pytest

FLOAT = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _io(name, shape):
    return helper.make_tensor_value_info(name, FLOAT, shape)


def _const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.array(values, dtype), name)


def convert_refused(tmp_path, model, *needles, args=(), model_arg=None):
    """convert `model` (saved as m.onnx unchecked; or None with model_arg naming what to convert):
    it must fail cleanly."""
    path = tmp_path / "m.onnx"
    if model is not None:
        onnx.save(model, path)
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "moa_edge.cli", "convert", model_arg or str(path), "-o", out, *args],
                       capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp)})
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moa-edge: error:"), r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()
    assert not any(tmp_path.glob(".out.*")), list(tmp_path.iterdir())  # no staging folder
    assert list(tmp.iterdir()) == [], list(tmp.iterdir())
    return lines[0]


def _onnxruntime_refuses(model):
    import onnxruntime
    feeds = {i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim], np.float32)
             for i in model.graph.input}
    with pytest.raises(Exception):
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, feeds)


def _reference_refuses(model):
    from onnx.reference import ReferenceEvaluator
    feeds = {i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim], np.float32)
             for i in model.graph.input}
    with pytest.raises(Exception):
        ReferenceEvaluator(model).run(None, feeds)


# --- the file itself ------------------------------------------------------------------

def test_undefined_tensor_type_is_refused(tmp_path):
    """An output of element type 0: onnx's checker passes it, onnxruntime says "Invalid tensor data type 0"."""
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_io("x", [1, 4])], [_io("y", [1, 4])])
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.UNDEFINED
    _onnxruntime_refuses(model)
    convert_refused(tmp_path, model, "m.onnx", "'y'", "element type 0")


def test_undefined_initializer_type_is_refused(tmp_path):
    model = _model([helper.make_node("Add", ["x", "c"], ["y"], name="add")], [_io("x", [1, 4])], [_io("y", [1, 4])],
                   [numpy_helper.from_array(np.ones((1, 4), np.float32), "c")])
    model.graph.initializer[0].data_type = TensorProto.UNDEFINED
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model, full_check=True)
    convert_refused(tmp_path, model, "m.onnx", "not a valid ONNX model", "UNDEFINED")


def test_full_check_shape_inference_is_run(tmp_path):
    """A Relu whose stated output shape contradicts its input: only full_check's inference sees it."""
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_io("x", [1, 4])], [_io("y", [1, 5])])
    onnx.checker.check_model(model)
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.checker.check_model(model, full_check=True)
    convert_refused(tmp_path, model, "m.onnx", "shape inference failed", "relu")


def test_trailing_slash_is_refused(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_io("x", [1, 4])], [_io("y", [1, 4])])
    convert_refused(tmp_path, model, "m.onnx/", "trailing slash", model_arg=str(tmp_path / "m.onnx") + "/")


def test_folder_is_refused(tmp_path):
    (tmp_path / "dir.onnx").mkdir()
    convert_refused(tmp_path, None, "dir.onnx", "is a folder", model_arg=str(tmp_path / "dir.onnx"))


# --- folding --------------------------------------------------------------------------

@pytest.mark.parametrize("indices,axis,runtime_data", [([5], 0, False), ([-9], 0, False), ([[7]], 1, False),
                                                      ([5], 0, True), ([-9], 0, True), ([[7]], 1, True)])
def test_gather_out_of_range_names_the_node(tmp_path, indices, axis, runtime_data):
    """Constant indices out of range, on constant data (folded) or on a graph input (a constant-index copy)."""
    out_rank = 1 + (len(np.shape(indices)) if axis == 1 else len(np.shape(indices)))
    inputs, inits = [_io("x", [4, 4])], [_const("i", indices)]
    if runtime_data:
        nodes = [helper.make_node("Gather", ["x", "i"], ["g"], name="bad_gather", axis=axis),
                 helper.make_node("Relu", ["g"], ["y"], name="relu")]
    else:
        inits.append(numpy_helper.from_array(np.ones((4, 4), np.float32), "c"))
        nodes = [helper.make_node("Gather", ["c", "i"], ["g"], name="bad_gather", axis=axis),
                 helper.make_node("Mul", ["g", "g"], ["y"], name="mul")]
        inputs = [_io("unused", [1])]
    model = _model(nodes, inputs, [_io("y", [f"d{k}" for k in range(out_rank)])], inits)
    _reference_refuses(model)
    _onnxruntime_refuses(model)
    convert_refused(tmp_path, model, "'bad_gather'", "Gather", "out of data bounds")


# --- impossible sizes -----------------------------------------------------------------

@pytest.mark.parametrize("dim,needle", [(-3, "dimensions must be 0 or more"), (2**62, "limit 2**62 bytes"),
                                        (2**63 - 1, "limit 2**62 bytes"), (2**40, "board host states")])
def test_impossible_dimension(tmp_path, dim, needle):
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_io("x", [1, dim])], [_io("y", [1, dim])])
    convert_refused(tmp_path, model, "m.onnx", needle)


def test_dimension_of_2_31_is_beyond_a_4_gib_board(tmp_path):
    """[1, 2**31] float32 in and out is 16 GiB: refused for rpi4 (4 GiB stated)."""
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_io("x", [1, 2**31])], [_io("y", [1, 2**31])])
    convert_refused(tmp_path, model, "m.onnx", "17179869184 bytes", "board rpi4", args=("--board", "rpi4"))


def test_two_dims_of_2_20(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                   [_io("x", [2**20, 2**20])], [_io("y", [2**20, 2**20])])
    convert_refused(tmp_path, model, "m.onnx", "8796093022208 bytes", "board host")


def test_input_shape_too_large_for_the_board(tmp_path):
    model = _model([helper.make_node("Relu", ["X"], ["y"], name="relu")], [_io("X", [1, "n", 8])], [_io("y", [1, "n", 8])])
    convert_refused(tmp_path, model, "m.onnx", "inputs and outputs 70368744177664", "board host",
                    args=("--input-shape", "X=1x1099511627776x8"))


def test_graph_without_outputs(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_io("x", [1, 4])], [])
    convert_refused(tmp_path, model, "m.onnx", "no outputs")


# --- shapes proven consistent -----------------------------------------------------------

@pytest.mark.parametrize("target,mid", [([5, 7], False), ([64, 64], False), ([5, 7], True), ([2**40, 0], False)])
def test_reshape_must_keep_the_element_count(tmp_path, target, mid):
    if mid:
        nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
                 helper.make_node("Reshape", ["r", "s"], ["t"], name="bad_reshape"),
                 helper.make_node("Relu", ["t"], ["y"], name="relu_after")]
    else:
        nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="bad_reshape")]
    model = _model(nodes, [_io("x", [1, 4, 8])], [_io("y", ["a", "b"])], [_const("s", target)])
    _reference_refuses(model)
    _onnxruntime_refuses(model)
    convert_refused(tmp_path, model, "m.onnx", "'bad_reshape'", "element count")


def _attention(q, k, v, **attrs):
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="bad_attention", **attrs)
    return _model([node], [_io("q", q), _io("k", k), _io("v", v)], [_io("y", ["a", "b", "c", "d"][:len(q)])], opset=23)


@pytest.mark.parametrize("q,k,v,attrs,needle", [
    ([1, 2, 8, 32], [1, 2, 8, 16], [1, 2, 8, 32], {}, "K's head size 16 is not Q's 32"),
    ([1, 8, 32], [1, 8, 24], [1, 8, 24], {"q_num_heads": 2, "kv_num_heads": 2}, "K's head size 12 is not Q's 16"),
    ([1, 2, 8, 32], [1, 2, 64, 32], [1, 2, 48, 32], {}, "K has 64 positions, V 48"),
    ([1, 4, 8, 32], [1, 4, 8, 32], [1, 2, 8, 32], {}, "K has 4 heads, V 2"),
])
def test_attention_with_inconsistent_shapes(tmp_path, q, k, v, attrs, needle):
    model = _attention(q, k, v, **attrs)
    _reference_refuses(model)
    _onnxruntime_refuses(model)
    convert_refused(tmp_path, model, "'bad_attention'", needle)


def test_consistent_attention_still_converts(tmp_path):
    """The control: the same builder with agreeing shapes converts, and leaves $TMPDIR empty."""
    onnx.save(_attention([1, 2, 8, 32], [1, 2, 8, 32], [1, 2, 8, 32]), tmp_path / "ok.onnx")
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    r = subprocess.run([sys.executable, "-m", "moa_edge.cli", "convert", tmp_path / "ok.onnx", "-o", tmp_path / "out"],
                       capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.c").is_file()
    assert list(tmp.iterdir()) == []
