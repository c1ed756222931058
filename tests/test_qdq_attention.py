"""Attention over int8 K and V of QDQ files (issue 14; passes/qdq_attention.py).

The file: nn.TransformerEncoderLayer (d_model 32, 4 heads; tests/zoo.py, TorchScript export)
quantized by onnxruntime.quantization.quantize_static in QuantFormat.QDQ, int8 weights per channel,
symmetric activations (ActivationSymmetric: int8 with zero point 0, or uint8 with 128), the
attention's two MatMuls and its Softmax excluded (nodes_to_exclude), so its scores and
probabilities stay float32 while Q, K^T and V reach it as DequantizeLinear(QuantizeLinear(x)).
(With the quantizer's defaults the scores and the probabilities are rounded too; such a block is
not detected and stays on the float path, checked by tests/test_qdq.py.)

Checked: the detected attention reads Q, K and V as the int8 tensors the file's QuantizeLinears
make, with the file's scales (the _s8 kernels on K and V, Q's rows dequantized as they are packed,
no float32 Q, K or V in the arena), and
  (a) the attention's own float32 output (MatMul_2's, tapped as a second graph output) is the
      ONNX reference evaluator's on the same file within float32 tolerance: 2^-20 of the largest
      |value| (measured 1.8e-7 to 2.4e-7, about 2^-22, on host, rpi4 and k230 and over four inputs;
      onnxruntime's own float MatMuls are 1.2e-7 to 2.1e-7 from the reference);
  (b) the layer's output, a DequantizeLinear's (on a grid of its scale), is the reference's
      exactly, or one step away in at most 1 element in 100 (tests/test_qdq.py's (a)); measured
      exact on the three boards;
  (c) against onnxruntime's integer kernels on the same file: within one step of the output's
      scale (measured 0 steps).
Expected values come from the reference evaluator and onnxruntime only. A file whose activations
are asymmetric (int8 with a zero point, whose integers less it do not fit int8) keeps float32
Q, K and V, and is still the reference's.
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
import pytest

from conftest import BOARDS, require_board
from moa_edge.harness.build import build
from moa_edge.ir.c_syntax import c_float_short
from moa_edge.harness.runner import check_inputs, run
from moa_edge.pipeline import convert, load_graph
import test_qdq

SHAPE = test_qdq.SHAPES["encoder"]  # x [2, 6, 32]: batch 2, 6 positions
ACTIVATIONS = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}
TAP = "attention_output"  # the attention block's float32 result, a second output of the tapped file


def _attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Q K^T (the MatMul whose result the Softmax reads), the Softmax and P V (the MatMul reading it)."""
    (softmax,) = [n for n in model.graph.node if n.op_type == "Softmax"]
    producers = {o: n for n in model.graph.node for o in n.output}
    readers = {i: n for n in model.graph.node for i in n.input}
    return [producers[softmax.input[0]], softmax, readers[softmax.output[0]]]


def attention_file(act: str, workdir: Path, symmetric: bool = True) -> Path:
    path = workdir / f"encoder_attention_{act}{'' if symmetric else '_asymmetric'}.onnx"
    if not path.exists():
        source = test_qdq._float_file("encoder", workdir)
        exclude = [n.name for n in _attention_nodes(onnx.load(source))]
        quantize_static(str(source), str(path), test_qdq._Batches(SHAPE, 7), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=ACTIVATIONS[act], weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, extra_options={"ActivationSymmetric": symmetric})
    return path


def tapped_file(act: str, workdir: Path) -> Path:
    """The same file with the P V MatMul's result also a graph output."""
    path = workdir / f"encoder_attention_{act}_tapped.onnx"
    if not path.exists():
        model = onnx.load(attention_file(act, workdir))
        pv = _attention_nodes(model)[-1]
        assert pv.op_type == "MatMul"
        model.graph.node.append(helper.make_node("Identity", [pv.output[0]], [TAP], name="tap"))
        model.graph.output.append(helper.make_tensor_value_info(TAP, onnx.TensorProto.FLOAT, (2, 4, 6, 8)))
        onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("qdq_attention")


