"""Element-wise fusion (passes/fuse.py): which nodes join one MoaElementwise loop and which
must not, the fused reference against the unfused one, fused models against onnxruntime
on every board, in-place arena placement, and the ulp error of moa/vmath.h's erf and tanh."""
import re
import subprocess

import numpy as np
import onnx
from onnx import TensorProto as T, helper, numpy_helper
import onnxruntime as ort
import pytest

from conftest import BOARDS, REPO, require_board
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import run
from moa_edge.pipeline import convert, load_graph
from moa_edge.plan import plan_arena

F, I64, B = T.FLOAT, T.INT64, T.BOOL


def _model(nodes, inputs, outputs, constants=()):
    io = lambda spec: [helper.make_tensor_value_info(n, t, s) for n, t, s in spec]  # noqa: E731
    graph = helper.make_graph(nodes, "g", io(inputs), io(outputs),
                              initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in constants])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _node(op, inputs, output, **attrs):
    return helper.make_node(op, inputs, [output], name=output, **attrs)


def _gelu_erf(x, out, tag=""):
    """The exported Gelu: x * 0.5 * (1 + erf(x / sqrt 2)); x read twice."""
    return [_node("Div", [x, "sqrt2"], f"{tag}div"), _node("Erf", [f"{tag}div"], f"{tag}erf"),
            _node("Add", [f"{tag}erf", "one"], f"{tag}plus"), _node("Mul", [f"{tag}plus", "half"], f"{tag}halve"),
            _node("Mul", [x, f"{tag}halve"], out)]


SCALARS = [("sqrt2", np.float32(np.sqrt(2))), ("one", np.float32(1)), ("half", np.float32(0.5))]


