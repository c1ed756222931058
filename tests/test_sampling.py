"""The token sampler of the C runtime (c_runtime/src/sampling.c) and its Python mirror
(moa_edge/harness/sampling.py), against PCG32's published output, numpy's argmax and
transformers' own logits warpers.

The host tests call the C code in process through cffi (ABI mode, declarations read from the
header itself). A small driver program runs it again built with AddressSanitizer and UBSan, with
heap scratch of exactly MOA_SAMPLING_SCRATCH_ELEMS, and on the emulated boards."""
from __future__ import annotations

import re
import struct
import subprocess

import cffi
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from conftest import SANITIZE, require_board
from moa_edge import C_RUNTIME_DIR
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.sampling import Pcg32, Sampling, argmax, sample, sampling_probs

INCLUDE = C_RUNTIME_DIR / "include"
SOURCE = C_RUNTIME_DIR / "src" / "sampling.c"
WARNINGS = ("-std=c99", "-Wall", "-Wextra", "-Werror")

# imneme/pcg-c, test-high/expected/check-pcg32.out (also pcg-c-basic's pcg32-demo): the first six
# outputs of pcg32_random_r after pcg32_srandom_r(&rng, 42u, 54u).
PCG32_DEMO_42_54 = [0xa15c02b7, 0x7b47f409, 0xba1d3330, 0x83d2f293, 0xbfa4784b, 0xcbed606e]

# The chi-square distribution's 0.999 quantile by degrees of freedom (standard tables, e.g. the
# NIST/SEMATECH e-Handbook of Statistical Methods, 1.3.6.7.4).
CHI2_999 = {4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322, 8: 26.124, 9: 27.877}


