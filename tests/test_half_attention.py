"""Attention over half Q, K and V (issue 14; passes/half_attention.py): a float16 (or bfloat16) Q, K
or V that reaches a detected attention through one exact widening (a half input, or a rounding Cast
to a half) and that only the attention reads is read as the halves themselves: K and V (float16,
together) by the _f16 score and P V micro-kernels of --kv-cache fp16, Q (float16 or bfloat16) widened
into the kernel's scratch as each row block is packed. No float32 copy of them is in the arena; the
scores, the softmax and every sum stay float32 over the same float32 values.

Checked:
- the ONF kernel over half Q, K and V is the float kernel over their float32 values bit for bit
  (the same loop nest and tiles: head form, stacked rows of the decode form, split keys, two-pass),
  and both are within float32 tolerance of PyTorch float64 over the halves' values; the oracle
  (the DNF printed in double) within 1e-12 of it;
- a torch `.half()` export of SDPA (dynamo, opset 18: the decomposition) and an ONNX Attention op
  over float16 3-D inputs (grouped-query, causal: the stacked rows of the decode form, rows of K and V
  16 elements apart) read their float16 inputs in place (the _f16 kernels named in the C, the arena
  holding only the float32 output and the kernel's scratch) and, on host, rpi4, k230 and bpi-f3:
  within one half ulp (at each value) of onnxruntime on the file's float32 twin rounded once, within
  two ulps of max |y| of onnxruntime on the float16 file and of the ONNX reference evaluator (both op
  by op in halves), and bit for bit the output of the float path they replace (the same schedule);
- a float32 graph that rounds Q, K and V to halves (a Cast to float16 and back; Q's fused with a
  Mul) holds the halves in the arena and no float32 Q, K or V; its float32 output is within 2^-20 of
  max |y| of onnxruntime's and the reference evaluator's on the same file; bfloat16: Q read as
  bfloat16, K and V float32 (there is no _bf16 kernel set);
- what stays on the float path: Q, K, V computed in the graph (a projection: not a half), a widened
  K read elsewhere too, a block that also outputs its scores.
Expected values come from onnxruntime, the ONNX reference evaluator and PyTorch float64 only.
"""
from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
import onnxruntime as ort
import pytest
import torch

import models
from conftest import BOARDS, require_board
from moa_edge.harness import compare as cmp
from moa_edge.harness.build import build
from moa_edge.harness.kernel_harness import build_harness
from moa_edge.harness.runner import run
from moa_edge.moa import Layout
from moa_edge.moa.onf import Schedule, emit_kernel
from moa_edge.moa.spec import AttentionSpec
import moa_edge.passes
from moa_edge.pipeline import convert, load_graph
from halves import BFLOAT16, float32_twin, ulp

HALF_BOARDS = [*BOARDS, "bpi-f3"]  # bpi-f3: RVV VLEN 256 with Zvfhmin (vfwcvt widens the halves)
NUMPY = {"float16": np.dtype(np.float16), "bfloat16": BFLOAT16}


def _attention(graph):
    (node,) = [n for n in graph.nodes if n.op == "MoaAttention"]
    return node, node.attrs["spec"]


# --- the ONF kernel over half operands --------------------------------------------------------

BLOCKS = {  # (q heads, kv heads, Sq, Skv, D, Dv)
    "mha": (2, 2, 12, 20, 16, 16),
    "gqa3": (6, 2, 5, 33, 16, 8),  # stacked rows of three heads, a row block wrapping into the next head
}
# the decode form (stacked rows), split keys, the head form (Br <= Sq), the two-pass form
SCHEDULES = [Schedule("online", 64, 16), Schedule("online", 64, 8, 3), Schedule("online", 4, 8),
             Schedule("two_pass", 4, 16)]
# (block, schedule, Q's type, K's and V's type): float16 everywhere; bfloat16 Q (no _bf16 K/V kernels)
# in the stacked rows and the head form
KERNEL_CASES = [(b, s, "float16", "float16") for b in BLOCKS for s in SCHEDULES] + \
    [("gqa3", s, "bfloat16", "float32") for s in SCHEDULES[::2]]


