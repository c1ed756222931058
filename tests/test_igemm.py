"""The integer GEMM (igemm.h, issue 14): 8-bit activations x int8 weights -> int32, and its float form
that quantizes the activations itself, on every ISA variant of the GEMM test table
(test_matmul.GEMM_VARIANTS) plus AVX-512 without VNNI and Cortex-A76 with dotprod.

The integers are checked bit for bit against numpy in int64 of (A - a_zero) (B - b_zero), built
from the raw integers, not from our layout: the panels of ops/igemm.pack_weights are under test
with the kernels. The float form against numpy emulating onnxruntime's DynamicQuantizeLinear
and epilogue in float32, itself checked against onnxruntime: equal to the last bit."""
from pathlib import Path
import platform

import numpy as np
import onnx
from onnx import TensorProto, helper
import onnxruntime as ort
import pytest

from moa_edge import C_RUNTIME_DIR
from moa_edge.ops import igemm
from moa_edge.ops.igemm import C_SOURCES, columns, pack_weights
from test_matmul import GEMM_VARIANTS, MCU_GEMM_VARIANTS, build_harness

SOURCES = [C_RUNTIME_DIR / "src" / s for s in C_SOURCES]
SENTINEL_I32 = np.int32(-123456789)
SENTINEL_F32 = np.float32(12345.0)

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>

#include "moa/igemm.h"
#include "moa/igemm_tile.h"

/* argv: M N K form a_type a_zero has_b_zero has_bias y_row_stride
 *       form 0: moa_igemm_i32; 1, 2: moa_igemm_f32 with MOA_IQ_TENSOR_U8, MOA_IQ_ROW_I8
 * stdin: A (M x K bytes, or floats), q, col_sum, zero (when has_b_zero), b_scale and bias (when has_bias)
 *        for the float form, then Y's initial M x y_row_stride values
 * stdout: Y; stderr: the kernel variant. Every buffer, the scratch too, is its exact size on the heap.
 * Two more arguments name files for stdin's and stdout's bytes (bare metal: semihosting has files). */
static FILE *in, *out;

static void *read_bytes(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL || fread(p, 1, n, in) != n) {
        exit(2);
    }
    return p;
}