def _declarations(header: str) -> str:
    """A header without its preprocessor lines: what cffi's cdef reads."""
    return "\n".join(line for line in (INCLUDE / "moa" / header).read_text().splitlines()
                     if not line.startswith("#"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("sampling")


@pytest.fixture(scope="module")
def lib(workdir):
    """sampling.c as a shared library, with its header's declarations."""
    cc = require_board("host").compiler()
    so = workdir / "libmoa_sampling.so"
    cmd = [cc, "-O2", *WARNINGS, "-fPIC", "-shared", f"-I{INCLUDE}", str(SOURCE), "-o", str(so), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ffi = cffi.FFI()
    ffi.cdef(_declarations("status.h") + _declarations("sampling.h"))
    return ffi, ffi.dlopen(str(so))


class C:
    """The C sampler with numpy in and out, scratch of exactly MOA_SAMPLING_SCRATCH_ELEMS."""

    def __init__(self, lib, seed: int = 0):
        self.ffi, self.lib = lib
        self.rng = self.ffi.new("moa_rng *")
        self.lib.moa_rng_seed(self.rng, seed)

    def _params(self, sampling: Sampling):
        return self.ffi.new("moa_sampling *", (sampling.temperature, sampling.top_k, sampling.top_p))

    def _floats(self, array):
        return self.ffi.from_buffer("float[]", array)

    def sample(self, logits: np.ndarray, sampling: Sampling, alias: bool = False) -> int:
        logits = np.ascontiguousarray(logits, np.float32)
        work = logits if alias else np.empty(max(logits.size, 1), np.float32)
        index_work = np.empty(max(logits.size, 1), np.int32)
        token = self.ffi.new("int32_t *", -7)
        status = self.lib.moa_sample_f32(self._floats(logits), logits.size, self._params(sampling), self.rng,
                                         self._floats(work), self.ffi.from_buffer("int32_t[]", index_work), token)
        assert status == self.lib.MOA_OK
        return token[0]

    def probs(self, logits: np.ndarray, sampling: Sampling, alias: bool = False) -> np.ndarray:
        logits = np.array(logits, np.float32)  # a copy: with alias the probabilities overwrite it
        probs = logits if alias else np.empty(logits.size, np.float32)
        index_work = np.empty(logits.size, np.int32)
        status = self.lib.moa_sampling_probs_f32(self._floats(logits), logits.size, self._params(sampling),
                                                 self._floats(probs), self.ffi.from_buffer("int32_t[]", index_work))
        assert status == self.lib.MOA_OK
        return probs


def transformers_probs(logits: np.ndarray, sampling: Sampling) -> np.ndarray:
    """softmax after the warpers generate(do_sample=True) adds, in its order and on its conditions
    (transformers' _get_logits_processor: temperature != 1, top_k != 0, top_p < 1)."""
    scores = torch.from_numpy(np.asarray(logits, np.float32).copy())[None]
    if sampling.temperature != 1:
        scores = TemperatureLogitsWarper(float(sampling.temperature))(None, scores)
    if sampling.top_k:
        scores = TopKLogitsWarper(top_k=int(sampling.top_k))(None, scores)
    if sampling.top_p < 1:
        scores = TopPLogitsWarper(top_p=float(sampling.top_p))(None, scores)
    return torch.softmax(scores, dim=-1)[0].numpy()


# --- (a) the PRNG -------------------------------------------------------------------------------

def test_pcg32_gives_the_published_reference_outputs(lib):
    c = C(lib, seed=42)  # moa_rng_seed uses stream MOA_RNG_STREAM = 54
    assert [c.lib.moa_rng_next_u32(c.rng) for _ in PCG32_DEMO_42_54] == PCG32_DEMO_42_54
    mirror = Pcg32(42)
    assert [mirror.next_u32() for _ in PCG32_DEMO_42_54] == PCG32_DEMO_42_54


def test_uniform_is_one_output_times_two_to_the_minus_32(lib):
    c, mirror, check = C(lib, seed=7), Pcg32(7), Pcg32(7)
    for _ in range(1000):
        u = c.lib.moa_rng_uniform(c.rng)
        assert u == mirror.uniform() == check.next_u32() / 4294967296.0
        assert 0 <= u < 1
    assert (c.rng.state, c.rng.inc) == (mirror.state, mirror.inc)


# --- (b) greedy -----------------------------------------------------------------------------------

def test_greedy_is_numpy_argmax_with_ties_nan_and_infinities(lib):
    rng = np.random.default_rng(1)
    cases = [rng.integers(-3, 4, size=int(rng.integers(1, 60))).astype(np.float32) for _ in range(300)]  # ties
    cases += [rng.standard_normal(5000).astype(np.float32) for _ in range(20)]
    cases += [np.array([1, np.nan, 5, np.nan], np.float32), np.array([np.nan], np.float32),
              np.array([-np.inf, -np.inf], np.float32), np.array([-np.inf, np.inf, 3, np.inf], np.float32),
              np.full(7, 2.5, np.float32), np.array([0.0, -0.0], np.float32)]
    c = C(lib, seed=3)
    before = (c.rng.state, c.rng.inc)
    for logits in cases:
        expected = int(np.argmax(logits))
        assert c.lib.moa_argmax_f32(c._floats(logits), logits.size) == expected
        assert argmax(logits) == expected
        assert c.sample(logits, Sampling(temperature=0.0, top_k=5, top_p=0.5)) == expected
        for alias in (False, True):
            probs = c.probs(logits, Sampling(), alias=alias)
            assert probs[expected] == 1 and probs.sum() == 1
    assert (c.rng.state, c.rng.inc) == before  # greedy takes nothing from the rng
    assert c.lib.moa_argmax_f32(c.ffi.NULL, 3) == -1
    assert c.lib.moa_argmax_f32(c._floats(np.ones(3, np.float32)), 0) == -1


# --- (c) the warpers --------------------------------------------------------------------------------

GRID = [Sampling(t, k, p) for t in (0.5, 1.0, 1.7) for k in (0, 1, 7, 50) for p in (1.0, 0.9, 0.5, 0.05)]


@pytest.mark.parametrize("sampling", GRID, ids=lambda s: f"t{s.temperature:g}-k{s.top_k}-p{s.top_p:g}")
def test_probabilities_are_transformers_warpers(lib, sampling):
    rng = np.random.default_rng(int(sampling.temperature * 10) + sampling.top_k)
    c = C(lib)
    for vocab in (1, 2, 40, 2000):
        for _ in range(3):
            logits = (rng.standard_normal(vocab) * 3).astype(np.float32)
            expected = transformers_probs(logits, sampling)
            got = c.probs(logits, sampling)
            np.testing.assert_array_equal(np.flatnonzero(got), np.flatnonzero(expected))
            np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-9)
            np.testing.assert_allclose(sampling_probs(logits, sampling), got, rtol=1e-6, atol=0)
            np.testing.assert_array_equal(c.probs(logits, sampling, alias=True), got)  # probs may be the logits


def test_top_k_keeps_every_token_tied_with_the_kth(lib):
    rng = np.random.default_rng(5)
    c = C(lib)
    for _ in range(50):
        logits = np.round(rng.standard_normal(300) * 2, 1).astype(np.float32)  # many repeated values
        for k in (1, 3, 10, 40):
            sampling = Sampling(0.8, k, 1.0)
            expected = transformers_probs(logits, sampling)
            got = c.probs(logits, sampling)
            np.testing.assert_array_equal(np.flatnonzero(got), np.flatnonzero(expected))
            np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-9)
    logits = np.array([9, 5, 1, 5, 7, 5, 0], np.float32)
    kept = np.flatnonzero(c.probs(logits, Sampling(1.0, 3, 1.0)))
    assert list(kept) == [0, 1, 3, 4, 5]  # 9, 7 and all three 5s


def test_top_p_ties_keep_the_lower_token_ids(lib):
    """transformers sorts with torch.sort (unstable), so which of tied tokens it keeps at the
    boundary is unspecified; the count is not. Ours keeps the lower ids."""
    c = C(lib)
    logits = np.zeros(10, np.float32)
    sampling = Sampling(1.0, 0, 0.25)
    assert np.count_nonzero(transformers_probs(logits, sampling)) == 3
    assert list(np.flatnonzero(c.probs(logits, sampling))) == [0, 1, 2]
    assert list(np.flatnonzero(sampling_probs(logits, sampling))) == [0, 1, 2]


# --- (d) C against the mirror, draw by draw ---------------------------------------------------------

MIRRORED = [Sampling(1.0), Sampling(0.7), Sampling(1.3, 40), Sampling(1.0, 0, 0.9), Sampling(0.6, 50, 0.95),
            Sampling(2.0, 5, 0.3), Sampling(1.0, 1), Sampling(0.9, 0, 0.01)]


@pytest.mark.parametrize("sampling", MIRRORED, ids=lambda s: f"t{s.temperature:g}-k{s.top_k}-p{s.top_p:g}")
def test_c_draws_equal_the_mirror_token_for_token(lib, sampling):
    seed = 1000 + sampling.top_k
    rng = np.random.default_rng(seed)
    c, mirror = C(lib, seed), Pcg32(seed)
    drawn = []
    for step in range(200):
        logits = (rng.standard_normal(3000) * 2.5).astype(np.float32)
        kept = logits.copy()
        token = c.sample(logits, sampling, alias=step % 2 == 1)  # odd steps: work is the logits
        if step % 2 == 0:
            np.testing.assert_array_equal(logits, kept)  # the logits are only read
        assert token == sample(kept, sampling, mirror), f"step {step}"
        drawn.append(token)
    assert (c.rng.state, c.rng.inc) == (mirror.state, mirror.inc)  # one output per draw, both sides
    assert len(set(drawn)) > 1 or sampling.top_k == 1 or sampling.top_p < 0.05


# --- (e) draws follow the probabilities ---------------------------------------------------------------

def test_draw_frequencies_follow_transformers_probabilities(lib):
    logits = np.array([2.0, 1.5, 1.4, 0.9, 0.5, 0.4, 0.0, -0.3, -1.0, -2.0, -2.5, -4.0], np.float32)
    sampling = Sampling(0.9, 9, 0.97)
    expected = transformers_probs(logits, sampling)
    kept = np.flatnonzero(expected)
    assert len(kept) - 1 in CHI2_999
    c, draws = C(lib, seed=2026), 20000
    counts = np.bincount([c.sample(logits, sampling) for _ in range(draws)], minlength=logits.size)
    assert counts[expected == 0].sum() == 0
    chi2 = float(np.sum((counts[kept] - draws * expected[kept]) ** 2 / (draws * expected[kept])))
    assert chi2 < CHI2_999[len(kept) - 1], (chi2, counts, expected)


# --- (f) bad parameters -----------------------------------------------------------------------------

BAD_VALUES = [(-1.0, 0, 1.0), (float("nan"), 0, 1.0), (float("inf"), 0, 1.0), (1.0, -1, 1.0), (1.0, 0, 0.0),
              (1.0, 0, -0.1), (1.0, 0, 1.5), (1.0, 0, float("nan")), (0.0, -3, 1.0)]


@pytest.mark.parametrize("values", BAD_VALUES, ids=str)
def test_bad_params_are_refused(lib, values):
    ffi, clib = lib
    c = C(lib, seed=9)
    logits = np.arange(8, dtype=np.float32)
    work, index_work = np.empty(8, np.float32), np.empty(8, np.int32)
    params = ffi.new("moa_sampling *", values)
    token = ffi.new("int32_t *", -7)
    state = (c.rng.state, c.rng.inc)
    assert clib.moa_sample_f32(c._floats(logits), 8, params, c.rng, c._floats(work),
                               ffi.from_buffer("int32_t[]", index_work), token) == clib.MOA_ERR_BAD_PARAMS
    assert clib.moa_sampling_probs_f32(c._floats(logits), 8, params, c._floats(work),
                                       ffi.from_buffer("int32_t[]", index_work)) == clib.MOA_ERR_BAD_PARAMS
    assert token[0] == -7 and (c.rng.state, c.rng.inc) == state
    with pytest.raises(MoaEdgeError):
        Sampling(*values)


def test_bad_vocab_null_pointers_and_logits_without_a_maximum_are_refused(lib):
    ffi, clib = lib
    c = C(lib, seed=9)
    logits = np.arange(8, dtype=np.float32)
    work, index_work = c._floats(np.empty(8, np.float32)), ffi.from_buffer("int32_t[]", np.empty(8, np.int32))
    params = ffi.new("moa_sampling *", (1.0, 0, 1.0))
    token = ffi.new("int32_t *", -7)
    for vocab in (0, -5):
        assert clib.moa_sample_f32(c._floats(logits), vocab, params, c.rng, work, index_work,
                                   token) == clib.MOA_ERR_BAD_PARAMS
    null = ffi.NULL
    for args in [(null, 8, params, c.rng, work, index_work, token), (c._floats(logits), 8, null, c.rng, work,
                 index_work, token), (c._floats(logits), 8, params, null, work, index_work, token),
                 (c._floats(logits), 8, params, c.rng, null, index_work, token),
                 (c._floats(logits), 8, params, c.rng, work, null, token),
                 (c._floats(logits), 8, params, c.rng, work, index_work, null)]:
        assert clib.moa_sample_f32(*args) == clib.MOA_ERR_NULL_ARGUMENT
    assert clib.moa_sampling_probs_f32(c._floats(logits), 8, params, null, index_work) == clib.MOA_ERR_NULL_ARGUMENT
    for bad in ([1, np.nan, 2], [1, np.inf, 2], [-np.inf, -np.inf, -np.inf], [3e38, 1, 2]):
        bad = np.array(bad, np.float32)
        sampling = Sampling(1e-3 if bad[0] == 3e38 else 1.0)  # 3e38 / 1e-3 overflows to +inf
        params = ffi.new("moa_sampling *", (sampling.temperature, 0, 1.0))
        assert clib.moa_sample_f32(c._floats(bad), 3, params, c.rng, work, index_work,
                                   token) == clib.MOA_ERR_BAD_PARAMS
        with pytest.raises(MoaEdgeError):
            sample(bad, sampling, Pcg32(0))
    assert token[0] == -7
    logits = np.array([0.0, -np.inf, 1.0], np.float32)  # -inf: a token that is never drawn
    assert C(lib).probs(logits, Sampling(1.0))[1] == 0


# --- the sanitizers and the boards ---------------------------------------------------------------------

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "moa/sampling.h"

/* stdin: vocab, steps (int32), seed (uint64), temperature, top_k, top_p, then steps x vocab
 * float32 logits. stdout per step: the token (int32), then moa_sampling_probs_f32 (vocab float32).
 * Every buffer is malloc'ed at its exact size, so the sanitizers see any overrun. */
static void take(void *p, size_t bytes)
{
    if (fread(p, 1, bytes, stdin) != bytes) { fprintf(stderr, "short input\n"); exit(2); }
}

int main(void)
{
    int32_t vocab, steps, step, token;
    uint64_t seed;
    moa_sampling params;
    moa_rng rng;
    float *logits, *work, *probs;
    int32_t *index_work;
    take(&vocab, 4); take(&steps, 4); take(&seed, 8);
    take(&params.temperature, 4); take(&params.top_k, 4); take(&params.top_p, 4);
    logits = malloc((size_t)vocab * sizeof *logits);
    probs = malloc((size_t)vocab * sizeof *probs);
    work = malloc((size_t)MOA_SAMPLING_SCRATCH_ELEMS(vocab) * sizeof *work);
    index_work = malloc((size_t)MOA_SAMPLING_SCRATCH_ELEMS(vocab) * sizeof *index_work);
    if (!logits || !probs || !work || !index_work) { return 2; }
    moa_rng_seed(&rng, seed);
    for (step = 0; step < steps; step++) {
        take(logits, (size_t)vocab * sizeof *logits);
        if (moa_sampling_probs_f32(logits, vocab, &params, probs, index_work) != MOA_OK ||
            moa_sample_f32(logits, vocab, &params, &rng, work, index_work, &token) != MOA_OK) { return 3; }
        fwrite(&token, 4, 1, stdout);
        fwrite(probs, sizeof *probs, (size_t)vocab, stdout);
    }
    free(logits); free(probs); free(work); free(index_work);
    return 0;
}
"""

VOCAB_SMOLLM2 = 49152
DRIVEN = [(VOCAB_SMOLLM2, 4, Sampling(0.7, 0, 0.9)), (VOCAB_SMOLLM2, 4, Sampling(1.0, 50, 0.95)),
          (VOCAB_SMOLLM2, 2, Sampling(1.0)), (VOCAB_SMOLLM2, 2, Sampling(0.0)), (1, 3, Sampling(1.0, 1, 0.5)),
          (2, 20, Sampling(1.0, 1)), (2, 20, Sampling(1.5, 0, 0.6)), (300, 40, Sampling(0.8, 299, 0.99))]


def _build_driver(board_name: str, workdir):
    board = require_board(board_name)
    out = workdir / f"driver-{board_name}"
    out.mkdir(exist_ok=True)
    (out / "main.c").write_text(DRIVER)
    cflags = SANITIZE if board_name == "host" else tuple(board.toolchain["cflags"])
    ldflags = SANITIZE if board_name == "host" else tuple(board.toolchain["ldflags"])
    exe = out / "sampler"
    cmd = [board.compiler(), *cflags, *WARNINGS, f"-I{INCLUDE}", str(out / "main.c"), str(SOURCE), "-o", str(exe),
           *ldflags, "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return [*board.runner(), str(exe)]


@pytest.mark.parametrize("board_name", ["host", pytest.param("rpi4", marks=pytest.mark.board),
                                        pytest.param("k230", marks=pytest.mark.board)])
def test_driver_matches_the_mirror(board_name, workdir):
    """host: built with ASan and UBSan; rpi4, k230: their cross compilers, run under qemu."""
    command = _build_driver(board_name, workdir)
    rng = np.random.default_rng(77)
    for case, (vocab, steps, sampling) in enumerate(DRIVEN):
        logits = (rng.standard_normal((steps, vocab)) * 3).astype(np.float32)
        header = struct.pack("<iiQfif", vocab, steps, 500 + case, sampling.temperature, sampling.top_k,
                             sampling.top_p)
        proc = subprocess.run(command, input=header + logits.tobytes(), capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        record = np.dtype([("token", "<i4"), ("probs", "<f4", (vocab,))])
        got = np.frombuffer(proc.stdout, record)
        assert got.size == steps
        mirror = Pcg32(500 + case)
        for step in range(steps):
            assert got["token"][step] == sample(logits[step], sampling, mirror), (case, step)
            np.testing.assert_allclose(got["probs"][step], sampling_probs(logits[step], sampling), rtol=1e-6, atol=0)


def test_sampler_keeps_no_state_and_never_allocates():
    text = SOURCE.read_text()
    assert not re.search(r"\b(malloc|calloc|realloc|free|qsort)\s*\(", text)
    assert not re.search(r"^static\s+(?!inline)[^(]*[;=]", text, re.M), "a file-scope static"
    assert not re.search(r"^(?!static)[a-z_][a-z0-9_ ]*\s[a-z_][a-z0-9_]*\s*(\[[^]]*\])?\s*[;=]", text, re.M), \
        "a file-scope variable"
