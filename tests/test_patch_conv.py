"""Conv whose kernel equals its stride (ViT's patch embedding) as one GEMM over the patches
(passes/patch_conv.py). One model holds every patch case (several C, O, kernels, N = 1 and 2, with
and without bias, one followed by ViT's flatten(2).transpose(1, 2) and class token, one by
flatten(2).transpose(1, 2) and a LayerNorm), so each board builds it once; its outputs are checked
against onnxruntime on the original file on the host and the emulated boards, and the lowered
graph's torch reference too. The rewrite is asserted on the lowered graph (one packed GEMM named
after each Conv, no Conv left, no moa_conv2d_f32 call) and refused for the convolutions outside the
pattern. Under --weights the patch GEMM is a MoaQGemm, checked against onnxruntime given the
dequantized weights; a K the block does not divide stays a Conv (MoaQConv, int8 per channel)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort
import pytest

from conftest import BOARDS, require_board
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import check_inputs, run
from moa_edge.passes.quantize import dequantized, parse_weights
from moa_edge.pipeline import convert, load_graph
from test_conv import Case, _assert_close


def _patch(name: str, x, w, bias: bool = True) -> Case:
    return Case(name, x, w, bias, attrs=(("kernel_shape", list(w[2:])), ("strides", list(w[2:]))))


PATCHES = [
    _patch("patch4_n1", (1, 3, 16, 12), (16, 3, 4, 4)),
    _patch("patch8_n2_no_bias", (2, 3, 16, 24), (20, 3, 8, 8), bias=False),
    _patch("patch2x3_c5_n2", (2, 5, 6, 9), (7, 5, 2, 3)),                # O < one 16-column panel, K = 30
    _patch("patch2_c16_o33", (1, 16, 6, 4), (33, 16, 2, 2)),             # a patch merge: C > K taps
    _patch("patch16_n1", (1, 3, 32, 48), (24, 3, 16, 16)),               # ViT-B/16's kernel: K = 768
]
VIT = _patch("vit_embed", (2, 3, 16, 16), (8, 3, 4, 4))     # -> flatten, transpose, [CLS] ; patches, + positions
NORM = _patch("norm_embed", (2, 4, 8, 8), (12, 4, 2, 2))    # -> flatten, transpose, LayerNorm (Swin's embedding)
# Convolutions outside the pattern: each stays a Conv (moa_conv2d_f32).
OTHERS = [
    Case("padded", (1, 3, 8, 8), (4, 3, 2, 2), attrs=(("strides", [2, 2]), ("pads", [1, 1, 1, 1]))),
    Case("stride_below_kernel", (1, 3, 8, 8), (4, 3, 4, 4), attrs=(("strides", [2, 2]),)),
    Case("grouped", (1, 4, 8, 8), (6, 2, 2, 2), attrs=(("strides", [2, 2]), ("group", 2))),
    Case("dilated", (1, 3, 8, 8), (4, 3, 2, 2), attrs=(("strides", [2, 2]), ("dilations", [2, 2]))),
    Case("pointwise", (1, 8, 5, 5), (4, 8, 1, 1)),
    Case("height_not_a_multiple", (1, 3, 9, 8), (4, 3, 2, 2), attrs=(("strides", [2, 2]),)),
    Case("conv1d_patch", (1, 3, 12), (4, 3, 4), attrs=(("strides", [4]),)),
]


def _rng(case: Case) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, case.name)))


def _conv(case: Case, x: str, y: str, inits: list) -> onnx.NodeProto:
    rng = _rng(case)
    names = [x, f"W_{case.name}"] + ([f"B_{case.name}"] if case.bias else [])
    inits.append(numpy_helper.from_array(rng.standard_normal(case.w).astype(np.float32), names[1]))
    if case.bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(case.w[0]).astype(np.float32), names[2]))
    return helper.make_node("Conv", names, [y], name=case.name, **dict(case.attrs))


def _const(name: str, value, inits: list) -> str:
    inits.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _tokens(case: Case, y: str, nodes: list, inits: list) -> str:
    """flatten(2).transpose(1, 2) of the Conv's output, as ViT and Swin export it: [N, Ho Wo, O]."""
    n, o = case.x[0], case.w[0]
    nodes.append(helper.make_node("Reshape", [y, _const(f"{case.name}_flat_shape", np.array([n, o, -1], np.int64), inits)],
                                  [f"{case.name}_flat"], name=f"{case.name}_flatten"))
    nodes.append(helper.make_node("Transpose", [f"{case.name}_flat"], [f"{case.name}_tokens"], perm=[0, 2, 1],
                                  name=f"{case.name}_transpose"))
    return f"{case.name}_tokens"


