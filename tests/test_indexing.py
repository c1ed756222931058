"""GatherElements, GatherND, Trilu, CumSum, Range (moa_edge/ops/indexing.py) and
RotaryEmbedding (moa_edge/ops/rotary.py) with run-time indices (issue 5).

Hand-built single-node ONNX models go through convert -> C -> every board and are compared
with onnxruntime on the original file (the ONNX reference evaluator where onnxruntime has no
kernel); the torch reference (each op's evaluate) is checked against it too. Negative
indices wrap; an index outside its axis makes the run fail with MOA_ERR_INDEX_OUT_OF_RANGE
(status 5) instead of reading past the buffer."""
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
from moa_edge.pipeline import convert, load_graph

RTOL = ATOL = 1e-5
_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
         np.dtype(np.int32): TensorProto.INT32, np.dtype(np.bool_): TensorProto.BOOL}
_rng = np.random.default_rng(5)


def _floats(*shape) -> np.ndarray:
    return _rng.standard_normal(shape).astype(np.float32)


def _ints(*values, dtype=np.int64) -> np.ndarray:
    return np.array(values, dtype=dtype)


def _rotary_caches(positions: int, half: int) -> tuple[np.ndarray, np.ndarray]:
    angles = np.arange(positions)[:, None] / (10000.0 ** (np.arange(half)[None, :] / half))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


_COS, _SIN = _rotary_caches(16, 4)
_COS2, _SIN2 = _rotary_caches(16, 2)

# id -> (op, opset, attributes, run-time inputs (name -> array), constant inputs (name -> array;
#        None: absent), input order, static output shape or None to infer)
CASES = {
    "gather_elements_axis1_negative": (
        "GatherElements", 13, {"axis": 1}, {"data": _floats(3, 4), "idx": _ints([0, -1], [3, -4], [-2, 1])}, {},
        ["data", "idx"], None),
    "gather_elements_axis-2_int32_indices": (
        "GatherElements", 13, {"axis": -2},
        {"data": _floats(4, 3, 2), "idx": _ints([[2, 0], [-1, 2]], [[0, 0], [1, -3]], dtype=np.int32)}, {},
        ["data", "idx"], None),
    "gather_elements_bool": (
        "GatherElements", 13, {"axis": 0}, {"data": _floats(4, 3) > 0, "idx": _ints([3, 2, -1], [0, -4, 1])}, {},
        ["data", "idx"], None),
    "gathernd_two_indices_negative": (
        "GatherND", 13, {}, {"data": _floats(3, 4, 5), "idx": _ints([0, -1], [-3, 2], [2, 0])}, {},
        ["data", "idx"], None),
    "gathernd_full_index": (
        "GatherND", 13, {}, {"data": _floats(2, 3, 4), "idx": _ints([1, 2, 3], [0, -3, -1], [-1, 0, 0])}, {},
        ["data", "idx"], None),
    "gathernd_batch_dims1_int64": (
        "GatherND", 13, {"batch_dims": 1},
        {"data": _ints(*np.arange(24).reshape(2, 3, 4)), "idx": _ints([[2], [-3]], [[0], [1]])}, {},
        ["data", "idx"], None),
    "trilu_upper_constant_k": ("Trilu", 14, {}, {"x": _floats(2, 4, 5)}, {"k": _ints(1)}, ["x", "k"], None),
    "trilu_upper_no_k": ("Trilu", 14, {"upper": 1}, {"x": _floats(5, 3)}, {}, ["x"], None),
    "trilu_lower_runtime_k_int64": (
        "Trilu", 14, {"upper": 0}, {"x": _ints(*np.arange(12).reshape(3, 4)), "k": _ints(-1)}, {}, ["x", "k"], None),
    "trilu_lower_huge_constant_k": ("Trilu", 14, {"upper": 0}, {"x": _floats(3, 4)}, {"k": _ints(1 << 40)},
                                    ["x", "k"], None),
    "cumsum_axis1_exclusive_reverse": (
        "CumSum", 14, {"exclusive": 1, "reverse": 1}, {"x": _floats(2, 3, 4)}, {"axis": _ints(1)}, ["x", "axis"], None),
    "cumsum_axis0_float": ("CumSum", 14, {}, {"x": _floats(4, 3)}, {"axis": _ints(0)}, ["x", "axis"], None),
    "cumsum_runtime_axis_int64": (
        "CumSum", 14, {}, {"x": _ints(*np.arange(15).reshape(3, 5) - 7), "axis": _ints(-1, dtype=np.int32)}, {},
        ["x", "axis"], None),
    "cumsum_runtime_axis_exclusive": (
        "CumSum", 14, {"exclusive": 1}, {"x": _floats(3, 2, 4), "axis": _ints(-2)}, {}, ["x", "axis"], None),
    "range_float_runtime": (
        "Range", 21, {}, {"start": np.array(1.5, np.float32), "limit": np.array(4.0, np.float32),
                          "delta": np.array(0.5, np.float32)}, {}, ["start", "limit", "delta"], (5,)),
    "range_int64_negative_delta": (
        "Range", 21, {}, {"start": _ints(10), "limit": _ints(-2)}, {"delta": _ints(-3)}, ["start", "limit", "delta"],
        (4,)),
    "rotary_4d_position_ids": (
        "RotaryEmbedding", 23, {}, {"x": _floats(2, 3, 5, 8), "pos": _ints([0, 3, 5, 7, 15], [1, 1, 2, 3, 4])},
        {"cos": _COS, "sin": _SIN}, ["x", "cos", "sin", "pos"], None),
    "rotary_3d_interleaved_partial": (
        "RotaryEmbedding", 23, {"num_heads": 2, "interleaved": 1, "rotary_embedding_dim": 4},
        {"x": _floats(2, 5, 16), "pos": _ints([4, 3, 2, 1, 0], [9, 8, 7, 6, 5])},
        {"cos": _COS2, "sin": _SIN2}, ["x", "cos", "sin", "pos"], None),
    "rotary_no_position_ids_runtime_caches": (
        "RotaryEmbedding", 23, {"rotary_embedding_dim": 4},
        {"x": _floats(2, 2, 3, 6), "cos": _COS2[:6].reshape(2, 3, 2), "sin": _SIN2[:6].reshape(2, 3, 2)}, {},
        ["x", "cos", "sin"], None),
}


