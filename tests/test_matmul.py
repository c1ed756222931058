"""MatMul and Gemm (issue 5): single-node ONNX models converted, built and run on every
board against onnxruntime on the original file; moa_gemm_f32 itself against numpy in
float64 at sizes that are not multiples of its tiles, under ASan and UBSan."""
from dataclasses import dataclass
from pathlib import Path
import platform
import subprocess

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort
import pytest

from conftest import BOARDS, SANITIZE, bare_metal_harness_script, require_board, run_bare_metal
from moa_edge import C_RUNTIME_DIR
from moa_edge.harness.build import build
from moa_edge.harness.kernel_harness import runtime_objects
from moa_edge.ops import matmul
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import check_inputs, run
from moa_edge.pipeline import convert, load_graph
from moa_edge.target import load_board


@dataclass(frozen=True)
class Case:
    name: str
    op: str
    shapes: tuple            # operand shapes (A, B[, C])
    constant: tuple = ()     # indices of the operands stored as initializers (weights.c)
    attrs: tuple = ()        # Gemm's (name, value) pairs

    @property
    def depth(self) -> int:  # K: the length of each dot product, which sets the rounding error
        a = self.shapes[0]
        return a[-2] if dict(self.attrs).get("transA") else a[-1]


CASES = [
    Case("matmul_2d", "MatMul", ((4, 8), (8, 5))),
    Case("matmul_2d_odd_tiles", "MatMul", ((9, 33), (33, 13)), constant=(1,)),
    Case("matmul_deep_and_wide", "MatMul", ((3, 300), (300, 260))),  # K and N past one cache block
    Case("matmul_batched_3d", "MatMul", ((2, 4, 8), (2, 8, 5))),
    Case("matmul_batched_4d", "MatMul", ((2, 3, 4, 8), (2, 3, 8, 5))),
    Case("matmul_broadcast_batch", "MatMul", ((2, 1, 4, 8), (3, 8, 5))),
    Case("matmul_shared_weight", "MatMul", ((3, 4, 8), (8, 5)), constant=(1,)),
    Case("matmul_vector_matrix", "MatMul", ((8,), (8, 5))),
    Case("matmul_matrix_vector", "MatMul", ((4, 8), (8,))),
    Case("matmul_batched_matrix_vector", "MatMul", ((2, 4, 8), (8,))),
    Case("gemm_plain_bias_n", "Gemm", ((4, 8), (8, 5), (5,))),
    Case("gemm_transA_bias_1xn", "Gemm", ((8, 4), (8, 5), (1, 5)), attrs=(("transA", 1),)),
    Case("gemm_transB_bias_mx1", "Gemm", ((4, 8), (5, 8), (4, 1)), attrs=(("transB", 1),)),
    Case("gemm_both_alpha_beta_full_c", "Gemm", ((8, 7), (13, 8), (7, 13)),
         attrs=(("transA", 1), ("transB", 1), ("alpha", 0.5), ("beta", -2.0))),
    Case("gemm_no_c", "Gemm", ((9, 33), (33, 13)), attrs=(("alpha", 1.5),)),
    Case("gemm_scalar_c", "Gemm", ((3, 8), (8, 5), ()), attrs=(("beta", 0.25),)),
    Case("gemm_linear_layer", "Gemm", ((6, 16), (10, 16), (10,)), constant=(1, 2), attrs=(("transB", 1),)),
    Case("gemm_transA_packed_alpha_beta", "Gemm", ((37, 20), (37, 45), (20, 45)), constant=(1,),
         attrs=(("transA", 1), ("alpha", 0.5), ("beta", -2.0))),
    Case("matmul_weight_batched_rows", "MatMul", ((2, 3, 17, 40), (40, 33)), constant=(1,)),
]

_projects: dict[str, tuple[Path, Path, dict]] = {}


def _operands(case: Case) -> list[np.ndarray]:
    rng = np.random.default_rng(sum(map(ord, case.name)))
    return [rng.standard_normal(shape).astype(np.float32) for shape in case.shapes]


