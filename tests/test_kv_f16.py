"""A float16 key/value cache: `convert --max-context N --kv-cache fp16` keeps each cached key and
value as an IEEE half (uint16_t bits, no scale), the float32 value rounded to nearest, ties to even,
when it is written; attention widens the halves in registers, and its scores, softmax and sums
stay float32.

The expected values never come from moa-edge: the ONF kernels against PyTorch float64 attention
over keys and values rounded to float16 by numpy; the generation builds against the torch model in
float64 whose cache update rounds each key and value to float16 the same way (`HalfCache` below).
The micro-kernels themselves are in the kernel table of test_attention_kernels (scores_f16,
pv_f16, round_f16 on every ISA)."""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
import io
import json
import math
import re
import subprocess

import numpy as np
import pytest
import torch

from conftest import require_board
from moa_edge.harness import compare as cmp
from moa_edge.harness.kernel_harness import build_harness
from moa_edge.moa import Layout
from moa_edge.moa.onf import Schedule, decode_form, emit_kernel, emit_oracle_kernel
from moa_edge.moa.spec import AttentionSpec
from moa_edge.target import load_board


def to_half(x: np.ndarray) -> np.ndarray:
    """x as the cache stores it: its float32 value rounded to the nearest half (numpy: ties to even)."""
    return np.asarray(x, np.float32).astype(np.float16)


# --- the ONF kernels over a float16 cache ---------------------------------------------------

@dataclass(frozen=True)
class Block:
    name: str
    hq: int
    hkv: int
    sq: int
    skv: int
    d: int = 16
    dv: int = 16


BLOCKS = [
    Block("step_mha", hq=2, hkv=2, sq=1, skv=64),
    Block("step_gqa3_smollm2", hq=9, hkv=3, sq=1, skv=160, d=64, dv=64),
    Block("chunk4_gqa2", hq=4, hkv=2, sq=4, skv=48),
    Block("prefill16_gqa3", hq=6, hkv=2, sq=16, skv=96, dv=8),
]
# stacked rows (the decode form), split keys, the head form (Br <= Sq), the two-pass form
SCHEDULES = [Schedule("online", 64, 16), Schedule("online", 64, 16, 3), Schedule("online", 4, 8),
             Schedule("two_pass", 4, 16)]


def lengths(block: Block) -> list[int]:
    return [block.sq, min(block.skv, 37 + block.sq), block.skv]


