"""Ops whose kernels compute in float32 only read float64 through Casts (double computed at
float32's precision, as the element-wise loops compute it), and ops that only select (max, min,
arg max) read bool and the integers float32 holds exactly through Casts too: exact.

    y = Reduce(x: float64)  ->  y = Cast(Reduce(Cast(x, float32)), float64)"""
from __future__ import annotations

from moa_edge.ir import Graph, Node, Tensor, dtypes


FLOAT = dtypes.COMPUTE_DTYPE.name
_FLOAT32_KERNELS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceLogSum",
                    "ReduceLogSumExp", "ReduceL2", "ReduceL1", "ReduceSumSquare", "ArgMax", "ArgMin",
                    "LayerNormalization", "RMSNormalization", "Softmax", "LogSoftmax", "Hardmax", "MaxPool",
                    "AveragePool", "LpPool", "GlobalMaxPool", "GlobalAveragePool", "GlobalLpPool", "Conv"}
_SELECTING = {"ReduceMax", "ReduceMin", "ArgMax", "ArgMin", "MaxPool", "GlobalMaxPool"}
_EXACT_IN_FLOAT32 = {"bool", "int8", "uint8", "int16", "uint16"}


def _widened(node: Node, source: Tensor) -> set[str]:
    """The element types of `node`'s data operand that it reads through Casts (not an empty
    integer one: its max would be float32's -inf, not the type's least value)."""
    if node.op not in _FLOAT32_KERNELS:
        return set()
    return {"float64"} | (_EXACT_IN_FLOAT32 if node.op in _SELECTING and source.size else set())


def read_through_float32(graph: Graph) -> int:
    """Rewrite as the module's docstring says; returns how many nodes now read through Casts. Every
    float64 operand (a Conv's weights, a LayerNormalization's scale) is read so, and a selecting
    op's bool or small-integer data."""
    rewritten, nodes = 0, []
    for node in graph.nodes:
        first = graph.tensors.get(node.inputs[0]) if node.inputs else None
        if first is None or first.dtype not in _widened(node, first):
            nodes.append(node)
            continue
        for k, name in enumerate(node.inputs):
            operand = graph.tensors.get(name) if name else None
            if operand is None or (operand.dtype != "float64" and k > 0):
                continue
            narrow = graph.fresh_name(f"{name}__float32")
            graph.tensors[narrow] = Tensor(narrow, operand.shape, FLOAT)
            nodes.append(Node("Cast", graph.fresh_name(f"{node.name}__to_float32"), [name], [narrow],
                              {"to": dtypes.dtype(FLOAT).onnx}))
            node.inputs[k] = narrow
        nodes.append(node)
        for k, out in enumerate(node.outputs):  # outputs of the data's type: computed in float32, cast back
            if out and graph.tensors.get(out) is not None and graph.tensors[out].dtype == first.dtype:
                computed = graph.fresh_name(f"{out}__float32")
                graph.tensors[computed] = Tensor(computed, graph.tensors[out].shape, FLOAT)
                node.outputs[k] = computed
                nodes.append(Node("Cast", graph.fresh_name(f"{node.name}__to_{first.dtype}"), [computed], [out],
                                  {"to": dtypes.dtype(first.dtype).onnx}))
        rewritten += 1
    graph.nodes = nodes
    return rewritten
