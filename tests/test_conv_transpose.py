"""ConvTranspose (fp32, 1- to 3-D): a torch.nn.ConvTranspose2d as torch exports it, and one ONNX
model of several ConvTranspose nodes (asymmetric pads, dilations, output_padding, auto_pad with
odd total pads, an output_shape cropping or past the full result, groups, no bias), converted,
built and run on the host against onnxruntime; the torch reference (evaluate) against onnxruntime
too. output_shape together with pads is refused by name."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort
import pytest
import torch

from conftest import require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import check_inputs, run
from moa_edge.pipeline import convert, load_graph


def _onnxruntime(path, feeds) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _on_host(path, project, feeds) -> dict[str, np.ndarray]:
    board = require_board("host")
    report = convert(path, project)
    outputs, _ = run(build(project, board), board, report["io"], check_inputs(report["io"], feeds, str(path)))
    return outputs


def test_torch_conv_transpose2d_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.ConvTranspose2d(4, 6, kernel_size=3, stride=2, padding=1, output_padding=1, groups=2,
                                      bias=True).eval()
    x = torch.randn(2, 4, 5, 7)
    path = tmp_path / "deconv.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"])
    assert [n.op_type for n in onnx.load(path).graph.node] == ["ConvTranspose"]
    feeds = {"x": x.numpy()}
    expected = _onnxruntime(path, feeds)["y"]
    assert expected.shape == (2, 6, 10, 14)
    np.testing.assert_allclose(expected, module(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_on_host(path, tmp_path / "deconv", feeds)["y"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run_reference(load_graph(path), feeds)["y"], expected, rtol=1e-5, atol=1e-5)


# (name, X shape, W shape, bias, attributes): each a node reading its own input.
NODES = [
    ("asymmetric_pads_1d", (1, 3, 9), (3, 2, 4), True, {"strides": [3], "pads": [2, 1]}),
    ("dilations_output_padding_2d", (1, 2, 4, 5), (2, 3, 3, 2), True,
     {"strides": [2, 3], "dilations": [2, 1], "output_padding": [1, 2], "pads": [1, 0, 0, 2]}),
    ("same_lower_2d", (1, 2, 3, 4), (2, 2, 3, 3), True, {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ("same_upper_dilations_1d", (1, 2, 5), (2, 1, 3), False, {"auto_pad": "SAME_UPPER", "strides": [2], "dilations": [2]}),
    ("output_shape_past_full_2d", (1, 2, 3, 3), (2, 1, 3, 3), False, {"strides": [3, 2], "output_shape": [11, 8]}),
    ("output_shape_cropping_1d", (1, 2, 4), (2, 2, 3), True,
     {"strides": [2], "output_padding": [1], "output_shape": [8]}),
    ("grouped_3d", (2, 4, 3, 2, 3), (4, 1, 2, 3, 2), True,
     {"group": 2, "strides": [2, 1, 2], "pads": [1, 0, 0, 0, 1, 1]}),
]


def _nodes_model() -> onnx.ModelProto:
    rng = np.random.default_rng(17)
    nodes, inputs, outputs, inits = [], [], [], []
    for name, x, w, bias, attrs in NODES:
        names = [f"{name}_x", f"{name}_w"] + ([f"{name}_b"] if bias else [])
        inits.append(numpy_helper.from_array(rng.standard_normal(w).astype(np.float32), names[1]))
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(w[1] * attrs.get("group", 1)).astype(np.float32),
                                                 names[2]))
        nodes.append(helper.make_node("ConvTranspose", names, [f"{name}_y"], name=name, **attrs))
        inputs.append(helper.make_tensor_value_info(names[0], TensorProto.FLOAT, x))
        outputs.append(helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]))


def test_onnx_nodes_match_onnxruntime(tmp_path):
    path = tmp_path / "nodes.onnx"
    onnx.save(_nodes_model(), path)
    rng = np.random.default_rng(3)
    feeds = {f"{name}_x": rng.standard_normal(x).astype(np.float32) for name, x, *_ in NODES}
    expected = _onnxruntime(path, feeds)
    got, reference = _on_host(path, tmp_path / "nodes", feeds), run_reference(load_graph(path), feeds)
    for name, *_ in NODES:
        want = expected[f"{name}_y"]
        np.testing.assert_allclose(got[f"{name}_y"], want, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(reference[f"{name}_y"], want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_output_shape_with_pads_is_refused_by_name(tmp_path):
    w = numpy_helper.from_array(np.ones((1, 1, 3), np.float32), "w")
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="crop", output_shape=[4], pads=[1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 1, 4))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 1, 4))], initializer=[w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]), tmp_path / "m.onnx")
    with pytest.raises(MoaEdgeError, match=r"ConvTranspose node 'crop': output_shape \[4\] together with pads \[1, 1\] is not supported") as info:
        convert(tmp_path / "m.onnx", tmp_path / "project")
    assert "\n" not in str(info.value)
