"""Constant folding: evaluate every node whose inputs are all known at compile time.

Shape plumbing (Shape -> Gather -> Concat -> Reshape) becomes plain constants once the
input shapes are pinned, so the attention patterns only ever see constants. Each node
is evaluated by onnx's own reference implementation: no hand-written op semantics.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Tensor, dtypes
from moa_edge.ops import SUPPORTED_OPS, elementwise

from .qdq import check_node, is_gemm_weight

# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
# (Shape and Size are read from the shapes; every other op folds by onnx's reference at its own version.)
ONNX_VERSIONS = {"Shape": 25, "Size": 25}
# Never fold these: they have no value to compute, or the folded value would be huge.
_KEEP = {"MoaAttention", "MoaConcat"}
_MAX_FOLDED_ELEMENTS = 1 << 22


def fold_constants(graph: Graph) -> bool:
    changed = False
    kept = []
    for node in graph.nodes:
        values = _evaluate(graph, node)
        if values is None:
            kept.append(node)
            continue
        for name, value in zip(node.outputs, values):
            value = np.asarray(value)
            graph.tensors[name] = Tensor(name, tuple(value.shape), dtypes.name_of_numpy(value.dtype), value)
        changed = True
    graph.nodes = kept
    return changed


def _evaluate(graph: Graph, node):
    if node.op in _KEEP or "." in node.op:
        return None
    if node.op in ("QuantizeLinear", "DequantizeLinear"):
        check_node(graph, node)  # the spec's shapes and types, one error naming the node
        if is_gemm_weight(graph, node):
            return None  # a quantized GEMM weight: passes/qdq.py keeps its integers
    if node.op == "Shape":
        t = graph.tensors.get(node.inputs[0])
        if t is None:
            return None
        shape = np.array(t.shape, dtype=np.int64)
        start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
        return [shape[start:end]]
    if node.op == "Size":
        t = graph.tensors.get(node.inputs[0])
        return None if t is None else [np.array(t.size, dtype=np.int64)]
    values = []
    for name in node.inputs:
        if not name:
            values.append(None)
            continue
        data = graph.constant(name)
        if data is None:
            return None
        values.append(data)
    if not node.inputs:
        return None
    try:
        outputs = evaluate_onnx_node(node, values, graph.opsets.get("", graph.opsets.get("ai.onnx", 18)))
    except MoaEdgeError:  # the node cannot be computed from its constants: the model is wrong
        raise
    except Exception:  # an evaluator gap: leave the node for the runtime rather than fail
        return None
    if any(np.asarray(o).size > _MAX_FOLDED_ELEMENTS for o in outputs):
        return None
    return outputs


def evaluate_onnx_node(node, values: list, opset: int) -> list:
    """Run one node with onnx's reference implementation, or onnxruntime where the
    reference evaluator has a gap (None marks an absent input). onnxruntime's own ops
    (com.microsoft) run in onnxruntime, in float32: their CPU kernels have no float64.
    A node onnxruntime has a kernel for but cannot run on these values (indices out of range, a
    reshape to another element count) is an error naming the node; any other failure is a gap,
    raised as it is."""
    domain, _, op = node.op.rpartition(".")
    if domain:
        values = [v.astype(np.float32) if v is not None and np.asarray(v).dtype == np.float64 else v for v in values]
    model, feeds = _one_node_model(node, values, opset)
    try:
        if domain:
            raise NotImplementedError(domain)
        return ReferenceEvaluator(model).run(None, feeds)
    except Exception:
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 4  # fatal only: a failure comes back as the exception below, once
        session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        try:
            return session.run(None, feeds)
        except Exception as exc:
            reason = str(exc).partition("Status Message: ")[2] or str(exc)
            raise MoaEdgeError(f"node {node.name!r} ({node.op}) cannot be computed from its inputs "
                               f"(shapes {[list(np.shape(v)) for v in values if v is not None]}): "
                               f"{reason.strip().splitlines()[0]}") from None


def _one_node_model(node, values: list, opset: int):
    domain, _, op = node.op.rpartition(".")
    proto = onnx.helper.make_node(op, [f"i{k}" if n else "" for k, n in enumerate(node.inputs)],
                                  [f"o{k}" for k in range(len(node.outputs))], domain=domain or None, **node.attrs)
    feeds = {f"i{k}": np.asarray(v) for k, v in enumerate(values) if v is not None}
    model = onnx.helper.make_model(
        onnx.helper.make_graph([proto], "fold",
                               [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                                for k, v in feeds.items()],
                               [onnx.helper.make_empty_tensor_value_info(f"o{k}") for k in range(len(node.outputs))]),
        opset_imports=[onnx.helper.make_opsetid("", opset)] + ([onnx.helper.make_opsetid(domain, 1)] if domain else []))
    return model, feeds


SHAPE_VALUES = 1024  # constants at most this long go to shape inference with their values (shapes, axes, pads)


def infer_missing_shapes(graph: Graph) -> int:
    """Shapes ONNX inference could not give on the whole file (shape plumbing computed at
    run time) follow once that plumbing is folded: infer them node by node, in order.
    Returns how many tensors it gave a shape."""
    opset = graph.opsets.get("", graph.opsets.get("ai.onnx", 18))
    known = len(graph.tensors)
    for node in graph.nodes:
        if all(not o or o in graph.tensors for o in node.outputs):
            continue
        inputs, initializers = [], []
        for name in node.inputs:
            t = graph.tensors.get(name) if name else None
            if name and t is None:
                break
            if t is None:
                continue
            if t.is_constant and t.size <= SHAPE_VALUES:
                initializers.append(onnx.numpy_helper.from_array(np.asarray(t.data), name))
            elif t.is_constant:  # a weight: its shape is all inference needs (not serialised per node)
                inputs.append(onnx.helper.make_tensor_value_info(name, dtypes.dtype(t.dtype).onnx, t.shape))
            elif t.dtype in dtypes.KNOWN_DTYPES:
                inputs.append(onnx.helper.make_tensor_value_info(name, dtypes.dtype(t.dtype).onnx, t.shape))
        else:
            proto = onnx.helper.make_node(node.op, node.inputs, node.outputs, **node.attrs)
            model = onnx.helper.make_model(
                onnx.helper.make_graph([proto], "infer", inputs, [], initializer=initializers),
                opset_imports=[onnx.helper.make_opsetid("", opset)])
            try:
                inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph.value_info
            except Exception:
                continue
            for vi in inferred:
                tt = vi.type.tensor_type
                record = dtypes.from_onnx(tt.elem_type)
                if (vi.name in node.outputs and record is not None
                        and tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim)):
                    graph.tensors[vi.name] = Tensor(vi.name, tuple(d.dim_value for d in tt.shape.dim), record.name)
    return len(graph.tensors) - known


def range_lengths_from_consumers(graph: Graph) -> bool:
    """A Range over run-time scalars (a window's size, in ONNX's expanded window functions) has no
    static length of its own. Where its elements flow only through element-wise ops, whose other
    operands are single values, into a tensor of known shape, that tensor's one axis is its length:
    recorded, so shape inference gives the rest (the Range checks the length at run time)."""
    changed = False
    for node in graph.nodes:
        if node.op != "Range" or node.outputs[0] in graph.tensors or node.inputs[0] not in graph.tensors:
            continue
        same, todo, length = {node.outputs[0]}, [node.outputs[0]], None
        while todo and length is None:
            for consumer in graph.consumers(todo.pop()):
                op = SUPPORTED_OPS.get(consumer.op)
                others = [graph.tensors.get(n) for n in consumer.inputs if n and n not in same]
                if op is None or op.module is not elementwise or any(t is None or t.size != 1 for t in others):
                    continue
                out = graph.tensors.get(consumer.outputs[0])
                if out is None and consumer.outputs[0] not in same:
                    same.add(consumer.outputs[0])
                    todo.append(consumer.outputs[0])
                elif out is not None and len(out.shape) == 1:
                    length = out.shape[0]
                    break
        if length is not None:
            out = node.outputs[0]
            graph.tensors[out] = Tensor(out, (length,), graph.tensors[node.inputs[0]].dtype)
            changed = True
    return changed


def cone(graph: Graph, name: str) -> tuple[list, set[str]]:
    """The nodes computing `name` from runtime data, in graph order, and the runtime
    tensors (graph inputs) they start from. Constants end the walk."""
    nodes, leaves, seen, todo = set(), set(), set(), [name]
    while todo:
        current = todo.pop()
        if not current or current in seen or graph.constant(current) is not None:
            continue
        seen.add(current)
        producer = graph.producer(current)
        if producer is None:
            leaves.add(current)
        elif id(producer) not in nodes:
            nodes.add(id(producer))
            todo += producer.inputs
    return [n for n in graph.nodes if id(n) in nodes], leaves


def subgraph_function(graph: Graph, nodes, inputs: list[str], outputs: list[str]):
    """`nodes` as a function of the runtime tensors `inputs` (constants baked in), run by
    onnx's reference evaluator: arrays in, arrays of `outputs` out."""
    used = {i for n in nodes for i in n.inputs if i}
    initializers = [onnx.numpy_helper.from_array(np.asarray(graph.constant(i)), i)
                    for i in sorted(used) if graph.constant(i) is not None]
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node(n.op, n.inputs, n.outputs, name=n.name, **n.attrs) for n in nodes], "cone",
            [onnx.helper.make_tensor_value_info(i, dtypes.dtype(graph.tensors[i].dtype).onnx, graph.tensors[i].shape)
             for i in inputs],
            [onnx.helper.make_empty_tensor_value_info(o) for o in outputs], initializer=initializers),
        opset_imports=[onnx.helper.make_opsetid("", graph.opsets.get("", graph.opsets.get("ai.onnx", 18)))])
    evaluator = ReferenceEvaluator(model)
    return lambda *arrays: evaluator.run(outputs, dict(zip(inputs, arrays)))
