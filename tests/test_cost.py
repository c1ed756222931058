"""The cost model against cachegrind, and the schedule choice against its budget."""
from dataclasses import replace
import shutil

import pytest

from moa_edge.harness.traffic import bench_spec, measure
from moa_edge.moa import cost
from moa_edge.moa.onf import Schedule, scratch_bytes
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
