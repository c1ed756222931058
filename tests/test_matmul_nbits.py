"""com.microsoft.MatMulNBits (issue 14): float models quantized by onnxruntime's own
MatMulNBitsQuantizer (4 and 8 bits, blocks of 16, 32 and 128, symmetric, with uint8 zero points,
and HQQ's float zero points), converted to MoaQGemm (passes/nbits.py), built and run on every
board against onnxruntime on the quantized file; and a file the quantizer or a hand edit made
wrong refused with one error each.

Tolerance. The integers are the file's, unchanged; W differs from onnxruntime's (q - zp) * scale
by the rounding of the offset -zp * scale (at most an ulp of the larger term), and the K-term sums
are accumulated in another order (panels and blocks against MLAS). Both are ulps of the sum of
the |terms| each output adds up, not of the output (the zero point's term cancels most of q's),
so the bound is 2 float32 ulps of that sum, through both layers of the MLP (seen on the three
boards: at most 0.31 of one such ulp, which is up to 7.4 ulps of max |y|). A wrong nibble or zero
point is off by a whole scale step, about 1e4 times the bound."""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort
from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer
import pytest

from conftest import BOARDS, one_error, require_board, run_cli
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import check_inputs, run
from moa_edge.pipeline import convert, load_graph

# HQQ hands torch a read-only numpy array and torch says so; nothing here writes to it.
pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
EPS = float(np.finfo(np.float32).eps)
# The single MatMul runs one row (the GEMV path), the MLP 18 (the dequantizing GEMM); K = 40 and
# the MLP's 48 are not multiples of 32 or 128, and 40 not of 16: the last block is padded.
SHAPES = {"matmul": (1, 40), "mlp": (2, 9, 64)}
# (model, bits, block, form): "sym" without zero points, "zp" with uint8 ones, "hqq" with float
# ones and 1-D scales (HQQWeightOnlyQuantConfig; onnxruntime's CPU kernel takes those for 4 bits only).
CASES = [("matmul", bits, block, form) for bits in (4, 8) for block in (16, 32, 128) for form in ("sym", "zp")]
CASES += [("matmul", 4, 16, "hqq"), ("mlp", 4, 16, "zp"), ("mlp", 4, 128, "sym"), ("mlp", 8, 32, "zp"),
          ("mlp", 8, 128, "sym"), ("mlp", 4, 32, "hqq")]
# Under qemu the boards share the scalar panel kernels (their float register tiles in the MLP's
# dequantizing GEMM): a few cases of each kind are enough there.
BOARD_CASES = [("matmul", 4, 16, "zp"), ("matmul", 4, 128, "sym"), ("matmul", 8, 32, "zp"), ("matmul", 8, 128, "sym"),
               ("mlp", 4, 16, "zp"), ("mlp", 8, 32, "zp")]
RUNS = [(case, board) for board in BOARDS for case in (CASES if board == "host" else BOARD_CASES)]


def _case_id(case) -> str:
    model, bits, block, form = case
    return f"{model}_{bits}bit_b{block}_{form}"


