"""Feed-forward blocks run in blocks of the hidden layer (passes/mlp.py, ops/mlp.py): it lives in
scratch one block of hidden columns (and of rows, when they are many) at a time, the results
equal onnxruntime on the original file on every board and are bitwise those of the unblocked
products, and blocks that are not row-local are left alone."""
import numpy as np
import onnx
from onnx import TensorProto as T, helper, numpy_helper
import onnxruntime as ort
import pytest

from conftest import BOARDS, require_board
from moa_edge.harness.build import build
from moa_edge.harness.runner import run
import moa_edge.passes
from moa_edge.passes.mlp import BLOCK
from moa_edge.pipeline import convert, load_graph

WIDTH, HIDDEN = 24, 1792  # 7 x 256: hidden blocks of 768 (150 rows) or 256 (300 rows) and a last one


def _ffn(rows_shape, activation="gelu", hidden_is_output=False, rng=None) -> onnx.ModelProto:
    """Y = act(X W1 + b1) W2 + b2, as the torch exporters write BERT's FFN (GELU by erf), or GPT-2's
    (conv1d-gelu-tanh: each Gemm between reshapes to 2-D and back, GELU by tanh)."""
    rng = rng or np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((WIDTH, HIDDEN)) / 5, "b1": rng.standard_normal(HIDDEN),
               "w2": rng.standard_normal((HIDDEN, WIDTH)) / 10, "b2": rng.standard_normal(WIDTH),
               "sqrt2": np.array(np.sqrt(2.0)), "one": np.array(1.0), "half": np.array(0.5)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["xw1"]), helper.make_node("Add", ["xw1", "b1"], ["h"])]
    if activation == "gelu":
        nodes += [helper.make_node("Div", ["h", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["half", "e1"], ["e2"]),
                  helper.make_node("Mul", ["h", "e2"], ["g"])]
    if activation == "conv1d-gelu-tanh":  # GPT-2's: HF Conv1D reshapes to 2-D around each Gemm, tanh GELU
        rows = int(np.prod(rows_shape))
        weights |= {"rows_x": np.array([rows, WIDTH]), "rows_h": np.array([*rows_shape, HIDDEN]),
                    "rows_y": np.array([*rows_shape, WIDTH]), "flat_h": np.array([rows, HIDDEN]),
                    "c": np.array(np.sqrt(2 / np.pi)), "k": np.array(0.044715), "three": np.array(3.0)}
        nodes = [helper.make_node("Reshape", ["x", "rows_x"], ["x2"]), helper.make_node("Gemm", ["x2", "w1", "b1"], ["h2"]),
                 helper.make_node("Reshape", ["h2", "rows_h"], ["h"]), helper.make_node("Pow", ["h", "three"], ["h3"]),
                 helper.make_node("Mul", ["k", "h3"], ["kh3"]), helper.make_node("Add", ["h", "kh3"], ["inner"]),
                 helper.make_node("Mul", ["c", "inner"], ["arg"]), helper.make_node("Tanh", ["arg"], ["t"]),
                 helper.make_node("Add", ["one", "t"], ["t1"]), helper.make_node("Mul", ["half", "h"], ["hh"]),
                 helper.make_node("Mul", ["hh", "t1"], ["g"]), helper.make_node("Reshape", ["g", "flat_h"], ["g2"]),
                 helper.make_node("Gemm", ["g2", "w2", "b2"], ["y2"]), helper.make_node("Reshape", ["y2", "rows_y"], ["y"])]
    else:
        nodes += [helper.make_node("MatMul", ["g", "w2"], ["gw2"]), helper.make_node("Add", ["gw2", "b2"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", T.FLOAT, (*rows_shape, WIDTH))]
    if hidden_is_output:
        outputs.append(helper.make_tensor_value_info("h", T.FLOAT, (*rows_shape, HIDDEN)))
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", T.FLOAT, (*rows_shape, WIDTH))],
                              outputs, initializer=[numpy_helper.from_array(v.astype(np.float32 if v.dtype.kind == "f"
                                                                                    else np.int64), k)
                                                    for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("activation, rows_shape, loops", [
    # 150 rows: one block of rows; hidden columns 768 at a time, then the last 256
    ("gelu", (3, 50), ["row0 < 150; row0 += 150", "h0 + 768 <= 1792; h0 += 768", "the last 256 hidden columns"]),
    # 600 rows: two blocks of 300; hidden columns 256 at a time; GPT-2's form (reshapes around each Gemm)
    ("conv1d-gelu-tanh", (1, 600), ["row0 < 600; row0 += 300", "h0 + 256 <= 1792; h0 += 256"])])
def test_blocked_ffn_matches_onnxruntime_and_the_whole_products(activation, rows_shape, loops, board_name, tmp_path,
                                                                 monkeypatch):
    board = require_board(board_name)
    path = tmp_path / "ffn.onnx"
    onnx.save(_ffn(rows_shape, activation), path)
    assert [n.op for n in load_graph(path).nodes if n.op != "Reshape"] == ["MoaMlp"]  # (X's and Y's own views)
    report = convert(path, tmp_path / "p", threads=1)
    code = (tmp_path / "p" / "model.c").read_text()
    assert all(loop in code for loop in loops), loops
    # No [rows, HIDDEN] hidden tensor: the arena is the node's scratch, one block of at most BLOCK floats.
    rows = int(np.prod(rows_shape))
    assert report["memory"]["arena_bytes"] <= BLOCK * 4 < rows * HIDDEN * 4
    feeds = {"x": np.random.default_rng(1).standard_normal((*rows_shape, WIDTH)).astype(np.float32)}
    got, _ = run(build(tmp_path / "p", board), board, report["io"], feeds)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-5)
    # The same model without the rewrite (the hidden layer whole): every slice of the last
    # product's sum is the whole product's, so Y is the same to the bit.
    monkeypatch.setattr(moa_edge.passes, "tile_mlp", lambda graph: 0)
    whole = convert(path, tmp_path / "whole", threads=1)
    assert "feed-forward block" not in (tmp_path / "whole" / "model.c").read_text()
    unblocked, _ = run(build(tmp_path / "whole", board), board, whole["io"], feeds)
    np.testing.assert_array_equal(got["y"], unblocked["y"])


def test_a_hidden_layer_read_elsewhere_is_not_blocked(tmp_path):
    """The hidden layer is also a graph output: it must exist whole, so no MoaMlp."""
    path = tmp_path / "ffn.onnx"
    onnx.save(_ffn((3, 50), hidden_is_output=True), path)
    assert "MoaMlp" not in [n.op for n in load_graph(path).nodes]


def test_one_block_is_left_as_it_is(tmp_path):
    path = tmp_path / "ffn.onnx"
    onnx.save(_ffn((1, BLOCK // HIDDEN)), path)
    assert "MoaMlp" not in [n.op for n in load_graph(path).nodes]
