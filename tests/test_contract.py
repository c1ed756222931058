"""The op contract (moa_edge/ops/contract.py): every op module states the required hooks, and
every shape and dtype rule (infer) agrees with what ONNX says: the expected outputs that ship
with onnx's own backend node cases, and ONNX shape inference on the exported test models.
Expected values never come from moa-edge."""
from types import SimpleNamespace

import numpy as np
import onnx
from onnx.backend.test.loader import load_model_tests
import pytest

from backend_cases import with_constant_inputs
from models import Case, export
from moa_edge.converters import import_onnx
from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node, Tensor
from moa_edge.ops import SUPPORTED_OPS, check_output_types
from moa_edge.ops.contract import REQUIRED, check_status, op_of

_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.BOOL: "bool", onnx.TensorProto.INT64: "int64",
          onnx.TensorProto.INT32: "int32"}
# Ops whose parameters (shape, axes, k, axis, scalars) a real export holds as constants, but
# the backend cases pass as graph inputs: those inputs become initializers.
_PARAMETER_INPUTS = {"Reshape", "Squeeze", "Unsqueeze", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceL1",
                     "ReduceL2", "ReduceSumSquare", "ReduceMin", "ReduceProd", "ReduceLogSum", "ReduceLogSumExp",
                     "Trilu", "CumSum", "Range"}


def test_every_op_module_states_the_required_hooks():
    for op, resolved in SUPPORTED_OPS.items():
        missing = [hook for hook in REQUIRED if not hasattr(resolved.module, hook)]
        assert not missing, f"{op}: {resolved.module.__name__} lacks {missing}"
        assert op in resolved.module.OPS


def test_a_module_without_a_required_hook_is_refused():
    incomplete = SimpleNamespace(__name__="incomplete", OPS=("X",), C_SOURCES=[], evaluate=None, emit=None)
    with pytest.raises(TypeError, match="infer"):
        op_of(incomplete)


def test_defaults_fill_what_a_module_leaves_out():
    gather = SUPPORTED_OPS["Gather"]  # states no scratch, no cost, no in-place flags
    assert not hasattr(gather.module, "scratch_bytes") and gather.scratch_bytes(None, None) == 0
    assert gather.ALIASES is False and gather.IN_PLACE is False
    node = Node("Gather", "g", ["data", "idx"], ["y"])
    graph = Graph("g", ["idx"], ["y"], [node], {
        "data": Tensor("data", (10, 4), "float32", np.zeros((10, 4), np.float32)),
        "idx": Tensor("idx", (3,), "int64"), "y": Tensor("y", (3, 4), "float32")})
    assert gather.in_place_inputs(node, graph) == []
    cost = gather.op_cost(node, graph)
    assert (cost.flops, cost.weight_bytes, cost.activation_bytes) == (0, 160, 3 * 8 + 3 * 4 * 4)
    assert SUPPORTED_OPS["Add"].in_place_inputs(Node("Add", "a", ["x", "z"], ["y"]), graph) == ["x", "z"]


def test_check_status_is_the_one_snippet():
    assert check_status("moa_f(x)") == ("    status = moa_f(x);\n    if (MOA_UNLIKELY(status != MOA_OK)) {\n"
                                         "        return status;\n    }\n")


def _runtime_case(case) -> str | None:
    nodes = case.model.graph.node
    if len(nodes) != 1 or nodes[0].domain not in ("", "ai.onnx") or nodes[0].op_type not in SUPPORTED_OPS:
        return None
    values = list(case.model.graph.input) + list(case.model.graph.output)
    if case.name.endswith("_expanded") or any(v.type.tensor_type.elem_type not in _TYPES for v in values):
        return None
    return nodes[0].op_type


CASES = {c.name: (op, c) for c in load_model_tests(kind="node") if (op := _runtime_case(c))}


