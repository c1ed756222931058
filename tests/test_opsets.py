"""Opsets (issue 17, item 1): every opset from 13 to the newest the installed onnx defines, each op
checked at the version the model's opset selects; older models go through onnx's version
converter first. Expected values come from onnxruntime running the model as written."""
import numpy as np
import onnx
from onnx import TensorProto, helper
import onnxruntime as ort
import pytest

from conftest import require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.runner import run
from moa_edge.passes import versions
from moa_edge.pipeline import convert


def _run_here(model: onnx.ModelProto, feeds: dict, tmp_path) -> dict:
    board = require_board("host")
    onnx.save(model, tmp_path / "m.onnx")
    report = convert(tmp_path / "m.onnx", tmp_path / "p")
    return run(build(tmp_path / "p", board), board, report["io"], feeds)[0]


def _reference(model: onnx.ModelProto, feeds: dict) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.mark.board
def test_an_opset_11_softmax_keeps_its_meaning(tmp_path):
    """Before opset 13, Softmax(axis=1) of a [2, 3, 4] tensor normalises each row of 12 (the input
    seen as 2 x 12); the version converter rewrites it so, and the generated C gives onnxruntime's
    result for the opset-11 model."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=1)], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)}
    want = _reference(model, feeds)["y"]
    assert np.allclose(want.reshape(2, 12).sum(axis=1), 1)  # the old meaning, not a softmax over axis 1 alone
    np.testing.assert_allclose(_run_here(model, feeds, tmp_path)["y"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.board
@pytest.mark.parametrize("opset", [13, 18, 21, 25, onnx.defs.onnx_opset_version()])
def test_a_block_converts_at_every_opset(opset, tmp_path):
    """LayerNorm -> MatMul -> Gelu-by-Erf -> ReduceMean over constant axes: each op at the version
    the opset selects (ReduceMean takes its axes as an input from 18)."""
    rng = np.random.default_rng(opset)
    w = onnx.numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    half = onnx.numpy_helper.from_array(np.array(0.5, np.float32), "half")
    root = onnx.numpy_helper.from_array(np.array(2 ** -0.5, np.float32), "root")
    one = onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Mul", ["h", "root"], ["s"]),
             helper.make_node("Erf", ["s"], ["e"]), helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["h", "e1"], ["g"]), helper.make_node("Mul", ["g", "half"], ["z"])]
    inits = [w, half, root, one]
    if opset >= 18:
        inits.append(onnx.numpy_helper.from_array(np.array([-1], np.int64), "axes"))
        nodes.append(helper.make_node("ReduceMean", ["z", "axes"], ["y"], keepdims=1))
    else:
        nodes.append(helper.make_node("ReduceMean", ["z"], ["y"], axes=[-1], keepdims=1))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 1])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset < 25 else 11
    feeds = {"x": rng.standard_normal((4, 8)).astype(np.float32)}
    want = _reference(model, feeds)["y"]
    got = _run_here(model, feeds, tmp_path)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_node_newer_than_its_op_module_states_is_refused(monkeypatch, tmp_path):
    """The version check itself: with Relu stated only to version 13, a model of opset 14 (Relu
    version 14, integer inputs allowed) is refused at convert, naming both versions."""
    from moa_edge.ops import elementwise
    monkeypatch.setitem(elementwise.ONNX_VERSIONS, "Relu", 13)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="act")], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 14)])
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(MoaEdgeError, match=r"node 'act' is Relu version 14 \(opset 14\); moa-edge supports Relu up "
                                           r"to version 13"):
        convert(tmp_path / "m.onnx", tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_every_stated_version_is_the_newest_the_installed_onnx_defines():
    """A tripwire for an onnx upgrade: each op a module implements is stated at its newest version,
    so a newer onnx with a new version of one fails here until that version is checked."""
    newest = onnx.defs.onnx_opset_version()
    stale = {op: (stated, onnx.defs.get_schema(op, newest, "").since_version)
             for op, stated in versions.implemented_versions().items()
             if onnx.defs.get_schema(op, newest, "").since_version != stated}
    assert not stale, f"op: (stated, newest in onnx {onnx.__version__}): {stale}"
