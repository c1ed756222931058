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
from moa_edge.ir import Graph, Node, Tensor
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
        elif node.op in contrib_rules():
            match = contrib_rules()[node.op](graph, node)
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


def contrib_rules():
    from .contrib_attention import RULES  # imports this module's helpers
    return RULES


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
    """Follow layout ops back to stored data: (source tensor, access map). Transpose,
    view-compatible Reshape, Unsqueeze/Squeeze and Identity are index maps; so is
    Unsqueeze -> Expand -> Reshape merging the expanded axis into the one before it,
    which is repeat_kv (the merged index h reads h // group)."""
    node = graph.producer(name)
    shape = graph.tensors[name].shape
    if node is None:
        return name, Layout.row_major(shape)
    inner = list(absorbed)
    view = None
    if node.op == "Transpose":
        source, layout = _trace_view(graph, node.inputs[0], inner)
        view = layout.transpose(node.attrs.get("perm", list(range(len(shape)))[::-1]))
    elif node.op in ("Reshape", "Unsqueeze", "Squeeze", "Identity"):
        source, layout = _trace_view(graph, node.inputs[0], inner)
        view = _repeat_kv_merge(layout, shape) if node.op == "Reshape" else None
        view = view or layout.reshape(shape)
    elif node.op == "Expand" and graph.constant(node.inputs[1]) is not None:
        source, layout = _trace_view(graph, node.inputs[0], inner)
        if len(layout.shape) == len(shape):
            view = layout.broadcast_to(shape)
    if view is None:
        return name, Layout.row_major(shape)
    absorbed[:] = inner + [node.name]
    return source, view


def _repeat_kv_merge(layout: Layout, shape) -> Layout | None:
    """(.., H, G, ..) with the G axis broadcast (stride 0) merged into (.., H*G, ..)."""
    for axis in range(len(layout.shape) - 1):
        group = layout.shape[axis + 1]
        if layout.strides[axis + 1] != 0 or group == 1:
            continue
        merged = layout.shape[:axis] + (layout.shape[axis] * group,) + layout.shape[axis + 2:]
        if tuple(shape) != merged:
            continue
        dropped = Layout(layout.shape[:axis + 1] + layout.shape[axis + 2:],
                         layout.strides[:axis + 1] + layout.strides[axis + 2:], layout.offset,
                         None if layout.divisors is None else layout.divisors[:axis + 1] + layout.divisors[axis + 2:])
        return dropped.repeat_kv(axis, group)
    return None


def _kv_heads_of(layout: Layout) -> tuple[Layout, int]:
    """A (B, Hq, S, d) map whose head axis divides by G, as (B, Hq/G, S, d) and G."""
    group = layout.axis_divisors()[1]
    if group == 1:
        return layout, 1
    divisors = layout.axis_divisors()
    plain = Layout((layout.shape[0], layout.shape[1] // group) + layout.shape[2:], layout.strides, layout.offset,
                   (divisors[0], 1) + divisors[2:])
    return plain, group


def _as_4d(layout: Layout) -> Layout | None:
    """Rank-3 operands (heads folded into the batch, as nn.MultiheadAttention does) gain a batch of 1."""
    if len(layout.shape) == 4:
        return layout
    if len(layout.shape) == 3:
        return Layout((1,) + layout.shape, (0,) + layout.strides, layout.offset,
                      None if layout.divisors is None else (1,) + layout.divisors)
    return None


def _causal_offset(bias: np.ndarray, q_len: int, kv_len: int) -> int | None:
    """o when a constant 0 / masked bias is exactly the causal triangle k > i + o (o = 0:
    top-left; o = past length: bottom-right after a cache), else None."""
    if bias.ndim < 2 or bias.shape[-2:] != (q_len, kv_len) or bias.size != q_len * kv_len:
        return None
    masked = bias.reshape(q_len, kv_len).astype(np.float64) <= _MASKED
    if not np.all(bias.reshape(q_len, kv_len)[~masked] == 0):
        return None
    visible = (~masked).sum(axis=1)  # keys each query row sees
    offset = int(visible[0]) - 1
    above = np.triu(np.ones((q_len, kv_len), dtype=bool), 1 + offset)
    return offset if np.array_equal(masked, above) and offset >= 0 else None


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
        if len(users) != 2 or not where or _scalar(graph, where[0].inputs[1]) != 0.0:
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
              and (_scalar(graph, node.inputs[2]) or 0.0) <= _MASKED):
            terms.append(("keep", node.inputs[0], _scalar(graph, node.inputs[2])))
            scores = node.inputs[1]
        else:
            break
        absorbed.append(node.name)
    capped = scores
    scores, softcap = _peel_softcap(graph, scores, absorbed)
    scaled = scores
    scores, post_scale = _peel_scale(graph, scores, absorbed)
    qk = _produced_by(graph, scores, "MatMul")
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
    q_src, q_lay = _trace_view(graph, q_name, absorbed)
    k_src, kt_lay = _trace_view(graph, kt_name, absorbed)
    v_src, v_lay = _trace_view(graph, pv.inputs[1], absorbed)
    q_lay, kt_lay, v_lay = _as_4d(q_lay), _as_4d(kt_lay), _as_4d(v_lay)
    if q_lay is None or kt_lay is None or v_lay is None:
        return None
    k_lay, k_group = _kv_heads_of(kt_lay.transpose([0, 1, 3, 2]))
    v_lay, v_group = _kv_heads_of(v_lay)
    B, Hq, Sq, D = q_lay.shape
    _, Hkv, Skv, Dk = k_lay.shape
    Dv = v_lay.shape[3]
    if Dk != D or v_lay.shape[:3] != k_lay.shape[:3] or k_group != v_group or Hkv * k_group != Hq:
        return None
    y, y_lay = _trace_output_view(graph, pv.outputs[0], absorbed)
    y_lay = _as_4d(y_lay)
    if y_lay is None or y_lay.shape != (B, Hq, Sq, Dv):
        return None

    mask_kind, mask_fill, mask_src, causal, offset, extra_nodes = _classify_bias(
        graph, terms, Sq, Skv, absorbed, exact_scores=any(mode == 2 for mode, _ in taps))
    if mask_kind is None:
        return None
    mask_lay = _broadcast(graph, mask_src, (B, Hq, Sq, Skv), softmax.name) if mask_src else None
    spec = AttentionSpec(B, Hq, Hkv, Sq, Skv, D, Dv, q_scale * k_scale * post_scale, causal,
                         mask_kind, mask_fill, q_lay, k_lay, v_lay, y_lay, mask_lay,
                         pattern="decomposed SDPA (Softmax anchor)", absorbed=tuple(absorbed + [pv.name]),
                         softcap=softcap, causal_offset=offset)
    if taps:
        spec = dataclasses.replace(spec, qk_mode=taps[0][0])
    graph.nodes[graph.nodes.index(pv):graph.nodes.index(pv)] = extra_nodes
    return spec, [q_src, k_src, v_src, mask_src], [y] + [name for _, name in taps], pv


