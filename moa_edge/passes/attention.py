"""Attention detection: every attention block becomes one MoaAttention node.

Two rules, each a small pattern:
  * the standard ONNX `Attention` op (opset 23+, 3-D or 4-D);
  * the decomposed chain exporters emit, anchored on Softmax(axis=-1):
        MatMul(peel(view(Q)), peel(view(K^T))) [-> Mul/Div scale] [-> Add(mask)]
          -> Softmax [-> Where(IsNaN(p), 0, p)] -> MatMul(., view(V))
Head-split reshapes and the K transpose are folded into access maps (Layouts), scalar
Mul/Div into the scale, the mask into a bias: the kernel reads Q, K and V where they
were written and no transposed copy is made.
"""
from __future__ import annotations

import math

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node
from moa_edge.moa import Layout
from moa_edge.ops.attention import MASK_BOOL, MASK_FLOAT, MASK_NONE, AttentionSpec

# A float bias at or below this is "masked" (exporters use finfo(float32).min, not -inf).
_MASKED = -1e30


def rewrite_attention(graph: Graph) -> int:
    """Rewrite every attention block in place; returns how many were found."""
    found = 0
    for node in list(graph.nodes):
        if node not in graph.nodes:
            continue  # consumed by an earlier match
        match = None
        if node.op == "Attention":
            match = _attention_op(graph, node)
        elif node.op == "Softmax":
            match = _decomposed_sdpa(graph, node)
        if match is None:
            continue
        spec, inputs, output, replaced = match
        position = graph.nodes.index(replaced)
        graph.nodes[position] = Node("MoaAttention", f"moa_attention_{found}", inputs, [output], {"spec": spec})
        found += 1
    graph.remove_dead()
    return found


# --- small matchers ----------------------------------------------------------------

def _produced_by(graph: Graph, name: str, op: str) -> Node | None:
    node = graph.producer(name)
    return node if node is not None and node.op == op else None


def _scalar(graph: Graph, name: str) -> float | None:
    data = graph.constant(name)
    if data is None or data.size != 1:
        return None
    return float(data.reshape(()))


def _peel_scale(graph: Graph, name: str, absorbed: list[str]) -> tuple[str, float]:
    """Strip scalar Mul/Div by constants: x*c, c*x, x/c -> (x, product of factors)."""
    factor = 1.0
    while True:
        node = graph.producer(name)
        if node is None or node.op not in ("Mul", "Div"):
            return name, factor
        a, b = node.inputs
        if node.op == "Div" and _scalar(graph, b) is not None:
            name, factor = a, factor / _scalar(graph, b)
        elif node.op == "Mul" and _scalar(graph, b) is not None:
            name, factor = a, factor * _scalar(graph, b)
        elif node.op == "Mul" and _scalar(graph, a) is not None:
            name, factor = b, factor * _scalar(graph, a)
        else:
            return name, factor
        absorbed.append(node.name)


def _trace_view(graph: Graph, name: str, absorbed: list[str]) -> tuple[str, Layout]:
    """Follow Transpose/Reshape back to stored data: (source tensor, access map)."""
    node = graph.producer(name)
    shape = graph.tensors[name].shape
    if node is not None and node.op == "Transpose":
        source, layout = _trace_view(graph, node.inputs[0], absorbed)
        perm = node.attrs.get("perm", list(range(len(shape)))[::-1])
        absorbed.append(node.name)
        return source, layout.transpose(perm)
    if node is not None and node.op == "Reshape" and graph.constant(node.inputs[1]) is not None:
        inner = list(absorbed)
        source, layout = _trace_view(graph, node.inputs[0], inner)
        view = layout.reshape(shape)
        if view is not None:
            absorbed[:] = inner + [node.name]
            return source, view
    return name, Layout.row_major(shape)


def _is_causal_bias(bias: np.ndarray, q_len: int, kv_len: int) -> bool:
    """True for a constant 0 / masked bias that is exactly the top-left causal triangle."""
    if bias.ndim < 2 or bias.shape[-2:] != (q_len, kv_len) or bias.size != q_len * kv_len:
        return False
    bias = bias.reshape(q_len, kv_len).astype(np.float64)
    above = np.triu(np.ones((q_len, kv_len), dtype=bool), 1)
    return bool(np.all(bias[above] <= _MASKED) and np.all(bias[~above] == 0))


# --- rule: decomposed scaled-dot-product attention ---------------------------------

