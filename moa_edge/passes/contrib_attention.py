"""onnxruntime's contrib attention ops (domain com.microsoft), as its transformer
optimizer emits them: what maps onto one MoaAttention does; the rest is refused with an
error naming the node and the feature."""
from __future__ import annotations

import math

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node, Tensor
from moa_edge.moa import Layout
from moa_edge.moa.mask import MASK_FLOAT, MASK_NONE
from moa_edge.moa.spec import AttentionSpec

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


def _key_lengths(graph: Graph, node: Node, index: int, batch: int, causal: bool) -> str:
    """A 1-D int32 mask_index / key_padding_mask of shape (B,) holds each batch's key count
    (MaskIndexEnd): the kernel's key lengths. onnxruntime adds mask_filter_value (-10000)
    to the keys past it where the kernel skips them: the same in float32 unless a row's
    hidden scores exceed its visible ones by ~1e4, or a row has no key at all."""
    name = _present(node, index)
    if not name:
        return ""
    shape, dtype = graph.tensors[name].shape, graph.tensors[name].dtype
    if shape != (batch,) or dtype != "int32":
        _refuse(node, f"mask {name!r} of shape {list(shape)} ({dtype}); only 1-D key lengths (MaskIndexEnd) map")
    if causal:
        _refuse(node, "unidirectional together with a key mask")
    return name


def _add_bias(graph: Graph, node: Node, sources: list[str], bias: str, widths: list[int]) -> list[Node]:
    """The packed Q|K|V bias added to each projection: Add nodes with constant slices."""
    data = graph.constant(bias)
    if data is None:
        _refuse(node, f"a bias {bias!r} that is not a constant")
    nodes, start = [], 0
    for k, (source, width) in enumerate(zip(sources, widths)):
        part, out = f"{node.name}__bias_{'qkv'[k]}", f"{node.name}__{'qkv'[k]}_biased"
        graph.tensors[part] = Tensor(part, (width,), "float32", np.asarray(data[start:start + width], np.float32))
        graph.tensors[out] = Tensor(out, graph.tensors[source].shape, "float32")
        nodes.append(Node("Add", f"{node.name}__add_bias_{'qkv'[k]}", [source, part], [out]))
        sources[k], start = out, start + width
    return nodes


def multi_head_attention(graph: Graph, node: Node):
    """com.microsoft.MultiHeadAttention: separate 3-D Q, K, V, an optional packed bias
    (added by the graph), key lengths and attention_bias."""
    _only_known(node, {"num_heads": None, "scale": None, "mask_filter_value": None, "unidirectional": None}, 5)
    for index, feature in ((6, "past_key"), (7, "past_value")):
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
    causal = bool(node.attrs.get("unidirectional", 0))
    if causal and Sq != Skv:
        _refuse(node, "unidirectional with query and key lengths that differ")
    sources = list(node.inputs[:3])
    new = _add_bias(graph, node, sources, _present(node, 3), [q[2], k[2], v[2]]) if _present(node, 3) else []
    lengths = _key_lengths(graph, node, 4, B, causal)
    y = node.outputs[0]
    y_lay = _heads(graph.tensors[y].shape, heads)
    bias = _present(node, 5)
    mask_lay = broadcast_mask(graph, bias, (B, H, Sq, Skv), node.name) if bias else None
    spec = AttentionSpec(B, H, H, Sq, Skv, D, Dv, float(node.attrs.get("scale", 0.0)) or 1 / math.sqrt(D),
                         causal, MASK_FLOAT if bias else MASK_NONE, 0.0,
                         q_lay, k_lay, v_lay, y_lay, mask_lay, pattern="com.microsoft.MultiHeadAttention",
                         absorbed=(node.name,), kv_lengths=bool(lengths), lengths_ctype="int32_t")
    graph.nodes[graph.nodes.index(node):graph.nodes.index(node)] = new
    return spec, sources + [bias] + ([lengths] if lengths else []), y, node