int main(int argc, char **argv)
{
    size_t M, N, K, y_row_stride, a_bytes;
    int form, has_b_zero, has_bias;
    void *A, *Y, *scratch;
    float *scale = NULL, *bias = NULL;
    moa_iweights w;
    moa_status status;
    if (argc != 10 && argc != 12) {
        return 2;
    }
    in = argc == 12 ? fopen(argv[10], "rb") : stdin, out = argc == 12 ? fopen(argv[11], "wb") : stdout;
    if (in == NULL || out == NULL) {
        return 2;
    }
    M = strtoul(argv[1], NULL, 10), N = strtoul(argv[2], NULL, 10), K = strtoul(argv[3], NULL, 10);
    form = atoi(argv[4]), has_b_zero = atoi(argv[7]), has_bias = atoi(argv[8]);
    y_row_stride = strtoul(argv[9], NULL, 10);
    a_bytes = M * K * (form ? sizeof(float) : 1);
    A = read_bytes(a_bytes);
    w.q = read_bytes(MOA_IGEMM_B_BYTES(K, N));
    w.col_sum = read_bytes(MOA_IGEMM_COLUMNS(N) * sizeof(int32_t));
    w.zero = has_b_zero ? read_bytes(MOA_IGEMM_COLUMNS(N) * sizeof(int32_t)) : NULL;
    if (form) {
        scale = read_bytes(MOA_IGEMM_COLUMNS(N) * sizeof(float));
        bias = has_bias ? read_bytes(N * sizeof(float)) : NULL;
    }
    Y = read_bytes(M * y_row_stride * 4);
    scratch = malloc(MOA_IGEMM_SCRATCH_BYTES(M, K));
    if (form == 0) {
        moa_imatrix a;
        a.type = (moa_ia_type)atoi(argv[5]), a.data = A, a.row_stride = (ptrdiff_t)K, a.zero = atoi(argv[6]);
        status = moa_igemm_i32(M, N, K, a, w, Y, (ptrdiff_t)y_row_stride, scratch);
    } else {
        status = moa_igemm_f32(M, N, K, A, (ptrdiff_t)K, (moa_iq_mode)form, w, scale, bias, Y, (ptrdiff_t)y_row_stride,
                               scratch);
    }
    fprintf(stderr, "isa=%s igemm=%s\n", MOA_ISA_NAME, MOA_IGEMM_NAME);
    if (fwrite(Y, 4, M * y_row_stride, out) != M * y_row_stride || fflush(out) != 0) {
        return 2;
    }
    free(A), free((void *)w.q), free((void *)w.col_sum), free((void *)w.zero), free(scale), free(bias), free(Y);
    free(scratch);
    return status == MOA_OK ? 0 : 100 + (int)status;
}
"""

# The GEMM table's builds, each with the integer kernel it must select; then AVX-512 without VNNI
# (widening vpmaddwd) and the Cortex-A76 (SDOT).
_IGEMM_OF = {None: None, "avx2": "avx2", "scalar": "scalar", "neon": "neon", "rvv": "rvv", "helium": "helium",
             "dsp": "dsp"}
VARIANTS = {name: (board, extra, vlen, _IGEMM_OF[isa])
            for name, (board, extra, vlen, isa) in {**GEMM_VARIANTS, **MCU_GEMM_VARIANTS}.items()}
VARIANTS["pico2-m33-dsp"] = ("pico2", [], None, "dsp")  # SXTB16 + SMLAD, bare metal under qemu-system-arm
VARIANTS["host-avx512bw"] = ("host", ["-mno-avx512vnni", "-mno-amx-int8"], None, "avx512bw")
# Where the host has AMX, the native build takes it: then also VNNI without AMX, and the AMX build's
# fallback where Linux refuses the tile state (its VNNI tile of 16 rows).
VARIANTS["host-avx512vnni"] = ("host", ["-mno-amx-int8", "-mno-amx-tile"], None, "avx512vnni")
VARIANTS["host-amx-refused"] = ("host", ["-DMOA_IGEMM_AMX_REFUSED"], None, "amx")
VARIANTS["rpi5-neondot"] = ("rpi5", [], None, "neondot")


def _host_has(flag: str) -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and flag in cpuinfo.read_text().split()


@pytest.fixture(scope="module", params=list(VARIANTS), ids=str)
def igemm_exe(request, tmp_path_factory):
    variant = VARIANTS[request.param][3]
    if variant in ("avx2", "avx512bw") and platform.machine() != "x86_64":
        pytest.skip("an x86-64 variant on a non-x86 host")
    needs = {"avx512bw": "avx512bw", "avx512vnni": "avx512_vnni", "amx": "amx_int8"}.get(variant)
    if needs is not None and not _host_has(needs):
        pytest.skip(f"this host has no {needs}")
    return build_harness(VARIANTS[request.param], HARNESS, SOURCES, tmp_path_factory)


def _weights(rng, K, N, b_type, b_zero):
    """Raw B (K x N) and zero points: None, one for the tensor, or one per column."""
    info = np.iinfo(b_type)
    b = rng.integers(info.min, info.max + 1, (K, N)).astype(b_type)
    if b_zero is None:
        return b, None
    zero = rng.integers(info.min, info.max + 1, N if b_zero == "column" else 1).astype(b_type)
    return b, zero


def _run(exe, M, N, K, form, a, b, b_zero, a_type=1, a_zero=0, scale=None, bias=None, pad=3, expect_rc=0):
    q, col_sum, zero = pack_weights(b, b_zero)
    parts = [a, q, col_sum, *([zero] if zero is not None else [])]
    if form:
        parts += [scale, *([bias] if bias is not None else [])]
    sentinel = SENTINEL_F32 if form else SENTINEL_I32
    parts.append(np.full((M, N + pad), sentinel))
    stdin = b"".join(np.ascontiguousarray(x).tobytes() for x in parts)
    args = [M, N, K, form, a_type, a_zero, int(zero is not None), int(bias is not None), N + pad]
    proc = exe.run(args, stdin)
    assert proc.returncode == expect_rc, proc.stderr.decode()
    if exe.isa is not None:
        assert f"igemm={exe.isa}" in proc.stderr.decode(), proc.stderr.decode()
    got = np.frombuffer(proc.stdout, np.float32 if form else np.int32).reshape(M, N + pad)
    assert np.all(got[:, N:] == sentinel), "Y's padding columns were written"
    return got[:, :N]


def _int32(x: np.ndarray) -> np.ndarray:
    """int64 sums wrapped to int32, as MatMulInteger's output."""
    return ((x + 2**31) % 2**32 - 2**31).astype(np.int32)


