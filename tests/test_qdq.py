"""QDQ models (issue 14): float models quantized by onnxruntime.quantization.quantize_static in
QuantFormat.QDQ (an MLP of MatMul + Add and Gemm, a small Conv net, nn.TransformerEncoderLayer;
per tensor and per channel; uint8 and int8 activations; int8 weights), by onnxruntime's weight-only
quantizer in QDQ form (opset 21 blocked int4/uint4 DequantizeLinear, and its per-channel form
through a Transpose), and by hand (every weight layout passes/qdq.py maps or folds), converted,
built and run on host, rpi4 and k230; and bad files refused with one error each.

Tolerances.
  (a) Against onnx's ReferenceEvaluator on the QDQ file (it implements QuantizeLinear from opset
      19 on: the files' opset 17 is read as 19, the same definition for these integer types).
      A quantize_static model's output is a DequantizeLinear's, on a grid of its scale: each
      element must be the reference's exactly, or (a rounding upstream that fell on the other
      side of a half-step in float32) one step of that scale away, in at most 1 element in 100.
      Measured: every element exact, on the three boards. A weight-only file (no rounding of
      activations) is within 2 float32 ulps of the sum of |terms| behind each output, as
      tests/test_matmul_nbits.py states it.
  (b) Against onnxruntime on the same file. It fuses the pairs into integer kernels (QLinearMatMul,
      QGemm, QLinearConv, QLinearAdd, QLinearMul, QLinearSoftmax) that requantize their int32 sums
      in fixed point: within one step of the output's scale on the MLP and the Conv net (measured
      0 steps); on the encoder layer its integer kernels are themselves up to 4 steps of the
      output's scale from the ONNX definition (2 on the test's input, 4 over ten random inputs;
      its last LayerNormalization magnifies the single
      steps of the Adds' requantization; with its QDQ fusions disabled onnxruntime gives the
      reference's values exactly), so the bound there is 4 steps. Weight-only files run with
      session.qdq_matmulnbits_accuracy_level 1 (float32 A; its default, 4, quantizes A to int8):
      the bound of (a).
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                      quantize_static)
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
import pytest

from conftest import BOARDS, one_error, require_board, run_cli
from moa_edge.errors import MoaEdgeError
from moa_edge.ops import qconv
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import check_inputs, run
from moa_edge.pipeline import convert, load_graph
import zoo

EPS = float(np.finfo(np.float32).eps)


# --- float models, quantized by onnxruntime ------------------------------------------------------

def _mlp() -> onnx.ModelProto:
    """x [4, 32] -> MatMul + Add -> Relu -> Gemm (transB, bias) -> y [4, 10], as Linear layers export."""
    rng = np.random.default_rng(1)
    weights = {"W1": rng.standard_normal((32, 24)), "b1": rng.standard_normal(24),
               "W2": rng.standard_normal((10, 24)), "b2": rng.standard_normal(10)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["xw1"], name="fc1"),
             helper.make_node("Add", ["xw1", "b1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["h"], name="relu"),
             helper.make_node("Gemm", ["h", "W2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (4, 32))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (4, 10))],
                              [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv() -> onnx.ModelProto:
    """x [1, 3, 10, 10] -> Conv 3x3 pad 1 -> Relu -> Conv 3x3 stride 2 -> mean over H, W -> Gemm -> y [1, 5]."""
    rng = np.random.default_rng(2)
    weights = {"w1": 0.3 * rng.standard_normal((8, 3, 3, 3)), "c1": 0.1 * rng.standard_normal(8),
               "w2": 0.2 * rng.standard_normal((4, 8, 3, 3)), "c2": 0.1 * rng.standard_normal(4),
               "fc": rng.standard_normal((4, 5)), "fb": rng.standard_normal(5)}
    nodes = [helper.make_node("Conv", ["x", "w1", "c1"], ["h1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "c2"], ["h2"], name="conv2", strides=[2, 2]),
             helper.make_node("ReduceMean", ["h2"], ["pooled"], name="pool", axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["pooled", "fc", "fb"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 10, 10))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 5))],
                              [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


SHAPES = {"mlp": (4, 32), "conv": (1, 3, 10, 10), "encoder": (2, 6, 32)}


def _float_file(kind: str, workdir: Path) -> Path:
    path = workdir / f"{kind}.onnx"
    if not path.exists():
        if kind == "encoder":  # nn.TransformerEncoderLayer d_model 32, 4 heads (tests/zoo.py), TorchScript export
            zoo._build_encoder_layer("torchscript", 17)(path)
        else:
            onnx.save(_mlp() if kind == "mlp" else _conv(), path)
    return path


class _Batches(CalibrationDataReader):
    """A few random batches of x, seeded: what quantize_static calibrates its activation ranges on."""

    def __init__(self, shape: tuple, seed: int):
        rng = np.random.default_rng(seed)
        self.batches = iter([{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


ACTIVATIONS = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
# (model, per_channel, activations); weights int8 (quantize_static's default: symmetric).
STATIC = [(kind, per_channel, act) for kind in ("mlp", "conv") for per_channel in (False, True) for act in ACTIVATIONS]
STATIC += [("encoder", False, "u8"), ("encoder", True, "s8")]
BOARD_STATIC = [("mlp", False, "u8"), ("mlp", True, "s8"), ("conv", True, "u8"), ("encoder", True, "s8")]
STEPS_TO_ONNXRUNTIME = {"mlp": 1, "conv": 1, "encoder": 4}  # (b) in the module docstring


def _static_id(case) -> str:
    kind, per_channel, act = case
    return f"{kind}_{'channel' if per_channel else 'tensor'}_{act}"


def static_file(case, workdir: Path) -> Path:
    kind, per_channel, act = case
    path = workdir / f"{_static_id(case)}.onnx"
    if not path.exists():
        quantize_static(str(_float_file(kind, workdir)), str(path), _Batches(SHAPES[kind], 7),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel, activation_type=ACTIVATIONS[act],
                        weight_type=QuantType.QInt8)
    return path


# (model, block, symmetric, channel-wise): onnxruntime's weight-only 4-bit quantizer writing QDQ.
WEIGHT_ONLY = [("matmul", 16, True, False), ("matmul", 16, False, False), ("matmul", 32, True, True),
               ("matmul", 32, False, True), ("mlp", 32, False, False), ("mlp", 16, True, True)]
BOARD_WEIGHT_ONLY = [("matmul", 16, False, False), ("mlp", 32, False, False), ("mlp", 16, True, True)]
WEIGHT_ONLY_SHAPES = {"matmul": (1, 40), "mlp": (2, 9, 64)}


def _weight_only_id(case) -> str:
    kind, block, symmetric, channel = case
    return f"{kind}_int4_{'channel' if channel else f'b{block}'}_{'sym' if symmetric else 'zp'}"


def _weight_only_float(kind: str) -> onnx.ModelProto:
    """y = x W (K 40: blocks of 16 and 32 leave a short last one), or the MLP 64 -> 48 -> 20 with biases."""
    rng = np.random.default_rng(3)
    if kind == "matmul":
        weights = {"W": rng.standard_normal((40, 24))}
        nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")]
        y_shape = (1, 24)
    else:
        weights = {"W1": rng.standard_normal((64, 48)), "b1": rng.standard_normal(48),
                   "W2": rng.standard_normal((48, 20)), "b2": rng.standard_normal(20)}
        nodes = [helper.make_node("MatMul", ["x", "W1"], ["xw1"], name="fc1"),
                 helper.make_node("Add", ["xw1", "b1"], ["h1"], name="fc1_bias"),
                 helper.make_node("Relu", ["h1"], ["h"], name="relu"),
                 helper.make_node("MatMul", ["h", "W2"], ["hw2"], name="fc2"),
                 helper.make_node("Add", ["hw2", "b2"], ["y"], name="fc2_bias")]
        y_shape = (2, 9, 20)
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          WEIGHT_ONLY_SHAPES[kind])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def weight_only_file(case, workdir: Path) -> Path:
    path = workdir / f"{_weight_only_id(case)}.onnx"
    if not path.exists():
        kind, block, symmetric, channel = case
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, quant_format=QuantFormat.QDQ,
                                              channel_wised_quantize=channel)
        quantizer = MatMulNBitsQuantizer(_weight_only_float(kind), algo_config=config)
        quantizer.process()
        onnx.save(quantizer.model.model, path)
    return path


# --- references -----------------------------------------------------------------------------------

def _reference(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """onnx's ReferenceEvaluator, the opset read as at least 19 (module docstring)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for opset in copy.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 19)
    return ReferenceEvaluator(copy).run(None, feeds)


