"""PyTorch float64 execution of the moa_edge IR: each op's torch reference."""
from __future__ import annotations

import numpy as np
from moa_edge.lazy import torch

from moa_edge.ir import Graph, dtypes
from moa_edge.ops import SUPPORTED_OPS
from moa_edge.passes.fold import evaluate_onnx_node


def _torch(arr: np.ndarray) -> torch.Tensor:
    """Floats widen to float64; integers and bools keep their type (they index and mask), but
    uint16, uint32 and uint64, in which torch computes little, and the 4- and 2-bit ones become
    int64 (a uint64 past 2^63 wraps)."""
    arr = np.asarray(arr)
    record = dtypes.from_numpy(arr.dtype)
    if np.issubdtype(arr.dtype, np.floating) or (record is not None and record.is_float):  # ml_dtypes' too
        return torch.from_numpy(arr.astype(np.float64))
    if arr.dtype in (np.uint16, np.uint32, np.uint64) or (record is not None and record.name in dtypes.SMALL_DTYPES):
        return torch.from_numpy(arr.astype(np.int64))
    return torch.from_numpy(arr.copy())


def run_reference(graph: Graph, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    env: dict[str, torch.Tensor] = {name: _torch(inputs[name]) for name in graph.inputs}
    for t in graph.weights():
        env[t.name] = _torch(t.data)
    with torch.no_grad():
        for node in graph.nodes:
            values = [env[n] if n else None for n in node.inputs]
            if node.op in SUPPORTED_OPS:
                outputs = SUPPORTED_OPS[node.op].evaluate(node, values, graph)
            else:  # ops outside the runtime (inspect, detection checks): onnx's reference, in float64
                opset = graph.opsets.get("", graph.opsets.get("ai.onnx", 18))
                arrays = [v.numpy() if v is not None else None for v in values]
                outputs = [_torch(o) for o in evaluate_onnx_node(node, arrays, opset)]
            for name, value in zip(node.outputs, outputs):
                env[name] = value
    # An output folded to a constant at convert time is that constant.
    return {name: env[name].numpy() if name in env else np.asarray(graph.tensors[name].data) for name in graph.outputs}
