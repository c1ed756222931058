"""The audio front end (moa_edge/ops/spectral.py) on forms the ONNX node cases leave out: a window of
constant size (folded at convert time), a complex DFT along a middle axis with dft_length padding or
truncating, a two-sided STFT with a window. Single-node models go through convert -> C -> host and
are compared with onnxruntime on the original file; the torch reference is checked against it too."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort
import pytest

from conftest import require_board
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import run
from moa_edge.pipeline import convert, load_graph

_rng = np.random.default_rng(17)


def _model(node, inputs: dict, constants: dict, output_shape, opset: int):
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in inputs.items()]
    model = helper.make_model(
        helper.make_graph([node], "g", values, [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
                          initializer=[numpy_helper.from_array(np.asarray(a), n) for n, a in constants.items()]),
        opset_imports=[helper.make_opsetid("", opset)])
    return model


CASES = {
    "hann of constant size 12, symmetric": (
        helper.make_node("HannWindow", ["n"], ["y"], periodic=0), {}, {"n": np.array(12, np.int64)}, [12], 17),
    "complex DFT along axis 1, zero-padded to 9": (
        helper.make_node("DFT", ["x", "len", "axis"], ["y"]), {"x": _rng.standard_normal((2, 6, 3, 2))},
        {"len": np.array(9, np.int64), "axis": np.array(1, np.int64)}, [2, 9, 3, 2], 20),
    "real onesided DFT truncated to 5": (
        helper.make_node("DFT", ["x", "len"], ["y"], axis=2, onesided=1), {"x": _rng.standard_normal((2, 3, 8, 1))},
        {"len": np.array(5, np.int64)}, [2, 3, 3, 2], 17),
    "inverse complex DFT": (
        helper.make_node("DFT", ["x"], ["y"], inverse=1), {"x": _rng.standard_normal((1, 7, 2))}, {}, [1, 7, 2], 20),
    "two-sided windowed STFT": (
        helper.make_node("STFT", ["s", "step", "w"], ["y"], onesided=0), {"s": _rng.standard_normal((2, 40, 1))},
        {"step": np.array(6, np.int64), "w": np.hanning(10).astype(np.float32)}, [2, 6, 10, 2], 17),
}


@pytest.mark.board
@pytest.mark.parametrize("case", list(CASES))
def test_spectral_ops_give_onnxruntimes_outputs(case, tmp_path):
    node, inputs, constants, shape, opset = CASES[case]
    feeds = {n: a.astype(np.float32) for n, a in inputs.items()}
    model = _model(node, feeds, constants, shape, opset)
    onnx.save(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, feeds)[0]
    board = require_board("host")
    report = convert(tmp_path / "m.onnx", tmp_path / "p")
    got = run(build(tmp_path / "p", board), board, report["io"], feeds)[0]["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    reference = run_reference(load_graph(tmp_path / "m.onnx"), feeds)["y"]
    np.testing.assert_allclose(reference, want, rtol=1e-4, atol=1e-5)
