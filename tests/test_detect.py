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
    Br x Bc score tile, Br running maxima, sums and rescale factors and a Br x Dv accumulator
    per thread the run may use, at any length."""
    from moa_edge.target import load_board
    from moa_edge.moa.onf import Schedule
    from moa_edge.pipeline import schedule_graph
    from moa_edge.plan import plan_arena
    model = tmp_path / "m.onnx"
    export(Case("t", "op23", q_len=seq, kv_len=seq, head_dim=32), model)
    for threads in (1, 3):
        graph = schedule_graph(load_graph(model), load_board("host"), forced=Schedule("online", 8, 16), threads=threads)
        br, bc, dv = 8, 16, 32
        assert plan_arena(graph).total_bytes == threads * 4 * (br * bc + 3 * br + br * dv)


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


def _finfo_min_graph(path, with_pad: bool, tap_scores: bool):
    """Transpose/MatMul/Mul/Add(bias)/Softmax/MatMul with a finfo.min causal constant, as
    exporters draw it; optionally a padding mask added to it, optionally the biased scores
    as a second output."""
    import onnx
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    B, H, S, D = 1, 2, 4, 8
    causal = np.triu(np.full((S, S), np.finfo(np.float32).min, np.float32), 1)
    vi = lambda n, s: h.make_tensor_value_info(n, T.FLOAT, s)  # noqa: E731
    inputs = [vi("q", [B, H, S, D]), vi("k", [B, H, S, D]), vi("v", [B, H, S, D])]
    nodes = [h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), h.make_node("MatMul", ["q", "kt"], ["qk"]),
             h.make_node("Mul", ["qk", "sc"], ["s"])]
    bias = "causal"
    if with_pad:
        inputs.append(vi("pad", [B, 1, 1, S]))
        nodes.append(h.make_node("Add", ["causal", "pad"], ["bias"]))
        bias = "bias"
    nodes += [h.make_node("Add", ["s", bias], ["sb"]), h.make_node("Softmax", ["sb"], ["p"], axis=-1),
              h.make_node("MatMul", ["p", "v"], ["y"])]
    outputs = [vi("y", [B, H, S, D])] + ([vi("sb", [B, H, S, S])] if tap_scores else [])
    inits = [nh.from_array(np.array(D ** -0.5, np.float32), "sc"), nh.from_array(causal, "causal")]
    model = h.make_model(h.make_graph(nodes, "g", inputs, outputs, initializer=inits),
                         opset_imports=[h.make_opsetid("", 18)])
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((B, H, S, D)).astype(np.float32) for n in "qkv"}
    if with_pad:
        feeds["pad"] = np.zeros((B, 1, 1, S), np.float32)
        feeds["pad"][..., 0] = np.finfo(np.float32).min  # row 0 then sees no key: uniform, as in torch
    return feeds


@pytest.mark.parametrize("with_pad, tap_scores", [(True, False), (False, True), (False, False)])
def test_finfo_min_causal_constant_keeps_its_meaning(with_pad, tap_scores, tmp_path):
    """is_causal (-inf) only where it cannot change a result: not beside another mask that may
    hide a row's last key, not when the biased scores are an output."""
    path = tmp_path / "m.onnx"
    feeds = _finfo_min_graph(path, with_pad, tap_scores)
    graph = load_graph(path, strict=False)
    (block,) = [n for n in graph.nodes if n.op == "MoaAttention"]
    assert block.attrs["spec"].is_causal == (not with_pad and not tap_scores)
    ours = run_reference(graph, feeds)
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, want in zip(ours.values(), theirs):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_scores_output_without_a_bias(tmp_path):
    """Scores that feed both the Softmax and a graph output, with no mask: one block, the
    scores as its second output, equal to onnxruntime."""
    import onnx
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    vi = lambda n, s: h.make_tensor_value_info(n, T.FLOAT, s)  # noqa: E731
    nodes = [h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), h.make_node("MatMul", ["q", "kt"], ["qk"]),
             h.make_node("Mul", ["qk", "sc"], ["s"]), h.make_node("Softmax", ["s"], ["p"], axis=-1),
             h.make_node("MatMul", ["p", "v"], ["y"])]
    model = h.make_model(h.make_graph(nodes, "g", [vi(n, [1, 2, 4, 8]) for n in "qkv"],
                                      [vi("y", [1, 2, 4, 8]), vi("s", [1, 2, 4, 4])],
                                      initializer=[nh.from_array(np.array(0.35, np.float32), "sc")]),
                         opset_imports=[h.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "m.onnx")
    graph = load_graph(tmp_path / "m.onnx")
    assert [n.op for n in graph.nodes] == ["MoaAttention"]
    feeds = {n: np.random.default_rng(1).standard_normal((1, 2, 4, 8)).astype(np.float32) for n in "qkv"}
    ours = run_reference(graph, feeds)
    theirs = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, want in zip(ours.values(), theirs):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _length_bias_graph(path, causal: bool, past_last_key: int = 0, fill=-np.inf):
    """Q K^T with a bias built at run time from per-batch key counts L, as the ONNX function
    body of nonpad_kv_seqlen builds it: keys k >= L[b] + past_last_key hidden, and with
    `causal` also k > i + L[b] - Sq."""
    import onnx
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    B, H, Sq, Skv, D = 3, 2, 4, 6, 8
    vi = lambda n, dtype, s: h.make_tensor_value_info(n, dtype, s)  # noqa: E731
    consts = {"cols": np.arange(Skv, dtype=np.int64), "rows": np.arange(Sq, dtype=np.int64).reshape(Sq, 1),
              "sq": np.array([Sq], np.int64), "shift": np.array([past_last_key], np.int64),
              "zero": np.array(0.0, np.float32), "fill": np.array(fill, np.float32),
              "ax1": np.array([1], np.int64), "ax12": np.array([1, 2], np.int64), "ax123": np.array([1, 2, 3], np.int64),
              "sc": np.array(D ** -0.5, np.float32)}
    nodes = [h.make_node("Add", ["L", "shift"], ["Ls"]), h.make_node("Unsqueeze", ["Ls", "ax1"], ["L2"]),
             h.make_node("Less", ["cols", "L2"], ["keep"]), h.make_node("Where", ["keep", "zero", "fill"], ["pad2"]),
             h.make_node("Unsqueeze", ["pad2", "ax12"], ["bias"])]
    if causal:
        nodes += [h.make_node("Sub", ["L", "sq"], ["off"]), h.make_node("Unsqueeze", ["off", "ax123"], ["off4"]),
                  h.make_node("Add", ["rows", "off4"], ["diag"]), h.make_node("Less", ["diag", "cols"], ["above"]),
                  h.make_node("Where", ["above", "fill", "zero"], ["tri"]), h.make_node("Add", ["bias", "tri"], ["bias2"])]
    nodes += [h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), h.make_node("MatMul", ["q", "kt"], ["qk"]),
              h.make_node("Mul", ["qk", "sc"], ["s"]), h.make_node("Add", ["s", "bias2" if causal else "bias"], ["sb"]),
              h.make_node("Softmax", ["sb"], ["p"], axis=-1), h.make_node("MatMul", ["p", "v"], ["y"])]
    inputs = [vi("q", T.FLOAT, [B, H, Sq, D]), vi("k", T.FLOAT, [B, H, Skv, D]), vi("v", T.FLOAT, [B, H, Skv, D]),
              vi("L", T.INT64, [B])]
    model = h.make_model(h.make_graph(nodes, "g", inputs, [vi("y", T.FLOAT, [B, H, Sq, D])],
                                      initializer=[nh.from_array(v, k) for k, v in consts.items()]),
                         opset_imports=[h.make_opsetid("", 18)])
    onnx.save(model, path)
    rng = np.random.default_rng(2)
    feeds = {n: rng.standard_normal((B, H, Sq if n == "q" else Skv, D)).astype(np.float32) for n in "qkv"}
    feeds["L"] = np.array([6, 5, 4], np.int64)  # every query row keeps a key: no 0/0 rows
    return feeds


