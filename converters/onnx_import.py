"""ONNX file -> moa_edge IR with static shapes.

Loads (external data resolved beside the file), inlines local functions and the function bodies of
the ops moa-edge does not implement itself (converters/expand.py), pins symbolic
dimensions from --input-shape, runs ONNX shape inference and folds constant
subgraphs (shape plumbing) so the passes see plain constants.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
import onnx.version_converter
from onnx import numpy_helper

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node, Tensor, check_sizes, dtypes
from moa_edge.passes import kv_cache, qdq
from moa_edge.ops import SUPPORTED_OPS
from moa_edge.passes.fold import SHAPE_VALUES
from moa_edge.passes.versions import implemented_versions

from .expand import expand_unimplemented


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """['x=1x16x64', 'mask=1x16'] -> {'x': (1, 16, 64), 'mask': (1, 16)}"""
    shapes = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise MoaEdgeError(f"--input-shape {spec!r} is not of the form NAME=D0xD1x... with positive dims")
        shapes[name] = shape
    return shapes


# From 13 to the newest the installed onnx defines (each op's own versions: passes/versions.py);
# older models are converted to 13 by onnx's version converter first.
SUPPORTED_OPSETS = range(13, onnx.defs.onnx_opset_version() + 1)


def model_path(text) -> Path:
    """The model file named on the command line. A trailing slash names a folder: Path() would
    drop it silently and read the file, so it is refused here, before the text becomes a Path."""
    if str(text).endswith(("/", os.sep)):
        raise MoaEdgeError(f"{text}: names a folder (trailing slash), not an ONNX file")
    return Path(text)


def load_model(path: Path) -> onnx.ModelProto:
    if path.is_dir():
        raise MoaEdgeError(f"{path}: is a folder, not an ONNX file")
    if not path.is_file():
        raise MoaEdgeError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors
        raise MoaEdgeError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    _load_external_data(model, path)
    try:
        onnx.checker.check_model(model)
        # Strict shape and type inference: ops fed shapes or types they do not take.
        onnx.checker.check_model(_weightless(model), full_check=True)
    except onnx.shape_inference.InferenceError as exc:
        raise MoaEdgeError(f"{path}: not a valid ONNX model: ONNX shape inference failed ({_first_line(exc)})") from None
    except Exception as exc:  # cycles, dangling names, bad attributes
        raise MoaEdgeError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    undefined = next((vi.name for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]
                      if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == onnx.TensorProto.UNDEFINED),
                     None)
    if undefined is not None:  # the checker lets it pass; onnxruntime refuses ("Invalid tensor data type 0")
        raise MoaEdgeError(f"{path}: not a valid ONNX model (tensor {undefined!r} has element type 0, UNDEFINED)")
    if not model.graph.node:
        raise MoaEdgeError(f"{path}: the ONNX graph has no nodes")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < SUPPORTED_OPSETS.start:
        model = _upgraded(model, path, opset)
    elif opset not in SUPPORTED_OPSETS:
        raise MoaEdgeError(f"{path}: ONNX opset {opset} is outside the supported "
                           f"{SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1} (the newest the installed onnx "
                           f"{onnx.__version__} defines)")
    model = onnx.inliner.inline_local_functions(model)
    return expand_unimplemented(model, set(SUPPORTED_OPS) | set(implemented_versions()))


def _upgraded(model: onnx.ModelProto, path: Path, opset: int) -> onnx.ModelProto:
    """A model older than opset 13 as onnx's version converter writes it at 13."""
    try:
        upgraded = onnx.version_converter.convert_version(model, SUPPORTED_OPSETS.start)
        onnx.checker.check_model(upgraded)
    except Exception as exc:  # the converter's adapters raise RuntimeError and ValueError alike
        raise MoaEdgeError(f"{path}: ONNX opset {opset} is older than {SUPPORTED_OPSETS.start}, and onnx's version "
                           f"converter could not bring it to {SUPPORTED_OPSETS.start} ({_first_line(exc)})") from None
    return upgraded


