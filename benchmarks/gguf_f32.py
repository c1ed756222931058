"""Rewrite a GGUF file with every tensor dequantised to float32, all metadata kept (architecture,
hyperparameters, tokenizer arrays), so that llama.cpp runs a model at float32 from the very weights
a Q4/Q8 GGUF ships, the weights transformers dequantises when it exports the ONNX file
(`moa-edge bench generate --gguf`).

    python benchmarks/gguf_f32.py IN.gguf OUT.gguf
"""
from __future__ import annotations

import argparse
from pathlib import Path
import sys

import gguf
import numpy as np


def dequantise_to_f32(source: Path, target: Path) -> int:
    """Write target from source with F32 tensors; returns the number of tensors converted."""
    reader = gguf.GGUFReader(source, "r")
    architecture = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(target, architecture)  # writes general.architecture itself
    for field in reader.fields.values():
        # GGUF.* (version, counts) are the file's framing, rewritten by the writer.
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:  # it now says what the tensors are
            value = int(gguf.LlamaFileType.ALL_F32)
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        # dequantize keeps the reader's numpy shape (GGUF dimensions reversed), which add_tensor expects.
        weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        writer.add_tensor(tensor.name, weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(reader.tensors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the GGUF file to read (any tensor types gguf can dequantise)")
    parser.add_argument("target", type=Path, help="the F32 GGUF file to write")
    args = parser.parse_args(argv)
    if args.source.resolve() == args.target.resolve():
        parser.error("write to another file than the one read")
    count = dequantise_to_f32(args.source, args.target)
    print(f"wrote {args.target}: {count} tensors in F32 ({args.target.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
