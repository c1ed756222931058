"""Conv (fp32, 1-D and 2-D): single-node ONNX models converted, built and run on every board
against onnxruntime on the original file, the torch reference (evaluate) against onnxruntime
too, and moa_conv2d_f32 itself under ASan and UBSan; then the ONNX backend node tests for
Conv on the host. The patch-embedding case (kernel = stride) runs as one GEMM (passes/patch_conv.py):
its kernel test passes moa_conv2d_f32 the geometry directly. Cases needing a feature the
runtime lacks must be refused with one clear error naming it; they are listed in NOT_YET
(reported as xfail), so this file fails the day one of them starts to pass."""
from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import Path
import re
import shutil
import subprocess

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.backend.test.loader import load_model_tests
import onnxruntime as ort
import pytest

from backend_cases import not_yet, run_backend_case
from conftest import BOARDS, SANITIZE, require_board
from moa_edge import C_RUNTIME_DIR
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import check_inputs, run
from moa_edge.ir import Node
from moa_edge.ops import conv, matmul
from moa_edge.pipeline import convert, load_graph


@dataclass(frozen=True)
class Case:
    name: str
    x: tuple                 # X: N x C x [H x] W
    w: tuple                 # W: M x C/group x [KH x] KW (an initializer)
    bias: bool = True        # B: M values (an initializer)
    attrs: tuple = ()        # (name, value) pairs

    @property
    def depth(self) -> int:  # products in each output's sum, which sets the rounding error
        return math.prod(self.w[1:])


CASES = [
    Case("conv1d_pads_1", (1, 4, 10), (6, 4, 3), attrs=(("pads", [1, 1]),)),
    Case("conv1d_asymmetric_pads_no_bias", (2, 3, 9), (5, 3, 4), bias=False, attrs=(("pads", [2, 0]),)),
    Case("conv1d_strides_dilations", (1, 3, 17), (4, 3, 3), attrs=(("strides", [2]), ("dilations", [2]),
                                                                  ("pads", [1, 2]))),
    Case("conv1d_depthwise", (1, 6, 12), (6, 1, 5), attrs=(("group", 6), ("pads", [2, 2]))),
    Case("conv2d_no_pads", (1, 2, 7, 6), (3, 2, 3, 3)),
    Case("conv2d_symmetric_pads_no_bias", (2, 3, 8, 8), (4, 3, 3, 3), bias=False, attrs=(("pads", [1, 1, 1, 1]),)),
    Case("conv2d_asymmetric_pads_strides", (1, 3, 9, 7), (5, 3, 3, 2), attrs=(("pads", [0, 1, 2, 1]),
                                                                            ("strides", [2, 3]))),
    Case("conv2d_dilations", (1, 2, 11, 10), (3, 2, 3, 3), attrs=(("dilations", [2, 3]), ("pads", [1, 2, 1, 2]))),
    Case("conv2d_pads_wider_than_kernel", (1, 2, 5, 4), (3, 2, 2, 2), attrs=(("pads", [3, 1, 2, 3]),)),
    Case("conv2d_same_upper_strides", (1, 3, 7, 8), (4, 3, 3, 3), attrs=(("auto_pad", "SAME_UPPER"),
                                                                       ("strides", [2, 2]))),
    Case("conv2d_same_lower", (1, 2, 6, 5), (3, 2, 4, 3), attrs=(("auto_pad", "SAME_LOWER"),)),
    Case("conv2d_valid", (1, 2, 6, 5), (3, 2, 2, 3), attrs=(("auto_pad", "VALID"), ("strides", [1, 2]))),
    Case("conv2d_1x1", (2, 16, 5, 6), (8, 16, 1, 1), attrs=(("kernel_shape", [1, 1]),)),
    Case("conv2d_grouped", (1, 6, 7, 7), (4, 3, 3, 3), attrs=(("group", 2), ("pads", [1, 1, 1, 1]))),
    Case("conv2d_depthwise", (1, 4, 8, 8), (4, 1, 3, 3), attrs=(("group", 4), ("pads", [1, 1, 1, 1]))),
    # A ResNet-like 3x3 layer: as an implicit GEMM, more rows than a register tile and a depth
    # (32 x 9 = 288) past one KC slice, whose second slice starts inside a channel's taps.
    Case("conv2d_resnet_3x3", (1, 32, 14, 13), (48, 32, 3, 3), attrs=(("pads", [1, 1, 1, 1]),)),
    # ViT's patch embedding: kernel = stride = patch, no padding.
    Case("vit_patch_embedding", (2, 3, 32, 32), (32, 3, 8, 8), attrs=(("kernel_shape", [8, 8]),
                                                                      ("strides", [8, 8]))),
    # Whisper's front end: two 1-D convolutions, kernel 3, pad 1, strides 1 then 2.
    Case("whisper_conv1", (1, 80, 60), (64, 80, 3), attrs=(("pads", [1, 1]),)),
    Case("whisper_conv2_stride2", (1, 80, 60), (64, 80, 3), attrs=(("pads", [1, 1]), ("strides", [2]))),
]
# Run as one GEMM over the patches, not by moa_conv2d_f32 (passes/patch_conv.py, tests/test_patch_conv.py).
PATCH_GEMM = {"vit_patch_embedding"}

