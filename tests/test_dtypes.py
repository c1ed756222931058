"""The datatype records against numpy, onnx and the C compiler's own sizes; the lookups and the
one dtype check the kernels share."""
import cffi
import ml_dtypes
import numpy as np
import onnx
import pytest

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node, Tensor, dtypes

RECORDS = [dtypes.dtype(name) for name in dtypes.KNOWN_DTYPES]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.name)
def test_record_agrees_with_numpy_onnx_and_c(record):
    assert record.numpy == np.dtype(record.name)
    assert record.itemsize == np.dtype(record.name).itemsize
    ml_floats = {"bfloat16", *(n for n in dir(ml_dtypes) if n.startswith("float"))}  # numpy kind "V"
    is_float = np.issubdtype(np.dtype(record.name), np.floating) or record.name in ml_floats
    assert record.is_float == is_float
    assert onnx.helper.tensor_dtype_to_np_dtype(record.onnx) == np.dtype(record.name)
    assert onnx.helper.np_dtype_to_tensor_dtype(np.dtype(record.name)) == record.onnx
    assert cffi.FFI().sizeof(record.c_type) == np.dtype(record.name).itemsize


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.name)
def test_lookups_find_the_same_record(record):
    assert dtypes.from_onnx(record.onnx) is record
    assert dtypes.from_numpy(np.dtype(record.name)) is record
    assert dtypes.name_of_numpy(np.zeros(1, record.name).dtype) == record.name


def test_the_runtime_types_and_the_compute_type():
    assert dtypes.RUNTIME_DTYPES == ("float32", "bool", "int64", "int32", "float64", "int8", "uint8", "int16", "uint16",
                                     "uint32", "uint64")  # the order error messages list
    assert dtypes.HELD_DTYPES == (*dtypes.RUNTIME_DTYPES, "float16", "bfloat16", *dtypes.SMALL_DTYPES)  # converted where they enter
    assert dtypes.COMPUTE_DTYPE.numpy == np.float32 and dtypes.COMPUTE_DTYPE.suffix == "f32"


def test_names_without_a_record():
    assert dtypes.from_onnx(onnx.TensorProto.COMPLEX64) is None and dtypes.from_onnx(None) is None
    assert dtypes.from_numpy(np.complex64) is None
    assert dtypes.name_of_numpy(np.complex64) == "complex64"  # such a constant keeps numpy's name
    with pytest.raises(MoaEdgeError, match="'complex64' is unknown"):
        dtypes.dtype("complex64")


def test_tensor_bytes_and_quantisation_slot():
    assert Tensor("x", (2, 3), "int64").nbytes == 2 * 3 * 8
    assert Tensor("x", (2, 3), "float16").nbytes == 2 * 3 * 2
    assert Tensor("x", (4,), "float32").quant is None
    quant = dtypes.Quantization(np.full(4, 0.5, np.float32), np.zeros(4, np.int8), axis=0)
    t = Tensor("w", (4, 8), "int8", np.zeros((4, 8), np.int8), quant)
    assert t.quant.axis == 0 and t.quant.block_size is None and t.nbytes == 32


def _graph(**types) -> tuple[Node, Graph]:
    node = Node("MatMul", "mm", ["a", "b"], ["y"])
    return node, Graph("g", ["a", "b"], ["y"], [node], {n: Tensor(n, (2, 2), t) for n, t in types.items()})


def test_require_dtypes():
    node, graph = _graph(a="float32", b="float32", y="float32")
    dtypes.require_dtypes(node, graph)
    node, graph = _graph(a="float32", b="int64", y="float32")
    with pytest.raises(MoaEdgeError, match=r"^MatMul node 'mm': 'b' is int64; only float32 is supported$"):
        dtypes.require_dtypes(node, graph)
    dtypes.require_dtypes(node, graph, names=["a", "y"])
    dtypes.require_dtypes(node, graph, ("int64",), names=["b"])
    with pytest.raises(MoaEdgeError, match="only int64 or int32 is supported"):
        dtypes.require_dtypes(node, graph, ("int64", "int32"))
