"""Models quantized by onnxruntime.quantization.quantize_dynamic (issue 14): the DynamicQuantizeLinear,
MatMulInteger, Cast, Mul (+ Add) chains, and the DynamicQuantizeMatMul and MatMulIntegerToFloat forms
onnxruntime's optimizer makes of them, become MoaIGemm (passes/dynamic_quantize.py), and the
generated C equals onnxruntime on the quantized file: the integers exactly, so the outputs to
within one float32 rounding of the epilogue (a transformer layer: within float32 rounding of its
float ops, far below one quantization step). Quantized ops that cannot be mapped are refused by
node name."""
import numpy as np
import onnx
from onnx import TensorProto as T, helper, numpy_helper
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
import pytest

from conftest import BOARDS, require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import run
from moa_edge.pipeline import convert, load_graph
import zoo

WIDTH, HIDDEN, ROWS = 24, 96, (3, 50)  # 150 rows: more than one block of 96 quantized rows


def _mlp() -> onnx.ModelProto:
    """Y = relu(X W1 + b1) W2 + b2, as torch.nn.Linear layers export."""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((WIDTH, HIDDEN)) / 5, "b1": rng.standard_normal(HIDDEN),
               "w2": rng.standard_normal((HIDDEN, WIDTH)) / 10, "b2": rng.standard_normal(WIDTH)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["xw1"]), helper.make_node("Add", ["xw1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["g"]), helper.make_node("MatMul", ["g", "w2"], ["gw2"]),
             helper.make_node("Add", ["gw2", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", T.FLOAT, (*ROWS, WIDTH))],
                              [helper.make_tensor_value_info("y", T.FLOAT, (*ROWS, WIDTH))],
                              initializer=[numpy_helper.from_array(v.astype(np.float32), k)
                                           for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _projections() -> onnx.ModelProto:
    """Three projections of one x (as Q, K and V are): one DynamicQuantizeLinear feeds three MatMulIntegers,
    which onnxruntime's optimizer makes MatMulIntegerToFloat (not DynamicQuantizeMatMul)."""
    rng = np.random.default_rng(1)
    inits, nodes = [], []
    for p in "qkv":
        inits += [numpy_helper.from_array((rng.standard_normal((WIDTH, 40)) / 5).astype(np.float32), f"w{p}"),
                  numpy_helper.from_array(rng.standard_normal(40).astype(np.float32), f"b{p}")]
        nodes += [helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}0"]),
                  helper.make_node("Add", [f"{p}0", f"b{p}"], [p])]
    nodes += [helper.make_node("Mul", ["q", "k"], ["qk"]), helper.make_node("Add", ["qk", "v"], ["y"])]
    graph = helper.make_graph(nodes, "qkv", [helper.make_tensor_value_info("x", T.FLOAT, (2, 20, WIDTH))],
                              [helper.make_tensor_value_info("y", T.FLOAT, (2, 20, 40))], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _quantized(folder, name, model, optimized=False, **options):
    """quantize_dynamic's file (and onnxruntime's optimized form of it, saved by the session)."""
    source, path = folder / f"{name}.onnx", folder / f"{name}_q.onnx"
    if not path.exists():
        onnx.save(model, source)
        quantize_dynamic(source, path, **options)
    if not optimized:
        return path
    out = folder / f"{name}_q_optimized.onnx"
    if not out.exists():
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(out)
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return out


def _onnxruntime(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _convert_and_run(path, project, board, feeds):
    report = convert(path, project)
    got, _ = run(build(project, board), board, report["io"], feeds)
    return got["y"], report


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("quantize_dynamic")


MLP_FORMS = [(False, QuantType.QInt8), (True, QuantType.QInt8), (False, QuantType.QUInt8), (True, QuantType.QUInt8)]


def _mlp_file(folder, per_channel, weight_type, optimized=False):
    name = f"mlp_{'channel' if per_channel else 'tensor'}_{weight_type.name}"
    return _quantized(folder, name, _mlp(), optimized, per_channel=per_channel, weight_type=weight_type)


def _mlp_feeds():
    return {"x": np.random.default_rng(2).standard_normal((*ROWS, WIDTH)).astype(np.float32)}


@pytest.mark.parametrize("per_channel, weight_type", MLP_FORMS, ids=str)
@pytest.mark.parametrize("optimized", [False, True], ids=["quantize_dynamic", "optimized"])
def test_each_form_becomes_one_integer_gemm_and_the_reference_agrees(folder, per_channel, weight_type, optimized):
    """The chain and DynamicQuantizeMatMul both become MoaIGemm; the op's float64 reference (float32
    quantization and epilogue, exact integers) agrees with onnxruntime."""
    path = _mlp_file(folder, per_channel, weight_type, optimized)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ("com.microsoft" in {n.domain for n in onnx.load(path).graph.node}) == optimized, ops
    graph = load_graph(path)
    assert [n.op for n in graph.nodes] == ["MoaIGemm", "Relu", "MoaIGemm"]
    assert {graph.tensors[t].dtype for n in graph.nodes if n.op == "MoaIGemm" for t in n.inputs[1:2]} == {"int8"}
    feeds = _mlp_feeds()
    np.testing.assert_array_max_ulp(run_reference(graph, feeds)["y"].astype(np.float32), _onnxruntime(path, feeds), 1)


# The integer GEMM's other kernels on whole models: SDOT (rpi5, qemu's Cortex-A76), RVV at VLEN 256 (bpi-f3).
MORE_BOARDS = ["rpi5", "bpi-f3"]


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS + MORE_BOARDS)
@pytest.mark.parametrize("per_channel, weight_type", MLP_FORMS, ids=str)
def test_quantized_mlp_equals_onnxruntime(folder, per_channel, weight_type, board_name):
    board = require_board(board_name)
    path = _mlp_file(folder, per_channel, weight_type)
    feeds = _mlp_feeds()
    got, report = _convert_and_run(path, folder / f"{path.stem}_{board_name}", board, feeds)
    np.testing.assert_array_max_ulp(got, _onnxruntime(path, feeds), 1)
    # Weights: int8 (W1 24 x 96 and W2 96 x 24 in panels, K padded to 4) plus int32 column sums
    # and zero points, float32 scales and biases.
    assert report["memory"]["weights_bytes_by_type"]["int8"] == 24 * 96 + 96 * 32


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
def test_matmul_integer_to_float_after_a_shared_quantizer_equals_onnxruntime(folder, board_name):
    """Q, K and V of one x: onnxruntime's optimizer keeps one DynamicQuantizeLinear and three
    MatMulIntegerToFloat; each becomes a MoaIGemm quantizing x itself (the same bytes each time)."""
    board = require_board(board_name)
    path = _quantized(folder, "qkv", _projections(), optimized=True, per_channel=True, weight_type=QuantType.QUInt8)
    assert [n.op_type for n in onnx.load(path).graph.node].count("MatMulIntegerToFloat") == 3
    assert [n.op for n in load_graph(path).nodes].count("MoaIGemm") == 3
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 20, WIDTH)).astype(np.float32)}
    got, _ = _convert_and_run(path, folder / f"qkv_{board_name}", board, feeds)
    np.testing.assert_array_max_ulp(got, _onnxruntime(path, feeds), 1)


@pytest.fixture(scope="module")
def encoder(folder):
    """nn.TransformerEncoderLayer exported (dynamo, opset 18) and quantized once: (path, inputs)."""
    source, path = folder / "encoder.onnx", folder / "encoder_q.onnx"
    inputs = zoo._build_encoder_layer("dynamo", 18)(source)
    quantize_dynamic(source, path, weight_type=QuantType.QInt8)
    return path, inputs


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS + MORE_BOARDS)
def test_quantized_transformer_layer_matches_onnxruntime(folder, encoder, board_name):
    """nn.TransformerEncoderLayer (dynamo export) quantized: four MoaIGemm around one MoaAttention.
    The float ops between them (attention, LayerNorm) round differently from onnxruntime's, so a
    quantizer may see an input an ulp away; still far below one quantization step (~1e-2)."""
    board = require_board(board_name)
    path, inputs = encoder
    ops = [n.op for n in load_graph(path).nodes]
    assert ops.count("MoaIGemm") == 4 and ops.count("MoaAttention") == 1, ops
    got, _ = _convert_and_run(path, folder / f"encoder_{board_name}", board, inputs)
    np.testing.assert_allclose(got, _onnxruntime(path, inputs), rtol=0, atol=1e-5)


# --- what is refused ------------------------------------------------------------------------------

def _conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) / 3).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="the_conv")], "conv",
                              [helper.make_tensor_value_info("x", T.FLOAT, (1, 3, 8, 8))],
                              [helper.make_tensor_value_info("y", T.FLOAT, (1, 4, 6, 6))], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_quantized_conv_is_refused_by_name(folder):
    """quantize_dynamic makes a Conv a ConvInteger: no integer convolution yet, so the error names it."""
    path = _quantized(folder, "conv", _conv_model(), weight_type=QuantType.QUInt8)
    conv = [n.name for n in onnx.load(path).graph.node if n.op_type == "ConvInteger"]
    assert len(conv) == 1
    with pytest.raises(MoaEdgeError, match=rf"ConvInteger node '{conv[0]}': is a quantized operator"):
        load_graph(path)


