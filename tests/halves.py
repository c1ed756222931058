"""Helpers of the float16 and bfloat16 tests (test_half, test_half_attention): half files' float32
twins and units in the last place of a half."""
import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def float32_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every half initializer, input and output float32 (the same values): a file
    without Cast or Constant nodes computes the same function in float32."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    assert not {n.op_type for n in twin.graph.node} & {"Cast", "CastLike", "Constant"}
    halves = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
    for k, init in enumerate(twin.graph.initializer):
        if init.data_type in halves:
            twin.graph.initializer[k].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32),
                                                                       init.name))
    for vi in [*twin.graph.input, *twin.graph.output]:
        if vi.type.tensor_type.elem_type in halves:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    del twin.graph.value_info[:]
    return twin


def ulp(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """One unit in the last place of the half at each value (float64)."""
    magnitude = np.abs(values.astype(np.float64))
    mantissa = {np.dtype(np.float16): 10, BFLOAT16: 7}[dtype]
    smallest = {np.dtype(np.float16): -14, BFLOAT16: -126}[dtype]  # the subnormals' spacing below it
    return 2.0 ** (np.maximum(np.floor(np.log2(np.maximum(magnitude, 2.0 ** smallest))), smallest) - mantissa)