def make(block: Block, length: int, seed: int = 0):
    """(spec, operands, PyTorch float64 output over the halves the cache holds) for L = length."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, block.hq, block.sq, block.d))
    k = (rng.standard_normal((1, block.hkv, block.skv, block.d)) * rng.uniform(0.2, 3, (1, block.hkv, block.skv, 1)))
    v = rng.standard_normal((1, block.hkv, block.skv, block.dv))
    k16, v16 = to_half(k), to_half(v)
    spec = AttentionSpec(1, block.hq, block.hkv, block.sq, block.skv, block.d, block.dv, 1 / math.sqrt(block.d),
                         True, "none", -math.inf, Layout.row_major(q.shape), Layout.row_major(k.shape),
                         Layout.row_major(v.shape), Layout.row_major((1, block.hq, block.sq, block.dv)), None,
                         causal_offset=-block.sq, kv_lengths=True, kv_dtype="float16")
    group = block.hq // block.hkv
    keys = torch.from_numpy(k16.astype(np.float64)[:, :, :length]).repeat_interleave(group, 1)
    values = torch.from_numpy(v16.astype(np.float64)[:, :, :length]).repeat_interleave(group, 1)
    hidden = torch.arange(length) > torch.arange(block.sq)[:, None] + length - block.sq
    bias = torch.zeros(block.sq, length, dtype=torch.float64).masked_fill(hidden, -math.inf)
    y = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q), keys, values, attn_mask=bias,
                                                         scale=spec.scale)
    y = torch.where(hidden.all(-1, keepdim=True), 0.0, y)
    operands = {"q": q, "k": k16, "v": v16, "l": np.array([length], np.int64)}
    return spec, operands, y.numpy()


def run_kernel(exe, operands: dict, workdir, real: str, runner=()) -> np.ndarray:
    args = []
    for name in ("q", "k", "v", "l"):  # K and V: the halves' bits, as the kernel reads them
        array = operands[name]
        if name == "q":
            array = array.astype(np.float64 if real == "double" else np.float32)
        path = workdir / f"{name}.bin"
        np.ascontiguousarray(array).tofile(path)
        args.append(str(path))
    out = workdir / "y.bin"
    proc = subprocess.run([*runner, str(exe), *args, str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return np.fromfile(out, np.float64 if real == "double" else np.float32)


def _runs(block, tmp_path, real, build, runner=()):
    exe = build(make(block, block.skv)[0])
    for length in lengths(block):
        _, operands, expected = make(block, length)
        yield length, run_kernel(exe, operands, tmp_path, real, runner).reshape(expected.shape), expected


def _ids(schedule: Schedule) -> str:
    return f"{schedule.strategy}-{schedule.block_q}x{schedule.block_k}-s{schedule.splits}"


@pytest.mark.parametrize("schedule", SCHEDULES, ids=_ids)
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_oracle_over_a_float16_cache_is_exact(block, schedule, tmp_path):
    """The DNF printed whole in double, each cached element read as the half's value (moa/half.h),
    agrees with PyTorch float64 over the same halves to 1e-12."""
    build = lambda spec: build_harness(spec, schedule, tmp_path, real="double")  # noqa: E731
    code = emit_oracle_kernel(make(block, 1)[0], schedule, "kernel")
    assert "const uint16_t *restrict K" in code and "moa_f16_to_f32(" in code and "KS[" not in code
    for length, got, expected in _runs(block, tmp_path, "double", build):
        assert np.max(np.abs(got - expected)) <= 1e-12, (length, np.max(np.abs(got - expected)))


@pytest.mark.parametrize("schedule", SCHEDULES, ids=_ids)
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_micro_kernels_over_a_float16_cache_meet_tolerance(block, schedule, tmp_path):
    """The production kernel: the same loop nest as over a float cache, its score and P V calls the
    _f16 kernels (K, V halves in place, no scales), every other call the float ones."""
    board = require_board("host")
    spec = make(block, 1)[0]
    code = emit_kernel(spec, schedule, "kernel")
    softmax = "moa_attn_softmax_f32(" if schedule.strategy == "online" else "moa_attn_exp_f32("
    assert "moa_attn_scores_f32_f16(" in code and "moa_attn_pv_f32_f16(" in code and softmax in code
    assert "k_pack" not in code and "v_pack" not in code and "red1" not in code and "KS" not in code
    float_code = emit_kernel(dataclasses.replace(spec, kv_dtype="float32"), schedule, "kernel")
    # one loop nest: the two differ only in the K/V type and the two kernel names
    assert code.replace("const uint16_t *restrict", "const float *restrict").replace("_f32_f16(", "_f32(") == float_code
    assert (decode_form(spec, schedule) and schedule.splits > 1) == ("moa_attn_pv_f32(1," in code)
    build = lambda spec: build_harness(spec, schedule, tmp_path, cflags=board.toolchain["cflags"])  # noqa: E731
    for length, got, expected in _runs(block, tmp_path, "float", build):
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
            for length, got, expected in _runs(block, tmp_path, "float", build, board.runner()):
                assert cmp.compare(got, expected)["ok"], (block.name, schedule, length, cmp.compare(got, expected))


# --- generation builds with a float16 cache -------------------------------------------------

MAX_CONTEXT, CHUNK = 48, 4
PROMPT_LEN, NEW = 11, 16  # two whole prefill chunks, then three single steps, then the decode steps
RELATIVE_LOGITS = 1e-4  # as the float cache's builds (test_generate): within 1e-4 of the largest |logit|
# GQA in the decode form and the TorchScript decomposition; the ONNX Attention op (dynamo, opset 23),
# whose cache the rewrite appends; GPT-2 (MHA, the head form of the kernel).
CASES = [("llama", "torchscript", 17), ("llama", "dynamo", 23), ("gpt2", "torchscript", 17)]


def to_half_rows(x: torch.Tensor) -> torch.Tensor:
    """x as the cache holds it: rounded to float32 (what the build computes), then to the nearest
    half (torch: ties to even), the half's value in x's own type (float64)."""
    return x.to(torch.float32).to(torch.float16).to(x.dtype)


def half_cache_class():
    from transformers import DynamicCache

    class HalfCache(DynamicCache):
        """transformers' cache, every key and value rounded to float16 as it is stored: attention then
        reads the halves (those of the current tokens included, as the build does)."""

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            return super().update(to_half_rows(key_states), to_half_rows(value_states), layer_idx, *args, **kwargs)

    return HalfCache


_DOUBLE: dict = {}


def reference_logits(case, ids, halves: bool) -> np.ndarray:
    """Teacher-forced logits [len(ids), vocab]: the torch model in float64 on the whole sequence,
    its cache rounding each key and value to float16 (halves) or the float model (not)."""
    import copy
    model = _DOUBLE.setdefault(id(case.model), copy.deepcopy(case.model).double().eval())
    tokens = torch.tensor([list(ids)], dtype=torch.int64)
    with torch.no_grad():
        if not halves:
            return model(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=False).logits[0].numpy()
        cache = half_cache_class()(config=model.config)
        out = model(input_ids=tokens, attention_mask=torch.ones_like(tokens), cache=cache, use_cache=True)
    return out.logits[0].numpy()


def reference_greedy(case, prompt, new: int) -> list[int]:
    """Greedy tokens of the float64 model over the float16 cache."""
    ids = list(prompt)
    for _ in range(new):
        ids.append(int(np.argmax(reference_logits(case, ids, halves=True)[-1])))
    return ids[len(prompt):]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("kv_f16")


_PRINTED: dict = {}  # what `moa-edge convert` printed, per project


def _project(folder, family, exporter, opset, board=None, kv_cache="fp16"):
    """The decoder converted for generation by the CLI itself (in this process)."""
    import decoders
    from moa_edge import cli
    case = decoders.cached_decoder(family, exporter, opset, folder)
    name = board.name if board else "host"
    project = folder / f"p-{family}-{exporter}{opset}-{kv_cache}-{name}"
    if not project.exists():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["convert", str(case.path), "-o", str(project), "--board", name, "--max-context",
                             str(MAX_CONTEXT), "--prefill-chunk", str(CHUNK), "--kv-cache", kv_cache])
        assert code == 0
        _PRINTED[project] = out.getvalue()
    return case, project


def _prompt(case, n: int = PROMPT_LEN) -> list[int]:
    return [int(t) for t in np.random.default_rng(0).integers(0, case.geometry.vocab, n)]


ACCURACY: dict = {}  # what the float16 cache gives up against the float model, reported as the tests run


def _check(case, project, board) -> dict:
    from moa_edge.harness.build import build
    from moa_edge.harness.generation import generate_ids, generation_info
    binary, info = build(project, board), generation_info(project)
    prompt = _prompt(case)
    want = reference_greedy(case, prompt, NEW)
    got = generate_ids(binary, board, info, prompt, NEW)
    assert got["tokens"] == want
    forced = generate_ids(binary, board, info, prompt, NEW, forced_ids=want)["logits"]
    rows = slice(PROMPT_LEN - 1, PROMPT_LEN - 1 + NEW)
    halves = reference_logits(case, prompt + want, halves=True)[rows]
    exact = reference_logits(case, prompt + want, halves=False)[rows]
    error = np.abs(forced - halves).max() / np.abs(halves).max()
    assert error < RELATIVE_LOGITS, error
    # The reference's rounding is not a no-op: the float model is farther from it than the build
    # is, so the tolerance above tells the two caches apart. (Not by 10x as for int8: where a key or
    # value lies within float32's rounding of a half-way point, the build's float32 and the
    # reference's float64 round it to neighbouring halves, one half ulp apart; GPT-2's logits then
    # differ by 4e-5 of the largest while the float cache is 5e-4 from the half one.)
    given_up = np.abs(forced - exact).max() / np.abs(exact).max()
    assert given_up > 5 * error, (given_up, error)
    return {"max_abs_logit_error_vs_float": float(np.abs(forced - exact).max()),
            "max_rel_logit_error_vs_float": float(given_up),
            "top1_agreement_vs_float": float(np.mean(forced.argmax(-1) == exact.argmax(-1))),
            "rel_logit_error_vs_half_reference": float(error)}


@pytest.mark.parametrize("family,exporter,opset", CASES)
def test_greedy_tokens_and_logits_equal_the_half_cache_reference_on_the_host(folder, family, exporter, opset):
    """With --kv-cache fp16 the build gives the greedy tokens of the float64 model whose cache rounds
    every key and value to float16, and its teacher-forced logits within 1e-4; against the float
    model it gives up a little (reported, loosely bounded)."""
    case, project = _project(folder, family, exporter, opset)
    report = json.loads((project / "report.json").read_text())
    assert report["generation"]["kv_cache"] == "float16"
    assert report["attention_blocks"] and all(b.get("kv_dtype") == "float16" for b in report["attention_blocks"])
    accuracy = ACCURACY[f"{family}-{exporter}{opset}"] = _check(case, project, load_board("host"))
    print(f"\n{family}-{exporter}{opset}: {accuracy}")
    assert accuracy["top1_agreement_vs_float"] >= 0.9 and accuracy["max_rel_logit_error_vs_float"] < 0.02


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["rpi4", "k230"])
def test_greedy_generation_with_a_float16_cache_on_the_emulated_boards(folder, board_name):
    board = require_board(board_name)
    case, project = _project(folder, "llama", "torchscript", 17, board)
    print(f"\n{board_name}: {_check(case, project, board)}")


def test_state_bytes_are_the_half_caches_and_the_position(folder):
    """MODEL_STATE_BYTES: the 64-byte header holding the position, then per layer and K/V a cache of
    kv_heads x max_context x head_dim halves, nothing else (no scales): exactly half the float
    cache's bytes; convert prints the same formula."""
    case, project = _project(folder, "llama", "torchscript", 17)
    _, float_project = _project(folder, "llama", "torchscript", 17, kv_cache="float32")
    config = case.model.config
    layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads
    head_dim = config.hidden_size // config.num_attention_heads
    macros = {}
    for name, p in (("fp16", project), ("float32", float_project)):
        header = (p / "model.h").read_text()
        macros[name] = {m: int(re.search(rf"#define MODEL_{m} (\d+)u", header).group(1))
                        for m in ("CACHE_BYTES", "STATE_BYTES", "MAX_CONTEXT")}
    assert macros["fp16"]["CACHE_BYTES"] == layers * 2 * kv_heads * MAX_CONTEXT * head_dim * 2
    assert macros["fp16"]["STATE_BYTES"] == 64 + layers * 2 * kv_heads * MAX_CONTEXT * head_dim * 2
    assert 2 * macros["fp16"]["CACHE_BYTES"] == macros["float32"]["CACHE_BYTES"]
    assert "head_dim x 2 bytes: each key and value as an IEEE" in (project / "model.h").read_text()
    report = json.loads((project / "report.json").read_text())
    assert report["memory"]["state_bytes"] == macros["fp16"]["STATE_BYTES"]
    assert (f"({layers} layers x 2 x {kv_heads} heads x {MAX_CONTEXT} x {head_dim} x 2), "
            f"state {macros['fp16']['STATE_BYTES']} B") in _PRINTED[project]
    model_c = (project / "model.c").read_text()
    assert "moa_attn_round_f16(" in model_c and "moa_attn_quantize_s8" not in model_c


