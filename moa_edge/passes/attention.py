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

import dataclasses
import math

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node, Tensor, dtypes

# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"Attention": 25}
from moa_edge.moa import Layout
from moa_edge.moa.mask import MASK_BOOL, MASK_FLOAT, MASK_NONE
from moa_edge.moa.spec import AttentionSpec

from .bias import band_of, classify_bias
from .canonical import pad_nodes
from .contrib_attention import RULES as CONTRIB_RULES
from .match import MASKED, produced_by, scalar
from .views import as_4d, broadcast_mask, kv_heads_of, trace_output_view, trace_view, traced_mask


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
        elif node.op in CONTRIB_RULES:
            match = CONTRIB_RULES[node.op](graph, node)
        if match is None:
            continue
        spec, inputs, outputs, replaced = match
        outputs = [outputs] if isinstance(outputs, str) else outputs
        position = graph.nodes.index(replaced)
        graph.nodes[position] = Node("MoaAttention", f"moa_attention_{found}", inputs, outputs, {"spec": spec})
        # Absorbed nodes that produced these outputs before (the head merge, the Softmax) no longer do.
        new = graph.nodes[position]
        graph.nodes = [n for n in graph.nodes if n is new or not set(outputs) & set(n.outputs)]
        found += 1
    graph.toposort()
    graph.remove_dead()
    return found


# --- small matchers ----------------------------------------------------------------

def _peel_scale(graph: Graph, name: str, absorbed: list[str]) -> tuple[str, float]:
    """Strip scalar Mul/Div by constants: x*c, c*x, x/c -> (x, product of factors)."""
    factor = 1.0
    while True:
        node = graph.producer(name)
        if node is None or node.op not in ("Mul", "Div"):
            return name, factor
        a, b = node.inputs
        if node.op == "Div" and scalar(graph, b) is not None:
            name, factor = a, factor / scalar(graph, b)
        elif node.op == "Mul" and scalar(graph, b) is not None:
            name, factor = a, factor * scalar(graph, b)
        elif node.op == "Mul" and scalar(graph, a) is not None:
            name, factor = b, factor * scalar(graph, a)
        else:
            return name, factor
        absorbed.append(node.name)


# --- rule: decomposed scaled-dot-product attention ---------------------------------

