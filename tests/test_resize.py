"""Resize: one model of several Resize nodes over one input goes through convert -> C -> host, and
each output is compared with torch.nn.functional.interpolate in float64 where torch has the same
resampling (ONNX's antialias with exclude_outside is torch's antialias, as PIL's); a Resize whose
scales arrive at run time is refused by name."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import pytest
import torch

from conftest import require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.runner import run
from moa_edge.pipeline import convert

SHAPE = (1, 2, 9, 7)
# output name -> (Resize attributes, sizes of H and W, torch.nn.functional.interpolate arguments)
CASES = {
    "nearest_floor": ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
                      (13, 4), {"mode": "nearest"}),
    "nearest_exact": ({"mode": "nearest", "nearest_mode": "round_prefer_ceil"}, (13, 4), {"mode": "nearest-exact"}),
    "bilinear": ({"mode": "linear"}, (13, 4), {"mode": "bilinear", "align_corners": False}),
    "bilinear_corners": ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, (4, 11),
                         {"mode": "bilinear", "align_corners": True}),
    "bicubic": ({"mode": "cubic"}, (13, 4), {"mode": "bicubic", "align_corners": False}),
    "bilinear_antialias": ({"mode": "linear", "antialias": 1, "exclude_outside": 1}, (4, 3),
                           {"mode": "bilinear", "antialias": True}),
    "bicubic_antialias": ({"mode": "cubic", "antialias": 1, "exclude_outside": 1, "cubic_coeff_a": -0.5}, (5, 13),
                          {"mode": "bicubic", "antialias": True}),
}


def _model() -> onnx.ModelProto:
    nodes, outputs, weights = [], [], []
    for name, (attrs, size, _) in CASES.items():
        weights.append(numpy_helper.from_array(np.array([2, *size], np.int64), f"{name}_sizes"))
        nodes.append(helper.make_node("Resize", ["x", "", "", f"{name}_sizes"], [name], name=name,
                                      axes=[1, 2, 3], **attrs))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [SHAPE[0], SHAPE[1], *size]))
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              outputs, weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_resize_matches_torch_interpolate(tmp_path):
    board = require_board("host")
    onnx.save(_model(), tmp_path / "m.onnx")
    report = convert(tmp_path / "m.onnx", tmp_path / "p")
    x = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)
    outputs, _ = run(build(tmp_path / "p", board), board, report["io"], {"x": x})
    for name, (_, size, arguments) in CASES.items():
        want = torch.nn.functional.interpolate(torch.from_numpy(x.astype(np.float64)), size=size, **arguments)
        np.testing.assert_allclose(outputs[name], want.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)


def test_resize_with_run_time_scales_is_refused(tmp_path):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="linear")
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
                                                 helper.make_tensor_value_info("scales", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), tmp_path / "m.onnx")
    with pytest.raises(MoaEdgeError, match="Resize node 'up': scales 'scales' computed at run time"):
        convert(tmp_path / "m.onnx", tmp_path / "p")