@pytest.mark.parametrize("causal, past_last_key, fill, lengths", [
    (False, 0, -np.inf, True), (True, 0, -np.inf, True),
    (False, 1, -np.inf, False),                      # hides k > L[b]: not the key count
    (True, 0, np.finfo(np.float32).min, False),      # a finite minimum is not "hidden"
], ids=["padding", "padding_causal", "off_by_one", "finite_min"])
def test_bias_built_from_key_lengths(causal, past_last_key, fill, lengths, tmp_path):
    """A bias computed from a per-batch length vector becomes kernel key lengths (and a
    length-relative causal diagonal) only when it hides exactly those keys."""
    path = tmp_path / "m.onnx"
    feeds = _length_bias_graph(path, causal, past_last_key, fill)
    graph = load_graph(path, strict=False)
    (block,) = [n for n in graph.nodes if n.op == "MoaAttention"]
    spec = block.attrs["spec"]
    assert spec.kv_lengths == lengths
    if lengths:
        assert [n.op for n in graph.nodes] == ["MoaAttention"] and block.inputs[4] == "L"
        assert spec.is_causal == causal and spec.causal_offset == (-4 if causal else 0)
        ours = run_reference(graph, feeds)
        theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
        np.testing.assert_allclose(ours["y"], theirs[0], rtol=1e-5, atol=1e-6)
    else:
        assert block.inputs[3] and spec.mask_kind == "float"  # stays a mask the graph computes


