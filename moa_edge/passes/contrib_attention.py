"""onnxruntime's contrib attention ops (domain com.microsoft), as its transformer
optimizer emits them: what maps onto one MoaAttention does; the rest is refused with an
error naming the node and the feature."""
from __future__ import annotations

import math

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node
from moa_edge.moa import Layout
from moa_edge.ops.attention import MASK_FLOAT, MASK_NONE, AttentionSpec

from .views import broadcast_mask


def _present(node: Node, index: int) -> str:
    return node.inputs[index] if len(node.inputs) > index and node.inputs[index] else ""


def _used(graph: Graph, name: str) -> bool:
    return bool(name) and (bool(graph.consumers(name)) or name in graph.outputs)


def _heads(shape, heads: int) -> Layout:
    """(B, S, H*d) seen as (B, H, S, d): the layout every contrib op uses for 3-D inputs."""
    return Layout.row_major(shape).reshape((shape[0], shape[1], heads, shape[2] // heads)).transpose([0, 2, 1, 3])


def _refuse(node: Node, feature: str):
    raise MoaEdgeError(f"{node.op} node {node.name!r}: {feature} is not supported yet")


def _only_known(node: Node, attrs: dict, last_input: int) -> None:
    """Refuse any attribute outside `attrs` (name -> the only accepted value, or None for any)
    and any input past `last_input`: contrib ops grow features that change the result."""
    for name, value in node.attrs.items():
        if name not in attrs:
            _refuse(node, f"attribute {name}={value}")
        if attrs[name] is not None and value != attrs[name]:
            _refuse(node, f"{name}={value}")
    extra = [k for k, name in enumerate(node.inputs) if name and k > last_input]
    if extra:
        _refuse(node, f"input {extra[0]} ({node.inputs[extra[0]]!r})")


def multi_head_attention(graph: Graph, node: Node):
    """com.microsoft.MultiHeadAttention: separate 3-D Q, K, V, an optional attention_bias."""
    _only_known(node, {"num_heads": None, "scale": None, "mask_filter_value": None, "unidirectional": None}, 5)
    for index, feature in ((3, "the packed QKV bias input"), (4, "key_padding_mask"), (6, "past_key"),
                           (7, "past_value")):
        if _present(node, index):
            _refuse(node, feature)
    if not _present(node, 1) or not _present(node, 2):
        _refuse(node, "packed QKV (query holding keys and values)")
    if any(_used(graph, o) for o in node.outputs[1:]):
        _refuse(node, "the present/qk outputs")
    heads = node.attrs["num_heads"]
    q, k, v = (graph.tensors[n].shape for n in node.inputs[:3])
    if len(q) != 3 or len(k) != 3 or len(v) != 3:
        _refuse(node, "4-D (BNSH) key/value")
    q_lay, k_lay, v_lay = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    B, H, Sq, D = q_lay.shape
    Skv, Dv = k_lay.shape[2], v_lay.shape[3]
    if node.attrs.get("unidirectional", 0) and Sq != Skv:
        _refuse(node, "unidirectional with query and key lengths that differ")
    y = node.outputs[0]
    y_lay = _heads(graph.tensors[y].shape, heads)
    bias = _present(node, 5)
    mask_lay = broadcast_mask(graph, bias, (B, H, Sq, Skv), node.name) if bias else None
    spec = AttentionSpec(B, H, H, Sq, Skv, D, Dv, float(node.attrs.get("scale", 0.0)) or 1 / math.sqrt(D),
                         bool(node.attrs.get("unidirectional", 0)), MASK_FLOAT if bias else MASK_NONE, 0.0,
                         q_lay, k_lay, v_lay, y_lay, mask_lay, pattern="com.microsoft.MultiHeadAttention",
                         absorbed=(node.name,))
    return spec, list(node.inputs[:3]) + [bias], y, node


def group_query_attention(graph: Graph, node: Node):
    """com.microsoft.GroupQueryAttention for a whole prompt: causal, no cache, no rotary."""
    _only_known(node, {"num_heads": None, "kv_num_heads": None, "scale": None, "softcap": None,
                       "local_window_size": -1, "do_rotary": 0, "rotary_interleaved": None,
                       "smooth_softmax": 0}, 6)
    if _present(node, 3) or _present(node, 4):
        _refuse(node, "past_key/past_value (a KV cache with per-batch lengths)")
    if not _present(node, 1) or not _present(node, 2):
        _refuse(node, "packed QKV (query holding keys and values)")
    if any(_used(graph, o) for o in node.outputs[1:]):
        _refuse(node, "the present outputs")
    heads, kv_heads = node.attrs["num_heads"], node.attrs["kv_num_heads"]
    q, k, v = (graph.tensors[n].shape for n in node.inputs[:3])
    q_lay, k_lay, v_lay = _heads(q, heads), _heads(k, kv_heads), _heads(v, kv_heads)
    B, H, Sq, D = q_lay.shape
    Skv = k_lay.shape[2]
    # seqlens_k holds each batch's total length minus one: only "every key valid" maps exactly.
    seqlens, total = graph.constant(_present(node, 5)), graph.constant(_present(node, 6))
    if (seqlens is None or total is None or int(np.asarray(total).reshape(-1)[0]) != Skv
            or np.any(np.asarray(seqlens) != Skv - 1)):
        _refuse(node, "seqlens_k/total_sequence_length that are not constants covering every key")
    y = node.outputs[0]
    spec = AttentionSpec(B, H, kv_heads, Sq, Skv, D, v_lay.shape[3],
                         float(node.attrs.get("scale", 0.0)) or 1 / math.sqrt(D), True, MASK_NONE, 0.0,
                         q_lay, k_lay, v_lay, _heads(graph.tensors[y].shape, heads), None,
                         pattern="com.microsoft.GroupQueryAttention", absorbed=(node.name,),
                         softcap=float(node.attrs.get("softcap", 0.0)))
    return spec, list(node.inputs[:3]) + [""], y, node


def packed_attention(graph: Graph, node: Node):
    """com.microsoft.Attention multiplies the input by packed QKV weights first: that
    projection is a MatMul, which the runtime does not have yet."""
    _refuse(node, "the packed QKV projection of com.microsoft.Attention (a MatMul inside the op)")


RULES = {"com.microsoft.MultiHeadAttention": multi_head_attention,
         "com.microsoft.GroupQueryAttention": group_query_attention,
         "com.microsoft.Attention": packed_attention}