def _is_empty_row_guard(graph: Graph, node: Node, probs: str) -> bool:
    """Where(ReduceMax(bias) == -inf, 0, P): rows whose bias hides every key give 0 (the
    ONNX function body's guard). The kernel already does so."""
    if node.op != "Where" or node.inputs[2] != probs or _scalar(graph, node.inputs[1]) != 0.0:
        return False
    cond = graph.constant(node.inputs[0])
    if cond is not None:
        return not np.any(cond)  # no row is fully hidden: the guard does nothing
    equal = _produced_by(graph, node.inputs[0], "Equal")
    if equal is None:
        return False
    a, b = equal.inputs
    limit = _scalar(graph, b) if _scalar(graph, b) is not None else _scalar(graph, a)
    reduce = _produced_by(graph, a, "ReduceMax") or _produced_by(graph, b, "ReduceMax")
    return limit == -math.inf and reduce is not None


def _trace_output_view(graph: Graph, name: str, absorbed: list[str]) -> tuple[str, Layout]:
    """Follow the output down through Transpose/Reshape (the head merge) while each is
    the only consumer: the kernel then writes the merged tensor in place."""
    chain = []
    while True:
        users = graph.consumers(name)
        if len(users) != 1 or name in graph.outputs or users[0].op not in ("Transpose", "Reshape"):
            break
        chain.append(users[0])
        name = users[0].outputs[0]
    # Undo the chain from its end: the view of the final tensor's storage the kernel writes.
    while chain:
        layout = Layout.row_major(graph.tensors[name].shape)
        ok = True
        for node in reversed(chain):
            before = graph.tensors[node.inputs[0]].shape
            if node.op == "Transpose":
                perm = node.attrs.get("perm", list(range(len(before)))[::-1])
                layout = layout.transpose([perm.index(k) for k in range(len(perm))])
            else:
                layout = layout.reshape(before)
                if layout is None:
                    ok = False
                    break
        if ok:
            absorbed.extend(n.name for n in chain)
            return name, layout
        name = chain.pop().inputs[0]  # give up the last op and try the shorter chain
    return name, Layout.row_major(graph.tensors[name].shape)


def _split_sums(graph: Graph, terms, absorbed: list[str]):
    """A bias that is itself an Add of biases (mask + causal triangle) counts as its parts."""
    out = []
    for term in terms:
        node = _produced_by(graph, term[1], "Add") if term[0] == "add" else None
        if node is not None and all(graph.tensors[i].dtype == "float32" for i in node.inputs):
            absorbed.append(node.name)
            out += _split_sums(graph, [("add", i) for i in node.inputs], absorbed)
        else:
            out.append(term)
    return out