def _decomposed_sdpa(graph: Graph, softmax: Node):
    rank = len(graph.tensors[softmax.inputs[0]].shape)
    if softmax.attrs.get("axis", -1) not in (-1, rank - 1) or rank != 4:
        return None
    absorbed = [softmax.name]

    # Down: optional NaN guard, then P @ V.
    probs = softmax.outputs[0]
    users = graph.consumers(probs)
    guard = [u for u in users if u.op == "IsNaN"]
    if guard:
        where = [u for u in users if u.op == "Where" and u.inputs[0] == guard[0].outputs[0] and u.inputs[2] == probs]
        if len(users) != 2 or not where or _scalar(graph, where[0].inputs[1]) != 0.0:
            return None
        absorbed += [guard[0].name, where[0].name]
        probs = where[0].outputs[0]
        users = graph.consumers(probs)
    if len(users) != 1 or users[0].op != "MatMul" or users[0].inputs[0] != probs:
        return None
    pv = users[0]

    # Up: optional additive mask, optional post-scale, then Q @ K^T.
    scores = softmax.inputs[0]
    mask_name = None
    add = _produced_by(graph, scores, "Add")
    if add is not None:
        a, b = add.inputs
        scores, mask_name = (a, b) if _leads_to_matmul(graph, a) else (b, a)
        if not _leads_to_matmul(graph, scores):
            return None
        absorbed.append(add.name)
    scores, post_scale = _peel_scale(graph, scores, absorbed)
    qk = _produced_by(graph, scores, "MatMul")
    if qk is None:
        return None
    absorbed.append(qk.name)
    q_name, q_scale = _peel_scale(graph, qk.inputs[0], absorbed)
    kt_name, k_scale = _peel_scale(graph, qk.inputs[1], absorbed)
    q_src, q_lay = _trace_view(graph, q_name, absorbed)
    k_src, kt_lay = _trace_view(graph, kt_name, absorbed)
    v_src, v_lay = _trace_view(graph, pv.inputs[1], absorbed)
    if len(q_lay.shape) != 4 or len(kt_lay.shape) != 4 or len(v_lay.shape) != 4:
        return None
    k_lay = kt_lay.transpose([0, 1, 3, 2])
    B, Hq, Sq, D = q_lay.shape
    _, Hkv, Skv, Dk = k_lay.shape
    Dv = v_lay.shape[3]
    if Dk != D or v_lay.shape[:3] != k_lay.shape[:3] or Hq != Hkv:
        return None
    y = pv.outputs[0]
    if graph.tensors[y].shape != (B, Hq, Sq, Dv):
        return None

    mask_kind, mask_fill, mask_src, mask_lay, causal = MASK_NONE, 0.0, "", None, False
    if mask_name is not None:
        where = _produced_by(graph, mask_name, "Where")
        const = graph.constant(mask_name)
        if (where is not None and graph.tensors[where.inputs[0]].dtype == "bool"
                and _scalar(graph, where.inputs[1]) == 0.0 and _scalar(graph, where.inputs[2]) is not None
                and _scalar(graph, where.inputs[2]) <= _MASKED):
            mask_kind, mask_fill, mask_src = MASK_BOOL, _scalar(graph, where.inputs[2]), where.inputs[0]
            absorbed.append(where.name)
        elif const is not None and _is_causal_bias(const, Sq, Skv):
            causal = True
        else:
            mask_kind, mask_src = MASK_FLOAT, mask_name
        if mask_src:
            mask_lay = _broadcast(graph, mask_src, (B, Hq, Sq, Skv), softmax.name)
            if graph.tensors[mask_src].dtype not in ("float32", "bool"):
                return None

    spec = AttentionSpec(B, Hq, Hkv, Sq, Skv, D, Dv, q_scale * k_scale * post_scale, causal,
                         mask_kind, mask_fill, q_lay, k_lay, v_lay, Layout.row_major((B, Hq, Sq, Dv)),
                         mask_lay, pattern="decomposed SDPA (Softmax anchor)", absorbed=tuple(absorbed + [pv.name]))
    return spec, [q_src, k_src, v_src, mask_src], y, pv


def _leads_to_matmul(graph: Graph, name: str) -> bool:
    inner, _ = _peel_scale(graph, name, [])
    return _produced_by(graph, inner, "MatMul") is not None