def _block(name: str, q_dtype: str, kv_dtype: str):
    """(spec over half operands, the halves, PyTorch float64 attention over their values)."""
    hq, hkv, sq, skv, d, dv = BLOCKS[name]
    rng = np.random.default_rng(3)
    shapes = {"q": (1, hq, sq, d), "k": (1, hkv, skv, d), "v": (1, hkv, skv, dv)}
    values = {n: rng.standard_normal(s) * rng.uniform(0.3, 3, s[:3] + (1,)) for n, s in shapes.items()}
    types = {"q": q_dtype, "k": kv_dtype, "v": kv_dtype}
    stored = {n: values[n].astype(np.float32).astype(NUMPY.get(types[n], np.float32)) for n in shapes}
    spec = AttentionSpec(1, hq, hkv, sq, skv, d, dv, 1 / math.sqrt(d), True, "none", -math.inf,
                         *(Layout.row_major(shapes[n]) for n in "qkv"), Layout.row_major((1, hq, sq, dv)), None,
                         causal_offset=skv - sq, kv_dtype=kv_dtype, q_dtype=q_dtype)
    q, k, v = (torch.from_numpy(stored[n].astype(np.float64)) for n in "qkv")
    hidden = torch.arange(skv) > torch.arange(sq)[:, None] + skv - sq
    bias = torch.zeros(sq, skv, dtype=torch.float64).masked_fill(hidden, -math.inf)
    y = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(hq // hkv, 1),
                                                         v.repeat_interleave(hq // hkv, 1), attn_mask=bias,
                                                         scale=spec.scale)
    return spec, stored, y.numpy()


def _run_kernel(exe, operands: dict, workdir, real: str = "float") -> np.ndarray:
    args = []
    for name in "qkv":
        array = operands[name]
        if array.dtype == np.float32 and real == "double":
            array = array.astype(np.float64)
        path = workdir / f"{name}.bin"
        np.ascontiguousarray(array).tofile(path)  # halves as their bits
        args.append(str(path))
    out = workdir / "y.bin"
    proc = subprocess.run([str(exe), *args, str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return np.fromfile(out, np.float64 if real == "double" else np.float32)


@pytest.mark.parametrize("block, schedule, q_dtype, kv_dtype", KERNEL_CASES,
                         ids=[f"{b}-{s.strategy}-{s.block_q}x{s.block_k}-s{s.splits}-q_{q}-kv_{kv}"
                              for b, s, q, kv in KERNEL_CASES])
def test_kernel_over_halves_is_the_float_kernel(block, schedule, q_dtype, kv_dtype, tmp_path):
    """Q's rows widened as they are packed (moa_f16_to_f32 / moa_bf16_to_f32 into q_pack), K and V
    read by the _f16 kernels in place: bit for bit the float kernel over the same float32 values
    (which reads Q in place), and within float32 tolerance of PyTorch float64."""
    types = q_dtype, kv_dtype
    spec, halves, expected = _block(block, *types)
    code = emit_kernel(spec, schedule, "kernel")
    widen = {"float16": "moa_f16_to_f32", "bfloat16": "moa_bf16_to_f32"}[types[0]]
    assert re.search(rf"q_pack\[ii \* 16 \+ j\] = {widen}\(Q\[", code) and "const uint16_t *restrict Q" in code
    assert ("moa_attn_scores_f32_f16(" in code) == (types[1] == "float16") and "k_pack" not in code
    float_spec = dataclasses.replace(spec, q_dtype="float32", kv_dtype="float32")
    assert "q_pack" not in emit_kernel(float_spec, schedule, "kernel")  # the float kernel reads Q in place
    got = _run_kernel(build_harness(spec, schedule, tmp_path / "halves"), halves, tmp_path)
    widened = {n: a.astype(np.float32) for n, a in halves.items()}
    want = _run_kernel(build_harness(float_spec, schedule, tmp_path / "float"), widened, tmp_path)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert cmp.compare(got.reshape(expected.shape), expected)["ok"], cmp.compare(got.reshape(expected.shape), expected)
    if schedule == SCHEDULES[0]:  # the oracle: the DNF in double, each half load widened
        oracle = _run_kernel(build_harness(spec, schedule, tmp_path / "oracle", real="double"), halves, tmp_path,
                             "double")
        assert np.abs(oracle.reshape(expected.shape) - expected).max() <= 1e-12


# --- float16 models: a torch .half() export of SDPA, an ONNX Attention op over float16 -------------

SDPA = models.Case("sdpa", "sdpa18", batch=2, q_heads=4, kv_heads=4, q_len=24, kv_len=24, head_dim=16, causal=True)
GQA_3D = dict(batch=2, q_len=24, kv_len=24, q_heads=4, kv_heads=2, head_dim=8)  # Q, K, V (B, S, heads x D)


def _gqa_3d_model(elem_type: int) -> onnx.ModelProto:
    """One ONNX Attention (opset 23) over 3-D inputs: causal, 4 query heads on 2 K/V heads of 8, so
    each row of K and V is 8 contiguous elements 16 apart (the _f16 kernels read them in place)."""
    c = GQA_3D
    shapes = {"q": (c["batch"], c["q_len"], c["q_heads"] * c["head_dim"]),
              "k": (c["batch"], c["kv_len"], c["kv_heads"] * c["head_dim"]),
              "v": (c["batch"], c["kv_len"], c["kv_heads"] * c["head_dim"])}
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attention", is_causal=1,
                            q_num_heads=c["q_heads"], kv_num_heads=c["kv_heads"])
    graph = helper.make_graph([node], "gqa_3d", [helper.make_tensor_value_info(n, elem_type, s) for n, s in shapes.items()],
                              [helper.make_tensor_value_info("y", elem_type, shapes["q"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


@pytest.fixture(scope="module")
def half_models(tmp_path_factory):
    """name -> (the float16 file, its float32 twin (the same values), the inputs as halves)."""
    folder = tmp_path_factory.mktemp("half_attention")
    feeds = {n: torch.from_numpy(x).half() for n, x in models.case_inputs(SDPA, seed=7).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(models._SDPA(SDPA).half(), tuple(feeds.values()), str(folder / "sdpa.onnx"), dynamo=True,
                          opset_version=18, input_names=list(feeds), output_names=["y"], verbose=False)
    onnx.save(float32_twin(onnx.load(folder / "sdpa.onnx")), folder / "sdpa_twin.onnx")
    onnx.save(_gqa_3d_model(TensorProto.FLOAT16), folder / "gqa_3d.onnx")
    onnx.save(_gqa_3d_model(TensorProto.FLOAT), folder / "gqa_3d_twin.onnx")
    rng = np.random.default_rng(8)
    gqa_feeds = {vi.name: (rng.standard_normal([d.dim_value for d in vi.type.tensor_type.shape.dim]) * 1.5
                           ).astype(np.float16) for vi in onnx.load(folder / "gqa_3d.onnx").graph.input}
    return {"sdpa": (folder / "sdpa.onnx", folder / "sdpa_twin.onnx", {n: x.numpy() for n, x in feeds.items()}),
            "gqa_3d": (folder / "gqa_3d.onnx", folder / "gqa_3d_twin.onnx", gqa_feeds)}


def _arena_float32(report: dict, graph, allowed: set[str]) -> list[str]:
    """The float32 tensors the arena holds besides `allowed` (and kernels' scratch)."""
    return [b["name"] for b in report["memory"]["buffers"] if not b["name"].startswith("scratch:")
            and b["name"] not in allowed and graph.tensors[b["name"]].dtype == "float32"]


@pytest.mark.parametrize("name", ["sdpa", "gqa_3d"])
def test_float16_models_read_their_halves(name, half_models, tmp_path):
    """The attention's operands are the file's float16 inputs themselves (no widening Cast left): K
    and V go to the _f16 kernels, Q's rows are widened as they are packed, and the arena holds the
    attention's float32 output (rounded to the float16 y after) and its scratch, no float32 Q, K or V."""
    path = half_models[name][0]
    graph = load_graph(path)
    attention, spec = _attention(graph)
    assert (spec.q_dtype, spec.kv_dtype) == ("float16", "float16") and attention.inputs[:3] == ["q", "k", "v"]
    assert not [n for n in graph.nodes if n.op == "Cast" and n.inputs[0] in "qkv"]
    report = convert(path, tmp_path / "project")
    kernels = (tmp_path / "project" / "attention.c").read_text()
    assert "moa_attn_scores_f32_f16(" in kernels and "moa_attn_pv_f32_f16(" in kernels
    assert "const uint16_t *restrict Q, const uint16_t *restrict K, const uint16_t *restrict V" in kernels
    assert "= moa_f16_to_f32(Q[" in kernels  # Q's rows, widened into q_pack
    assert not _arena_float32(report, graph, {attention.outputs[0]})


@pytest.mark.board
@pytest.mark.parametrize("name", ["sdpa", "gqa_3d"])
@pytest.mark.parametrize("board_name", HALF_BOARDS)
def test_float16_models_on_the_boards(board_name, name, half_models, tmp_path, monkeypatch):
    """Within one half ulp (at each value) of onnxruntime's float32 attention over the same values
    rounded once (the file's float32 twin), within two ulps of max |y| of onnxruntime and the ONNX
    reference evaluator on the float16 file; and bit for bit the float path's output (float32 copies
    of Q, K and V, the same schedule), in a smaller arena."""
    board = require_board(board_name)
    path, twin_path, feeds = half_models[name]
    report = convert(path, tmp_path / "halves", board=board)
    y = run(build(tmp_path / "halves", board), board, report["io"], feeds)[0]["y"]
    assert y.dtype == np.float16
    y64 = y.astype(np.float64)

    twin = ort.InferenceSession(str(twin_path), providers=["CPUExecutionProvider"]).run(
        None, {n: x.astype(np.float32) for n, x in feeds.items()})[0]
    rounded = twin.astype(np.float16).astype(np.float64)
    assert np.all(np.abs(y64 - rounded) <= ulp(rounded, np.dtype(np.float16))), np.abs(y64 - rounded).max()
    step = ulp(np.abs(twin).max(), np.dtype(np.float16))
    for who, want in {"onnxruntime": ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0],
                      "ONNX reference evaluator": ReferenceEvaluator(str(path)).run(None, feeds)[0]}.items():
        error = np.abs(y64 - want.astype(np.float64)).max()
        assert error <= 2 * step, f"{who}: {error / step} ulps of max |y|"

    monkeypatch.setattr(moa_edge.passes, "read_half_operands", lambda graph: 0)
    before = convert(path, tmp_path / "float", board=board)
    assert before["memory"]["arena_bytes"] > report["memory"]["arena_bytes"]
    schedules = [re.findall(r"schedule [^;]*;", (tmp_path / p / "attention.c").read_text()) for p in ("halves", "float")]
    assert schedules[0] == schedules[1]
    y_before = run(build(tmp_path / "float", board), board, before["io"], feeds)[0]["y"]
    np.testing.assert_array_equal(y.view(np.uint16), y_before.view(np.uint16))


# --- a float32 graph that rounds Q, K and V to halves -------------------------------------------

ROUNDED_SHAPES = {"q": (1, 4, 20, 16), "k": (1, 2, 20, 16), "v": (1, 2, 20, 16)}


def _rounding_model(half: str) -> onnx.ModelProto:
    """y = Attention(r(1.7 q), r(k), r(v)), causal, GQA, r = Cast(Cast(x, to half), to float)."""
    to = helper.np_dtype_to_tensor_dtype(NUMPY[half])
    nodes = [helper.make_node("Mul", ["q", "c"], ["q_scaled"], name="scale_q")]
    for x, source in (("q", "q_scaled"), ("k", "k"), ("v", "v")):
        nodes += [helper.make_node("Cast", [source], [f"{x}_half"], name=f"{x}_to_half", to=to),
                  helper.make_node("Cast", [f"{x}_half"], [f"{x}_rounded"], name=f"{x}_to_float", to=TensorProto.FLOAT)]
    nodes.append(helper.make_node("Attention", ["q_rounded", "k_rounded", "v_rounded"], ["y"], name="attention",
                                  is_causal=1))
    graph = helper.make_graph(nodes, "rounded", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                                 for n, s in ROUNDED_SHAPES.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ROUNDED_SHAPES["q"])],
                              [numpy_helper.from_array(np.array(1.7, np.float32), "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


@pytest.mark.board
@pytest.mark.parametrize("half, board_name", [("float16", b) for b in HALF_BOARDS] + [("bfloat16", "host")])
def test_rounded_operands_are_read_as_halves(half, board_name, tmp_path):
    """The roundings write halves (Q's in the Mul's loop) and the attention reads them: the arena holds
    the halves and no float32 Q, K or V (bfloat16: Q only); the float32 output within 2^-20 of max |y|
    of onnxruntime's and of the reference evaluator's (measured about 2^-22), while attention over the
    unrounded values is far from both (a skipped rounding would show)."""
    board = require_board(board_name)
    path = tmp_path / "rounded.onnx"
    onnx.save(_rounding_model(half), path)
    graph = load_graph(path)
    attention, spec = _attention(graph)
    kv_half = half == "float16"
    assert spec.q_dtype == half and spec.kv_dtype == ("float16" if kv_half else "float32")
    assert [graph.tensors[n].dtype for n in attention.inputs[:3]] == [half] + [half if kv_half else "float32"] * 2
    report = convert(path, tmp_path / "project", board=board)
    held = {b["name"] for b in report["memory"]["buffers"] if not b["name"].startswith("scratch:")}
    assert held == set(attention.inputs[:3])  # the halves (and bfloat16's float K, V), nothing else
    rng = np.random.default_rng(11)
    feeds = {n: (rng.standard_normal(s) * 2).astype(np.float32) for n, s in ROUNDED_SHAPES.items()}
    feeds["k"][0, 0, 0, :3] = [3e-6, -1e-8, 2 + 2.0 ** -10]  # a float16 subnormal, a zero, a tie (to even: 2)
    y = run(build(tmp_path / "project", board), board, report["io"], feeds)[0]["y"].astype(np.float64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    references = {"onnxruntime": session.run(None, feeds)[0],
                  "ONNX reference evaluator": ReferenceEvaluator(str(path)).run(None, feeds)[0]}
    q, k, v = (torch.from_numpy(feeds[n].astype(np.float64)) for n in "qkv")
    unrounded = torch.nn.functional.scaled_dot_product_attention(1.7 * q, k, v, is_causal=True, enable_gqa=True).numpy()
    for who, want in references.items():
        off = np.abs(y - want).max() / np.abs(want).max()
        assert off <= 2.0 ** -20, f"{who}: {off:.3g} of max |y|"
        assert np.abs(unrounded - want).max() / np.abs(want).max() > 2.0 ** -14


# --- what stays on the float path -------------------------------------------------------------

def _half_attention_model(kind: str) -> onnx.ModelProto:
    """A float16 Attention whose operands do not all qualify: Q from a projection (computed in float32,
    not a half), K also read by another output, or the scores also an output."""
    shape, f16 = (1, 2, 6, 8), TensorProto.FLOAT16
    inputs = [helper.make_tensor_value_info(n, f16, shape) for n in "qkv"]
    outputs = [helper.make_tensor_value_info("y", f16, shape)]
    q, nodes, inits, extra = "q", [], [], {}
    if kind == "projection":
        inits.append(numpy_helper.from_array(np.eye(8, dtype=np.float16) * 0.5, "w"))
        nodes.append(helper.make_node("MatMul", ["q", "w"], ["q_projected"], name="project"))
        q = "q_projected"
    if kind == "k_read_elsewhere":
        nodes.append(helper.make_node("Add", ["k", "k"], ["k_twice"], name="twice"))
        outputs.append(helper.make_tensor_value_info("k_twice", f16, shape))
    names = ["y"]
    if kind == "scores":
        names += ["", "", "qk"]
        outputs.append(helper.make_tensor_value_info("qk", f16, (1, 2, 6, 6)))
        extra["qk_matmul_output_mode"] = 0
    nodes.append(helper.make_node("Attention", [q, "k", "v"], names, name="attention", **extra))
    graph = helper.make_graph(nodes, kind, inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


@pytest.mark.parametrize("kind, q_dtype, kv_dtype", [("projection", "float32", "float16"),
                                                     ("k_read_elsewhere", "float16", "float32"),
                                                     ("scores", "float32", "float32")])
def test_what_stays_on_the_float_path(kind, q_dtype, kv_dtype, tmp_path):
    """A projected Q is float32 values (the MatMul is computed in float32, not rounded): read as they
    are; K read by another node too keeps its float32 copy and so does V (K and V go together); a
    block that also outputs its scores keeps float32 operands (its scores kernel reads them)."""
    path = tmp_path / f"{kind}.onnx"
    onnx.save(_half_attention_model(kind), path)
    graph = load_graph(path)
    attention, spec = _attention(graph)
    assert (spec.q_dtype, spec.kv_dtype) == (q_dtype, kv_dtype)
    expected = [q_dtype, kv_dtype, kv_dtype]
    assert [graph.tensors[n].dtype for n in attention.inputs[:3]] == expected
    convert(path, tmp_path / "project")
    kernels = (tmp_path / "project" / "attention.c").read_text()
    assert ("_f16(" in kernels) == (kv_dtype == "float16") and ("moa_f16_to_f32(Q[" in kernels) == (q_dtype == "float16")


def test_half_q_with_float_k_and_v_runs(tmp_path):
    """Q read as halves beside float32 K and V (K also read elsewhere): the reference evaluator's
    outputs, within two half ulps of max |y|."""
    board = require_board("host")
    path = tmp_path / "mixed.onnx"
    onnx.save(_half_attention_model("k_read_elsewhere"), path)
    report = convert(path, tmp_path / "project")
    rng = np.random.default_rng(4)
    feeds = {n: rng.standard_normal((1, 2, 6, 8)).astype(np.float16) for n in "qkv"}
    got = run(build(tmp_path / "project", board), board, report["io"], feeds)[0]
    want = dict(zip(["y", "k_twice"], ReferenceEvaluator(str(path)).run(None, feeds)))
    for name, value in want.items():
        step = ulp(np.abs(value.astype(np.float32)).max(), np.dtype(np.float16))
        assert np.abs(got[name].astype(np.float64) - value.astype(np.float64)).max() <= 2 * step, name
