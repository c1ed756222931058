"""Check SmolLM2-135M-Instruct as generated C on boards: for every prompt of prompts.json (written by
export.py), the greedy tokens equal transformers' generate and the teacher-forced logits are within
1e-4 of the float64 torch model (relative to the largest |logit|). The emulated boards take minutes
per prompt under qemu, so this is a script, not part of `make test` (which checks the host).

With --weights (convert --weights int8 | int4[:BLOCK]) the reference is the same torch model given
the weights the build holds (passes/quantize.dequantized: the same weights, so the same checks), and
the rows also give the accuracy the format gives up: top-1 agreement with the float model, its
greedy tokens of prompts.json fed back (teacher forcing) step after step.

    python examples/smollm2/export.py --out build/smollm2 --exporter ts17 [--new-tokens 64]
    python examples/smollm2/check.py build/smollm2 --board host,rpi4,k230 [--weights int8] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export as smollm2  # noqa: E402  (this folder's export.py)

from moa_edge.harness.build import build  # noqa: E402
from moa_edge.harness.generation import generate_ids, generation_info  # noqa: E402
from moa_edge.passes.quantize import parse_weights  # noqa: E402
from moa_edge.pipeline import convert  # noqa: E402
from moa_edge.target import load_board  # noqa: E402

RELATIVE_LOGITS = 1e-4


def reference_logits(model, ids: list[int]) -> np.ndarray:
    """The float64 torch model's logits at every position."""
    double = model.to(torch.float64)
    with torch.no_grad():
        logits = double(torch.tensor([ids])).logits[0].numpy()
    model.to(torch.float32)
    return logits


def top1_agreement(logits: np.ndarray, tokens: list[int]) -> float:
    """The fraction of steps whose highest logit is the token the float model chose."""
    return float(np.mean(logits.argmax(axis=1) == np.asarray(tokens)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path, help="export.py's --out folder (model.onnx, prompts.json)")
    parser.add_argument("--board", default="host,rpi4,k230", help="comma-separated boards")
    parser.add_argument("--max-context", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=3, help="how many of prompts.json's prompts")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N of them (to share the boards' "
                                                            "slow runs among processes)")
    parser.add_argument("--forced-only", action="store_true",
                        help="one run per prompt: the teacher-forced one, whose highest logit at every step must be "
                             "the expected token (then greedy decoding gives exactly those tokens, step by step)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--weights", metavar="FORMAT", help="convert --weights: int8, int4[:BLOCK]")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens checked per prompt")
    parser.add_argument("--no-agreement", action="store_true",
                        help="with --weights: skip the top-1 agreement with the float model (a third run per "
                             "prompt, the slowest under qemu; the same integers on every board)")
    args = parser.parse_args(argv)
    prompts = json.loads((args.export / "prompts.json").read_text())[args.skip:args.skip + args.prompts]
    model, _ = smollm2.load(smollm2.gguf_dir())
    rows, ok, reference_model = [], True, None
    for name in args.board.split(","):
        board = load_board(name)
        project = args.export / f"build-{name}{'-' + args.weights.replace(':', '-') if args.weights else ''}"
        if not project.exists():
            convert(args.export / "model.onnx", project, board=board, max_context=args.max_context,
                    weights=parse_weights(args.weights))
        if reference_model is None:  # the same weights as the build (float32 ones without --weights)
            ops = {op["op"] for op in json.loads((project / "report.json").read_text())["ops"]}
            if args.weights:
                smollm2.quantize_like_convert(model, args.weights, embedding="MoaQGather" in ops)
            reference_model = model
            for p in prompts:
                p["float_tokens"] = p["expected_tokens"]
                p["expected_tokens"] = (smollm2.greedy_generate(model, p["ids"], args.new_tokens) if args.weights
                                        else p["expected_tokens"][:args.new_tokens])
            references = [reference_logits(model, p["ids"] + p["expected_tokens"]) for p in prompts]
        binary, info = build(project, board), generation_info(project)
        for prompt, reference in zip(prompts, references):
            n = len(prompt["ids"])
            forced = generate_ids(binary, board, info, prompt["ids"], 1, forced_ids=prompt["expected_tokens"],
                                  timeout=None)
            got = forced if args.forced_only else generate_ids(binary, board, info, prompt["ids"],
                                                               len(prompt["expected_tokens"]), timeout=None)
            want = reference[n - 1:n - 1 + len(prompt["expected_tokens"])]
            error = float(np.abs(forced["logits"] - want).max() / np.abs(want).max())
            row = {"board": name, "weights": args.weights or "float32", "question": prompt["question"],
                   "tokens_equal": (forced["logits"].argmax(axis=1).tolist() if args.forced_only else got["tokens"])
                   == prompt["expected_tokens"],
                   "relative_logit_error": error, "prefill_tokens_per_s": got["prefill_tokens_per_s"],
                   "decode_tokens_per_s": got["decode_tokens_per_s"], "max_rss_bytes": got["max_rss_bytes"]}
            if args.weights and not args.no_agreement:  # what the format gives up, against the float model's tokens
                float_forced = generate_ids(binary, board, info, prompt["ids"], 1, forced_ids=prompt["float_tokens"],
                                            timeout=None)
                row["top1_agreement_with_float"] = top1_agreement(float_forced["logits"], prompt["float_tokens"])
                row["agreement_steps"] = len(prompt["float_tokens"])
            row["ok"] = row["tokens_equal"] and error < RELATIVE_LOGITS
            ok = ok and row["ok"]
            rows.append(row)
            agreement = (f", top-1 agreement with float {row['top1_agreement_with_float']:.1%} of "
                         f"{row['agreement_steps']}" if "agreement_steps" in row else "")
            print(f"{name:6} {prompt['question'][:34]:34} tokens {'equal' if row['tokens_equal'] else 'DIFFER'}, "
                  f"logits {error:.1e}{agreement}, prefill {row['prefill_tokens_per_s']:.2f} tok/s, "
                  f"decode {row['decode_tokens_per_s']:.2f} tok/s{'' if row['ok'] else '  FAIL'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print("ALL PASS" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
