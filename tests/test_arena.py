"""The static arena planner (issue 5, item 2): on random graphs, no two tensors that are
alive at the same step share a byte, views and in-place outputs share storage only where
that is safe, and the better of the two placements is never worse than greedy-by-size.
Liveness is recomputed here from the graph itself, not taken from the planner."""
from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from conftest import require_board
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import run
from moa_edge.ir import Graph, Node, Tensor
from moa_edge.plan import arena

UNARY, BINARY = ["Exp", "Neg", "Tanh", "Sigmoid"], ["Add", "Mul", "Sub"]


@st.composite
def random_graphs(draw):
    """A chain-and-branch graph of element-wise ops and reshapes over a few shapes."""
    rows = draw(st.integers(1, 6))
    cols = draw(st.sampled_from([2, 4, 8]))
    tensors = {"x": Tensor("x", (rows, cols), "float32")}
    nodes, pool = [], ["x"]
    for k in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["unary", "binary", "view"]))
        a = draw(st.sampled_from(pool))
        out = f"t{k}"
        shape = tensors[a].shape
        if kind == "view":
            shape = (shape[0] * shape[1],) if len(shape) == 2 else (rows, cols)
            nodes.append(Node("Reshape", f"n{k}", [a], [out]))
        elif kind == "unary":
            nodes.append(Node(draw(st.sampled_from(UNARY)), f"n{k}", [a], [out]))
        else:
            same = [name for name in pool if tensors[name].shape == shape]
            nodes.append(Node(draw(st.sampled_from(BINARY)), f"n{k}", [a, draw(st.sampled_from(same))], [out]))
        tensors[out] = Tensor(out, tuple(shape), "float32")
        pool.append(out)
    outputs = sorted({nodes[-1].outputs[0]} | set(draw(st.lists(st.sampled_from(pool[1:]), max_size=2))))
    return Graph("random", ["x"], outputs, nodes, tensors, {"": 18})


def _storage_root(name, storage):
    while name in storage:
        name = storage[name]
    return name


def _check_no_live_overlap(graph, plan):
    """At every step, the tensors written there or read later (and each one's storage) hold
    disjoint bytes."""
    readers = {}
    for step, node in enumerate(graph.nodes):
        for name in node.inputs:
            readers.setdefault(name, []).append(step)
    producer_step = {name: step for step, node in enumerate(graph.nodes) for name in node.outputs}
    for step in range(len(graph.nodes)):
        live = {}
        for name, born in producer_step.items():
            if born <= step <= max(readers.get(name, [born])):
                root = _storage_root(name, plan.storage_of)
                if root in plan.offsets:
                    live[root] = (plan.offsets[root], plan.offsets[root] + graph.tensors[root].nbytes)
        spans = sorted(live.values())
        for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
            assert e0 <= s1, f"step {step}: live buffers overlap {spans}"


@settings(max_examples=150, deadline=None)
@given(random_graphs())
def test_no_two_live_tensors_share_a_byte(graph):
    plan = arena.plan_arena(graph)
    _check_no_live_overlap(graph, plan)
    by_size = arena.plan_arena(graph, "greedy_by_size")
    assert plan.total_bytes <= by_size.total_bytes
    assert plan.total_bytes >= plan.describe()["live_bytes_lower_bound"]
    for name, shared in plan.storage_of.items():
        assert name not in graph.outputs  # the caller's buffers are never shared


def test_validator_catches_an_overlap():
    a, b = arena.Buffer("a", 0, 2, 64), arena.Buffer("b", 1, 3, 64)
    arena.validate([a, b], {"a": 0, "b": 64})
    with pytest.raises(AssertionError, match="overlap"):
        arena.validate([a, b], {"a": 0, "b": 32})


@pytest.mark.board
@settings(max_examples=12, deadline=None)
@given(random_graphs())
def test_planned_graphs_compute_what_the_reference_does(tmp_path_factory, graph):
    """In-place writes and views, run as C on the host, against the float64 reference."""
    from moa_edge.codegen.project import emit_project
    board = require_board("host")
    out = tmp_path_factory.mktemp("arena")
    report = emit_project(graph, out)
    x = np.random.default_rng(0).standard_normal(graph.tensors["x"].shape).astype(np.float32)
    got, _ = run(build(out, board), board, report["io"], {"x": x})
    want = run_reference(graph, {"x": x})
    for name in graph.outputs:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
