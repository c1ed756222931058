"""The cost model against cachegrind, and the schedule choice against its budget."""
from dataclasses import replace
import math
import shutil

import pytest

from moa_edge.errors import MoaEdgeError
from moa_edge.harness.traffic import bench_spec, measure, measure_kernel
from moa_edge.moa import Layout, cost
from moa_edge.moa.onf import Schedule, decode_form, scratch_bytes
from moa_edge.moa.spec import AttentionSpec
from moa_edge.pipeline import parse_schedule
from moa_edge.target import CacheLevel, load_board


def board_with_llc(size: int):
    """The rpi4 profile with its last-level cache resized, to put K/V in or out of it."""
    board = load_board("rpi4")
    return replace(board, caches=(board.l1d(), CacheLevel("l2", size, 64, 16)))


@pytest.fixture(autouse=True)
def _valgrind():
    if shutil.which("valgrind") is None:
        import os
        if os.environ.get("CI") == "true":
            pytest.fail("valgrind missing under CI=true")
        pytest.skip("valgrind not installed")


@pytest.mark.parametrize("llc_kib, fits", [(512, True), (64, False)])
def test_predicted_dram_traffic_within_20_percent_of_cachegrind(llc_kib, fits, tmp_path):
    """seq 256, d 64: K and V of the head are 128 KiB; they fit a 512 KiB LLC, not a 64 KiB one."""
    board = board_with_llc(llc_kib * 1024)
    point = measure(256, 2, 64, board, tmp_path, naive=False, schedule=Schedule("online", 16, 32))
    assert point.kv_fits_llc == fits
    assert 0.8 <= point.predicted_dram_bytes / point.fused_dram_bytes <= 1.2, point
    if fits:  # the compulsory minimum, within cachegrind's line granularity
        assert point.fused_dram_bytes <= 1.3 * point.compulsory_bytes


def test_naive_kernel_moves_more_than_the_fused_one(tmp_path):
    point = measure(512, 1, 64, board_with_llc(128 * 1024), tmp_path, naive=True)
    assert point.naive_dram_bytes > 2 * point.fused_dram_bytes


@pytest.mark.parametrize("seq", [64, 1000, 4096])
def test_choice_respects_the_scratch_budget(seq):
    spec = bench_spec(seq, 1, 64)
    board = load_board("k230")
    for budget in (4096, 16384, 65536):
        chosen = cost.choose(spec, board, budget)
        assert chosen.scratch_bytes <= budget
        assert chosen.scratch_bytes == scratch_bytes(spec, Schedule(chosen.strategy, chosen.block_q, chosen.block_k))


def test_more_budget_never_predicts_more_traffic():
    spec = bench_spec(4096, 1, 64)
    board = load_board("k230")
    traffic = [cost.choose(spec, board, b).dram_bytes for b in (8192, 32768, 131072)]
    assert traffic == sorted(traffic, reverse=True)


def test_online_scratch_is_independent_of_sequence_length():
    schedule = Schedule("online", 32, 32)
    sizes = {scratch_bytes(bench_spec(seq, 1, 64), schedule) for seq in (256, 1024, 4096, 16384)}
    assert len(sizes) == 1
    two_pass = Schedule("two_pass", 32, 32)
    assert scratch_bytes(bench_spec(4096, 1, 64), two_pass) > scratch_bytes(bench_spec(256, 1, 64), two_pass)


def decode_spec(kv_len=1024, q_heads=9, kv_heads=3, q_len=1, head_dim=64):
    """A SmolLM2-135M decode step: GQA 9 over 3 heads, head_dim 64, a cache of kv_len keys of
    which L are valid at run time, causal_offset = -q_len."""
    q, y = Layout.row_major((1, q_heads, q_len, head_dim)), Layout.row_major((1, q_heads, q_len, head_dim))
    kv = Layout.row_major((1, kv_heads, kv_len, head_dim))
    return AttentionSpec(1, q_heads, kv_heads, q_len, kv_len, head_dim, head_dim, 1 / math.sqrt(head_dim), True,
                         "none", -math.inf, q, kv, kv, y, None, causal_offset=-q_len, kv_lengths=True)