def _decomposed_sdpa(graph: Graph, softmax: Node):
    rank = len(graph.tensors[softmax.inputs[0]].shape)
    if softmax.attrs.get("axis", -1) not in (-1, rank - 1) or rank not in (3, 4):
        return None
    absorbed = [softmax.name]

    # Down: optional NaN guard, then P @ V.
    probs = softmax.outputs[0]
    users = graph.consumers(probs)
    guard = [u for u in users if u.op == "IsNaN"]
    if guard:
        where = [u for u in users if u.op == "Where" and u.inputs[0] == guard[0].outputs[0] and u.inputs[2] == probs]
        if len(users) != 2 or not where or scalar(graph, where[0].inputs[1]) != 0.0:
            return None
        absorbed += [guard[0].name, where[0].name]
        probs = where[0].outputs[0]
        users = graph.consumers(probs)
    if len(users) == 1 and _is_empty_row_guard(graph, users[0], probs):
        absorbed.append(users[0].name)
        probs = users[0].outputs[0]
        users = graph.consumers(probs)
    pvs = [u for u in users if u.op == "MatMul" and u.inputs[0] == probs]
    if len(pvs) != 1:
        return None
    pv = pvs[0]
    # Probabilities or biased scores the graph also uses (nn.MultiheadAttention's returned
    # weights, the ONNX function's qk output) become the block's second output.
    taps = [(3, probs)] if len(users) > 1 or probs in graph.outputs else []
    scores_in = softmax.inputs[0]
    if len(graph.consumers(scores_in)) > 1 or scores_in in graph.outputs:
        taps.append((2, scores_in))
    if len(taps) > 1 or (taps and graph.tensors[taps[0][1]].dtype != "float32"):
        return None

    # Up: bias terms (Add of a mask, Where(keep, scores, fill)), then scalar scales, then Q @ K^T.
    scores, terms = softmax.inputs[0], []
    while True:
        node = graph.producer(scores)
        if node is not None and node.op == "Add":
            a, b = node.inputs
            if _leads_to_matmul(graph, a):
                scores, term = a, b
            elif _leads_to_matmul(graph, b):
                scores, term = b, a
            else:
                return None
            terms.append(("add", term))
        elif (node is not None and node.op == "Where" and _leads_to_matmul(graph, node.inputs[1])
              and graph.tensors[node.inputs[0]].dtype == "bool"
              and (scalar(graph, node.inputs[2]) or 0.0) <= MASKED):
            terms.append(("keep", node.inputs[0], scalar(graph, node.inputs[2])))
            scores = node.inputs[1]
        elif (node is not None and node.op == "Max" and len(node.inputs) == 2
              and (scalar(graph, node.inputs[1]) or 0.0) <= MASKED):
            # A floor at the most negative float (XGLM) changes only -inf scores: with HF's finite masks
            # (finfo.min) none; a row a -inf mask hides wholly averages every key with it, is 0 here.
            scores = node.inputs[0]
        else:
            break
        absorbed.append(node.name)
    capped = scores
    scores, softcap = _peel_softcap(graph, scores, absorbed)
    scaled = scores
    scores, post_scale = _peel_scale(graph, scores, absorbed)
    qk = produced_by(graph, scores, "MatMul")
    if qk is None:
        return None
    absorbed.append(qk.name)
    # The scaled (mode 0) or softcapped (mode 1) scores may be outputs too (the function body's qk).
    for mode, name in ((1, capped), (0, scaled)) if softcap else ((0, scaled),):
        if (len(graph.consumers(name)) > 1 or name in graph.outputs) and name not in (t for _, t in taps):
            taps.append((mode, name))  # with no bias, the softmax input is one tensor for modes 0 and 2
    if len(taps) > 1:
        return None
    q_name, q_scale = _peel_scale(graph, qk.inputs[0], absorbed)
    kt_name, k_scale = _peel_scale(graph, qk.inputs[1], absorbed)
    q_src, q_lay = trace_view(graph, q_name, absorbed)
    k_src, kt_lay = trace_view(graph, kt_name, absorbed)
    v_src, v_lay = trace_view(graph, pv.inputs[1], absorbed)
    q_lay, kt_lay, v_lay = as_4d(q_lay), as_4d(kt_lay), as_4d(v_lay)
    if q_lay is None or kt_lay is None or v_lay is None:
        return None
    k_lay, k_group = kv_heads_of(kt_lay.transpose([0, 1, 3, 2]))
    v_lay, v_group = kv_heads_of(v_lay)
    B, Hq, Sq, D = q_lay.shape
    _, Hkv, Skv, Dk = k_lay.shape
    Dv = v_lay.shape[3]
    # Multi-query attention written as one K/V head that the MatMuls broadcast against the query heads
    # (Falcon): the kernel's grouped heads with a single group.
    broadcast_head = Hkv == 1 and k_group == v_group == 1
    if Dk != D or v_lay.shape[:3] != k_lay.shape[:3] or k_group != v_group or (Hkv * k_group != Hq
                                                                                and not broadcast_head):
        return None
    y, y_lay = trace_output_view(graph, pv.outputs[0], absorbed)
    y_lay = as_4d(y_lay)
    if y_lay is None or y_lay.shape != (B, Hq, Sq, Dv):
        return None

    bias = classify_bias(graph, terms, B, Sq, Skv, absorbed, exact_scores=any(mode == 2 for mode, _ in taps))
    if bias is None:
        return None
    mask_src, mask_lay = traced_mask(graph, bias.mask, (B, Hq, Sq, Skv), softmax.name) if bias.mask else ("", None)
    spec = AttentionSpec(B, Hq, Hkv, Sq, Skv, D, Dv, q_scale * k_scale * post_scale, bias.causal,
                         bias.mask_kind, bias.mask_fill, q_lay, k_lay, v_lay, y_lay, mask_lay,
                         pattern="decomposed SDPA (Softmax anchor)", absorbed=tuple(absorbed + [pv.name]),
                         softcap=softcap, causal_offset=bias.causal_offset, window_start=bias.window_start,
                         kv_lengths=bool(bias.lengths),
                         lengths_ctype=dtypes.dtype(graph.tensors[bias.lengths].dtype).c_type if bias.lengths else "int64_t")
    if taps:
        spec = dataclasses.replace(spec, qk_mode=taps[0][0])
    graph.nodes[graph.nodes.index(pv):graph.nodes.index(pv)] = bias.new_nodes
    inputs = [q_src, k_src, v_src, mask_src] + ([bias.lengths] if bias.lengths else [])
    return spec, inputs, [y] + [name for _, name in taps], pv