def test_infer_agrees_with_the_backend_cases_expected_outputs(tmp_path):
    """For each one-node case the importer takes, the node's rule gives the shape and dtype of
    the output arrays that ship with the case."""
    checked, per_op = 0, {}
    for name, (op, case) in sorted(CASES.items()):
        model = case.model
        if op in _PARAMETER_INPUTS:
            model, _ = with_constant_inputs(case, range(1, len(case.model.graph.node[0].input)))
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(path))
        try:
            graph = import_onnx(path)
        except MoaEdgeError:  # outside the importer's opsets or types: nothing to check here
            continue
        (node,) = graph.nodes
        (_, outputs), = case.data_sets
        rule = SUPPORTED_OPS[op].infer(node, graph)
        for out_name, want, got in zip(node.outputs, outputs, rule):
            if not out_name:
                continue
            assert got.shape is None or tuple(got.shape) == want.shape, f"{name}: {out_name}"
            assert got.dtype == {np.dtype(np.float32): "float32", np.dtype(np.bool_): "bool"}.get(
                want.dtype, want.dtype.name), f"{name}: {out_name}"
        checked += 1
        per_op[op] = per_op.get(op, 0) + 1
    assert checked > 200, per_op
    # Every family with backend cases is among them.
    assert {"Add", "Where", "MatMul", "Gemm", "Gather", "GatherND", "Trilu", "CumSum", "Reshape",
            "Squeeze", "Unsqueeze", "Flatten", "ReduceSum", "ReduceL2", "Softmax", "LayerNormalization",
            "Conv", "RotaryEmbedding"} <= set(per_op), per_op


@pytest.mark.parametrize("case", [Case("sdpa_float_mask", "sdpa18", mask="float"),
                                  Case("sdpa_gqa_causal", "sdpa18", q_heads=4, kv_heads=2, causal=True)],
                         ids=lambda c: c.name)
def test_infer_agrees_with_onnx_shape_inference_on_exported_models(case, tmp_path):
    """Every supported node of an exported model, before any pass: the types ONNX shape
    inference recorded at import."""
    export(case, tmp_path / "m.onnx")
    graph = import_onnx(tmp_path / "m.onnx")
    nodes = [n for n in graph.nodes if n.op in SUPPORTED_OPS]
    assert len(nodes) >= 3
    for node in nodes:
        for name, got in zip(node.outputs, SUPPORTED_OPS[node.op].infer(node, graph)):
            have = graph.tensors[name]
            assert (tuple(have.shape), have.dtype) == (tuple(got.shape), got.dtype), f"{node.name} ({node.op})"


def test_a_recorded_type_the_rule_disagrees_with_is_named():
    node = Node("MatMul", "mm", ["a", "b"], ["y"])
    graph = Graph("g", ["a", "b"], ["y"], [node], {"a": Tensor("a", (2, 3), "float32"),
                                                    "b": Tensor("b", (3, 5), "float32"),
                                                    "y": Tensor("y", (2, 4), "float32")})
    with pytest.raises(MoaEdgeError, match=r"node 'mm' \(MatMul\) records 'y' as float32 \[2, 4\].*\[2, 5\]"):
        check_output_types(graph, "m.onnx")
    graph.tensors["y"] = Tensor("y", (2, 5), "float32")
    check_output_types(graph, "m.onnx")


def test_short_float_literals_read_back_as_the_same_float32():
    from moa_edge.ir.c_syntax import c_float, c_float_short
    rng = np.random.default_rng(0)
    for x in np.concatenate([rng.standard_normal(200), 10.0 ** rng.uniform(-40, 38, 200)]).astype(np.float32):
        text = c_float_short(x)
        assert text.endswith("f") and np.float32(float(text[:-1])) == x, text
    assert (c_float_short(0.1), c_float_short(3), c_float_short(-0.5)) == ("0.1f", "3.0f", "-0.5f")
    assert c_float_short(float("inf")) == c_float(float("inf")) == "INFINITY"