def test_k_transposed_through_a_merged_batch_is_an_access_map(tmp_path):
    """BERT's export: K -> Reshape [B, S, H, d] -> Transpose -> Reshape [B*H, S, d] ->
    Transpose -> Reshape [B, H, d, S]. With B > 1 the merged batch of a strided head split
    is no access map; unfold_batched_transposes makes the chain one Transpose, so K is read
    in place and no transposed copy is left."""
    import onnx
    from onnx import TensorProto as T, helper, numpy_helper
    B, S, H, d = 2, 5, 3, 8
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64 if name.startswith("s_") else np.float32), name)  # noqa: E731
    nodes = [helper.make_node("Reshape", ["q", "s_heads"], ["q4"]), helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["k", "s_heads"], ["k4"]), helper.make_node("Transpose", ["k4"], ["kh"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["kh", "s_merged"], ["k3"]), helper.make_node("Transpose", ["k3"], ["kt3"], perm=[0, 2, 1]),
             helper.make_node("Reshape", ["kt3", "s_split"], ["kt"]),
             helper.make_node("Reshape", ["v", "s_heads"], ["v4"]), helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
             helper.make_node("MatMul", ["qh", "kt"], ["scores"]), helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
             helper.make_node("Softmax", ["scaled"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "vh"], ["oh"]),
             helper.make_node("Transpose", ["oh"], ["o4"], perm=[0, 2, 1, 3]), helper.make_node("Reshape", ["o4", "s_out"], ["y"])]
    io = lambda n: helper.make_tensor_value_info(n, T.FLOAT, [B, S, H * d])  # noqa: E731
    graph = helper.make_graph(nodes, "g", [io("q"), io("k"), io("v")], [io("y")],
                              initializer=[c("s_heads", [B, S, H, d]), c("s_merged", [-1, S, d]), c("s_split", [B, H, d, S]),
                                           c("s_out", [B, S, H * d]), c("scale", 1 / math.sqrt(d))])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    lowered = load_graph(path)
    assert [n.op for n in lowered.nodes] == ["MoaAttention"]
    assert lowered.nodes[0].inputs[:3] == ["q", "k", "v"]
    rng = np.random.default_rng(5)
    feeds = {n: rng.standard_normal((B, S, H * d)).astype(np.float32) for n in "qkv"}
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert cmp.compare(theirs, run_reference(lowered, feeds)["y"])["ok"]


def test_key_padding_mask_anded_with_all_true_is_read_in_place(tmp_path):
    """BERT's exports AND the key-padding mask [B,1,1,S] with an all-True [1,1,S,1] band:
    x AND True is x, and the widening Expand is a stride-0 map, so the kernel reads the B x S
    mask itself (no B x S x S copy, no And), and the result equals onnxruntime."""
    import onnx
    from onnx import TensorProto as T, helper, numpy_helper
    from moa_edge.harness.build import build
    from moa_edge.target import load_board
    from moa_edge.harness.runner import run
    from moa_edge.pipeline import convert
    B, H, S, D = 2, 2, 8, 4
    f = lambda n, s: helper.make_tensor_value_info(n, T.FLOAT, s)  # noqa: E731
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Mul", ["qk", "scale"], ["scores"]),
        helper.make_node("Expand", ["keep_keys", "full"], ["keep_wide"]),
        helper.make_node("And", ["band", "keep_wide"], ["keep"]),
        helper.make_node("Where", ["keep", "scores", "minus_inf"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "scale"),
             numpy_helper.from_array(np.array([B, 1, S, S], np.int64), "full"),
             numpy_helper.from_array(np.ones((1, 1, S, 1), bool), "band"),
             numpy_helper.from_array(np.array(-np.inf, np.float32), "minus_inf")]
    graph = helper.make_graph(nodes, "bert_mask", [f("q", [B, H, S, D]), f("k", [B, H, S, D]), f("v", [B, H, S, D]),
                              helper.make_tensor_value_info("keep_keys", T.BOOL, [B, 1, 1, S])],
                              [f("y", [B, H, S, D])], initializer=inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    lowered = load_graph(path)
    (block,) = lowered.nodes
    assert block.op == "MoaAttention" and block.inputs[3] == "keep_keys"
    rng = np.random.default_rng(2)
    feeds = {n: rng.standard_normal((B, H, S, D)).astype(np.float32) for n in "qkv"}
    feeds["keep_keys"] = np.arange(S)[None, None, None, :] < np.array([S, 5])[:, None, None, None]
    report = convert(path, tmp_path / "p")
    assert all(b["name"].startswith("scratch:") for b in report["memory"]["buffers"])  # no mask copy
    board = load_board("host")
    got, _ = run(build(tmp_path / "p", board), board, report["io"], feeds)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-6)
