"""Generation with a fixed-size key/value cache (issue 13): decoders exported with their cache by
the real exporters convert with --max-context, and the generated C (prefill chunks, then one step
per token, the cache written in place) gives transformers' own greedy tokens and float64 logits.
Expected values: transformers' generate and the torch model in float64 (tests/decoders.py)."""
import json
from pathlib import Path
import re
import subprocess

import numpy as np
import onnx
import pytest

from conftest import SANITIZE, one_error, require_board, run_cli
import decoders
from models import Case, export
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.generation import Sampling, generate_ids, generation_info
from moa_edge.harness.sampling import Pcg32, sample
from moa_edge.harness.sampling import Sampling as MirrorSampling
from moa_edge.pipeline import convert
from moa_edge.target import load_board

MAX_CONTEXT, CHUNK = 48, 4
PROMPT_LEN, NEW = 11, 16  # two whole prefill chunks, then three single steps
CASES = decoders.GENERATION_CASES
RELATIVE_LOGITS = 1e-4  # issue 13: |logit - reference| within 1e-4 of the largest |logit|


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("generate")


def _project(folder: Path, family: str, exporter: str, opset: int, max_context: int = MAX_CONTEXT):
    case = decoders.cached_decoder(family, exporter, opset, folder)
    project = folder / f"p-{family}-{exporter}{opset}-{max_context}"
    if not project.exists():
        convert(case.path, project, max_context=max_context, prefill_chunk=CHUNK)
    return case, project


def _prompt(case, n: int = PROMPT_LEN, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, case.geometry.vocab, n)]


def _check_against_reference(case, project: Path, board):
    binary, info = build(project, board), generation_info(project)
    prompt = _prompt(case)
    want = decoders.reference_generate(case, prompt, NEW)
    got = generate_ids(binary, board, info, prompt, NEW)
    assert got["tokens"] == want
    assert got["prompt_tokens"] == PROMPT_LEN and got["decode_steps"] == NEW - 1
    # Teacher forced: the scores after the prompt and after each reference token.
    forced = generate_ids(binary, board, info, prompt, NEW, forced_ids=want)
    reference = decoders.reference_logits(case, prompt + want)[PROMPT_LEN - 1:PROMPT_LEN - 1 + NEW]
    assert forced["logits"].shape == reference.shape
    error = np.abs(forced["logits"] - reference).max() / np.abs(reference).max()
    assert error < RELATIVE_LOGITS, error
    return got


@pytest.mark.parametrize("family,exporter,opset", CASES)
def test_greedy_tokens_and_logits_equal_transformers_on_the_host(folder, family, exporter, opset):
    case, project = _project(folder, family, exporter, opset)
    report = json.loads((project / "report.json").read_text())
    assert {b["chunk"] for b in report["attention_blocks"]} == {CHUNK, 1}
    assert all(b["is_causal"] and b["mask"] == "none" for b in report["attention_blocks"])
    _check_against_reference(case, project, load_board("host"))


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["rpi4", "k230"])
def test_greedy_generation_on_the_emulated_boards(folder, board_name):
    board = require_board(board_name)
    case, project = _project(folder, "qwen2", "torchscript", 17)
    _check_against_reference(case, project, board)


def test_state_bytes_are_exactly_the_caches_plus_the_position(folder):
    case, project = _project(folder, "llama", "torchscript", 17)
    g = case.geometry
    header = (project / "model.h").read_text()
    macro = lambda name: int(re.search(rf"#define MODEL_{name} (\d+)u", header).group(1))  # noqa: E731
    cache = g.layers * 2 * g.kv_heads * MAX_CONTEXT * g.head_dim * 4
    assert macro("CACHE_BYTES") == cache
    assert macro("STATE_BYTES") == cache + 64  # the position's header, one cache line
    assert macro("MAX_CONTEXT") == MAX_CONTEXT and macro("VOCAB") == g.vocab


def test_sampled_tokens_follow_the_seeded_sampler(folder):
    """temperature/top-k/top-p: each token is the sampler's draw (its Python mirror, checked
    against transformers' warpers in test_sampling) from the model's own scores at that step."""
    case, project = _project(folder, "llama", "torchscript", 17)
    board = load_board("host")
    binary, info = build(project, board), generation_info(project)
    prompt = _prompt(case, 5)
    params = Sampling(temperature=1.3, top_k=40, top_p=0.9, seed=1234)
    got = generate_ids(binary, board, info, prompt, 12, params)["tokens"]
    scores = generate_ids(binary, board, info, prompt, 12, forced_ids=got)["logits"]
    rng, mirror = Pcg32(params.seed), MirrorSampling(params.temperature, params.top_k, params.top_p)
    assert got == [sample(row, mirror, rng) for row in scores]
    again = generate_ids(binary, board, info, prompt, 12, params)["tokens"]
    other = generate_ids(binary, board, info, prompt, 12, Sampling(1.3, 40, 0.9, seed=99))["tokens"]
    assert again == got and other != got


