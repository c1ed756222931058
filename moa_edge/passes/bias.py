"""Attention bias terms (masks added to the scores) classified as what the kernel does
itself (a causal triangle, per-batch key lengths) and what it reads (one mask)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from moa_edge.ir import DTYPES, Graph, Node, Tensor
from moa_edge.ops.attention import MASK_BOOL, MASK_FLOAT, MASK_NONE

from .fold import cone, subgraph_function
from .match import MASKED, produced_by, scalar


@dataclass
class Bias:
    """What a sum of bias terms asks of the kernel."""
    mask_kind: str = MASK_NONE
    mask_fill: float = 0.0
    mask: str = ""                 # the one mask tensor the kernel reads
    causal: bool = False
    causal_offset: int = 0
    lengths: str = ""              # per-batch key lengths the kernel applies itself
    new_nodes: list = field(default_factory=list)  # ops computing the mask, when several were summed


def causal_offset_of(bias: np.ndarray, q_len: int, kv_len: int) -> int | None:
    """o when a constant 0 / masked bias is exactly the causal triangle k > i + o (o = 0:
    top-left; o = past length: bottom-right after a cache), else None."""
    if bias.ndim < 2 or bias.shape[-2:] != (q_len, kv_len) or bias.size != q_len * kv_len:
        return None
    masked = bias.reshape(q_len, kv_len).astype(np.float64) <= MASKED
    if not np.all(bias.reshape(q_len, kv_len)[~masked] == 0):
        return None
    visible = (~masked).sum(axis=1)  # keys each query row sees
    offset = int(visible[0]) - 1
    above = np.triu(np.ones((q_len, kv_len), dtype=bool), 1 + offset)
    return offset if np.array_equal(masked, above) and offset >= 0 else None


def _split_sums(graph: Graph, terms, absorbed: list[str]):
    """A bias that is itself an Add of biases (mask + causal triangle) counts as its parts."""
    out = []
    for term in terms:
        node = produced_by(graph, term[1], "Add") if term[0] == "add" else None
        if node is not None and all(graph.tensors[i].dtype == "float32" for i in node.inputs):
            absorbed.append(node.name)
            out += _split_sums(graph, [("add", i) for i in node.inputs], absorbed)
        else:
            out.append(term)
    return out


def classify_bias(graph: Graph, terms, batch: int, q_len: int, kv_len: int, absorbed: list[str],
                  exact_scores: bool = False) -> Bias | None:
    """Bias terms -> Bias, or None when a term is not understood. A term proved to be exactly
    a causal triangle becomes is_causal; terms computed from a per-batch length vector become
    kernel key lengths (and their causal diagonal); one other term is the mask; several are
    summed by a new Add (bool terms first turned into their 0 / fill bias).

    A causal triangle drawn with a finite minimum (finfo.min, as exporters do) is is_causal
    only when nothing else can hide a row's remaining keys and the biased scores are not an
    output: otherwise -inf would change fully hidden rows and the scores the graph sees."""
    causal, offset, masks, finite_causal = False, 0, [], []
    terms = _split_sums(graph, terms, absorbed)
    lengths = _length_bias(graph, terms, batch, q_len, kv_len, absorbed)
    if lengths is not None:
        length_terms, source, length_offset = lengths
        terms = [t for t in terms if t not in length_terms]
    for term in terms:
        if term[0] == "keep":
            _, cond, fill = term
            keep = graph.constant(cond)
            found = None if keep is None else causal_offset_of(np.where(keep, 0.0, -np.inf), q_len, kv_len)
            if found is None:
                masks.append(("bool", cond, fill))
            elif math.isinf(fill):
                causal, offset = True, found
            else:
                finite_causal.append((("bool", cond, fill), found))
            continue
        name = term[1]
        where = produced_by(graph, name, "Where")
        const = graph.constant(name)
        if const is not None and not np.any(const):
            continue  # an all-zero bias (ViT exports one): nothing to add
        found = None if const is None else causal_offset_of(const, q_len, kv_len)
        if found is not None and np.all(np.isinf(const[const != 0])):
            causal, offset = True, found
        elif found is not None:
            finite_causal.append((("float", name, 0.0), found))
        elif (where is not None and graph.tensors[where.inputs[0]].dtype == "bool"
              and scalar(graph, where.inputs[1]) == 0.0 and scalar(graph, where.inputs[2]) is not None
              and scalar(graph, where.inputs[2]) <= MASKED):  # shared by every layer: stays until dead
            masks.append(("bool", where.inputs[0], scalar(graph, where.inputs[2])))
            absorbed.append(where.name)
        elif graph.tensors[name].dtype == "float32":
            masks.append(("float", name, 0.0))
        else:
            return None
    for mask, found in finite_causal:
        if masks or exact_scores or lengths is not None:
            masks.append(mask)
        else:
            causal, offset = True, found
    if lengths is not None:
        if causal:
            return None  # a fixed triangle and a length-relative one: the kernel has one diagonal
        causal, offset = length_offset is not None, length_offset or 0
    bias = Bias(causal=causal, causal_offset=offset, lengths=lengths[1] if lengths else "")
    if not masks:
        return bias
    if len(masks) == 1:
        kind, bias.mask, bias.mask_fill = masks[0]
        bias.mask_kind = MASK_BOOL if kind == "bool" else MASK_FLOAT
        return bias
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
    bias.mask_kind, bias.mask, bias.new_nodes = MASK_FLOAT, total, nodes
    return bias


# Ops that combine their inputs element by element (Unsqueeze only adds unit axes): with
# only these between a per-batch vector and the bias, bias[b] depends on vector[b] alone.
_ELEMENTWISE = {"Add", "Sub", "Mul", "Neg", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "Not",
                "And", "Or", "Where", "Cast", "CastLike", "Unsqueeze", "Identity", "Max", "Min"}


def _length_bias(graph: Graph, terms, batch: int, q_len: int, kv_len: int, absorbed: list[str]):
    """Bias terms built at run time from one integer vector L of per-batch key counts (the
    ONNX function body of nonpad_kv_seqlen): (the terms, L, causal offset c or None) when
    their sum hides exactly the keys k >= L[b], and with c also those k > i + L[b] + c.

    Proved by running the terms' subgraph for every L[b] in 0..kv_len (valid ONNX lengths):
    the subgraph is element-wise, so each batch row sees its own length only; vectors
    with different lengths per batch check that the batch axes line up."""
    found, source, nodes = [], None, []
    for term in terms:
        if term[0] != "add" or graph.constant(term[1]) is not None:
            continue
        term_nodes, leaves = cone(graph, term[1])
        leaf = next(iter(leaves)) if len(leaves) == 1 else None
        if (leaf is None or source not in (None, leaf) or graph.tensors[leaf].dtype not in ("int64", "int32")
                or graph.tensors[leaf].shape != (batch,) or any(n.op not in _ELEMENTWISE for n in term_nodes)):
            continue
        found.append(term)
        source = leaf
        nodes += [n for n in term_nodes if n not in nodes]
    if not found:
        return None
    run = subgraph_function(graph, [n for n in graph.nodes if n in nodes], [source], [t[1] for t in found])
    samples = [np.full(batch, v) for v in range(kv_len + 1)]
    if batch > 1:
        alternate = np.arange(batch) % 2 * kv_len
        rng = np.random.default_rng(0)
        samples += [alternate, kv_len - alternate] + [rng.integers(0, kv_len + 1, batch) for _ in range(4)]
    hidden = []
    for lengths in samples:
        total = sum(np.asarray(v, np.float64) for v in run(lengths.astype(DTYPES[graph.tensors[source].dtype][0])))
        if total.ndim != 4 or total.shape[0] != batch or total.shape[2:] not in ((1, kv_len), (q_len, kv_len)):
            return None
        total = np.broadcast_to(total, (batch, total.shape[1], q_len, kv_len))
        if not np.all((total == 0) | np.isneginf(total)):
            return None  # finite minimums change fully hidden rows: leave the terms as a mask
        hidden.append(np.isneginf(total))
    rows, keys = np.arange(q_len)[:, None], np.arange(kv_len)[None, :]

    def hides(lengths, offset):
        L = lengths.reshape(-1, 1, 1, 1)
        past_diagonal = keys > rows + L + offset if offset is not None else False
        return (keys >= L) | past_diagonal

    # Candidate diagonals: read off any row that sees some but not all of its keys.
    candidates = {None, -(q_len + kv_len)}
    for lengths, mask in zip(samples, hidden):
        seen = (~mask[:, 0]).sum(axis=-1)  # (batch, rows)
        for b, i in zip(*np.nonzero((seen > 0) & (seen < lengths[:, None]))):
            candidates.add(int(seen[b, i]) - 1 - int(i) - int(lengths[b]))
    for offset in sorted(candidates, key=lambda c: (c is not None, c or 0)):
        if all(np.array_equal(mask, np.broadcast_to(hides(lengths, offset), mask.shape))
               for lengths, mask in zip(samples, hidden)):
            absorbed.extend(n.name for n in nodes)
            return found, source, offset
    return None