def _weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each initializer longer than SHAPE_VALUES declared as a typed graph input
    instead: all that shape inference reads of a weight, without serialising its bytes (half a
    gigabyte for a small LLM) into every call. The nodes, small constants and types are copies."""
    light = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    source, graph = model.graph, light.graph
    graph.name = source.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(graph, field).extend(getattr(source, field))
    declared = {i.name for i in source.input}
    for tensor in source.initializer:
        if math.prod(tensor.dims) <= SHAPE_VALUES:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return light


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """External tensors are read from the model's own folder and nowhere else."""
    folder = path.resolve().parent
    for tensor in _all_tensors(model.graph):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            raise MoaEdgeError(f"{path}: tensor {tensor.name!r} points outside the model's folder "
                               f"(external data location {location!r}); refusing to read it")
        if not target.is_file():
            raise MoaEdgeError(f"{path}: tensor {tensor.name!r} needs external data file {location!r}, "
                               f"which is missing")
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(folder))
    except Exception as exc:
        raise MoaEdgeError(f"{path}: cannot read external data ({_first_line(exc)})") from None


def _all_tensors(graph):
    """Initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _pin_shapes(model: onnx.ModelProto, path: Path, pinned: dict[str, tuple[int, ...]]) -> None:
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    known = {i.name for i in graph_inputs}
    for name in pinned:
        if name not in known:
            raise MoaEdgeError(f"--input-shape names {name!r}, which is not an input of {path} "
                               f"(inputs: {', '.join(sorted(known))})")
    unpinned = []
    for vi in graph_inputs:
        dims = vi.type.tensor_type.shape.dim
        if vi.name in pinned:
            shape = pinned[vi.name]
            if len(shape) != len(dims):
                raise MoaEdgeError(f"--input-shape {vi.name}: rank {len(shape)} given, the model's input has rank {len(dims)}")
            for d, n in zip(dims, shape):
                if d.HasField("dim_value") and d.dim_value != n:
                    raise MoaEdgeError(f"--input-shape {vi.name}: dimension {d.dim_value} of the model cannot be {n}")
                d.Clear()
                d.dim_value = n
            continue
        symbolic = [f"{d.dim_param or '?'} (axis {axis})" for axis, d in enumerate(dims) if not d.HasField("dim_value")]
        if symbolic:
            unpinned.append(f"input {vi.name!r} has symbolic dimension(s) {', '.join(symbolic)}; pin with "
                            f"--input-shape {vi.name}=" + "x".join(
                                str(d.dim_value) if d.HasField("dim_value") else "N" for d in dims))
    if unpinned and kv_cache.is_decoder_with_cache(_links(model), list(known), [o.name for o in model.graph.output]):
        raise MoaEdgeError(f"{path}: a decoder exported with its key/value cache (past_key_values.N.key/value "
                           "inputs, or inputs appended to and returned as outputs): convert it for generation with "
                           "--max-context N, or pin every symbolic dimension with --input-shape for one fixed-length pass")
    if unpinned:
        raise MoaEdgeError(f"{path}: " + "; ".join(unpinned))


def _tensor_type(vi, path: Path, what: str) -> tuple[tuple[int, ...], str]:
    tt = vi.type.tensor_type
    dtype = _runtime_dtype(tt.elem_type)
    if dtype is None:
        raise MoaEdgeError(f"{path}: {what} {vi.name!r} has element type "
                           f"{onnx.TensorProto.DataType.Name(tt.elem_type)}, which moa-edge does not support yet")
    dims = tt.shape.dim
    if any(not d.HasField("dim_value") for d in dims):
        raise MoaEdgeError(f"{path}: the shape of {what} {vi.name!r} could not be inferred statically")
    return tuple(d.dim_value for d in dims), dtype


def _runtime_dtype(elem_type: int) -> str | None:
    """The name of an ONNX element type the runtime holds, None for any other: a graph's inputs,
    outputs and activations must be of such a type (halves are computed in float32: passes/half.py)."""
    record = dtypes.from_onnx(elem_type)
    return record.name if record is not None and record.name in dtypes.HELD_DTYPES else None


def import_onnx(path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> Graph:
    """The model as an IR graph; an output whose shape ONNX's inference leaves open (padding
    computed from Shape, as TF-style "same" convolutions export) gets it from the constant
    folding of passes.lower, or is refused there, naming it."""
    path = Path(path)
    return _import_proto(load_model(path), path, input_shapes or {}, infer_later=True)


def import_decoder(path, max_context: int, chunks: list[int]) -> list[Graph]:
    """A decoder exported with its cache (passes/kv_cache.py), as one graph per chunk size: each
    runs that many new tokens over a cache of max_context rows kept in the caller's state."""
    path = Path(path)
    model = load_model(path)
    initializers = {i.name for i in model.graph.initializer}
    dims = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            for vi in model.graph.input if vi.name not in initializers}
    pairs = kv_cache.cache_pairs(_links(model), list(dims), [o.name for o in model.graph.output])
    if not pairs:
        raise MoaEdgeError(f"{path}: has no cache inputs (past_key_values.N.key/value, or inputs appended to and "
                           "returned as outputs): it was not exported for generation with a key/value cache")
    caches = {past: reader for past, _, reader in pairs}
    graphs = []
    for chunk in chunks:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # pinning and shape inference change the proto
        graph = _import_proto(copy, path, kv_cache.generation_shapes(dims, max_context, chunk, str(path), caches),
                              infer_later=True)
        kv_cache.attach_cache(graph, max_context, chunk, str(path))
        graphs.append(graph)
    return graphs


