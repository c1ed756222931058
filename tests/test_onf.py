"""ONF lowering: generated C against PyTorch float64, in double (exactness: the DNF printed
whole, onf.emit_oracle_kernel) and float (the production form: the inner loops as
moa/attention.h micro-kernel calls, on every board, with the rows of operands stored
otherwise packed into scratch),
for both softmax strategies and tiles that do and do not divide the sequence lengths; and
the scratch the kernel really uses against the cost model's figure."""
import dataclasses
from dataclasses import dataclass
import math
import re
import subprocess

import numpy as np
import pytest
import torch

from cached_attention import CachedBlock, cached_spec, reference
from conftest import BOARDS, SANITIZE, require_board
from moa_edge.harness import compare as cmp
from moa_edge.harness.kernel_harness import build_harness
from moa_edge.moa import Layout
from moa_edge.moa.onf import Schedule, decode_form, emit_kernel, emit_oracle_kernel, scratch_bytes, scratch_layout
from moa_edge.moa.spec import AttentionSpec


@dataclass(frozen=True)
class Block:
    name: str
    b: int = 1
    hq: int = 2
    hkv: int = 2
    sq: int = 7
    skv: int = 11
    d: int = 8
    dv: int = 8
    causal: bool = False
    mask: str = "none"
    mask_shape: tuple = ()
    softcap: float = 0.0
    k_stored_transposed: bool = False   # K kept as (B, Hkv, D, Skv): read through a transposed map
    q_heads_interleaved: bool = False   # Q kept as (B, Sq, Hq*D): read through a head-split map
    causal_offset: int = 0              # keys cached before the queries (bottom-right alignment)
    window_start: int | None = None     # a sliding window: keys k < i + window_start hidden


BLOCKS = [
    Block("plain"),
    Block("causal_sq_lt_skv", causal=True),
    Block("causal_sq_gt_skv", sq=12, skv=5, causal=True),
    Block("float_mask", mask="float"),
    Block("bool_mask_heads", mask="bool", mask_shape=(2, 7, 11)),
    Block("gqa", hq=6, hkv=2),
    Block("softcap_mask", softcap=2.0, mask="float", mask_shape=(1, 1, 7, 11)),
    Block("dv_ne_dk_batch", b=2, d=8, dv=5),
    Block("access_maps", k_stored_transposed=True, q_heads_interleaved=True, causal=True),
    Block("causal_past_keys", sq=4, skv=11, causal=True, causal_offset=7),
    Block("causal_rows_fully_hidden", sq=6, skv=6, causal=True, causal_offset=-2),
    Block("sliding_window", sq=9, skv=13, causal=True, causal_offset=4, window_start=1),
    Block("window_without_diagonal", sq=7, skv=11, mask="float", window_start=-3),
]
SCHEDULES = [Schedule("online", 4, 4), Schedule("online", 3, 5), Schedule("online", 64, 64),
             Schedule("two_pass", 2, 4), Schedule("two_pass", 5, 3), Schedule("two_pass", 1, 64)]