def _lowered(model, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return load_graph(path)


def _fused(graph):
    return {n.name: [m.op for m in n.attrs["body"].nodes] for n in graph.nodes if n.op == "MoaElementwise"}


# -- what fuses ------------------------------------------------------------------------------

def test_bias_and_gelu_fuse_into_one_loop_with_scalars_inlined(tmp_path):
    nodes = [_node("Add", ["x", "bias"], "h")] + _gelu_erf("h", "y")
    model = _model(nodes, [("x", F, [2, 3, 8])], [("y", F, [2, 3, 8])], SCALARS + [("bias", np.ones(8, np.float32))])
    graph = _lowered(model, tmp_path)
    assert [n.op for n in graph.nodes] == ["MoaElementwise"]
    (fused,) = graph.nodes
    assert [m.op for m in fused.attrs["body"].nodes] == ["Add", "Div", "Erf", "Add", "Mul", "Mul"]
    assert fused.inputs == ["x", "bias"]  # the scalars are C literals; h is read twice, computed once


def test_integer_and_bool_ops_fuse(tmp_path):
    """A padding mask from token ids: Equal -> Not -> And -> Cast -> Where, mixed types in one loop."""
    nodes = [_node("Equal", ["ids", "pad"], "is_pad"), _node("Not", ["is_pad"], "keep"),
             _node("And", ["keep", "allowed"], "both"), _node("Cast", ["both"], "weight", to=F),
             _node("Where", ["both", "x", "floor"], "picked"), _node("Mul", ["picked", "weight"], "y")]
    model = _model(nodes, [("ids", I64, [2, 5]), ("allowed", B, [2, 5]), ("x", F, [2, 5])], [("y", F, [2, 5])],
                   [("pad", np.int64(0)), ("floor", np.float32(-1e4))])
    graph = _lowered(model, tmp_path)
    assert _fused(graph) == {"y": ["Equal", "Not", "And", "Cast", "Where", "Mul"]}


# -- what must not fuse ----------------------------------------------------------------------

def test_an_intermediate_read_outside_the_group_stays_in_memory(tmp_path):
    nodes = [_node("Add", ["x", "x"], "h"), _node("Tanh", ["h"], "t"), _node("Mul", ["t", "t"], "y"),
             _node("ReduceSum", ["h"], "s", keepdims=1)]  # h is needed by the reduction too
    model = _model(nodes, [("x", F, [4, 8])], [("y", F, [4, 8]), ("s", F, [1, 1])])
    graph = _lowered(model, tmp_path)
    assert _fused(graph) == {"y": ["Tanh", "Mul"]}
    assert "h" in {o for n in graph.nodes for o in n.outputs}


def test_a_graph_output_is_never_an_intermediate(tmp_path):
    nodes = [_node("Add", ["x", "x"], "h"), _node("Exp", ["h"], "e"), _node("Neg", ["e"], "y")]
    model = _model(nodes, [("x", F, [4, 8])], [("y", F, [4, 8]), ("h", F, [4, 8])])
    graph = _lowered(model, tmp_path)
    assert _fused(graph) == {"y": ["Exp", "Neg"]}
    assert [n.op for n in graph.nodes] == ["Add", "MoaElementwise"]


def test_a_smaller_intermediate_broadcast_into_the_loop_is_not_recomputed_per_element(tmp_path):
    nodes = [_node("Mul", ["gamma", "gamma"], "g2"), _node("Relu", ["g2"], "g"),  # [8]: a group of its own
             _node("Mul", ["x", "g"], "scaled"), _node("Sqrt", ["scaled"], "y")]  # [4, 8]
    model = _model(nodes, [("x", F, [4, 8]), ("gamma", F, [8])], [("y", F, [4, 8])])
    graph = _lowered(model, tmp_path)
    assert _fused(graph) == {"g": ["Mul", "Relu"], "y": ["Mul", "Sqrt"]}


def test_a_long_chain_is_split_to_fit_the_named_values(tmp_path):
    """Twenty Adds of distinct weights: groups of at most 16 loads and members (d0..d15)."""
    nodes = [_node("Add", ["x" if k == 0 else f"a{k - 1}", f"w{k}"], f"a{k}" if k < 19 else "y") for k in range(20)]
    weights = [(f"w{k}", np.full((4, 8), k, np.float32)) for k in range(20)]
    model = _model(nodes, [("x", F, [4, 8])], [("y", F, [4, 8])], weights)
    graph = _lowered(model, tmp_path)
    for node in graph.nodes:
        assert node.op == "MoaElementwise"
        assert len(node.inputs) + len(node.attrs["body"].nodes) <= 16
    assert sum(len(n.attrs["body"].nodes) for n in graph.nodes) == 20
    x = np.arange(32, dtype=np.float32).reshape(4, 8)
    np.testing.assert_array_equal(run_reference(graph, {"x": x})["y"], x + sum(range(20)))


# -- reference, arena ------------------------------------------------------------------------

def test_the_fused_reference_is_the_unfused_one(tmp_path, monkeypatch):
    nodes = [_node("Add", ["x", "bias"], "h")] + _gelu_erf("h", "g") + [_node("Tanh", ["g"], "y")]
    model = _model(nodes, [("x", F, [3, 8])], [("y", F, [3, 8])], SCALARS + [("bias", np.linspace(-1, 1, 8, dtype=np.float32))])
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)}
    fused = run_reference(_lowered(model, tmp_path), feeds)["y"]
    monkeypatch.setattr("moa_edge.passes.fuse_elementwise", lambda graph: 0)
    unfused_graph = _lowered(model, tmp_path)
    assert "MoaElementwise" not in {n.op for n in unfused_graph.nodes}
    np.testing.assert_array_equal(fused, run_reference(unfused_graph, feeds)["y"])


def test_the_fused_node_writes_over_its_dying_input(tmp_path):
    """MatMul -> Gelu chain -> MatMul: the chain's output takes the first product's storage."""
    nodes = [_node("MatMul", ["x", "w1"], "h")] + _gelu_erf("h", "g") + [_node("MatMul", ["g", "w2"], "y")]
    model = _model(nodes, [("x", F, [4, 8])], [("y", F, [4, 8])],
                   SCALARS + [("w1", np.eye(8, 16, dtype=np.float32)), ("w2", np.eye(16, 8, dtype=np.float32))])
    graph = _lowered(model, tmp_path)
    assert _fused(graph) == {"g": ["Div", "Erf", "Add", "Mul", "Mul"]}
    plan = plan_arena(graph)
    assert plan.storage_of.get("g") == "h"
    assert plan.total_bytes == 4 * 16 * 4  # one [4, 16] buffer: no intermediate of the chain exists


# -- fused models on the boards --------------------------------------------------------------