def _links(model: onnx.ModelProto) -> list[Node]:
    """The top graph's nodes as the cache pairing sees them: op (domain-qualified as the importer
    names it), name, inputs, outputs and attributes."""
    return [Node(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}", n.name or f"{n.op_type}_{k}",
                 list(n.input), list(n.output), {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
            for k, n in enumerate(model.graph.node)]


def _import_proto(model: onnx.ModelProto, path: Path, input_shapes: dict[str, tuple[int, ...]],
                  infer_later: bool = False) -> Graph:
    qdq.refuse_quantized_operators(_links(model))
    _pin_shapes(model, path, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(_weightless(model), strict_mode=True, data_prop=True).graph
        for field in ("output", "value_info"):  # what inference adds
            del getattr(model.graph, field)[:]
            getattr(model.graph, field).extend(getattr(inferred, field))
        if any(n.domain == "com.microsoft" for n in model.graph.node):
            # onnxruntime's optimizer output: its own shape inference knows its contrib ops.
            model = _contrib_shapes(model)
    except Exception as exc:  # onnxruntime's inference fails on a bare assert (a MatMulNBits K that is not A's)
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise MoaEdgeError(f"{path}: ONNX shape inference failed: {detail}") from None

    g = model.graph
    tensors: dict[str, Tensor] = {}
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        tensors[init.name] = Tensor(init.name, tuple(arr.shape), dtypes.name_of_numpy(arr.dtype), arr)
    inputs = [i.name for i in g.input if i.name not in tensors]
    for vi in g.input:
        if vi.name not in tensors:
            shape, dtype = _tensor_type(vi, path, "input")
            tensors[vi.name] = Tensor(vi.name, shape, dtype)
    for vi in g.output:
        if infer_later and any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim):
            continue  # ONNX's data propagation stopped short (a Range over folded sizes): our folding goes on
        shape, dtype = _tensor_type(vi, path, "output")
        tensors[vi.name] = Tensor(vi.name, shape, dtype)
    for vi in g.value_info:
        tt = vi.type.tensor_type
        dtype = _runtime_dtype(tt.elem_type)
        if dtype and tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            tensors.setdefault(vi.name, Tensor(vi.name, tuple(d.dim_value for d in tt.shape.dim), dtype))

    nodes = []
    for k, n in enumerate(g.node):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        name = n.name or f"{n.op_type}_{k}"
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            arr = _constant_value(attrs)
            tensors[n.output[0]] = Tensor(n.output[0], tuple(arr.shape), dtypes.name_of_numpy(arr.dtype), arr)
            continue
        op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        nodes.append(Node(op, name, list(n.input), list(n.output), attrs))

    opsets = {o.domain: o.version for o in model.opset_import}
    graph = Graph(g.name or path.stem, inputs, [o.name for o in g.output], nodes, tensors, opsets)
    check_sizes(graph, str(path))
    return graph


def _contrib_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's symbolic shape inference (SymbolicShapeInference.infer_shapes), taught the two
    quantized MatMuls its optimizer writes and it has no rule for: DynamicQuantizeMatMul and
    MatMulIntegerToFloat give MatMul's shape, in float32."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    class Inference(SymbolicShapeInference):
        def __init__(self):
            super().__init__(2**31 - 1, False, False, 0)
            float_matmul = lambda node: self._compute_matmul_shape(node, onnx.TensorProto.FLOAT)  # noqa: E731
            self.dispatcher_.setdefault("DynamicQuantizeMatMul", float_matmul)
            self.dispatcher_.setdefault("MatMulIntegerToFloat", float_matmul)

    inference = Inference()
    inference._preprocess(model)
    complete = False
    while inference.run_:
        complete = inference._infer_impl()
    inference._update_output_from_vi()
    if not complete:
        raise MoaEdgeError("Incomplete symbolic shape inference")
    return inference.out_mp_


def _constant_value(attrs) -> np.ndarray:
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64),
                       ("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    raise MoaEdgeError(f"Constant node with attributes {sorted(attrs)} is not supported")