def _centred(b, b_zero) -> np.ndarray:
    return b.astype(np.int64) - (b_zero.astype(np.int64) if b_zero is not None else 0)


# Sizes below, at and past every register tile (MR 2 to 16, NR 16) and the block of 96 rows;
# K not a multiple of 4 (padded groups); for AMX's 64-k steps, K of whole steps and K past them. Forms: A uint8 or int8 and its zero point, B int8 or
# uint8 (stored moved by -128) and its zero points.
CASES = [
    ((1, 1, 1), ("u8", 0, np.int8, None)),
    ((1, 16, 4), ("u8", 131, np.int8, None)),
    ((1, 17, 5), ("i8", 0, np.int8, "column")),
    ((2, 16, 8), ("i8", -5, np.uint8, "tensor")),
    ((3, 33, 7), ("u8", 255, np.uint8, "column")),
    ((4, 15, 13), ("u8", 7, np.int8, "tensor")),
    ((5, 31, 64), ("i8", 127, np.int8, None)),
    ((6, 16, 3), ("u8", 0, np.uint8, None)),
    ((8, 48, 100), ("i8", -128, np.int8, "column")),
    ((12, 20, 257), ("u8", 100, np.int8, "column")),
    ((13, 32, 31), ("u8", 128, np.uint8, "tensor")),
    ((25, 19, 40), ("i8", 1, np.uint8, "column")),
    ((97, 21, 33), ("u8", 3, np.int8, None)),
    ((200, 40, 70), ("i8", -1, np.int8, "tensor")),
    ((32, 33, 128), ("u8", 9, np.int8, "column")),
    ((40, 20, 300), ("i8", 0, np.uint8, "tensor")),
]


@pytest.mark.board
@pytest.mark.parametrize("size, form", CASES, ids=lambda c: str(c))
def test_integer_gemm_is_exact(igemm_exe, size, form):
    M, N, K = size
    a_kind, a_zero, b_type, b_zero_kind = form
    rng = np.random.default_rng(M * 10000 + N * 100 + K)
    a_type = np.uint8 if a_kind == "u8" else np.int8
    info = np.iinfo(a_type)
    a = rng.integers(info.min, info.max + 1, (M, K)).astype(a_type)
    b, b_zero = _weights(rng, K, N, b_type, b_zero_kind)
    got = _run(igemm_exe, M, N, K, 0, a, b, b_zero, a_type=1 if a_kind == "u8" else 2, a_zero=a_zero)
    expected = _int32((a.astype(np.int64) - a_zero) @ _centred(b, b_zero))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.board
def test_integer_sums_wrap_as_int32(igemm_exe):
    """(255 - 0) (-128 - 127) over 40000 k is -2.6e9: past int32, it wraps as MatMulInteger's does."""
    M, N, K = 2, 3, 40000
    a = np.full((M, K), 255, np.uint8)
    b, b_zero = np.full((K, N), -128, np.int8), np.full(N, 127, np.int8)
    got = _run(igemm_exe, M, N, K, 0, a, b, b_zero, a_type=1, a_zero=0)
    expected = _int32((a.astype(np.int64)) @ _centred(b, b_zero))
    assert np.all((a.astype(np.int64) @ _centred(b, b_zero)) < -2**31)
    np.testing.assert_array_equal(got, expected)