def single_node_model(op, opset, attrs, runtime, constants, order, out_shape) -> onnx.ModelProto:
    names = [n if (n in runtime or constants.get(n) is not None) else "" for n in order]
    while names and not names[-1]:
        names.pop()
    node = helper.make_node(op, names, ["y"], name=f"{op.lower()}_node", **attrs)
    out_type = (_ONNX[np.dtype(np.float32)] if op == "RotaryEmbedding" else None)
    if out_shape is not None:
        out_type = _ONNX[next(iter(runtime.values())).dtype]
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, _ONNX[v.dtype], v.shape) for n, v in runtime.items()],
        [helper.make_tensor_value_info("y", out_type or TensorProto.UNDEFINED, out_shape)],
        initializer=[numpy_helper.from_array(v, n) for n, v in constants.items() if v is not None])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10  # onnxruntime 1.2x reads up to IR 10/11
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)  # fills in the output shape


def expected_outputs(path: Path, feeds: dict) -> dict[str, np.ndarray]:
    """onnxruntime on the original file; the ONNX reference evaluator where it has no kernel."""
    model = onnx.load(str(path))
    try:
        import onnxruntime
        outputs = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception:  # e.g. a type onnxruntime registers no kernel for
        from onnx.reference import ReferenceEvaluator
        outputs = ReferenceEvaluator(model).run(None, feeds)
    return {o.name: np.asarray(v) for o, v in zip(model.graph.output, outputs)}


_projects: dict[str, tuple[Path, Path, dict]] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("indexing")


def project_for(name: str, workdir: Path):
    if name not in _projects:
        path = workdir / f"{name}.onnx"
        onnx.save(single_node_model(*CASES[name]), path)
        _projects[name] = (path, workdir / name, convert(path, workdir / name))
    return _projects[name]


