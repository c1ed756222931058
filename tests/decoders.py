"""Tiny random-weight decoders exported for generation the way real tools write them: the Hugging
Face convention of transformers' CausalLM classes with their key/value cache (inputs input_ids
[1, S], attention_mask [1, P+S], position_ids [1, S], past_key_values.{i}.key/.value [1, KVH, P, D];
outputs logits [1, S, V], present.{i}.key/.value [1, KVH, P+S, D]), from torch.onnx.export with the
TorchScript exporter (opset 17) or dynamo (opset 18 decomposes attention into MatMul/Softmax,
opset 23 emits the ONNX Attention op with the cache Concat outside it).

Families (2 layers, hidden 64, head_dim 16, tied embeddings): llama (4 query heads on 2 key/value
heads), llama-mqa (4 on 1), qwen2 (q/k/v biases), mistral, phi3 (fused qkv and gate_up) and gpt2
(4 heads, learned positions). The prompt goes in as a first call with a past of length 0, which
every exported file accepts; later calls feed the presents back as the past.

Expected values never come from moa-edge: `reference_generate` is transformers' own greedy
`generate`, `reference_logits` the same torch model run in float64 on the whole sequence."""
from __future__ import annotations

import copy
from dataclasses import dataclass
import importlib.util
from pathlib import Path
import weakref

import numpy as np
import onnxruntime as ort
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM)


