"""An int8 key/value cache (issue 14, item 4): `convert --max-context N --kv-cache int8` keeps each
cached key and value row as int8 with one float32 scale per (layer, K or V, kv head, position);
attention widens the rows in registers, and its scores, softmax and sums stay float32.

The expected values never come from moa-edge: the ONF kernels against PyTorch float64 attention
over keys and values quantized and dequantized by numpy (the float32 steps of the contract:
scale = max|x| / 127, q = round-half-even(x / scale)); the generation builds against the torch
model in float64 whose cache update quantizes the same way (`fake_quantize` below, in
cached_attention's rounding cache)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from cached_attention import (API_PROGRAM_PRINTS, BLOCKS, MAX_CONTEXT, SCHEDULES, CacheFormat, api_program_output,
                              cache_shape, check_generation, converted, header_sizes, make, runs, schedule_id)
from conftest import require_board
from moa_edge.harness import compare as cmp
from moa_edge.harness.kernel_harness import build_harness
from moa_edge.moa.onf import decode_form, emit_kernel, emit_oracle_kernel
from moa_edge.target import load_board


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row (last axis) of x as the cache stores it: (int8 values, float32 scale per row), in
    float32 arithmetic as moa_attn_quantize_s8 states it."""
    x = np.asarray(x, np.float32)
    scale = (np.abs(x).max(axis=-1) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.where(scale[..., None] > 0, np.clip(np.round(x / safe[..., None]), -127, 127), 0)
    return q.astype(np.int8), scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float64) * scale.astype(np.float64)[..., None]


def fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """Rows of x quantized and dequantized as the cache stores them: the float32 steps of the
    contract on x rounded to float32, the result q * scale exact in x's own type (float64)."""
    x32 = x.to(torch.float32)
    scale = x32.abs().amax(dim=-1, keepdim=True) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.where(scale > 0, torch.round(x32 / safe).clamp(-127, 127), torch.zeros_like(x32))
    return q.to(x.dtype) * scale.to(x.dtype)


INT8 = CacheFormat(kv_dtype="int8", kv_cache="int8", operands=("q", "k", "v", "ks", "vs", "l"),
                   store=quantize_rows, read=dequantize, round_rows=fake_quantize,
                   reference_name="quantized", margin=10)


# --- the ONF kernels over an int8 cache ------------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES, ids=schedule_id)
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_oracle_over_an_int8_cache_is_exact(block, schedule, tmp_path):
    """The DNF printed whole in double, each cached element read as its int8 value times its row's
    scale, agrees with PyTorch float64 over the dequantized cache to 1e-12."""
    build = lambda spec: build_harness(spec, schedule, tmp_path, real="double")  # noqa: E731
    code = emit_oracle_kernel(make(INT8, block, 1)[0], schedule, "kernel")
    assert "const int8_t *restrict K" in code and "KS[" in code and "VS[" in code
    for length, got, expected in runs(INT8, block, tmp_path, "double", build):
        assert np.max(np.abs(got - expected)) <= 1e-12, (length, np.max(np.abs(got - expected)))


@pytest.mark.parametrize("schedule", SCHEDULES, ids=schedule_id)
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_micro_kernels_over_an_int8_cache_meet_tolerance(block, schedule, tmp_path):
    """The production kernel: the same loop nest as over a float cache, its score and P V calls the
    _s8 kernels (K, V int8 in place, their scales beside them), every other call the float ones."""
    board = require_board("host")
    spec = make(INT8, block, 1)[0]
    code = emit_kernel(spec, schedule, "kernel")
    softmax = "moa_attn_softmax_f32(" if schedule.strategy == "online" else "moa_attn_exp_f32("
    assert "moa_attn_scores_f32_s8(" in code and "moa_attn_pv_f32_s8(" in code and softmax in code
    assert "k_pack" not in code and "v_pack" not in code and "red1" not in code
    float_code = emit_kernel(dataclasses.replace(spec, kv_dtype="float32", k_scale=None, v_scale=None), schedule, "kernel")
    # one loop nest: the two differ only in the K/V types, the kernel names and the scale arguments
    strip = lambda c: [ln.replace("KS, VS, ", "") for ln in c.splitlines()  # noqa: E731
                       if "moa_attn_scores" not in ln and "moa_attn_pv" not in ln
                       and "K, const" not in ln and "restrict K" not in ln]
    assert strip(code) == strip(float_code)
    assert (decode_form(spec, schedule) and schedule.splits > 1) == ("moa_attn_pv_f32(1," in code)
    build = lambda spec: build_harness(spec, schedule, tmp_path, cflags=board.toolchain["cflags"])  # noqa: E731
    for length, got, expected in runs(INT8, block, tmp_path, "float", build):
        assert cmp.compare(got, expected)["ok"], (length, cmp.compare(got, expected))


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["rpi4", "k230"])
def test_micro_kernels_over_an_int8_cache_on_the_boards(board_name, tmp_path):
    """The same on the boards' own _s8 kernels (NEON under qemu-aarch64, RVV under qemu-riscv64)."""
    board = require_board(board_name)
    for block in (BLOCKS[1], BLOCKS[3]):
        for schedule in SCHEDULES[:3]:
            build = lambda spec: build_harness(spec, schedule, tmp_path, cc=board.compiler(),  # noqa: E731
                                               cflags=board.toolchain["cflags"], ldflags=board.toolchain["ldflags"])
            for length, got, expected in runs(INT8, block, tmp_path, "float", build, board.runner()):
                assert cmp.compare(got, expected)["ok"], (block.name, schedule, length, cmp.compare(got, expected))