def _onnxruntime(path: Path, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _output_step(model: onnx.ModelProto) -> float:
    """The scale of the DequantizeLinear that makes the graph's output: one step of its grid."""
    dq = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    assert dq.op_type == "DequantizeLinear"
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return float(init[dq.input[1]].reshape(()))


def _spread(values: np.ndarray, shape: tuple, axis: int | None, block: int) -> np.ndarray:
    """A scale or zero point broadcast to x's shape as the spec reads it (blocks repeated, the last cut short)."""
    if axis is None or values.size == 1:
        return np.broadcast_to(values.reshape(()), shape)
    if not block:
        return np.broadcast_to(values.reshape([d if k == axis else 1 for k, d in enumerate(shape)]), shape)
    return np.repeat(values, block, axis=axis).take(range(shape[axis]), axis=axis)


def _dq_parts(model: onnx.ModelProto, dq: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
    """The spec's (q - zero_point) scale in float64 and |scale q| + |scale zero_point| (the size of the
    two terms each weight is made of), in the DequantizeLinear's shape. The kernel adds up the terms
    of the integers it stores (passes/qdq.py): uint8 with several zero points as int8 q - 128 with
    offsets -(zero_point - 128) scale, int4 with one zero point as uint4 q + 8 with zero_point + 8;
    their terms are those."""
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
    q = init[dq.input[0]].astype(np.float64)
    axis, block = attrs.get("axis", 1) % q.ndim, attrs.get("block_size", 0)
    scale = _spread(init[dq.input[1]].astype(np.float64), q.shape, axis, block)
    zero = _spread(init[dq.input[2]].astype(np.float64), q.shape, axis, block) \
        if len(dq.input) > 2 and dq.input[2] else np.zeros(q.shape)
    uniform, kind = bool(np.all(zero == zero.flat[0])), init[dq.input[0]].dtype.name
    shift = 128 if kind == "uint8" and not uniform else -8 if kind == "int4" and uniform else 0
    return (q - zero) * scale, np.abs(scale * (q - shift)) + np.abs(scale * (zero - shift))


def _weight_parts(model: onnx.ModelProto, matmul: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
    """W and its |terms| (K x N) behind a MatMul's or Gemm's B: its DequantizeLinear's, through a
    Transpose or transB."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node, transposed = producers[matmul.input[1]], False
    if node.op_type == "Transpose":
        node, transposed = producers[node.input[0]], True
    if matmul.op_type == "Gemm" and any(a.name == "transB" and a.i for a in matmul.attribute):
        transposed = not transposed
    w, terms = _dq_parts(model, node)
    return (w.T, terms.T) if transposed else (w, terms)


def _weight_only_bound(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """2 ulps of the sum of |terms| behind each output; through the MLP, layer 1's bound carried by |W2|."""
    init = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer
            if i.data_type == TensorProto.FLOAT}
    layers = [_weight_parts(model, n) for n in model.graph.node if n.op_type == "MatMul"]
    x = x.astype(np.float64)
    if len(layers) == 1:
        return 2 * EPS * (np.abs(x) @ layers[0][1])
    (w1, t1), (w2, t2) = layers
    h = np.maximum(x @ w1 + init["b1"], 0)
    h_size = np.abs(x) @ t1 + np.abs(init["b1"])
    return 2 * EPS * (np.abs(h) @ t2 + h_size @ np.abs(w2) + np.abs(init["b2"]))


# --- building and running -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("qdq")


_reports: dict[Path, dict] = {}


def _run_c(path: Path, project: Path, board_name: str, feeds: dict) -> dict[str, np.ndarray]:
    """Convert (once per project), build for the board and run on `feeds`."""
    board = require_board(board_name)
    if project not in _reports:
        _reports[project] = convert(path, project)
    io = _reports[project]["io"]
    outputs, _ = run(build(project, board), board, io, check_inputs(io, feeds, path.name))
    return outputs


def _feeds(shape: tuple, seed: int = 11) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


# --- quantize_static ---------------------------------------------------------------------------------

def test_the_quantizer_writes_what_the_cases_need(workdir):
    """Every file pairs its activations (QuantizeLinear -> DequantizeLinear, uint8 or int8) and
    dequantizes int8 weights: one scale per tensor, or one per output channel (axis 1 of a MatMul's
    [K, N], axis 0 of a transB Gemm's [N, K] and of a Conv's); the weight-only files hold opset-21
    blocked int4 (symmetric) or uint4 (with zero points) weights."""
    for case in STATIC:
        kind, per_channel, act = case
        model = onnx.load(static_file(case, workdir))
        init = {i.name: i for i in model.graph.initializer}
        quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert quantize and all(init[n.input[2]].data_type == (TensorProto.UINT8 if act == "u8" else TensorProto.INT8)
                                for n in quantize)
        weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in init and init[n.input[0]].data_type == TensorProto.INT8]
        assert weights
        assert any(len(init[n.input[1]].dims) == int(per_channel) for n in weights)
    for case in WEIGHT_ONLY:
        kind, block, symmetric, channel = case
        model = onnx.load(weight_only_file(case, workdir))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 21
        init = {i.name: i for i in model.graph.initializer}
        for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear"]:
            attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
            assert init[dq.input[0]].data_type == (TensorProto.INT4 if symmetric else TensorProto.UINT4)
            assert attrs["block_size"] == (init[dq.input[0]].dims[attrs["axis"]] if channel else block)
        assert any(n.op_type == "Transpose" for n in model.graph.node) == (channel and symmetric)


@pytest.mark.parametrize("case", [c for c in STATIC if c[0] != "encoder"] + [STATIC[-1]], ids=_static_id)
def test_static_model_lowers_onto_quantized_kernels(case, workdir):
    """No QuantizeLinear or DequantizeLinear is left: MatMul and Gemm read their int8 weights as
    MoaQGemm (symmetric: the file's integers, no offset), the pairs are MoaFakeQuantize (some fused
    with their neighbours), Conv reads its int8 weight as MoaQConv (the file's integers, a scale
    per output channel: the spec's values once dequantized), and biases are float32 constants."""
    path = static_file(case, workdir)
    graph = load_graph(path)
    ops = [n.op for n in graph.nodes]
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(ops)
    gemms = [n for n in graph.nodes if n.op == "MoaQGemm"]
    assert len(gemms) == {"mlp": 2, "conv": 1, "encoder": 4}[case[0]]
    assert all(n.attrs["qtype"] == "i8" and not n.inputs[3] and n.attrs["zero"] == 0 for n in gemms)
    fused = [m.op for n in graph.nodes if n.op == "MoaElementwise" for m in n.attrs["body"].nodes]
    assert "MoaFakeQuantize" in ops + fused
    assert "int8" in graph.weight_bytes_by_type()
    if case[0] == "conv":
        model = onnx.load(path)
        convs = [n for n in graph.nodes if n.op == "MoaQConv"]
        assert len(convs) == 2 and not [n for n in graph.nodes if n.op == "Conv"]
        for conv in convs:
            source = next(n for n in model.graph.node if n.name == conv.name)
            dq_nodes = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
            for k, name in ((1, source.input[1]), (4, source.input[2])):  # the weight, the bias
                dq = dq_nodes[name]
                inits = [i for i in model.graph.initializer if i.name in dq.input]
                out = helper.make_tensor_value_info(dq.output[0], TensorProto.FLOAT, None)
                single = helper.make_model(helper.make_graph([dq], "dq", [], [out], inits),
                                           opset_imports=[helper.make_opsetid("", 19)])
                (spec,) = ReferenceEvaluator(single).run(None, {})
                if k == 1:  # stored int8, read back as the C reads it: scale (q - zero) in float32
                    assert graph.tensors[conv.inputs[1]].dtype == "int8"
                    w = qconv.dequantize(graph.tensors[conv.inputs[1]].data, graph.tensors[conv.inputs[2]].data, None,
                                         "i8", conv.attrs["block"], conv.attrs["w_shape"], conv.attrs["zero"])
                    np.testing.assert_array_equal(w.numpy().astype(np.float32), spec)  # exactly the spec's float32
                else:
                    np.testing.assert_array_equal(graph.tensors[conv.inputs[4]].data, spec)


def _against_reference(got: np.ndarray, want: np.ndarray, step: float) -> None:
    """(a): the reference's grid value, or one step away in at most 1 element in 100."""
    off = np.abs(got.astype(np.float64) - want)
    assert off.max() <= step * (1 + 1e-6), f"{off.max() / step} steps from the reference"
    assert np.count_nonzero(off) <= max(1, off.size // 100), f"{np.count_nonzero(off)} of {off.size} differ"


RUNS = [(case, board) for board in BOARDS for case in (STATIC if board == "host" else BOARD_STATIC)]


@pytest.mark.board
@pytest.mark.parametrize("case, board_name", RUNS, ids=[f"{_static_id(c)}-{b}" for c, b in RUNS])
def test_static_model_matches_reference_and_onnxruntime(case, board_name, workdir):
    path = static_file(case, workdir)
    model = onnx.load(path)
    feeds = _feeds(SHAPES[case[0]])
    got = _run_c(path, workdir / f"{_static_id(case)}-{board_name}", board_name, feeds)["y"]
    step = _output_step(model)
    _against_reference(got, _reference(model, feeds)[0], step)
    off = np.abs(got.astype(np.float64) - _onnxruntime(path, feeds)[0]).max() / step
    assert off <= STEPS_TO_ONNXRUNTIME[case[0]] * (1 + 1e-6), f"{off} steps from onnxruntime"


# --- onnxruntime's weight-only quantizer, QDQ form ------------------------------------------------

@pytest.mark.parametrize("case", WEIGHT_ONLY, ids=_weight_only_id)
def test_weight_only_file_is_4_bit_gemms(case, workdir):
    """Each blocked int4/uint4 DequantizeLinear -> MatMul (and the per-channel one through a
    Transpose) is a MoaQGemm over the 4-bit integers: int4 as q + 8 with the kernel's zero 8, uint4
    with its zero points as offsets; the MLP's Adds are the GEMMs' C."""
    kind, block, symmetric, channel = case
    graph = load_graph(weight_only_file(case, workdir))
    assert [n.op for n in graph.nodes] == (["MoaQGemm"] if kind == "matmul" else ["MoaQGemm", "Relu", "MoaQGemm"])
    for gemm in [n for n in graph.nodes if n.op == "MoaQGemm"]:
        assert gemm.attrs["qtype"] == "u4"
        assert gemm.attrs["block"] == (gemm.attrs["k"] if channel else block)
        assert (gemm.attrs["zero"], bool(gemm.inputs[3])) == ((8, False) if symmetric else (0, True))
        assert len(gemm.inputs) == (5 if kind == "mlp" else 4)
    assert set(graph.weight_bytes_by_type()) == {"int4", "float32"}


@pytest.mark.board
@pytest.mark.parametrize("case, board_name", [(c, b) for b in BOARDS for c in (WEIGHT_ONLY if b == "host" else
                                                                                BOARD_WEIGHT_ONLY)],
                         ids=lambda x: x if isinstance(x, str) else _weight_only_id(x))
def test_weight_only_file_matches_reference_and_onnxruntime(case, board_name, workdir):
    path = weight_only_file(case, workdir)
    model = onnx.load(path)
    feeds = _feeds(WEIGHT_ONLY_SHAPES[case[0]])
    got = _run_c(path, workdir / f"{_weight_only_id(case)}-{board_name}", board_name, feeds)["y"]
    bound = _weight_only_bound(model, feeds["x"]) + 1e-30
    np.testing.assert_array_less(np.abs(got - _reference(model, feeds)[0]), bound)
    np.testing.assert_array_less(np.abs(got - _onnxruntime(path, feeds)[0]), bound)


# --- every weight layout, by hand (opset 21) --------------------------------------------------------

# name: (reader, quantized type, K, N, granularity, zero points, the form passes/qdq.py must give).
# reader: "matmul" (DequantizeLinear [K, N] -> MatMul), "gemm" ([N, K] -> Gemm transB=1), "transpose"
# ([N, K] -> Transpose -> MatMul). granularity: ("tensor",), ("axis", a), ("block", a, B), in the
# DequantizeLinear's own axes. zero points: None (absent), "one" (one value), "each" (varying).
# form: (qtype, kernel zero, offsets) of the MoaQGemm, or "float" (folded: MoaGemm over float32).
WEIGHT_CASES = {
    "int8_tensor_zp": ("matmul", "int8", 24, 20, ("tensor",), "one", ("i8", 3, False)),
    "uint8_tensor_zp": ("matmul", "uint8", 24, 20, ("tensor",), "one", ("i8", 3, False)),
    "uint8_channel_fits": ("matmul", "uint8", 24, 20, ("axis", 1), "near", ("i8", 0, False)),
    "uint8_channel_offsets": ("matmul", "uint8", 24, 20, ("axis", 1), "each", ("i8", 0, True)),
    "int8_gemm_channel": ("gemm", "int8", 24, 20, ("axis", 0), None, ("i8", 0, False)),
    "int8_blocked_k": ("matmul", "int8", 40, 20, ("block", 0, 16), "each", ("i8", 0, True)),
    "uint4_blocked_zp": ("matmul", "uint4", 40, 20, ("block", 0, 16), "each", ("u4", 0, True)),
    "int4_blocked": ("matmul", "int4", 40, 20, ("block", 0, 8), None, ("u4", 8, False)),
    "int4_odd_block": ("matmul", "int4", 23, 20, ("block", 0, 5), "each", ("i8", 0, False)),
    "uint4_tensor_odd_k": ("matmul", "uint4", 23, 20, ("tensor",), "one", ("u4", 7, False)),
    "int4_blocked_zp": ("matmul", "int4", 40, 20, ("block", 0, 16), "each", ("i8", 0, False)),
    "uint4_gemm_blocked": ("gemm", "uint4", 40, 20, ("block", 1, 16), "each", ("u4", 0, True)),
    "uint4_transpose_channel": ("transpose", "uint4", 24, 20, ("axis", 0), "each", ("u4", 0, True)),
    "int8_per_row": ("matmul", "int8", 24, 20, ("axis", 0), None, "float"),
    "int8_blocked_n": ("matmul", "int8", 24, 20, ("block", 1, 4), "each", "float"),
    "int16_tensor": ("matmul", "int16", 24, 20, ("tensor",), "one", "float"),
}
_TYPES = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int4": TensorProto.INT4,
          "uint4": TensorProto.UINT4, "int16": TensorProto.INT16}
_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int4": (-8, 7), "uint4": (0, 15), "int16": (-32768, 32767)}


def _weight_case(name: str, rng) -> tuple[list, list, onnx.NodeProto]:
    """The initializers, nodes and the input of one case: x_NAME [rows_NAME, K] -> y_NAME."""
    reader, qtype, k, n, granularity, zeros, _ = WEIGHT_CASES[name]
    shape = (k, n) if reader == "matmul" else (n, k)
    low, high = _RANGE[qtype]
    if granularity[0] == "tensor":
        params_shape, attrs = (), {}
    elif granularity[0] == "axis":
        params_shape, attrs = (shape[granularity[1]],), {"axis": granularity[1]}
    else:
        _, axis, block = granularity
        params_shape = tuple(-(-d // block) if a == axis else d for a, d in enumerate(shape))
        attrs = {"axis": axis, "block_size": block}
    mid = (low + high) // 2 if qtype.startswith("u") else 0
    if zeros == "one":
        zero = np.full(params_shape, 3 if qtype in ("int8", "int16") else (131 if qtype == "uint8" else 7))
    elif zeros in ("each", "near"):
        spread = 20 if qtype in ("int8", "uint8") else 3
        zero = rng.integers(mid - spread, mid + spread + 1, params_shape)
    q = rng.integers(low, high + 1, shape)
    if zeros == "near":  # within 100 of each column's zero point: q - zero_point fits int8
        q = np.clip(_spread(zero, shape, 1, 0) + rng.integers(-100, 101, shape), low, high)
    scale = (0.01 + 0.05 * rng.random(params_shape)).astype(np.float32)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(_TYPES[qtype])
    inits = [numpy_helper.from_array(q.astype(dtype), f"q_{name}"), numpy_helper.from_array(scale, f"s_{name}")]
    inputs = [f"q_{name}", f"s_{name}"]
    if zeros is not None:
        inits.append(numpy_helper.from_array(zero.astype(dtype), f"z_{name}"))
        inputs.append(f"z_{name}")
    nodes = [helper.make_node("DequantizeLinear", inputs, [f"w_{name}"], name=f"dq_{name}", **attrs)]
    weight = f"w_{name}"
    if reader == "transpose":
        nodes.append(helper.make_node("Transpose", [weight], [f"wt_{name}"], name=f"t_{name}", perm=[1, 0]))
        weight = f"wt_{name}"
    op = "Gemm" if reader == "gemm" else "MatMul"
    nodes.append(helper.make_node(op, [f"x_{name}", weight], [f"y_{name}"], name=name,
                                  **({"transB": 1} if reader == "gemm" else {})))
    return inits, nodes, helper.make_tensor_value_info(f"x_{name}", TensorProto.FLOAT, (f"rows_{name}", k))


def _weight_table_model() -> onnx.ModelProto:
    """Every case of WEIGHT_CASES side by side, and one DequantizeLinear read by two MatMuls."""
    rng = np.random.default_rng(5)
    inits, nodes, inputs, outputs = [], [], [], []
    for name in WEIGHT_CASES:
        i, n, x = _weight_case(name, rng)
        inits += i
        nodes += n
        inputs.append(x)
        outputs.append(helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT,
                                                     (f"rows_{name}", WEIGHT_CASES[name][3])))
    # The first case's weight read again by a second MatMul: one stored copy.
    nodes.append(helper.make_node("MatMul", ["x_shared", "w_int8_tensor_zp"], ["y_shared"], name="shared"))
    inputs.append(helper.make_tensor_value_info("x_shared", TensorProto.FLOAT, ("rows_shared", 24)))
    outputs.append(helper.make_tensor_value_info("y_shared", TensorProto.FLOAT, ("rows_shared", 20)))
    graph = helper.make_graph(nodes, "weights", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def weight_table_file(workdir: Path) -> Path:
    path = workdir / "weight_table.onnx"
    if not path.exists():
        onnx.save(_weight_table_model(), path)
    return path


def _k_of(name: str) -> int:
    return 24 if name == "shared" else WEIGHT_CASES[name][2]


def _rows(rows) -> dict[str, tuple]:
    return {f"x_{name}": (rows(_k_of(name)), _k_of(name)) for name in [*WEIGHT_CASES, "shared"]}


def test_weight_layouts_take_the_kernel_forms(workdir):
    """Each layout gets the form the module docstring of passes/qdq.py states; the two readers of
    one weight share its stored integers."""
    graph = load_graph(weight_table_file(workdir), input_shapes=_rows(lambda k: 3))
    by_name = {n.name: n for n in graph.nodes}
    for name, case in WEIGHT_CASES.items():
        node, form = by_name[name], case[-1]
        if form == "float":
            assert node.op == "MoaGemm", name
            continue
        qtype, zero, offsets = form
        assert node.op == "MoaQGemm", name
        assert (node.attrs["qtype"], node.attrs["zero"], bool(node.inputs[3])) == (qtype, zero, offsets), name
    assert by_name["shared"].inputs[1:4] == by_name["int8_tensor_zp"].inputs[1:4]


def test_weight_layouts_read_as_the_spec_reads_them(workdir):
    """x = I: each output is W. The float64 evaluator of our MoaQGemm (ops/qmatmul.dequantize of the
    panels) rounded to float32 is the spec's (q - zero_point) scale bit for bit where the form has no
    offset, and within an ulp of the larger term where it does (the offset's one rounding)."""
    path = weight_table_file(workdir)
    graph = load_graph(path, input_shapes=_rows(lambda k: k))
    feeds = {f"x_{name}": np.eye(_k_of(name), dtype=np.float32) for name in [*WEIGHT_CASES, "shared"]}
    ours = run_reference(graph, feeds)
    model = onnx.load(path)
    names = [o.name for o in model.graph.output]
    spec = dict(zip(names, _reference(model, feeds)))
    for name in [*WEIGHT_CASES, "shared"]:
        form = WEIGHT_CASES["int8_tensor_zp" if name == "shared" else name][-1]
        got, want = ours[f"y_{name}"], spec[f"y_{name}"]
        if form == "float" or not form[2]:
            np.testing.assert_array_equal(got.astype(np.float32), want, err_msg=name)
        else:
            _, terms = _weight_parts(model, next(n for n in model.graph.node if n.name == name))
            np.testing.assert_array_less(np.abs(got - want), EPS * terms + 1e-30, err_msg=name)


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
def test_weight_layouts_match_reference_and_onnxruntime(board_name, workdir):
    """Three rows of random x through every layout on each board: within 2 ulps of the sum of
    |terms| of the reference evaluator and of onnxruntime (float32 A for the 4-bit blocks)."""
    path = weight_table_file(workdir)
    rng = np.random.default_rng(12)
    feeds = {f"x_{name}": rng.standard_normal((3, _k_of(name))).astype(np.float32)
             for name in [*WEIGHT_CASES, "shared"]}
    board = require_board(board_name)
    project = workdir / f"weight_table-{board_name}"
    if project not in _reports:
        _reports[project] = convert(path, project, input_shapes=_rows(lambda k: 3))
    io = _reports[project]["io"]
    got, _ = run(build(project, board), board, io, check_inputs(io, feeds, "weight table"))
    model = onnx.load(path)
    names = [o.name for o in model.graph.output]
    spec = dict(zip(names, _reference(model, feeds)))
    theirs = dict(zip(names, _onnxruntime(path, feeds)))
    for name in [*WEIGHT_CASES, "shared"]:
        _, terms = _weight_parts(model, next(n for n in model.graph.node if n.name == name))
        bound = 2 * EPS * (np.abs(feeds[f"x_{name}"]).astype(np.float64) @ terms) + 1e-30
        np.testing.assert_array_less(np.abs(got[f"y_{name}"] - spec[f"y_{name}"]), bound, err_msg=name)
        np.testing.assert_array_less(np.abs(got[f"y_{name}"] - theirs[f"y_{name}"]), bound, err_msg=name)


# --- the rounding of a QuantizeLinear -> DequantizeLinear pair ---------------------------------------

# name: (quantized type, scale, zero point or None): one pair each, x_NAME [64] -> y_NAME.
PAIRS = {"uint8": ("uint8", 0.25, 100), "int8": ("int8", 0.25, -5), "uint16": ("uint16", 0.25, 30000),
         "int16": ("int16", 0.25, 7), "uint4": ("uint4", 0.25, 3), "int4": ("int4", 0.25, -2),
         "uint8_default": ("uint8", 0.25, None), "int8_tenth": ("int8", 0.1, 3)}
_PAIR_TYPES = {**_TYPES, "uint16": TensorProto.UINT16}
_PAIR_RANGE = {**_RANGE, "uint16": (0, 65535)}


def _pair_inputs(rng) -> dict[str, np.ndarray]:
    """Ties (x / scale exactly k + 1/2, which round to the even k), values past both ends of the
    range (saturation; x / scale within int32, where the reference evaluator's cast is defined),
    zeros of both signs and random values over the range."""
    feeds = {}
    for name, (qtype, scale, zero) in PAIRS.items():
        low, high = _PAIR_RANGE[qtype]
        zero = zero or 0
        ties = (np.arange(-8, 8) + 0.5 + rng.integers(low - zero, high - zero - 8, 16)) * scale
        past = np.array([(low - zero - 3.5) * scale, (high - zero + 2.5) * scale, -1e6, 1e6, 0.0, -0.0,
                         (low - zero - 0.5) * scale, (high - zero + 0.5) * scale])
        spread = rng.uniform((low - zero - 2) * scale, (high - zero + 2) * scale, 40)
        feeds[f"x_{name}"] = np.concatenate([ties, past, spread]).astype(np.float32)
    feeds["x_axis"] = rng.uniform(-3, 3, (2, 3, 5)).astype(np.float32)
    feeds["x_chain"] = rng.uniform(-3, 3, (64,)).astype(np.float32)
    return feeds


def _pair(x: str, y: str, name: str, qtype: str, scale, zero, inits: list, **attrs) -> list:
    scale = np.asarray(scale, np.float32)
    inits.append(numpy_helper.from_array(scale, f"s_{name}"))
    inputs = [x, f"s_{name}"]
    if zero is not None:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(_PAIR_TYPES[qtype])
        inits.append(numpy_helper.from_array(np.asarray(zero).astype(dtype), f"z_{name}"))
        inputs.append(f"z_{name}")
    return [helper.make_node("QuantizeLinear", inputs, [f"q_{name}"], name=f"quantize_{name}", **attrs),
            helper.make_node("DequantizeLinear", [f"q_{name}", *inputs[1:]], [y], name=f"dequantize_{name}", **attrs)]


def _pairs_model() -> onnx.ModelProto:
    """Every PAIRS entry; a per-axis pair (axis 1 of [2, 3, 5]); and x -> pair -> Relu -> pair
    -> y, which fuses into one loop."""
    inits, nodes, inputs, outputs = [], [], [], []
    for name, (qtype, scale, zero) in PAIRS.items():
        nodes += _pair(f"x_{name}", f"y_{name}", name, qtype, scale, zero, inits)
        inputs.append(helper.make_tensor_value_info(f"x_{name}", TensorProto.FLOAT, (64,)))
        outputs.append(helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, (64,)))
    nodes += _pair("x_axis", "y_axis", "axis", "int8", [0.05, 0.125, 0.3], [-3, 0, 9], inits, axis=1)
    nodes += _pair("x_chain", "a_chain", "chain_in", "uint8", 0.03, 128, inits)
    nodes.append(helper.make_node("Relu", ["a_chain"], ["r_chain"], name="relu_chain"))
    nodes += _pair("r_chain", "y_chain", "chain_out", "uint8", 0.02, 0, inits)
    inputs += [helper.make_tensor_value_info("x_axis", TensorProto.FLOAT, (2, 3, 5)),
               helper.make_tensor_value_info("x_chain", TensorProto.FLOAT, (64,))]
    outputs += [helper.make_tensor_value_info("y_axis", TensorProto.FLOAT, (2, 3, 5)),
                helper.make_tensor_value_info("y_chain", TensorProto.FLOAT, (64,))]
    return helper.make_model(helper.make_graph(nodes, "pairs", inputs, outputs, inits),
                             opset_imports=[helper.make_opsetid("", 21)])


def pairs_file(workdir: Path) -> Path:
    path = workdir / "pairs.onnx"
    if not path.exists():
        onnx.save(_pairs_model(), path)
    return path


def test_pairs_are_one_rounding_each(workdir):
    """Each pair is one MoaFakeQuantize (per tensor: the scale and range in its attributes; per
    axis: three constants [1, 3, 1]); the chain's pairs and Relu are one loop."""
    graph = load_graph(pairs_file(workdir))
    by_name = {n.name: n for n in graph.nodes}
    for name in PAIRS:
        node = by_name[f"dequantize_{name}"]
        assert node.op == "MoaFakeQuantize" and node.inputs == [f"x_{name}"]
    assert [graph.tensors[i].shape for i in by_name["dequantize_axis"].inputs[1:]] == [(1, 3, 1)] * 3
    chain = by_name["dequantize_chain_out"]
    assert chain.op == "MoaElementwise"
    assert [m.op for m in chain.attrs["body"].nodes] == ["MoaFakeQuantize", "Relu", "MoaFakeQuantize"]
    # The float64 evaluator of the graph agrees with the spec too (it is what inspect and --validate use).
    feeds = _pair_inputs(np.random.default_rng(4))
    spec = dict(zip([o.name for o in _pairs_model().graph.output], _reference(_pairs_model(), feeds)))
    for name, got in run_reference(graph, feeds).items():
        np.testing.assert_array_equal(got.astype(np.float32), spec[name], err_msg=name)


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
def test_pairs_match_the_reference_bit_for_bit(board_name, workdir):
    """Ties round to even, both ends saturate, zero points shift the range: every output is the
    reference evaluator's float32, bit for bit, on every board."""
    path = pairs_file(workdir)
    feeds = _pair_inputs(np.random.default_rng(4))
    got = _run_c(path, workdir / f"pairs-{board_name}", board_name, feeds)
    model = onnx.load(path)
    spec = dict(zip([o.name for o in model.graph.output], _reference(model, feeds)))
    for name, want in spec.items():
        np.testing.assert_array_equal(got[name].view(np.uint32), want.view(np.uint32), err_msg=name)


# --- bad input: one error each, naming the node ------------------------------------------------------

def _bad_weight_model(q_shape=(8, 10), scale=None, zero=None, zero_type=np.int8, **attrs) -> onnx.ModelProto:
    """x [2, 8] -> MatMul with B = DequantizeLinear 'dq' (q int8 [8, 10]; per column unless told)."""
    rng = np.random.default_rng(0)
    attrs = attrs or {"axis": 1}
    scale = np.full(10, 0.1, np.float32) if scale is None else scale
    zero = np.zeros(scale.shape, zero_type) if zero is None else zero
    inits = [numpy_helper.from_array(rng.integers(-100, 100, q_shape).astype(np.int8), "q"),
             numpy_helper.from_array(scale.astype(np.float32), "s"), numpy_helper.from_array(zero, "zp")]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["w"], name="dq", **attrs),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 8))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2, 10))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _bad_pair_model(dq_scale=0.1, reader="DequantizeLinear", block=0, qtype=TensorProto.UINT8,
                    scale_input=False) -> onnx.ModelProto:
    """x [2, 8] -> QuantizeLinear 'quantize' -> DequantizeLinear 'dequantize' (or a Cast) -> y; with
    scale_input, QuantizeLinear's scale s is a graph input."""
    scale_shape = (2, 2) if block else ()
    zero = numpy_helper.from_array(np.zeros(scale_shape, onnx.helper.tensor_dtype_to_np_dtype(qtype)), "zp")
    inits = [numpy_helper.from_array(np.full(scale_shape, 0.1, np.float32), "s"), zero,
             numpy_helper.from_array(np.full(scale_shape, dq_scale, np.float32), "s2")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 8))]
    if scale_input:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, scale_shape))
        inits = inits[1:]
    attrs = {"axis": 1, "block_size": block} if block else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quantize", **attrs)]
    if reader == "DequantizeLinear":
        nodes.append(helper.make_node("DequantizeLinear", ["q", "s2", "zp"], ["y"], name="dequantize", **attrs))
    else:
        nodes.append(helper.make_node("Cast", ["q"], ["y"], name="cast", to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "pair", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2, 8))],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


