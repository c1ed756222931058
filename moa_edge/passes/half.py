"""float16 and bfloat16 models computed in float32 (the numerical contract: fp32 arithmetic).

A model exported with `.half()` or `.bfloat16()` keeps its interface: its half inputs and outputs
stay halves at the C API (uint16_t bits). Inside, everything is float32:

    a half constant             ->  the float32 of the same value (exact)
    a half input x              ->  x, then Cast(to float32) once, which every reader of x reads
    a half output y             ->  y computed in float32, then Cast(to its type): rounded once
    Cast(to half) of a float    ->  kept, then Cast(to float32): fp32 -> fp16 -> fp32 rounds, as ONNX
                                    says (of a bool or a value of that very type: exact, no rounding)
    CastLike                    ->  Cast to the type of its second operand
    any other half tensor       ->  float32: an op is computed in float32 and not rounded after

so the only nodes that read or write a half are those Casts (ops/elementwise.py converts with
moa/half.h: round to nearest even, NaN, infinities and subnormals kept), and an attention block that
reads its Q, K or V as the halves a widening Cast would have read (passes/half_attention.py). Tensors persisting across
calls (a decoder's cache) are held in float32, and so are the outputs when they are no C API
boundary (round_outputs=False: a generation build's logits, which its own sampler reads).
"""
from __future__ import annotations

import numpy as np
import onnx

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node, Tensor, dtypes

FLOAT = dtypes.COMPUTE_DTYPE.name


def _free_name(graph: Graph, stem: str) -> str:
    name, k = stem, 1
    while name in graph.tensors:
        name, k = f"{stem}_{k}", k + 1
    return name


def _cast(name: str, source: str, target: str) -> Node:
    return Node("Cast", name, [source], [target], {"to": dtypes.dtype(FLOAT).onnx})


def _casts_like(graph: Graph) -> None:
    """CastLike(x, like) -> Cast(x, to=like's type), while `like` still has its own type."""
    for node in graph.nodes:
        like = graph.tensors.get(node.inputs[1]) if node.op == "CastLike" and len(node.inputs) == 2 else None
        if like is not None and like.dtype in dtypes.KNOWN_DTYPES:
            saturate = {"saturate": node.attrs["saturate"]} if "saturate" in node.attrs else {}
            node.op, node.inputs, node.attrs = "Cast", node.inputs[:1], {"to": dtypes.dtype(like.dtype).onnx, **saturate}


def _rounding_cast(graph: Graph, node: Node) -> bool:
    source = graph.tensors.get(node.inputs[0]) if node.op == "Cast" and node.inputs else None
    return source is not None and dtypes.from_onnx(node.attrs.get("to")) is not None and (
        dtypes.from_onnx(node.attrs["to"]).name in dtypes.HALF_DTYPES)


# Type parameters an op's function body binds together though its schema names them apart:
# Attention multiplies softmax(Q K^T) (T1) by V (T2), a MatMul of one type.
_BOUND_TOGETHER = {"Attention": ("T1", "T2")}


def _check_type_bindings(graph: Graph, node: Node) -> None:
    """Refuse a node whose schema binds one type parameter to two types (MatMul of a float and a
    float16): computing both in float32 would hide the mistake, which onnxruntime refuses."""
    domain, _, op = node.op.rpartition(".")
    try:
        schema = onnx.defs.get_schema(op, graph.opsets.get(domain, graph.opsets.get("ai.onnx", 18)), domain)
    except Exception:  # an op ONNX does not know: its own checks apply later
        return
    params = {c.type_param_str for c in schema.type_constraints}
    bound: dict[str, set[str]] = {}
    for names, formals in ((node.inputs, schema.inputs), (node.outputs, schema.outputs)):
        for k, name in enumerate(names):
            if not name or name not in graph.tensors or not formals:
                continue
            formal = formals[min(k, len(formals) - 1)]  # a variadic last parameter takes the rest
            if formal.type_str in params:
                together = _BOUND_TOGETHER.get(node.op, ())
                param = together[0] if formal.type_str in together else formal.type_str
                bound.setdefault(param, set()).add(graph.tensors[name].dtype)
    for param, types in bound.items():
        if len(types) > 1:
            raise MoaEdgeError(f"node {node.name!r} ({node.op}): its type {param} is bound to "
                               f"{' and '.join(sorted(types))}, which must be one type")