def group_query_attention(graph: Graph, node: Node):
    """com.microsoft.GroupQueryAttention, causal: for a whole prompt (no cache), or with its
    past_key/past_value (B, kv_heads, P, D) appended to as present = MoaConcat(past, new), the
    query rows after the past (bottom-right diagonal: causal_offset P), as a generation build pins
    it (kv_cache.py). With do_rotary, the query and new keys turn first (RotaryEmbedding nodes)
    at positions P .. P + S - 1, as onnxruntime derives them from seqlens_k."""
    rotary = node.attrs.get("do_rotary", 0) == 1
    _only_known(node, {"num_heads": None, "kv_num_heads": None, "scale": None, "softcap": None,
                       "local_window_size": -1, "do_rotary": 1 if rotary else 0, "rotary_interleaved": None,
                       "smooth_softmax": 0}, 8 if rotary else 6)
    if rotary and not (_present(node, 7) and _present(node, 8)):
        _refuse(node, "do_rotary=1 without cos_cache and sin_cache")
    past_k, past_v = _present(node, 3), _present(node, 4)
    if bool(past_k) != bool(past_v):
        _refuse(node, "a past_key without a past_value (or the reverse)")
    if not _present(node, 1) or not _present(node, 2):
        _refuse(node, "packed QKV (query holding keys and values)")
    presents = [node.outputs[i] if len(node.outputs) > i and _used(graph, node.outputs[i]) else "" for i in (1, 2)]
    if any(presents) and not past_k:
        _refuse(node, "the present outputs without a past")
    heads, kv_heads = node.attrs["num_heads"], node.attrs["kv_num_heads"]
    q, k, v = (graph.tensors[n].shape for n in node.inputs[:3])
    if len(q) != 3 or len(k) != 3 or len(v) != 3:
        _refuse(node, "query, key or value that is not 3-D (B, S, hidden)")
    q_lay, k_lay, v_lay = _heads(q, heads), _heads(k, kv_heads), _heads(v, kv_heads)
    B, H, Sq, D = q_lay.shape
    Dv = v_lay.shape[3]
    past_len = graph.tensors[past_k].shape[2] if past_k else 0
    Skv = past_len + k_lay.shape[2]
    # seqlens_k holds each batch's total length minus one: only "every key valid" maps exactly.
    seqlens, total = graph.constant(_present(node, 5)), graph.constant(_present(node, 6))
    if (seqlens is None or total is None or int(np.asarray(total).reshape(-1)[0]) != Skv
            or np.any(np.asarray(seqlens) != Skv - 1)):
        _refuse(node, "seqlens_k/total_sequence_length that are not constants covering every key "
                      f"({Skv}: the past's {past_len} rows and {k_lay.shape[2]} new)")
    sources, new = list(node.inputs[:3]), []
    if rotary:
        new = _rotary_nodes(graph, node, sources, past_len, heads, kv_heads)
    if past_k:
        for index, (past, lay, depth) in enumerate(((past_k, k_lay, D), (past_v, v_lay, Dv))):
            shape = graph.tensors[past].shape
            if shape != (B, kv_heads, past_len, depth):
                _refuse(node, f"past {past!r} of shape {list(shape)}, not ({B}, {kv_heads}, {past_len}, {depth})")
            # max(past, total) rows in onnxruntime: the total, checked above (shape inference may
            # have given the past's length, not knowing total_sequence_length then).
            present = presents[index] or f"{node.name}__present_{'kv'[index]}"
            graph.tensors[present] = Tensor(present, (B, kv_heads, Skv, depth), "float32")
            new.append(Node("MoaConcat", f"{node.name}__concat_{'kv'[index]}", [past, sources[1 + index]], [present],
                            {"layouts": [Layout.row_major(shape), lay], "axis": 2}))
            sources[1 + index] = present
        k_lay, v_lay = Layout.row_major((B, kv_heads, Skv, D)), Layout.row_major((B, kv_heads, Skv, Dv))
    y = node.outputs[0]
    spec = AttentionSpec(B, H, kv_heads, Sq, Skv, D, Dv,
                         float(node.attrs.get("scale", 0.0)) or 1 / math.sqrt(D), True, MASK_NONE, 0.0,
                         q_lay, k_lay, v_lay, _heads(graph.tensors[y].shape, heads), None,
                         pattern="com.microsoft.GroupQueryAttention", absorbed=(node.name,),
                         softcap=float(node.attrs.get("softcap", 0.0)), causal_offset=past_len)
    graph.nodes[graph.nodes.index(node):graph.nodes.index(node)] = new
    return spec, sources + [""], y, node