def _load_example(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The SmolLM2 example's exporter and greedy reference: the tiny models test the very code that exports
# the real one.
REPO = Path(__file__).resolve().parent.parent
smollm2_export = _load_example("smollm2_export", REPO / "examples" / "smollm2" / "export.py")
input_names, output_names = smollm2_export.input_names, smollm2_export.output_names

EXPORTERS = {("torchscript", 17), ("dynamo", 18), ("dynamo", 23)}
# The files the generation tests convert: every family once, each exporter at least twice, the
# decomposed (17, 18) and Attention-op (23) forms (test_decoders checks each with onnxruntime).
GENERATION_CASES = [("llama", "torchscript", 17), ("llama", "dynamo", 18), ("llama", "dynamo", 23),
                    ("llama-mqa", "torchscript", 17), ("qwen2", "torchscript", 17), ("mistral", "torchscript", 17),
                    ("phi3", "dynamo", 23), ("gpt2", "torchscript", 17)]
# Random init with this spread gives logits that are far from flat (greedy tokens vary) while the
# attention scores stay moderate (softmax not saturated); transformers' default 0.02 makes every
# logit nearly equal.
INIT_STD = 0.25
SEED = 0


def _common(vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                tie_word_embeddings=True, initializer_range=INIT_STD, bos_token_id=None,
                eos_token_id=None, pad_token_id=None)


def _llama():
    return LlamaForCausalLM(LlamaConfig(**_common(128)))


def _llama_mqa():
    # Multi-query attention: all 4 query heads share one key/value head.
    return LlamaForCausalLM(LlamaConfig(**{**_common(136), "num_key_value_heads": 1}))


def _qwen2():
    # Qwen2 has biases on the q, k and v projections (not on o); rope_theta as in Qwen2.5.
    return Qwen2ForCausalLM(Qwen2Config(**_common(160), rope_theta=1e6))


def _mistral():
    return MistralForCausalLM(MistralConfig(**_common(144), sliding_window=None))


def _phi3():
    # Phi-3 fuses q, k and v into one qkv_proj and gate and up into one gate_up_proj.
    return Phi3ForCausalLM(Phi3Config(**_common(176)))


def _gpt2():
    # GPT-2: learned positions, LayerNorm, GELU, fused c_attn (Conv1D), no GQA.
    return GPT2LMHeadModel(GPT2Config(vocab_size=192, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                      initializer_range=INIT_STD, bos_token_id=None, eos_token_id=None,
                                      tie_word_embeddings=True))


FAMILIES = {"llama": _llama, "llama-mqa": _llama_mqa, "qwen2": _qwen2, "mistral": _mistral, "phi3": _phi3, "gpt2": _gpt2}


@dataclass(frozen=True)
class DecoderGeometry:
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab: int


@dataclass
class DecoderCase:
    family: str
    exporter: str          # "torchscript" | "dynamo"
    opset: int
    path: Path             # the .onnx file, weights inside
    model: torch.nn.Module  # the float32 torch model the file was exported from, in eval mode
    geometry: DecoderGeometry

    @property
    def input_names(self) -> list[str]:
        return input_names(self.geometry.layers)

    @property
    def output_names(self) -> list[str]:
        return output_names(self.geometry.layers)


def geometry_of(model: torch.nn.Module) -> DecoderGeometry:
    layers, kv_heads, head_dim = smollm2_export.cache_geometry(model)
    return DecoderGeometry(layers, model.config.num_attention_heads, kv_heads, head_dim, model.config.vocab_size)


def build_model(family: str) -> torch.nn.Module:
    """The family's tiny model with deterministic random weights, float32, eval mode."""
    torch.manual_seed(SEED)
    return FAMILIES[family]().float().eval()


def export_decoder(family: str, exporter: str, opset: int, path) -> DecoderCase:
    """Build the family's tiny model and export it to path (one self-contained .onnx file)."""
    if (exporter, opset) not in EXPORTERS:
        raise ValueError(f"exporter {exporter} at opset {opset}: choose one of {sorted(EXPORTERS)}")
    model = build_model(family)
    path = Path(path)
    smollm2_export.export_with_cache(model, path, exporter, opset)
    return DecoderCase(family, exporter, opset, path, model, geometry_of(model))


_CACHE: dict[tuple[str, str, int], DecoderCase] = {}


def cached_decoder(family: str, exporter: str, opset: int, folder) -> DecoderCase:
    """export_decoder once per process for these arguments, into folder/<family>-<exporter><opset>.onnx;
    later calls return the same case (and file) whatever folder they give."""
    key = (family, exporter, opset)
    if key not in _CACHE or not _CACHE[key].path.exists():
        _CACHE[key] = export_decoder(family, exporter, opset, Path(folder) / f"{family}-{exporter}{opset}.onnx")
    return _CACHE[key]


def reference_generate(case: DecoderCase | torch.nn.Module, prompt_ids, max_new_tokens: int,
                       eos_token_id: int | list[int] | None = None) -> list[int]:
    """transformers' own greedy generate (float32, with its cache); the new tokens only. It stops at
    eos_token_id only when one is given."""
    model = case.model if isinstance(case, DecoderCase) else case
    return smollm2_export.greedy_generate(model, prompt_ids, max_new_tokens, eos_token_id)


_DOUBLE: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()


def reference_logits(case: DecoderCase | torch.nn.Module, ids) -> np.ndarray:
    """Teacher-forced logits [len(ids), vocab] in float64: the torch model in float64 on the whole
    sequence at once (no cache), so row t is the prediction after ids[:t+1]."""
    model = case.model if isinstance(case, DecoderCase) else case
    if model not in _DOUBLE:
        _DOUBLE[model] = copy.deepcopy(model).double().eval()
    tokens = torch.tensor([list(ids)], dtype=torch.int64)
    with torch.no_grad():
        out = _DOUBLE[model](input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=False)
    return out.logits[0].numpy()


def ort_greedy(path, geometry: DecoderGeometry, prompt_ids, max_new_tokens: int, prefill: int | None = None,
               threads: int = 1) -> tuple[list[int], np.ndarray]:
    """Greedy decoding of the exported file with onnxruntime, the cache fed back between calls: the
    first `prefill` prompt tokens (default all) in one call with an empty past (length 0), the rest
    of the prompt and then every new token one per call. Returns the new tokens and the logits of
    every position fed, [len(prompt) + max_new_tokens - 1, vocab] (float32)."""
    prompt = list(prompt_ids)
    first = len(prompt) if prefill is None else prefill
    if not (1 <= first <= len(prompt) and max_new_tokens >= 1):
        raise ValueError("need 1 <= prefill <= len(prompt_ids) and max_new_tokens >= 1")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    chunks = [prompt[:first]] + [[t] for t in prompt[first:]]
    names_in = input_names(geometry.layers)
    past = [np.zeros((1, geometry.kv_heads, 0, geometry.head_dim), np.float32) for _ in names_in[3:]]
    position, rows, tokens = 0, [], []
    while True:
        chunk = chunks.pop(0) if chunks else [tokens[-1]]
        feed = {"input_ids": np.array([chunk], np.int64),
                "attention_mask": np.ones((1, position + len(chunk)), np.int64),
                "position_ids": np.arange(position, position + len(chunk), dtype=np.int64)[None]}
        feed.update(zip(names_in[3:], past))
        logits, *past = session.run(None, feed)
        position += len(chunk)
        rows.append(logits[0])
        if not chunks:
            tokens.append(int(np.argmax(logits[0, -1])))
            if len(tokens) == max_new_tokens:
                return tokens, np.concatenate(rows)
