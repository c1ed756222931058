"""A zoo of small, random-initialised attention models exported to ONNX the way users export them.

Each ZOO entry writes one .onnx file with torch.onnx.export (dynamo or the legacy TorchScript exporter)
and returns example inputs keyed by the graph input names. Sizes are tiny so every export takes a few
seconds at most; everything is seeded, so the same entry always writes the same weights and inputs.
Entries that cannot be exported with the pinned versions are left out, with the reason next to where
they would be.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
import functools
import logging
import os
from typing import Callable
import warnings

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# The HF models are built from configs; nothing may be fetched from the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SEED = 0
BATCH = 2
SEQ = 6

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[[str | os.PathLike], Inputs]  # writes the .onnx file, returns its example inputs
    layers: int                                   # attention blocks the detector should find
    exporter: str                                 # "dynamo" | "torchscript"
    opset: int
    notes: str = ""


# --- exporting ----------------------------------------------------------------------------------

def _quietly(build: Callable[[str | os.PathLike], Inputs]) -> Callable[[str | os.PathLike], Inputs]:
    """build with the warnings and log records of torch, the exporters and transformers silenced
    (the dynamo exporter's progress prints are switched off by verbose=False in _export)."""
    @functools.wraps(build)
    def quiet_build(path) -> Inputs:
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return build(path)
        finally:
            logging.disable(previous)
    return quiet_build


@contextmanager
def _mha_fastpath_disabled():
    """Under torch.no_grad() in eval, nn.MultiheadAttention and TransformerEncoderLayer take a fast path
    (torch._native_multi_head_attention, torch._transformer_encoder_layer_fwd) that the TorchScript
    exporter cannot translate; users switch it off to export, so build works whatever the grad mode."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _export(module: nn.Module, inputs: Inputs, path, exporter: str, opset: int,
            output_name: str = "y") -> Inputs:
    """torch.onnx.export with the inputs passed positionally in dict order, named after their keys."""
    args = tuple(torch.from_numpy(value) for value in inputs.values())
    with _mha_fastpath_disabled():
        torch.onnx.export(module.eval(), args, str(path), dynamo=exporter == "dynamo",
                          opset_version=opset, input_names=list(inputs), output_names=[output_name],
                          external_data=False, verbose=False)
    return inputs


def _rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


# --- nn.TransformerEncoderLayer and nn.MultiheadAttention ----------------------------------------

class _EncoderLayer(nn.Module):
    """Forward takes x only: exporting the layer itself makes the TorchScript exporter pass the default
    is_causal=False as a traced tensor, which SDPA rejects (pytorch/pytorch#110255)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0,
                                                batch_first=True)

    def forward(self, x):
        return self.layer(x)


def _build_encoder_layer(exporter: str, opset: int):
    @_quietly
    def build(path) -> Inputs:
        torch.manual_seed(SEED)
        x = _rng().standard_normal((BATCH, SEQ, 32)).astype(np.float32)
        return _export(_EncoderLayer(), {"x": x}, path, exporter, opset)
    return build


class _SelfAttention(nn.Module):
    """nn.MultiheadAttention used as self-attention, keeping only the attention output."""

    def __init__(self, need_weights: bool):
        super().__init__()
        self.mha = nn.MultiheadAttention(embed_dim=16, num_heads=4, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x):
        return self.mha(x, x, x, need_weights=self.need_weights)[0]


def _build_mha(need_weights: bool, exporter: str, opset: int):
    @_quietly
    def build(path) -> Inputs:
        torch.manual_seed(SEED)
        x = _rng().standard_normal((BATCH, SEQ, 16)).astype(np.float32)
        return _export(_SelfAttention(need_weights), {"x": x}, path, exporter, opset)
    return build


# --- plain F.scaled_dot_product_attention over (B, H, S, D) --------------------------------------

class _SDPA(nn.Module):
    def __init__(self, causal: bool = False, gqa: bool = False):
        super().__init__()
        self.causal = causal
        self.gqa = gqa

    def forward(self, q, k, v, *mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[0] if mask else None,
                                              is_causal=self.causal, enable_gqa=self.gqa)


def _qkv(rng: np.random.Generator, q_heads: int = 4, kv_heads: int = 4, head_dim: int = 8) -> Inputs:
    shapes = {"q": (BATCH, q_heads, SEQ, head_dim), "k": (BATCH, kv_heads, SEQ, head_dim),
              "v": (BATCH, kv_heads, SEQ, head_dim)}
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def _padding_keep_mask(rng: np.random.Generator) -> np.ndarray:
    """Bool (B, 1, S, S), True = attend; every query keeps key 0 so no row is fully masked."""
    keep = rng.random((BATCH, 1, SEQ, SEQ)) < 0.7
    keep[..., 0] = True
    return keep


def _sdpa_inputs(variant: str) -> Inputs:
    rng = _rng()
    if variant == "gqa":
        return _qkv(rng, q_heads=4, kv_heads=2)
    inputs = _qkv(rng)
    if variant == "float_mask":
        inputs["mask"] = rng.standard_normal((SEQ, SEQ)).astype(np.float32)
    elif variant == "bool_mask":
        inputs["mask"] = _padding_keep_mask(rng)
    return inputs


def _build_sdpa(variant: str, exporter: str, opset: int):
    @_quietly
    def build(path) -> Inputs:
        module = _SDPA(causal=variant == "causal", gqa=variant == "gqa")
        return _export(module, _sdpa_inputs(variant), path, exporter, opset)
    return build


# --- Hugging Face transformers built from configs ------------------------------------------------

class _LastHiddenState(nn.Module):
    """Positional forward over the HF model's keyword inputs, returning last_hidden_state only."""

    def __init__(self, model: nn.Module, input_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *tensors):
        return self.model(**dict(zip(self.input_names, tensors))).last_hidden_state


def _text_inputs(vocab_size: int) -> Inputs:
    """Token ids with a padding mask: the second row's last two tokens are padding."""
    input_ids = _rng().integers(1, vocab_size, size=(BATCH, SEQ), dtype=np.int64)
    attention_mask = np.ones((BATCH, SEQ), dtype=np.int64)
    attention_mask[1, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _image_inputs() -> Inputs:
    return {"pixel_values": _rng().standard_normal((BATCH, 3, 32, 32)).astype(np.float32)}


_VOCAB = 100
# GPT-2 and Llama use use_cache=False: single forward passes, no KV-cache outputs.
_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _bert(attn_implementation: str):
    """BertModel, 2 layers, hidden 32, 4 heads, padding mask"""
    from transformers import BertConfig, BertModel
    config = BertConfig(vocab_size=_VOCAB, max_position_embeddings=64, attn_implementation=attn_implementation,
                        **_SIZES)
    return BertModel, config, _text_inputs(_VOCAB)


def _gpt2(attn_implementation: str):
    """GPT2Model, 2 layers, hidden 32, 4 heads, causal + padding mask"""
    from transformers import GPT2Config, GPT2Model
    config = GPT2Config(vocab_size=_VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                        bos_token_id=_VOCAB - 1, eos_token_id=_VOCAB - 1, use_cache=False,
                        attn_implementation=attn_implementation)
    return GPT2Model, config, _text_inputs(_VOCAB)


def _llama(attn_implementation: str):
    """LlamaModel, 2 layers, hidden 32, 4 query heads, 2 KV heads, RoPE, causal + padding mask"""
    from transformers import LlamaConfig, LlamaModel
    config = LlamaConfig(vocab_size=_VOCAB, max_position_embeddings=64, num_key_value_heads=2,
                         use_cache=False, attn_implementation=attn_implementation, **_SIZES)
    return LlamaModel, config, _text_inputs(_VOCAB)


def _vit(attn_implementation: str):
    """ViTModel, 2 layers, hidden 32, 4 heads, 32x32 image, patch 8 (17 tokens), no mask input"""
    from transformers import ViTConfig, ViTModel
    config = ViTConfig(image_size=32, patch_size=8, attn_implementation=attn_implementation, **_SIZES)
    return ViTModel, config, _image_inputs()


def _distilbert(attn_implementation: str):
    """DistilBertModel, 2 layers, dim 32, 4 heads, padding mask"""
    from transformers import DistilBertConfig, DistilBertModel
    config = DistilBertConfig(vocab_size=_VOCAB, max_position_embeddings=64, dim=32, n_layers=2, n_heads=4,
                              hidden_dim=64, attn_implementation=attn_implementation)
    return DistilBertModel, config, _text_inputs(_VOCAB)


def _whisper_encoder(attn_implementation: str):
    """Whisper encoder, 2 layers, d_model 32, 4 heads, 16 mel bins x 40 frames (two 1-D convs in front)"""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    config = WhisperConfig(num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=4,
                           encoder_ffn_dim=64, max_source_positions=20, attn_implementation=attn_implementation)
    return WhisperEncoder, config, {"input_features": _rng().standard_normal((1, 16, 40)).astype(np.float32)}


def _falcon(attn_implementation: str):
    """FalconModel, 2 layers, hidden 32, 4 query heads, multi-query: one K/V head that the MatMuls
    broadcast against the query heads, RoPE, causal + padding mask"""
    from transformers import FalconConfig, FalconModel
    config = FalconConfig(vocab_size=_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          multi_query=True, new_decoder_architecture=False, alibi=False, use_cache=False,
                          attn_implementation=attn_implementation)
    return FalconModel, config, _text_inputs(_VOCAB)


def _xglm(attn_implementation: str):
    """XGLMModel, 2 layers, d_model 32, 4 heads, heads folded into the batch: the scores reshaped to
    (B, H, S, S) to add the mask (and floored at the most negative float) and back around the Softmax"""
    from transformers import XGLMConfig, XGLMModel
    config = XGLMConfig(vocab_size=_VOCAB, max_position_embeddings=64, d_model=32, num_layers=2, attention_heads=4,
                        ffn_dim=64, use_cache=False, attn_implementation=attn_implementation)
    return XGLMModel, config, _text_inputs(_VOCAB)


_HF_FAMILIES = {"bert": _bert, "gpt2": _gpt2, "llama": _llama, "vit": _vit}
# The two attention forms issue 17 fuses: eager attention only (what shows them), two exporters.
_EAGER_FAMILIES = {"falcon": _falcon, "xglm": _xglm}
# Families exported with the dynamo exporter only (what their users run).
_DYNAMO_FAMILIES = {"distilbert": _distilbert, "whisper_encoder": _whisper_encoder}


def _build_hf(family: str, attn_implementation: str, exporter: str, opset: int):
    @_quietly
    def build(path) -> Inputs:
        model_class, config, inputs = {**_HF_FAMILIES, **_DYNAMO_FAMILIES, **_EAGER_FAMILIES}[family](attn_implementation)
        torch.manual_seed(SEED)
        model = _LastHiddenState(model_class(config), list(inputs))
        return _export(model, inputs, path, exporter, opset, output_name="last_hidden_state")
    return build


# --- onnxruntime's transformer optimizer output --------------------------------------------------

def _build_ort_fused(multi_head: bool):
    """BERT (eager attention, TorchScript exporter, opset 17, a padding mask input: the export
    onnxruntime's BERT fuser matches) run through onnxruntime.transformers.optimizer."""
    @_quietly
    def build(path) -> Inputs:
        from onnxruntime.transformers import optimizer
        from onnxruntime.transformers.fusion_options import FusionOptions
        raw = f"{path}.raw.onnx"
        model_class, config, inputs = _bert("eager")
        torch.manual_seed(SEED)
        model = _LastHiddenState(model_class(config), list(inputs)).eval()
        # Dynamic batch and sequence axes, as users export for serving: with static ones the
        # exporter folds the mask plumbing and the fuser no longer recognises the pattern.
        axes = {name: {0: "batch", 1: "sequence"} for name in [*inputs, "last_hidden_state"]}
        torch.onnx.export(model, tuple(torch.from_numpy(v) for v in inputs.values()), raw, dynamo=False,
                          opset_version=17, input_names=list(inputs), output_names=["last_hidden_state"],
                          dynamic_axes=axes, external_data=False, verbose=False)
        options = FusionOptions("bert")
        options.use_multi_head_attention = multi_head
        fused = optimizer.optimize_model(raw, model_type="bert", num_heads=_SIZES["num_attention_heads"],
                                         hidden_size=_SIZES["hidden_size"], optimization_options=options,
                                         opt_level=1, use_gpu=False)
        op = "MultiHeadAttention" if multi_head else "Attention"
        if sum(n.op_type == op and n.domain == "com.microsoft" for n in fused.model.graph.node) != 2:
            raise RuntimeError(f"onnxruntime's optimizer no longer fuses this BERT into {op}")
        fused.save_model_to_file(str(path))
        os.remove(raw)
        return inputs
    return build


# --- the registry ---------------------------------------------------------------------------------

_EXPORTS = [("dynamo", 18), ("dynamo", 23), ("torchscript", 17)]
_SDPA_VARIANTS = {
    "causal": "is_causal=True",
    "float_mask": "float mask input (S, S)",
    "bool_mask": "bool mask input (B, 1, S, S), True = attend",
    "gqa": "enable_gqa=True, 4 query heads, 2 KV heads",
}


def _entries():
    for exporter, opset in _EXPORTS:
        yield ZooModel(f"encoder_layer_{exporter}{opset}", _build_encoder_layer(exporter, opset), layers=1,
                       exporter=exporter, opset=opset,
                       notes="nn.TransformerEncoderLayer d_model 32, 4 heads, MHA fast path off")
    for need_weights, label in ((True, "weights"), (False, "noweights")):
        for exporter, opset in (("dynamo", 18), ("torchscript", 17)):
            yield ZooModel(f"mha_{label}_{exporter}{opset}", _build_mha(need_weights, exporter, opset), layers=1,
                           exporter=exporter, opset=opset,
                           notes=f"nn.MultiheadAttention embed 16, 4 heads, need_weights={need_weights}")
    for variant, description in _SDPA_VARIANTS.items():
        for exporter, opset in _EXPORTS:
            if variant == "gqa" and exporter == "torchscript":
                continue  # the TorchScript SDPA symbolic rejects enable_gqa=True (pytorch/pytorch#162258)
            yield ZooModel(f"sdpa_{variant}_{exporter}{opset}", _build_sdpa(variant, exporter, opset), layers=1,
                           exporter=exporter, opset=opset,
                           notes=f"F.scaled_dot_product_attention on (2, H, 6, 8), {description}")
    for family in _HF_FAMILIES:
        for attn_implementation in ("sdpa", "eager"):
            for exporter, opset in _EXPORTS:
                yield ZooModel(f"{family}_{attn_implementation}_{exporter}{opset}",
                               _build_hf(family, attn_implementation, exporter, opset), layers=2,
                               exporter=exporter, opset=opset,
                               notes=f"{_HF_FAMILIES[family].__doc__}, {attn_implementation} attention")
    for family, describe in _EAGER_FAMILIES.items():
        for exporter, opset in (("dynamo", 18), ("torchscript", 17)):
            yield ZooModel(f"{family}_eager_{exporter}{opset}", _build_hf(family, "eager", exporter, opset), layers=2,
                           exporter=exporter, opset=opset, notes=f"{describe.__doc__}, eager attention")
    for family, describe in _DYNAMO_FAMILIES.items():
        for exporter, opset in (("dynamo", 18), ("dynamo", 23)):
            yield ZooModel(f"{family}_sdpa_{exporter}{opset}", _build_hf(family, "sdpa", exporter, opset), layers=2,
                           exporter=exporter, opset=opset, notes=f"{describe.__doc__}, sdpa attention")
    for multi_head, op in ((False, "Attention"), (True, "MultiHeadAttention")):
        yield ZooModel(f"bert_eager_torchscript17_ort_{op.lower()}", _build_ort_fused(multi_head), layers=2,
                       exporter="torchscript", opset=17,
                       notes=f"{_bert.__doc__}, fused by onnxruntime's transformer optimizer into com.microsoft.{op}")


ZOO: dict[str, ZooModel] = {model.name: model for model in _entries()}