def _edited_chain(folder, name, edit) -> str:
    """The MLP's quantize_dynamic file with `edit` applied to its proto (a hand-broken quantization)."""
    model = onnx.load(_mlp_file(folder, True, QuantType.QInt8))
    edit(model)
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    return path


def test_a_weight_zero_point_that_fits_no_column_is_refused(folder):
    """One zero point per row of K (24) instead of per column (96): ONNX's shape inference lets it
    pass, the pass names the node and the tensor."""
    def per_row(model):
        zero = next(i for i in model.graph.initializer if i.name == "w1_zero_point")
        zero.CopyFrom(numpy_helper.from_array(np.zeros(WIDTH, np.int8), "w1_zero_point"))
        next(n for n in model.graph.node if n.op_type == "MatMulInteger" and "w1_quantized" in n.input).name = "first"
    path = _edited_chain(folder, "bad_zero", per_row)
    with pytest.raises(MoaEdgeError, match=r"MatMulInteger node 'first': its weight zero point 'w1_zero_point' has "
                                           r"shape \[24\]; it must hold one value or one per column \(\[96\]\)"):
        load_graph(path)


def test_a_matmul_integer_without_a_dynamic_quantizer_is_refused_by_name(folder):
    """A fixed zero point on A (not DynamicQuantizeLinear's): not this chain, left as the unsupported op it is."""
    def fixed_zero(model):
        model.graph.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), "fixed_zero"))
        for node in model.graph.node:
            if node.op_type == "MatMulInteger" and "w2_quantized" in node.input:
                node.input[2] = "fixed_zero"
                node.name = "second_layer"
    path = _edited_chain(folder, "fixed_zero", fixed_zero)
    with pytest.raises(MoaEdgeError, match=r"unsupported ops: .*MatMulInteger \(nodes: second_layer\)"):
        load_graph(path)