def test_gqa_decode_reads_each_kv_head_once(tmp_path):
    """K and V bytes read by a GQA decode step are kv_heads x L x (D + Dv) x 4 in the decode
    form (the 3 query heads of a K/V head stacked as one row block), not q_heads x ..., as
    predicted and as cachegrind counts them when one head's K and V (L = 700 keys: 350 KiB)
    are larger than the last-level cache (64 KiB): the head form reads them 3 times."""
    spec, length = decode_spec(), 700
    board = board_with_llc(64 * 1024)
    stacked, per_head = Schedule("online", 3, 128), Schedule("online", 1, 128)
    assert decode_form(spec, stacked) and not decode_form(spec, per_head)
    kv_bytes = spec.kv_heads * length * (spec.head_dim + spec.value_dim) * 4
    measured, predicted = measure_kernel(spec, stacked, board, tmp_path / "stacked", length)
    assert predicted.kv_dram_bytes == kv_bytes
    assert 0.95 <= measured / predicted.dram_bytes <= 1.1, (measured, predicted.dram_bytes)
    measured_per_head, predicted_per_head = measure_kernel(spec, per_head, board, tmp_path / "per_head", length)
    assert predicted_per_head.kv_dram_bytes == spec.q_heads * length * (spec.head_dim + spec.value_dim) * 4
    assert 0.9 <= measured_per_head / predicted_per_head.dram_bytes <= 1.1, (measured_per_head, predicted_per_head)
    split = cost.predict(spec, Schedule("online", 3, 128, 4), board, length)
    assert split.kv_dram_bytes == kv_bytes  # splitting the keys reads each once too


def test_choice_stacks_the_group_and_splits_only_for_idle_workers():
    """For a decode step the cost model stacks the group's rows (Br = group x Sq: fewest L1
    fills, one walk of each K/V head); on one core it never splits the keys (split-K adds
    scratch and a combination, no traffic saved); when the (K/V head, row block) items do not
    share evenly among the workers it splits until they do (at least 90% busy), keeping
    MIN_SPLIT_KEYS keys per split."""
    board = load_board("rpi4")
    for q_len, group_rows in ((1, 3), (4, 12)):
        spec = decode_spec(q_len=q_len)
        chosen = cost.choose(spec, board)
        assert (chosen.strategy, chosen.block_q, chosen.splits) == ("online", group_rows, 1)
        assert decode_form(spec, chosen.schedule)
    spec = decode_spec()
    assert cost.choose(spec, board, workers=2).splits == 2  # 3 items for 2 workers: 6, 3 each
    assert cost.choose(spec, board, workers=3).splits == 1  # one each
    assert cost.choose(spec, board, workers=4).splits == 4  # 3 items for 4 workers: 12 (2 splits: 6, busy 75%)
    assert cost.choose(spec, board, workers=12).splits == 4  # 1024 keys: at most 4 splits of 256
    assert cost.choose(decode_spec(kv_len=256), board, workers=4).splits == 1
    prefill = decode_spec(q_len=256)
    assert cost.choose(prefill, board, workers=4).splits == 1  # row blocks enough for 4 workers


def test_forced_split_schedule_text():
    """--schedule online:16x64/s4 forces 4 key splits; two_pass cannot split; a bad suffix is refused."""
    assert parse_schedule("online:16x64/s4") == Schedule("online", 16, 64, 4)
    assert parse_schedule("two_pass:1x64") == Schedule("two_pass", 1, 64, 1)
    for text in ("two_pass:1x64/s2", "online:16x64/4", "online:16x64/s0", "online:16x64/sx"):
        with pytest.raises(MoaEdgeError, match="STRATEGY:BRxBC"):
            parse_schedule(text)
