"""Ops expanded into their ONNX function bodies at import (converters/expand.py), and a
DynamicQuantizeLinear that no integer kernel takes (passes/dynamic_quantize.py), computed on the host
and checked against onnxruntime."""
import numpy as np
import onnx
from onnx import TensorProto, helper
import onnxruntime as ort
import pytest

from conftest import require_board
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import check_inputs, run
from moa_edge.pipeline import convert, load_graph


def _model() -> onnx.ModelProto:
    """x [2, 3, 4, 5] -> MeanVarianceNormalization (a function) -> y; x -> DynamicQuantizeLinear -> q, scale, zero."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 5]),
               helper.make_tensor_value_info("q", TensorProto.UINT8, [2, 3, 4, 5]),
               helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
               helper.make_tensor_value_info("zero", TensorProto.UINT8, [])]
    nodes = [helper.make_node("MeanVarianceNormalization", ["x"], ["y"], name="mvn", axes=[0, 2, 3]),
             helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zero"], name="dql")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], outputs), opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("values", ["normal", "zeros"])
def test_function_ops_and_a_lone_dynamic_quantizer_match_onnxruntime(values, tmp_path):
    board = require_board("host")
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5)) * 2 + 0.5 if values == "normal" else np.zeros((2, 3, 4, 5))
    feeds = {"x": x.astype(np.float32)}
    want = dict(zip(["y", "q", "scale", "zero"],
                    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)))
    assert {n.op for n in load_graph(path).nodes}.isdisjoint({"MeanVarianceNormalization", "DynamicQuantizeLinear"})
    io = convert(path, tmp_path / "p")["io"]
    got, _ = run(build(tmp_path / "p", board), board, io, check_inputs(io, feeds, path.name))
    reference = run_reference(load_graph(path), feeds)
    for out in (got, reference):
        if values == "normal":  # on zeros onnxruntime's kernel divides 0 by 0; the spec's body adds 1e-9 first
            np.testing.assert_allclose(np.asarray(out["y"], np.float64), want["y"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(out["scale"], np.float64), want["scale"], rtol=1e-6)
        assert int(np.asarray(out["zero"])) == int(want["zero"])
        # a value on a rounding tie may land one step apart (x / scale in float32 either way)
        assert np.abs(np.asarray(out["q"], np.int64) - want["q"].astype(np.int64)).max() <= 1
