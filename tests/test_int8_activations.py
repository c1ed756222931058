"""`convert --weights int8 --activations int8` (issue 14): the int8 weights (one scale per output column)
multiply activations quantized to int8 per row at run time, in the integer GEMM (MoaIGemm, igemm.h).
The generated C equals numpy computing the same quantization in float32 and the sums in int64, on
every board; against the float model (onnxruntime) it gives up only what 8 bits give up."""
import numpy as np
import onnx
from onnx import TensorProto as T, helper, numpy_helper
import onnxruntime as ort
import pytest

from conftest import BOARDS, one_error, require_board, run_cli
from moa_edge.harness.build import build
from moa_edge.harness.runner import run
from moa_edge.errors import MoaEdgeError
from moa_edge.passes import parse_activations, parse_weights
from moa_edge.pipeline import convert, load_graph

WIDTH, HIDDEN, ROWS = 24, 96, (3, 50)


def _weights(rng):
    return {"w1": (rng.standard_normal((WIDTH, HIDDEN)) / 5).astype(np.float32),
            "b1": rng.standard_normal(HIDDEN).astype(np.float32),
            "w2": (rng.standard_normal((HIDDEN, WIDTH)) / 10).astype(np.float32),
            "b2": rng.standard_normal(WIDTH).astype(np.float32)}


def _mlp(weights, gemm: bool) -> onnx.ModelProto:
    """relu(X W1 + b1) W2 + b2: MatMul + Add as torch's dynamo export writes Linear, or a 2-D Gemm with
    transB (the legacy export), whose weight is stored transposed."""
    if gemm:
        nodes = [helper.make_node("Gemm", ["x", "w1t", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["g"]),
                 helper.make_node("Gemm", ["g", "w2t", "b2"], ["y"], transB=1)]
        stored = {"w1t": weights["w1"].T.copy(), "b1": weights["b1"], "w2t": weights["w2"].T.copy(),
                  "b2": weights["b2"]}
        shape = (ROWS[0] * ROWS[1], WIDTH)
    else:
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["xw1"]), helper.make_node("Add", ["xw1", "b1"], ["h"]),
                 helper.make_node("Relu", ["h"], ["g"]), helper.make_node("MatMul", ["g", "w2"], ["gw2"]),
                 helper.make_node("Add", ["gw2", "b2"], ["y"])]
        stored, shape = weights, (*ROWS, WIDTH)
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", T.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", T.FLOAT, shape)],
                              initializer=[numpy_helper.from_array(v, k) for k, v in stored.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _linear_int8(x, w, b):
    """One layer as --weights int8 --activations int8 define it, in float32 and exact integers:
    W = scale[n] q (scale = max |W[:, n]| / 127, q = round(W / scale)), A = a_scale[m] qa likewise
    per row (a row of zeros: scale 1), Y = float(sum qa q) * (a_scale[m] * scale[n]) + b."""
    w_scale = (np.abs(w).max(axis=0) / np.float32(127)).astype(np.float32)
    q = np.clip(np.rint(w * (np.float32(1) / w_scale)), -127, 127).astype(np.int64)
    largest = np.abs(x).max(axis=1)
    a_scale = np.where(largest == 0, np.float32(1), largest / np.float32(127)).astype(np.float32)
    qa = np.clip(np.rint(x / a_scale[:, None]), -127, 127).astype(np.int64)
    return (qa @ q).astype(np.float32) * (a_scale[:, None] * w_scale[None, :]) + b


def _expected(x, weights):
    rows = x.reshape(-1, WIDTH)
    hidden = np.maximum(_linear_int8(rows, weights["w1"], weights["b1"]), 0)
    return _linear_int8(hidden, weights["w2"], weights["b2"]).reshape(x.shape)


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("gemm", [False, True], ids=["matmul", "gemm"])
def test_int8_activations_mlp_equals_numpy(board_name, gemm, tmp_path):
    board = require_board(board_name)
    weights = _weights(np.random.default_rng(0))
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp(weights, gemm), path)
    graph = load_graph(path, weights=parse_weights("int8"), activations="int8")
    assert [(n.op, n.attrs.get("mode")) for n in graph.nodes] == [("MoaIGemm", "row_i8"), ("Relu", None),
                                                                   ("MoaIGemm", "row_i8")]
    report = convert(path, tmp_path / "p", board=board, weights=parse_weights("int8"), activations="int8")
    assert report["memory"]["weights_bytes_by_type"]["int8"] == 24 * 96 + 96 * 32  # panels: N to 16s, K to 4s
    x = np.random.default_rng(1).standard_normal(graph.tensors["x"].shape).astype(np.float32)
    x[0, 0] = 0.0  # a row with a zero, and below an all-zero row (scale 1)
    x[-1] = 0.0
    got, _ = run(build(tmp_path / "p", board), board, report["io"], {"x": x})
    np.testing.assert_array_max_ulp(got["y"], _expected(x, weights), 1)
    # What 8-bit activations and weights give up against the float model.
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    cosine = np.sum(got["y"] * want) / np.linalg.norm(got["y"]) / np.linalg.norm(want)
    assert cosine > 0.999, cosine


def test_int8_activations_need_int8_weights_per_column(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp(_weights(np.random.default_rng(0)), False), path)
    one_error(run_cli("convert", path, "-o", tmp_path / "p", "--activations", "int8"), "--activations int8",
              "needs --weights int8", "no --weights given")
    assert not (tmp_path / "p").exists()
    for weights in ("int8:8", "int4"):  # a scale per block of K: no integer GEMM over whole columns
        with pytest.raises(MoaEdgeError, match=f"needs --weights int8 \\(--weights {weights} given\\)"):
            parse_activations("int8", parse_weights(weights))
    with pytest.raises(MoaEdgeError, match="--activations 'int16' is not int8 or float32"):
        parse_activations("int16", parse_weights("int8"))
    assert parse_activations("float32", None) is None


def test_inspect_reports_the_integer_gemm(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp(_weights(np.random.default_rng(0)), False), path)
    proc = run_cli("inspect", path, "--weights", "int8", "--activations", "int8")
    assert proc.returncode == 0, proc.stderr
    assert "op types left: MoaIGemm, Relu" in proc.stdout
    assert "int8 5376 B" in proc.stdout
