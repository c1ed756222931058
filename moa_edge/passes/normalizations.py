"""BatchNormalization, InstanceNormalization and GroupNormalization as ops the runtime has.

  * BatchNormalization (inference, constant statistics) is y = x s + t per channel, with
    s = scale / sqrt(var + epsilon) and t = B - mean s: folded into the Conv before it when
    that Conv's weights are constants and the BatchNormalization is its only reader (W s, b s + t),
    else a Mul and an Add of per-channel constants;
  * InstanceNormalization is a LayerNormalization over each (n, c)'s spatial elements, then the
    per-channel scale and bias as a Mul and an Add;
  * GroupNormalization the same over each group's channels, the input seen as [N, G, rest];
  * LpNormalization is x / ReduceL1 or ReduceL2 of x along its axis (kept), a zero norm divided
    as 1 so that an all-zero line gives 0, as the spec says.

A node whose parameters are not constants, or a training-mode BatchNormalization, is left as it
is, and refused by name as unsupported."""
from __future__ import annotations

import numpy as np

from moa_edge.ir import Graph, Node, Tensor

# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"BatchNormalization": 15, "InstanceNormalization": 22, "GroupNormalization": 21, "LpNormalization": 22}


def lower_normalizations(graph: Graph) -> None:
    for node in list(graph.nodes):
        if graph.tensors.get(node.inputs[0]) is None or graph.tensors.get(node.outputs[0]) is None:
            continue
        if node.op == "BatchNormalization":
            _batch_norm(graph, node)
        elif node.op in ("InstanceNormalization", "GroupNormalization"):
            _instance_norm(graph, node)
        elif node.op == "LpNormalization":
            _lp_norm(graph, node)
    graph.remove_dead()


def _constant(graph: Graph, name: str, shape: tuple, data: np.ndarray) -> str:
    graph.tensors[name] = Tensor(name, shape, "float32", np.ascontiguousarray(data, np.float32).reshape(shape))
    return name


def _per_channel(values: np.ndarray, rank: int) -> tuple[int, ...]:
    return (values.size,) + (1,) * (rank - 2)  # broadcast against [N, C, spatial...]


def _batch_norm(graph: Graph, node: Node) -> None:
    params = [graph.constant(name) for name in node.inputs[1:5]]
    if any(p is None for p in params) or node.attrs.get("training_mode", 0) or any(node.outputs[1:]):
        return
    x = graph.tensors[node.inputs[0]]
    if x.dtype != "float32" or len(x.shape) < 2:
        return
    scale, bias, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in params)
    s = scale / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
    t = bias - mean * s
    index = graph.nodes.index(node)
    conv = graph.producer(node.inputs[0])
    if (conv is not None and conv.op == "Conv" and graph.constant(conv.inputs[1]) is not None
            and len(graph.consumers(node.inputs[0])) == 1 and node.inputs[0] not in graph.outputs
            and (len(conv.inputs) < 3 or not conv.inputs[2] or graph.constant(conv.inputs[2]) is not None)):
        w = np.asarray(graph.constant(conv.inputs[1]), np.float64)
        b = np.asarray(graph.constant(conv.inputs[2]), np.float64) if len(conv.inputs) > 2 and conv.inputs[2] else 0.0
        weights = _constant(graph, f"{node.name}_folded_w", w.shape, w * s.reshape((-1,) + (1,) * (w.ndim - 1)))
        shift = _constant(graph, f"{node.name}_folded_b", (w.shape[0],), b * s + t)
        conv.inputs = [conv.inputs[0], weights, shift]
        conv.outputs = [node.outputs[0]]
        graph.nodes.remove(node)
        return
    shape = _per_channel(s, len(x.shape))
    scaled = f"{node.outputs[0]}_bn_scaled"
    graph.tensors[scaled] = Tensor(scaled, tuple(x.shape), "float32")
    graph.nodes[index:index + 1] = [
        Node("Mul", f"{node.name}_scale", [node.inputs[0], _constant(graph, f"{node.name}_s", shape, s)], [scaled]),
        Node("Add", f"{node.name}_shift", [scaled, _constant(graph, f"{node.name}_t", shape, t)], [node.outputs[0]])]


