"""Attention over a key/value cache, shared by the tests of the cache's formats (test_kv_int8,
test_kv_f16) and of the ONF decode form (test_onf): the cached block's shape, its AttentionSpec and
its PyTorch float64 reference over a run-time length; for a cache whose rows are stored otherwise
than as float32 (a `CacheFormat`), the ONF kernels run over it and the generation builds checked
against the float64 transformers model whose cache stores its rows the same way.

The expected values never come from moa-edge: PyTorch float64 attention over the values the cache
holds (each format says how a row becomes them), transformers' float64 model for the builds."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
import io
import math
import re
import subprocess
from typing import Callable

import numpy as np
import torch

from moa_edge.moa import Layout
from moa_edge.moa.onf import Schedule
from moa_edge.moa.spec import AttentionSpec
from conftest import SANITIZE


@dataclass(frozen=True)
class CachedBlock:
    """One block over a cache: batch 1, Q (1, Hq, Sq, D) row-major, K and V the cache (1, Hkv, Skv,
    D|Dv) row-major, L the run-time count of valid keys, causal_offset = -Sq (query i sees keys
    k <= i + L - Sq), as the KV-cache importer makes them."""
    name: str
    hq: int
    hkv: int
    sq: int
    skv: int
    d: int = 16
    dv: int = 16


def cached_spec(block: CachedBlock, **kv) -> AttentionSpec:
    """The block's spec, the whole cache (Skv) its key length; kv: the cache's K/V type and scales."""
    return AttentionSpec(1, block.hq, block.hkv, block.sq, block.skv, block.d, block.dv, 1 / math.sqrt(block.d),
                         True, "none", -math.inf, Layout.row_major((1, block.hq, block.sq, block.d)),
                         Layout.row_major((1, block.hkv, block.skv, block.d)),
                         Layout.row_major((1, block.hkv, block.skv, block.dv)),
                         Layout.row_major((1, block.hq, block.sq, block.dv)), None,
                         causal_offset=-block.sq, kv_lengths=True, **kv)


def reference(block: CachedBlock, q: np.ndarray, k: np.ndarray, v: np.ndarray, length: int) -> np.ndarray:
    """PyTorch float64 SDPA of q on the first `length` keys and values of the cache, the causal
    diagonal at i + L - Sq; a row that sees no key gives 0."""
    group = block.hq // block.hkv
    keys = torch.from_numpy(np.asarray(k, np.float64)[:, :, :length]).repeat_interleave(group, 1)
    values = torch.from_numpy(np.asarray(v, np.float64)[:, :, :length]).repeat_interleave(group, 1)
    hidden = torch.arange(length) > torch.arange(block.sq)[:, None] + length - block.sq
    bias = torch.zeros(block.sq, length, dtype=torch.float64).masked_fill(hidden, -math.inf)
    y = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q), keys, values, attn_mask=bias,
                                                         scale=1 / math.sqrt(block.d))
    return torch.where(hidden.all(-1, keepdim=True), 0.0, y).numpy()


@dataclass(frozen=True)
class CacheFormat:
    """How a cache stores a key/value row, and what follows from it for the tests."""
    kv_dtype: str   # the spec's and the report's K/V type ("int8", "float16")
    kv_cache: str   # the --kv-cache option that asks for it ("int8", "fp16")
    operands: tuple[str, ...]  # the kernel harness's inputs in order (the scales "ks", "vs" if it has them)
    store: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]  # rows -> (as stored, scale per row or None)
    read: Callable[[np.ndarray, np.ndarray | None], np.ndarray]  # (as stored, scales) -> the values, float64
    round_rows: Callable[[torch.Tensor], torch.Tensor]  # the float64 model's cache update: rows -> the values
    reference_name: str  # names the reference whose cache stores rows so, in the reported accuracy
    margin: float  # the float model is at least this many times farther from that reference than the build

    @property
    def scaled(self) -> bool:
        return "ks" in self.operands


# --- the ONF kernels over a cache of this format ----------------------------------------------

BLOCKS = [
    CachedBlock("step_mha", hq=2, hkv=2, sq=1, skv=64),
    CachedBlock("step_gqa3_smollm2", hq=9, hkv=3, sq=1, skv=160, d=64, dv=64),
    CachedBlock("chunk4_gqa2", hq=4, hkv=2, sq=4, skv=48),
    CachedBlock("prefill16_gqa3", hq=6, hkv=2, sq=16, skv=96, dv=8),
]
# stacked rows (the decode form), split keys, the head form (Br <= Sq), the two-pass form
SCHEDULES = [Schedule("online", 64, 16), Schedule("online", 64, 16, 3), Schedule("online", 4, 8),
             Schedule("two_pass", 4, 16)]


def schedule_id(schedule: Schedule) -> str:
    return f"{schedule.strategy}-{schedule.block_q}x{schedule.block_k}-s{schedule.splits}"


def lengths(block: CachedBlock) -> list[int]:
    return [block.sq, min(block.skv, 37 + block.sq), block.skv]


def make(fmt: CacheFormat, block: CachedBlock, length: int, seed: int = 0):
    """(spec, operands, PyTorch float64 output over the values the cache holds) for L = length."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, block.hq, block.sq, block.d))
    k = (rng.standard_normal((1, block.hkv, block.skv, block.d)) * rng.uniform(0.2, 3, (1, block.hkv, block.skv, 1)))
    v = rng.standard_normal((1, block.hkv, block.skv, block.dv))
    (k_stored, k_scale), (v_stored, v_scale) = fmt.store(k), fmt.store(v)
    scales = Layout.row_major((1, block.hkv, block.skv)) if fmt.scaled else None
    spec = cached_spec(block, kv_dtype=fmt.kv_dtype, **({"k_scale": scales, "v_scale": scales} if fmt.scaled else {}))
    y = reference(block, q, fmt.read(k_stored, k_scale), fmt.read(v_stored, v_scale), length)
    given = {"q": q, "k": k_stored, "v": v_stored, "ks": k_scale, "vs": v_scale, "l": np.array([length], np.int64)}
    return spec, {name: given[name] for name in fmt.operands}, y


