"""llama.cpp's weights for `moa-edge bench generate`: a GGUF file rewritten with every tensor
dequantised to float32 (the weights transformers reads when it exports the ONNX file) and then
stored as F32 or quantised by the gguf package's own quantize (numpy ports of ggml's reference
quantisers), all metadata kept. The tensor types follow llama.cpp's llama-quantize for the file
type: norms and other 1-D tensors stay F32, and at 4 bits the token table and output layer are
Q8_0 (llama-quantize asks Q6_K there and falls back to Q8_0 when a row is not a whole number of
256-blocks, as in SmolLM2's 576; the shipped Q4_1 file has it so)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from moa_edge.errors import MoaEdgeError

# general.file_type (llama.cpp's LLAMA_FTYPE_*, gguf.LlamaFileType) of each file type written here.
# gguf is imported where a file is read or written: the bench runs without it (optional `bench` extra).
FILE_TYPES = {"F32": 0, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3}
# moa-edge's --weights type -> the llama.cpp file types it is compared with: the first is the
# issue's target (Q8_0, Q4_0); Q4_1 is the form of moa-edge's own int4 (a scale and a minimum per 32).
MATCHING = {None: ("F32",), "i8": ("Q8_0",), "u4": ("Q4_0", "Q4_1")}
# Kept at 8 bits in a 4-bit file: the output layer, and the token table that doubles as it when
# the model ties them (llama-quantize treats token_embd as the output when there is no output.weight).
OUTPUT_TENSORS = ("output.weight", "token_embd.weight")
_FOUR_BIT = ("Q4_0", "Q4_1")


def tensor_type(name: str, shape: tuple[int, ...], file_type: str):
    """The gguf.GGMLQuantizationType of one tensor (numpy shape: the last axis is a row, the one ggml
    blocks) in a file of `file_type` (a FILE_TYPES key). A row that is not a whole number of blocks
    stays F32."""
    import gguf
    if file_type not in FILE_TYPES:
        raise MoaEdgeError(f"GGUF file type {file_type!r}: not one of {', '.join(FILE_TYPES)}")
    if file_type == "F32" or len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    qtype = gguf.GGMLQuantizationType[
        "Q8_0" if file_type in _FOUR_BIT and name in OUTPUT_TENSORS else file_type]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F32


def write_gguf(source: str | Path, target: str | Path, file_type: str) -> dict:
    """Write target from source's weights as `file_type`; returns what it wrote: the file type,
    the tensor count per type and the bytes of the tensors (the weights) and of the file."""
    import gguf
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise MoaEdgeError(f"{target}: write to another file than the one read")
    try:
        reader = gguf.GGUFReader(source, "r")
    except (OSError, ValueError) as e:
        raise MoaEdgeError(f"{source}: not a GGUF file the gguf package can read ({e})") from e
    tensor_type(".", (1,), file_type)  # an unknown file type fails before anything is written
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
            value = int(FILE_TYPES[file_type])
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
    types, weights_bytes = Counter(), 0
    for tensor in reader.tensors:
        # dequantize keeps the reader's numpy shape (GGUF dimensions reversed), which add_tensor expects.
        weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        qtype = tensor_type(tensor.name, weights.shape, file_type)
        if qtype == gguf.GGMLQuantizationType.F32:
            data = weights
            writer.add_tensor(tensor.name, data)
        else:
            data = gguf.quants.quantize(weights, qtype)
            writer.add_tensor(tensor.name, data, raw_dtype=qtype)
        types[qtype.name] += 1
        weights_bytes += data.nbytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file_type": file_type, "tensor_types": dict(types), "weights_bytes": weights_bytes,
            "file_bytes": target.stat().st_size}
