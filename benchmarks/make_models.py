"""Issue 15's four benchmark models, made offline: transformers' config classes with seeded random
weights at the real sizes (latency does not depend on the values), exported as the project's examples
export (torch.onnx.export, dynamo, opset 18, weights inside the file), each with its seeded inputs
beside it, so `moa-edge bench model` runs moa-edge and onnxruntime on the same inputs:

    minilm-l6.onnx   all-MiniLM-L6-v2: BertConfig(hidden 384, 6 layers, 12 heads, FFN 1536) in
                     examples/minilm's sentence encoder (mean pooling, L2 normalisation), 2 x 128
                     tokens, the second sentence half padding
    bert-base.onnx   BERT-base: BertConfig() (hidden 768, 12 layers, 12 heads), the same encoder, 1 x 128
    gpt2.onnx        GPT-2 small: GPT2Config() (hidden 768, 12 layers, vocabulary 50257) with its tied
                     LM head, one 512-token prefill without a cache: input_ids -> logits [1, 512, 50257]
    vit-b16.onnx     ViT-B/16: ViTConfig() (224 x 224, 16 x 16 patches, hidden 768, 12 layers) as
                     ViTForImageClassification, 1000 classes: pixel_values -> logits

Next to each <stem>.onnx: <stem>.inputs.npz (the inputs) and <stem>.expected.npz (PyTorch's output
for them; onnxruntime on the file must agree, or the export is refused). Nothing is fetched
(HF_HUB_OFFLINE=1). Exporting all four takes a few minutes and about 1.5 GB of disk.

    python benchmarks/make_models.py [--out build/bench-models] [--only vit-b16,gpt2]
    moa-edge bench model build/bench-models/vit-b16.onnx --inputs build/bench-models/vit-b16.inputs.npz --threads 1
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "minilm"))

from export_minilm import INPUT_NAMES, OPSET, SentenceEncoder  # noqa: E402

SEED = 0
SEQ = 128
PREFILL = 512
IMAGE = 224


class _Logits(torch.nn.Module):
    """A transformers model called with its keyword inputs in `names` order, returning the logits."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors):
        return self.model(**dict(zip(self.names, tensors))).logits


def _token_inputs(batch: int, seq: int, padded: bool) -> dict[str, np.ndarray]:
    """Seeded token ids (above BERT's special tokens), a full attention mask but for the last row's
    second half when `padded`, and segment 0."""
    ids = np.random.default_rng(SEED).integers(1000, 30000, (batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    if padded:
        mask[-1, seq // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((batch, seq), np.int64)}


def minilm():
    from transformers import BertConfig, BertModel
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, attn_implementation="sdpa")
    return (SentenceEncoder(BertModel(config, add_pooling_layer=False)), _token_inputs(2, SEQ, padded=True),
            INPUT_NAMES, "embeddings")


def bert_base():
    from transformers import BertConfig, BertModel
    model = BertModel(BertConfig(attn_implementation="sdpa"), add_pooling_layer=False)
    return SentenceEncoder(model), _token_inputs(1, SEQ, padded=False), INPUT_NAMES, "embeddings"


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(use_cache=False, attn_implementation="sdpa"))
    ids = np.random.default_rng(SEED).integers(0, model.config.vocab_size, (1, PREFILL), dtype=np.int64)
    return _Logits(model, ["input_ids"]), {"input_ids": ids}, ["input_ids"], "logits"


def vit_b16():
    from transformers import ViTConfig, ViTForImageClassification
    model = ViTForImageClassification(ViTConfig(num_labels=1000, attn_implementation="sdpa"))
    pixels = np.random.default_rng(SEED).standard_normal((1, 3, IMAGE, IMAGE)).astype(np.float32)
    return _Logits(model, ["pixel_values"]), {"pixel_values": pixels}, ["pixel_values"], "logits"


MODELS = {"minilm-l6": minilm, "bert-base": bert_base, "gpt2": gpt2, "vit-b16": vit_b16}


def make_model(name: str, out_dir: Path) -> Path:
    """Export MODELS[name] to out_dir/<name>.onnx with its .inputs.npz and .expected.npz; return the path."""
    import onnxruntime as ort
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.onnx"
    torch.manual_seed(SEED)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            module, inputs, names, output = MODELS[name]()
            module = module.eval()
            args = tuple(torch.from_numpy(inputs[n]) for n in names)
            expected = module(*args).numpy()
            torch.onnx.export(module, args, str(path), dynamo=True, opset_version=OPSET, input_names=names,
                              output_names=[output], external_data=False, verbose=False)
        finally:
            logging.disable(previous)
    feeds = {n: inputs[n] for n in names}
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    error = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))
    if got.shape != expected.shape or error > 1e-4:
        raise RuntimeError(f"{path}: onnxruntime's output differs from PyTorch's (shape {got.shape} against "
                           f"{expected.shape}, max relative error {error:.3g})")
    np.savez(path.with_suffix(".inputs.npz"), **feeds)
    np.savez(path.with_suffix(".expected.npz"), **{output: expected.astype(np.float32)})
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench-models", help="the folder to write")
    parser.add_argument("--only", help=f"comma-separated names of the models to make (of {', '.join(MODELS)})")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}: choose from {', '.join(MODELS)}")
    for name in names:
        t0 = time.perf_counter()
        path = make_model(name, args.out)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) and its inputs in {time.perf_counter() - t0:.0f} s: "
              f"moa-edge bench model {path} --inputs {path.with_suffix('.inputs.npz')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
