"""convert --weights quantizes the token embedding table too (issue 14): a Gather over a float32
table E [V, D] becomes MoaQGather (moa_gather_qw_f32, qgather.h), which reads E^T quantized in
MoaQGemm's layout, so a tied lm_head and the lookup share one stored copy however the exporter
wrote the tie (a second initializer E^T, a Transpose of E, a Gemm with transB=1).

Expected values: numpy in float64 with the table dequantized from the raw output of
passes/quantize.quantize (not from the packed layout under test); an index outside the table
stops the run with MOA_ERR_INDEX_OUT_OF_RANGE (status 5), as the float Gather does. A tiny Hugging
Face decoder converted for generation with --weights gives transformers' tokens and float64
logits on the same weights dequantized by quantize() (embedding and every Linear)."""
from __future__ import annotations

import json
from pathlib import Path
import re

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import pytest
import torch
from transformers.pytorch_utils import Conv1D

from conftest import BOARDS, SANITIZE, require_board
import decoders
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.generation import generate_ids, generation_info
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import check_inputs, run
from moa_edge.passes import fold
from moa_edge.passes.quantize import parse_weights, quantize
from moa_edge.pipeline import convert, load_graph

V, D = 40, 64  # 40 rows: three 16-wide panels, the last one part padding
TIES = ("initializer", "transpose", "gemm_transB")
FORMATS = ("int8", "int4", "int4:16", "fp16")
STORED = {"i8": "int8", "u4": "int4", "f16": "float16"}  # weights_bytes_by_type's name of each format's values
_rng = np.random.default_rng(14)
TABLE = _rng.standard_normal((V, D)).astype(np.float32)
GAIN = _rng.uniform(0.5, 1.5, D).astype(np.float32)
# Negative ids count from the end; the first and the last row, and rows of every panel.
IDS = np.array([[0, 39, 17, -1], [5, 16, -40, 31]], np.int64)


def tied_model(tie: str) -> onnx.ModelProto:
    """hidden = Gather(E, ids) * gain;  logits = hidden E^T (the tie written as `tie`; "untied": no
    logits, the table an embedding alone)."""
    ids_shape = [IDS.size] if tie == "gemm_transB" else list(IDS.shape)  # Gemm takes a 2-D A
    nodes = [helper.make_node("Gather", ["embed.weight", "ids"], ["rows"], name="embed", axis=0),
             helper.make_node("Mul", ["rows", "gain"], ["hidden"], name="scale")]
    initializers = [numpy_helper.from_array(TABLE, "embed.weight"), numpy_helper.from_array(GAIN, "gain")]
    if tie == "initializer":  # as torch.onnx.export writes a tied lm_head: E^T folded to a second initializer
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(TABLE.T), "lm_head.weight_t"))
        nodes.append(helper.make_node("MatMul", ["hidden", "lm_head.weight_t"], ["logits"], name="lm_head"))
    elif tie == "transpose":
        nodes += [helper.make_node("Transpose", ["embed.weight"], ["embed_t"], name="tie", perm=[1, 0]),
                  helper.make_node("MatMul", ["hidden", "embed_t"], ["logits"], name="lm_head")]
    elif tie == "gemm_transB":
        nodes.append(helper.make_node("Gemm", ["hidden", "embed.weight"], ["logits"], name="lm_head", transB=1))
    outputs = [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ids_shape + [D])]
    if tie != "untied":
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ids_shape + [V]))
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, ids_shape)],
                              outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def table_format(weights: str, tied: bool = True):
    """The format the table is stored in: a table tied to the output layer (the lm_head, whose
    logits are a graph output) takes the output layer's (int8 when the others are 4-bit)."""
    fmt = parse_weights(weights)
    return fmt.for_output_layer() if tied else fmt


def dequantized(b: np.ndarray, fmt) -> np.ndarray:
    """B (K x N) as the quantizer leaves it, in float64: scale (q - zero) + offset per block of K rows
    (float16: q itself)."""
    block = fmt.block or b.shape[0]
    q, scale, offset, zero = quantize(np.ascontiguousarray(b), fmt.qtype, block)
    if fmt.qtype == "f16":
        return q.astype(np.float64)
    rows = np.arange(b.shape[0]) // block
    return (scale[rows].astype(np.float64) * (q.astype(np.float64) - zero)
            + (offset[rows].astype(np.float64) if offset is not None else 0.0))