def _float_model(kind: str) -> onnx.ModelProto:
    """y = x W (K 40, N 24), or y = relu(x W1 + b1) W2 + b2 (64 -> 48 -> 20) as torch exports Linear layers."""
    rng = np.random.default_rng(3)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ("rows", 40) if kind == "matmul" else SHAPES[kind])
    if kind == "matmul":
        weights = {"W": rng.standard_normal((40, 24))}
        nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")]
        y_shape = ("rows", 24)  # any number of rows: the weights test feeds an identity
    else:
        weights = {"W1": rng.standard_normal((64, 48)), "b1": rng.standard_normal(48),
                   "W2": rng.standard_normal((48, 20)), "b2": rng.standard_normal(20)}
        nodes = [helper.make_node("MatMul", ["x", "W1"], ["xw1"], name="fc1"),
                 helper.make_node("Add", ["xw1", "b1"], ["h1"], name="fc1_bias"),
                 helper.make_node("Relu", ["h1"], ["h"], name="relu"),
                 helper.make_node("MatMul", ["h", "W2"], ["hw2"], name="fc2"),
                 helper.make_node("Add", ["hw2", "b2"], ["y"], name="fc2_bias")]
        y_shape = (2, 9, 20)
    graph = helper.make_graph(nodes, kind, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantized(model: onnx.ModelProto, bits: int, block: int, form: str) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the quantizer rewrites the proto it is given
    hqq = HQQWeightOnlyQuantConfig(block_size=block, bits=bits) if form == "hqq" else None
    quantizer = MatMulNBitsQuantizer(copy, bits=bits, block_size=block, is_symmetric=form == "sym", algo_config=hqq)
    quantizer.process()
    return quantizer.model.model


def _terms(model: onnx.ModelProto, node: onnx.NodeProto):
    """W = (q - zp) scale as the contrib op's spec reads B (low nibble first) and |scale q| +
    |scale zp|, the size of the two terms each weight is made of (K x N, float64): the
    tolerance's scale, independent of passes/nbits.py."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def unpack(data, count):
        values = np.stack([data & 15, data >> 4], -1).reshape(*data.shape[:-1], -1) if bits == 4 else data
        return values[..., :count].astype(np.float64)
    b = init[node.input[1]]
    blocks = b.shape[1]
    q = unpack(b, block).reshape(n, -1)[:, :k]
    scale = init[node.input[2]].reshape(n, blocks).astype(np.float64)
    zero = init[node.input[3]] if len(node.input) > 3 and node.input[3] else np.full((n, blocks), 2.0 ** (bits - 1))
    zero = unpack(zero.reshape(n, -1), blocks) if zero.dtype == np.uint8 else zero.reshape(n, blocks).astype(np.float64)
    rows = np.arange(k) // block
    s, z = scale[:, rows], zero[:, rows]
    return ((q - z) * s).T, (np.abs(s * q) + np.abs(s * z)).T


def _bound(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """2 ulps of the sum of |terms| behind each output; through the MLP, layer 1's bound carried by |W2|."""
    init = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    layers = [_terms(model, n) for n in model.graph.node if n.op_type == "MatMulNBits"]
    x = x.astype(np.float64)
    if len(layers) == 1:
        return 2 * EPS * (np.abs(x) @ layers[0][1])
    (w1, t1), (w2, t2) = layers
    h = np.maximum(x @ w1 + init["b1"], 0)
    h_size = np.abs(x) @ t1 + np.abs(init["b1"])
    return 2 * EPS * (np.abs(h) @ t2 + h_size @ np.abs(w2) + np.abs(init["b2"]))


def _feeds(kind: str) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(11).standard_normal(SHAPES[kind]).astype(np.float32)}


def _onnxruntime(path: Path, feeds) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("nbits")


def _pinned(kind: str) -> dict[str, tuple]:
    return {"x": SHAPES[kind]}


_files: dict[tuple, Path] = {}


def quantized_file(case, workdir: Path) -> Path:
    if case not in _files:
        kind, bits, block, form = case
        path = workdir / f"{_case_id(case)}.onnx"
        onnx.save(_quantized(_float_model(kind), bits, block, form), path)
        _files[case] = path
    return _files[case]


_projects: dict[tuple, tuple[Path, dict]] = {}


def project_for(case, workdir: Path):
    if case not in _projects:
        project = workdir / _case_id(case)
        _projects[case] = (project, convert(quantized_file(case, workdir), project, input_shapes=_pinned(case[0])))
    return _projects[case]


def test_the_quantizer_writes_what_the_cases_need(workdir):
    """The files under test hold MatMulNBits with and without zero points (uint8, or float32 from
    HQQ), and bits and blocks as asked."""
    for case in CASES:
        kind, bits, block, form = case
        model = onnx.load(quantized_file(case, workdir))
        nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        assert len(nodes) == (1 if kind == "matmul" else 2)
        for node in nodes:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            assert (attrs["bits"], attrs["block_size"]) == (bits, block)
            zero = next((i for i in model.graph.initializer if len(node.input) > 3 and i.name == node.input[3]), None)
            assert (None if zero is None else zero.data_type) == {
                "sym": None, "zp": TensorProto.UINT8, "hqq": TensorProto.FLOAT}[form]


@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "matmul"], ids=_case_id)
def test_weights_read_as_onnxruntime_reads_them(case, workdir):
    """x = I: onnxruntime's output is its dequantized W, row by row; so is the float64 evaluator's
    of our MoaQGemm (ops/qmatmul.dequantize of the panels): equal to an ulp of the larger term,
    which checks the nibble order, the zero points and their defaults against onnxruntime itself."""
    path = quantized_file(case, workdir)
    graph = load_graph(path, input_shapes={"x": (40, 40)})
    assert [n.op for n in graph.nodes] == ["MoaQGemm"]
    assert graph.nodes[0].attrs["qtype"] == ("u4" if case[1] == 4 else "i8")
    identity = {"x": np.eye(40, dtype=np.float32)}
    model = onnx.load(path)
    w_spec, terms = _terms(model, model.graph.node[0])
    w_ort = _onnxruntime(path, identity)
    np.testing.assert_array_less(np.abs(w_ort - w_spec), EPS * terms + 1e-30)  # the spec's reading, too
    np.testing.assert_array_less(np.abs(run_reference(graph, identity)["y"] - w_ort), EPS * terms + 1e-30)


