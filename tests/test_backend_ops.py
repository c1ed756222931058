"""The ONNX backend node tests (onnx 1.23's own cases, generated in memory) for every op the
runtime implements outside attention: convert -> generated C -> host run, against the
expected outputs that ship with each case (issue 5, item 4).

A case is taken when its one node is a runtime op and every tensor is float32, bool,
int32, int64, float16 or bfloat16 (halves computed in float32: passes/half.py). Cases that need
something the converter cannot do (a shape given as a run-time input, an output that is an input)
must be refused with one clear error; they are listed in NOT_YET by name pattern and reported as
xfail, so this file fails the day one starts to pass."""
from collections import Counter

import onnx
from onnx.backend.test.loader import load_model_tests
import pytest

from backend_cases import arrays, not_yet, run_backend_case, run_case, with_constant_inputs
from moa_edge.ops import SUPPORTED_OPS

_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL, onnx.TensorProto.INT64, onnx.TensorProto.INT32,
          onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
# Ops whose own test files run their backend cases (attention: test_onnx_backend.py;
# normalization and reductions, whose axes inputs become constants: test_normalization.py).
_ELSEWHERE = {"MoaAttention", "MoaConcat", "LayerNormalization", "RMSNormalization", "Softmax", "ReduceMean",
              "ReduceSum", "ReduceMax", "ReduceL1", "ReduceL2", "ReduceSumSquare", "Conv"}


# Ops the passes turn into others (copies through access maps, or nothing at inference).
LOWERED = {"Transpose", "Concat", "Slice", "Split", "Expand", "Identity", "Dropout", "Pad", "CastLike"}


def _runtime_case(case) -> str | None:
    """The op type of a one-node case the runtime implements, else None."""
    nodes = case.model.graph.node
    if len(nodes) != 1 or nodes[0].domain not in ("", "ai.onnx") or nodes[0].op_type in _ELSEWHERE:
        return None
    if (nodes[0].op_type not in SUPPORTED_OPS and nodes[0].op_type not in LOWERED) or case.name.endswith("_expanded"):
        return None
    values = list(case.model.graph.input) + list(case.model.graph.output)
    if any(v.type.tensor_type.elem_type not in _TYPES for v in values):
        return None
    return nodes[0].op_type


CASES = {c.name: (op, c) for c in load_model_tests(kind="node") if (op := _runtime_case(c))}

# What the converter refuses, by case-name pattern (reason in the value).
NOT_YET: dict[str, str] = {
    r"^test_training_dropout(?!_zero_ratio$)": "training-mode Dropout (random; unsupported)",
    r"^test_dropout_default_mask": "Dropout's mask output (unsupported)",
    r"^test_(edge|reflect|wrap)_pad$": "Pad modes edge, reflect and wrap (unsupported)",
    r"^test_slice_neg_steps$": "Slice with a negative step (unsupported)",
}


def _not_yet(name: str) -> str | None:
    return not_yet(name, NOT_YET)


@pytest.mark.board
@pytest.mark.parametrize("name", sorted(CASES))
def test_backend_op_case(name, tmp_path):
    op, case = CASES[name]
    if op not in LOWERED or op == "Concat":
        run_backend_case(name, case, tmp_path, NOT_YET)
        return
    model, feeds = with_constant_inputs(case, range(1, len(case.model.graph.node[0].input)))
    (_, expected), = case.data_sets
    run_case(name, model, feeds, arrays(expected), tmp_path, NOT_YET, rtol=max(case.rtol, 1e-5),
             atol=max(case.atol, 1e-6))


def test_backend_op_pass_count(capsys):
    """Prints, per op, how many backend cases exist and how many must run end to end."""
    per_op = Counter(op for op, _ in CASES.values())
    passing = Counter(op for name, (op, _) in CASES.items() if _not_yet(name) is None)
    with capsys.disabled():
        print("\nONNX backend node tests per runtime op (runs end to end / cases): " +
              ", ".join(f"{op} {passing[op]}/{n}" for op, n in sorted(per_op.items())))
    assert sum(passing.values()) >= len(CASES) * 0.8
