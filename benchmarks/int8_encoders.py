"""Issue 14's encoder benchmark: moa-edge against onnxruntime on onnxruntime's own int8 file.

For MiniLM-L6 (the pretrained sentence encoder, examples/minilm) and BERT-base (BertConfig's
defaults: 12 layers, hidden 768, 12 heads; random weights, seeded: speed does not depend on
them), both 2 x 128 tokens with mean pooling, this exports the float model, writes onnxruntime's
`quantize_dynamic` file of it (the default settings: int8 weights per tensor, dynamic uint8
activations) and runs `moa-edge bench model` on that file: moa-edge converts it (MatMulInteger
imported bit for bit, the int8 x int8 GEMM of moa/igemm.h) and both sides run it on one thread,
side by side, best of --repeat runs. Target: latency ratio moa-edge / onnxruntime <= 1.0.

    python benchmarks/int8_encoders.py [--work DIR] [--repeat 30] [--json benchmarks/results/model-int8.json]

The ISA is the host's (moa/isa.h picks AVX-512 where the CPU has it); the same C is also built
with -march=x86-64-v3 (--host-march), the AVX2 path, and timed in the same run against onnxruntime
held to its AVX2 kernels when the host has AVX-512 (moa_edge/harness/cpuid_mask.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "minilm"))

from export_minilm import INPUT_NAMES, OPSET, SEQ, SentenceEncoder, export_minilm  # noqa: E402


def export_bert_base(out: Path, seq: int = SEQ) -> Path:
    """BertConfig() (BERT-base's sizes), seeded random weights, the MiniLM wrapper, 2 x seq tokens."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    encoder = SentenceEncoder(BertModel(BertConfig(), add_pooling_layer=False).eval()).eval()
    rng = np.random.default_rng(0)
    inputs = {"input_ids": rng.integers(1000, 30000, (2, seq)), "attention_mask": np.ones((2, seq), np.int64),
              "token_type_ids": np.zeros((2, seq), np.int64)}
    inputs["attention_mask"][1, seq // 2:] = 0  # a padded sentence, as the MiniLM inputs have
    args = tuple(torch.from_numpy(np.ascontiguousarray(inputs[name], np.int64)) for name in INPUT_NAMES)
    torch.onnx.export(encoder, args, str(out), dynamo=True, opset_version=OPSET, input_names=INPUT_NAMES,
                      output_names=["embeddings"], external_data=False, verbose=False)
    np.savez(out.with_suffix(".inputs.npz"), **{k: np.ascontiguousarray(v, np.int64) for k, v in inputs.items()})
    return out


def quantized(model: Path) -> Path:
    from onnxruntime.quantization import quantize_dynamic
    out = model.with_name(model.stem + ".qdyn.onnx")
    if not out.exists():
        quantize_dynamic(str(model), str(out))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "int8-encoders")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--host-march", default="x86-64-v3", help="another host build, timed too ('' for none)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from moa_edge.harness.model_bench import bench_model
    from moa_edge.pipeline import convert
    args.work.mkdir(parents=True, exist_ok=True)
    minilm = args.work / "minilm.onnx"
    if not minilm.exists():
        export_minilm(minilm)
    bert = args.work / "bert-base.onnx"
    if not bert.exists():
        export_bert_base(bert)
    rows = []
    for name, model in (("MiniLM-L6", minilm), ("BERT-base", bert)):
        q = quantized(model)
        marches = [args.host_march] if args.host_march else []
        result = bench_model(q, convert, repeat=args.repeat, inputs_path=model.with_suffix(".inputs.npz"),
                             host_march=marches)
        load = os.getloadavg()[0]
        latency = result["latency_us"]
        rows.append({"model": name, "file": q.name, "latency_us": latency,
                     "weights_bytes": result["memory_bytes"]["weights"], "load_average": load})
        for label, key in (("native", ""), *((m, f"_{m}") for m in marches)):
            ratio = latency[f"ratio{key}"]
            ort = latency.get(f"onnxruntime_avx2{key}", latency["onnxruntime"])  # held to AVX2 for an AVX2 build
            print(f"{name:10} moa-edge ({label:9}) {latency[f'moa_edge{key}'] / 1e3:8.2f} ms  onnxruntime "
                  f"{ort / 1e3:8.2f} ms  ratio {ratio:.2f} "
                  f"(target <= 1.0: {'met' if ratio <= 1.0 else 'NOT met'}), load {load:.1f}", flush=True)
    summary = {"benchmark": "int8 encoders: moa-edge vs onnxruntime on its quantize_dynamic file, one thread",
               "machine": platform.processor() or platform.machine(), "isa_flags": _isa_flags(),
               "repeat": args.repeat, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if all(v <= 1.0 for r in rows for k, v in r["latency_us"].items() if k.startswith("ratio")) else 1


def _isa_flags() -> list[str]:
    """The CPU's vector extensions that pick a kernel set (avx2, avx512f, avx512_vnni, ...)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags.split(":")[1].split() if f.startswith(("avx2", "avx512", "avx_vnni", "fma")))


if __name__ == "__main__":
    sys.exit(main())