def _operand_dq(model: onnx.ModelProto, name: str) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    """The DequantizeLinear making a MatMul operand and the QuantizeLinear it reads."""
    producers = {o: n for n in model.graph.node for o in n.output}
    dq = producers[name]
    assert dq.op_type == "DequantizeLinear", dq.op_type
    q = producers[dq.input[0]]
    assert q.op_type == "QuantizeLinear", q.op_type
    return dq, q


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_the_quantizer_writes_what_the_case_needs(act, workdir):
    """Q K^T reads two per-tensor pairs and P V reads float P and a pair (V); the pairs' zero point is
    0 (int8) or 128 (uint8); nothing rounds the scores or the probabilities."""
    model = onnx.load(attention_file(act, workdir))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qk, softmax, pv = _attention_nodes(model)
    for name in (*qk.input, pv.input[1]):
        dq, _ = _operand_dq(model, name)
        assert init[dq.input[1]].size == 1 and int(init[dq.input[2]]) == (0 if act == "s8" else 128)
    assert qk.op_type == pv.op_type == "MatMul" and pv.input[0] == softmax.output[0]  # float32 scores and P


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_attention_reads_int8_q_k_and_v(act, workdir):
    """One MoaAttention, its Q, K and V the int8 results of the file's QuantizeLinears (MoaQuantize, in
    the loops that compute them): K and V of type int8 with the DequantizeLinears' scales as row
    scales, Q's scale in the spec. The generated kernel calls the _s8 micro-kernels on int8 K and V,
    dequantizes Q's rows as it packs them, and no float32 Q, K or V is in the arena."""
    path = attention_file(act, workdir)
    model = onnx.load(path)
    graph = load_graph(path)
    (attention,) = [n for n in graph.nodes if n.op == "MoaAttention"]
    spec = attention.attrs["spec"]
    assert spec.kv_dtype == spec.q_dtype == "int8" and spec.qk_mode < 0
    q, k, v = attention.inputs[:3]
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qk, _, pv = _attention_nodes(model)
    for name, file_operand in ((q, qk.input[0]), (k, qk.input[1]), (v, pv.input[1])):
        assert graph.tensors[name].dtype == "int8" and graph.tensors[name].shape == (2, 4, 6, 8)
        maker = graph.producer(name)
        members = maker.attrs["body"].nodes if maker.op == "MoaElementwise" else [maker]
        assert members[-1].op == "MoaQuantize"
    scale = {name: init[_operand_dq(model, operand)[0].input[1]] for name, operand in
             (("q", qk.input[0]), ("k", qk.input[1]), ("v", pv.input[1]))}
    assert spec.q_scale == float(scale["q"])
    np.testing.assert_array_equal(graph.tensors[attention.inputs[5]].data, np.full(6, scale["k"], np.float32))
    np.testing.assert_array_equal(graph.tensors[attention.inputs[6]].data, np.full(6, scale["v"], np.float32))
    # No float32 Q, K or V: the only float32 tensors of their shape are what they are rounded from.
    heads = {n for node in graph.nodes for n in node.outputs
             if graph.tensors[n].shape == (2, 4, 6, 8) and graph.tensors[n].dtype == "float32"}
    assert heads <= {i for name in (q, k, v) for i in graph.producer(name).inputs}
    project = workdir / f"lowered_{act}"
    convert(path, project)
    kernels = (project / "attention.c").read_text()
    assert "moa_attn_scores_f32_s8(" in kernels and "moa_attn_pv_f32_s8(" in kernels
    assert "const int8_t *restrict Q, const int8_t *restrict K, const int8_t *restrict V" in kernels
    assert f"q_pack[ii * 8 + j] = {c_float_short(scale['q'])} * (float)Q[" in kernels  # Q's rows, dequantized