def test_generation_stops_at_a_stop_id_and_at_the_end_of_the_context(folder):
    case, project = _project(folder, "llama", "torchscript", 17)
    board = load_board("host")
    binary, info = build(project, board), generation_info(project)
    prompt = _prompt(case)
    want = decoders.reference_generate(case, prompt, NEW)
    stop = want[5]
    got = generate_ids(binary, board, info, prompt, NEW, stop_ids=[stop])
    assert got["tokens"] == want[:want.index(stop) + 1]
    full = generate_ids(binary, board, info, _prompt(case, MAX_CONTEXT - 3), 10)
    assert full["context_full"] and len(full["tokens"]) == 4  # 3 steps fill the cache; the 4th token is not fed
    exact = generate_ids(binary, board, info, _prompt(case, MAX_CONTEXT), 1)
    assert len(exact["tokens"]) == 1 and not exact["context_full"]


def test_the_c_api_refuses_what_would_break_the_cache_under_sanitizers(folder, tmp_path):
    """<p>_prefill/<p>_step: an uninitialised state, a chunk past max_context, a token outside
    the vocabulary and bad arguments are refused and change nothing; built with ASan/UBSan,
    with the state and arena exactly their stated sizes on the heap, so a byte written past
    either would be reported."""
    require_board("host")
    case, project = _project(folder, "llama", "torchscript", 17)
    program = tmp_path / "api.c"
    program.write_text(API_PROGRAM)
    build(project, load_board("host"), extra_cflags=SANITIZE, extra_ldflags=SANITIZE[:1], variant="host-asan")
    library = project / "build" / "host-asan" / "libmodel.a"
    exe = tmp_path / "api"
    subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", *SANITIZE, f"-I{project}",
                    f"-I{project / 'runtime' / 'include'}", str(program), str(library), "-lm", "-o", str(exe)],
                   check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["uninitialised=7", "empty=4", "too_long=6", "bad_token=5", "position=0",
                                  f"filled={MAX_CONTEXT}", "one_more=6", f"position={MAX_CONTEXT}", "small_arena=2"]