def _rotary_nodes(graph: Graph, node: Node, sources: list[str], past_len: int, heads: int,
                  kv_heads: int) -> list[Node]:
    """RotaryEmbedding of the query and the new keys (sources[0], sources[1], replaced by the
    turned ones) over the op's cos_cache/sin_cache (max_sequence_length, R/2), at the positions
    onnxruntime gives them: past_len + s (kv_cache.py binds them to the run-time positions)."""
    cos, sin = _present(node, 7), _present(node, 8)
    batch, rows = graph.tensors[sources[0]].shape[:2]
    positions = f"{node.name}__positions"
    graph.tensors[positions] = Tensor(positions, (batch, rows), "int64",
                                      np.broadcast_to(np.arange(past_len, past_len + rows, dtype=np.int64),
                                                      (batch, rows)).copy())
    nodes = []
    for k, count in ((0, heads), (1, kv_heads)):
        turned = f"{node.name}__{'qk'[k]}_rotary"
        graph.tensors[turned] = Tensor(turned, graph.tensors[sources[k]].shape, "float32")
        nodes.append(Node("RotaryEmbedding", f"{node.name}__rotary_{'qk'[k]}", [sources[k], cos, sin, positions],
                          [turned], {"num_heads": count,
                                     "interleaved": int(node.attrs.get("rotary_interleaved", 0)),
                                     "rotary_embedding_dim": 2 * graph.tensors[cos].shape[1]}))
        sources[k] = turned
    return nodes


def packed_attention(graph: Graph, node: Node):
    """com.microsoft.Attention: input (B, S, W) times packed weights (W, Wq+Wk+Wv), plus a
    bias, then self-attention. The projection stays in the graph (MatMul, Add); Q, K and V
    are read out of its rows through access maps at column offsets 0, Wq and Wq+Wk."""
    _only_known(node, {"num_heads": None, "scale": None, "unidirectional": None, "qkv_hidden_sizes": None,
                       "mask_filter_value": None}, 5)
    if _present(node, 4):
        _refuse(node, "past (a KV cache)")
    if any(_used(graph, o) for o in node.outputs[1:]):
        _refuse(node, "the present output")
    x, weights = node.inputs[:2]
    if len(graph.tensors[x].shape) != 3:
        _refuse(node, f"input of shape {list(graph.tensors[x].shape)} (expected B x S x W)")
    B, S, _ = graph.tensors[x].shape
    width = graph.tensors[weights].shape[1]
    heads = node.attrs["num_heads"]
    sizes = list(node.attrs.get("qkv_hidden_sizes") or [width // 3] * 3)
    if sum(sizes) != width or sizes[0] != sizes[1] or sizes[0] % heads or sizes[2] % heads:
        _refuse(node, f"qkv_hidden_sizes {sizes} for weights of width {width} and {heads} heads")
    qkv = f"{node.name}__qkv"
    graph.tensors[qkv] = Tensor(qkv, (B, S, width), "float32")
    new = [Node("MatMul", f"{node.name}__projection", [x, weights], [qkv])]
    if _present(node, 2):
        biased = f"{node.name}__qkv_biased"
        graph.tensors[biased] = Tensor(biased, (B, S, width), "float32")
        new.append(Node("Add", f"{node.name}__projection_bias", [qkv, node.inputs[2]], [biased]))
        qkv = biased

    def heads_at(offset: int, size: int) -> Layout:  # (B, H, S, d) inside rows of `width` columns
        return Layout((B, heads, S, size // heads), (S * width, size // heads, width, 1), offset)

    causal = bool(node.attrs.get("unidirectional", 0))
    lengths = _key_lengths(graph, node, 3, B, causal)
    bias = _present(node, 5)
    if bias and lengths:
        _refuse(node, "attention_bias together with mask_index")
    y = node.outputs[0]
    mask_lay = broadcast_mask(graph, bias, (B, heads, S, S), node.name) if bias else None
    D, Dv = sizes[0] // heads, sizes[2] // heads
    spec = AttentionSpec(B, heads, heads, S, S, D, Dv, float(node.attrs.get("scale", 0.0)) or 1 / math.sqrt(D),
                         causal, MASK_FLOAT if bias else MASK_NONE, 0.0, heads_at(0, sizes[0]),
                         heads_at(sizes[0], sizes[1]), heads_at(sizes[0] + sizes[1], sizes[2]),
                         _heads(graph.tensors[y].shape, heads), mask_lay,
                         pattern="com.microsoft.Attention (packed QKV)", absorbed=(node.name,),
                         kv_lengths=bool(lengths), lengths_ctype="int32_t")
    graph.nodes[graph.nodes.index(node):graph.nodes.index(node)] = new
    return spec, [qkv, qkv, qkv, bias] + ([lengths] if lengths else []), y, node


RULES = {"com.microsoft.MultiHeadAttention": multi_head_attention,
         "com.microsoft.GroupQueryAttention": group_query_attention,
         "com.microsoft.Attention": packed_attention}