def make(block: Block, seed=0):
    """(spec, storage arrays, expected float64 output) for a block."""
    rng = np.random.default_rng(seed)
    B, Hq, Hkv, Sq, Skv, D, Dv = block.b, block.hq, block.hkv, block.sq, block.skv, block.d, block.dv
    q = rng.standard_normal((B, Hq, Sq, D))
    k = rng.standard_normal((B, Hkv, Skv, D))
    v = rng.standard_normal((B, Hkv, Skv, Dv))
    q_lay = Layout.row_major((B, Hq, Sq, D))
    q_store = q
    if block.q_heads_interleaved:
        q_store = q.transpose(0, 2, 1, 3).reshape(B, Sq, Hq * D)
        q_lay = Layout.row_major((B, Sq, Hq * D)).split_axis(2, Hq).transpose([0, 2, 1, 3])
    k_lay, k_store = Layout.row_major((B, Hkv, Skv, D)), k
    if block.k_stored_transposed:
        k_store = np.ascontiguousarray(k.transpose(0, 1, 3, 2))
        k_lay = Layout.row_major((B, Hkv, D, Skv)).transpose([0, 1, 3, 2])
    full = (B, Hq, Sq, Skv)
    m, m_lay, bias = None, None, np.zeros(full)
    if block.mask != "none":
        shape = block.mask_shape or (Sq, Skv)
        if block.mask == "float":
            m = rng.standard_normal(shape).astype(np.float32)
            bias = bias + m
        else:
            m = rng.random(shape) < 0.7
            m[..., 0] = True
            bias = np.where(m, 0.0, -np.inf) + bias
        m_lay = Layout.row_major(shape).broadcast_to(full)
    spec = AttentionSpec(B, Hq, Hkv, Sq, Skv, D, Dv, 1 / math.sqrt(D), block.causal,
                         block.mask, -math.inf, q_lay, k_lay, Layout.row_major(v.shape),
                         Layout.row_major((B, Hq, Sq, Dv)), m_lay, softcap=block.softcap,
                         causal_offset=block.causal_offset, window_start=block.window_start)

    t = {n: torch.from_numpy(x) for n, x in (("q", q), ("k", k), ("v", v))}
    kk = t["k"].repeat_interleave(Hq // Hkv, 1)
    vv = t["v"].repeat_interleave(Hq // Hkv, 1)
    tb = torch.from_numpy(np.broadcast_to(bias, full).copy())
    if block.causal:
        tb = tb.masked_fill(torch.ones(Sq, Skv, dtype=torch.bool).triu(1 + block.causal_offset), -math.inf)
    if block.window_start is not None:
        tb = tb.masked_fill(torch.ones(Sq, Skv, dtype=torch.bool).tril(block.window_start - 1), -math.inf)
    if block.softcap:
        s = (t["q"] @ kk.transpose(-1, -2)) * spec.scale
        y = torch.softmax(block.softcap * torch.tanh(s / block.softcap) + tb, -1) @ vv
    else:
        y = torch.nn.functional.scaled_dot_product_attention(t["q"], kk, vv, attn_mask=tb)
    y = torch.where(torch.isneginf(tb).all(-1, keepdim=True), 0.0, y)
    storage = {"q": q_store, "k": k_store, "v": v, "m": m}
    return spec, storage, y.numpy()


def run_harness(exe, storage, workdir, real, runner=()):
    dtype = np.float64 if real == "double" else np.float32
    args = []
    for name in ("q", "k", "v", "m", "l"):
        if storage.get(name) is None:
            continue
        path = workdir / f"{name}.bin"
        arr = storage[name]
        if name == "l":  # the valid key counts, int64 (the spec's lengths type)
            arr = arr.astype(np.int64)
        elif arr.dtype != np.bool_:
            arr = arr.astype(np.float32 if name == "m" else dtype)
        np.ascontiguousarray(arr).tofile(path)
        args.append(str(path))
    out = workdir / "y.bin"
    proc = subprocess.run([*runner, str(exe), *args, str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return np.fromfile(out, dtype=dtype), proc.stderr


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"{s.strategy}-{s.block_q}x{s.block_k}")
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_double_onf_is_exact(block, schedule, tmp_path):
    """The same loop nest in double agrees with PyTorch float64 to 1e-12: the lowering is exact."""
    spec, storage, expected = make(block)
    exe = build_harness(spec, schedule, tmp_path, real="double")
    got, _ = run_harness(exe, storage, tmp_path, "double")
    assert np.max(np.abs(got.reshape(expected.shape) - expected)) <= 1e-12


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("schedule", [Schedule("online", 4, 5), Schedule("online", 8, 16),
                                      Schedule("two_pass", 3, 4), Schedule("two_pass", 5, 3)],
                         ids=lambda s: f"{s.strategy}-{s.block_q}x{s.block_k}")
def test_float_onf_meets_tolerance_on_boards(board_name, schedule, tmp_path):
    """Sq = 12, Skv = 20: tiles 4x5 and 3x4 divide them, 8x16 and 5x3 do not."""
    board = require_board(board_name)
    block = Block("board", hq=4, hkv=2, sq=12, skv=20, d=16, dv=12, causal=True, mask="float",
                  k_stored_transposed=True)
    spec, storage, expected = make(block)
    exe = build_harness(spec, schedule, tmp_path, cc=board.compiler(), cflags=board.toolchain["cflags"],
                        ldflags=board.toolchain["ldflags"])
    got, _ = run_harness(exe, storage, tmp_path, "float", runner=board.runner())
    assert cmp.compare(got.reshape(expected.shape), expected)["ok"]


@pytest.mark.parametrize("schedule", [Schedule("online", 4, 4), Schedule("online", 7, 11),
                                      Schedule("two_pass", 3, 4), Schedule("two_pass", 7, 2)],
                         ids=lambda s: f"{s.strategy}-{s.block_q}x{s.block_k}")
def test_kernel_scratch_is_exactly_the_cost_model_figure(schedule, tmp_path):
    """Under ASan a buffer of exactly scratch_bytes is never overrun, and its last element is used."""
    require_board("host")
    spec, storage, expected = make(Block("scratch", sq=7, skv=11, mask="float"))
    exe = build_harness(spec, schedule, tmp_path, real="float", cflags=SANITIZE, ldflags=SANITIZE[:1])
    got, stderr = run_harness(exe, storage, tmp_path, "float")
    assert "scratch_tail_touched=1" in stderr
    assert cmp.compare(got.reshape(expected.shape), expected)["ok"]
    br, bc = min(schedule.block_q, 7), min(schedule.block_k, 11)
    per_strategy = {"online": br * bc + 3 * br + br * 8, "two_pass": br * 11 + 2 * br}
    assert scratch_bytes(spec, schedule) == 4 * per_strategy[schedule.strategy]


@pytest.mark.parametrize("schedule", [Schedule("online", 4, 4), Schedule("two_pass", 3, 4)],
                         ids=lambda s: s.strategy)
def test_nan_in_a_row_gives_nan_not_zero(schedule, tmp_path):
    """A NaN score must not pass for "every key hidden" (which gives 0)."""
    spec, storage, _ = make(Block("nan", sq=5, skv=6))
    storage["q"] = storage["q"].copy()
    storage["q"][0, 0, 2, :] = np.nan  # query row 2 of head 0: every score NaN
    exe = build_harness(spec, schedule, tmp_path, real="double")
    got, _ = run_harness(exe, storage, tmp_path, "double")
    got = got.reshape(1, 2, 5, 8)
    assert np.all(np.isnan(got[0, 0, 2])) and not np.any(np.isnan(got[0, 1]))


@pytest.mark.board
@pytest.mark.parametrize("schedule", [Schedule("online", 3, 16), Schedule("online", 2, 2), Schedule("two_pass", 5, 3)],
                         ids=lambda s: f"{s.strategy}-{s.block_q}x{s.block_k}")
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_float_micro_kernel_onf_meets_tolerance(block, schedule, tmp_path):
    """Every feature through the micro-kernel form, built for the host's own SIMD variant:
    the score tile (by dot products, or as a GEMM tile when K is stored transposed), the
    DNF's pass over it (small tiles: some wholly visible, so the pass that skips the causal
    and window tests runs too), and the row max / exp / P V kernels, against PyTorch float64."""
    board = require_board("host")
    spec, storage, expected = make(block)
    code = emit_kernel(spec, schedule, "kernel")
    assert "moa_attn_pv_f32(" in code and ("moa_attn_exp_f32(" in code or "moa_attn_softmax_f32(" in code) and "red1" not in code
    assert ("moa_attn_scores_f32(" in code) == (not block.k_stored_transposed)
    exe = build_harness(spec, schedule, tmp_path, cflags=board.toolchain["cflags"])
    got, _ = run_harness(exe, storage, tmp_path, "float")
    assert cmp.compare(got.reshape(expected.shape), expected)["ok"]


# Layouts whose rows the micro-kernels cannot read in place (elements not contiguous, or rows
# repeated by a divisor): (operand, layout) per operand replaced in Block("packed")'s spec.
STRIDED = Layout((1, 2, 7, 8), (224, 112, 16, 2))  # every other element of a (1, 2, 7, 16) tensor
PACKED_LAYOUTS = {
    "q_head_dim_strided": {"q": STRIDED},
    "k_neither_rows_nor_columns": {"k": Layout((1, 2, 11, 8), (352, 176, 16, 2))},
    "v_strided": {"v": Layout((1, 2, 11, 8), (352, 176, 16, 2))},
    "y_strided": {"y": STRIDED},
    "kv_keys_repeated": {"k": Layout((1, 2, 11, 8), (48, 24, 8, 1), 0, (1, 1, 2, 1)),
                         "v": Layout((1, 2, 11, 8), (48, 24, 8, 1), 0, (1, 1, 2, 1))},
    "q_rows_repeated": {"q": Layout((1, 2, 7, 8), (32, 16, 8, 1), 0, (1, 1, 2, 1))},
    "all_packed": {"q": STRIDED, "k": Layout((1, 2, 11, 8), (352, 176, 16, 2)),
                   "v": Layout((1, 2, 11, 8), (352, 176, 16, 2)), "y": STRIDED},
}


def packed_case(layouts: dict, seed=0):
    """(spec, storage, expected Y storage): Block("packed")'s spec with some operands read
    through `layouts`, random storage for each, and ops.attention's float64 reference (which
    reads every operand through its map) on the float32-rounded storage."""
    from moa_edge.ops.attention import reference
    spec, storage, _ = make(Block("packed", causal=True, mask="float"), seed)
    spec = dataclasses.replace(spec, **layouts)
    rng = np.random.default_rng(seed + 1)
    storage = dict(storage)
    for name in ("q", "k", "v"):
        layout = getattr(spec, name)
        storage[name] = rng.standard_normal(layout.storage_extent()).astype(np.float32)
    t = {n: torch.from_numpy(storage[n].astype(np.float64)) for n in ("q", "k", "v")}
    mask = torch.from_numpy(storage["m"])
    expected = reference(spec, t["q"], t["k"], t["v"], mask, (spec.y.storage_extent(),)).numpy()
    return spec, storage, expected


@pytest.mark.parametrize("schedule", [Schedule("online", 4, 4), Schedule("online", 3, 5), Schedule("two_pass", 3, 4)],
                         ids=lambda s: f"{s.strategy}-{s.block_q}x{s.block_k}")
@pytest.mark.parametrize("case", PACKED_LAYOUTS, ids=str)
def test_layouts_the_micro_kernels_cannot_read_are_packed_into_scratch(case, schedule, tmp_path):
    """Such an operand's rows are copied into scratch through its access map per tile and the
    same micro-kernels run on the copy: no DNF-printed loop nest, agreement with PyTorch
    float64 to 1e-5, and under ASan a scratch of exactly scratch_layout's size (packing
    regions included) is never overrun and its last element is used."""
    require_board("host")
    spec, storage, expected = packed_case(PACKED_LAYOUTS[case])
    regions = dict(scratch_layout(spec, schedule).regions)
    for name in PACKED_LAYOUTS[case]:
        packed = name != "y" or schedule.strategy == "two_pass"  # online normalises Y's rows in acc
        assert (f"{name}_pack" in regions) == packed
    code = emit_kernel(spec, schedule, "kernel")
    assert "moa_attn_pv_f32(" in code and "red1" not in code and "for (q = 0;" not in code
    exe = build_harness(spec, schedule, tmp_path, real="float", cflags=SANITIZE, ldflags=SANITIZE[:1])
    got, stderr = run_harness(exe, storage, tmp_path, "float")
    assert "scratch_tail_touched=1" in stderr
    written = spec.y.offsets()
    assert np.max(np.abs(got[written] - expected[written])) <= 1e-5


def test_no_production_kernel_prints_the_dnf_loop_nest():
    """emit_kernel never prints the oracle's literal bodies (the scalar P V loop over q, the
    Q.K reduction into red1), for any block, schedule or layout; the oracle does."""
    specs = [make(block)[0] for block in BLOCKS] + [packed_case(layouts)[0] for layouts in PACKED_LAYOUTS.values()]
    for spec in specs:
        for schedule in SCHEDULES:
            code = emit_kernel(spec, schedule, "kernel")
            assert "for (q = 0;" not in code and "red1" not in code and "v_row" not in code, (spec, schedule)
            assert "moa_attn_pv_f32(" in code
            oracle = emit_oracle_kernel(spec, schedule, "kernel")
            assert "for (q = 0;" in oracle and "red1" in oracle and "moa_attn_" not in oracle


@pytest.mark.parametrize("schedule", [Schedule("online", 4, 4), Schedule("two_pass", 3, 4)],
                         ids=lambda s: s.strategy)
def test_nan_in_a_row_gives_nan_not_zero_through_the_micro_kernels(schedule, tmp_path):
    require_board("host")
    spec, storage, _ = make(Block("nan", sq=5, skv=6))
    storage["q"] = storage["q"].copy()
    storage["q"][0, 0, 2, :] = np.nan
    exe = build_harness(spec, schedule, tmp_path, real="float", cflags=["-O2", "-march=native"])
    got, _ = run_harness(exe, storage, tmp_path, "float")
    got = got.reshape(1, 2, 5, 8)
    assert np.all(np.isnan(got[0, 0, 2])) and not np.any(np.isnan(got[0, 1]))


def test_tiles_no_key_of_which_is_hidden_skip_the_causal_test():
    spec, _, _ = make(Block("causal", sq=12, skv=12, causal=True))
    code = emit_kernel(spec, Schedule("online", 4, 4), "kernel")
    assert "some key of the tile is hidden" in code and code.count("(k > i)") == 1


def test_a_model_reading_q_and_k_through_strided_slices_runs_packed(tmp_path):
    """End to end: Q and K are every other feature of their inputs (Slice with step 2), which
    the detector folds into their access maps; the generated kernel packs their rows and
    agrees with onnxruntime."""
    import onnx
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    import onnxruntime as ort
    from backend_cases import run_case
    vi = lambda n, s: h.make_tensor_value_info(n, T.FLOAT, s)  # noqa: E731
    const = lambda n, x: nh.from_array(np.array(x, np.int64), n)  # noqa: E731
    nodes = [h.make_node("Slice", [x, "start", "end", "axis", "step"], [x + "s"]) for x in ("qx", "kx")]
    nodes += [h.make_node("Transpose", ["kxs"], ["kt"], perm=[0, 1, 3, 2]), h.make_node("MatMul", ["qxs", "kt"], ["qk"]),
              h.make_node("Mul", ["qk", "sc"], ["s"]), h.make_node("Softmax", ["s"], ["p"], axis=-1),
              h.make_node("MatMul", ["p", "v"], ["y"])]
    inits = [const("start", [0]), const("end", [16]), const("axis", [3]), const("step", [2]),
             nh.from_array(np.array(0.35, np.float32), "sc")]
    model = h.make_model(h.make_graph(nodes, "g", [vi("qx", [1, 2, 5, 16]), vi("kx", [1, 2, 7, 16]), vi("v", [1, 2, 7, 8])],
                                      [vi("y", [1, 2, 5, 8])], initializer=inits),
                         opset_imports=[h.make_opsetid("", 18)])
    rng = np.random.default_rng(3)
    feeds = {"qx": rng.standard_normal((1, 2, 5, 16)).astype(np.float32),
             "kx": rng.standard_normal((1, 2, 7, 16)).astype(np.float32),
             "v": rng.standard_normal((1, 2, 7, 8)).astype(np.float32)}
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    run_case("strided_slices", model, feeds, expected, tmp_path, {})
    source = "".join(p.read_text() for p in (tmp_path / "project").rglob("*.c"))
    assert "MoaAttention" in (tmp_path / "project" / "report.json").read_text()
    assert "q_pack" in source and "k_pack" in source and "for (q = 0;" not in source


# --- the decode form: a few query rows against a cache of run-time length -------------------
# (the blocks and their float64 reference: cached_attention, shared with test_kv_int8 and test_kv_f16)

DECODE = [
    CachedBlock("step_mha", hq=2, hkv=2, sq=1, skv=64),
    CachedBlock("step_gqa3_smollm2", hq=9, hkv=3, sq=1, skv=256, d=64, dv=64),
    CachedBlock("chunk4_gqa4", hq=8, hkv=2, sq=4, skv=128),
    CachedBlock("prefill16_gqa3", hq=6, hkv=2, sq=16, skv=1024, dv=8),
    CachedBlock("step_mqa4_long", hq=4, hkv=1, sq=1, skv=1024),
]
SPLITS = [1, 2, 4, 7]


def decode_lengths(block: CachedBlock) -> list[int]:
    """L = 1 (rows of a chunk see nothing but the last one's first key), a count that is no
    multiple of any tile, and the whole cache."""
    return [1, min(block.skv, 37 + block.sq), block.skv]


def decode_schedule(block: CachedBlock, splits: int, rows: int = 64, keys: int = 16) -> Schedule:
    """The decode form: Br above Sq stacks the group's query heads (a split alone asks for it too)."""
    return Schedule("online", rows, keys, splits)


def make_decode(block: CachedBlock, length: int, seed=0, nan_past_length=False):
    """(spec, storage with L, PyTorch float64 output): SDPA on the first L keys with the causal
    diagonal at i + L - Sq; a row that sees no key gives 0. nan_past_length fills the cache rows
    k >= L with NaN: a kernel that read one would put NaN in the output."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, block.hq, block.sq, block.d))
    k = rng.standard_normal((1, block.hkv, block.skv, block.d))
    v = rng.standard_normal((1, block.hkv, block.skv, block.dv))
    if nan_past_length:
        k[:, :, length:], v[:, :, length:] = np.nan, np.nan
    storage = {"q": q, "k": k, "v": v, "m": None, "l": np.array([length])}
    return cached_spec(block), storage, reference(block, q, k, v, length)


def _decode_runs(block, schedule, tmp_path, real, runner=(), build=None, **make_args):
    """Builds the block's kernel once and runs it for each run-time length: (length, got, expected)."""
    spec, _, _ = make_decode(block, block.skv)
    exe = (build or (lambda: build_harness(spec, schedule, tmp_path, real=real)))()
    for length in decode_lengths(block):
        _, storage, expected = make_decode(block, length, **make_args)
        got, stderr = run_harness(exe, storage, tmp_path, real, runner)
        yield length, got.reshape(expected.shape), expected, stderr


@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize("block", DECODE, ids=lambda b: b.name)
def test_decode_oracle_is_exact(block, splits, tmp_path):
    """The decode form printed whole in double (stacked rows, each key split's partial, the
    exact combination) agrees with PyTorch float64 to 1e-12 for L = 1, a length that is no
    multiple of the tile, and the whole cache."""
    schedule = decode_schedule(block, splits)
    spec = make_decode(block, 1)[0]
    code = emit_oracle_kernel(spec, schedule, "kernel")
    assert decode_form(spec, schedule) == (block.hq > block.hkv or splits > 1)  # MHA unsplit: the head form is it
    assert ("g = (ptrdiff_t)(item /" in code) == decode_form(spec, schedule) and ("for (c = 0;" in code) == (splits > 1)
    for length, got, expected, _ in _decode_runs(block, schedule, tmp_path, "double"):
        assert np.max(np.abs(got - expected)) <= 1e-12, (length, np.max(np.abs(got - expected)))


@pytest.mark.parametrize("wrapping", [False, True], ids=["all_rows", "wrapping_blocks"])
@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize("block", DECODE, ids=lambda b: b.name)
def test_decode_micro_kernels_meet_tolerance(block, splits, wrapping, tmp_path):
    """The decode form through the host's micro-kernels: the score and P V tiles see the
    group's stacked rows (Br = 64: all of them; Br = Sq + 3: blocks that wrap from one query
    head to the next), each K/V head is walked by head g only, never by query head, and no
    DNF-printed loop nest is left."""
    board = require_board("host")
    rows = block.sq + 3 if wrapping else 64
    schedule = decode_schedule(block, splits, rows=rows)
    spec = make_decode(block, 1)[0]
    code = emit_kernel(spec, schedule, "kernel")
    group = block.hq // block.hkv
    assert "moa_attn_scores_f32(" in code and "red1" not in code and "v_row" not in code
    if decode_form(spec, schedule):
        br = min(rows, group * block.sq)  # the items: (b, g, ib) over the K/V heads' stacked rows
        blocks = -(-group * block.sq // br)
        assert f"g = (ptrdiff_t)(item / {blocks} % {block.hkv})" in code and "h = (ptrdiff_t)(item" not in code
        assert f"ib = (ptrdiff_t)(item % {blocks}) * {br};" in code
    else:
        assert group == 1 and splits == 1
    build = lambda: build_harness(spec, schedule, tmp_path, cflags=board.toolchain["cflags"])  # noqa: E731
    for length, got, expected, _ in _decode_runs(block, schedule, tmp_path, "float", build=build):
        assert cmp.compare(got, expected)["ok"], (length, cmp.compare(got, expected))


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
@pytest.mark.parametrize("splits", [1, 4, 7])
@pytest.mark.parametrize("block", [DECODE[1], DECODE[3]], ids=lambda b: b.name)
def test_decode_meets_tolerance_on_boards(block, splits, board_name, tmp_path):
    """The decode form on every board's own micro-kernels (NEON under qemu-aarch64, RVV under
    qemu-riscv64)."""
    board = require_board(board_name)
    schedule = decode_schedule(block, splits)
    spec = make_decode(block, 1)[0]
    build = lambda: build_harness(spec, schedule, tmp_path, cc=board.compiler(),  # noqa: E731
                                  cflags=board.toolchain["cflags"], ldflags=board.toolchain["ldflags"])
    for length, got, expected, _ in _decode_runs(block, schedule, tmp_path, "float", board.runner(), build):
        assert cmp.compare(got, expected)["ok"], (length, cmp.compare(got, expected))


@pytest.mark.parametrize("splits", [1, 4])
@pytest.mark.parametrize("real", ["float", "double"])
def test_decode_never_reads_the_cache_past_its_length(real, splits, tmp_path):
    """K and V rows k >= L are NaN: the output stays finite and exact (1e-12 in double, the
    float tolerance through the micro-kernels), built with ASan and UBSan and a scratch of
    exactly scratch_bytes, so neither the cache past L nor the scratch is touched wrongly."""
    require_board("host")
    block = CachedBlock("sanitized", hq=6, hkv=2, sq=4, skv=96)
    schedule = decode_schedule(block, splits, rows=5)  # blocks of 5 of the 12 stacked rows: some wrap
    spec = make_decode(block, 1)[0]
    build = lambda: build_harness(spec, schedule, tmp_path, real=real, cflags=SANITIZE,  # noqa: E731
                                  ldflags=SANITIZE[:1])
    for length, got, expected, _ in _decode_runs(block, schedule, tmp_path, real, build=build, nan_past_length=True):
        assert np.all(np.isfinite(got)), length
        if real == "double":
            assert np.max(np.abs(got - expected)) <= 1e-12
        else:
            assert cmp.compare(got, expected)["ok"], (length, cmp.compare(got, expected))


def test_decode_scratch_is_per_split_partials_never_a_score_matrix():
    """Split-K scratch: the Br x Bc score tile per thread, and S partials (m, l, acc) of Br rows
    per row block shared by the threads (a block's splits may run on any), whatever the cache
    length; one split is the online form's scratch, all of it per thread."""
    block = DECODE[1]
    spec = make_decode(block, 1)[0]
    br, bc, dv, blocks = 3, 16, block.dv, block.hkv  # the 3 query heads of a K/V head, one row each
    for splits in SPLITS:
        layout = scratch_layout(spec, decode_schedule(block, splits))
        if splits == 1:
            assert dict(layout.regions) == {"s": br * bc, "m": br, "l": br, "alpha": br, "acc": br * dv}
            assert layout.shared == 0
        else:
            assert dict(layout.regions) == {"partials": blocks * splits * br * (dv + 2), "s": br * bc, "alpha": br}
            assert layout.shared == blocks * splits * br * (dv + 2) and layout.per_thread == br * bc + br
        assert scratch_bytes(spec, decode_schedule(block, splits), threads=4) == 4 * (layout.shared + 4 * layout.per_thread)
    longer = dataclasses.replace(spec, kv_len=4096, k=Layout.row_major((1, 3, 4096, 64)), v=Layout.row_major((1, 3, 4096, 64)))
    assert scratch_bytes(longer, decode_schedule(block, 4)) == scratch_bytes(spec, decode_schedule(block, 4))
    assert scratch_bytes(spec, Schedule("online", 1, 16)) == 4 * (bc + 3 + dv)  # the head form: one row


def test_head_form_is_unchanged_by_the_decode_form():
    """Br <= Sq and no split keeps the query-head loop (the prefill kernels); two_pass cannot split."""
    spec = make_decode(DECODE[2], 1)[0]
    code = emit_kernel(spec, Schedule("online", 4, 16), "kernel")
    assert re.search(r"h = \(ptrdiff_t\)\(item / \d+ % 8\)", code) and "g = (ptrdiff_t)(item" not in code
    with pytest.raises(AssertionError):
        Schedule("two_pass", 4, 16, 2)


# (Br beyond Sq, Bc, key splits): Br = Sq + 2 makes blocks that wrap from one query head to the next
GQA_SCHEDULES = [(2, 4, 1), (2, 4, 3), (64, 5, 2)]


@pytest.mark.parametrize("rows, keys, splits", GQA_SCHEDULES, ids=lambda s: str(s))
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_every_feature_through_the_decode_form(block, rows, keys, splits, tmp_path):
    """Each block of the table with its query heads grouped two to a K/V head, in the decode form
    (stacked rows, Br = Sq + 2: blocks that wrap from one query head to the next; key splits):
    masks, softcap, causal diagonals and windows, K stored transposed, Q read through a head
    split (its stacked rows packed), in double to 1e-12 and through the micro-kernels under ASan
    and UBSan within the float tolerance, against PyTorch float64."""
    require_board("host")
    grouped = dataclasses.replace(block, hkv=block.hq // 2)
    spec, storage, expected = make(grouped)
    schedule = Schedule("online", block.sq + rows, keys, splits)
    assert decode_form(spec, schedule)
    exe = build_harness(spec, schedule, tmp_path / "double", real="double")
    got, _ = run_harness(exe, storage, tmp_path, "double")
    assert np.max(np.abs(got.reshape(expected.shape) - expected)) <= 1e-12
    exe = build_harness(spec, schedule, tmp_path / "float", cflags=SANITIZE, ldflags=SANITIZE[:1])
    got, _ = run_harness(exe, storage, tmp_path, "float")
    assert cmp.compare(got.reshape(expected.shape), expected)["ok"]