def test_asymmetric_activations_keep_float_q_k_and_v(workdir):
    """int8 with a zero point: q - zero_point may leave int8's range, so Q, K and V stay float32 (the
    pairs stay roundings) and the layer is still the reference's."""
    path = attention_file("s8", workdir, symmetric=False)
    graph = load_graph(path)
    (attention,) = [n for n in graph.nodes if n.op == "MoaAttention"]
    assert attention.attrs["spec"].kv_dtype == attention.attrs["spec"].q_dtype == "float32"
    assert not [n for n in graph.nodes if n.op == "MoaQuantize"]
    feeds = test_qdq._feeds(SHAPE)
    got = test_qdq._run_c(path, workdir / "asymmetric-host", "host", feeds)["y"]
    model = onnx.load(path)
    test_qdq._against_reference(got, test_qdq._reference(model, feeds)[0], test_qdq._output_step(model))


RUNS = [(act, board) for board in BOARDS for act in (ACTIVATIONS if board == "host" else ["s8"])]
MEASURED: dict[str, float] = {}


@pytest.mark.board
@pytest.mark.parametrize("act, board_name", RUNS, ids=[f"{a}-{b}" for a, b in RUNS])
def test_int8_attention_matches_reference_and_onnxruntime(act, board_name, workdir):
    path = tapped_file(act, workdir)
    model = onnx.load(path)
    feeds = test_qdq._feeds(SHAPE)
    board = require_board(board_name)
    project = workdir / f"tapped_{act}-{board_name}"
    io = convert(path, project)["io"]
    got, _ = run(build(project, board), board, io, check_inputs(io, feeds, path.name))
    names = [o.name for o in model.graph.output]
    spec = dict(zip(names, test_qdq._reference(model, feeds)))
    # (a) the attention's float32 result
    want = spec[TAP].astype(np.float64)
    off = np.abs(got[TAP] - want).max() / np.abs(want).max()
    assert off <= 2.0 ** -20, f"attention output {off:.3g} of its largest value from the reference"
    # (b) the layer's output, on its DequantizeLinear's grid
    step = test_qdq._output_step(model)
    test_qdq._against_reference(got["y"], spec["y"], step)
    # (c) onnxruntime's integer kernels on the same file
    theirs = test_qdq._onnxruntime(path, feeds)[names.index("y")]
    steps = np.abs(got["y"].astype(np.float64) - theirs).max() / step
    assert steps <= 1 + 1e-6, f"{steps} steps from onnxruntime"


# --- by hand: every integer type that fits int8, ties and saturation (opset 21) -----------------------

# operand: (quantized type, scale, zero point); K's pair reads a Transpose of K (the K^T the MatMul takes).
HAND = {"q": ("int8", 2.0 ** -4, 0), "k": ("uint8", 2.0 ** -5, 128), "v": ("int4", 0.25, 0)}
HAND_FLOAT = {"k": ("uint8", 2.0 ** -5, 100)}  # K's integers less 100 may pass 127: K and V stay float32
HAND_SHAPE = (1, 2, 5, 8)
_HAND_TYPES = {"int8": onnx.TensorProto.INT8, "uint8": onnx.TensorProto.UINT8, "int4": onnx.TensorProto.INT4}