BAD = {
    "scale_length": (lambda: _bad_weight_model(scale=np.full(7, 0.1)), "DequantizeLinear node 'dq'",
                     "scale 's' has shape [7], expected [10] (one per element of axis 1 of x [8, 10])"),
    "zero_point_shape": (lambda: _bad_weight_model(zero=np.zeros(9, np.int8)), "DequantizeLinear node 'dq'",
                         "zero point 'zp' has shape [9], but scale 's' has [10]"),
    "block_scale_rows": (lambda: _bad_weight_model(scale=np.full((3, 10), 0.1), axis=0, block_size=4),
                         "DequantizeLinear node 'dq'", "scale 's' has shape [3, 10], expected [2, 10] for x [8, 10] "
                                                       "in blocks of 4 along axis 0"),
    "block_scale_rank": (lambda: _bad_weight_model(scale=np.full(10, 0.1), axis=0, block_size=4),
                         "DequantizeLinear node 'dq'", "expected [2, 10] for x [8, 10] in blocks of 4"),
    "block_larger_than_needed": (lambda: _bad_weight_model(scale=np.full((2, 10), 0.1), axis=0, block_size=8),
                                 "DequantizeLinear node 'dq'", "expected [1, 10] for x [8, 10] in blocks of 8"),
    "negative_block": (lambda: _bad_weight_model(scale=np.full((2, 10), 0.1), axis=0, block_size=-4),
                       "DequantizeLinear node 'dq'", "block_size=-4 is negative"),
    "scale_2d_without_block": (lambda: _bad_weight_model(scale=np.full((1, 10), 0.1)), "DequantizeLinear node 'dq'",
                               "without block_size it must be a scalar (per tensor) or 1-D (per axis)"),
    "axis_out_of_range": (lambda: _bad_weight_model(axis=2), "DequantizeLinear node 'dq'",
                          "axis=2 is outside [-2, 1]"),
    "zero_point_type": (lambda: _bad_weight_model(zero_type=np.uint8), "node name: dq",
                        "x_zero_point has inconsistent type tensor(uint8)"),
    "per_axis_scale_at_run_time": (lambda: _bad_pair_model(block=4, scale_input=True), "QuantizeLinear node 'quantize'",
                                   "its scale and zero point must be constants (initializers) unless one value each"),
}

