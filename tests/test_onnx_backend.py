"""The ONNX backend node tests for Attention (onnx 1.23, generated in memory) through
convert -> generated C -> host run, against the tests' own expected outputs (issue 4, item 5).

Each non-bf16 test of opsets 23 to 25 (25: sliding windows), and its `_expanded` twin (the function body, which
the detector must fold back into one block), runs. Cases that use a feature the runtime
does not have yet must be refused with one clear error naming it; they are listed in
NOT_YET and reported as xfail, so this file fails the day one of them starts to pass."""
import re

import numpy as np
import onnx
from onnx.backend.test.loader import load_model_tests
import pytest

from conftest import require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.runner import run
from moa_edge.pipeline import convert


def _opset(case) -> int:
    return max(o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx"))


CASES = {c.name: c for c in load_model_tests(kind="node")
         if c.name.startswith("test_attention") and "bf16" not in c.name and _opset(c) in (23, 24, 25)}

# Features not implemented yet, by the pattern of the test names that need them. float16
# models are refused by design (the runtime is fp32): their error must name the type.
NOT_YET = {
    r"fp16|float16|softmax_precision": "float16 inputs (FLOAT16)",
}


def _not_yet(name: str) -> str | None:
    for pattern, feature in NOT_YET.items():
        if re.search(pattern, name):
            return feature
    return None


@pytest.mark.board
@pytest.mark.parametrize("name", sorted(CASES))
def test_backend_attention_case(name, tmp_path):
    board = require_board("host")
    case = CASES[name]
    (inputs, expected), = case.data_sets
    path = tmp_path / "model.onnx"
    onnx.save(case.model, path)
    missing = _not_yet(name)
    try:
        report = convert(path, tmp_path / "project")
    except MoaEdgeError as exc:
        if missing:
            message = str(exc).splitlines()[0]
            assert "support" in message, message  # names the feature or type it cannot do
            pytest.xfail(f"not yet: {missing} ({message})")
        raise
    assert missing is None, f"{name} now converts: remove it from NOT_YET ({missing})"
    feeds = {vi.name: x for vi, x in zip(case.model.graph.input, inputs)}
    outputs, _ = run(build(tmp_path / "project", board), board, report["io"], feeds)
    for vi, want in zip(case.model.graph.output, expected):
        np.testing.assert_allclose(outputs[vi.name], want, rtol=max(case.rtol, 1e-4), atol=max(case.atol, 1e-6))


def test_backend_pass_count_report(capsys):
    """Prints how many backend cases exist and the share that must pass; runs last in this file."""
    total = len(CASES)
    expected_to_pass = sum(_not_yet(n) is None for n in CASES)
    with capsys.disabled():
        print(f"\nONNX Attention backend tests (opsets 23-25, no bf16): {total} cases, "
              f"{expected_to_pass} run end to end on the host, {total - expected_to_pass} refused (not yet)")
    assert expected_to_pass >= 80