def dequantized_table(weights: str, tied: bool = True) -> np.ndarray:
    """E as the quantizer leaves it, in float64: B = E^T quantized, transposed back."""
    fmt = table_format(weights, tied)
    block = fmt.block or D
    rows = np.arange(D) // block
    w = dequantized(TABLE.T, fmt)
    # Not our layout, but a quantization of E: within half a step (int8, float16) or one step (4-bit) of it.
    blocks = TABLE.T.reshape(D // block, block, V)
    if fmt.qtype == "f16":
        step = 2.0 ** (np.floor(np.log2(np.abs(TABLE.T))) - 10)  # one float16 ulp at each value (all normal)
    else:
        step = (np.abs(blocks).max(axis=1) / 127 if fmt.qtype == "i8" else np.ptp(blocks, axis=1) / 15)[rows]
    # Scales and minimums of blocks are halves: the grid moves by up to an ulp of float16 at the block's largest.
    moved = 2.0 ** -10 * np.abs(blocks).max(axis=1)[rows] if block < D and fmt.qtype != "f16" else 0.0
    assert np.all(np.abs(w - TABLE.T) <= step * 0.5 * (1 + 1e-5) + moved + 1e-6)
    return w.T


def expected(weights: str, ids: np.ndarray, tied: bool = True) -> dict[str, np.ndarray]:
    table = dequantized_table(weights, tied)
    hidden = table[ids] * GAIN.astype(np.float64)
    return {"hidden": hidden, "logits": hidden @ table.T} if tied else {"hidden": hidden}


def _assert_close(got: dict, want: dict, message: str) -> None:
    for name, value in want.items():
        # float32 sums of D products: a few ulps of the largest term sum
        tolerance = 1e-5 * np.abs(value).max()
        np.testing.assert_allclose(got[name], value, rtol=0, atol=tolerance, err_msg=f"{message} {name}")


_projects: dict[tuple[str, str], tuple[Path, dict]] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("qgather")


def project_for(tie: str, weights: str, workdir: Path) -> tuple[Path, dict]:
    if (tie, weights) not in _projects:
        path = workdir / f"{tie}.onnx"
        if not path.exists():
            onnx.save(tied_model(tie), path)
        project = workdir / f"{tie}-{weights.replace(':', '_')}"
        _projects[tie, weights] = (project, convert(path, project, weights=parse_weights(weights)))
    return _projects[tie, weights]




def _binary(project: Path, board) -> Path:
    """The runner; on the host under ASan/UBSan, so a read past the table or its scales fails."""
    if board.name == "host":
        return build(project, board, extra_cflags=SANITIZE, extra_ldflags=SANITIZE[:1], variant="host-asan")
    return build(project, board)


def _feeds(tie: str, ids: np.ndarray = IDS) -> dict[str, np.ndarray]:
    return {"ids": ids.reshape(-1) if tie == "gemm_transB" else ids}


@pytest.mark.parametrize("weights", FORMATS)
@pytest.mark.parametrize("tie", TIES)
def test_the_table_is_stored_once_for_the_lookup_and_the_tied_lm_head(tie, weights, workdir):
    project, report = project_for(tie, weights, workdir)
    fmt = table_format(weights)
    block = fmt.block or D
    panels = -(-V // 16)
    values = panels * 16 * D * {"i8": 2, "u4": 1, "f16": 4}[fmt.qtype] // 2
    scales = panels * 16 * (D // block) * {"i8": 1, "u4": 2, "f16": 0}[fmt.qtype]  # and 4-bit's minimums
    want = {STORED[fmt.qtype]: values, "float32": 4 * D}  # + the gain
    if block < D:  # scales in blocks are halves (GGUF's form)
        want["float16"] = 2 * scales
    else:
        want["float32"] += 4 * scales
    assert report["memory"]["weights_bytes_by_type"] == want
    header = (project / "model.h").read_text()
    macros = {m[0].lower(): int(m[1]) for m in re.findall(r"#define MODEL_WEIGHTS_BYTES_(\w+) (\d+)u", header)}
    assert macros == want
    code = (project / "model.c").read_text()
    assert code.count("moa_gather_qw_f32(") == 1 and code.count("moa_gemm_qw_f32_on(") == 1


@pytest.mark.parametrize("weights", FORMATS)
@pytest.mark.parametrize("tie", TIES)
def test_torch_reference_of_the_lowered_graph_matches_numpy(tie, weights, workdir):
    path = workdir / f"{tie}.onnx"
    onnx.save(tied_model(tie), path)
    graph = load_graph(path, weights=parse_weights(weights))
    assert [n.op for n in graph.nodes if n.op.startswith("MoaQ")] == ["MoaQGather", "MoaQGemm"]
    got = run_reference(graph, _feeds(tie))
    want = expected(weights, IDS.reshape(-1) if tie == "gemm_transB" else IDS)
    _assert_close(got, want, f"{tie} {weights}")


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("weights", FORMATS)
def test_quantized_lookup_and_tied_lm_head_match_numpy(weights, board_name, workdir):
    board = require_board(board_name)
    project, report = project_for("initializer", weights, workdir)
    feeds = check_inputs(report["io"], _feeds("initializer"), "ids")
    outputs, _ = run(_binary(project, board), board, report["io"], feeds)
    _assert_close(outputs, expected(weights, IDS), f"{weights} on {board_name}")


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("weights", FORMATS)
def test_an_untied_table_is_looked_up_in_the_format_itself(weights, board_name, workdir):
    """No output layer to share with: the table takes the format as given (4-bit rows for int4)."""
    board = require_board(board_name)
    project, report = project_for("untied", weights, workdir)
    fmt = parse_weights(weights)
    halves = {"float16"} if fmt.block is not None and fmt.block < D else set()  # the scales of blocks
    assert set(report["memory"]["weights_bytes_by_type"]) == {"float32", STORED[fmt.qtype], *halves}
    feeds = check_inputs(report["io"], _feeds("untied"), "ids")
    outputs, _ = run(_binary(project, board), board, report["io"], feeds)
    _assert_close(outputs, expected(weights, IDS, tied=False), f"untied {weights} on {board_name}")


def test_the_gemm_transB_tie_runs_on_the_host(workdir):
    board = require_board("host")
    project, report = project_for("gemm_transB", "int4:16", workdir)
    feeds = check_inputs(report["io"], _feeds("gemm_transB"), "ids")
    outputs, _ = run(_binary(project, board), board, report["io"], feeds)
    _assert_close(outputs, expected("int4:16", IDS.reshape(-1)), "gemm_transB int4:16")


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("bad", [V, -V - 1])
def test_an_index_outside_the_table_stops_the_run_with_status_5(bad, board_name, workdir):
    board = require_board(board_name)
    project, report = project_for("initializer", "int4", workdir)
    ids = IDS.copy()
    ids[1, 2] = bad
    with pytest.raises(MoaEdgeError, match=r"failed with status 5\b"):
        run(_binary(project, board), board, report["io"], check_inputs(report["io"], _feeds("initializer", ids), "ids"))


def test_a_block_that_does_not_divide_the_row_is_refused_by_node(workdir):
    path = workdir / "untied.onnx"
    onnx.save(tied_model("untied"), path)
    with pytest.raises(MoaEdgeError, match=r"block 48 does not divide K=64 of node 'embed'"):
        load_graph(path, weights=parse_weights("int4:48"))


@pytest.mark.parametrize("weights", [None, "int8", "int4"])
def test_a_transpose_tie_too_large_to_fold_is_packed_from_the_table(weights, workdir, monkeypatch):
    """dynamo writes SmolLM2's tied lm_head as MatMul(h, Transpose(E)) with E (28M elements) over
    fold_constants' limit: the MatMul is packed from E transposed (Gemm transB), and no Transpose
    of the table is left to run at every step. Here the limit is lowered below this E's size."""
    monkeypatch.setattr(fold, "_MAX_FOLDED_ELEMENTS", V * D - 1)
    path = workdir / "transpose-unfolded.onnx"
    onnx.save(tied_model("transpose"), path)
    graph = load_graph(path, weights=parse_weights(weights))
    ops = [n.op for n in graph.nodes]
    assert "Transpose" not in ops and "MatMul" not in ops
    assert ops.count("MoaQGemm" if weights else "MoaGemm") == 1
    got = run_reference(graph, _feeds("transpose"))
    if weights:
        want = expected(weights, IDS)
    else:
        hidden = TABLE.astype(np.float64)[IDS] * GAIN
        want = {"hidden": hidden, "logits": hidden @ TABLE.T.astype(np.float64)}
    _assert_close(got, want, f"unfolded transpose {weights}")
    if weights == "int4":  # and the C build, on the host
        board = require_board("host")
        project = workdir / "transpose-unfolded-int4"
        report = convert(path, project, weights=parse_weights(weights))
        assert (project / "model.c").read_text().count("moa_gemm_qw_f32_on(") == 1
        outputs, _ = run(_binary(project, board), board, report["io"], check_inputs(report["io"], _feeds("transpose"), "ids"))
        _assert_close(outputs, want, "unfolded transpose int4 on the host")


def test_report_json_states_the_quantized_bytes(workdir):
    project, _ = project_for("transpose", "int8", workdir)
    memory = json.loads((project / "report.json").read_text())["memory"]
    assert memory["weights_bytes"] == sum(memory["weights_bytes_by_type"].values()) < TABLE.nbytes


def dequantized_model(model: torch.nn.Module, weights: str) -> torch.nn.Module:
    """A copy of a transformers decoder whose embeddings and Linear (and GPT-2 Conv1D) weights are
    replaced by their quantization, dequantized: each weight is B = W^T of its MatMul (K = inputs),
    and E^T for an embedding; a tied weight (one Parameter) is quantized once, the lm_head's (the
    output layer: its logits are the graph's output) in the output layer's format."""
    model, done = copy.deepcopy(model), set()
    output_weight = model.get_output_embeddings().weight
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding, Conv1D)) and id(module.weight) not in done:
            done.add(id(module.weight))
            w = module.weight.detach().numpy()
            b = w if isinstance(module, Conv1D) else w.T  # Conv1D stores [in, out] already
            q = dequantized(b, table_format(weights, tied=module.weight is output_weight))
            module.weight.data = torch.from_numpy((q if isinstance(module, Conv1D) else q.T).astype(np.float32))
    return model


# Llama's int8 and int4 builds: tests/test_quantized_weights.py; GPT-2 adds Conv1D weights and a
# learned position table (an embedding not tied to the output layer).
@pytest.mark.parametrize("family, weights", [("gpt2", "int8")])
def test_a_decoder_with_quantized_weights_generates_as_transformers_on_them(family, weights, workdir):
    case = decoders.cached_decoder(family, "torchscript", 17, workdir)
    model = dequantized_model(case.model, weights)
    project = workdir / f"decoder-{family}-{weights}"
    report = convert(case.path, project, max_context=32, prefill_chunk=4, weights=parse_weights(weights))
    gathers = 2 if family == "gpt2" else 1  # GPT-2 also looks up learned positions
    assert report["memory"]["weights_bytes"] < 0.3 * sum(p.numel() * 4 for p in case.model.parameters())
    assert (project / "model.c").read_text().count("moa_gather_qw_f32(") == 2 * gathers  # prefill, decode step
    board = require_board("host")
    binary, info = build(project, board), generation_info(project)
    prompt = [int(t) for t in np.random.default_rng(1).integers(0, case.geometry.vocab, 7)]
    want = decoders.reference_generate(model, prompt, 8)
    assert generate_ids(binary, board, info, prompt, 8)["tokens"] == want
    forced = generate_ids(binary, board, info, prompt, 8, forced_ids=want)["logits"]
    reference = decoders.reference_logits(model, prompt + want)[len(prompt) - 1:len(prompt) + 7]
    assert np.abs(forced - reference).max() / np.abs(reference).max() < 1e-4