# --- generation builds with an int8 cache -------------------------------------------------

# The families and forms: the decomposed attention (TorchScript) with GQA, MQA and MHA (GPT-2, the head
# form of the kernel), and the ONNX Attention op (dynamo, opset 23), whose cache the rewrite appends.
CASES = [("llama", "torchscript", 17), ("llama", "dynamo", 23), ("llama-mqa", "torchscript", 17),
         ("qwen2", "torchscript", 17), ("phi3", "dynamo", 23), ("gpt2", "torchscript", 17)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("kv_int8")


ACCURACY: dict = {}  # what the int8 cache gives up against the float model, reported at the end


@pytest.mark.parametrize("family,exporter,opset", CASES)
def test_greedy_tokens_and_logits_equal_the_quantized_cache_reference_on_the_host(folder, family, exporter, opset):
    """With --kv-cache int8 the build gives the greedy tokens of the float64 model whose cache
    quantizes every row the same way, and its teacher-forced logits within 1e-4; against the
    float model it gives up a little (reported, loosely bounded)."""
    case, project = converted(INT8, folder, family, exporter, opset)
    report = json.loads((project / "report.json").read_text())
    assert report["generation"]["kv_cache"] == "int8"
    assert all(b.get("kv_dtype") == "int8" for b in report["attention_blocks"])
    accuracy = ACCURACY[f"{family}-{exporter}{opset}"] = check_generation(INT8, case, project, load_board("host"))
    print(f"\n{family}-{exporter}{opset}: {accuracy}")
    assert accuracy["top1_agreement_vs_float"] >= 0.8 and accuracy["max_rel_logit_error_vs_float"] < 0.2


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["rpi4", "k230"])
def test_greedy_generation_with_an_int8_cache_on_the_emulated_boards(folder, board_name):
    board = require_board(board_name)
    case, project = converted(INT8, folder, "qwen2", "torchscript", 17, board)
    check_generation(INT8, case, project, board)


def test_state_bytes_are_the_int8_caches_their_scales_and_the_position(folder):
    """MODEL_STATE_BYTES: the 64-byte header, then per layer and K/V an int8 cache of kv_heads x
    max_context x head_dim bytes and its float32 scales, kv_heads x max_context x 4, each array
    from a 64-byte boundary; the caches are (head_dim + 4) / (4 head_dim) of the float ones."""
    def align(n):
        return (n + 63) // 64 * 64

    case, project = converted(INT8, folder, "llama", "torchscript", 17)
    _, float_project = converted(INT8, folder, "llama", "torchscript", 17, kv_cache="float32")
    layers, kv_heads, head_dim = cache_shape(case)
    rows = kv_heads * MAX_CONTEXT
    macros = {"int8": header_sizes(project), "float32": header_sizes(float_project)}
    assert macros["int8"]["CACHE_BYTES"] == layers * 2 * (rows * head_dim + rows * 4)
    assert macros["int8"]["STATE_BYTES"] == 64 + layers * 2 * (align(rows * head_dim) + align(rows * 4))
    assert macros["float32"]["CACHE_BYTES"] == layers * 2 * rows * head_dim * 4
    assert macros["int8"]["CACHE_BYTES"] / macros["float32"]["CACHE_BYTES"] == (head_dim + 4) / (4 * head_dim)
    assert "int8 and its float32 scale" in (project / "model.h").read_text()


def test_the_c_api_over_an_int8_cache_under_sanitizers(folder, tmp_path):
    """test_generate's API program on an int8 build under ASan/UBSan, state and arena exactly their
    stated sizes: filling the cache to max_context writes no byte past the state."""
    require_board("host")
    _, project = converted(INT8, folder, "llama", "torchscript", 17)
    assert api_program_output(project, tmp_path) == API_PROGRAM_PRINTS


def test_kv_cache_needs_a_generation_build_and_a_known_type(folder):
    from conftest import one_error, run_cli
    import decoders
    case = decoders.cached_decoder("llama", "torchscript", 17, folder)
    one_error(run_cli("convert", case.path, "-o", folder / "no-context", "--kv-cache", "int8"),
              "--kv-cache", "--max-context")
    one_error(run_cli("convert", case.path, "-o", folder / "int4", "--max-context", "16", "--kv-cache", "int4"),
              "--kv-cache", "int4")
