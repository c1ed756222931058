"""One module per op family: its shape and dtype rule, cost, torch reference and C emission.
What a module states, and the defaults for what it leaves out: ops/contract.py."""
from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph

from . import (argmax, attention, bitcast, concat, conv, conv_transpose, einsum, elementwise, gather, igemm, indexing,
               kv_cache, matmul, mlp, normalization, pooling, qconv, qgather, qmatmul, rearrange, recurrent, reduce,
               reduce_norm, resize, reverse_sequence, rotary, scatter, spectral, topk, views)
from .contract import EmitContext, EmittedUnit, Op, OpCost, TensorType, op_of

_MODULES = (argmax, attention, bitcast, concat, conv, conv_transpose, einsum, elementwise, gather, igemm, indexing,
            kv_cache, matmul, mlp, normalization, pooling, qconv, qgather, qmatmul, rearrange, recurrent, reduce,
            reduce_norm, resize, reverse_sequence, rotary, scatter, spectral, topk, views)

# IR op name -> the Op (its module's hooks, defaults filled in). An op missing here is unsupported.
SUPPORTED_OPS: dict[str, Op] = {op: op_of(module) for module in _MODULES for op in module.OPS}


def check_output_types(graph: Graph, source: str = "model") -> None:
    """Every node's recorded output shapes and dtypes are the ones its op's rule gives from its
    inputs: a pass that rewrote a node must have kept them consistent."""
    for node in graph.nodes:
        rule = SUPPORTED_OPS[node.op].infer(node, graph)
        for name, want in zip(node.outputs, rule):
            if not name or want is None:
                continue
            have = graph.tensors[name]
            if (want.shape is not None and tuple(have.shape) != tuple(want.shape)) or have.dtype != want.dtype:
                shape = list(want.shape) if want.shape is not None else "any shape"
                raise MoaEdgeError(f"{source}: node {node.name!r} ({node.op}) records {name!r} as {have.dtype} "
                                   f"{list(have.shape)}, but its op's rule gives {want.dtype} {shape}")


__all__ = ["EmitContext", "EmittedUnit", "Op", "OpCost", "SUPPORTED_OPS", "TensorType", "attention",
           "check_output_types", "concat"]
