"""Einsum (ops/einsum.py), Tile, DepthToSpace, SpaceToDepth (ops/rearrange.py), OneHot, EyeLike and
CumProd (ops/indexing.py) on hand-built single-node models the node cases do not cover: diagonals
within a product, a broadcast '...', implicit outputs, three operands, integer types, indices
outside the depth. Each goes through convert -> C -> host run (one program for all, as the node
suite builds them) and is compared with onnxruntime on the original file, or with torch where
onnxruntime has no kernel for the type or opset."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
from onnx import helper, numpy_helper
import pytest
import torch

from conftest import require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.pipeline import convert
import node_suite

_rng = np.random.default_rng(11)


def _floats(*shape):
    return _rng.standard_normal(shape).astype(np.float32)


def _ints(*shape, dtype=np.int64, low=-4, high=5):
    return _rng.integers(low, high, shape).astype(dtype)


def _model(op, operands: dict, constants: tuple, attrs: dict, opset: int, out_shape=None) -> onnx.ModelProto:
    """One node of `op` over `operands`, in order, those named in `constants` as initializers and
    the others as graph inputs; its output's type and shape from ONNX shape inference, or float32
    of `out_shape`."""
    node = helper.make_node(op, list(operands), ["y"], name=f"{op.lower()}_node", **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                      for n, v in operands.items() if n not in constants],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(v, n) for n, v in operands.items() if n in constants])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    if out_shape is None:
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info("y", onnx.TensorProto.UNDEFINED, None))
        out = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output[0].type.tensor_type
        model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", out.elem_type,
                                                                     [d.dim_value for d in out.shape.dim]))
    return model


def _onnxruntime(model, feeds):
    import onnxruntime
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _t(a):
    return torch.from_numpy(np.asarray(a))


def _exclusive_reverse_cumprod(x, axis):
    """out[t] = the product of x[s] for s > t along axis (1 for the last)."""
    through = torch.flip(torch.cumprod(torch.flip(x, [axis]), axis), [axis])  # s >= t
    return torch.cat([through.narrow(axis, 1, x.shape[axis] - 1), torch.ones_like(through.narrow(axis, 0, 1))], axis)


# name -> (op, operands in order, the names of those held as constants, attributes, opset, expected:
#          None for onnxruntime's, else a function of the run-time inputs computing it in torch)
CASES = {
    "einsum_diagonal_times_matrix": ("Einsum", {"a": _floats(3, 3, 4), "b": _floats(4, 2)}, (),
                                     {"equation": "iij,jk->ik"}, 13, None),
    "einsum_trace_implicit": ("Einsum", {"a": _floats(4, 4)}, (), {"equation": "ii"}, 13, None),
    "einsum_implicit_order": ("Einsum", {"a": _floats(3, 5), "b": _floats(2, 5)}, (), {"equation": "cb,ab"}, 13, None),
    "einsum_ellipsis_broadcast": ("Einsum", {"a": _floats(2, 1, 3, 4), "b": _floats(1, 5, 4, 2)}, (),
                                  {"equation": "...ij,...jk->...ik"}, 13, None),
    "einsum_three_operands": ("Einsum", {"a": _floats(2, 3), "b": _floats(3, 4), "c": _floats(4, 5)}, (),
                              {"equation": "ij, jk ,kl->li"}, 13, None),
    "einsum_outer_int64": ("Einsum", {"a": _ints(3), "b": _ints(4)}, (), {"equation": "i,j->ij"}, 13, None),
    "einsum_sum_all_int32": ("Einsum", {"a": _ints(3, 4, dtype=np.int32)}, (), {"equation": "ij->"}, 13, None),
    "einsum_batch_int8": ("Einsum", {"a": _ints(2, 3, 4, dtype=np.int8), "b": _ints(2, 4, 2, dtype=np.int8)}, (),
                          {"equation": "bij,bjk->bik"}, 13,
                          lambda a, b: torch.einsum("bij,bjk->bik", _t(a), _t(b))),
    "tile_float": ("Tile", {"x": _floats(2, 3), "r": np.array([3, 2], np.int64)}, ("r",), {}, 13, None),
    "tile_int64_rank3": ("Tile", {"x": _ints(2, 1, 3), "r": np.array([1, 4, 2], np.int64)}, ("r",), {}, 13, None),
    "tile_bool": ("Tile", {"x": _floats(3, 2) > 0, "r": np.array([2, 1], np.int64)}, ("r",), {}, 13, None),
    "depthtospace_dcr": ("DepthToSpace", {"x": _floats(2, 8, 2, 3)}, (), {"blocksize": 2, "mode": "DCR"}, 13, None),
    "depthtospace_crd_uint8": ("DepthToSpace", {"x": _ints(1, 18, 2, 2, dtype=np.uint8, low=0, high=200)}, (),
                               {"blocksize": 3, "mode": "CRD"}, 13, None),
    "spacetodepth_dcr": ("SpaceToDepth", {"x": _floats(2, 3, 4, 6)}, (), {"blocksize": 2}, 13, None),
    "spacetodepth_crd": ("SpaceToDepth", {"x": _floats(1, 2, 6, 3)}, (), {"blocksize": 3, "mode": "CRD"}, 28,
                         lambda x: torch.nn.functional.pixel_unshuffle(_t(x), 3)),
    "onehot_negative_and_outside": ("OneHot", {"i": np.array([[0, -1, 5], [-5, -6, 2]], np.int64),
                                               "depth": np.array(5, np.int64), "v": np.array([-1.5, 2.0], np.float32)},
                                    ("depth",), {"axis": 1}, 11, None),
    "onehot_float_indices_int64_values": ("OneHot", {"i": np.array([1.0, 3.0, -2.0, 7.0], np.float32),
                                                     "depth": np.array([4], np.int64), "v": np.array([0, 9], np.int64)},
                                          ("depth",), {"axis": 0}, 11, None),
    "eyelike_upper_diagonal": ("EyeLike", {"x": _floats(3, 5)}, (), {"k": 2}, 9, None),
    "eyelike_lower_int64_of_float": ("EyeLike", {"x": _floats(4, 3)}, (), {"k": -1, "dtype": onnx.TensorProto.INT64},
                                     9, None),
    "cumprod_reverse_exclusive": ("CumProd", {"x": _floats(2, 3, 4), "axis": np.array(1, np.int64)}, ("axis",),
                                  {"reverse": 1, "exclusive": 1}, 26,
                                  lambda x: _exclusive_reverse_cumprod(_t(x).double(), 1)),
    "cumprod_int64_runtime_axis": ("CumProd", {"x": _ints(3, 4, low=-3, high=4), "axis": np.array(-1, np.int32)}, (),
                                   {}, 26, lambda x, axis: torch.cumprod(_t(x), -1)),
}


def _cases():
    cases = []
    for index, (name, (op, operands, constants, attrs, opset, expected)) in enumerate(CASES.items()):
        model = _model(op, operands, constants, attrs, opset)
        inputs = {n: v for n, v in operands.items() if n not in constants}
        want = _onnxruntime(model, inputs) if expected is None else expected(*inputs.values()).numpy()
        cases.append((index, SimpleNamespace(name=name, model=model, data_sets=[(list(inputs.values()), [want])],
                                             rtol=1e-5, atol=1e-6)))
    return cases


@pytest.mark.board
def test_the_new_ops_match_onnxruntime_or_torch(tmp_path):
    require_board("host")
    library = node_suite.runtime_library(tmp_path / "runtime", "cc", ["-O2"])
    outcomes = node_suite.run_group(_cases(), tmp_path, "cc", ["-O2"], library)
    assert len(outcomes) == len(CASES)
    assert all(o["status"] == "pass" for o in outcomes.values()), outcomes


@pytest.mark.parametrize("op, operands, constants, attrs, opset, out_shape, fragment", [
    ("Einsum", {"a": _floats(2, 3)}, (), {"equation": "ij->jj"}, 13, [3, 3], "repeats a label in its output"),
    ("Tile", {"x": _floats(2, 3), "r": np.array([1, 2], np.int64)}, (), {}, 13, [2, 6], "only constant repeats"),
    ("OneHot", {"i": np.array([1, 2], np.int64), "depth": np.array(3, np.int64), "v": np.array([0.0, 1.0], np.float32)},
     ("v",), {}, 11, [2, 3], "only a constant depth"),
])
def test_what_is_not_supported_is_refused_by_name(tmp_path, op, operands, constants, attrs, opset, out_shape, fragment):
    onnx.save(_model(op, operands, constants, attrs, opset, out_shape), tmp_path / "m.onnx")
    with pytest.raises(MoaEdgeError, match=fragment):
        convert(tmp_path / "m.onnx", tmp_path / "p")
