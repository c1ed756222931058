"""The cost model's energy per inference for a whole model, set beside the measurement.

Attention blocks take the ONF cost model's own prediction (moa/cost.py: flops, L1 fills and
DRAM bytes for the chosen tiles), and, for comparison, the DRAM bytes of the unfused form
that materialises the scores. Every other op is estimated from its shapes by its op module's
op_cost (ops/contract.py): arithmetic (2 M N K for a GEMM, a few flops per element
elsewhere), its weights read once from DRAM,
and its activations moved at L2 cost while the arena fits the last-level cache (DRAM cost
when it does not). An estimate, labelled as one: calibrating it is what `energy` is for.
"""
from __future__ import annotations

from moa_edge.ir import dtypes
from moa_edge.ops import SUPPORTED_OPS, OpCost
from moa_edge.target import Board

ELEM = dtypes.COMPUTE_DTYPE.itemsize  # attention's scores (the spec names no type yet)


def op_cost(node, graph) -> OpCost:
    """Flops and bytes moved of one node, as its op module estimates them (attention: the
    cost model's count)."""
    return SUPPORTED_OPS[node.op].op_cost(node, graph)


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
            cost, flops = node.attrs["cost"], op_cost(node, graph).flops
            joules = cost.energy_uj * 1e-6
            blocks.append({"node": node.name, "energy_j": joules, "dram_bytes": cost.dram_bytes,
                           "unfused_dram_bytes": unfused_attention_dram_bytes(node, board), "flops": flops})
            ops.append({"node": node.name, "op": node.op, "flops": flops, "energy_j": joules, "source": "cost model"})
            continue
        estimate = op_cost(node, graph)
        flops, weights, activations = estimate.flops, estimate.weight_bytes, estimate.activation_bytes
        joules = (flops * e["pj_per_flop"] + weights * e["pj_per_byte_dram"] + activations * activation_pj) * 1e-12
        ops.append({"node": node.name, "op": node.op, "flops": flops, "weight_bytes": weights,
                    "activation_bytes": activations, "energy_j": joules, "source": "estimate from shapes"})
    return {"energy_j": sum(o["energy_j"] for o in ops), "attention_blocks": blocks,
            "attention_energy_j": sum(b["energy_j"] for b in blocks), "ops": ops,
            "constants": {k: e[k] for k in ("pj_per_flop", "pj_per_byte_l1", "pj_per_byte_l2", "pj_per_byte_dram")},
            "source": e.get("source", "")}
