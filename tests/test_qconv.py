"""`convert --weights` on Conv (issue 14): the weight stored as int8 per output channel, 4 bits in
blocks (Q4_1) or float16 halves, in W's own order (moa/conv.h), each kernel tap dequantized into
the node's scratch before conv.c's float GEMMs. Expected values: onnxruntime on the same model
with W replaced by the quantizer's values (passes/quantize.py, the unit the kernel must read back),
so the stored layout, the scales (float16 in blocks) and the tap's dequantization are under test.
A Conv whose C/groups * KH * KW the block does not divide is stored int8 per output channel."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper
import pytest

from conftest import BOARDS, require_board
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import check_inputs, run
from moa_edge.passes.pack import _conv_format
from moa_edge.passes.quantize import dequantized, parse_weights
from moa_edge.pipeline import convert, load_graph
from test_conv import Case, _assert_close, _expected, _feeds, _model

CASES = [
    Case("conv2d_pads", (1, 8, 9, 7), (6, 8, 2, 2), attrs=(("pads", [1, 0, 1, 1]),)),           # R = 32
    Case("conv2d_grouped_strided", (1, 8, 9, 9), (4, 4, 2, 4), attrs=(("group", 2), ("strides", [2, 1]))),  # R = 32
    Case("conv1d_whisper_like", (1, 16, 20), (12, 16, 4), bias=False, attrs=(("pads", [1, 2]),)),  # R = 64
    Case("conv2d_depthwise", (1, 4, 8, 8), (4, 1, 3, 3), attrs=(("group", 4), ("pads", [1, 1, 1, 1]))),  # R = 9
    Case("conv2d_stem_147", (1, 3, 12, 12), (5, 3, 7, 7), attrs=(("strides", [2, 2]), ("pads", [3, 3, 3, 3]))),
]
FORMATS = ["int8", "int4", "int4:16", "int8:32", "fp16"]
STORED = {"i8": "int8", "u4": "int4", "f16": "float16"}


def _format(case: Case, weights: str):
    return _conv_format(parse_weights(weights), int(np.prod(case.w[1:])))


def _dequantized_model(case: Case, weights: str) -> onnx.ModelProto:
    """The case's model with W as the stored format gives it back (float32)."""
    model = _model(case)
    init = next(i for i in model.graph.initializer if i.name == "W")
    w = numpy_helper.to_array(init)
    m, r = w.shape[0], int(np.prod(w.shape[1:]))
    back = dequantized(np.ascontiguousarray(w.reshape(m, r).T), _format(case, weights)).T.reshape(w.shape)
    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(back, np.float32), "W"))
    return model


_projects: dict = {}


def project_for(case: Case, weights: str, workdir):
    key = (case.name, weights)
    if key not in _projects:
        path, reference = workdir / f"{case.name}.onnx", workdir / f"{case.name}-{weights}-deq.onnx"
        onnx.save(_model(case), path)
        onnx.save(_dequantized_model(case, weights), reference)
        project = workdir / f"{case.name}-{weights.replace(':', '-')}"
        _projects[key] = (path, reference, project, convert(path, project, weights=parse_weights(weights)))
    return _projects[key]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("qconv")


@pytest.mark.parametrize("weights", FORMATS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_torch_reference_of_the_stored_weights_matches_onnxruntime(case, weights, workdir):
    path, reference, _, _ = project_for(case, weights, workdir)
    graph = load_graph(path, weights=parse_weights(weights))
    assert [n.op for n in graph.nodes] == ["MoaQConv"]
    feeds = _feeds(case)
    _assert_close(run_reference(graph, feeds)["Y"], _expected(reference, feeds), case)


# Every case and format on the host; the emulated boards run the default formats on four cases (the
# dequantization is the same C on every ISA, the GEMMs are conv.c's, tested in test_conv.py).
BOARD_RUNS = [(case, weights, board) for board in BOARDS for case in CASES for weights in FORMATS
              if board == "host" or (weights in ("int8", "int4", "fp16") and case.name != "conv2d_pads")]


@pytest.mark.board
@pytest.mark.parametrize("case, weights, board_name", BOARD_RUNS,
                         ids=[f"{c.name}-{w}-{b}" for c, w, b in BOARD_RUNS])
def test_generated_c_reads_the_stored_weights(case, weights, board_name, workdir):
    board = require_board(board_name)
    _, reference, project, report = project_for(case, weights, workdir)
    feeds = _feeds(case)
    outputs, _ = run(build(project, board), board, report["io"], check_inputs(report["io"], feeds, case.name))
    _assert_close(outputs["Y"], _expected(reference, feeds), case)


@pytest.mark.parametrize("weights", FORMATS)
def test_stored_bytes_per_type(weights, workdir):
    """int8: a byte per weight; 4-bit: half a byte; scales of blocks as halves, per channel as floats;
    the stem convolution (R = 147) falls back to int8 per output channel."""
    for case in (CASES[0], CASES[4]):
        _, _, project, report = project_for(case, weights, workdir)
        fmt = _format(case, weights)
        m, r = case.w[0], int(np.prod(case.w[1:]))
        block = fmt.block or r
        want = {STORED[fmt.qtype]: m * r * (2 if fmt.qtype == "f16" else 1) // (2 if fmt.qtype == "u4" else 1),
                "float32": 4 * m * case.bias}
        scales = 0 if fmt.qtype == "f16" else m * (r // block) * (2 if fmt.qtype == "u4" else 1)
        if block < r:
            want["float16"] = 2 * scales
        else:
            want["float32"] += 4 * scales
        assert report["memory"]["weights_bytes_by_type"] == {k: v for k, v in want.items() if v}, case.name
        assert report["memory"]["arena_bytes"] >= 4 * m * case.x[1]  # a tap's Mg x Cg floats
        code = (project / "model.c").read_text()
        assert code.count("moa_conv2d_qw_f32_on(pool, ") == 1, case.name
    assert json.loads((project / "report.json").read_text())["memory"]["weights_bytes"] > 0