def _model(case: Case) -> onnx.ModelProto:
    names = "ABC"[:len(case.shapes)]
    values = _operands(case)
    a, b = values[0], values[1]
    attrs = dict(case.attrs)
    if case.op == "MatMul":
        out_shape = np.matmul(a, b).shape
    else:
        out_shape = ((a.T if attrs.get("transA") else a) @ (b.T if attrs.get("transB") else b)).shape
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
              for k, (n, s) in enumerate(zip(names, case.shapes)) if k not in case.constant]
    inits = [numpy_helper.from_array(values[k], names[k]) for k in case.constant]
    node = helper.make_node(case.op, list(names), ["Y"], name=case.name, **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape)],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _feeds(case: Case) -> dict[str, np.ndarray]:
    return {n: v for k, (n, v) in enumerate(zip("ABC", _operands(case))) if k not in case.constant}


def _expected(path: Path, feeds) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _assert_close(got, expected, case: Case):
    # fp32 sums of K products of unit normals: rounding error grows like sqrt(K).
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.sqrt(case.depth), err_msg=case.name)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("matmul")


def project_for(case: Case, workdir: Path):
    if case.name not in _projects:
        path = workdir / f"{case.name}.onnx"
        onnx.save(_model(case), path)
        _projects[case.name] = (path, workdir / case.name, convert(path, workdir / case.name))
    return _projects[case.name]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_torch_reference_matches_onnxruntime(case, workdir):
    """The float64 reference executor (evaluate) against onnxruntime's kernels."""
    path, _, _ = project_for(case, workdir)
    graph = load_graph(path)
    assert [n.op for n in graph.nodes] == ["MoaGemm" if 1 in case.constant else case.op]  # a weight B is packed
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