def _mixed_model():
    """Everything the fusion meets in transformers: bias + erf Gelu, tanh Gelu with a scalar
    power, a padding mask built from ids with bool and int64 ops, a broadcast along rows."""
    nodes = ([_node("Add", ["x", "bias"], "h")] + _gelu_erf("h", "g")
             + [_node("Pow", ["g", "three"], "g3"), _node("Mul", ["g3", "c"], "g3c"), _node("Add", ["g", "g3c"], "inner"),
                _node("Mul", ["inner", "k"], "scaled"), _node("Tanh", ["scaled"], "th"), _node("Add", ["th", "one"], "th1"),
                _node("Mul", ["g", "th1"], "gt"),
                _node("Equal", ["ids", "pad"], "is_pad"), _node("Not", ["is_pad"], "keep"),
                _node("Cast", ["keep"], "keepf", to=F), _node("Where", ["keep", "gt", "floor"], "masked"),
                _node("Mul", ["masked", "keepf"], "y"), _node("Cast", ["is_pad"], "pads", to=I64),
                _node("Add", ["pads", "ids"], "ids_plus")])
    consts = SCALARS + [("bias", np.linspace(-2, 2, 16, dtype=np.float32)), ("three", np.float32(3)),
                        ("c", np.float32(0.044715)), ("k", np.float32(np.sqrt(2 / np.pi))), ("pad", np.int64(0)),
                        ("floor", np.float32(-3.0))]
    return _model(nodes, [("x", F, [2, 5, 16]), ("ids", I64, [2, 5, 1])], [("y", F, [2, 5, 16]), ("ids_plus", I64, [2, 5, 1])],
                  consts)


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
def test_fused_model_equals_onnxruntime_and_the_reference(board_name, tmp_path):
    board = require_board(board_name)
    model = _mixed_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(1)
    feeds = {"x": (rng.standard_normal((2, 5, 16)) * 3).astype(np.float32),
             "ids": rng.integers(0, 3, (2, 5, 1)).astype(np.int64)}
    report = convert(path, tmp_path / "p", board=board)
    assert "in one loop" in (tmp_path / "p" / "model.c").read_text()
    got, _ = run(build(tmp_path / "p", board), board, report["io"], feeds)
    want = dict(zip(["y", "ids_plus"], ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)))
    reference = run_reference(load_graph(path), feeds)
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["y"], reference["y"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["ids_plus"], want["ids_plus"])


# gcc targets and the vector width each must use for the element-wise loops: an AVX-512 Intel
# core (-march=native on one: moa/vectorise.h asks for zmm, where gcc's tuning takes 32 bytes),
# AVX2 alone (no masks: erf's pieces must not be sunk into branches, moa/vmath.h), and rpi4's
# NEON (moa/vectorise.h's cheap cost model: the very-cheap one kept GELU scalar).
VECTOR_TARGETS = {"avx512": ("host", ["-march=skylake-avx512"], 64), "avx2": ("host", ["-march=x86-64-v3"], 32),
                  "rpi4-neon": ("rpi4", None, 16)}


@pytest.mark.parametrize("target", VECTOR_TARGETS)
def test_every_fused_loop_of_a_deep_model_is_vectorised(target, tmp_path):
    """Forty blocks of LayerNorm then Gelu (erf form): gcc -O2 must vectorise the Gelu loop
    of the last block as well as the first (error checks marked unlikely keep the schedule
    hot; moa_erf_f32 is always inlined), at each target's full width."""
    nodes, consts = [], list(SCALARS)
    x = "x"
    for k in range(40):
        consts += [(f"s{k}", np.ones(64, np.float32)), (f"b{k}", np.zeros(64, np.float32))]
        nodes += [_node("LayerNormalization", [x, f"s{k}", f"b{k}"], f"ln{k}", axis=-1)]
        nodes += _gelu_erf(f"ln{k}", f"g{k}", tag=f"t{k}_")
        x = f"g{k}"
    model = _model(nodes, [("x", F, [16, 64])], [(x, F, [16, 64])], consts)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    convert(path, tmp_path / "p")
    source = (tmp_path / "p" / "model.c").read_text().splitlines()
    gelu_loops = [n + 1 for n, line in enumerate(source) if "in one loop" in line]
    assert len(gelu_loops) == 40
    vectorised = _vectorised_lines(tmp_path / "p", target)
    # the loop statement is the line after the unit's comment, or one more for the declaration
    missed = [n for n in gelu_loops if not vectorised & {n + 1, n + 2}]
    assert not missed, f"fused loops at model.c lines {missed} were not vectorised"


