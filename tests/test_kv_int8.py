"""An int8 key/value cache (issue 14, item 4): `convert --max-context N --kv-cache int8` keeps each
cached key and value row as int8 with one float32 scale per (layer, K or V, kv head, position);
attention widens the rows in registers, and its scores, softmax and sums stay float32.

The expected values never come from moa-edge: the ONF kernels against PyTorch float64 attention
over keys and values quantized and dequantized by numpy (the float32 steps of the contract:
scale = max|x| / 127, q = round-half-even(x / scale)); the generation builds against the torch
model in float64 whose cache update quantizes the same way (`QuantizedCache` below)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
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


# --- the ONF kernels over an int8 cache ------------------------------------------------------

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
# (schedule, whether it is the decode form for a grouped block): stacked rows, split keys, the head
# form (Br <= Sq), the two-pass form
SCHEDULES = [Schedule("online", 64, 16), Schedule("online", 64, 16, 3), Schedule("online", 4, 8),
             Schedule("two_pass", 4, 16)]


def lengths(block: Block) -> list[int]:
    return [block.sq, min(block.skv, 37 + block.sq), block.skv]


def make(block: Block, length: int, seed: int = 0):
    """(spec, operands, PyTorch float64 output over the dequantized cache) for L = length."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, block.hq, block.sq, block.d))
    k = (rng.standard_normal((1, block.hkv, block.skv, block.d)) * rng.uniform(0.2, 3, (1, block.hkv, block.skv, 1)))
    v = rng.standard_normal((1, block.hkv, block.skv, block.dv))
    (k8, ks), (v8, vs) = quantize_rows(k), quantize_rows(v)
    scales = Layout.row_major((1, block.hkv, block.skv))
    spec = AttentionSpec(1, block.hq, block.hkv, block.sq, block.skv, block.d, block.dv, 1 / math.sqrt(block.d),
                         True, "none", -math.inf, Layout.row_major(q.shape), Layout.row_major(k.shape),
                         Layout.row_major(v.shape), Layout.row_major((1, block.hq, block.sq, block.dv)), None,
                         causal_offset=-block.sq, kv_lengths=True, kv_dtype="int8", k_scale=scales, v_scale=scales)
    group = block.hq // block.hkv
    keys = torch.from_numpy(dequantize(k8, ks)[:, :, :length]).repeat_interleave(group, 1)
    values = torch.from_numpy(dequantize(v8, vs)[:, :, :length]).repeat_interleave(group, 1)
    hidden = torch.arange(length) > torch.arange(block.sq)[:, None] + length - block.sq
    bias = torch.zeros(block.sq, length, dtype=torch.float64).masked_fill(hidden, -math.inf)
    y = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q), keys, values, attn_mask=bias,
                                                         scale=spec.scale)
    y = torch.where(hidden.all(-1, keepdim=True), 0.0, y)
    operands = {"q": q, "k": k8, "v": v8, "ks": ks, "vs": vs, "l": np.array([length], np.int64)}
    return spec, operands, y.numpy(), k, v


def run_kernel(exe, operands: dict, workdir, real: str, runner=()) -> np.ndarray:
    args = []
    for name in ("q", "k", "v", "ks", "vs", "l"):
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


def _runs(block, schedule, tmp_path, real, build, runner=()):
    spec = make(block, block.skv)[0]
    exe = build(spec)
    for length in lengths(block):
        _, operands, expected, _, _ = make(block, length)
        yield length, run_kernel(exe, operands, tmp_path, real, runner).reshape(expected.shape), expected


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"{s.strategy}-{s.block_q}x{s.block_k}-s{s.splits}")
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_oracle_over_an_int8_cache_is_exact(block, schedule, tmp_path):
    """The DNF printed whole in double, each cached element read as its int8 value times its row's
    scale, agrees with PyTorch float64 over the dequantized cache to 1e-12."""
    build = lambda spec: build_harness(spec, schedule, tmp_path, real="double")  # noqa: E731
    code = emit_oracle_kernel(make(block, 1)[0], schedule, "kernel")
    assert "const int8_t *restrict K" in code and "KS[" in code and "VS[" in code
    for length, got, expected in _runs(block, schedule, tmp_path, "double", build):
        assert np.max(np.abs(got - expected)) <= 1e-12, (length, np.max(np.abs(got - expected)))


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"{s.strategy}-{s.block_q}x{s.block_k}-s{s.splits}")
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_micro_kernels_over_an_int8_cache_meet_tolerance(block, schedule, tmp_path):
    """The production kernel: the same loop nest as over a float cache, its score and P V calls the
    _s8 kernels (K, V int8 in place, their scales beside them), every other call the float ones."""
    board = require_board("host")
    spec = make(block, 1)[0]
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
    for length, got, expected in _runs(block, schedule, tmp_path, "float", build):
        assert cmp.compare(got, expected)["ok"], (length, cmp.compare(got, expected))


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["rpi4", "k230"])
def test_micro_kernels_over_an_int8_cache_on_the_boards(board_name, tmp_path):
    """The same on the boards' own _s8 kernels (NEON under qemu-aarch64, RVV under qemu-riscv64)."""
    board = require_board(board_name)
    for block in (BLOCKS[1], BLOCKS[3]):
        for schedule in (SCHEDULES[0], SCHEDULES[1], SCHEDULES[2]):
            build = lambda spec: build_harness(spec, schedule, tmp_path, cc=board.compiler(),  # noqa: E731
                                               cflags=board.toolchain["cflags"], ldflags=board.toolchain["ldflags"])
            for length, got, expected in _runs(block, schedule, tmp_path, "float", build, board.runner()):
                assert cmp.compare(got, expected)["ok"], (block.name, schedule, length, cmp.compare(got, expected))


