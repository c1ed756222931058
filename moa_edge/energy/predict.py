"""The cost model's energy per inference for a whole model, set beside the measurement.

Attention blocks take the ONF cost model's own prediction (moa/cost.py: flops, L1 fills and
DRAM bytes for the chosen tiles), and, for comparison, the DRAM bytes of the unfused form
that materialises the scores. Every other op is estimated from its shapes: arithmetic
(2 M N K for a GEMM, a few flops per element elsewhere), its weights read once from DRAM,
and its activations moved at L2 cost while the arena fits the last-level cache (DRAM cost
when it does not). An estimate, labelled as one: calibrating it is what `energy` is for.
"""
from __future__ import annotations

import math

from moa_edge.ir import dtypes
from moa_edge.target import Board

ELEM = dtypes.COMPUTE_DTYPE.itemsize  # attention's scores (the spec names no type yet)
# flops per output element of the non-GEMM ops (normalisations: mean, variance, scale, shift)
PER_ELEMENT = {"LayerNormalization": 8, "RMSNormalization": 5, "Softmax": 5, "ReduceMean": 1, "ReduceSum": 1,
               "ReduceMax": 1, "RotaryEmbedding": 3}


def _numel(graph, name) -> int:
    return math.prod(graph.tensors[name].shape) if name and name in graph.tensors else 0


def op_flops(node, graph) -> int:
    """Arithmetic of one node (estimate; attention: the cost model's count)."""
    if node.op == "MoaAttention":
        return node.attrs["cost"].flops
    if node.op == "MoaMlp":
        body = node.attrs["body"]
        return sum(op_flops(member, body) for member in body.nodes)
    if node.op in ("MatMul", "Gemm", "MoaGemm"):
        y = _numel(graph, node.outputs[0])
        a = graph.tensors[node.inputs[0]].shape
        k = a[0] if node.attrs.get("transA") or node.attrs.get("trans_a") else a[-1]
        return 2 * y * k
    if node.op == "Conv":
        w = graph.tensors[node.inputs[1]].shape
        return 2 * _numel(graph, node.outputs[0]) * math.prod(w[1:])
    if node.op == "MoaElementwise":
        return _numel(graph, node.outputs[0]) * len(node.attrs["body"].nodes)
    from moa_edge.ops import elementwise
    if node.op in elementwise.OPS:
        return _numel(graph, node.outputs[0])
    return PER_ELEMENT.get(node.op, 0) * _numel(graph, node.inputs[0] if node.inputs else "")


def op_bytes(node, graph) -> tuple[int, int]:
    """(weight bytes, activation bytes) one node reads and writes; a view moves nothing."""
    from moa_edge.ops import SUPPORTED_OPS
    if getattr(SUPPORTED_OPS.get(node.op), "ALIASES", False):
        return 0, 0
    names = [n for n in node.inputs if n] + [n for n in node.outputs if n]
    weights = sum(graph.tensors[n].nbytes for n in node.inputs if n and graph.tensors[n].is_constant)
    return weights, sum(graph.tensors[n].nbytes for n in names if n in graph.tensors) - weights


def unfused_attention_dram_bytes(node, board: Board) -> int:
    """DRAM bytes of the materialising form: the compulsory operands, plus the Sq x Skv scores
    written by Q K^T, read and written by the softmax, read by P V, whenever they do not fit
    the last-level cache."""
    spec, cost = node.attrs["spec"], node.attrs["cost"]
    scores = spec.batch * spec.q_heads * spec.q_len * spec.kv_len * ELEM
    return cost.compulsory_bytes + (4 * scores if scores > board.last_level_cache().size else 0)


def predict_model(graph, board: Board, arena_bytes: int) -> dict:
    """Predicted energy per inference: per op and in total (joules)."""
    e = board.energy
    activation_pj = e["pj_per_byte_l2"] if arena_bytes <= board.last_level_cache().size else e["pj_per_byte_dram"]
    ops, blocks = [], []
    for node in graph.nodes:
        if node.op == "MoaAttention":
            cost = node.attrs["cost"]
            joules = cost.energy_uj * 1e-6
            blocks.append({"node": node.name, "energy_j": joules, "dram_bytes": cost.dram_bytes,
                           "unfused_dram_bytes": unfused_attention_dram_bytes(node, board), "flops": cost.flops})
            ops.append({"node": node.name, "op": node.op, "flops": cost.flops, "energy_j": joules, "source": "cost model"})
            continue
        flops = op_flops(node, graph)
        weights, activations = op_bytes(node, graph)
        joules = (flops * e["pj_per_flop"] + weights * e["pj_per_byte_dram"] + activations * activation_pj) * 1e-12
        ops.append({"node": node.name, "op": node.op, "flops": flops, "weight_bytes": weights,
                    "activation_bytes": activations, "energy_j": joules, "source": "estimate from shapes"})
    return {"energy_j": sum(o["energy_j"] for o in ops), "attention_blocks": blocks,
            "attention_energy_j": sum(b["energy_j"] for b in blocks), "ops": ops,
            "constants": {k: e[k] for k in ("pj_per_flop", "pj_per_byte_l1", "pj_per_byte_l2", "pj_per_byte_dram")},
            "source": e.get("source", "")}
