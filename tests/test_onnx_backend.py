"""The ONNX backend node tests for Attention (onnx 1.23, generated in memory) through
convert -> generated C -> host run, against the tests' own expected outputs (issue 4, item 5).

Each test of opsets 23 to 25 (25: sliding windows; the float16 and bfloat16 ones computed in
float32, passes/half.py), and its `_expanded` twin (the function body, which the detector must
fold back into one block), runs. Cases that use a feature the runtime
does not have yet must be refused with one clear error naming it; they are listed in
NOT_YET and reported as xfail, so this file fails the day one of them starts to pass."""

from onnx.backend.test.loader import load_model_tests
import pytest

from backend_cases import not_yet, run_backend_case


def _opset(case) -> int:
    return max(o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx"))


CASES = {c.name: c for c in load_model_tests(kind="node")
         if c.name.startswith("test_attention") and _opset(c) in (23, 24, 25)}

# Features not implemented yet, by the pattern of the test names that need them (none left).
NOT_YET: dict[str, str] = {}


def _not_yet(name: str) -> str | None:
    return not_yet(name, NOT_YET)


@pytest.mark.board
@pytest.mark.parametrize("name", sorted(CASES))
def test_backend_attention_case(name, tmp_path):
    run_backend_case(name, CASES[name], tmp_path, NOT_YET, rtol=1e-4)


def test_backend_pass_count_report(capsys):
    """Prints how many backend cases exist and the share that must pass; runs last in this file."""
    total = len(CASES)
    expected_to_pass = sum(_not_yet(n) is None for n in CASES)
    with capsys.disabled():
        print(f"\nONNX Attention backend tests (opsets 23-25): {total} cases, "
              f"{expected_to_pass} run end to end on the host, {total - expected_to_pass} refused (not yet)")
    assert expected_to_pass == total >= 186