def _is_empty_row_guard(graph: Graph, node: Node, probs: str) -> bool:
    """Where(ReduceMax(bias) == -inf, 0, P): rows whose bias hides every key give 0 (the
    ONNX function body's guard). The kernel already does so."""
    if node.op != "Where" or node.inputs[2] != probs or scalar(graph, node.inputs[1]) != 0.0:
        return False
    cond = graph.constant(node.inputs[0])
    if cond is not None:
        return not np.any(cond)  # no row is fully hidden: the guard does nothing
    equal = produced_by(graph, node.inputs[0], "Equal")
    if equal is None:
        return False
    a, b = equal.inputs
    limit = scalar(graph, b) if scalar(graph, b) is not None else scalar(graph, a)
    reduce = produced_by(graph, a, "ReduceMax") or produced_by(graph, b, "ReduceMax")
    return limit == -math.inf and reduce is not None


def _leads_to_matmul(graph: Graph, name: str) -> bool:
    inner, _ = _peel_softcap(graph, name, [])
    inner, _ = _peel_scale(graph, inner, [])
    return produced_by(graph, inner, "MatMul") is not None


def _peel_softcap(graph: Graph, name: str, absorbed: list[str]) -> tuple[str, float]:
    """c * tanh(x / c) -> (x, c); anything else -> (name, 0)."""
    mul = produced_by(graph, name, "Mul")
    if mul is None:
        return name, 0.0
    a, b = mul.inputs
    cap, inner = (scalar(graph, b), a) if scalar(graph, b) is not None else (scalar(graph, a), b)
    tanh = produced_by(graph, inner, "Tanh")
    div = produced_by(graph, tanh.inputs[0], "Div") if tanh is not None else None
    if not cap or div is None or scalar(graph, div.inputs[1]) != cap:
        return name, 0.0
    absorbed += [mul.name, tanh.name, div.name]
    return div.inputs[0], cap


# --- rule: the ONNX Attention op ---------------------------------------------------

def _check_attention_shapes(where: str, node: Node, q_shape, k_shape, v_shape, past_k_shape, past_v_shape) -> None:
    """Q, K and V agree as the ONNX Attention op requires (onnxruntime and the reference
    evaluator refuse the rest): one batch, K's head size that of Q, K and V as long and with as
    many heads, query heads a multiple of them. The kernel trusts these sizes when it reads."""
    def heads(what, shape, num_heads):  # (B, H, S, d) from a 4-D shape, or a 3-D one with H heads
        if len(shape) == 4:
            return tuple(shape)
        if len(shape) != 3:
            raise MoaEdgeError(f"{where}: inputs must be 3-D or 4-D, {what} has shape {list(shape)}")
        if not hq or not hkv:
            raise MoaEdgeError(f"{where}: 3-D inputs need the q_num_heads and kv_num_heads attributes")
        if shape[2] % num_heads:
            raise MoaEdgeError(f"{where}: {what}'s hidden size {shape[2]} is not a multiple of its "
                               f"{num_heads} heads (shape {list(shape)})")
        return shape[0], num_heads, shape[1], shape[2] // num_heads
    hq, hkv = node.attrs.get("q_num_heads"), node.attrs.get("kv_num_heads")
    (b, heads_q, _, d), (bk, heads_k, len_k, dk), (bv, heads_v, len_v, _) = (
        heads(what, shape, h) for what, shape, h in (("Q", q_shape, hq), ("K", k_shape, hkv), ("V", v_shape, hkv)))
    problems = []
    if not b == bk == bv:
        problems.append(f"batch sizes differ (Q {b}, K {bk}, V {bv})")
    if dk != d:
        problems.append(f"K's head size {dk} is not Q's {d}")
    if len_k != len_v:
        problems.append(f"K has {len_k} positions, V {len_v}")
    if heads_k != heads_v:
        problems.append(f"K has {heads_k} heads, V {heads_v}")
    elif heads_q % heads_k:
        problems.append(f"{heads_q} query heads are not a multiple of {heads_k} key/value heads")
    for what, past, depth in (("past_key", past_k_shape, dk), ("past_value", past_v_shape, None)):
        if past is not None and (len(past) != 4 or past[0] != b or past[1] != heads_k
                                 or (depth is not None and past[3] != depth)):
            problems.append(f"{what} has shape {list(past)}, expected ({b}, {heads_k}, length, head size)")
    if problems:
        raise MoaEdgeError(f"{where}: inconsistent shapes (Q {list(q_shape)}, K {list(k_shape)}, "
                           f"V {list(v_shape)}): " + "; ".join(problems))