_projects: dict[str, tuple[Path, Path, dict]] = {}


def _weights(case: Case) -> list[np.ndarray]:
    rng = np.random.default_rng(sum(map(ord, case.name)))
    values = [rng.standard_normal(case.w).astype(np.float32)]
    return values + [rng.standard_normal(case.w[0]).astype(np.float32)] if case.bias else values


def _feeds(case: Case) -> dict[str, np.ndarray]:
    return {"X": np.random.default_rng(len(case.name)).standard_normal(case.x).astype(np.float32)}


def _model(case: Case, dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    names = ["X", "W", "B"][:2 + case.bias]
    node = helper.make_node("Conv", names, ["Y"], name=case.name, **dict(case.attrs))
    inits = [numpy_helper.from_array(v, n) for n, v in zip(names[1:], _weights(case))]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", dtype, case.x)],
                              [helper.make_tensor_value_info("Y", dtype, None)], initializer=inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _expected(path: Path, feeds) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _assert_close(got, expected, case: Case):
    # fp32 sums of `depth` products of unit normals: rounding error grows like sqrt(depth).
    assert got.shape == expected.shape, case.name
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.sqrt(case.depth), err_msg=case.name)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("conv")


def project_for(case: Case, workdir: Path):
    if case.name not in _projects:
        path = workdir / f"{case.name}.onnx"
        onnx.save(_model(case), path)
        _projects[case.name] = (path, workdir / case.name, convert(path, workdir / case.name))
    return _projects[case.name]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_torch_reference_matches_onnxruntime(case, workdir):
    path, _, _ = project_for(case, workdir)
    graph = load_graph(path)
    assert [n.op for n in graph.nodes] == (["MoaConcat", "Reshape", "MoaGemm", "MoaConcat"] if case.name in PATCH_GEMM
                                           else ["Conv"])
    feeds = _feeds(case)
    _assert_close(run_reference(graph, feeds)["Y"], _expected(path, feeds), case)


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_generated_c_matches_onnxruntime(case, board_name, workdir):
    board = require_board(board_name)
    path, project, report = project_for(case, workdir)
    feeds = _feeds(case)
    outputs, _ = run(build(project, board), board, report["io"], check_inputs(report["io"], feeds, case.name))
    _assert_close(outputs["Y"], _expected(path, feeds), case)