def _vectorised_lines(project, target="avx512") -> set[int]:
    """Lines of project/model.c where gcc (VECTOR_TARGETS[target]: the board's compiler, its
    flags or the ones given) reports a loop vectorised with the target's full vectors."""
    board_name, flags, width = VECTOR_TARGETS[target]
    board = require_board(board_name)
    flags = flags if flags is not None else board.toolchain["cflags"]
    compiler = "gcc" if board_name == "host" else board.compiler()
    proc = subprocess.run([compiler, "-O2", *flags, "-std=c99", "-I", str(project),
                           "-I", str(project / "runtime" / "include"), "-c", "model.c", "-o", "/dev/null",
                           "-fopt-info-vec-optimized"], cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return {int(m) for m in re.findall(rf"model\.c:(\d+):\d+: optimized: loop vectorized using {width} byte vectors",
                                       proc.stderr)}


@pytest.mark.board
def test_a_loop_of_no_whole_number_of_vectors_is_vectorised_up_to_its_tail(tmp_path):
    """[3, 1003] + bias, then Gelu: the inner loop runs to 992 vectorised, then 11 more
    one at a time (gcc -O2 vectorises no loop the vector width does not divide)."""
    board = require_board("host")
    nodes = [_node("Add", ["x", "bias"], "h")] + _gelu_erf("h", "y")
    rng = np.random.default_rng(3)
    model = _model(nodes, [("x", F, [3, 1003])], [("y", F, [3, 1003])],
                   SCALARS + [("bias", rng.standard_normal(1003).astype(np.float32))])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    report = convert(path, tmp_path / "p")
    source = (tmp_path / "p" / "model.c").read_text().splitlines()
    loops = [n + 1 for n, line in enumerate(source) if "for (i1 = " in line]
    assert [source[n - 1].strip() for n in loops] == ["for (i1 = 0; i1 < 992; i1++) {", "for (i1 = 992; i1 < 1003; i1++) {"]
    assert loops[0] in _vectorised_lines(tmp_path / "p")
    feeds = {"x": (rng.standard_normal((3, 1003)) * 3).astype(np.float32)}
    got, _ = run(build(tmp_path / "p", board), board, report["io"], feeds)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-6)


# -- moa/vmath.h -----------------------------------------------------------------------------

VMATH = REPO / "c_runtime" / "include" / "moa" / "vmath.h"
STEP = {"host": 257, "rpi4": 4099, "k230": 16411}  # bit patterns between samples (qemu is slower)


def _stated_ulp() -> dict[str, float]:
    text = VMATH.read_text()
    return {f: float(re.search(rf"moa_{f}_f32\s+([0-9.]+) ulp", text).group(1)) for f in ("erf", "tanh")}


@pytest.mark.board
@pytest.mark.parametrize("contract", ["off", "fast"])
@pytest.mark.parametrize("board_name", BOARDS)
def test_vmath_error_is_within_the_stated_ulp(board_name, contract, tmp_path):
    """Sampled over all non-negative floats in the board's vectorised build, with and
    without FMA contraction; the header states the exhaustive maximum."""
    board = require_board(board_name)
    exe = tmp_path / "vmath_ulp"
    cmd = [board.compiler(), *board.toolchain["cflags"], "-std=c99", "-Wall", "-Wextra", "-Werror",
           f"-ffp-contract={contract}", f"-I{VMATH.parent.parent}", str(REPO / "tests" / "vmath_ulp.c"), "-o", str(exe),
           *board.toolchain.get("ldflags", []), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True)
    out = subprocess.run(board.runner() + [str(exe), str(STEP[board_name])], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    measured = {k: float(v) for k, v in re.findall(r"(\w+)_ulp=([0-9.]+)", out.stdout)}
    stated = _stated_ulp()
    assert measured["erf"] <= stated["erf"] and measured["tanh"] <= stated["tanh"], (measured, stated)
