"""ONNX -> C -> built for a board -> run -> compared with PyTorch float64 (issue 2)."""
from pathlib import Path

import numpy as np
import pytest

from conftest import BOARDS, require_board
from models import Case, case_inputs, expected, export
from moa_edge.harness import compare as cmp
from moa_edge.harness.build import build
from moa_edge.harness.runner import check_inputs, run
from moa_edge.pipeline import convert, load_graph

CASES = [
    Case("op23_plain", "op23", q_len=8, kv_len=8, head_dim=16),
    Case("op23_causal_sq_ne_skv", "op23", q_len=5, kv_len=9, head_dim=8, causal=True),
    Case("op23_float_mask", "op23", q_len=7, kv_len=12, head_dim=32, mask="float"),
    Case("op23_bool_mask_4d", "op23", batch=2, q_len=6, kv_len=6, head_dim=64, mask="bool", mask_shape=(2, 1, 6, 6)),
    Case("op23_gqa_causal", "op23", q_heads=4, kv_heads=2, q_len=9, kv_len=9, head_dim=16, causal=True),
    Case("sdpa18_plain", "sdpa18", q_len=8, kv_len=8, head_dim=8),
    Case("sdpa18_causal_sq_ne_skv", "sdpa18", q_len=6, kv_len=10, head_dim=16, causal=True),
    Case("sdpa18_float_mask", "sdpa18", q_len=5, kv_len=11, head_dim=24, mask="float"),
    Case("sdpa18_bool_mask", "sdpa18", q_len=8, kv_len=8, head_dim=16, mask="bool"),
    Case("sdpa18_const_mask", "sdpa18", q_len=4, kv_len=6, head_dim=8, mask="const_float"),
    Case("onnx3d_gqa_causal_dv", "onnx3d", q_heads=4, kv_heads=2, q_len=5, kv_len=7, head_dim=8, value_dim=12,
         causal=True),
]

_projects: dict[str, tuple[Path, dict]] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("roundtrip")


def project_for(case: Case, workdir: Path):
    if case.name not in _projects:
        model = workdir / f"{case.name}.onnx"
        export(case, model)
        report = convert(model, workdir / case.name)
        _projects[case.name] = (workdir / case.name, report)
    return _projects[case.name]


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_roundtrip_matches_pytorch(case, board_name, workdir):
    board = require_board(board_name)
    project, report = project_for(case, workdir)
    assert len(report["attention_blocks"]) == 1
    inputs = case_inputs(case)
    binary = build(project, board)
    outputs, _ = run(binary, board, report["io"], check_inputs(report["io"], inputs, case.name))
    got = outputs["y"]
    ref = expected(case, inputs)
    result = cmp.compare(got, ref)
    assert result["ok"], (case.name, board_name, result)


def test_fully_masked_rows_give_zero(tmp_path):
    """ONNX 1.23: a row whose bool mask hides every key gives 0 (not NaN)."""
    case = Case("onnx3d_fully_masked", "onnx3d", q_len=4, kv_len=5, head_dim=8, mask="bool")
    model = tmp_path / "m.onnx"
    export(case, model)
    report = convert(model, tmp_path / "p")
    inputs = case_inputs(case)
    inputs["m"][1, :] = False  # query row 1 sees nothing
    board = require_board("host")
    outputs, _ = run(build(tmp_path / "p", board), board, report["io"], check_inputs(report["io"], inputs, "t"))
    ref = expected(case, inputs)
    assert np.all(ref[:, 1, :] == 0)  # the ONNX reference's own answer
    assert cmp.compare(outputs["y"], ref)["ok"]


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("mask_type", ["bool", "float"])
def test_opset24_mask_shorter_than_the_keys(board_name, mask_type, tmp_path):
    """Opset 24: keys past a short attn_mask are hidden; expected values from the ONNX reference."""
    import onnx
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator
    board = require_board(board_name)
    elem = TensorProto.BOOL if mask_type == "bool" else TensorProto.FLOAT
    io = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 2, 3, 8]),
          helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 2, 5, 8]),
          helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2, 5, 8]),
          helper.make_tensor_value_info("m", elem, [3, 3])]
    node = helper.make_node("Attention", ["q", "k", "v", "m"], ["y"], name="attn")
    model = helper.make_model(helper.make_graph([node], "g", io, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 8])]),
                              opset_imports=[helper.make_opsetid("", 24)])
    onnx.save(model, tmp_path / "m.onnx")
    rng = np.random.default_rng(5)
    inputs = {n: rng.standard_normal(s).astype(np.float32) for n, s in (("q", (1, 2, 3, 8)), ("k", (1, 2, 5, 8)), ("v", (1, 2, 5, 8)))}
    inputs["m"] = np.array([[True, False, True], [False, True, True], [True, True, False]]) if mask_type == "bool" \
        else rng.standard_normal((3, 3)).astype(np.float32)
    report = convert(tmp_path / "m.onnx", tmp_path / "p")
    outputs, _ = run(build(tmp_path / "p", board), board, report["io"], check_inputs(report["io"], inputs, "short mask"))
    expected = ReferenceEvaluator(model).run(None, inputs)[0]
    assert cmp.compare(outputs["y"], expected.astype(np.float64))["ok"]


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("dtype", ["bool", "float"])
def test_constant_pad_becomes_one_copy(board_name, dtype, tmp_path):
    """Pad(constant) of run-time data on a middle axis, before and after: one MoaConcat whose
    fill is one stored element; expected values from the ONNX reference."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator
    board = require_board(board_name)
    elem, value = (TensorProto.BOOL, np.array(True)) if dtype == "bool" else (TensorProto.FLOAT, np.array(-2.5, np.float32))
    inits = [numpy_helper.from_array(np.array([1, 2], np.int64), "pads"), numpy_helper.from_array(value, "value"),
             numpy_helper.from_array(np.array([-2], np.int64), "axes")]
    graph = helper.make_graph([helper.make_node("Pad", ["x", "pads", "value", "axes"], ["y"], name="pad")], "g",
                              [helper.make_tensor_value_info("x", elem, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", elem, [2, 6, 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "m.onnx")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    inputs = {"x": x > 0 if dtype == "bool" else x}
    lowered = load_graph(tmp_path / "m.onnx")
    assert [n.op for n in lowered.nodes] == ["MoaConcat"] and [w.size for w in lowered.weights()] == [1]
    report = convert(tmp_path / "m.onnx", tmp_path / "p")
    outputs, _ = run(build(tmp_path / "p", board), board, report["io"], check_inputs(report["io"], inputs, "pad"))
    np.testing.assert_array_equal(outputs["y"], ReferenceEvaluator(model).run(None, inputs)[0])
