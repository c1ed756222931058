"""Attention detection on real exporter output, and the rewritten IR's meaning."""
import math

import numpy as np
import onnxruntime as ort
import pytest

from models import Case, case_inputs, export
from moa_edge.harness import compare as cmp
from moa_edge.harness.reference import run_reference
from moa_edge.pipeline import load_graph

CASES = [
    Case("op23_causal", "op23", q_len=6, kv_len=6, head_dim=16, causal=True),
    Case("op23_bool", "op23", q_len=5, kv_len=7, head_dim=8, mask="bool"),
    Case("sdpa18_plain", "sdpa18", q_len=5, kv_len=7, head_dim=32),
    Case("sdpa18_causal", "sdpa18", q_len=6, kv_len=6, head_dim=8, causal=True),
    Case("sdpa18_bool", "sdpa18", q_len=6, kv_len=6, head_dim=8, mask="bool"),
    Case("sdpa18_float", "sdpa18", q_len=6, kv_len=9, head_dim=8, mask="float"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_one_block_found_and_equal_to_onnxruntime(case, tmp_path):
    model = tmp_path / "m.onnx"
    export(case, model)
    graph = load_graph(model)
    assert [n.op for n in graph.nodes] == ["MoaAttention"]
    spec = graph.nodes[0].attrs["spec"]
    assert math.isclose(spec.scale, 1 / math.sqrt(case.head_dim), rel_tol=1e-6)
    assert spec.is_causal == case.causal
    assert spec.mask_kind == ("none" if case.mask == "none" else case.mask)
    inputs = case_inputs(case)
    ours = run_reference(graph, inputs)["y"]
    theirs = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    assert cmp.compare(theirs, ours)["ok"]


def test_decomposed_k_transpose_becomes_an_access_map(tmp_path):
    """Reshape -> Transpose -> Reshape on K is absorbed: the kernel reads K in place."""
    model = tmp_path / "m.onnx"
    export(Case("t", "sdpa18", q_heads=3, kv_heads=3, q_len=4, kv_len=5, head_dim=8), model)
    graph = load_graph(model)
    spec = graph.nodes[0].attrs["spec"]
    assert graph.nodes[0].inputs[1] == "k"
    k = np.arange(3 * 5 * 8)
    for h, j, d in [(0, 0, 0), (2, 4, 7), (1, 3, 2)]:
        assert k[spec.k.gamma((0, h, j, d))] == k.reshape(1, 3, 5, 8)[0, h, j, d]
    assert sum(name.startswith("node_Transpose") for name in spec.absorbed) == 1


def test_causal_constant_mask_is_recognised_only_when_exact(tmp_path):
    model = tmp_path / "m.onnx"
    export(Case("t", "sdpa18", q_len=6, kv_len=6, head_dim=8, causal=True), model)
    graph = load_graph(model)
    assert graph.nodes[0].attrs["spec"].is_causal and not graph.weights()
    model2 = tmp_path / "m2.onnx"
    export(Case("t2", "sdpa18", q_len=6, kv_len=6, head_dim=8, mask="const_float"), model2)
    graph2 = load_graph(model2)
    spec2 = graph2.nodes[0].attrs["spec"]
    assert not spec2.is_causal and spec2.mask_kind == "float" and len(graph2.weights()) == 1


@pytest.mark.parametrize("seq", [16, 512])
def test_arena_does_not_grow_with_sequence_length(seq, tmp_path):
    """No n x n scores and no K^T copy: with the online schedule the arena holds one
    Br x Bc score tile, Br running maxima and sums and a Br x Dv accumulator, at any length."""
    from moa_edge.harness.boards import load_board
    from moa_edge.moa.onf import Schedule
    from moa_edge.pipeline import schedule_graph
    from moa_edge.plan import plan_arena
    model = tmp_path / "m.onnx"
    export(Case("t", "op23", q_len=seq, kv_len=seq, head_dim=32), model)
    graph = schedule_graph(load_graph(model), load_board("host"), forced=Schedule("online", 8, 16))
    br, bc, dv = 8, 16, 32
    assert plan_arena(graph).total_bytes == 4 * (br * bc + 2 * br + br * dv)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo18", "torchscript17"])
def test_multihead_attention_returning_its_weights(dynamo, tmp_path):
    """need_weights=True: the averaged probabilities are an output too; the block's second
    output (the probabilities) feeds them, and no Softmax is left."""
    import torch
    import warnings
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()

    class WithWeights(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=True)

    x = torch.randn(2, 5, 16)
    path = tmp_path / "mha.onnx"
    torch.backends.mha.set_fastpath_enabled(False)  # the fast path cannot be exported by TorchScript
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(WithWeights(), (x,), str(path), dynamo=dynamo, opset_version=18 if dynamo else 17,
                          input_names=["x"], output_names=["y", "weights"])
    torch.backends.mha.set_fastpath_enabled(True)
    graph = load_graph(path, strict=False)
    ops = [n.op for n in graph.nodes]
    assert ops.count("MoaAttention") == 1 and "Softmax" not in ops
    inputs = {"x": x.numpy()}
    ours = run_reference(graph, inputs)
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)
    for got, want in zip(ours.values(), theirs):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
