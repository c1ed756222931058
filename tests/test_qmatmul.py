"""moa_gemm_qw_f32 (issue 14): quantized weights (int8 per column or per block, 4 bits in blocks,
with and without offsets, float16 values without a scale) times float32 activations, on every ISA
variant of the GEMM test table (test_matmul.GEMM_VARIANTS: AVX-512 under ASan/UBSan, AVX2, scalar,
NEON on the A72 and A76, RVV at two VLENs),
against numpy in float64 of W = scale * q + offset built from the raw integers, not from our
layout: the panels of ops/qmatmul.pack_quantized are what is under test with the kernels."""
import subprocess

import numpy as np
import pytest

from moa_edge.ops.qmatmul import pack_quantized
from test_matmul import GEMM_SOURCES, GEMM_VARIANTS, SENTINEL, build_harness

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>

#include "moa/isa.h"
#include "moa/qmatmul.h"

/* argv: M N K type block has_offset c_rows c_cols alpha beta y_row_stride trans_a zero half_scales
 * stdin: A (stored [K][M] when trans_a), q (in panels), scale (none for float16: NULL), offset (when has_offset),
 *        both halves when half_scales,
 *        C (c_rows x c_cols),
 *        then Y's initial M x y_row_stride floats
 * stdout: Y; stderr: the kernel variant. Every buffer is its exact size on the heap. */
static void *read_bytes(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL || fread(p, 1, n, stdin) != n) {
        exit(2);
    }
    return p;
}

