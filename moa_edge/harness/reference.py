"""PyTorch float64 execution of the moa_edge IR: each op's torch reference."""
from __future__ import annotations

import numpy as np
import torch

from moa_edge.ir import Graph
from moa_edge.ops import attention, concat
from moa_edge.passes.fold import evaluate_onnx_node


def _torch(arr: np.ndarray) -> torch.Tensor:
    """Floats widen to float64; integers and bools keep their type (they index and mask)."""
    arr = np.asarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        return torch.from_numpy(arr.astype(np.float64))
    return torch.from_numpy(arr.copy())


def run_reference(graph: Graph, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    env: dict[str, torch.Tensor] = {name: _torch(inputs[name]) for name in graph.inputs}
    for t in graph.weights():
        env[t.name] = _torch(t.data)
    with torch.no_grad():
        for node in graph.nodes:
            if node.op == "MoaAttention":
                q, k, v, mask, lengths = (env[n] if n else None for n in (node.inputs + [""])[:5])
                out = node.outputs[0]
                env[out] = attention.reference(node.attrs["spec"], q, k, v, mask, graph.tensors[out].shape, lengths)
                if len(node.outputs) > 1:
                    scores = attention.scores_reference(node.attrs["spec"], q, k, mask, lengths)
                    env[node.outputs[1]] = scores.reshape(graph.tensors[node.outputs[1]].shape)
            elif node.op == "MoaConcat":
                env[node.outputs[0]] = concat.reference(node, [env[n] for n in node.inputs])
            else:  # ops outside the runtime (inspect, detection checks): onnx's reference, in float64
                values = [env[n].numpy() if n else None for n in node.inputs]
                opset = graph.opsets.get("", graph.opsets.get("ai.onnx", 18))
                for name, value in zip(node.outputs, evaluate_onnx_node(node, values, opset)):
                    env[name] = _torch(value)
    return {name: env[name].numpy() for name in graph.outputs}
