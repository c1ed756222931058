"""Every node test case of the installed onnx through convert -> generated C -> host run
(issue 17, item 6), in node_suite.GROUPS groups of cases that compile into one program each.

A case that converts must give the case's own expected outputs: a wrong or crashed case fails
its group. The run as a whole fails if fewer than node_suite.PASS_FLOOR of the cases not out of
scope by design pass (conftest.py), and prints pass / refused by design / not yet."""
import os
import warnings

from onnx.backend.test.loader import load_model_tests
import pytest

from conftest import require_board
import node_suite

with warnings.catch_warnings():  # onnx's case generators divide by zero and overflow on purpose
    warnings.simplefilter("ignore", RuntimeWarning)
    CASES = list(enumerate(load_model_tests(kind="node")))


@pytest.fixture(scope="session")
def node_runtime(tmp_path_factory):
    """The runtime's sources compiled once (per worker) with the host's compiler and flags."""
    board = require_board("host")
    cc = " ".join(filter(None, [os.environ.get("MOA_EDGE_CC_LAUNCHER", ""), board.compiler()]))
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