def _assert_matches(got: np.ndarray, want: np.ndarray, message: str) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, (message, got.dtype, want.dtype)
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=message)
    else:
        np.testing.assert_array_equal(got, want, err_msg=message)


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_single_node_matches_onnxruntime(name, board_name, workdir):
    board = require_board(board_name)
    path, project, report = project_for(name, workdir)
    feeds = CASES[name][3]
    outputs, _ = run(build(project, board), board, report["io"], check_inputs(report["io"], feeds, name))
    for out, want in expected_outputs(path, feeds).items():
        _assert_matches(outputs[out], want, f"{name} {out} on {board_name}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_reference_matches_onnxruntime(name, workdir):
    path, _, _ = project_for(name, workdir)
    feeds = CASES[name][3]
    got = run_reference(load_graph(path), feeds)
    for out, want in expected_outputs(path, feeds).items():
        np.testing.assert_allclose(got[out], want, rtol=RTOL, atol=ATOL, err_msg=f"{name} {out}")
        assert got[out].dtype.kind == want.dtype.kind, (name, got[out].dtype, want.dtype)


# Feeds with one index outside its axis (either side): the run must stop with status 5.
OUT_OF_RANGE = {
    "gather_elements_axis1_negative": {"idx": _ints([0, 4], [1, 1], [2, 2])},
    "gather_elements_bool": {"idx": _ints([0, 0, 0], [-5, 0, 0])},
    "gathernd_two_indices_negative": {"idx": _ints([0, 0], [0, 4], [1, 1])},
    "gathernd_batch_dims1_int64": {"idx": _ints([[3], [0]], [[0], [0]])},
    "cumsum_runtime_axis_int64": {"axis": _ints(2, dtype=np.int32)},
    "rotary_4d_position_ids": {"pos": _ints([0, 3, 5, 7, 16], [1, 1, 2, 3, 4])},
    "rotary_3d_interleaved_partial": {"pos": _ints([0, 0, -1, 0, 0], [0, 0, 0, 0, 0])},
}


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_out_of_range_index_stops_the_run_with_status_5(name, board_name, workdir):
    board = require_board(board_name)
    _, project, report = project_for(name, workdir)
    feeds = {**CASES[name][3], **OUT_OF_RANGE[name]}
    with pytest.raises(MoaEdgeError, match=r"failed with status 5\b"):
        run(build(project, board), board, report["io"], check_inputs(report["io"], feeds, name))


def test_range_whose_scalars_disagree_with_the_static_shape_fails_with_bad_params(workdir):
    board = require_board("host")
    _, project, report = project_for("range_float_runtime", workdir)
    feeds = {**CASES["range_float_runtime"][3], "limit": np.array(9.0, np.float32)}
    with pytest.raises(MoaEdgeError, match=r"failed with status 4\b"):
        run(build(project, board), board, report["io"], check_inputs(report["io"], feeds, "range"))


def test_rotary_embedding_may_overwrite_its_input(tmp_path):
    """X computed inside the model dies at RotaryEmbedding: its output takes X's storage."""
    board = require_board("host")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 3, 5, 8))
    pos = helper.make_tensor_value_info("pos", TensorProto.INT64, (2, 5))
    nodes = [helper.make_node("Add", ["x", "x"], ["x2"]),
             helper.make_node("RotaryEmbedding", ["x2", "cos", "sin", "pos"], ["r"]),
             helper.make_node("Mul", ["r", "x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x, pos], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(_COS, "cos"), numpy_helper.from_array(_SIN, "sin")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    onnx.save(onnx.shape_inference.infer_shapes(model, strict_mode=True), tmp_path / "m.onnx")
    report = convert(tmp_path / "m.onnx", tmp_path / "p")
    assert report["memory"]["shared_storage"].get("r") == "x2"
    feeds = {"x": _floats(2, 3, 5, 8), "pos": _ints(*np.arange(10).reshape(2, 5))}
    outputs, _ = run(build(tmp_path / "p", board), board, report["io"], feeds)
    _assert_matches(outputs["y"], expected_outputs(tmp_path / "m.onnx", feeds)["y"], "in place")


def test_refusals_name_the_node(tmp_path):
    """Caches whose last axis is not rotary_embedding_dim / 2 (ONNX's inference lets it pass)."""
    model = single_node_model("RotaryEmbedding", 23, {"rotary_embedding_dim": 6},
                              {"x": _floats(2, 3, 5, 8), "pos": _ints(*[[0] * 5] * 2)},
                              {"cos": _COS, "sin": _SIN}, ["x", "cos", "sin", "pos"], None)
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(MoaEdgeError, match="rotaryembedding_node.*caches are"):
        convert(tmp_path / "m.onnx", tmp_path / "p")