def _linear_model(x_shape, n, bias_shape, rng) -> onnx.ModelProto:
    """Y = X W + bias, as torch.nn.Linear exports it: MatMul then Add."""
    w = rng.standard_normal((x_shape[-1], n)).astype(np.float32)
    bias = rng.standard_normal(bias_shape).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["XW"], name="matmul"),
             helper.make_node("Add", ["XW", "bias"], ["Y"], name="add_bias")]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, (*x_shape[:-1], n))],
                              initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(bias, "bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("bias_shape", [(35,), (1, 1, 35), ()], ids=["row", "row3d", "scalar"])
def test_linear_layer_packs_its_weight_and_adds_its_bias_in_the_kernel(bias_shape, board_name, workdir):
    """MatMul + Add(bias) becomes one MoaGemm: W packed in 16-column panels (zero-padded,
    so the weights grow from 35 to 48 columns), the bias its C; equal to onnxruntime."""
    board = require_board(board_name)
    path = workdir / f"linear_{len(bias_shape)}.onnx"
    onnx.save(_linear_model((2, 19, 70), 35, bias_shape, np.random.default_rng(7)), path)
    graph = load_graph(path)
    assert [n.op for n in graph.nodes] == ["MoaGemm"]
    project = workdir / f"linear_{len(bias_shape)}_{board_name}"
    report = convert(path, project)
    assert report["memory"]["weights_bytes"] == 4 * (70 * 48 + max(1, int(np.prod(bias_shape))))
    assert "moa_gemm_packed_f32_on(pool, 38, 35, 70," in (project / "model.c").read_text()  # both batches one product
    feeds = {"X": np.random.default_rng(1).standard_normal((2, 19, 70)).astype(np.float32)}
    outputs, _ = run(build(project, board), board, report["io"], check_inputs(report["io"], feeds, "linear"))
    np.testing.assert_allclose(outputs["Y"], _expected(path, feeds), rtol=1e-5, atol=1e-4)


def test_broadcast_operand_is_never_expanded(workdir):
    """[2,1,4,8] x [3,8,5]: six calls over two loops, each operand offset by its own batch
    strides (A skips the broadcast axis), and no arena: nothing is copied."""
    case = next(c for c in CASES if c.name == "matmul_broadcast_batch")
    _, project, report = project_for(case, workdir)
    code = (project / "model.c").read_text()
    assert code.count("moa_gemm_f32_on(") == 1 and code.count("for (") == 2
    assert "A + batch0 * 32," in code and "B + batch1 * 40," in code and "Y + batch0 * 60 + batch1 * 20," in code
    assert report["memory"]["arena_bytes"] == 0


# --- moa_gemm_f32 on its own -------------------------------------------------------------

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>

#include "moa/isa.h"
#include "moa/matmul.h"

/* argv: M N K trans_a trans_b c_rows c_cols alpha beta y_row_stride packed
 * stdin: A (stored [K][M] when trans_a), B (stored [N][K] when trans_b), C (c_rows x c_cols,
 *        none when c_rows is 0, broadcast to M x N), then Y's initial M x y_row_stride floats
 * stdout: Y; stderr: the kernel variant. Every buffer is its exact size on the heap, so ASan
 * sees any overrun. With `packed`, B is first packed (moa_gemm_pack_b_f32); `packed` S > 1 sums in
 * slices of S rows of packed B (moa_gemm_packed_rows_f32_on), each adding to Y, after checking that
 * a slice past B's rows is refused (exit 3 if not). Two more arguments
 * name files for stdin's and stdout's bytes (bare metal: semihosting has files, not pipes). */
static FILE *in, *out;

static float *read_floats(size_t n)
{
    float *p = malloc(n ? n * sizeof *p : 1);
    if (p == NULL || fread(p, sizeof *p, n, in) != n) {
        exit(2);
    }
    return p;
}

int main(int argc, char **argv)
{
    size_t M, N, K, c_rows, c_cols, y_row_stride;
    int trans_a, trans_b, packed;
    float *A, *B, *C, *Y, *P;
    moa_matrix_f32 a, b, c;
    moa_status status;
    if (argc != 12 && argc != 14) {
        return 2;
    }
    in = argc == 14 ? fopen(argv[12], "rb") : stdin, out = argc == 14 ? fopen(argv[13], "wb") : stdout;
    if (in == NULL || out == NULL) {
        return 2;
    }
    M = strtoul(argv[1], NULL, 10), N = strtoul(argv[2], NULL, 10), K = strtoul(argv[3], NULL, 10);
    trans_a = atoi(argv[4]), trans_b = atoi(argv[5]), packed = atoi(argv[11]);
    c_rows = strtoul(argv[6], NULL, 10), c_cols = strtoul(argv[7], NULL, 10);
    y_row_stride = strtoul(argv[10], NULL, 10);
    A = read_floats(M * K), B = read_floats(K * N), C = read_floats(c_rows * c_cols);
    Y = read_floats(M * y_row_stride);
    a.data = A, a.row_stride = trans_a ? 1 : (ptrdiff_t)K, a.col_stride = trans_a ? (ptrdiff_t)M : 1;
    b.data = B, b.row_stride = trans_b ? 1 : (ptrdiff_t)N, b.col_stride = trans_b ? (ptrdiff_t)K : 1;
    c.data = c_rows ? C : NULL, c.row_stride = c_rows == 1 ? 0 : (ptrdiff_t)c_cols, c.col_stride = c_cols == 1 ? 0 : 1;
    P = malloc(MOA_GEMM_PACKED_B_ELEMS(K, N) * sizeof *P + 1);
    if (P == NULL) {
        return 2;
    }
    moa_gemm_pack_b_f32(K, N, b, P);
    if (packed > 1) {
        const moa_matrix_f32 y_view = {Y, (ptrdiff_t)y_row_stride, 1};
        size_t p0;
        if (moa_gemm_packed_rows_f32_on(NULL, M, N, K, 1.0f, a, P, K, 1, 0.0f, c, Y, (ptrdiff_t)y_row_stride) !=
            MOA_ERR_BAD_PARAMS) {
            return 3;
        }
        status = MOA_OK;
        for (p0 = 0; p0 < K && status == MOA_OK; p0 += (size_t)packed) {
            moa_matrix_f32 a_slice = a;
            a_slice.data += (ptrdiff_t)p0 * a.col_stride;
            status = moa_gemm_packed_rows_f32_on(NULL, M, N, K - p0 < (size_t)packed ? K - p0 : (size_t)packed,
                                                 (float)atof(argv[8]), a_slice, P, K, p0,
                                                 p0 == 0 ? (float)atof(argv[9]) : 1.0f, p0 == 0 ? c : y_view, Y,
                                                 (ptrdiff_t)y_row_stride);
        }
    } else {
        status = packed ? moa_gemm_packed_f32(M, N, K, (float)atof(argv[8]), a, P, (float)atof(argv[9]), c, Y,
                                          (ptrdiff_t)y_row_stride)
                        : moa_gemm_f32(M, N, K, (float)atof(argv[8]), a, b, (float)atof(argv[9]), c, Y,
                                       (ptrdiff_t)y_row_stride);
    }
    fprintf(stderr, "isa=%s\n", MOA_ISA_NAME);
    if (fwrite(Y, sizeof *Y, M * y_row_stride, out) != M * y_row_stride || fflush(out) != 0) {
        return 2;
    }
    free(A), free(B), free(C), free(Y), free(P);
    return status == MOA_OK ? 0 : 100 + (int)status;
}
"""
SENTINEL = np.float32(12345.0)
GEMM_SOURCES = [C_RUNTIME_DIR / "src" / s for s in matmul.C_SOURCES]

# Every register-tile variant (moa/gemm_tile.h): (board, extra C flags, emulator options, the
# variant the build must report). The host builds cover AVX-512 under the sanitizers (when
# the host has it: -march=native), AVX2 + FMA, and the scalar reference; rpi5 is NEON built
# for the Cortex-A76 (armv8.2: fp16, dotprod) and run on qemu's model of it.
GEMM_VARIANTS = {
    "host-native-sanitized": ("host", SANITIZE, None, None),
    "host-avx2": ("host", ["-mavx2", "-mfma", "-mno-avx512f"], None, "avx2"),
    "host-scalar": ("host", ["-DMOA_FORCE_SCALAR"], None, "scalar"),
    "rpi4-neon": ("rpi4", [], None, "neon"),
    "rpi4-scalar": ("rpi4", ["-DMOA_FORCE_SCALAR"], None, "scalar"),
    "rpi5-neon": ("rpi5", [], None, "neon"),
    "k230-rvv-vlen128": ("k230", [], None, "rvv"),
    "bpi-f3-rvv-zvfh": ("bpi-f3", [], None, "rvv"),  # VLEN 256, and Zvfh's half conversion and arithmetic
}


# The Helium tile, bare metal on the M55 under qemu-system-arm (its files over semihosting).
MCU_GEMM_VARIANTS = {"alif-e7-helium": ("alif-e7", [], None, "helium")}


@dataclass(frozen=True)
class GemmExe:
    command: list
    isa: str | None
    board: str = ""
    bare_metal: bool = False

    def run(self, args: list, stdin: bytes) -> subprocess.CompletedProcess:
        """The harness with `args`, stdin's bytes in and stdout's out (through files on bare metal)."""
        if not self.bare_metal:
            return subprocess.run([*self.command, *map(str, args)], input=stdin, capture_output=True)
        return run_bare_metal(load_board(self.board), self.command[0], args, stdin)


def build_harness(variant: tuple, harness: str, sources, tmp_path_factory, more_flags=()) -> GemmExe:
    """A kernel test program (harness + runtime sources) for one variant of a GEMM table:
    (board, extra C flags, emulator VLEN or None, the isa name its build must report)."""
    board_name, extra, vlen, isa = variant
    board = require_board(board_name)
    tmp = tmp_path_factory.mktemp("kernel")
    (tmp / "main.c").write_text(harness)
    exe = tmp / "kernel_main"
    flags = [*board.toolchain.get("cflags", []), *extra, *more_flags, "-std=c99", "-Wall", "-Wextra", "-Werror"]
    link = []
    if board.bare_metal:
        link = ["-T", str(bare_metal_harness_script(board, tmp))]
    ldflags = [f for f in board.toolchain.get("ldflags", []) if f not in flags]  # one command: a spec file once
    objects = runtime_objects(board.compiler(), tuple(flags), sources)
    subprocess.run([board.compiler(), *flags, f"-I{C_RUNTIME_DIR / 'include'}", str(tmp / "main.c"),
                    *map(str, objects), *ldflags, *link, "-o", str(exe)], check=True)
    if board.bare_metal:
        return GemmExe([str(exe)], isa, board_name, bare_metal=True)
    runner = board.runner()
    if vlen:
        runner = [part.replace("vlen=128", vlen) for part in runner]
    return GemmExe(runner + [str(exe)], isa, board_name)


@pytest.fixture(scope="module", params=[*GEMM_VARIANTS, *MCU_GEMM_VARIANTS], ids=str)
def gemm_exe(request, tmp_path_factory):
    variant = {**GEMM_VARIANTS, **MCU_GEMM_VARIANTS}[request.param]
    if variant[3] in ("avx2",) and platform.machine() != "x86_64":
        pytest.skip("an x86-64 variant on a non-x86 host")
    return build_harness(variant, HARNESS, GEMM_SOURCES, tmp_path_factory)


def _run_gemm(exe, M, N, K, trans_a=False, trans_b=False, c_shape=None, alpha=1.0, beta=1.0, pad=0, seed=0,
              packed=False):
    """(moa_gemm_f32's Y including the padding columns, numpy's float64 Y, the exit code)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    c = rng.standard_normal(c_shape).astype(np.float32) if c_shape else np.zeros((0, 0), np.float32)
    y0 = np.full((M, N + pad), SENTINEL, np.float32)
    stdin = b"".join(np.ascontiguousarray(x).tobytes() for x in (a.T if trans_a else a, b.T if trans_b else b, c, y0))
    args = [M, N, K, int(trans_a), int(trans_b), *(c_shape or (0, 0)), alpha, beta, N + pad, int(packed)]
    proc = exe.run(args, stdin)
    assert proc.returncode == 0 or proc.returncode > 100, proc.stderr.decode()  # else the harness itself failed
    if exe.isa is not None:
        assert f"isa={exe.isa}" in proc.stderr.decode(), proc.stderr.decode()
    got = np.frombuffer(proc.stdout, np.float32).reshape(M, N + pad)
    expected = alpha * (a.astype(np.float64) @ b.astype(np.float64))
    if c_shape:
        expected = expected + beta * c.astype(np.float64)
    return got, expected, proc.returncode


def _assert_gemm_close(got, expected, K, N):
    np.testing.assert_allclose(got[:, :N], expected, rtol=1e-5, atol=1e-5 * max(1.0, np.sqrt(K)))
    assert np.all(got[:, N:] == SENTINEL), "Y's padding columns were written"


# Below, at and past one register tile (MR 4 to 12, 16 or 32 columns) and one cache block: the last
# has M past MOA_GEMM_MC and K past MOA_GEMM_KC, so the sum is split and Y accumulated.
SIZES = [(1, 1, 1), (1, 3, 7), (3, 7, 13), (7, 13, 33), (13, 33, 1), (33, 1, 13), (4, 8, 16), (8, 16, 9),
         (14, 16, 5), (15, 17, 19), (29, 48, 40), (70, 300, 260), (130, 40, 600),
         # edge tiles (every MR leaves a bottom edge of a different height, N a right edge of
         # 13 columns (wider than 8: AVX2's masked high half) or 3):
         (20, 29, 7), (77, 35, 30), (77, 515, 300)]


@pytest.mark.board
@pytest.mark.parametrize("trans_a, trans_b, packed", [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1)],
                         ids=["nn", "tn", "nt", "tt", "n-packed", "t-packed"])
