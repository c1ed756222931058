"""Which version of each ONNX op a model means, and whether moa-edge implements it.

A model's opset selects, for each op, the newest version of it defined at or before that opset
(its schema's since_version). Every module that implements an ONNX op, an op module or a pass
that rewrites it, states the newest version it was checked against (ONNX_VERSIONS); a node that
selects a newer one is refused, naming the op, its version and the newest implemented, so a
newer onnx never changes what a model means unnoticed. Ops no module states are folded at
convert time by onnx's reference evaluator, at their own version, or refused as unsupported."""
from __future__ import annotations

import onnx

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph
from moa_edge.ops import SUPPORTED_OPS

from . import attention, canonical, dynamic_quantize, fold, normalizations, qdq

_PASSES = (attention, canonical, dynamic_quantize, fold, normalizations, qdq)


def implemented_versions() -> dict[str, int]:
    """ONNX op -> the newest since_version implemented, from every module that states one."""
    modules = {op.module for op in SUPPORTED_OPS.values()} | set(_PASSES)
    versions: dict[str, int] = {}
    for module in sorted(modules, key=lambda m: m.__name__):
        for op, version in getattr(module, "ONNX_VERSIONS", {}).items():
            if versions.setdefault(op, version) != version:
                raise TypeError(f"{module.__name__} states {op} version {version}, another module {versions[op]}")
    return versions


def check_onnx_versions(graph: Graph, source: str = "model") -> None:
    opset = graph.opsets.get("", graph.opsets.get("ai.onnx"))
    if opset is None:
        return
    implemented = implemented_versions()
    for node in graph.nodes:
        newest = implemented.get(node.op)
        if newest is None:
            continue
        try:
            version = onnx.defs.get_schema(node.op, opset, "").since_version
        except onnx.defs.SchemaError:  # not defined yet at this opset (the checker refuses such a model)
            continue
        if version > newest:
            raise MoaEdgeError(f"{source}: node {node.name!r} is {node.op} version {version} (opset {opset}); "
                               f"moa-edge supports {node.op} up to version {newest}")