def run_kernel(exe, operands: dict, workdir, real: str, runner=()) -> np.ndarray:
    """The harness on the operands in their order; K and V as stored (a half's bits, int8), Q in `real`."""
    args = []
    for name, array in operands.items():
        if name == "q":
            array = array.astype(np.float64 if real == "double" else np.float32)
        path = workdir / f"{name}.bin"
        np.ascontiguousarray(array).tofile(path)
        args.append(str(path))
    out = workdir / "y.bin"
    proc = subprocess.run([*runner, str(exe), *args, str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return np.fromfile(out, np.float64 if real == "double" else np.float32)


def runs(fmt: CacheFormat, block: CachedBlock, tmp_path, real, build, runner=()):
    """Builds the block's kernel once (build(spec)) and runs it for each length: (length, got, expected)."""
    exe = build(make(fmt, block, block.skv)[0])
    for length in lengths(block):
        _, operands, expected = make(fmt, block, length)
        yield length, run_kernel(exe, operands, tmp_path, real, runner).reshape(expected.shape), expected


# --- generation builds with a cache of this format --------------------------------------------

MAX_CONTEXT, CHUNK = 48, 4
PROMPT_LEN, NEW = 11, 16  # two whole prefill chunks, then three single steps, then the decode steps
RELATIVE_LOGITS = 1e-4  # as the float cache's builds (test_generate): within 1e-4 of the largest |logit|


def rounding_cache_class(fmt: CacheFormat):
    from transformers import DynamicCache

    class RoundingCache(DynamicCache):
        """transformers' cache, every key and value row stored as the format stores it: attention
        then reads the values the cache holds (those of the current tokens included, as the build does)."""

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            return super().update(fmt.round_rows(key_states), fmt.round_rows(value_states), layer_idx, *args, **kwargs)

    return RoundingCache


_DOUBLE: dict = {}


def reference_logits(fmt: CacheFormat, case, ids, through_cache: bool) -> np.ndarray:
    """Teacher-forced logits [len(ids), vocab]: the torch model in float64 on the whole sequence,
    its cache storing each row as the format does (through_cache) or the float model (not)."""
    import copy
    model = _DOUBLE.setdefault(id(case.model), copy.deepcopy(case.model).double().eval())
    tokens = torch.tensor([list(ids)], dtype=torch.int64)
    with torch.no_grad():
        if not through_cache:
            return model(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=False).logits[0].numpy()
        cache = rounding_cache_class(fmt)(config=model.config)
        out = model(input_ids=tokens, attention_mask=torch.ones_like(tokens), cache=cache, use_cache=True)
    return out.logits[0].numpy()


def reference_greedy(fmt: CacheFormat, case, prompt, new: int) -> list[int]:
    """Greedy tokens of the float64 model over the format's cache."""
    ids = list(prompt)
    for _ in range(new):
        ids.append(int(np.argmax(reference_logits(fmt, case, ids, through_cache=True)[-1])))
    return ids[len(prompt):]


PRINTED: dict = {}  # what `moa-edge convert` printed, per project


def converted(fmt: CacheFormat, folder, family, exporter, opset, board=None, kv_cache=None):
    """The decoder converted for generation by the CLI itself (in this process), its cache the
    format's unless kv_cache says otherwise."""
    import decoders
    from moa_edge import cli
    kv_cache = kv_cache or fmt.kv_cache
    case = decoders.cached_decoder(family, exporter, opset, folder)
    name = board.name if board else "host"
    path = folder / f"p-{family}-{exporter}{opset}-{kv_cache}-{name}"
    if not path.exists():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["convert", str(case.path), "-o", str(path), "--board", name, "--max-context",
                             str(MAX_CONTEXT), "--prefill-chunk", str(CHUNK), "--kv-cache", kv_cache])
        assert code == 0
        PRINTED[path] = out.getvalue()
    return case, path


def prompt_ids(case, n: int = PROMPT_LEN) -> list[int]:
    return [int(t) for t in np.random.default_rng(0).integers(0, case.geometry.vocab, n)]


def check_generation(fmt: CacheFormat, case, project, board) -> dict:
    """The build's greedy tokens are the float64 model's over the format's cache, its teacher-forced
    logits within RELATIVE_LOGITS of that model's; returns what it gives up against the float model."""
    from moa_edge.harness.build import build
    from moa_edge.harness.generation import generate_ids, generation_info
    binary, info = build(project, board), generation_info(project)
    prompt = prompt_ids(case)
    want = reference_greedy(fmt, case, prompt, NEW)
    got = generate_ids(binary, board, info, prompt, NEW)
    assert got["tokens"] == want
    forced = generate_ids(binary, board, info, prompt, NEW, forced_ids=want)["logits"]
    rows = slice(PROMPT_LEN - 1, PROMPT_LEN - 1 + NEW)
    stored = reference_logits(fmt, case, prompt + want, through_cache=True)[rows]
    exact = reference_logits(fmt, case, prompt + want, through_cache=False)[rows]
    error = np.abs(forced - stored).max() / np.abs(stored).max()
    assert error < RELATIVE_LOGITS, error
    # The reference's rounding is not a no-op: the float model is farther from it than the build
    # is, so the tolerance above tells the two caches apart (by fmt.margin).
    given_up = np.abs(forced - exact).max() / np.abs(exact).max()
    assert given_up > fmt.margin * error, (given_up, error)
    return {"max_abs_logit_error_vs_float": float(np.abs(forced - exact).max()),
            "max_rel_logit_error_vs_float": float(given_up),
            "top1_agreement_vs_float": float(np.mean(forced.argmax(-1) == exact.argmax(-1))),
            f"rel_logit_error_vs_{fmt.reference_name}_reference": float(error)}


def cache_shape(case) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of the decoder, from its transformers config."""
    config = case.model.config
    return config.num_hidden_layers, config.num_key_value_heads, config.hidden_size // config.num_attention_heads


def header_sizes(project) -> dict[str, int]:
    """model.h's MODEL_CACHE_BYTES, MODEL_STATE_BYTES and MODEL_MAX_CONTEXT."""
    header = (project / "model.h").read_text()
    return {m: int(re.search(rf"#define MODEL_{m} (\d+)u", header).group(1))
            for m in ("CACHE_BYTES", "STATE_BYTES", "MAX_CONTEXT")}


# What test_generate's API program prints over a build of MAX_CONTEXT positions: the status of each
# refusal (no state, no tokens, too many, a token past the vocabulary, a step past the full cache, an
# arena a byte short) and the position before and after filling the cache.
API_PROGRAM_PRINTS = ["uninitialised=7", "empty=4", "too_long=6", "bad_token=5", "position=0",
                      f"filled={MAX_CONTEXT}", "one_more=6", f"position={MAX_CONTEXT}", "small_arena=2"]


def api_program_output(project, tmp_path) -> list[str]:
    """test_generate's API program against the project's library built with ASan/UBSan, the state
    and arena on the heap exactly their stated sizes: what it printed, once it exited cleanly."""
    from test_generate import API_PROGRAM
    from moa_edge.harness.build import build
    from moa_edge.target import load_board
    program = tmp_path / "api.c"
    program.write_text(API_PROGRAM)
    build(project, load_board("host"), extra_cflags=SANITIZE, extra_ldflags=SANITIZE[:1], variant="host-asan")
    exe = tmp_path / "api"
    subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", *SANITIZE, f"-I{project}",
                    f"-I{project / 'runtime' / 'include'}", str(program),
                    str(project / "build" / "host-asan" / "libmodel.a"), "-lm", "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.split()