def _broadcast(graph: Graph, name: str, full, where: str) -> Layout:
    shape = graph.tensors[name].shape
    if len(shape) > 4 or any(m not in (1, n) for m, n in zip(shape[::-1], full[::-1])):
        raise MoaEdgeError(f"node {where}: mask {name!r} of shape {list(shape)} does not broadcast "
                           f"to the scores' shape {list(full)}")
    return Layout.row_major(shape).broadcast_to(full)


# --- rule: the ONNX Attention op ---------------------------------------------------

def _attention_op(graph: Graph, node: Node):
    where = f"Attention node {node.name!r}"
    extra_inputs = [n for n in node.inputs[4:] if n]
    if extra_inputs:
        raise MoaEdgeError(f"{where}: past_key/past_value/nonpad_kv_seqlen inputs are not supported yet")
    if any(o and (graph.consumers(o) or o in graph.outputs) for o in node.outputs[1:]):
        raise MoaEdgeError(f"{where}: present_key/present_value/qk_matmul_output outputs are not supported yet")
    if node.attrs.get("softcap", 0.0) != 0.0:
        raise MoaEdgeError(f"{where}: softcap is not supported yet")
    if node.attrs.get("left_window_size", -1) != -1 or node.attrs.get("right_window_size", -1) != -1:
        raise MoaEdgeError(f"{where}: sliding-window attention is not supported yet")
    q_shape = graph.tensors[node.inputs[0]].shape
    k_shape = graph.tensors[node.inputs[1]].shape
    v_shape = graph.tensors[node.inputs[2]].shape
    y_shape = graph.tensors[node.outputs[0]].shape
    for name in node.inputs[:3]:
        if graph.tensors[name].dtype != "float32":
            raise MoaEdgeError(f"{where}: input {name!r} is {graph.tensors[name].dtype}; only float32 is supported yet")

    if len(q_shape) == 4:
        q_lay, k_lay, v_lay = (Layout.row_major(s) for s in (q_shape, k_shape, v_shape))
        y_lay = Layout.row_major(y_shape)
    elif len(q_shape) == 3:
        hq, hkv = node.attrs.get("q_num_heads"), node.attrs.get("kv_num_heads")
        if not hq or not hkv:
            raise MoaEdgeError(f"{where}: 3-D inputs need the q_num_heads and kv_num_heads attributes")

        def heads(shape, h):  # (B, S, H*d) seen as (B, H, S, d): each head a contiguous slice
            return Layout.row_major(shape).reshape((shape[0], shape[1], h, shape[2] // h)).transpose([0, 2, 1, 3])
        q_lay, k_lay, v_lay, y_lay = heads(q_shape, hq), heads(k_shape, hkv), heads(v_shape, hkv), heads(y_shape, hq)
    else:
        raise MoaEdgeError(f"{where}: inputs must be 3-D or 4-D, Q has shape {list(q_shape)}")

    B, Hq, Sq, D = q_lay.shape
    _, Hkv, Skv, _ = k_lay.shape
    Dv = v_lay.shape[3]
    if Hq % Hkv:
        raise MoaEdgeError(f"{where}: {Hq} query heads are not a multiple of {Hkv} key/value heads")
    scale = float(node.attrs.get("scale", 1.0 / math.sqrt(D)))

    mask_kind, mask_fill, mask_src, mask_lay = MASK_NONE, 0.0, "", None
    if len(node.inputs) > 3 and node.inputs[3]:
        mask_src = node.inputs[3]
        dtype = graph.tensors[mask_src].dtype
        if dtype not in ("bool", "float32"):
            raise MoaEdgeError(f"{where}: attn_mask {mask_src!r} is {dtype}; expected bool or float32")
        if graph.tensors[mask_src].shape[-1] != Skv:
            raise MoaEdgeError(f"{where}: attn_mask last axis {graph.tensors[mask_src].shape[-1]} != kv length {Skv}")
        mask_kind = MASK_BOOL if dtype == "bool" else MASK_FLOAT
        mask_fill = -math.inf
        mask_lay = _broadcast(graph, mask_src, (B, Hq, Sq, Skv), node.name)

    spec = AttentionSpec(B, Hq, Hkv, Sq, Skv, D, Dv, scale, bool(node.attrs.get("is_causal", 0)),
                         mask_kind, mask_fill, q_lay, k_lay, v_lay, y_lay, mask_lay,
                         pattern=f"ONNX Attention ({len(q_shape)}-D)", absorbed=(node.name,))
    return spec, [node.inputs[0], node.inputs[1], node.inputs[2], mask_src], node.outputs[0], node
