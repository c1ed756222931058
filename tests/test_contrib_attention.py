"""onnxruntime contrib attention ops (com.microsoft): mapped ones run as generated C and
equal onnxruntime's own kernels; the others are refused naming node and feature."""
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
from moa_edge.pipeline import convert

B, S, SKV, H, HKV, D = 2, 5, 7, 4, 2, 8
OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]


def _model(op, inputs, shapes, out_shape, initializers=(), **attrs):
    io = [helper.make_tensor_value_info(n, T.FLOAT, s) for n, s in zip(inputs, shapes) if n and s]
    node = helper.make_node(op, inputs, ["y"], domain="com.microsoft", name="contrib", **attrs)
    graph = helper.make_graph([node], "g", io, [helper.make_tensor_value_info("y", T.FLOAT, out_shape)],
                              initializer=list(initializers))
    return helper.make_model(graph, opset_imports=OPSETS)


def _inputs(model, seed=0):
    rng = np.random.default_rng(seed)
    return {vi.name: rng.standard_normal([d.dim_value for d in vi.type.tensor_type.shape.dim]).astype(np.float32)
            for vi in model.graph.input}


def _check_against_onnxruntime(model, tmp_path):
    board = require_board("host")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    report = convert(path, tmp_path / "p")
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
    if feature is None:  # key_padding_mask: an int32 input
        model.graph.input.append(helper.make_tensor_value_info("kpm", T.INT32, [B, S]))
        feature = "key_padding_mask"
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(MoaEdgeError, match=f"node 'contrib': .*{feature}"):
        convert(path, tmp_path / "p")
    assert not (tmp_path / "p").exists()
