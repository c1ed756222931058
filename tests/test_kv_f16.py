"""A float16 key/value cache: `convert --max-context N --kv-cache fp16` keeps each cached key and
value as an IEEE half (uint16_t bits, no scale), the float32 value rounded to nearest, ties to even,
when it is written; attention widens the halves in registers, and its scores, softmax and sums
stay float32.

The expected values never come from moa-edge: the ONF kernels against PyTorch float64 attention
over keys and values rounded to float16 by numpy; the generation builds against the torch model in
float64 whose cache update rounds each key and value to float16 the same way (`to_half_rows` below,
in cached_attention's rounding cache). The micro-kernels themselves are in the kernel table of
test_attention_kernels (scores_f16, pv_f16, round_f16 on every ISA)."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import numpy as np
import pytest
import torch

import cached_attention
from cached_attention import (API_PROGRAM_PRINTS, BLOCKS, MAX_CONTEXT, SCHEDULES, CacheFormat, api_program_output,
                              cache_shape, check_generation, converted, header_sizes, make, runs, schedule_id)
from conftest import require_board
from moa_edge.harness import compare as cmp
from moa_edge.harness.kernel_harness import build_harness
from moa_edge.moa.onf import decode_form, emit_kernel, emit_oracle_kernel
from moa_edge.target import load_board


def to_half(x: np.ndarray) -> np.ndarray:
    """x as the cache stores it: its float32 value rounded to the nearest half (numpy: ties to even)."""
    return np.asarray(x, np.float32).astype(np.float16)


def to_half_rows(x: torch.Tensor) -> torch.Tensor:
    """x as the cache holds it: rounded to float32 (what the build computes), then to the nearest
    half (torch: ties to even), the half's value in x's own type (float64)."""
    return x.to(torch.float32).to(torch.float16).to(x.dtype)


# The float model need be only 5x (not 10x as for int8) farther from the half-cache reference than the
# build is: where a key or value lies within float32's rounding of a half-way point, the build's
# float32 and the reference's float64 round it to neighbouring halves, one half ulp apart; GPT-2's
# logits then differ by 4e-5 of the largest while the float cache is 5e-4 from the half one.
FLOAT16 = CacheFormat(kv_dtype="float16", kv_cache="fp16", operands=("q", "k", "v", "l"),
                      store=lambda x: (to_half(x), None), read=lambda halves, _: halves.astype(np.float64),
                      round_rows=to_half_rows, reference_name="half", margin=5)


# --- the ONF kernels over a float16 cache ---------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES, ids=schedule_id)
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_oracle_over_a_float16_cache_is_exact(block, schedule, tmp_path):
    """The DNF printed whole in double, each cached element read as the half's value (moa/half.h),
    agrees with PyTorch float64 over the same halves to 1e-12."""
    build = lambda spec: build_harness(spec, schedule, tmp_path, real="double")  # noqa: E731
    code = emit_oracle_kernel(make(FLOAT16, block, 1)[0], schedule, "kernel")
    assert "const uint16_t *restrict K" in code and "moa_f16_to_f32(" in code and "KS[" not in code
    for length, got, expected in runs(FLOAT16, block, tmp_path, "double", build):
        assert np.max(np.abs(got - expected)) <= 1e-12, (length, np.max(np.abs(got - expected)))


@pytest.mark.parametrize("schedule", SCHEDULES, ids=schedule_id)
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_micro_kernels_over_a_float16_cache_meet_tolerance(block, schedule, tmp_path):
    """The production kernel: the same loop nest as over a float cache, its score and P V calls the
    _f16 kernels (K, V halves in place, no scales), every other call the float ones."""
    board = require_board("host")
    spec = make(FLOAT16, block, 1)[0]
    code = emit_kernel(spec, schedule, "kernel")
    softmax = "moa_attn_softmax_f32(" if schedule.strategy == "online" else "moa_attn_exp_f32("
    assert "moa_attn_scores_f32_f16(" in code and "moa_attn_pv_f32_f16(" in code and softmax in code
    assert "k_pack" not in code and "v_pack" not in code and "red1" not in code and "KS" not in code
    float_code = emit_kernel(dataclasses.replace(spec, kv_dtype="float32"), schedule, "kernel")
    # one loop nest: the two differ only in the K/V type and the two kernel names
    assert code.replace("const uint16_t *restrict", "const float *restrict").replace("_f32_f16(", "_f32(") == float_code
    assert (decode_form(spec, schedule) and schedule.splits > 1) == ("moa_attn_pv_f32(1," in code)
    build = lambda spec: build_harness(spec, schedule, tmp_path, cflags=board.toolchain["cflags"])  # noqa: E731
    for length, got, expected in runs(FLOAT16, block, tmp_path, "float", build):
        assert cmp.compare(got, expected)["ok"], (length, cmp.compare(got, expected))


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["rpi4", "k230"])
def test_micro_kernels_over_a_float16_cache_on_the_boards(board_name, tmp_path):
    """The same on the boards' own _f16 kernels (NEON fcvtl under qemu-aarch64, RVV integer-lane
    widening under qemu-riscv64)."""
    board = require_board(board_name)
    for block in (BLOCKS[1], BLOCKS[3]):
        for schedule in SCHEDULES[:3]:
            build = lambda spec: build_harness(spec, schedule, tmp_path, cc=board.compiler(),  # noqa: E731
                                               cflags=board.toolchain["cflags"], ldflags=board.toolchain["ldflags"])
            for length, got, expected in runs(FLOAT16, block, tmp_path, "float", build, board.runner()):
                assert cmp.compare(got, expected)["ok"], (block.name, schedule, length, cmp.compare(got, expected))


# --- generation builds with a float16 cache -------------------------------------------------

# GQA in the decode form and the TorchScript decomposition; the ONNX Attention op (dynamo, opset 23),
# whose cache the rewrite appends; GPT-2 (MHA, the head form of the kernel).
CASES = [("llama", "torchscript", 17), ("llama", "dynamo", 23), ("gpt2", "torchscript", 17)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("kv_f16")


ACCURACY: dict = {}  # what the float16 cache gives up against the float model, reported as the tests run


@pytest.mark.parametrize("family,exporter,opset", CASES)
def test_greedy_tokens_and_logits_equal_the_half_cache_reference_on_the_host(folder, family, exporter, opset):
    """With --kv-cache fp16 the build gives the greedy tokens of the float64 model whose cache rounds
    every key and value to float16, and its teacher-forced logits within 1e-4; against the float
    model it gives up a little (reported, loosely bounded)."""
    case, project = converted(FLOAT16, folder, family, exporter, opset)
    report = json.loads((project / "report.json").read_text())
    assert report["generation"]["kv_cache"] == "float16"
    assert report["attention_blocks"] and all(b.get("kv_dtype") == "float16" for b in report["attention_blocks"])
    accuracy = ACCURACY[f"{family}-{exporter}{opset}"] = check_generation(FLOAT16, case, project, load_board("host"))
    print(f"\n{family}-{exporter}{opset}: {accuracy}")
    assert accuracy["top1_agreement_vs_float"] >= 0.9 and accuracy["max_rel_logit_error_vs_float"] < 0.02


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["rpi4", "k230"])
def test_greedy_generation_with_a_float16_cache_on_the_emulated_boards(folder, board_name):
    board = require_board(board_name)
    case, project = converted(FLOAT16, folder, "llama", "torchscript", 17, board)
    print(f"\n{board_name}: {check_generation(FLOAT16, case, project, board)}")


def test_state_bytes_are_the_half_caches_and_the_position(folder):
    """MODEL_STATE_BYTES: the 64-byte header holding the position, then per layer and K/V a cache of
    kv_heads x max_context x head_dim halves, nothing else (no scales): exactly half the float
    cache's bytes; convert prints the same formula."""
    case, project = converted(FLOAT16, folder, "llama", "torchscript", 17)
    _, float_project = converted(FLOAT16, folder, "llama", "torchscript", 17, kv_cache="float32")
    layers, kv_heads, head_dim = cache_shape(case)
    macros = {"fp16": header_sizes(project), "float32": header_sizes(float_project)}
    assert macros["fp16"]["CACHE_BYTES"] == layers * 2 * kv_heads * MAX_CONTEXT * head_dim * 2
    assert macros["fp16"]["STATE_BYTES"] == 64 + layers * 2 * kv_heads * MAX_CONTEXT * head_dim * 2
    assert 2 * macros["fp16"]["CACHE_BYTES"] == macros["float32"]["CACHE_BYTES"]
    assert "head_dim x 2 bytes: each key and value as an IEEE" in (project / "model.h").read_text()
    report = json.loads((project / "report.json").read_text())
    assert report["memory"]["state_bytes"] == macros["fp16"]["STATE_BYTES"]
    assert (f"({layers} layers x 2 x {kv_heads} heads x {MAX_CONTEXT} x {head_dim} x 2), "
            f"state {macros['fp16']['STATE_BYTES']} B") in cached_attention.PRINTED[project]
    model_c = (project / "model.c").read_text()
    assert "moa_attn_round_f16(" in model_c and "moa_attn_quantize_s8" not in model_c


def test_the_c_api_over_a_float16_cache_under_sanitizers(folder, tmp_path):
    """test_generate's API program on a float16 build under ASan/UBSan, state and arena exactly their
    stated sizes: filling the cache to max_context writes no byte past the state."""
    require_board("host")
    _, project = converted(FLOAT16, folder, "llama", "torchscript", 17)
    assert api_program_output(project, tmp_path) == API_PROGRAM_PRINTS


def test_kv_cache_fp16_needs_a_generation_build(folder):
    from moa_edge import cli
    import decoders
    case = decoders.cached_decoder("llama", "torchscript", 17, folder)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["convert", str(case.path), "-o", str(folder / "no-context"), "--kv-cache", "fp16"])
    assert code != 0 and err.getvalue().startswith("moa-edge: error:") and "--max-context" in err.getvalue()
    assert not (folder / "no-context").exists()
