"""PyTorch float64 execution of the moa_edge IR: each op's torch reference."""
from __future__ import annotations

import numpy as np
import torch

from moa_edge.ir import Graph
from moa_edge.ops import attention


def _torch(arr: np.ndarray) -> torch.Tensor:
    arr = np.asarray(arr)
    if arr.dtype == np.bool_:
        return torch.from_numpy(arr.copy())
    return torch.from_numpy(arr.astype(np.float64))


def run_reference(graph: Graph, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    env: dict[str, torch.Tensor] = {name: _torch(inputs[name]) for name in graph.inputs}
    for t in graph.weights():
        env[t.name] = _torch(t.data)
    with torch.no_grad():
        for node in graph.nodes:
            if node.op == "MoaAttention":
                q, k, v, mask = (env[n] if n else None for n in node.inputs)
                out = node.outputs[0]
                env[out] = attention.reference(node.attrs["spec"], q, k, v, mask, graph.tensors[out].shape)
            else:  # lower() guarantees every op is supported
                raise AssertionError(node.op)
    return {name: env[name].numpy() for name in graph.outputs}