def test_eight_bits_with_float_zero_points_follow_the_spec(workdir):
    """HQQ writes float zero points for 8 bits too, which onnxruntime's CPU kernel refuses; the
    spec's (q - zp) scale still maps exactly: our weights against it, to an ulp of the larger term."""
    path = workdir / "hqq_8bit.onnx"
    model = _quantized(_float_model("matmul"), 8, 16, "hqq")
    onnx.save(model, path)
    w_spec, terms = _terms(model, model.graph.node[0])
    graph = load_graph(path, input_shapes={"x": (40, 40)})
    assert graph.nodes[0].attrs["qtype"] == "i8" and graph.nodes[0].inputs[3]  # an offset
    got = run_reference(graph, {"x": np.eye(40, dtype=np.float32)})["y"]
    np.testing.assert_array_less(np.abs(got - w_spec), EPS * terms + 1e-30)


@pytest.mark.board
@pytest.mark.parametrize("case, board_name", RUNS, ids=[f"{_case_id(c)}-{b}" for c, b in RUNS])
def test_generated_c_matches_onnxruntime(case, board_name, workdir):
    board = require_board(board_name)
    project, report = project_for(case, workdir)
    path, feeds = quantized_file(case, workdir), _feeds(case[0])
    outputs, _ = run(build(project, board), board, report["io"], check_inputs(report["io"], feeds, _case_id(case)))
    expected = _onnxruntime(path, feeds)
    np.testing.assert_array_less(np.abs(outputs["y"] - expected), _bound(onnx.load(path), feeds["x"]) + 1e-30)


def test_mlp_is_two_quantized_gemms_with_their_biases(workdir):
    """The Adds after MatMulNBits fold into MoaQGemm's C, as pack.py folds a Linear layer's; the
    weights are reported as int4 and the scales, offsets and biases as float32."""
    case = ("mlp", 4, 16, "zp")
    graph = load_graph(quantized_file(case, workdir), input_shapes=_pinned("mlp"))
    assert [n.op for n in graph.nodes] == ["MoaQGemm", "Relu", "MoaQGemm"]
    assert [n.inputs[-1] for n in graph.nodes if n.op == "MoaQGemm"] == ["b1", "b2"]
    # 64 x 48: 3 panels of 64 rows, two rows a byte; 48 x 20: 2 panels of 48 rows.
    assert graph.weight_bytes_by_type()["int4"] == 3 * 32 * 16 + 2 * 24 * 16
    _, report = project_for(case, workdir)
    assert report["memory"]["weights_bytes"] == 3 * 32 * 16 + 2 * 24 * 16 + 4 * (
        2 * (3 * 4 + 2 * 3) * 16 + 48 + 20)  # scale and offset rows per panel and block, biases


@pytest.mark.board
def test_bias_input_is_the_gemms_c(workdir):
    """MatMulNBits' optional bias (input 5), as a hand edit moves each Add's bias into it:
    onnxruntime and moa-edge both add it."""
    model = onnx.load(quantized_file(("mlp", 8, 32, "zp"), workdir))
    for add in [n for n in model.graph.node if n.op_type == "Add"]:
        gemm = next(n for n in model.graph.node if n.output[0] == add.input[0])
        gemm.input.extend(["", add.input[1]])  # after zero_points: g_idx absent, bias
        gemm.output[0] = add.output[0]
        model.graph.node.remove(add)
    path = workdir / "mlp_bias_input.onnx"
    onnx.save(model, path)
    graph = load_graph(path)
    assert [n.op for n in graph.nodes] == ["MoaQGemm", "Relu", "MoaQGemm"]
    assert [n.attrs["source"] for n in graph.nodes if n.op == "MoaQGemm"] == ["MatMulNBits + bias"] * 2
    board = require_board("host")
    report = convert(path, workdir / "mlp_bias_input")
    feeds = _feeds("mlp")
    outputs, _ = run(build(workdir / "mlp_bias_input", board), board, report["io"],
                     check_inputs(report["io"], feeds, "bias"))
    expected = _onnxruntime(path, feeds)
    np.testing.assert_array_less(np.abs(outputs["y"] - expected), _bound(model, feeds["x"]) + 1e-30)


# --- bad input: one error each, naming the node ---------------------------------------------

def _edited(workdir: Path, name: str, edit) -> Path:
    """The 4-bit, block-16, zero-point MatMul (K 40, N 24: 3 blocks, B [24, 3, 8], zero points
    [24, 2]) with `edit(model, node, initializers by name)` applied."""
    model = onnx.load(quantized_file(("matmul", 4, 16, "zp"), workdir))
    node = model.graph.node[0]
    edit(model, node, {i.name: i for i in model.graph.initializer})
    path = workdir / f"bad_{name}.onnx"
    onnx.save(model, path)
    return path