def _classify_bias(graph: Graph, terms, q_len: int, kv_len: int, absorbed: list[str], exact_scores: bool = False):
    """Bias terms -> (mask kind, fill, mask tensor, causal, causal offset, new nodes). A term
    proved to be exactly a causal triangle becomes is_causal; one other term is the mask; several are
    summed by a new Add (bool terms first turned into their 0 / fill bias).

    A causal triangle drawn with a finite minimum (finfo.min, as exporters do) is is_causal
    only when nothing else can hide a row's remaining keys and the biased scores are not an
    output: otherwise -inf would change fully hidden rows and the scores the graph sees."""
    causal, offset, masks, finite_causal = False, 0, [], []
    terms = _split_sums(graph, terms, absorbed)
    for term in terms:
        if term[0] == "keep":
            _, cond, fill = term
            keep = graph.constant(cond)
            found = None if keep is None else _causal_offset(np.where(keep, 0.0, -np.inf), q_len, kv_len)
            if found is None:
                masks.append(("bool", cond, fill))
            elif math.isinf(fill):
                causal, offset = True, found
            else:
                finite_causal.append((("bool", cond, fill), found))
            continue
        name = term[1]
        where = _produced_by(graph, name, "Where")
        const = graph.constant(name)
        if const is not None and not np.any(const):
            continue  # an all-zero bias (ViT exports one): nothing to add
        found = None if const is None else _causal_offset(const, q_len, kv_len)
        if found is not None and np.all(np.isinf(const[const != 0])):
            causal, offset = True, found
        elif found is not None:
            finite_causal.append((("float", name, 0.0), found))
        elif (where is not None and graph.tensors[where.inputs[0]].dtype == "bool"
              and _scalar(graph, where.inputs[1]) == 0.0 and _scalar(graph, where.inputs[2]) is not None
              and _scalar(graph, where.inputs[2]) <= _MASKED):  # shared by every layer: stays until dead
            masks.append(("bool", where.inputs[0], _scalar(graph, where.inputs[2])))
            absorbed.append(where.name)
        elif graph.tensors[name].dtype == "float32":
            masks.append(("float", name, 0.0))
        else:
            return None, 0.0, "", False, 0, []
    for mask, found in finite_causal:
        if masks or exact_scores:
            masks.append(mask)
        else:
            causal, offset = True, found
    if not masks:
        return MASK_NONE, 0.0, "", causal, offset, []
    if len(masks) == 1:
        kind, name, fill = masks[0]
        return (MASK_BOOL if kind == "bool" else MASK_FLOAT), fill, name, causal, offset, []
    # Several masks: one float bias computed by the graph, outside the kernel.
    nodes, names = [], []
    for k, (kind, name, fill) in enumerate(masks):
        if kind == "bool":
            zero, fill_name, out = f"{name}__zero", f"{name}__fill", f"{name}__bias"
            graph.tensors[zero] = Tensor(zero, (), "float32", np.array(0.0, np.float32))
            graph.tensors[fill_name] = Tensor(fill_name, (), "float32", np.array(fill, np.float32))
            graph.tensors[out] = Tensor(out, graph.tensors[name].shape, "float32")
            nodes.append(Node("Where", f"{name}__to_bias", [name, zero, fill_name], [out]))
            name = out
        names.append(name)
    total = names[0]
    for k, name in enumerate(names[1:]):
        out = f"{total}__plus_{k}"
        shape = np.broadcast_shapes(graph.tensors[total].shape, graph.tensors[name].shape)
        graph.tensors[out] = Tensor(out, tuple(shape), "float32")
        nodes.append(Node("Add", f"{out}__add", [total, name], [out]))
        total = out
    return MASK_FLOAT, 0.0, total, causal, offset, nodes


def _leads_to_matmul(graph: Graph, name: str) -> bool:
    inner, _ = _peel_softcap(graph, name, [])
    inner, _ = _peel_scale(graph, inner, [])
    return _produced_by(graph, inner, "MatMul") is not None


def _peel_softcap(graph: Graph, name: str, absorbed: list[str]) -> tuple[str, float]:
    """c * tanh(x / c) -> (x, c); anything else -> (name, 0)."""
    mul = _produced_by(graph, name, "Mul")
    if mul is None:
        return name, 0.0
    a, b = mul.inputs
    cap, inner = (_scalar(graph, b), a) if _scalar(graph, b) is not None else (_scalar(graph, a), b)
    tanh = _produced_by(graph, inner, "Tanh")
    div = _produced_by(graph, tanh.inputs[0], "Div") if tanh is not None else None
    if not cap or div is None or _scalar(graph, div.inputs[1]) != cap:
        return name, 0.0
    absorbed += [mul.name, tanh.name, div.name]
    return div.inputs[0], cap