def test_no_scratch_and_one_call(workdir):
    """The padding is never written out and there is no im2col buffer: the arena holds nothing."""
    case = next(c for c in CASES if c.name == "conv2d_asymmetric_pads_strides")
    _, project, report = project_for(case, workdir)
    code = (project / "model.c").read_text()
    assert code.count("moa_conv2d_f32_on(pool, ") == 1 and ".pad_top = 0u," in code and ".pad_left = 1u," in code
    assert report["memory"]["arena_bytes"] == 0


def test_3d_convolution_is_refused_by_name(tmp_path):
    onnx.save(_model(Case("conv3d", (1, 2, 4, 4, 4), (3, 2, 2, 2, 2))), tmp_path / "model.onnx")
    with pytest.raises(MoaEdgeError) as info:
        convert(tmp_path / "model.onnx", tmp_path / "project")
    message = str(info.value)
    assert "3-D convolution" in message and "'conv3d'" in message and "not supported" in message
    assert "\n" not in message, message


def test_a_float64_convolution_computes_in_float32(tmp_path):
    """Input and weights read through Casts (passes/float32_kernels.py), against torch in float64."""
    import torch
    case = Case("conv_float64", (1, 2, 5), (3, 2, 3))
    model = _model(case, TensorProto.DOUBLE)
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    onnx.save(model, tmp_path / "model.onnx")
    board = require_board("host")
    io = convert(tmp_path / "model.onnx", tmp_path / "project")["io"]
    x = np.random.default_rng(4).standard_normal(case.x)
    got, _ = run(build(tmp_path / "project", board), board, io, check_inputs(io, {"X": x}, "model.onnx"))
    w, *b = (torch.from_numpy(numpy_helper.to_array(i)) for i in model.graph.initializer)
    want = torch.nn.functional.conv1d(torch.from_numpy(x), w, b[0] if b else None).numpy()  # no attributes
    assert got["Y"].dtype == np.float64
    _assert_close(got["Y"], want, case)


# --- moa_conv2d_f32 under ASan and UBSan ----------------------------------------------------

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>

#include "moa/conv.h"

/* argv: the 16 fields of moa_conv2d_params in order, then has_bias and the threads of the pool
 * stdin: X, W, B (when has_bias); stdout: Y. Each buffer has its exact size on the heap. */
static float *read_floats(size_t n)
{
    float *p = malloc(n ? n * sizeof *p : 1);
    if (p == NULL || fread(p, sizeof *p, n, stdin) != n) {
        exit(2);
    }
    return p;
}