def _attention_op(graph: Graph, node: Node):
    where = f"Attention node {node.name!r}"
    nonpad = node.inputs[6] if len(node.inputs) > 6 and node.inputs[6] else ""
    if nonpad and any(node.inputs[4:6]):
        raise MoaEdgeError(f"{where}: nonpad_kv_seqlen together with past_key/past_value is not valid ONNX")
    qk_out = node.outputs[3] if len(node.outputs) > 3 and node.outputs[3] else ""
    if qk_out and not (graph.consumers(qk_out) or qk_out in graph.outputs):
        qk_out = ""
    past_k, past_v = (node.inputs[i] if len(node.inputs) > i else "" for i in (4, 5))
    q_shape = graph.tensors[node.inputs[0]].shape
    k_shape = graph.tensors[node.inputs[1]].shape
    v_shape = graph.tensors[node.inputs[2]].shape
    y_shape = graph.tensors[node.outputs[0]].shape
    _check_attention_shapes(where, node, q_shape, k_shape, v_shape,
                            *(graph.tensors[p].shape if p else None for p in (past_k, past_v)))
    for name in node.inputs[:3]:
        if graph.tensors[name].dtype != "float32":
            raise MoaEdgeError(f"{where}: input {name!r} is {graph.tensors[name].dtype}; only float32 is supported yet")

    absorbed = [node.name]
    sources = list(node.inputs[:3])
    if len(q_shape) == 4:
        # Read Q, K, V through their layout ops: head splits, transposes and repeat_kv.
        (sources[0], q_lay), (sources[1], k_lay), (sources[2], v_lay) = (
            trace_view(graph, name, absorbed) for name in node.inputs[:3])
        k_lay, k_group = kv_heads_of(k_lay)
        v_lay, v_group = kv_heads_of(v_lay)
        if k_group != v_group or any(len(lay.shape) != 4 for lay in (q_lay, k_lay, v_lay)):
            sources = list(node.inputs[:3])
            q_lay, k_lay, v_lay = (Layout.row_major(s) for s in (q_shape, k_shape, v_shape))
            absorbed = [node.name]
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

    # A key/value cache: present = Concat(past, new) along the sequence, written where the
    # graph wants it; attention reads the present tensors, its causal diagonal moved by
    # the past length (bottom-right alignment).
    extra_nodes, causal_offset = [], 0
    presents = [node.outputs[i] if len(node.outputs) > i else "" for i in (1, 2)]
    if past_k or any(presents):
        past_len = graph.tensors[past_k].shape[2] if past_k else 0
        total = past_len + Skv
        for k, (past, lay, src, depth) in enumerate(((past_k, k_lay, sources[1], D), (past_v, v_lay, sources[2], Dv))):
            present = presents[k] or f"{node.name}__present_{'kv'[k]}"
            graph.tensors[present] = Tensor(present, (B, Hkv, total, depth), "float32")
            parts = ([past] if past else []) + [src]
            layouts = ([Layout.row_major(graph.tensors[past].shape)] if past else []) + [lay]
            extra_nodes.append(Node("MoaConcat", f"{node.name}__concat_{'kv'[k]}", parts, [present],
                                    {"layouts": layouts, "axis": 2}))
            sources[1 + k] = present
        k_lay = Layout.row_major((B, Hkv, total, D))
        v_lay = Layout.row_major((B, Hkv, total, Dv))
        Skv, causal_offset = total, past_len

    mask_kind, mask_fill, mask_src, mask_lay, band_upper = MASK_NONE, 0.0, "", None, None
    if len(node.inputs) > 3 and node.inputs[3]:
        mask_src = node.inputs[3]
        dtype = graph.tensors[mask_src].dtype
        if dtype not in ("bool", "float32"):
            raise MoaEdgeError(f"{where}: attn_mask {mask_src!r} is {dtype}; expected bool or float32")
        mask_shape = graph.tensors[mask_src].shape
        if mask_shape[-1] > Skv:
            raise MoaEdgeError(f"{where}: attn_mask's last axis ({mask_shape[-1]}) is longer than the keys ({Skv})")
        if mask_shape[-1] < Skv:
            # Opset 24: the keys past the mask are hidden. Pad it (False / -inf) once, by a copy.
            padded = f"{node.name}__mask_padded"
            extra_nodes.append(pad_nodes(graph, mask_src, len(mask_shape) - 1, 0, Skv - mask_shape[-1],
                                         False if dtype == "bool" else -np.inf, padded, f"{node.name}__pad_mask"))
            mask_src = padded
        mask_kind = MASK_BOOL if dtype == "bool" else MASK_FLOAT
        mask_fill = -math.inf
        mask_lay = broadcast_mask(graph, mask_src, (B, Hq, Sq, Skv), node.name)
        const = graph.constant(mask_src)
        if const is not None and (np.all(const) if dtype == "bool" else not np.any(const)):
            mask_kind, mask_src, mask_lay = MASK_NONE, "", None  # keeps every key: no mask at all
        elif const is not None and not qk_out:
            # A constant causal triangle (a decoder's mask folded over its cache) is the kernel's
            # own diagonal. It hides no row's every key, so a finite fill acts as -inf does.
            band = band_of(np.where(const, 0.0, -np.inf) if dtype == "bool" else const, Sq, Skv)
            if band is not None and band[0] is not None and band[0] >= 0 and band[1] is None:
                mask_kind, mask_src, mask_lay, band_upper = MASK_NONE, "", None, band[0]

    # Query i sits at absolute position i + offset (after the cache, or L[b] - Sq with nonpad_kv_seqlen);
    # a right window bounds its keys from above like the causal diagonal, a left window from below.
    offset = -Sq if nonpad else causal_offset
    causal, left, right = bool(node.attrs.get("is_causal", 0)), *(
        int(node.attrs.get(f"{side}_window_size", -1)) for side in ("left", "right"))
    if right >= 0 and not causal:
        causal, offset_right = True, offset + right
    else:
        offset_right = offset
    if band_upper is not None:
        offset_right = min(offset_right, band_upper) if causal else band_upper
        causal = True
    spec = AttentionSpec(B, Hq, Hkv, Sq, Skv, D, Dv, scale, causal,
                         mask_kind, mask_fill, q_lay, k_lay, v_lay, y_lay, mask_lay,
                         pattern=f"ONNX Attention ({len(q_shape)}-D)", absorbed=tuple(absorbed),
                         softcap=float(node.attrs.get("softcap", 0.0)), window_start=offset - left if left >= 0 else None,
                         causal_offset=offset_right, kv_lengths=bool(nonpad),
                         qk_mode=int(node.attrs.get("qk_matmul_output_mode", 0)) if qk_out else -1)
    graph.nodes[graph.nodes.index(node):graph.nodes.index(node)] = extra_nodes
    inputs = sources + [mask_src] + ([nonpad] if nonpad else [])
    return spec, inputs, [node.outputs[0]] + ([qk_out] if qk_out else []), node