@pytest.mark.parametrize("M, N, K", SIZES, ids=lambda s: str(s))
def test_gemm_kernel_matches_numpy(gemm_exe, M, N, K, trans_a, trans_b, packed):
    """Transposed operands and a full C through strides, into a Y with padded rows; B read
    in place, through a stack panel, or packed."""
    got, expected, rc = _run_gemm(gemm_exe, M, N, K, trans_a, trans_b, c_shape=(M, N), alpha=0.75, beta=-1.5,
                                  pad=3, seed=M * 10000 + N * 100 + K, packed=packed)
    assert rc == 0
    _assert_gemm_close(got, expected, K, N)


# Column blocks (matmul.h's MOA_GEMM_NC, 1024 columns on x86): built with blocks of 32 columns (one
# AVX-512 tile, two of every other ISA's), so N = 300 and 515 run in 10 and 17 blocks, the last
# narrower and ending in an edge tile. Every element is the same sum in the same order: the
# blocked build's Y is bitwise the unblocked build's, and numpy's within rounding.
@pytest.fixture(scope="module", params=["host-native-sanitized", "host-avx2", "rpi4-neon", "k230-rvv-vlen128"], ids=str)
def column_block_exes(request, tmp_path_factory):
    variant = GEMM_VARIANTS[request.param]
    return (build_harness(variant, HARNESS, GEMM_SOURCES, tmp_path_factory, ["-DMOA_GEMM_NC=32"]),
            build_harness(variant, HARNESS, GEMM_SOURCES, tmp_path_factory, ["-DMOA_GEMM_NC_MIN=100000"]))