def _instance_norm(graph: Graph, node: Node) -> None:
    x = graph.tensors[node.inputs[0]]
    scale, bias = (graph.constant(name) if name else None for name in (node.inputs[1:3] + ["", ""])[:2])
    if x.dtype != "float32" or len(x.shape) < 3 or scale is None or bias is None:
        return
    channels = x.shape[1]
    groups = int(node.attrs.get("num_groups", channels))
    if groups < 1 or channels % groups:
        return
    scale, bias = np.asarray(scale, np.float64).reshape(-1), np.asarray(bias, np.float64).reshape(-1)
    if scale.size == groups != channels:  # GroupNormalization 18: one scale and bias per group
        scale, bias = np.repeat(scale, channels // groups), np.repeat(bias, channels // groups)
    if scale.size != channels or bias.size != channels:
        return
    name, eps = node.name, float(node.attrs.get("epsilon", 1e-5))
    grouped = (x.shape[0], groups, int(np.prod(x.shape[1:])) // groups)
    nodes, source = [], node.inputs[0]
    if groups != channels or len(x.shape) != 3:  # [N, G, rest]: LayerNormalization over the last axis
        source = f"{name}_grouped"
        graph.tensors[source] = Tensor(source, grouped, "float32")
        nodes.append(Node("Reshape", f"{name}_group", [node.inputs[0], _shape(graph, f"{name}_gshape", grouped)],
                          [source]))
    normed = f"{name}_normed"
    graph.tensors[normed] = Tensor(normed, grouped, "float32")
    nodes.append(Node("LayerNormalization", f"{name}_norm",
                      [source, _constant(graph, f"{name}_ones", (grouped[2],), np.ones(grouped[2]))], [normed],
                      {"axis": 2, "epsilon": eps}))
    if source != node.inputs[0]:
        back = f"{name}_ungrouped"
        graph.tensors[back] = Tensor(back, tuple(x.shape), "float32")
        nodes.append(Node("Reshape", f"{name}_ungroup", [normed, _shape(graph, f"{name}_xshape", tuple(x.shape))],
                          [back]))
        normed = back
    shape = _per_channel(scale, len(x.shape))
    scaled = f"{name}_scaled"
    graph.tensors[scaled] = Tensor(scaled, tuple(x.shape), "float32")
    nodes += [Node("Mul", f"{name}_scale", [normed, _constant(graph, f"{name}_gamma", shape, scale)], [scaled]),
              Node("Add", f"{name}_shift", [scaled, _constant(graph, f"{name}_beta", shape, bias)], [node.outputs[0]])]
    index = graph.nodes.index(node)
    graph.nodes[index:index + 1] = nodes


def _lp_norm(graph: Graph, node: Node) -> None:
    x = graph.tensors[node.inputs[0]]
    p, rank = int(node.attrs.get("p", 2)), len(x.shape)
    axis = int(node.attrs.get("axis", -1))
    if x.dtype != "float32" or p not in (1, 2) or not -rank <= axis < rank:
        return  # left as it is: refused by name as unsupported (the spec allows p 1 and 2 only)
    name, kept = node.name, tuple(1 if a == axis % rank else d for a, d in enumerate(x.shape))
    for tensor, shape, dtype in ((f"{name}_norm", kept, "float32"), (f"{name}_is_zero", kept, "bool"),
                                 (f"{name}_divisor", kept, "float32")):
        graph.tensors[tensor] = Tensor(tensor, shape, dtype)
    axes = _shape(graph, f"{name}_axes", (axis % rank,))
    zero, one = (_constant(graph, f"{name}_{v}", (), np.array(k)) for v, k in (("zero", 0.0), ("one", 1.0)))
    index = graph.nodes.index(node)
    graph.nodes[index:index + 1] = [
        Node(f"ReduceL{p}", f"{name}_reduce", [node.inputs[0], axes], [f"{name}_norm"], {"keepdims": 1}),
        Node("Equal", f"{name}_zero_norm", [f"{name}_norm", zero], [f"{name}_is_zero"]),
        Node("Where", f"{name}_guard", [f"{name}_is_zero", one, f"{name}_norm"], [f"{name}_divisor"]),
        Node("Div", f"{name}_divide", [node.inputs[0], f"{name}_divisor"], [node.outputs[0]])]


def _shape(graph: Graph, name: str, shape: tuple) -> str:
    graph.tensors[name] = Tensor(name, (len(shape),), "int64", np.asarray(shape, np.int64))
    return name
