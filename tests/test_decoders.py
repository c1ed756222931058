"""The tiny exported decoders of tests/decoders.py are right before anything imports them:
onnxruntime, fed the cache back between calls, gives transformers' greedy tokens and the float64
teacher-forced logits of the torch model they were exported from."""
import numpy as np
import onnxruntime as ort
import pytest

from decoders import (FAMILIES, GENERATION_CASES, build_model, cached_decoder, input_names, ort_greedy,
                      reference_generate, reference_logits)

PROMPT = [3, 17, 42, 5, 99, 64, 11]
NEW_TOKENS = 16
# float32 through two layers: observed below 2e-6 of the largest |logit|.
LOGIT_TOLERANCE = 2e-5

CASES = GENERATION_CASES


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("decoders")


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_are_not_degenerate(family):
    """Logits far from flat and greedy tokens that vary, so that a wrong kernel changes tokens."""
    model = build_model(family)
    tokens = reference_generate(model, PROMPT, 24)
    logits = reference_logits(model, PROMPT + tokens[:-1])
    assert logits.std(axis=1).min() > 1.0
    assert len(set(tokens)) >= 5, tokens
    top2 = np.sort(logits, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-3  # no near-tie for float32 to flip


def test_reference_generate_stops_at_eos_only_when_asked():
    model = build_model("llama")
    tokens = reference_generate(model, PROMPT, 12)
    assert len(tokens) == 12
    stop = tokens[3]
    assert reference_generate(model, PROMPT, 12, eos_token_id=stop) == tokens[:tokens.index(stop) + 1]
    # A model whose own generation config has an end-of-text token (as SmolLM2's has) runs on too.
    model.generation_config.eos_token_id = stop
    assert reference_generate(model, PROMPT, 12) == tokens


@pytest.mark.parametrize("family,exporter,opset", CASES)
def test_onnxruntime_generates_like_transformers(folder, family, exporter, opset):
    case = cached_decoder(family, exporter, opset, folder)
    expected = reference_generate(case, PROMPT, NEW_TOKENS)
    # Prefill of 4 tokens with an empty past (length 0), the rest of the prompt one token a call.
    tokens, logits = ort_greedy(case.path, case.geometry, PROMPT, NEW_TOKENS, prefill=4)
    assert tokens == expected
    reference = reference_logits(case, PROMPT + tokens[:-1])
    assert logits.shape == reference.shape
    np.testing.assert_allclose(logits, reference, rtol=0, atol=LOGIT_TOLERANCE * np.abs(reference).max())


@pytest.mark.parametrize("family,exporter,opset", [c for c in CASES if c[0] == "llama"])
def test_present_is_past_then_new(folder, family, exporter, opset):
    """present.{i} = Concat(past.{i}, new keys/values) on the sequence axis: [1, KVH, P+S, D]."""
    case = cached_decoder(family, exporter, opset, folder)
    g = case.geometry
    rng = np.random.default_rng(0)
    past_len, new = 6, 2
    names = input_names(g.layers)
    past = [rng.standard_normal((1, g.kv_heads, past_len, g.head_dim)).astype(np.float32) for _ in names[3:]]
    feed = {"input_ids": np.array([[7, 9]], np.int64),
            "attention_mask": np.ones((1, past_len + new), np.int64),
            "position_ids": np.arange(past_len, past_len + new, dtype=np.int64)[None], **dict(zip(names[3:], past))}
    session = ort.InferenceSession(str(case.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == case.output_names
    logits, *present = session.run(None, feed)
    assert logits.shape == (1, new, g.vocab)
    for before, after in zip(past, present):
        assert after.shape == (1, g.kv_heads, past_len + new, g.head_dim)
        np.testing.assert_array_equal(after[:, :, :past_len], before)
