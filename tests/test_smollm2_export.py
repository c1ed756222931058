"""examples/smollm2/export.py: the pretrained SmolLM2-135M-Instruct exported with its cache is right.
onnxruntime, fed the cache back between calls, generates transformers' own greedy tokens on the
same weights for the three prompts of prompts.json (32 new tokens each), its teacher-forced logits
agree with the float64 torch model, and the saved tokenizer loads offline. Needs the GGUF file that
`scripts/setup.sh` fetches (skipped without it, a failure under CI=true)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from decoders import geometry_of, ort_greedy, reference_logits, smollm2_export

pytestmark = pytest.mark.slow
NEW_TOKENS = 32


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
    paths = smollm2_export.write_export(model, tokenizer, out, new_tokens=NEW_TOKENS)
    return model, paths, json.loads(paths["prompts"].read_text())


def test_prompts_hold_transformers_answers(exported):
    _, _, prompts = exported
    assert len(prompts) == 3
    assert all(len(p["expected_tokens"]) == NEW_TOKENS for p in prompts)
    assert prompts[0]["question"] == "What is the capital of France?"
    assert prompts[0]["expected_text"].startswith("The capital of France is Paris.")


def test_saved_tokenizer_loads_offline(exported):
    _, paths, prompts = exported
    folder = paths["model"].parent
    plain = Tokenizer.from_file(str(paths["tokenizer"]))
    hf = AutoTokenizer.from_pretrained(str(folder))
    for prompt in prompts:
        assert plain.encode(prompt["text"], add_special_tokens=False).ids == prompt["ids"]
        assert hf(prompt["text"], add_special_tokens=False)["input_ids"] == prompt["ids"]
    assert hf.decode(prompts[0]["expected_tokens"]).startswith("The capital of France is Paris.")


def test_onnxruntime_generates_like_transformers(exported):
    model, paths, prompts = exported
    geometry = geometry_of(model)
    for prompt in prompts:
        tokens, logits = ort_greedy(paths["model"], geometry, prompt["ids"], NEW_TOKENS)
        assert tokens == prompt["expected_tokens"], prompt["question"]
    # The last prompt's logits at every position, against the torch model in float64.
    reference = reference_logits(model, prompt["ids"] + tokens[:-1])
    error = np.abs(logits - reference).max() / np.abs(reference).max()
    assert error < 1e-4, error