# Sizes past the AVX2 tile's 6 rows, its 4 panels at a time and its 64 groups of A staged at a
# time (and K not a multiple of 4 or of those 64 groups); a single row, the GEMV.
EXTREME_SIZES = [(1, 70, 259), (7, 100, 259), (100, 70, 521)]


@pytest.mark.board
@pytest.mark.parametrize("size", EXTREME_SIZES, ids=str)
@pytest.mark.parametrize("a_kind", ["u8", "i8"])
def test_integer_gemm_is_exact_at_the_extremes(igemm_exe, size, a_kind):
    """A only at its two ends (0 and 255, or -128 and 127), B only at -128 and 127, no zero points:
    products as large as they come, so that an int16 pair sum that saturated (vpmaddubsw's
    255 * -128 * 2), a sign lost in widening or a lane out of place would show."""
    M, N, K = size
    rng = np.random.default_rng(M * 7 + N * 5 + K)
    a_type = np.uint8 if a_kind == "u8" else np.int8
    info = np.iinfo(a_type)
    a = rng.choice(np.array([info.min, info.max], a_type), (M, K))
    b = rng.choice(np.array([-128, 127], np.int8), (K, N))
    a[0, :8] = info.max  # the worst pairs for certain: (255, 255) x (-128, -128) and (255, 255) x (127, 127)
    b[:4, 0], b[4:8, 0] = -128, 127
    got = _run(igemm_exe, M, N, K, 0, a, b, None, a_type=1 if a_kind == "u8" else 2, a_zero=0)
    np.testing.assert_array_equal(got, _int32(a.astype(np.int64) @ b.astype(np.int64)))


def test_an_empty_sum_gives_zeros_or_the_bias(igemm_exe):
    """K == 0: the integer form writes 0, the float form the bias; no weight byte is read."""
    b = np.zeros((0, 5), np.int8)
    np.testing.assert_array_equal(_run(igemm_exe, 3, 5, 0, 0, np.zeros((3, 0), np.uint8), b, None, a_zero=7), 0)
    bias = np.arange(5, dtype=np.float32) - 2
    got = _run(igemm_exe, 3, 5, 0, 1, np.zeros((3, 0), np.float32), b, None, scale=np.ones(16, np.float32), bias=bias)
    np.testing.assert_array_equal(got, np.broadcast_to(bias, (3, 5)))


def test_integer_gemm_refuses_an_unknown_a_type(igemm_exe):
    a = np.zeros((2, 8), np.uint8)
    b = np.zeros((8, 4), np.int8)
    got = _run(igemm_exe, 2, 4, 8, 0, a, b, None, a_type=3, expect_rc=104)  # 100 + MOA_ERR_BAD_PARAMS
    assert got.shape == (2, 4)


def test_the_op_plans_the_scratch_the_header_asks_for():
    """ops/igemm.scratch_bytes mirrors MOA_IGEMM_SCRATCH_BYTES: the same block of rows, each with 8 bytes."""
    header = (C_RUNTIME_DIR / "include" / "moa" / "igemm.h").read_text()
    assert f"#define MOA_IGEMM_MC {igemm.BLOCK_ROWS}\n" in header
    assert "(MOA_IGEMM_BLOCK_ROWS(M) * (8 + MOA_IGEMM_KP(K)))" in header


# --- the float form: activations quantized in the kernel -----------------------------------------

def dynamic_quantize_linear(x: np.ndarray):
    """ONNX DynamicQuantizeLinear as onnxruntime computes it, in float32: (q uint8, scale, zero)."""
    x = x.astype(np.float32)
    lo, hi = np.float32(min(x.min(initial=0), 0)), np.float32(max(x.max(initial=0), 0))
    scale = np.float32(1) if hi == lo else np.float32((hi - lo) / np.float32(255))
    zero = int(np.rint(np.clip(np.float32(0) - lo / scale, 0, 255)))
    q = np.rint(np.clip(x / scale, np.float32(-zero), np.float32(255 - zero))) + zero
    return q.astype(np.uint8), scale, zero