def _embedding() -> onnx.ModelProto:
    """y = (Gather(E, ids) + p) W, as BERT's embeddings: quantize_dynamic quantizes the table too
    (a Gather of its integers, then a DequantizeLinear of the rows)."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((70, WIDTH)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32), "p"),
             numpy_helper.from_array((rng.standard_normal((WIDTH, 40)) / 5).astype(np.float32), "w")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], name="embed"),
             helper.make_node("Add", ["rows", "p"], ["x"]), helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "embedding", [helper.make_tensor_value_info("ids", T.INT64, (2, 9))],
                              [helper.make_tensor_value_info("y", T.FLOAT, (2, 9, 40))], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("weight_type", [QuantType.QInt8, QuantType.QUInt8], ids=str)
def test_a_quantized_embedding_table_stays_integer_and_equals_onnxruntime(folder, weight_type, board_name):
    board = require_board(board_name)
    path = _quantized(folder, f"embedding_{weight_type.name}", _embedding(), weight_type=weight_type)
    assert "DequantizeLinear" in {n.op_type for n in onnx.load(path).graph.node}
    feeds = {"ids": np.random.default_rng(6).integers(-70, 70, (2, 9)).astype(np.int64)}
    got, report = _convert_and_run(path, folder / f"embedding-{weight_type.name}-{board_name}", board, feeds)
    assert report["memory"]["weights_bytes_by_type"]["int8"] >= 70 * WIDTH  # the table is not float32 again
    assert "MoaQGather" in {op["op"] for op in report["ops"]}
    want = _onnxruntime(path, feeds)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