def compute_in_float32(graph: Graph, round_outputs: bool = True) -> int:
    """Rewrite `graph` as the module's docstring says; returns how many half tensors it widened."""
    _casts_like(graph)
    if not any(t.dtype in dtypes.HALF_DTYPES for t in graph.tensors.values()):
        return 0
    for node in graph.nodes:
        if any(n in graph.tensors and graph.tensors[n].dtype in dtypes.HALF_DTYPES for n in [*node.inputs, *node.outputs]):
            _check_type_bindings(graph, node)
    was = {name: t.dtype for name, t in graph.tensors.items()}
    halves = [name for name, dtype in was.items() if dtype in dtypes.HALF_DTYPES]
    outputs = graph.outputs if round_outputs else []
    boundary = set(graph.inputs) | set(outputs)
    entering, leaving, rounding = [], [], []

    # Inputs: read once, as float32.
    for x in [x for x in graph.inputs if was[x] in dtypes.HALF_DTYPES]:
        wide = _free_name(graph, f"{x}__float32")
        graph.tensors[wide] = Tensor(wide, graph.tensors[x].shape, FLOAT)
        for node in graph.nodes:
            node.inputs = [wide if name == x else name for name in node.inputs]
        entering.append(_cast(f"{x}__to_float32", x, wide))
        was[wide] = was[x]  # holds a half's value exactly
    # Outputs: computed in float32 (a Cast to the output's own type writes it already), rounded once.
    for y in [y for y in outputs if was[y] in dtypes.HALF_DTYPES]:
        producer = graph.producer(y)
        if producer is None:
            continue
        if _rounding_cast(graph, producer) and dtypes.dtype(was[y]).onnx == producer.attrs["to"]:
            readers = graph.consumers(y)  # the Cast writes the output; readers inside read it widened
            if readers:
                wide = _free_name(graph, f"{y}__float32")
                graph.tensors[wide] = Tensor(wide, graph.tensors[y].shape, FLOAT)
                for node in readers:
                    node.inputs = [wide if name == y else name for name in node.inputs]
                rounding.append((producer, _cast(f"{y}__to_float32", y, wide)))
            continue
        wide = _free_name(graph, f"{y}__float32")
        graph.tensors[wide] = Tensor(wide, graph.tensors[y].shape, FLOAT)
        for node in graph.nodes:
            node.inputs = [wide if name == y else name for name in node.inputs]
            node.outputs = [wide if name == y else name for name in node.outputs]
        leaving.append(Node("Cast", f"{y}__to_{was[y]}", [wide], [y], {"to": dtypes.dtype(was[y]).onnx}))
    # Casts to a half inside the graph: rounded there, read as float32 after.
    for node in list(graph.nodes):
        out = node.outputs[0] if node.outputs else ""
        if not _rounding_cast(graph, node) or out in boundary or out not in graph.tensors:
            continue
        if was.get(node.inputs[0]) in (dtypes.from_onnx(node.attrs["to"]).name, "bool"):  # exact: no rounding
            node.attrs = {"to": dtypes.dtype(FLOAT).onnx}
            continue
        rounded = _free_name(graph, f"{out}__{dtypes.from_onnx(node.attrs['to']).name}")
        graph.tensors[rounded] = Tensor(rounded, graph.tensors[out].shape, dtypes.from_onnx(node.attrs["to"]).name)
        node.outputs = [rounded]
        rounding.append((node, _cast(f"{node.name}__to_float32", rounded, out)))

    for name in halves:
        t = graph.tensors[name]
        if name in boundary:
            continue
        data = None if t.data is None else np.asarray(t.data).astype(np.float32)  # exact
        graph.tensors[name] = Tensor(name, t.shape, FLOAT, data)
    for node, widen in rounding:
        graph.nodes.insert(graph.nodes.index(node) + 1, widen)
    graph.nodes[:0] = entering
    graph.nodes += leaving
    return len(halves)