# Pairs that are no MoaFakeQuantize: the QuantizeLinear's integers themselves, then what reads them.
UNPAIRED = {"scales_differ": dict(dq_scale=0.2), "integers_read_otherwise": dict(reader="Cast"),
            "blocked": dict(block=4), "float8": dict(qtype=TensorProto.FLOAT8E4M3FN),
            "int4": dict(qtype=TensorProto.INT4), "scale_at_run_time": dict(scale_input=True)}


@pytest.mark.parametrize("name", list(UNPAIRED))
def test_unpaired_quantize_and_dequantize_compute_the_spec(name, workdir):
    """Each node on its own as element-wise ops, against onnx's reference evaluator."""
    model = _bad_pair_model(**UNPAIRED[name])
    path = workdir / f"unpaired_{name}.onnx"
    onnx.save(model, path)
    feeds = {"x": (np.random.default_rng(5).standard_normal((2, 8)) * 3).astype(np.float32)}
    if name == "scale_at_run_time":
        feeds["s"] = np.array(0.1, np.float32)
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    got = _run_c(path, workdir / f"unpaired_{name}", "host", feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", list(BAD))
def test_bad_qdq_is_refused_by_name(name, workdir):
    build_model, *fragments = BAD[name]
    path = workdir / f"bad_{name}.onnx"
    onnx.save(build_model(), path)
    with pytest.raises(MoaEdgeError) as error:
        load_graph(path)
    message = str(error.value)
    assert message.count("\n") == 0, message
    for fragment in fragments:
        assert fragment in message, message


def _qoperator(kind: str, workdir: Path) -> Path:
    """The same float models quantized to the QOperator format (quantize_static) or by
    quantize_dynamic, whose Conv is ConvInteger."""
    source, target = _float_file("conv" if kind != "QLinearMatMul" else "mlp", workdir), workdir / f"{kind}.onnx"
    if kind == "ConvInteger":
        quantize_dynamic(str(source), str(target))
    else:
        quantize_static(str(source), str(target), _Batches(SHAPES["conv" if kind == "QLinearConv" else "mlp"], 7),
                        quant_format=QuantFormat.QOperator)
    return target


@pytest.mark.parametrize("kind", ["QLinearConv", "QLinearMatMul", "ConvInteger"])
def test_quantized_operators_are_refused_by_name(kind, workdir):
    """The QOperator format's integer kernels round as onnxruntime's fixed point does, not as the
    float kernels: refused by node name, pointing at the QDQ format. Through the CLI: one line,
    non-zero exit, no project."""
    path = _qoperator(kind, workdir)
    node = next(n for n in onnx.load(path).graph.node if n.op_type == kind)
    one_error(run_cli("convert", path, "-o", workdir / f"{kind}_project"), f"{kind} node {node.name!r}",
              "is a quantized operator (the QOperator format)", "QuantFormat.QDQ")
    assert not (workdir / f"{kind}_project").exists()
