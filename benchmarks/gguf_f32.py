"""Rewrite a GGUF file with every tensor dequantised to float32, all metadata kept (architecture,
hyperparameters, tokenizer arrays), so that llama.cpp runs a model at float32 from the very weights
a Q4/Q8 GGUF ships, the weights transformers dequantises when it exports the ONNX file
(`moa-edge bench generate --gguf`). --type Q8_0, Q4_0 or Q4_1 quantises those float32 weights
instead, with the gguf package's quantize, as `bench generate --weights` does for its llama.cpp side
(moa_edge/harness/gguf_weights.py: the output layer stays Q8_0 at 4 bits, norms F32).

    python benchmarks/gguf_f32.py IN.gguf OUT.gguf [--type F32|Q8_0|Q4_0|Q4_1]
"""
from __future__ import annotations

import argparse
from pathlib import Path
import sys

from moa_edge.errors import MoaEdgeError
from moa_edge.harness.gguf_weights import FILE_TYPES, write_gguf


def dequantise_to_f32(source: Path, target: Path) -> int:
    """Write target from source with F32 tensors; returns the number of tensors converted."""
    return sum(write_gguf(source, target, "F32")["tensor_types"].values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the GGUF file to read (any tensor types gguf can dequantise)")
    parser.add_argument("target", type=Path, help="the GGUF file to write")
    parser.add_argument("--type", choices=list(FILE_TYPES), default="F32", help="the file type to write (default F32)")
    args = parser.parse_args(argv)
    if args.source.resolve() == args.target.resolve():
        parser.error("write to another file than the one read")
    try:
        wrote = write_gguf(args.source, args.target, args.type)
    except MoaEdgeError as e:
        parser.exit(1, f"error: {e}\n")
    types = ", ".join(f"{n} {t}" for t, n in wrote["tensor_types"].items())
    print(f"wrote {args.target}: {args.type}, tensors {types} ({wrote['file_bytes'] / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