int main(int argc, char **argv)
{
    size_t f[16], k, y_size;
    moa_conv2d_params p;
    float *x, *w, *b, *y;
    moa_status status;
    moa_pool pool;
    if (argc != 19 || moa_pool_init(&pool, strtoul(argv[18], NULL, 10)) != MOA_OK) {
        return 2;
    }
    for (k = 0; k < 16; k++) {
        f[k] = strtoul(argv[k + 1], NULL, 10);
    }
    p.batch = f[0], p.channels = f[1], p.height = f[2], p.width = f[3];
    p.out_channels = f[4], p.out_height = f[5], p.out_width = f[6];
    p.kernel_height = f[7], p.kernel_width = f[8], p.stride_height = f[9], p.stride_width = f[10];
    p.dilation_height = f[11], p.dilation_width = f[12], p.pad_top = f[13], p.pad_left = f[14], p.groups = f[15];
    x = read_floats(p.batch * p.channels * p.height * p.width);
    w = read_floats(p.out_channels * (p.channels / p.groups) * p.kernel_height * p.kernel_width);
    b = atoi(argv[17]) ? read_floats(p.out_channels) : NULL;
    y_size = p.batch * p.out_channels * p.out_height * p.out_width;
    y = malloc(y_size * sizeof *y);
    status = moa_conv2d_f32_on(&pool, &p, x, w, b, y);
    moa_pool_destroy(&pool);
    if (status != MOA_OK || fwrite(y, sizeof *y, y_size, stdout) != y_size) {
        return 3;
    }
    free(x), free(w), free(b), free(y);
    return 0;
}
"""


@pytest.fixture(scope="module")
def conv_exe(tmp_path_factory):
    if shutil.which("cc") is None:
        pytest.skip("no host C compiler (cc)")
    tmp = tmp_path_factory.mktemp("conv_kernel")
    (tmp / "main.c").write_text(HARNESS)
    exe = tmp / "conv_main"
    src = C_RUNTIME_DIR / "src"
    subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", *SANITIZE, f"-I{C_RUNTIME_DIR / 'include'}",
                    str(tmp / "main.c"), str(src / "conv.c"), *(str(src / s) for s in matmul.C_SOURCES), "-o", str(exe),
                    "-lpthread"],
                   check=True)  # the GEMM's driver and every kernel it may call (its quantized panels too)
    return exe


def _fields(case: Case) -> list[str]:
    """moa_conv2d_params' 16 fields in order for a 2-D case without padding (as emit_call fills them)."""
    g = conv.geometry(Node("Conv", case.name, [], [], dict(case.attrs)), case.x, case.w)
    assert len(case.x) == 4 and not any(g.pads_begin)
    return [str(v) for v in (*case.x, case.w[0], *g.out_shape(case.x[2:]), *g.kernel, *g.strides, *g.dilations,
                             0, 0, g.group)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_conv_kernel_stays_inside_its_buffers(case, conv_exe, workdir):
    """The parameters the generated model.c passes, on exact-size heap buffers: no read or
    write outside X, W, B and Y (the padding is skipped, never read), and the same Y; on a pool
    of three threads, bitwise the same Y."""
    path, project, _ = project_for(case, workdir)
    fields = re.findall(r"\.\w+ = (\d+)u,", (project / "model.c").read_text())
    assert len(fields) == (0 if case.name in PATCH_GEMM else 16)
    fields = fields or _fields(case)  # a patch embedding, run as a GEMM: the kernel is given its geometry
    feeds = _feeds(case)
    stdin = b"".join(a.tobytes() for a in [feeds["X"], *_weights(case)])
    proc = subprocess.run([str(conv_exe), *fields, str(int(case.bias)), "1"], input=stdin, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    expected = _expected(path, feeds)
    _assert_close(np.frombuffer(proc.stdout, np.float32).reshape(expected.shape), expected, case)
    threaded = subprocess.run([str(conv_exe), *fields, str(int(case.bias)), "3"], input=stdin, capture_output=True)
    assert threaded.returncode == 0 and threaded.stdout == proc.stdout, threaded.stderr.decode()


# --- the ONNX backend node tests ----------------------------------------------------------

def _opset(case) -> int:
    return max(o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx"))


def _backend_case(case) -> bool:
    return ((case.name.startswith("test_conv") or case.name.startswith("test_basic_conv"))
            and not case.name.endswith("_expanded") and _opset(case) >= 13
            and [n.op_type for n in case.model.graph.node] == ["Conv"]
            and all(v.type.tensor_type.elem_type == TensorProto.FLOAT
                    for v in list(case.model.graph.input) + list(case.model.graph.output)))


BACKEND = {c.name: c for c in load_model_tests(kind="node") if _backend_case(c)}

# What the converter refuses, by case-name pattern (reason in the value). None yet.
NOT_YET: dict[str, str] = {}


def _not_yet(name: str) -> str | None:
    return not_yet(name, NOT_YET)


@pytest.mark.board
@pytest.mark.parametrize("name", sorted(BACKEND))
def test_backend_conv_case(name, tmp_path):
    run_backend_case(name, BACKEND[name], tmp_path, NOT_YET)


def test_backend_conv_pass_count(capsys):
    total = len(BACKEND)
    passing = sum(_not_yet(n) is None for n in BACKEND)
    with capsys.disabled():
        print(f"\nONNX Conv backend tests (float32, opset >= 13): {passing} of {total} run end to end on the host")
    assert total >= 6 and passing == total

