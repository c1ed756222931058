"""Every node test case of the installed onnx through convert -> generated C -> host run
(issue 17, item 6), in node_suite.GROUPS groups of cases that compile into one program each.

A case that converts must give the case's own expected outputs: a wrong or crashed case fails
its group. The run as a whole fails if fewer than node_suite.PASS_FLOOR of the cases not out of
scope by design pass (conftest.py), and prints pass / refused by design / not yet."""
import warnings

from onnx.backend.test.loader import load_model_tests
import pytest

from conftest import require_board
from moa_edge.harness.build import cc_launcher
import node_suite

with warnings.catch_warnings():  # onnx's case generators divide by zero and overflow on purpose
    warnings.simplefilter("ignore", RuntimeWarning)
    CASES = list(enumerate(load_model_tests(kind="node")))


@pytest.fixture(scope="session")
def node_runtime(tmp_path_factory):
    """The runtime's sources compiled once (per worker) with the host's compiler and flags."""
    board = require_board("host")
    cc = " ".join(filter(None, [cc_launcher(), board.compiler()]))
    cflags = list(board.toolchain["cflags"])
    return cc, cflags, node_suite.runtime_library(tmp_path_factory.mktemp("node-runtime"), cc, cflags)


@pytest.mark.board
@pytest.mark.parametrize("group", range(node_suite.GROUPS))
def test_node_cases_convert_run_and_match(group, node_runtime, tmp_path):
    cc, cflags, library = node_runtime
    outcomes = node_suite.run_group(CASES[group::node_suite.GROUPS], tmp_path, cc, cflags, library)
    node_suite.OUTCOMES.update(outcomes)
    bugs = {name: o for name, o in outcomes.items() if o["status"] in ("wrong", "crash")}
    assert not bugs, bugs


# The ops issue 17 adds: their torch references (what `validate` compares with) against the
# same cases' expected outputs.
ISSUE_17_OPS = {"LeakyRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "HardSigmoid", "HardSwish", "Shrink", "Softplus",
                "Softsign", "Mish", "Swish", "Round", "Sign", "PRelu", "Mod", "Sum", "Mean", "Tan", "Asin", "Acos",
                "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "ReduceMin", "ReduceProd", "ReduceLogSum",
                "ReduceLogSumExp", "ArgMax", "ArgMin", "LogSoftmax", "Hardmax", "MaxPool", "AveragePool", "LpPool",
                "GlobalMaxPool", "GlobalAveragePool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization",
                "GroupNormalization", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "BitShift"}
ISSUE_17_OPS |= {"Resize"}
ISSUE_17_OPS |= {"Einsum", "CumProd", "Tile", "DepthToSpace", "SpaceToDepth", "OneHot", "EyeLike"}
ISSUE_17_OPS |= {"GRU", "LSTM", "RNN"}
ISSUE_17_OPS |= {"ConvTranspose"}
ISSUE_17_OPS |= {"CenterCropPad", "LpNormalization", "Pad", "ReverseSequence", "Scatter", "ScatterElements", "ScatterND", "Slice", "SwiGLU", "TensorScatter", "TopK"}
ISSUE_17_OPS |= {"BitCast", "BlackmanWindow", "DFT", "HammingWindow", "HannWindow", "MelWeightMatrix", "STFT"}


def test_the_torch_references_of_the_new_ops_give_the_cases_outputs(tmp_path):
    """Every case of those ops that loads (its types and inputs supported, shape inputs held as
    constants where needed) gives the case's outputs from run_reference, in float64."""
    import numpy as np
    import onnx
    from moa_edge.errors import MoaEdgeError
    from moa_edge.harness.reference import run_reference
    from moa_edge.pipeline import load_graph
    checked, wrong = 0, {}
    for _, case in CASES:
        if {n.op_type for n in case.model.graph.node} - ISSUE_17_OPS or case.name.endswith("_expanded"):
            continue
        model, feeds, _ = node_suite.with_constant_inputs(case)
        onnx.save(model, tmp_path / "m.onnx")
        try:
            graph = load_graph(tmp_path / "m.onnx")
            got = run_reference(graph, feeds)
        except MoaEdgeError:
            continue
        checked += 1
        (_, expected), *_ = case.data_sets
        for vi, want in zip(case.model.graph.output, node_suite.arrays(expected)):
            if not node_suite.close(np.asarray(got[vi.name]).astype(np.asarray(want).dtype), want,
                                     max(case.rtol, 1e-5), max(case.atol, 1e-6)):
                wrong[case.name] = vi.name
    assert checked >= 150 and not wrong, (checked, wrong)
