"""onnxruntime contrib attention ops (com.microsoft): mapped ones run as generated C and
equal onnxruntime's own kernels; the others are refused naming node and feature."""
import re

import numpy as np
import onnx
from onnx import TensorProto as T, helper, numpy_helper
import onnxruntime as ort
import pytest

from conftest import require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.harness import compare as cmp
from moa_edge.harness.build import build
from moa_edge.harness.runner import run
from moa_edge.harness.reference import run_reference
from moa_edge.pipeline import convert, load_graph, parse_schedule

B, S, SKV, H, HKV, D = 2, 5, 7, 4, 2, 8
OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]


def _model(op, inputs, shapes, out_shape, initializers=(), **attrs):
    io = [helper.make_tensor_value_info(n, T.FLOAT, s) for n, s in zip(inputs, shapes) if n and s]
    node = helper.make_node(op, inputs, ["y"], domain="com.microsoft", name="contrib", **attrs)
    graph = helper.make_graph([node], "g", io, [helper.make_tensor_value_info("y", T.FLOAT, out_shape)],
                              initializer=list(initializers))
    return helper.make_model(graph, opset_imports=OPSETS)


def _inputs(model, seed=0):
    """Normal floats; int32 inputs are per-batch key counts (at least one key each)."""
    rng = np.random.default_rng(seed)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.input}
    keys = shapes["k"][1] if "k" in shapes else shapes["x"][1]
    return {vi.name: rng.standard_normal(shapes[vi.name]).astype(np.float32) if vi.type.tensor_type.elem_type == T.FLOAT
            else rng.integers(1, keys + 1, shapes[vi.name]).astype(np.int32) for vi in model.graph.input}


def _check_against_onnxruntime(model, tmp_path, schedule=None):
    board = require_board("host")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    report = convert(path, tmp_path / "p", schedule=schedule)
    assert len(report["attention_blocks"]) == 1
    inputs = _inputs(model)
    outputs, _ = run(build(tmp_path / "p", board), board, report["io"], inputs)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    result = cmp.compare(outputs["y"], expected.astype(np.float64))
    assert result["max_abs_err"] <= 2e-6, result


def test_multi_head_attention_cross(tmp_path):
    model = _model("MultiHeadAttention", ["q", "k", "v"], [[B, S, H * D], [B, SKV, H * D], [B, SKV, H * D]],
                   [B, S, H * D], num_heads=H)
    _check_against_onnxruntime(model, tmp_path)


def test_multi_head_attention_with_bias_and_scale(tmp_path):
    model = _model("MultiHeadAttention", ["q", "k", "v", "", "", "bias"],
                   [[B, S, H * D], [B, SKV, H * D], [B, SKV, H * D], None, None, [1, H, S, SKV]],
                   [B, S, H * D], num_heads=H, scale=0.2)
    _check_against_onnxruntime(model, tmp_path)


def test_multi_head_attention_unidirectional(tmp_path):
    model = _model("MultiHeadAttention", ["q", "k", "v"], [[B, S, H * D]] * 3, [B, S, H * D],
                   num_heads=H, unidirectional=1)
    _check_against_onnxruntime(model, tmp_path)


def test_multi_head_attention_key_lengths(tmp_path):
    """A 1-D int32 key_padding_mask (MaskIndexEnd, as the BERT optimizer emits it) is the
    kernel's key lengths, read as int32."""
    model = _model("MultiHeadAttention", ["q", "k", "v", "", "lengths"], [[B, S, H * D], [B, SKV, H * D],
                   [B, SKV, H * D]], [B, S, H * D], num_heads=H)
    model.graph.input.append(helper.make_tensor_value_info("lengths", T.INT32, [B]))
    _check_against_onnxruntime(model, tmp_path)


def _reference_check(model, tmp_path, ops):
    """What the attention rewrite leaves (projections, bias Adds) stays in the graph: the
    rewritten IR, run by the reference executor, against onnxruntime's kernels."""
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    graph = load_graph(path, strict=False)
    assert sorted(n.op for n in graph.nodes) == sorted(ops)
    inputs = _inputs(model, seed=3)
    ours = run_reference(graph, inputs)["y"]
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=2e-6)
    return graph


def test_multi_head_attention_packed_bias(tmp_path):
    rng = np.random.default_rng(4)
    bias = numpy_helper.from_array(rng.standard_normal(3 * H * D).astype(np.float32), "bias")
    model = _model("MultiHeadAttention", ["q", "k", "v", "bias", "lengths"], [[B, S, H * D], [B, SKV, H * D],
                   [B, SKV, H * D]], [B, S, H * D], [bias], num_heads=H)
    model.graph.input.append(helper.make_tensor_value_info("lengths", T.INT32, [B]))
    _reference_check(model, tmp_path, ["Add", "Add", "Add", "MoaAttention"])