# --- generation builds with an int8 cache -------------------------------------------------

MAX_CONTEXT, CHUNK = 48, 4
PROMPT_LEN, NEW = 11, 16  # two whole prefill chunks, then three single steps, then the decode steps
RELATIVE_LOGITS = 1e-4  # as the float cache's builds (test_generate): within 1e-4 of the largest |logit|
# The families and forms: the decomposed attention (TorchScript) with GQA, MQA and MHA (GPT-2, the head
# form of the kernel), and the ONNX Attention op (dynamo, opset 23), whose cache the rewrite appends.
CASES = [("llama", "torchscript", 17), ("llama", "dynamo", 23), ("llama-mqa", "torchscript", 17),
         ("qwen2", "torchscript", 17), ("phi3", "dynamo", 23), ("gpt2", "torchscript", 17)]


def fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """Rows of x quantized and dequantized as the cache stores them: the float32 steps of the
    contract on x rounded to float32, the result q * scale exact in x's own type (float64)."""
    x32 = x.to(torch.float32)
    scale = x32.abs().amax(dim=-1, keepdim=True) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.where(scale > 0, torch.round(x32 / safe).clamp(-127, 127), torch.zeros_like(x32))
    return q.to(x.dtype) * scale.to(x.dtype)


def quantized_cache_class():
    from transformers import DynamicCache

    class QuantizedCache(DynamicCache):
        """transformers' cache, every key and value row quantized as it is stored: attention then
        reads the dequantized rows (those of the current tokens included, as the build does)."""

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            return super().update(fake_quantize(key_states), fake_quantize(value_states), layer_idx, *args, **kwargs)

    return QuantizedCache


_DOUBLE: dict = {}


def reference_logits(case, ids, quantized: bool) -> np.ndarray:
    """Teacher-forced logits [len(ids), vocab]: the torch model in float64 on the whole sequence,
    its cache quantizing each row (quantized) or the float model (not)."""
    import copy
    model = _DOUBLE.setdefault(id(case.model), copy.deepcopy(case.model).double().eval())
    tokens = torch.tensor([list(ids)], dtype=torch.int64)
    with torch.no_grad():
        if not quantized:
            return model(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=False).logits[0].numpy()
        cache = quantized_cache_class()(config=model.config)
        out = model(input_ids=tokens, attention_mask=torch.ones_like(tokens), cache=cache, use_cache=True)
    return out.logits[0].numpy()


def reference_greedy(case, prompt, new: int) -> list[int]:
    """Greedy tokens of the float64 model over the quantizing cache."""
    ids = list(prompt)
    for _ in range(new):
        ids.append(int(np.argmax(reference_logits(case, ids, quantized=True)[-1])))
    return ids[len(prompt):]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("kv_int8")


def _project(folder, family, exporter, opset, board=None, kv_cache="int8"):
    import decoders
    from moa_edge.pipeline import convert
    case = decoders.cached_decoder(family, exporter, opset, folder)
    name = board.name if board else "host"
    project = folder / f"p-{family}-{exporter}{opset}-{kv_cache}-{name}"
    if not project.exists():
        convert(case.path, project, board=board, max_context=MAX_CONTEXT, prefill_chunk=CHUNK, kv_cache=kv_cache)
    return case, project


def _prompt(case, n: int = PROMPT_LEN) -> list[int]:
    return [int(t) for t in np.random.default_rng(0).integers(0, case.geometry.vocab, n)]