def _model(cases: list[Case], vit: bool = True) -> onnx.ModelProto:
    """Every case's Conv on an input of its own (X_<name> -> Y_<name>), with ViT's and Swin's embeddings."""
    nodes, inits, inputs, outputs = [], [], [], []
    for case in cases:
        inputs.append(helper.make_tensor_value_info(f"X_{case.name}", TensorProto.FLOAT, case.x))
        nodes.append(_conv(case, f"X_{case.name}", f"Y_{case.name}", inits))
        outputs.append(f"Y_{case.name}")
    if vit:
        for case in (VIT, NORM):
            inputs.append(helper.make_tensor_value_info(f"X_{case.name}", TensorProto.FLOAT, case.x))
            nodes.append(_conv(case, f"X_{case.name}", f"conv_{case.name}", inits))
        n, o = VIT.x[0], VIT.w[0]
        tokens, rng = _tokens(VIT, "conv_vit_embed", nodes, inits), _rng(VIT)
        cls = _const("cls", rng.standard_normal((n, 1, o)).astype(np.float32), inits)
        positions = _const("positions", rng.standard_normal((1, 1 + (VIT.x[2] // 4) * (VIT.x[3] // 4), o)
                                                            ).astype(np.float32), inits)
        nodes += [helper.make_node("Concat", [cls, tokens], ["with_cls"], axis=1, name="cat"),
                  helper.make_node("Add", ["with_cls", positions], ["Y_vit"], name="add_positions")]
        rng = _rng(NORM)
        scale = _const("ln_scale", rng.standard_normal(NORM.w[0]).astype(np.float32), inits)
        shift = _const("ln_bias", rng.standard_normal(NORM.w[0]).astype(np.float32), inits)
        nodes.append(helper.make_node("LayerNormalization", [_tokens(NORM, "conv_norm_embed", nodes, inits), scale,
                                                             shift], ["Y_norm"], axis=-1, epsilon=1e-5, name="norm"))
        outputs += ["Y_vit", "Y_norm"]
    graph = helper.make_graph(nodes, "patches", inputs, [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)
                                                         for y in outputs], initializer=inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def _expected(model: onnx.ModelProto, feeds) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _check(got: dict, expected: dict):
    depth = {f"Y_{c.name}": c.depth for c in PATCHES} | {"Y_vit": VIT.depth, "Y_norm": NORM.depth}
    for name, want in expected.items():
        # fp32 sums of `depth` products of unit normals, as test_conv's tolerance (the LayerNorm divides
        # its rows by about sqrt(depth) and multiplies them by unit normals: its error is smaller still).
        _assert_close(got[name], want, Case(name, (), (1, depth[name])))


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    """(model, its file, the lowered graph, the converted project and its report)."""
    folder = tmp_path_factory.mktemp("patch_conv")
    model = _model(PATCHES)
    onnx.save(model, folder / "patches.onnx")
    return model, folder / "patches.onnx", load_graph(folder / "patches.onnx"), folder / "project", \
        convert(folder / "patches.onnx", folder / "project")


def test_each_patch_conv_is_one_packed_gemm(patches):
    _, _, graph, project, _ = patches
    by_name = {n.name: n for n in graph.nodes}
    assert not [n for n in graph.nodes if n.op == "Conv"]
    for case in PATCHES + [VIT, NORM]:
        gemm = by_name[case.name]  # the GEMM keeps the Conv's name
        assert gemm.op == "MoaGemm" and gemm.attrs["n"] == case.w[0]
        assert gemm.attrs["source"] == ("MatMul + Add" if case.bias else "MatMul")  # the bias is the GEMM's C
    code = (project / "model.c").read_text()
    assert "moa_conv2d_f32" not in code and code.count("moa_gemm_packed_f32_on(") == len(PATCHES) + 2
    for case in PATCHES + [VIT, NORM]:
        (_, c, _, _), (_, _, kh, kw) = case.x, case.w
        rows = case.x[0] * (case.x[2] // kh) * (case.x[3] // kw)
        assert f"/* {case.name}: MatMul{' + Add' if case.bias else ''} with packed weights, M={rows} N={case.w[0]} " \
               f"K={c * kh * kw} */" in code


def test_flatten_and_transpose_after_the_gemm_copy_nothing(patches):
    """ViT's [CLS] concatenation reads the GEMM's output in place (the views compose to it as it is); so
    does Swin's LayerNorm (the cancelling transposes become a view, lower_copies). The copies left are
    the patches and, where the Conv's NCHW output is a graph output, that output."""
    _, _, graph, _, _ = patches
    by_name = {n.name: n for n in graph.nodes}
    cat, norm = by_name["cat"], by_name["norm"]
    assert cat.op == "MoaConcat" and cat.inputs[1] == by_name["vit_embed"].outputs[0]
    assert cat.attrs["layouts"][1].is_row_major() and cat.attrs["layouts"][1].offset == 0
    source = graph.producer(norm.inputs[0])
    while source.op == "Reshape":
        source = graph.producer(source.inputs[0])
    assert source is by_name["norm_embed"]
    copies = [n.name for n in graph.nodes if n.op == "MoaConcat"]
    assert sorted(copies) == sorted([f"{c.name}__patch_order" for c in PATCHES + [VIT, NORM]] + ["cat"]
                                    + [f"{c.name}__channels_first" for c in PATCHES])


def test_convs_outside_the_pattern_stay_convs(tmp_path):
    model = _model(OTHERS, vit=False)
    onnx.save(model, tmp_path / "others.onnx")
    graph = load_graph(tmp_path / "others.onnx")
    assert sorted((n.op, n.name) for n in graph.nodes) == sorted(("Conv", c.name) for c in OTHERS)


def test_torch_reference_matches_onnxruntime(patches):
    model, _, graph, _, _ = patches
    feeds = _feeds(model)
    _check(run_reference(graph, feeds), _expected(model, feeds))


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
def test_generated_c_matches_onnxruntime(patches, board_name):
    board = require_board(board_name)
    model, _, _, project, report = patches
    feeds = _feeds(model)
    outputs, _ = run(build(project, board), board, report["io"], check_inputs(report["io"], feeds, "patches"))
    _check(outputs, _expected(model, feeds))


def _dequantized_model(model: onnx.ModelProto, weights: str) -> onnx.ModelProto:
    """The model with each Conv weight W as the patch GEMM stores it: W^T [C KH KW, O] quantized along K."""
    model, fmt = onnx.ModelProto.FromString(model.SerializeToString()), parse_weights(weights)
    for init in model.graph.initializer:
        if init.name.startswith("W_"):
            w = numpy_helper.to_array(init)
            k = int(np.prod(w.shape[1:]))
            back = dequantized(np.ascontiguousarray(w.reshape(w.shape[0], k).T), fmt, two_levels=fmt.qtype == "u4")
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(back.T.reshape(w.shape), np.float32), init.name))
    return model


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_quantized_patch_conv_is_one_quantized_gemm(weights, tmp_path):
    """--weights: the patch GEMM's weight quantized as a Linear layer's (MoaQGemm), on the host; K = 30
    (patch2x3_c5_n2), which int4's block of 32 does not divide, stays a Conv (MoaQConv, int8 per channel)."""
    cases = [PATCHES[4]] + ([PATCHES[2]] if weights == "int4" else [])
    model = _model(cases, vit=False)
    onnx.save(model, tmp_path / "q.onnx")
    graph = load_graph(tmp_path / "q.onnx", weights=parse_weights(weights))
    ops = {n.name: n.op for n in graph.nodes}
    assert ops[PATCHES[4].name] == "MoaQGemm" and ops.get(PATCHES[2].name, "MoaQConv") == "MoaQConv"
    report = convert(tmp_path / "q.onnx", tmp_path / "project", weights=parse_weights(weights))
    board = require_board("host")
    feeds = _feeds(model)
    outputs, _ = run(build(tmp_path / "project", board), board, report["io"], check_inputs(report["io"], feeds, "q"))
    name = f"Y_{PATCHES[4].name}"
    _assert_close(outputs[name], _expected(_dequantized_model(_model([PATCHES[4]], vit=False), weights),
                                           {f"X_{PATCHES[4].name}": feeds[f"X_{PATCHES[4].name}"]})[name], PATCHES[4])