def _broadcast(graph: Graph, name: str, full, where: str) -> Layout:
    shape = graph.tensors[name].shape
    if len(shape) > 4 or any(m not in (1, n) for m, n in zip(shape[::-1], full[::-1])):
        raise MoaEdgeError(f"node {where}: mask {name!r} of shape {list(shape)} does not broadcast "
                           f"to the scores' shape {list(full)}")
    return Layout.row_major(shape).broadcast_to(full)


# --- rule: the ONNX Attention op ---------------------------------------------------

def _attention_op(graph: Graph, node: Node):
    where = f"Attention node {node.name!r}"
    nonpad = node.inputs[6] if len(node.inputs) > 6 and node.inputs[6] else ""
    if nonpad and any(node.inputs[4:6]):
        raise MoaEdgeError(f"{where}: nonpad_kv_seqlen together with past_key/past_value is not valid ONNX")
    qk_out = node.outputs[3] if len(node.outputs) > 3 and node.outputs[3] else ""
    if qk_out and not (graph.consumers(qk_out) or qk_out in graph.outputs):
        qk_out = ""
    past_k, past_v = (node.inputs[i] if len(node.inputs) > i else "" for i in (4, 5))
    if node.attrs.get("left_window_size", -1) != -1 or node.attrs.get("right_window_size", -1) != -1:
        raise MoaEdgeError(f"{where}: sliding-window attention is not supported yet")
    q_shape = graph.tensors[node.inputs[0]].shape
    k_shape = graph.tensors[node.inputs[1]].shape
    v_shape = graph.tensors[node.inputs[2]].shape
    y_shape = graph.tensors[node.outputs[0]].shape
    for name in node.inputs[:3]:
        if graph.tensors[name].dtype != "float32":
            raise MoaEdgeError(f"{where}: input {name!r} is {graph.tensors[name].dtype}; only float32 is supported yet")

    absorbed = [node.name]
    sources = list(node.inputs[:3])
    if len(q_shape) == 4:
        # Read Q, K, V through their layout ops: head splits, transposes and repeat_kv.
        (sources[0], q_lay), (sources[1], k_lay), (sources[2], v_lay) = (
            _trace_view(graph, name, absorbed) for name in node.inputs[:3])
        k_lay, k_group = _kv_heads_of(k_lay)
        v_lay, v_group = _kv_heads_of(v_lay)
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

    mask_kind, mask_fill, mask_src, mask_lay = MASK_NONE, 0.0, "", None
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
            fill = np.zeros if dtype == "bool" else (lambda shape, dtype: np.full(shape, -np.inf, dtype))
            pad_shape = mask_shape[:-1] + (Skv - mask_shape[-1],)
            pad, padded = f"{node.name}__mask_pad", f"{node.name}__mask_padded"
            graph.tensors[pad] = Tensor(pad, pad_shape, dtype, fill(pad_shape, dtype=np.bool_ if dtype == "bool" else np.float32))
            graph.tensors[padded] = Tensor(padded, mask_shape[:-1] + (Skv,), dtype)
            extra_nodes.append(Node("MoaConcat", f"{node.name}__pad_mask", [mask_src, pad], [padded],
                                    {"layouts": [Layout.row_major(mask_shape), Layout.row_major(pad_shape)],
                                     "axis": len(mask_shape) - 1}))
            mask_src = padded
        mask_kind = MASK_BOOL if dtype == "bool" else MASK_FLOAT
        mask_fill = -math.inf
        mask_lay = _broadcast(graph, mask_src, (B, Hq, Sq, Skv), node.name)
        const = graph.constant(mask_src)
        if const is not None and (np.all(const) if dtype == "bool" else not np.any(const)):
            mask_kind, mask_src, mask_lay = MASK_NONE, "", None  # keeps every key: no mask at all

    spec = AttentionSpec(B, Hq, Hkv, Sq, Skv, D, Dv, scale, bool(node.attrs.get("is_causal", 0)),
                         mask_kind, mask_fill, q_lay, k_lay, v_lay, y_lay, mask_lay,
                         pattern=f"ONNX Attention ({len(q_shape)}-D)", absorbed=tuple(absorbed),
                         softcap=float(node.attrs.get("softcap", 0.0)),
                         causal_offset=-Sq if nonpad else causal_offset, kv_lengths=bool(nonpad),
                         qk_mode=int(node.attrs.get("qk_matmul_output_mode", 0)) if qk_out else -1)
    graph.nodes[graph.nodes.index(node):graph.nodes.index(node)] = extra_nodes
    inputs = sources + [mask_src] + ([nonpad] if nonpad else [])
    return spec, inputs, [node.outputs[0]] + ([qk_out] if qk_out else []), node