def _set_attr(node, name, value):
    for attr in node.attribute:
        if attr.name == name:
            node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute(name, value))


def _replace(tensors, name, array):
    tensors[name].CopyFrom(numpy_helper.from_array(array, name))


def _add_g_idx(model, node, tensors):
    model.graph.initializer.append(numpy_helper.from_array((np.arange(40) // 16).astype(np.int32), "g_idx"))
    node.input.append("g_idx")


BAD = {
    "scales_shape": (lambda m, n, t: _replace(t, n.input[2], np.ones((24, 4), np.float32)),
                     "scales 'W_scales' has shape [24, 4], expected [24, 3] or [72]"),
    "zero_points_shape": (lambda m, n, t: _replace(t, n.input[3], np.full((24, 3), 0x88, np.uint8)),
                          "zero_points 'W_zero_points' has shape [24, 3], expected [24, 2] or [48]"),
    "float_zero_points_shape": (lambda m, n, t: _replace(t, n.input[3], np.full((24, 2), 8, np.float32)),
                                "zero_points 'W_zero_points' has shape [24, 2], expected [24, 3] or [72]"),
    "block_not_power_of_two": (lambda m, n, t: _set_attr(n, "block_size", 24),
                               "block_size=24 is not a power of two of at least 16"),
    "block_below_16": (lambda m, n, t: _set_attr(n, "block_size", 8), "block_size=8 is not a power of two"),
    "block_contradicts_b": (lambda m, n, t: _set_attr(n, "block_size", 32),
                            "B 'W_Q4' has shape [24, 3, 8], expected [24, 2, 16]", "blocks of 16, not block_size=32"),
    "bits_3": (lambda m, n, t: _set_attr(n, "bits", 3), "bits=3 is not supported (4 and 8 are)"),
    "g_idx": (_add_g_idx, "g_idx 'g_idx'", "is not supported"),
    "prepacked": (lambda m, n, t: _set_attr(n, "weight_prepacked", 1), "weight_prepacked=1"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_matmul_nbits_is_refused_by_name(name, workdir):
    edit, *fragments = BAD[name]
    with pytest.raises(MoaEdgeError) as error:
        load_graph(_edited(workdir, name, edit), input_shapes=_pinned("matmul"))
    message = str(error.value)
    assert message.count("\n") == 0 and "MatMulNBits node 'matmul_Q4'" in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_k_that_is_not_a_s_is_refused(workdir):
    """onnxruntime's shape inference for its contrib ops stops at K=48 against A's 40 (a bare
    assert): one line, though it cannot name the node."""
    path = _edited(workdir, "k_not_a", lambda m, n, t: _set_attr(n, "K", 48))
    with pytest.raises(MoaEdgeError, match=r"bad_k_not_a.onnx: ONNX shape inference failed: AssertionError$"):
        load_graph(path, input_shapes=_pinned("matmul"))


def test_two_bit_weights_are_refused_by_name(workdir):
    """onnxruntime's quantizer writes 2 bits too; the CLI exits non-zero with one line."""
    path = workdir / "two_bits.onnx"
    onnx.save(_quantized(_float_model("matmul"), 2, 16, "zp"), path)
    one_error(run_cli("convert", path, "-o", workdir / "two_bits", "--input-shape", "x=1x40"),
              "MatMulNBits node 'matmul_Q2'", "bits=2 is not supported (4 and 8 are)")
    assert not (workdir / "two_bits").exists()


def test_float16_activations_compute_in_float32(workdir):
    """A float16 model quantized by onnxruntime (A and the scales float16) runs in float32
    (passes/half.py): the Cast of x to float16 rounds, y16 is not rounded, so it is within half a
    float16 ulp of onnxruntime's y16 (which it rounds), plus the float32 bound."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Cast", ["x"], ["x16"], name="to_half", to=TensorProto.FLOAT16),
             helper.make_node("MatMul", ["x16", "W"], ["y16"], name="matmul"),
             helper.make_node("Cast", ["y16"], ["y"], name="to_float", to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 40))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 24))],
                              [numpy_helper.from_array(rng.standard_normal((40, 24)).astype(np.float16), "W")])
    model = _quantized(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), 4, 32, "sym")
    path = workdir / "half.onnx"
    onnx.save(model, path)
    board, x = require_board("host"), rng.standard_normal((1, 40)).astype(np.float32)
    report = convert(path, workdir / "half")
    got = run(build(workdir / "half", board), board, report["io"], {"x": x})[0]["y"]
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    bound = 2.0 ** -11 * np.abs(want) + _bound(model, x.astype(np.float16))
    assert np.all(np.abs(got - want) <= bound), np.abs(got - want) / bound
