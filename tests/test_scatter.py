"""ScatterElements, ScatterND, TensorScatter (moa_edge/ops/scatter.py), TopK (ops/topk.py) and
ReverseSequence (ops/reverse_sequence.py) with run-time indices, on the host.

Hand-built single-node models go through convert -> C -> host build and are compared with
onnxruntime on the original file (the ONNX reference evaluator where onnxruntime has no kernel),
as is the torch reference. An index outside its axis, a write past the cache, or a sequence
length past the time axis stops the run with MOA_ERR_INDEX_OUT_OF_RANGE (status 5)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
import pytest

from conftest import require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import check_inputs, run
from moa_edge.pipeline import convert, load_graph
from test_indexing import expected_outputs

_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
         np.dtype(np.int32): TensorProto.INT32}
_rng = np.random.default_rng(15)


def _floats(*shape) -> np.ndarray:
    return _rng.standard_normal(shape).astype(np.float32)


def _ints(*values, dtype=np.int64) -> np.ndarray:
    return np.array(values, dtype=dtype)


# id -> (op, opset, attributes, run-time inputs (in order), outputs)
CASES = {
    "scatter_elements_add_duplicates_negative": (
        "ScatterElements", 18, {"axis": 1, "reduction": "add"},
        {"data": _floats(3, 5), "idx": _ints([0, -1, 0], [4, 4, -5], [2, 1, 2]), "upd": _floats(3, 3)}, ["y"]),
    "scatter_elements_max_int32": (
        "ScatterElements", 18, {"axis": 0, "reduction": "max"},
        {"data": _ints([1, -7], [3, 0], [5, 2], dtype=np.int32), "idx": _ints([2, 0], [-3, 1]),
         "upd": _ints([9, -1], [-4, 8], dtype=np.int32)}, ["y"]),
    "scatternd_mul_slices": (
        "ScatterND", 18, {"reduction": "mul"},
        {"data": _floats(4, 3, 2), "idx": _ints([1], [-1], [1]), "upd": _floats(3, 3, 2)}, ["y"]),
    "scatternd_min_elements": (
        "ScatterND", 18, {"reduction": "min"},
        {"data": _floats(3, 4), "idx": _ints([0, 1], [2, -1], [0, 1]), "upd": _floats(3)}, ["y"]),
    "tensorscatter_circular_runtime_indices": (
        "TensorScatter", 24, {"mode": "circular"},
        {"cache": _floats(2, 3, 5, 4), "update": _floats(2, 3, 3, 4), "pos": _ints(1, 4)}, ["y"]),
    "topk_smallest_ties_axis0": (
        "TopK", 24, {"axis": 0, "largest": 0},
        {"x": _ints([3, 1, 2], [1, 1, 5], [3, 0, 2], [1, 4, 2]).astype(np.float32), "k": _ints(3)}, ["v", "i"]),
    "reversesequence_batch_axis0": (
        "ReverseSequence", 10, {"batch_axis": 0, "time_axis": 1},
        {"x": _floats(3, 4, 2), "lens": _ints(4, 0, 2)}, ["y"]),
}
_CONSTANT = {"k"}  # held as initializers (TopK's k fixes the output shape)

# Feeds with one index past its axis (or a cache, or the time axis): the run must stop with status 5.
OUT_OF_RANGE = {
    "scatter_elements_add_duplicates_negative": {"idx": _ints([0, 5, 0], [4, 4, -5], [2, 1, 2])},
    "scatternd_min_elements": {"idx": _ints([0, 1], [-4, 0], [0, 1])},
    "reversesequence_batch_axis0": {"lens": _ints(4, 5, 2)},
}


def _model(op, opset, attrs, feeds, outputs) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(n, _ONNX[v.dtype], v.shape) for n, v in feeds.items() if n not in _CONSTANT]
    constants = [onnx.numpy_helper.from_array(v, n) for n, v in feeds.items() if n in _CONSTANT]
    node = helper.make_node(op, list(feeds), outputs, name=f"{op.lower()}_node", **attrs)
    graph = helper.make_graph([node], "g", inputs,
                              [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
                              initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


_projects: dict = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("scatter")


def _project(name, workdir):
    if name not in _projects:
        path = workdir / f"{name}.onnx"
        onnx.save(_model(*CASES[name]), path)
        board = require_board("host")
        report = convert(path, workdir / name)
        _projects[name] = (path, build(workdir / name, board), report, board)
    return _projects[name]


def _feeds(name, changes=None):
    return {n: v for n, v in {**CASES[name][3], **(changes or {})}.items() if n not in _CONSTANT}


@pytest.mark.parametrize("name", sorted(CASES))
def test_host_run_and_torch_reference_match_onnxruntime(name, workdir):
    path, binary, report, board = _project(name, workdir)
    feeds = _feeds(name)
    outputs, _ = run(binary, board, report["io"], check_inputs(report["io"], feeds, name))
    reference = run_reference(load_graph(path), feeds)
    for out, want in expected_outputs(path, feeds).items():
        for got in (outputs[out], np.asarray(reference[out])):
            assert got.shape == want.shape, (name, out, got.shape, want.shape)
            np.testing.assert_allclose(got.astype(want.dtype), want, rtol=1e-6, atol=1e-6, err_msg=f"{name} {out}")


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_an_index_out_of_range_stops_the_run_with_status_5(name, workdir):
    _, binary, report, board = _project(name, workdir)
    feeds = _feeds(name, OUT_OF_RANGE[name])
    with pytest.raises(MoaEdgeError, match=r"failed with status 5\b"):
        run(binary, board, report["io"], check_inputs(report["io"], feeds, name))


def test_indices_that_do_not_fit_the_data_are_refused_by_name(tmp_path):
    """ScatterElements' indices wider than the data on a non-scatter axis would write past the
    output: refused at convert, as onnxruntime refuses the model."""
    graph = helper.make_graph(
        [helper.make_node("ScatterElements", ["data", "indices", "updates"], ["y"], name="scatter", axis=0)], "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("indices", TensorProto.INT64, [2, 5]),
         helper.make_tensor_value_info("updates", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "m.onnx")
    with pytest.raises(MoaEdgeError, match="ScatterElements node 'scatter': indices \\[2, 5\\] reach past the data"):
        convert(tmp_path / "m.onnx", tmp_path / "p")
