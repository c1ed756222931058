"""`convert --weights` (issue 14): float weights quantized by moa-edge itself. A generation build of
a decoder with int8, 4-bit or float16 weights gives the same greedy tokens and logits as transformers' own
model given the same weights (export.quantize_like_convert: the dequantized values in the float
model), on the host and the emulated boards; the 4-bit grid is llama.cpp's Q4_1, checked against
the gguf package's own quantizer; bad formats are refused by name."""
import copy
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import pytest

from conftest import one_error, require_board, run_cli
import decoders
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.generation import generate_ids, generation_info
from moa_edge.passes.quantize import dequantized, parse_weights, quantize
from moa_edge.pipeline import convert
from moa_edge.target import load_board

MAX_CONTEXT, CHUNK, PROMPT_LEN, NEW = 40, 4, 9, 12
RELATIVE_LOGITS = 1e-4  # as the float builds: the weights are the same, only the arithmetic's order differs


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("quantized")


def _build(folder: Path, weights: str):
    case = decoders.cached_decoder("llama", "torchscript", 17, folder)
    project = folder / f"p-{weights.replace(':', '-')}"
    if not project.exists():
        convert(case.path, project, max_context=MAX_CONTEXT, prefill_chunk=CHUNK, weights=parse_weights(weights))
    reference = copy.deepcopy(case.model)
    ops = {op["op"] for op in json.loads((project / "report.json").read_text())["ops"]}
    decoders.smollm2_export.quantize_like_convert(reference, weights, embedding="MoaQGather" in ops)
    return reference, project


def _check(folder: Path, weights: str, board) -> None:
    reference, project = _build(folder, weights)
    binary, info = build(project, board), generation_info(project)
    prompt = [int(t) for t in np.random.default_rng(1).integers(0, info["vocab"], PROMPT_LEN)]
    want = decoders.reference_generate(reference, prompt, NEW)
    got = generate_ids(binary, board, info, prompt, NEW)
    assert got["tokens"] == want
    forced = generate_ids(binary, board, info, prompt, NEW, forced_ids=want)
    expected = decoders.reference_logits(reference, prompt + want)[PROMPT_LEN - 1:PROMPT_LEN - 1 + NEW]
    error = np.abs(forced["logits"] - expected).max() / np.abs(expected).max()
    assert error < RELATIVE_LOGITS, error


# Blocks other than the defaults are the kernel tables' (tests/test_qmatmul.py) and test_qgather's.
@pytest.mark.parametrize("weights", ["int8", "int4", "fp16"])
def test_quantized_decoder_equals_transformers_with_the_same_weights_on_the_host(folder, weights):
    _check(folder, weights, load_board("host"))


@pytest.mark.board
@pytest.mark.parametrize("board_name, weights", [("rpi4", "int8"), ("k230", "int4"), ("rpi5", "int4"), ("bpi-f3", "int8"),
                                                 ("rpi4", "fp16"),
                                                 ("k230", "fp16")])
def test_quantized_decoder_on_the_emulated_boards(folder, board_name, weights):
    _check(folder, weights, require_board(board_name))


def test_weight_bytes_per_type_in_model_h_and_the_report(folder):
    """int8 stores a byte per weight, int4 half of one; the lm_head (the output layer) stays int8."""
    float_project = folder / "p-float"
    case = decoders.cached_decoder("llama", "torchscript", 17, folder)
    if not float_project.exists():
        convert(case.path, float_project, max_context=MAX_CONTEXT, prefill_chunk=CHUNK)
    _, int8 = _build(folder, "int8")
    _, int4 = _build(folder, "int4")
    by_type = {p: json.loads((p / "report.json").read_text())["memory"]["weights_bytes_by_type"]
               for p in (float_project, int8, int4)}
    linear = sum(m.weight.numel() for m in case.model.modules() if type(m).__name__ == "Linear")
    head = case.model.lm_head.weight.numel()
    assert by_type[int8]["int8"] >= linear and by_type[int8]["int8"] < 1.2 * linear  # panels pad N to 16
    assert by_type[int4]["int8"] >= head and by_type[int4]["int4"] >= (linear - head) // 2
    model_h = (int4 / "model.h").read_text()
    assert f"#define MODEL_WEIGHTS_BYTES_INT4 {by_type[int4]['int4']}u" in model_h
    assert sum(by_type[int4].values()) < sum(by_type[int8].values()) < sum(by_type[float_project].values())


def test_fp16_stores_two_bytes_a_weight_every_layer_included(folder):
    """fp16 keeps the output layer (and the tied embedding) in float16 as well: only the norms'
    gains stay float32."""
    _, fp16 = _build(folder, "fp16")
    case = decoders.cached_decoder("llama", "torchscript", 17, folder)
    by_type = json.loads((fp16 / "report.json").read_text())["memory"]["weights_bytes_by_type"]
    linear = sum(m.weight.numel() for m in case.model.modules() if type(m).__name__ == "Linear")
    assert 2 * linear <= by_type["float16"] < 1.2 * 2 * linear  # panels pad N to 16
    assert by_type["float32"] < 0.05 * by_type["float16"]
    assert f"#define MODEL_WEIGHTS_BYTES_FLOAT16 {by_type['float16']}u" in (fp16 / "model.h").read_text()