@pytest.mark.board
@pytest.mark.parametrize("trans_b, packed", [(0, 0), (1, 0), (0, 1)], ids=["view", "transposed", "packed"])
@pytest.mark.parametrize("M, N, K", [(70, 300, 260), (77, 515, 300), (5, 97, 33)], ids=str)
def test_gemm_column_blocks_change_no_bit(column_block_exes, M, N, K, trans_b, packed):
    blocked, whole = column_block_exes
    runs = [_run_gemm(exe, M, N, K, trans_b=trans_b, c_shape=(1, N), alpha=0.75, beta=-1.5, pad=3, seed=M + N + K,
                      packed=packed) for exe in (blocked, whole)]
    (got, expected, rc), (got_whole, _, rc_whole) = runs
    assert rc == 0 and rc_whole == 0
    _assert_gemm_close(got, expected, K, N)
    assert np.array_equal(got, got_whole)


@pytest.mark.board
@pytest.mark.parametrize("trans_a", [0, 1], ids=["n", "t"])
@pytest.mark.parametrize("M, N, K", [(70, 300, 600), (5, 97, 520)], ids=str)
def test_gemm_slices_of_the_sum_add_up_to_the_whole_product(gemm_exe, M, N, K, trans_a):
    """moa_gemm_packed_rows_f32_on (a feed-forward block's hidden blocks, ops/mlp.py): B's rows
    0-255, 256-511 and the rest, each slice adding to Y what the ones before left there, give
    numpy's Y and, the slices starting at multiples of every ISA's MOA_GEMM_KC, bitwise the
    whole product's; slices of 100 rows give numpy's within rounding."""
    kwargs = dict(trans_a=trans_a, c_shape=(1, N), alpha=0.75, beta=-1.5, pad=3, seed=M + N + K)
    (whole, expected, rc_whole), (sliced, _, rc), (odd, _, rc_odd) = (
        _run_gemm(gemm_exe, M, N, K, packed=packed, **kwargs) for packed in (1, 256, 100))
    assert rc_whole == rc == rc_odd == 0
    _assert_gemm_close(sliced, expected, K, N)
    _assert_gemm_close(odd, expected, K, N)
    assert np.array_equal(sliced, whole)