def quantize_rows(x: np.ndarray):
    """Symmetric int8 per row (igemm.h MOA_IQ_ROW_I8): (q int8, scales)."""
    x = x.astype(np.float32)
    largest = np.abs(x).max(axis=1, initial=0)
    scale = np.where(largest == 0, np.float32(1), largest / np.float32(127)).astype(np.float32)
    q = np.rint(np.clip(x / scale[:, None], np.float32(-127), np.float32(127)))
    return q.astype(np.int8), scale


def test_the_emulation_is_onnxruntimes_dynamic_quantize_linear():
    """The expected values below rest on this emulation: onnxruntime gives the same bytes."""
    rng = np.random.default_rng(5)
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])
    graph = helper.make_graph([node], "dql", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [7, 300])],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in
                               (("q", TensorProto.UINT8, [7, 300]), ("s", TensorProto.FLOAT, []),
                                ("z", TensorProto.UINT8, []))])
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
                                   .SerializeToString(), providers=["CPUExecutionProvider"])
    for x in (rng.standard_normal((7, 300)) * 3 + 1, rng.uniform(0.5, 2, (7, 300)), -rng.uniform(0, 9, (7, 300)),
              np.round(rng.standard_normal((7, 300)) * 20) / 4):  # many ties
        x = x.astype(np.float32)
        q, scale, zero = session.run(None, {"x": x})
        want_q, want_scale, want_zero = dynamic_quantize_linear(x)
        assert scale == want_scale and zero == want_zero
        np.testing.assert_array_equal(q, want_q)


def _float_expected(a, b, b_zero, b_scale, bias, mode):
    if mode == "tensor":
        q, scale, zero = dynamic_quantize_linear(a)
        row_scale = np.full(a.shape[0], scale, np.float32)
    else:
        (q, row_scale), zero = quantize_rows(a), 0
    sums = _int32((q.astype(np.int64) - zero) @ _centred(b, b_zero))
    y = sums.astype(np.float32) * (row_scale[:, None] * b_scale[None, :]).astype(np.float32)
    return y + bias if bias is not None else y


FLOAT_CASES = [((1, 16, 24), "tensor", np.int8, None, True), ((3, 33, 7), "tensor", np.uint8, "column", True),
               ((13, 20, 64), "tensor", np.int8, "tensor", False), ((100, 17, 45), "tensor", np.uint8, "tensor", True),
               ((1, 37, 30), "row", np.int8, None, True), ((14, 40, 33), "row", np.int8, None, False),
               ((97, 16, 8), "row", np.int8, None, True)]


@pytest.mark.board
@pytest.mark.parametrize("size, mode, b_type, b_zero_kind, with_bias", FLOAT_CASES, ids=lambda c: str(c))
def test_float_gemm_quantizes_and_scales_as_onnxruntime(igemm_exe, size, mode, b_type, b_zero_kind, with_bias):
    """Bit for bit: the quantization, the integers, the scale product rounded first, then x scale + bias."""
    M, N, K = size
    rng = np.random.default_rng(M + N + K)
    a = (rng.standard_normal((M, K)) * 2 + 0.3).astype(np.float32)
    a[0, :3] = [0.5, -0.5, 2.5]  # halves: ties, should a scale land on them
    b, b_zero = _weights(rng, K, N, b_type, b_zero_kind)
    b_scale = rng.uniform(0.001, 0.02, N).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    padded_scale = np.zeros(columns(N), np.float32)
    padded_scale[:N] = b_scale
    got = _run(igemm_exe, M, N, K, 1 if mode == "tensor" else 2, a, b, b_zero, scale=padded_scale, bias=bias)
    np.testing.assert_array_equal(got, _float_expected(a, b, b_zero, b_scale, bias, mode))