def test_the_c_api_over_a_float16_cache_under_sanitizers(folder, tmp_path):
    """test_generate's API program on a float16 build under ASan/UBSan, state and arena exactly their
    stated sizes: filling the cache to max_context writes no byte past the state."""
    from test_generate import API_PROGRAM
    from moa_edge.harness.build import build
    require_board("host")
    _, project = _project(folder, "llama", "torchscript", 17)
    program = tmp_path / "api.c"
    program.write_text(API_PROGRAM)
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]
    build(project, load_board("host"), extra_cflags=sanitize, extra_ldflags=sanitize[:1], variant="host-asan")
    exe = tmp_path / "api"
    subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", *sanitize, f"-I{project}",
                    f"-I{project / 'runtime' / 'include'}", str(program),
                    str(project / "build" / "host-asan" / "libmodel.a"), "-lm", "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["uninitialised=7", "empty=4", "too_long=6", "bad_token=5", "position=0",
                                  f"filled={MAX_CONTEXT}", "one_more=6", f"position={MAX_CONTEXT}", "small_arena=2"]


def test_kv_cache_fp16_needs_a_generation_build(folder):
    from moa_edge import cli
    import decoders
    case = decoders.cached_decoder("llama", "torchscript", 17, folder)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["convert", str(case.path), "-o", str(folder / "no-context"), "--kv-cache", "fp16"])
    assert code != 0 and err.getvalue().startswith("moa-edge: error:") and "--max-context" in err.getvalue()
    assert not (folder / "no-context").exists()