@pytest.mark.board
@pytest.mark.parametrize("c_shape", [None, (1, 1), (1, 13), (7, 1), (7, 13)], ids=str)
def test_gemm_kernel_broadcasts_c_by_zero_strides(gemm_exe, c_shape):
    got, expected, rc = _run_gemm(gemm_exe, 7, 13, 33, c_shape=c_shape, alpha=2.0, beta=0.5, seed=3)
    assert rc == 0
    _assert_gemm_close(got, expected, 33, 13)


def test_gemm_kernel_with_empty_sum_gives_beta_c(gemm_exe):
    got, expected, rc = _run_gemm(gemm_exe, 5, 9, 0, c_shape=(1, 9), beta=3.0)
    assert rc == 0 and np.all(expected != 0)
    _assert_gemm_close(got, expected, 0, 9)


def test_gemm_kernel_rejects_overlapping_rows_of_y(gemm_exe, tmp_path):
    """y_row_stride < N would make row 1 overwrite row 0: MOA_ERR_BAD_PARAMS, Y untouched."""
    rng = np.random.default_rng(0)
    stdin = rng.standard_normal(3 * 4 + 4 * 5).astype(np.float32).tobytes() + np.full(3 * 4, SENTINEL).astype(np.float32).tobytes()
    proc = gemm_exe.run(["3", "5", "4", "0", "0", "0", "0", "1", "1", "4", "0"], stdin)
    assert proc.returncode == 104  # 100 + MOA_ERR_BAD_PARAMS
    assert np.all(np.frombuffer(proc.stdout, np.float32) == SENTINEL)