def _hand_model(params: dict) -> onnx.ModelProto:
    """y = Softmax(DQ(Q(q)) DQ(Q(Transpose(k))) / sqrt(8)) DQ(Q(v)), each pair per tensor."""
    inits, nodes = [], [helper.make_node("Transpose", ["k"], ["kt"], name="transpose_k", perm=[0, 1, 3, 2])]
    for operand, source in (("q", "q"), ("k", "kt"), ("v", "v")):
        qtype, scale, zero = params[operand]
        inits += [numpy_helper.from_array(np.array(scale, np.float32), f"s_{operand}"),
                  helper.make_tensor(f"z_{operand}", _HAND_TYPES[qtype], [], [zero])]
        nodes += [helper.make_node("QuantizeLinear", [source, f"s_{operand}", f"z_{operand}"], [f"i_{operand}"],
                                   name=f"quantize_{operand}"),
                  helper.make_node("DequantizeLinear", [f"i_{operand}", f"s_{operand}", f"z_{operand}"],
                                   [f"d_{operand}"], name=f"dequantize_{operand}")]
    inits.append(numpy_helper.from_array(np.array(8 ** -0.5, np.float32), "scale"))
    nodes += [helper.make_node("MatMul", ["d_q", "d_k"], ["qk"], name="qk"),
              helper.make_node("Mul", ["qk", "scale"], ["scores"], name="scale"),
              helper.make_node("Softmax", ["scores"], ["p"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["p", "d_v"], ["y"], name="pv")]
    b, h, s, d = HAND_SHAPE
    inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, HAND_SHAPE) for n in "qv"]
    inputs.insert(1, helper.make_tensor_value_info("k", onnx.TensorProto.FLOAT, HAND_SHAPE))
    graph = helper.make_graph(nodes, "hand", inputs, [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT,
                                                                                     HAND_SHAPE)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _hand_feeds(params: dict) -> dict[str, np.ndarray]:
    """Per operand: exact ties (x / scale = n + 1/2, which round to the even n), values past both ends
    of the integer range (saturation) and random values, in float32."""
    rng = np.random.default_rng(5)
    feeds = {}
    for operand, (qtype, scale, zero) in params.items():
        low, high = test_qdq._RANGE[qtype]
        n = int(np.prod(HAND_SHAPE))
        integers = rng.integers(low - zero - 6, high - zero + 6, n)
        halves = rng.choice([0.0, 0.5, 0.3], n)
        feeds[operand] = ((integers + halves) * scale).astype(np.float32).reshape(HAND_SHAPE)
    return feeds


@pytest.mark.parametrize("board_name", BOARDS)
def test_hand_built_attention_reads_each_int8_sized_type(board_name, workdir):
    """int8 zp 0 (Q), uint8 zp 128 (K, through the Transpose that sinks below its pair) and int4 (V):
    all int8 in the arena; ties rounded to even and saturated ends as the reference evaluator rounds
    them (a misrounded integer would move the output by a whole step of its scale, not 2^-20)."""
    path = workdir / "hand.onnx"
    if not path.exists():
        onnx.save(_hand_model(HAND), path)
    graph = load_graph(path)
    (attention,) = [n for n in graph.nodes if n.op == "MoaAttention"]
    spec = attention.attrs["spec"]
    assert (spec.q_dtype, spec.kv_dtype, spec.q_scale) == ("int8", "int8", HAND["q"][1])
    assert [graph.tensors[n].dtype for n in attention.inputs[:3]] == ["int8"] * 3
    feeds = _hand_feeds(HAND)
    want = test_qdq._reference(onnx.load(path), feeds)[0].astype(np.float64)
    got = test_qdq._run_c(path, workdir / f"hand-{board_name}", board_name, feeds)["y"]
    off = np.abs(got - want).max() / np.abs(want).max()
    assert off <= 2.0 ** -20, f"{off:.3g} of the largest value from the reference"


def test_hand_built_attention_with_a_wide_zero_point_keeps_float_k_and_v(workdir):
    """uint8 K with zero point 100: its integers less 100 reach 155, past int8, so K and V stay float32
    (Q, int8 with zero point 0, is still read as int8); the result is still the reference's."""
    path = workdir / "hand_wide_zero.onnx"
    params = {**HAND, **HAND_FLOAT}
    onnx.save(_hand_model(params), path)
    graph = load_graph(path)
    (attention,) = [n for n in graph.nodes if n.op == "MoaAttention"]
    assert (attention.attrs["spec"].q_dtype, attention.attrs["spec"].kv_dtype) == ("int8", "float32")
    feeds = _hand_feeds(params)
    want = test_qdq._reference(onnx.load(path), feeds)[0].astype(np.float64)
    got = test_qdq._run_c(path, workdir / "hand_wide_zero-host", "host", feeds)["y"]
    assert np.abs(got - want).max() / np.abs(want).max() <= 2.0 ** -20