def test_the_4_bit_grid_is_llama_cpps_q4_1():
    """Weights on the gguf package's own Q4_1 grid (blocks of 32 along a row: K) are held exactly,
    and int8 blocks of 32 round as its Q8_0 does, up to its float16 scales."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((48, 64)).astype(np.float32)  # N x K, K contiguous as GGUF stores a row
    on_grid = gguf.quants.dequantize(gguf.quants.quantize(rows, gguf.GGMLQuantizationType.Q4_1),
                                     gguf.GGMLQuantizationType.Q4_1)
    ours = dequantized(np.ascontiguousarray(on_grid.T), parse_weights("int4")).T
    np.testing.assert_allclose(ours, on_grid, rtol=0, atol=1e-6 * np.abs(on_grid).max())
    q8 = gguf.quants.dequantize(gguf.quants.quantize(rows, gguf.GGMLQuantizationType.Q8_0),
                                gguf.GGMLQuantizationType.Q8_0)
    ours8 = dequantized(np.ascontiguousarray(rows.T), parse_weights("int8:32")).T
    step = np.abs(rows).reshape(48, 2, 32).max(axis=2, keepdims=True) / 127
    assert np.all(np.abs(ours8 - q8).reshape(48, 2, 32) <= step * 1.01)  # at most one step apart (fp16 scales)


def test_int8_error_is_at_most_half_a_step():
    w = np.random.default_rng(2).standard_normal((96, 40)).astype(np.float32)
    q, scale, offset, zero = quantize(w, "i8", 96)
    assert offset is None and zero == 0 and q.dtype == np.int8 and np.abs(q).max() == 127
    assert np.all(np.abs(dequantized(w, parse_weights("int8")) - w) <= scale / 2 * (1 + 1e-6))


@pytest.mark.parametrize("text", ["int3", "int4:7", "int4:0", "int8:x", "fp8", "int4:1", "fp16:32"])
def test_a_bad_weight_format_is_refused(text):
    with pytest.raises(MoaEdgeError, match="--weights"):
        parse_weights(text)


def test_a_weight_beyond_float16_is_refused_by_node(tmp_path):
    """fp16 would make it infinite: one error naming the weight and its node, no project."""
    w = np.full((4, 3), 0.5, np.float32)
    w[2, 1] = 7e4
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 4))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2, 3))],
                              [numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "big.onnx")
    r = run_cli("convert", tmp_path / "big.onnx", "-o", tmp_path / "p", "--weights", "fp16")
    one_error(r, "--weights fp16: the weight 'W' of node 'proj' holds 70000, beyond float16's largest 65504")
    assert not (tmp_path / "p").exists()


def test_a_block_that_does_not_divide_k_is_refused_by_node(folder, tmp_path):
    case = decoders.cached_decoder("llama", "torchscript", 17, folder)
    r = run_cli("convert", case.path, "-o", tmp_path / "p", "--max-context", "16", "--weights", "int4:48")
    one_error(r, "--weights int4:48: block 48 does not divide K=", "of node")
    assert not (tmp_path / "p").exists()


def _projection(tmp_path, rows: int = 1):
    """x [rows, 96] @ W [96, 40]: a decode step's GEMV."""
    w = (np.random.default_rng(3).standard_normal((96, 40)) / np.sqrt(96)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")], "proj",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, (rows, 96))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (rows, 40))],
                              [numpy_helper.from_array(w, "W")])
    path = tmp_path / "proj.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path, w


def test_native_half_arithmetic_needs_a_board_with_it(tmp_path):
    """fp16:native on rpi4 (no FEAT_FP16): one error naming the board and what has it, no project."""
    path, _ = _projection(tmp_path)
    r = run_cli("convert", path, "-o", tmp_path / "p", "--board", "rpi4", "--weights", "fp16:native")
    one_error(r, "--weights fp16:native: board 'rpi4' has no half-precision arithmetic", "rpi5")
    assert not (tmp_path / "p").exists()


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["rpi5", "bpi-f3"])
def test_native_half_gemv_within_its_contract(tmp_path, board_name):
    """The generated C asks for MOA_QW_F16_NATIVE, and under qemu's Cortex-A76 (FEAT_FP16) or X60
    (Zvfh) the GEMV's error against float64 of the half weights is half precision's (above float32's,
    within the contract)."""
    from moa_edge.harness.runner import check_inputs, run
    board = require_board(board_name)
    path, w = _projection(tmp_path)
    report = convert(path, tmp_path / "p", board=board, weights=parse_weights("fp16:native"))
    assert "MOA_QW_F16_NATIVE" in (tmp_path / "p" / "model.c").read_text()
    x = np.random.default_rng(4).standard_normal((1, 96)).astype(np.float32)
    outputs, _ = run(build(tmp_path / "p", board), board, report["io"], check_inputs(report["io"], {"x": x}, "x"))
    half = w.astype(np.float16).astype(np.float64)
    error = np.abs(outputs["y"] - x.astype(np.float64) @ half) / (np.abs(x).astype(np.float64) @ np.abs(half))
    assert 1e-6 < error.max() < 2.0 ** -8, error.max()


@pytest.mark.board
def test_validate_holds_native_half_to_its_own_tolerance(tmp_path):
    """validate --weights fp16:native: rpi5 and bpi-f3 pass at 2^-8 of max |y| (not float32's 1e-5);
    rpi4 is refused."""
    path, _ = _projection(tmp_path, rows=2)
    r = run_cli("validate", path, "--board", "rpi5,bpi-f3", "--weights", "fp16:native")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tolerance: max rel <= 0.00390625" in r.stdout and "ALL PASS" in r.stdout
    r = run_cli("validate", path, "--board", "rpi4", "--weights", "fp16:native")
    one_error(r, "--weights fp16:native: board 'rpi4' has no half-precision arithmetic")