int main(int argc, char **argv)
{
    size_t M, N, K, block, c_rows, c_cols, y_row_stride, q_bytes, scale_size, scale_bytes;
    int has_offset, trans_a;
    float *A, *C, *Y;
    void *Q, *S, *O;
    moa_matrix_f32 a, c;
    moa_qweights w;
    moa_status status;
    if (argc != 15) {
        return 2;
    }
    M = strtoul(argv[1], NULL, 10), N = strtoul(argv[2], NULL, 10), K = strtoul(argv[3], NULL, 10);
    w.type = (moa_qw_type)atoi(argv[4]), block = strtoul(argv[5], NULL, 10), has_offset = atoi(argv[6]);
    w.block = block;
    block = block ? block : 1; /* the sizes of a refused block 0: read as for 1 */
    c_rows = strtoul(argv[7], NULL, 10), c_cols = strtoul(argv[8], NULL, 10);
    y_row_stride = strtoul(argv[11], NULL, 10), trans_a = atoi(argv[12]);
    w.half_scales = atoi(argv[14]), scale_size = w.half_scales ? 2 : sizeof(float);
    if (w.half_scales == MOA_QS_SUPER) { /* bytes of every panel's chunks, read as 16 "elements" of a panel's blocks */
        scale_size = 1;
    }
    q_bytes = w.type == MOA_QW_I8 ? MOA_QW_I8_BYTES(K, N, block)
              : w.type == MOA_QW_U4 ? MOA_QW_U4_BYTES(K, N, block) : MOA_QW_F16_BYTES(K, N, block);
    A = read_bytes(M * K * sizeof(float));
    Q = read_bytes(q_bytes);
    scale_bytes = w.half_scales == MOA_QS_SUPER ? MOA_QW_PANELS(N) * MOA_QS_SUPER_BYTES(MOA_QW_BLOCKS(K, block))
                                                : MOA_QW_SCALES(K, N, block) * scale_size;
    S = w.type >= MOA_QW_F16 ? NULL : read_bytes(scale_bytes); /* halves: no scale */
    O = has_offset ? read_bytes(scale_bytes) : NULL;
    C = read_bytes(c_rows * c_cols * sizeof(float));
    Y = read_bytes(M * y_row_stride * sizeof(float));
    a.data = A, a.row_stride = trans_a ? 1 : (ptrdiff_t)K, a.col_stride = trans_a ? (ptrdiff_t)M : 1;
    c.data = c_rows ? C : NULL, c.row_stride = c_rows == 1 ? 0 : (ptrdiff_t)c_cols, c.col_stride = c_cols == 1 ? 0 : 1;
    w.q = Q, w.scale = S, w.offset = O, w.zero = atoi(argv[13]);
    status = moa_gemm_qw_f32(M, N, K, (float)atof(argv[9]), a, w, (float)atof(argv[10]), c, Y, (ptrdiff_t)y_row_stride);
    fprintf(stderr, "isa=%s\n", MOA_ISA_NAME);
    if (fwrite(Y, sizeof *Y, M * y_row_stride, stdout) != M * y_row_stride) {
        return 2;
    }
    free(A), free(Q), free(S), free(O), free(C), free(Y);
    return status == MOA_OK ? 0 : 100 + (int)status;
}
"""
TYPES = {"i8": 1, "u4": 2, "f16": 3, "f16n": 4}


def _build(variant, tmp_path_factory, more_flags=()):
    return build_harness(GEMM_VARIANTS[variant], HARNESS, GEMM_SOURCES, tmp_path_factory, more_flags)


@pytest.fixture(scope="module", params=list(GEMM_VARIANTS), ids=str)
def qgemm_exe(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory)


# An odd KC slice (a board may set MOA_GEMM_KC): the prefill dequantizes from odd rows, the
# high nibbles of a 4-bit pair first. One build per ISA family with its own dequant kernels.
@pytest.fixture(scope="module", params=["host-native-sanitized", "host-avx2", "rpi4-neon", "k230-rvv-vlen128"], ids=str)
def odd_kc_exe(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory, ["-DMOA_GEMM_KC=37"])


def _quantized(rng, K, N, qtype, block, with_offset, zero, half_scales=False):
    """Raw integers, scales and offsets per block (float16 ones with half_scales), and
    W = scale * (q - zero) + offset in float64; float16 values (some subnormal, some near the
    largest), no scale, W = q."""
    if qtype == "f16":
        q = (rng.standard_normal((K, N)) * np.exp2(rng.integers(-20, 16, (K, N)))).clip(-65504, 65504)
        q = q.astype(np.float16)
        return q, None, None, q.astype(np.float64)
    blocks = -(-K // block)
    q = rng.integers(-127, 128, (K, N)) if qtype == "i8" else rng.integers(0, 16, (K, N))
    stored = np.float16 if half_scales else np.float32
    scale = rng.uniform(0.001, 0.05, (blocks, N)).astype(stored)
    offset = rng.uniform(-0.2, 0.2, (blocks, N)).astype(stored) if with_offset else None
    rows = np.arange(K) // block
    w = scale[rows].astype(np.float64) * (q - zero) + (offset[rows].astype(np.float64) if with_offset else 0.0)
    return q, scale, offset, w


def _two_level(rng, blocks, N, signed):
    """Raw two-level scales: a float16 H per 8 blocks, an int8 s per block; and H * s in float64."""
    h = rng.uniform(0.0005, 0.002, (-(-blocks // 8), N)).astype(np.float16)
    s = rng.integers(-127 if signed else 1, 128, (blocks, N)).astype(np.int8)
    return (h, s), np.repeat(h.astype(np.float64), 8, axis=0)[:blocks] * s


def _run(exe, M, N, K, qtype, block, with_offset=False, c_shape=None, alpha=1.0, beta=1.0, pad=0, trans_a=False,
         seed=0, zero=0, half_scales=False, two_levels=False):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, K)).astype(np.float32)
    q, scale, offset, w = _quantized(rng, K, N, qtype, block, with_offset, zero, half_scales)
    levels = None
    if two_levels:  # the scales and offsets replaced by raw two-level ones, W built from those
        blocks = -(-K // block)
        levels_s, scale64 = _two_level(rng, blocks, N, signed=False)
        levels_o, offset64 = _two_level(rng, blocks, N, signed=True) if with_offset else (None, 0.0)
        levels = (levels_s, levels_o)
        rows = np.arange(K) // block
        w = scale64[rows] * (q - zero) + (offset64[rows] if with_offset else 0.0)
    values, scales, offsets = pack_quantized(q, scale, offset, qtype, block, levels)
    c = rng.standard_normal(c_shape).astype(np.float32) if c_shape else np.zeros((0, 0), np.float32)
    y0 = np.full((M, N + pad), SENTINEL, np.float32)
    parts = [a.T if trans_a else a, values, *([scales] if scales is not None else []),
             *([offsets] if with_offset else []), c, y0]
    stdin = b"".join(np.ascontiguousarray(x).tobytes() for x in parts)
    args = [M, N, K, TYPES[qtype], block, int(with_offset), *(c_shape or (0, 0)), alpha, beta, N + pad, int(trans_a), zero,
            2 if two_levels else int(half_scales)]
    proc = subprocess.run([*exe.command, *map(str, args)], input=stdin, capture_output=True)
    assert proc.returncode == 0 or proc.returncode > 100, proc.stderr.decode()
    if exe.isa is not None:
        assert f"isa={exe.isa}" in proc.stderr.decode(), proc.stderr.decode()
    got = np.frombuffer(proc.stdout, np.float32).reshape(M, N + pad)
    expected = alpha * (a.astype(np.float64) @ w)
    if c_shape:
        expected = expected + beta * c.astype(np.float64)
    return got, expected, proc.returncode, np.abs(a).astype(np.float64) @ np.abs(w)


def _assert_close(got, expected, magnitude, N):
    # float32 sums of K products: the error is a few ulps of the sum of |terms|.
    np.testing.assert_array_less(np.abs(got[:, :N] - expected), 1e-5 * magnitude + 1e-6)
    assert np.all(got[:, N:] == SENTINEL), "Y's padding columns were written"


# Fewer rows than any register tile (the GEMV: 1, 3) and more (the dequantized GEMM: 17, 40),
# K within, at and past one block and past MOA_GEMM_KC (300), odd K (a 4-bit pair half used).
SIZES = [(1, 1, 32), (1, 37, 64), (3, 16, 70), (1, 50, 300), (17, 33, 64), (40, 20, 300), (5, 7, 33)]
# (type, block (None: K), offsets, zero point): int8 per column and in blocks, 4-bit symmetric (zero
# 8: Q4_0, MatMulNBits without zero points) and with offsets (zero points, GGUF's minimum); float16
# values (MOA_QW_F16: no scale, the block only pads K).
FORMS = [("i8", None, False, 0), ("i8", 32, False, 0), ("i8", 16, True, 3), ("u4", 32, True, 0), ("u4", 16, False, 8),
         ("u4", 128, True, 8), ("f16", None, False, 0)]


@pytest.mark.board
@pytest.mark.parametrize("qtype, block, with_offset, zero", FORMS, ids=lambda f: str(f))
@pytest.mark.parametrize("M, N, K", SIZES, ids=lambda s: str(s))
def test_quantized_gemm_matches_numpy(qgemm_exe, M, N, K, qtype, block, with_offset, zero):
    got, expected, rc, magnitude = _run(qgemm_exe, M, N, K, qtype, block or K, with_offset, c_shape=(1, N),
                                        alpha=0.5, beta=2.0, pad=3, seed=M * 1000 + N + K, zero=zero)
    assert rc == 0
    _assert_close(got, expected, magnitude, N)


# Blocks that do not divide MOA_GEMM_KC (128 on x86, 256 elsewhere): the prefill's second KC slice starts inside a block
# and dequantizes across a block edge; an odd int8 block starts the GEMV's pairs of rows at odd rows;
# K odd past one slice, a full C, N past a panel.
@pytest.mark.board
@pytest.mark.parametrize("qtype, block, with_offset, zero", [("i8", 25, False, 0), ("i8", 96, True, 0),
                                                             ("u4", 96, True, 0), ("u4", 42, False, 8)], ids=str)
@pytest.mark.parametrize("M", [1, 20])
def test_quantized_gemm_blocks_straddle_kc_slices(qgemm_exe, M, qtype, block, with_offset, zero):
    got, expected, rc, magnitude = _run(qgemm_exe, M, 21, 301, qtype, block, with_offset, c_shape=(M, 21),
                                        alpha=1.5, beta=-1.0, pad=2, seed=block + M, zero=zero)
    assert rc == 0
    _assert_close(got, expected, magnitude, 21)


@pytest.mark.board
@pytest.mark.parametrize("qtype, block, with_offset, zero", [("u4", 32, True, 0), ("u4", 16, False, 8),
                                                             ("i8", 25, False, 0)], ids=str)
def test_quantized_gemm_dequantizes_odd_kc_slices(odd_kc_exe, qtype, block, with_offset, zero):
    got, expected, rc, magnitude = _run(odd_kc_exe, 20, 21, 101, qtype, block, with_offset, pad=1, seed=block,
                                        zero=zero)
    assert rc == 0
    _assert_close(got, expected, magnitude, 21)


# Column blocks (MOA_GEMM_NC) over quantized panels: blocks of 32 columns, each block's panels
# sliced from the weights' (N = 100: 4 blocks, the last of 4 columns); bitwise the unblocked build's.
@pytest.fixture(scope="module", params=["host-native-sanitized", "rpi4-neon"], ids=str)
def column_block_exes(request, tmp_path_factory):
    return (_build(request.param, tmp_path_factory, ["-DMOA_GEMM_NC=32"]),
            _build(request.param, tmp_path_factory, ["-DMOA_GEMM_NC_MIN=100000"]))


@pytest.mark.board
@pytest.mark.parametrize("qtype, block, with_offset, zero", [("i8", 25, False, 0), ("u4", 32, True, 0)], ids=str)
def test_quantized_gemm_column_blocks_change_no_bit(column_block_exes, qtype, block, with_offset, zero):
    blocked, whole = column_block_exes
    (got, expected, rc, magnitude), (got_whole, _, rc_whole, _) = [
        _run(exe, 20, 100, 301, qtype, block, with_offset, c_shape=(1, 100), alpha=1.5, beta=-1.0, pad=2, seed=block,
             zero=zero) for exe in (blocked, whole)]
    assert rc == 0 and rc_whole == 0
    _assert_close(got, expected, magnitude, 100)
    assert np.array_equal(got, got_whole)


# Scales and offsets stored as halves (GGUF's form, convert --weights int4): widened on the stack
# MOA_QW_WIDE_BLOCKS (16) blocks at a time, so K spans several such chunks, the last one short,
# and the prefill's KC slices (256) start inside chunks and blocks.
@pytest.mark.board
@pytest.mark.parametrize("qtype, block, with_offset, zero", [("u4", 32, True, 0), ("i8", 10, False, 0),
                                                             ("u4", 16, False, 8)], ids=str)
@pytest.mark.parametrize("M", [1, 20])
def test_quantized_gemm_widens_half_scales(qgemm_exe, M, qtype, block, with_offset, zero):
    got, expected, rc, magnitude = _run(qgemm_exe, M, 21, 601, qtype, block, with_offset, c_shape=(1, 21),
                                        alpha=0.5, beta=2.0, pad=2, seed=block + M, zero=zero, half_scales=True)
    assert rc == 0
    _assert_close(got, expected, magnitude, 21)


# Two-level scales (MOA_QS_SUPER, convert --weights int4 on MatMul and Gemm): per 8 blocks a
# float16 H, per block an int8 s, in chunks (moa/qmatmul.h); K of 19 blocks (2 whole chunks and a
# short one), the GEMV and the prefill's dequantization.
@pytest.mark.board
@pytest.mark.parametrize("qtype, block, with_offset, zero", [("u4", 32, True, 0), ("i8", 16, False, 0)], ids=str)
@pytest.mark.parametrize("M", [1, 20])
def test_quantized_gemm_reads_two_level_scales(qgemm_exe, M, qtype, block, with_offset, zero):
    got, expected, rc, magnitude = _run(qgemm_exe, M, 21, 19 * block - 3, qtype, block, with_offset, c_shape=(1, 21),
                                        alpha=0.5, beta=2.0, pad=2, seed=block + M, zero=zero, two_levels=True)
    assert rc == 0
    _assert_close(got, expected, magnitude, 21)


@pytest.mark.board
@pytest.mark.parametrize("M", [2, 20])
def test_quantized_gemm_reads_a_transposed(qgemm_exe, M):
    got, expected, rc, magnitude = _run(qgemm_exe, M, 24, 48, "u4", 16, True, trans_a=True, seed=M)
    assert rc == 0
    _assert_close(got, expected, magnitude, 24)


# MOA_QW_F16_NATIVE: half-precision arithmetic in the GEMV where the build has FEAT_FP16 (rpi5's
# Cortex-A76) or Zvfh (bpi-f3's X60), x rounded to a half and 16 rows summed in halves: within its
# contract of a few 2^-11 of sum |x w| per block, and visibly not float32's rounding there (so the
# native kernel ran);
# every other build, and the prefill (M >= a register tile) everywhere, computes as MOA_QW_F16.
@pytest.mark.board
@pytest.mark.parametrize("M", [1, 3, 20])
def test_native_half_gemv_within_its_contract(qgemm_exe, M):
    rng = np.random.default_rng(M)
    K, N = 300, 21
    a = rng.standard_normal((M, K)).astype(np.float32)
    q = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float16)
    values, _, _ = pack_quantized(q, None, None, "f16", K)
    stdin = b"".join(np.ascontiguousarray(x).tobytes() for x in (a, values, np.full((M, N), SENTINEL, np.float32)))
    proc = subprocess.run([*qgemm_exe.command, *map(str, [M, N, K, TYPES["f16n"], K, 0, 0, 0, 1.0, 0.0, N, 0, 0, 0])],
                          input=stdin, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    got = np.frombuffer(proc.stdout, np.float32).reshape(M, N)
    w = q.astype(np.float64)
    error = np.abs(got - a.astype(np.float64) @ w) / (np.abs(a).astype(np.float64) @ np.abs(w))
    if qgemm_exe.board in ("rpi5", "bpi-f3") and M < 4:  # a GEMV (fewer rows than a register tile), native
        assert 1e-6 < error.max() < 2.0 ** -8, error.max()
    else:
        assert error.max() < 1e-6, error.max()


@pytest.mark.parametrize("qtype, block", [("u4", 15), ("u4", 0), ("i8", 0), ("f16", 0)])
def test_quantized_gemm_refuses_a_bad_block(qgemm_exe, qtype, block):
    """An odd 4-bit block would split a pair of rows; a block of 0 none: MOA_ERR_BAD_PARAMS, Y untouched."""
    a = np.random.default_rng(0).standard_normal((2, 30)).astype(np.float32)
    blocks = -(-30 // max(block, 1))
    rows = blocks * max(block, 1)
    q_bytes = {"i8": rows * 16, "u4": rows // 2 * 16, "f16": rows * 32}[qtype]
    scale_bytes = 0 if qtype == "f16" else 4 * 16 * blocks
    stdin = a.tobytes() + bytes(q_bytes) + bytes(scale_bytes) + np.full(2 * 4, SENTINEL, np.float32).tobytes()
    proc = subprocess.run([*qgemm_exe.command, "2", "4", "30", str(TYPES[qtype]), str(block), "0", "0", "0", "1",
                           "1", "4", "0", "0", "0"], input=stdin, capture_output=True)
    assert proc.returncode == 104, proc.stderr  # 100 + MOA_ERR_BAD_PARAMS
    assert np.all(np.frombuffer(proc.stdout, np.float32) == SENTINEL)
