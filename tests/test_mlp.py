"""Feed-forward blocks run in row blocks (passes/mlp.py, ops/mlp.py): the hidden layer
lives in scratch one block of rows at a time, the results equal onnxruntime on the
original file on every board, and blocks that are not row-local are left alone."""
import numpy as np
import onnx
from onnx import TensorProto as T, helper, numpy_helper
import onnxruntime as ort
import pytest

from conftest import BOARDS, require_board
from moa_edge.harness.build import build
from moa_edge.harness.runner import run
from moa_edge.passes.mlp import ROWS
from moa_edge.pipeline import convert, load_graph

WIDTH, HIDDEN = 24, 96


def _ffn(rows_shape, activation="gelu", hidden_is_output=False, rng=None) -> onnx.ModelProto:
    """Y = act(X W1 + b1) W2 + b2, as the torch exporters write BERT's FFN (GELU by erf)."""
    rng = rng or np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((WIDTH, HIDDEN)) / 5, "b1": rng.standard_normal(HIDDEN),
               "w2": rng.standard_normal((HIDDEN, WIDTH)) / 10, "b2": rng.standard_normal(WIDTH),
               "sqrt2": np.array(np.sqrt(2.0)), "one": np.array(1.0), "half": np.array(0.5)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["xw1"]), helper.make_node("Add", ["xw1", "b1"], ["h"])]
    if activation == "gelu":
        nodes += [helper.make_node("Div", ["h", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["half", "e1"], ["e2"]),
                  helper.make_node("Mul", ["h", "e2"], ["g"])]
    else:
        nodes.append(helper.make_node("Relu", ["h"], ["g"]))
    nodes += [helper.make_node("MatMul", ["g", "w2"], ["gw2"]), helper.make_node("Add", ["gw2", "b2"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", T.FLOAT, (*rows_shape, WIDTH))]
    if hidden_is_output:
        outputs.append(helper.make_tensor_value_info("h", T.FLOAT, (*rows_shape, HIDDEN)))
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", T.FLOAT, (*rows_shape, WIDTH))],
                              outputs, initializer=[numpy_helper.from_array(v.astype(np.float32), k)
                                                    for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_row_blocked_ffn_matches_onnxruntime(activation, board_name, tmp_path):
    """3 x 50 = 150 rows: two whole blocks of 52 and a last one of 46."""
    board = require_board(board_name)
    path = tmp_path / "ffn.onnx"
    onnx.save(_ffn((3, 50), activation), path)
    assert [n.op for n in load_graph(path).nodes] == ["MoaMlp"]
    report = convert(path, tmp_path / "p", threads=1)
    assert "row0 < 104; row0 += 52" in (tmp_path / "p" / "model.c").read_text()
    # No [150, 96] hidden tensor: the arena is the node's scratch, a block of ROWS hidden rows.
    assert report["memory"]["arena_bytes"] <= 2 * ROWS * HIDDEN * 4 < 150 * HIDDEN * 4
    feeds = {"x": np.random.default_rng(1).standard_normal((3, 50, WIDTH)).astype(np.float32)}
    got, _ = run(build(tmp_path / "p", board), board, report["io"], feeds)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-5)


def test_a_hidden_layer_read_elsewhere_is_not_blocked(tmp_path):
    """The hidden layer is also a graph output: it must exist whole, so no MoaMlp."""
    path = tmp_path / "ffn.onnx"
    onnx.save(_ffn((3, 50), hidden_is_output=True), path)
    assert "MoaMlp" not in [n.op for n in load_graph(path).nodes]


def test_one_block_of_rows_is_left_as_it_is(tmp_path):
    path = tmp_path / "ffn.onnx"
    onnx.save(_ffn((1, ROWS)), path)
    assert "MoaMlp" not in [n.op for n in load_graph(path).nodes]
