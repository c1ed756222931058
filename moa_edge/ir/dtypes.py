"""Datatypes: one record per element type the IR names, and the quantisation slot of a tensor.

Everything that depends on an element type (its numpy and C types, the suffix of the kernels
that compute in it, its size in bytes, its ONNX enum) reads it from the record: nothing else
assumes four-byte floats. The generated C computes on tensors of the runtime types (the kernels in
float32, the element-wise ops and the copies in any of them); it also holds
float16 and bfloat16 ones (HALF_DTYPES: a model's inputs and outputs, the results of Cast), which
only conversions read and write (passes/half.py), and attention reads as its Q, K or V (widened
exactly as it loads them: passes/half_attention.py, a --kv-cache fp16 cache). The other types are
named so that constants of them can be imported and folded, and refused by name later. float32 is
the only type the kernels compute in (COMPUTE_DTYPE).
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes  # noqa: F401  (numpy's bfloat16: np.dtype("bfloat16") is found once it is imported)
import numpy as np
import onnx

from moa_edge.errors import MoaEdgeError

_T = onnx.TensorProto


@dataclass(frozen=True)
class DType:
    name: str         # Tensor.dtype: numpy's name of the type
    numpy: np.dtype
    c_type: str
    suffix: str       # of the kernels that compute in it: moa_gemm_f32
    itemsize: int     # bytes per element
    onnx: int         # onnx.TensorProto.DataType
    is_float: bool
    runtime: bool     # the generated C holds tensors of this type


def _record(name: str, c_type: str, suffix: str, itemsize: int, onnx_type: int, runtime: bool = False) -> DType:
    numpy_type = np.dtype(name)
    is_float = numpy_type.kind == "f" or name.startswith(("bfloat", "float"))  # ml_dtypes' are of numpy kind "V"
    return DType(name, numpy_type, c_type, suffix, itemsize, onnx_type, is_float, runtime)


# The runtime types first, in the order error messages list them.
_RECORDS = (
    _record("float32", "float", "f32", 4, _T.FLOAT, runtime=True),
    _record("bool", "uint8_t", "u8", 1, _T.BOOL, runtime=True),  # C's bool has no fixed size: one byte, 0 or 1
    _record("int64", "int64_t", "i64", 8, _T.INT64, runtime=True),
    _record("int32", "int32_t", "i32", 4, _T.INT32, runtime=True),
    # Held and moved by the generated C, and computed in by the element-wise ops (C's arithmetic
    # in the type itself: integers wrap as ONNX's do; double's functions are float32's).
    _record("float64", "double", "f64", 8, _T.DOUBLE, runtime=True),
    _record("int8", "int8_t", "i8", 1, _T.INT8, runtime=True),
    _record("uint8", "uint8_t", "u8", 1, _T.UINT8, runtime=True),
    _record("int16", "int16_t", "i16", 2, _T.INT16, runtime=True),
    _record("uint16", "uint16_t", "u16", 2, _T.UINT16, runtime=True),
    _record("uint32", "uint32_t", "u32", 4, _T.UINT32, runtime=True),
    _record("uint64", "uint64_t", "u64", 8, _T.UINT64, runtime=True),
    _record("float16", "uint16_t", "f16", 2, _T.FLOAT16),  # C99 has no half type: its bits
    _record("bfloat16", "uint16_t", "bf16", 2, _T.BFLOAT16),  # the top half of a float32's bits
    # One element per byte in its low bits, as ml_dtypes holds them (moa/small_types.h).
    _record("float8_e4m3fn", "uint8_t", "f8e4m3fn", 1, _T.FLOAT8E4M3FN),
    _record("float8_e4m3fnuz", "uint8_t", "f8e4m3fnuz", 1, _T.FLOAT8E4M3FNUZ),
    _record("float8_e5m2", "uint8_t", "f8e5m2", 1, _T.FLOAT8E5M2),
    _record("float8_e5m2fnuz", "uint8_t", "f8e5m2fnuz", 1, _T.FLOAT8E5M2FNUZ),
    _record("float8_e8m0fnu", "uint8_t", "f8e8m0", 1, _T.FLOAT8E8M0),
    _record("float4_e2m1fn", "uint8_t", "f4e2m1", 1, _T.FLOAT4E2M1),
    _record("int4", "uint8_t", "i4", 1, _T.INT4),
    _record("uint4", "uint8_t", "u4", 1, _T.UINT4),
    _record("int2", "uint8_t", "i2", 1, _T.INT2),
    _record("uint2", "uint8_t", "u2", 1, _T.UINT2),
)
_BY_NAME = {r.name: r for r in _RECORDS}
_BY_ONNX = {r.onnx: r for r in _RECORDS}
_BY_NUMPY = {r.numpy: r for r in _RECORDS}

KNOWN_DTYPES = tuple(_BY_NAME)
RUNTIME_DTYPES = tuple(r.name for r in _RECORDS if r.runtime)
# Held by the generated C but never computed in: converted to float32 where they enter (a model's
# inputs, Cast) and rounded to where they leave (its outputs, Cast), as passes/half.py arranges.
HALF_DTYPES = ("float16", "bfloat16")
# Held too, one element per byte, and read and written by Cast alone (CastLike, QuantizeLinear and
# DequantizeLinear of them are not computed yet).
SMALL_DTYPES = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
                "float4_e2m1fn", "int4", "uint4", "int2", "uint2")
CAST_ONLY_DTYPES = HALF_DTYPES + SMALL_DTYPES
HELD_DTYPES = RUNTIME_DTYPES + CAST_ONLY_DTYPES
# Constants may also be stored in these: quantized weights (int8, 4-bit pairs as uint8) and
# float16 weights, which only their own kernels read (each checks with require_dtypes).
WEIGHT_DTYPES = RUNTIME_DTYPES + ("int8", "uint8", "float16")
COMPUTE_DTYPE = _BY_NAME["float32"]  # the one type kernels, their scratch and attention compute in


def dtype(name: str) -> DType:
    record = _BY_NAME.get(name)
    if record is None:
        raise MoaEdgeError(f"element type {name!r} is unknown to moa-edge (it knows {', '.join(KNOWN_DTYPES)})")
    return record


def from_onnx(elem_type: int) -> DType | None:
    """The record of an onnx.TensorProto element type; None for one moa-edge does not name."""
    return _BY_ONNX.get(elem_type)


def from_numpy(numpy_type) -> DType | None:
    """The record of a numpy dtype; None for one moa-edge does not name."""
    return _BY_NUMPY.get(np.dtype(numpy_type))


def name_of_numpy(numpy_type) -> str:
    """Tensor.dtype of an array: its record's name, or numpy's for a type without a record (a
    constant of it can still be folded away, or is refused by name where the runtime needs it)."""
    record = from_numpy(numpy_type)
    return record.name if record is not None else np.dtype(numpy_type).name


def require_dtypes(node, graph, allowed=(COMPUTE_DTYPE.name,), names=None) -> None:
    """Refuse `node` unless each tensor of `names` (default: all its inputs and outputs) has one
    of the `allowed` types: the one check every kernel that computes in fixed types makes."""
    for name in [*node.inputs, *node.outputs] if names is None else names:
        if name and graph.tensors[name].dtype not in allowed:
            raise MoaEdgeError(f"{node.op} node {node.name!r}: {name!r} is {graph.tensors[name].dtype}; "
                               f"only {' or '.join(allowed)} is supported")


@dataclass(frozen=True, eq=False)  # eq=False: the fields are arrays, compared by identity
class Quantization:
    """How a tensor's stored integers map to reals: real = (q - zero_point) * scale, as ONNX's
    DequantizeLinear. Per tensor (axis None), per channel along `axis`, or per block of
    `block_size` elements along `axis`; `bits` of each stored value (4: two to a byte).
    float32 tensors never carry one."""
    scale: np.ndarray                 # a scalar, one per channel, or one per block
    zero_point: np.ndarray | None = None  # same shape as scale, of the tensor's type; None: 0
    axis: int | None = None
    block_size: int | None = None
    bits: int = 8