API_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "model.h"
int main(void)
{
    void *state = aligned_alloc(MOA_ARENA_ALIGN, (MODEL_STATE_BYTES + 15) / 16 * 16);
    void *arena = aligned_alloc(MOA_ARENA_ALIGN, (MODEL_ARENA_BYTES + 15) / 16 * 16);
    float *logits = malloc(sizeof(float) * MODEL_VOCAB);
    int64_t ids[MODEL_MAX_CONTEXT + 1];
    size_t k;
    for (k = 0; k < MODEL_MAX_CONTEXT + 1; k++) ids[k] = (int64_t)(k * 7 % MODEL_VOCAB);
    ((unsigned char *)state)[0] = 0xAB; /* not a state model_init wrote */
    printf("uninitialised=%d\n", (int)model_prefill(ids, 3, logits, state, arena, MODEL_ARENA_BYTES, NULL));
    if (model_init(state, MODEL_STATE_BYTES) != MOA_OK) return 1;
    printf("empty=%d\n", (int)model_prefill(ids, 0, logits, state, arena, MODEL_ARENA_BYTES, NULL));
    printf("too_long=%d\n", (int)model_prefill(ids, MODEL_MAX_CONTEXT + 1, logits, state, arena, MODEL_ARENA_BYTES, NULL));
    ids[2] = MODEL_VOCAB;
    printf("bad_token=%d\n", (int)model_prefill(ids, 3, logits, state, arena, MODEL_ARENA_BYTES, NULL));
    ids[2] = 2;
    printf("position=%lld\n", (long long)model_position(state));
    if (model_prefill(ids, MODEL_MAX_CONTEXT - 1, logits, state, arena, MODEL_ARENA_BYTES, NULL) != MOA_OK) return 1;
    if (model_step(5, logits, state, arena, MODEL_ARENA_BYTES, NULL) != MOA_OK) return 1;
    printf("filled=%lld\n", (long long)model_position(state));
    printf("one_more=%d\n", (int)model_step(5, logits, state, arena, MODEL_ARENA_BYTES, NULL));
    printf("position=%lld\n", (long long)model_position(state));
    printf("small_arena=%d\n", (int)model_step(5, logits, state, arena, MODEL_ARENA_BYTES - 1, NULL));
    free(state); free(arena); free(logits);
    return 0;
}
"""


# --- bad input: one clear error each, non-zero exit -------------------------------------------

def test_bad_prompts_are_refused_before_the_runner_starts(folder):
    case, project = _project(folder, "llama", "torchscript", 17)
    vocab = case.geometry.vocab
    one_error(run_cli("generate", project, "--prompt-ids", ",".join(["1"] * (MAX_CONTEXT + 1))),
               f"{MAX_CONTEXT + 1} tokens", f"max context of {MAX_CONTEXT}")
    one_error(run_cli("generate", project, "--prompt-ids", f"1,2,{vocab}"), f"token id {vocab}", f"[0, {vocab})")
    one_error(run_cli("generate", project, "--prompt-ids", "1,-3"), "token id -3")
    one_error(run_cli("generate", project, "--prompt-ids", "1,x"), "--prompt-ids")
    one_error(run_cli("generate", project, "--prompt", "hello"), "no tokenizer")
    one_error(run_cli("generate", project, "--prompt-ids", "1", "--top-p", "0"), "--top-p")


def test_generate_on_a_build_without_a_cache_is_refused(folder):
    one_shot = folder / "one-shot"
    export(Case("one-shot", "sdpa18", q_len=4, kv_len=4, head_dim=8), folder / "one-shot.onnx")
    convert(folder / "one-shot.onnx", one_shot)
    one_error(run_cli("generate", one_shot, "--prompt-ids", "1,2"), "not converted for generation", "--max-context")


def test_a_decoder_with_a_cache_needs_max_context(folder):
    case, _ = _project(folder, "llama", "torchscript", 17)
    one_error(run_cli("convert", case.path, "-o", folder / "no-context"), "key/value cache", "--max-context")
    assert not (folder / "no-context").exists()


def test_a_cache_that_is_not_appended_to_is_refused_by_node(folder):
    """present = Concat(past * 0.5, new): the past is changed on its way, so the cache cannot be
    kept in place; the error names the node that reads it."""
    case, _ = _project(folder, "llama", "torchscript", 17)
    model = onnx.load(str(case.path))
    concat = next(n for n in model.graph.node if n.op_type == "Concat" and "present.1.key" in n.output)
    past = next(i for i in concat.input if i.startswith("past_key_values"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    scale = onnx.helper.make_node("Mul", [past, "half"], ["scaled_past"], name="scale_the_past")
    concat.input[list(concat.input).index(past)] = "scaled_past"
    model.graph.node.insert(list(model.graph.node).index(concat), scale)
    bad = folder / "scaled-past.onnx"
    onnx.save(model, str(bad))
    proc = run_cli("convert", bad, "-o", folder / "scaled", "--max-context", "32")
    one_error(proc, "present.1.key", "cannot be mapped")
    assert not (folder / "scaled").exists()
    proc = run_cli("convert", case.path, "-o", folder / "tiny-context", "--max-context", "0")
    assert proc.returncode != 0


def test_generate_cli_streams_and_writes_json(folder, tmp_path):
    case, project = _project(folder, "llama", "torchscript", 17)
    prompt = _prompt(case)
    want = decoders.reference_generate(case, prompt, 8)
    proc = run_cli("generate", project, "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", 8,
                "--json", tmp_path / "g.json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(t) for t in want]
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["tokens"] == want and result["prompt_ids"] == prompt
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "max_rss_bytes", "state_bytes", "weights_bytes"):
        assert result[key] and result[key] > 0, key
    assert "decode" in proc.stderr and "tokens/s" in proc.stderr


def test_a_bad_sampling_request_is_refused():
    with pytest.raises(MoaEdgeError, match="--temperature"):
        Sampling(temperature=-1).check()


def test_inspect_shows_the_decode_step_and_its_derivation(folder):
    case, _ = _project(folder, "llama", "torchscript", 17)
    proc = run_cli("inspect", case.path, "--max-context", MAX_CONTEXT, "--derivation")
    assert proc.returncode == 0, proc.stderr
    g = case.geometry
    assert proc.stdout.count(f"heads {g.q_heads} (kv {g.kv_heads}), q_len 1, kv_len {MAX_CONTEXT}") == g.layers
    assert "keypad_L" in proc.stdout and "i+L[b]-1" in proc.stdout  # run-time key length, causal at its end