@pytest.mark.parametrize("sizes, unidirectional, lengths", [
    (None, 0, True), (None, 1, False), ([H * D, H * D, 2 * H * D], 0, True), (None, 0, False),
], ids=["mask_index", "unidirectional", "wider_values", "no_mask"])
def test_packed_attention(sizes, unidirectional, lengths, tmp_path):
    """com.microsoft.Attention: one projection left in the graph (MatMul + bias Add, one MoaGemm
    with its weight packed), Q, K and V read from its rows at their column offsets, no copy."""
    width = sum(sizes) if sizes else 3 * H * D
    rng = np.random.default_rng(5)
    consts = [numpy_helper.from_array(rng.standard_normal((H * D, width)).astype(np.float32) / 4, "w"),
              numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b")]
    attrs = {"num_heads": H, "unidirectional": unidirectional} | ({"qkv_hidden_sizes": sizes} if sizes else {})
    out_width = sizes[2] if sizes else H * D
    model = _model("Attention", ["x", "w", "b"] + (["lengths"] if lengths else []), [[B, SKV, H * D]],
                   [B, SKV, out_width], consts, **attrs)
    if lengths:
        model.graph.input.append(helper.make_tensor_value_info("lengths", T.INT32, [B]))
    graph = _reference_check(model, tmp_path, ["MoaGemm", "MoaAttention"])
    spec = graph.nodes[-1].attrs["spec"]
    assert spec.kv_lengths == lengths and spec.is_causal == bool(unidirectional)
    assert graph.nodes[-1].inputs[:3] == [graph.nodes[0].outputs[0]] * 3  # Q, K, V: one buffer


def _gqa(seqlens, **attrs):
    consts = [numpy_helper.from_array(np.array(seqlens, np.int32), "seqlens_k"),
              numpy_helper.from_array(np.array([S], np.int32), "total")]
    return _model("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens_k", "total"],
                  [[B, S, H * D], [B, S, HKV * D], [B, S, HKV * D]], [B, S, H * D], consts,
                  num_heads=H, kv_num_heads=HKV, **attrs)


def test_group_query_attention_prompt(tmp_path):
    _check_against_onnxruntime(_gqa([S - 1] * B), tmp_path)


def test_group_query_attention_softcap(tmp_path):
    _check_against_onnxruntime(_gqa([S - 1] * B, softcap=3.0), tmp_path)


@pytest.mark.parametrize("text", ["online:8x4/s3", "online:7x16", "online:64x64/s2"])
def test_group_query_attention_in_the_decode_form(text, tmp_path):
    """A forced decode-form schedule (--schedule): the two query heads of each K/V head stacked
    (Br above S = 5: blocks of 8 or 7 of the 10 stacked rows, wrapping into the next head), the keys split in 3 or
    2; the same output as onnxruntime's kernel."""
    _check_against_onnxruntime(_gqa([S - 1] * B), tmp_path, parse_schedule(text))
    assert re.search(r"g = \(ptrdiff_t\)\(item / \d+ % 2\)", (tmp_path / "p" / "attention.c").read_text())


@pytest.mark.parametrize("model, feature", [
    (_model("MultiHeadAttention", ["q", "k", "v", "", "kpm"], [[B, S, H * D]] * 3 + [None, None], [B, S, H * D],
            num_heads=H), None),
    (_gqa([S - 2, S - 1]), "seqlens_k"),
    (_gqa([S - 1] * B, do_rotary=1), "do_rotary=1"),
    (_gqa([S - 1] * B, smooth_softmax=1), "smooth_softmax=1"),
    (_gqa([S - 1] * B, causal=0), "causal=0"),
    (_model("MultiHeadAttention", ["q", "k", "v"], [[B, S, H * D], [B, SKV, H * D], [B, SKV, H * D]], [B, S, H * D],
            num_heads=H, unidirectional=1), "unidirectional"),
])
def test_what_does_not_map_is_refused(model, feature, tmp_path):
    if feature is None:  # a 2-D key_padding_mask: an int32 input
        model.graph.input.append(helper.make_tensor_value_info("kpm", T.INT32, [B, S]))
        feature = "only 1-D key lengths"
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(MoaEdgeError, match=f"node 'contrib': .*{feature}"):
        convert(path, tmp_path / "p")
    assert not (tmp_path / "p").exists()