ACCURACY: dict = {}  # what the int8 cache gives up against the float model, reported at the end


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
    quantized = reference_logits(case, prompt + want, quantized=True)[rows]
    exact = reference_logits(case, prompt + want, quantized=False)[rows]
    error = np.abs(forced - quantized).max() / np.abs(quantized).max()
    assert error < RELATIVE_LOGITS, error
    # The reference's quantization is not a no-op: the float model is farther from it than the
    # build is, so the tolerance above tells the two caches apart.
    given_up = np.abs(forced - exact).max() / np.abs(exact).max()
    assert given_up > 10 * error
    return {"max_abs_logit_error_vs_float": float(np.abs(forced - exact).max()),
            "max_rel_logit_error_vs_float": float(given_up),
            "top1_agreement_vs_float": float(np.mean(forced.argmax(-1) == exact.argmax(-1))),
            "rel_logit_error_vs_quantized_reference": float(error)}


@pytest.mark.parametrize("family,exporter,opset", CASES)
def test_greedy_tokens_and_logits_equal_the_quantized_cache_reference_on_the_host(folder, family, exporter, opset):
    """With --kv-cache int8 the build gives the greedy tokens of the float64 model whose cache
    quantizes every row the same way, and its teacher-forced logits within 1e-4; against the
    float model it gives up a little (reported, loosely bounded)."""
    case, project = _project(folder, family, exporter, opset)
    report = json.loads((project / "report.json").read_text())
    assert report["generation"]["kv_cache"] == "int8"
    assert all(b.get("kv_dtype") == "int8" for b in report["attention_blocks"])
    accuracy = ACCURACY[f"{family}-{exporter}{opset}"] = _check(case, project, load_board("host"))
    print(f"\n{family}-{exporter}{opset}: {accuracy}")
    assert accuracy["top1_agreement_vs_float"] >= 0.8 and accuracy["max_rel_logit_error_vs_float"] < 0.2


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["rpi4", "k230"])
def test_greedy_generation_with_an_int8_cache_on_the_emulated_boards(folder, board_name):
    board = require_board(board_name)
    case, project = _project(folder, "qwen2", "torchscript", 17, board)
    _check(case, project, board)


def test_state_bytes_are_the_int8_caches_their_scales_and_the_position(folder):
    """MODEL_STATE_BYTES: the 64-byte header, then per layer and K/V an int8 cache of kv_heads x
    max_context x head_dim bytes and its float32 scales, kv_heads x max_context x 4, each array
    from a 64-byte boundary; the caches are (head_dim + 4) / (4 head_dim) of the float ones."""
    def align(n):
        return (n + 63) // 64 * 64

    case, project = _project(folder, "llama", "torchscript", 17)
    _, float_project = _project(folder, "llama", "torchscript", 17, kv_cache="float32")
    config = case.model.config
    layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads
    head_dim = config.hidden_size // config.num_attention_heads
    rows = kv_heads * MAX_CONTEXT
    macros = {}
    for name, p in (("int8", project), ("float32", float_project)):
        header = (p / "model.h").read_text()
        macros[name] = {m: int(re.search(rf"#define MODEL_{m} (\d+)u", header).group(1))
                        for m in ("CACHE_BYTES", "STATE_BYTES", "MAX_CONTEXT")}
    assert macros["int8"]["CACHE_BYTES"] == layers * 2 * (rows * head_dim + rows * 4)
    assert macros["int8"]["STATE_BYTES"] == 64 + layers * 2 * (align(rows * head_dim) + align(rows * 4))
    assert macros["float32"]["CACHE_BYTES"] == layers * 2 * rows * head_dim * 4
    assert macros["int8"]["CACHE_BYTES"] / macros["float32"]["CACHE_BYTES"] == (head_dim + 4) / (4 * head_dim)
    assert "int8 and its float32 scale" in (project / "model.h").read_text()


def test_the_c_api_over_an_int8_cache_under_sanitizers(folder, tmp_path):
    """test_generate's API program on an int8 build under ASan/UBSan, state and arena exactly their
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


def test_kv_cache_needs_a_generation_build_and_a_known_type(folder):
    from conftest import one_error, run_cli
    import decoders
    case = decoders.cached_decoder("llama", "torchscript", 17, folder)
    one_error(run_cli("convert", case.path, "-o", folder / "no-context", "--kv-cache", "int8"),
              "--kv-cache", "--max-context")
    one_error(run_cli("convert", case.path, "-o", folder / "int4", "--max-context", "16", "--kv-cache", "int4"),
              "--kv-cache", "int4")
