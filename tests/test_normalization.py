"""LayerNormalization, RMSNormalization, Softmax and ReduceSum/Mean/Max (issue 5).

Single-node ONNX models go through convert -> C -> every board and are compared with
onnxruntime on the original file; the torch reference (each op's evaluate) is checked
against it too. The ONNX backend node tests of these ops run in tests/test_node_cases.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import pytest

from conftest import BOARDS, require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import check_inputs, run
from moa_edge.ops import reduce
from moa_edge.pipeline import convert, load_graph

RTOL = ATOL = 1e-5
_rng = np.random.default_rng(11)


def _floats(*shape) -> np.ndarray:
    return _rng.standard_normal(shape).astype(np.float32)


def _axes(*axes) -> np.ndarray:
    return np.array(axes, np.int64)


# id -> (op, input shape, opset, attributes, the other inputs as constants (None: absent), outputs)
CASES = {
    "layer_norm_axis-1_bias": ("LayerNormalization", (2, 5, 16), 17, {"axis": -1}, [_floats(16), _floats(16)], 1),
    "layer_norm_axis-1_no_bias": ("LayerNormalization", (2, 5, 16), 17, {}, [_floats(16)], 1),
    "layer_norm_axis-2_bias": ("LayerNormalization", (2, 5, 16), 17, {"axis": -2, "epsilon": 1e-3},
                               [_floats(5, 16), _floats(5, 16)], 1),
    "layer_norm_axis-2_no_bias": ("LayerNormalization", (3, 4, 6), 17, {"axis": -2}, [_floats(4, 6)], 1),
    "layer_norm_mean_inv_std_dev": ("LayerNormalization", (3, 4, 6), 17, {"axis": 1},
                                    [_floats(4, 6), _floats(4, 6)], 3),
    "rms_norm_axis-1": ("RMSNormalization", (2, 5, 16), 23, {}, [_floats(16)], 1),
    "rms_norm_axis-2_epsilon": ("RMSNormalization", (2, 5, 16), 23, {"axis": -2, "epsilon": 1e-2}, [_floats(5, 16)], 1),
    **{f"softmax_rank{len(shape)}_axis{axis}": ("Softmax", shape, 13, {"axis": axis}, [], 1)
       for shape in ((3, 4, 5), (2, 3, 4, 5)) for axis in (-1, 1, 0)},
    "reduce_mean_18_last_keepdims": ("ReduceMean", (2, 3, 4, 5), 18, {}, [_axes(-1)], 1),
    "reduce_mean_18_middle": ("ReduceMean", (2, 3, 4, 5), 18, {"keepdims": 0}, [_axes(1, 2)], 1),
    "reduce_sum_18_two_runs_keepdims": ("ReduceSum", (2, 3, 4, 5), 18, {"keepdims": 1}, [_axes(0, 2)], 1),
    "reduce_max_18_two_runs_negative": ("ReduceMax", (2, 3, 4, 5), 18, {"keepdims": 0}, [_axes(-4, -1)], 1),
    "reduce_max_18_all": ("ReduceMax", (3, 4, 5), 18, {"keepdims": 0}, [], 1),
    "reduce_sum_18_unit_dims": ("ReduceSum", (2, 1, 3, 1, 4), 18, {"keepdims": 0}, [_axes(1, 2, 3)], 1),
    "reduce_sum_18_noop_empty_axes": ("ReduceSum", (3, 4), 18, {"noop_with_empty_axes": 1}, [], 1),
    "reduce_sum_13_axes_input": ("ReduceSum", (2, 3, 4), 13, {"keepdims": 0}, [_axes(1)], 1),
    "reduce_mean_13_attribute_axes": ("ReduceMean", (2, 3, 4, 5), 13, {"axes": [0, -1], "keepdims": 1}, [], 1),
    "reduce_max_13_attribute_axes": ("ReduceMax", (2, 3, 4), 13, {"axes": [-2], "keepdims": 0}, [], 1),
    "reduce_mean_13_all": ("ReduceMean", (2, 3, 4), 13, {"keepdims": 0}, [], 1),
}


def single_node_model(op, shape, opset, attrs, constants, outputs) -> onnx.ModelProto:
    names = ["x"] + [f"c{k}" if c is not None else "" for k, c in enumerate(constants)]
    out_names = ["y", "mean", "inv_std_dev"][:outputs]
    node = helper.make_node(op, names, out_names, name=f"{op.lower()}_node", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in out_names],
                              initializer=[numpy_helper.from_array(c, n) for n, c in zip(names[1:], constants)
                                           if c is not None])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10  # onnxruntime 1.2x reads up to IR 10/11
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)  # fills in the output shapes


def onnxruntime_outputs(path: Path, feeds: dict) -> dict[str, np.ndarray]:
    """onnxruntime on the original file; the ONNX reference evaluator where it has no kernel."""
    model = onnx.load(str(path))
    try:
        import onnxruntime
        outputs = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception:  # e.g. RMSNormalization (opset 23) in an older onnxruntime
        from onnx.reference import ReferenceEvaluator
        outputs = ReferenceEvaluator(model).run(None, feeds)
    return {o.name: np.asarray(v) for o, v in zip(model.graph.output, outputs)}


def case_input(name: str) -> dict[str, np.ndarray]:
    shape = CASES[name][1]
    x = np.random.default_rng(len(name)).standard_normal(shape).astype(np.float32)
    return {"x": x * 3 if CASES[name][0] == "Softmax" else x}  # softmax: a spread that is not near-uniform


_projects: dict[str, tuple[Path, Path, dict]] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("normalization")


def project_for(name: str, workdir: Path):
    if name not in _projects:
        path = workdir / f"{name}.onnx"
        onnx.save(single_node_model(*CASES[name]), path)
        _projects[name] = (path, workdir / name, convert(path, workdir / name))
    return _projects[name]


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_single_node_matches_onnxruntime(name, board_name, workdir):
    board = require_board(board_name)
    path, project, report = project_for(name, workdir)
    feeds = case_input(name)
    outputs, _ = run(build(project, board), board, report["io"], check_inputs(report["io"], feeds, name))
    expected = onnxruntime_outputs(path, feeds)
    assert set(outputs) == set(expected)
    for out, want in expected.items():
        np.testing.assert_allclose(outputs[out], want, rtol=RTOL, atol=ATOL, err_msg=f"{name} {out} on {board_name}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_reference_matches_onnxruntime(name, workdir):
    path, _, _ = project_for(name, workdir)
    feeds = case_input(name)
    got = run_reference(load_graph(path), feeds)
    for out, want in onnxruntime_outputs(path, feeds).items():
        np.testing.assert_allclose(got[out], want, rtol=RTOL, atol=ATOL, err_msg=f"{name} {out}")


def test_reductions_merge_axes_into_few_passes():
    assert reduce.passes((2, 3, 4, 5), [2, 3]) == [(6, 20, 1)]  # adjacent axes: one pass
    assert reduce.passes((2, 3, 4, 5), [0, 2]) == [(6, 4, 5), (1, 2, 15)]  # innermost run first
    assert reduce.passes((2, 1, 3, 1, 4), [1, 2, 3]) == [(2, 3, 4)]  # unit axes join any run
    assert reduce.passes((3, 4), []) == [(12, 1, 1)]  # nothing reduced: a copy
    assert reduce.passes((2, 0, 4), [1]) == [(8, 0, 1)]  # empty input: every output is the empty reduction


def test_softmax_of_an_all_minus_inf_row_is_nan_like_onnxruntime(tmp_path):
    board = require_board("host")
    onnx.save(single_node_model("Softmax", (3, 4), 13, {"axis": -1}, [], 1), tmp_path / "m.onnx")
    report = convert(tmp_path / "m.onnx", tmp_path / "p")
    x = _floats(3, 4)
    x[1, :] = -np.inf
    x[2, 1] = -np.inf
    outputs, _ = run(build(tmp_path / "p", board), board, report["io"], {"x": x})
    expected = onnxruntime_outputs(tmp_path / "m.onnx", {"x": x})["y"]
    assert np.all(np.isnan(expected[1])) and not np.any(np.isnan(expected[[0, 2]]))
    np.testing.assert_allclose(outputs["y"], expected, rtol=RTOL, atol=ATOL)  # NaN where NaN (equal_nan)


def test_layer_norm_variance_is_stable_far_from_zero(tmp_path):
    """Rows of mean 1000 and spread 1: E[x^2] - E[x]^2 in float32 would lose the variance."""
    board = require_board("host")
    onnx.save(single_node_model("LayerNormalization", (4, 256), 17, {}, [np.ones(256, np.float32)], 1),
              tmp_path / "m.onnx")
    report = convert(tmp_path / "m.onnx", tmp_path / "p")
    x = (1000 + _rng.standard_normal((4, 256))).astype(np.float32)
    outputs, _ = run(build(tmp_path / "p", board), board, report["io"], {"x": x})
    x64 = x.astype(np.float64)
    exact = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(outputs["y"], exact, atol=2e-3)


def test_broadcast_scale_is_refused_naming_the_node(tmp_path):
    onnx.save(single_node_model("LayerNormalization", (2, 8), 17, {}, [np.ones(1, np.float32)], 1),
              tmp_path / "m.onnx")
    with pytest.raises(MoaEdgeError, match="layernormalization_node.*broadcast"):
        convert(tmp_path / "m.onnx", tmp_path / "p")


# The ONNX backend node tests of these ops run in tests/test_node_cases.py with every other case.
