"""Check SmolLM2-135M-Instruct as generated C on boards: for every prompt of prompts.json (written by
export.py), the greedy tokens equal transformers' generate and the teacher-forced logits are within
1e-4 of the float64 torch model (relative to the largest |logit|). The emulated boards take minutes
per prompt under qemu, so this is a script, not part of `make test` (which checks the host).

    python examples/smollm2/export.py --out build/smollm2 --exporter ts17
    python examples/smollm2/check.py build/smollm2 --board host,rpi4,k230 [--json FILE]
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path, help="export.py's --out folder (model.onnx, prompts.json)")
    parser.add_argument("--board", default="host,rpi4,k230", help="comma-separated boards")
    parser.add_argument("--max-context", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=3, help="how many of prompts.json's prompts")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    prompts = json.loads((args.export / "prompts.json").read_text())[:args.prompts]
    model, _ = smollm2.load(smollm2.gguf_dir())
    references = [reference_logits(model, p["ids"] + p["expected_tokens"]) for p in prompts]
    rows, ok = [], True
    for name in args.board.split(","):
        board = load_board(name)
        project = args.export / f"build-{name}"
        if not project.exists():
            convert(args.export / "model.onnx", project, board=board, max_context=args.max_context)
        binary, info = build(project, board), generation_info(project)
        for prompt, reference in zip(prompts, references):
            n = len(prompt["ids"])
            got = generate_ids(binary, board, info, prompt["ids"], len(prompt["expected_tokens"]), timeout=None)
            forced = generate_ids(binary, board, info, prompt["ids"], 1, forced_ids=prompt["expected_tokens"],
                                  timeout=None)
            want = reference[n - 1:n - 1 + len(prompt["expected_tokens"])]
            error = float(np.abs(forced["logits"] - want).max() / np.abs(want).max())
            row = {"board": name, "question": prompt["question"], "tokens_equal": got["tokens"] == prompt["expected_tokens"],
                   "relative_logit_error": error, "prefill_tokens_per_s": got["prefill_tokens_per_s"],
                   "decode_tokens_per_s": got["decode_tokens_per_s"], "max_rss_bytes": got["max_rss_bytes"]}
            row["ok"] = row["tokens_equal"] and error < RELATIVE_LOGITS
            ok = ok and row["ok"]
            rows.append(row)
            print(f"{name:6} {prompt['question'][:34]:34} tokens {'equal' if row['tokens_equal'] else 'DIFFER'}, "
                  f"logits {error:.1e}, prefill {row['prefill_tokens_per_s']:.2f} tok/s, "
                  f"decode {row['decode_tokens_per_s']:.2f} tok/s{'' if row['ok'] else '  FAIL'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print("ALL PASS" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
