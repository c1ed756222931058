"""Attention bias terms (masks added to the scores) classified as what the kernel does
itself (a causal triangle, per-batch key lengths) and what it reads (one mask)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from moa_edge.ir import Graph, Node, Tensor, dtypes
from moa_edge.moa.mask import MASK_BOOL, MASK_FLOAT, MASK_NONE

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
    window_start: int | None = None  # keys k < i + window_start hidden (a sliding window)
    lengths: str = ""              # per-batch key lengths the kernel applies itself
    new_nodes: list = field(default_factory=list)  # ops computing the mask, when several were summed


Band = tuple  # (c, s): keys k > i + c and k < i + s hidden; None for a side with no bound


def band_of(bias: np.ndarray, q_len: int, kv_len: int) -> Band | None:
    """(c, s) when a constant 0 / masked bias hides exactly the keys k > i + c (a causal
    diagonal, moved by c) and k < i + s (the start of a sliding window), either bound
    possibly absent; None for any other bias, or one that hides nothing."""
    if bias.ndim < 2 or bias.shape[-2:] != (q_len, kv_len) or bias.size != q_len * kv_len:
        return None
    values = bias.reshape(q_len, kv_len).astype(np.float64)
    masked = values <= MASKED
    if not masked.any() or not np.all(values[~masked] == 0):
        return None
    upper = lower = None
    for i, row in enumerate(~masked):  # read the bounds off rows that see some keys
        seen = np.nonzero(row)[0]
        if seen.size and seen[-1] < kv_len - 1 and upper is None:
            upper = int(seen[-1]) - i
        if seen.size and seen[0] > 0 and lower is None:
            lower = int(seen[0]) - i
    return (upper, lower) if np.array_equal(_band_hides((upper, lower), q_len, kv_len), masked) else None


def _band_hides(band: Band, q_len: int, kv_len: int, lengths=0) -> np.ndarray:
    upper, lower = band
    rows, keys = np.arange(q_len)[:, None], np.arange(kv_len)[None, :]
    hidden = np.zeros((q_len, kv_len), dtype=bool) | (keys >= lengths if np.ndim(lengths) else False)
    if upper is not None:
        hidden = hidden | (keys > rows + lengths + upper)
    if lower is not None:
        hidden = hidden | (keys < rows + lengths + lower)
    return hidden


def _intersect(a: Band, b: Band) -> Band:
    """Keys visible under both bands."""
    upper = min((c for c in (a[0], b[0]) if c is not None), default=None)
    lower = max((s for s in (a[1], b[1]) if s is not None), default=None)
    return upper, lower


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
    band, masks, finite_bands = (None, None), [], []
    terms = _split_sums(graph, terms, absorbed)
    lengths = _length_bias(graph, terms, batch, q_len, kv_len, absorbed)
    if lengths is not None:
        length_terms, source, length_band = lengths
        terms = [t for t in terms if t not in length_terms]
    for term in terms:
        if term[0] == "keep":
            _, cond, fill = term
            keep = graph.constant(cond)
            found = None if keep is None else band_of(np.where(keep, 0.0, -np.inf), q_len, kv_len)
            if found is None:
                masks.append(("bool", cond, fill))
            elif math.isinf(fill):
                band = _intersect(band, found)
            else:
                finite_bands.append((("bool", cond, fill), found))
            continue
        name = term[1]
        where = produced_by(graph, name, "Where")
        const = graph.constant(name)
        if const is not None and not np.any(const):
            continue  # an all-zero bias (ViT exports one): nothing to add
        found = None if const is None else band_of(const, q_len, kv_len)
        if found is not None and np.all(np.isinf(const[const != 0])):
            band = _intersect(band, found)
        elif found is not None:
            finite_bands.append((("float", name, 0.0), found))
        elif (where is not None and graph.tensors[where.inputs[0]].dtype == "bool"
              and scalar(graph, where.inputs[1]) == 0.0 and scalar(graph, where.inputs[2]) is not None
              and scalar(graph, where.inputs[2]) <= MASKED):  # shared by every layer: stays until dead
            masks.append(("bool", where.inputs[0], scalar(graph, where.inputs[2])))
            absorbed.append(where.name)
        elif graph.tensors[name].dtype == "float32":
            masks.append(("float", name, 0.0))
        else:
            return None
    for mask, found in finite_bands:
        # finfo.min hides a key only while the row keeps another: then (and only then) it is -inf.
        combined = _intersect(band, found)
        if masks or exact_scores or lengths is not None or _band_hides(combined, q_len, kv_len).all(axis=1).any():
            masks.append(mask)
        else:
            band = combined
    if lengths is not None:
        if band != (None, None):
            return None  # fixed bands and length-relative ones: the kernel has one of each bound
        band = length_band
    causal, offset = band[0] is not None, band[0] or 0
    bias = Bias(causal=causal, causal_offset=offset, window_start=band[1], lengths=lengths[1] if lengths else "")
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
    ONNX function body of nonpad_kv_seqlen): (the terms, L, band (c, s)) when their sum hides
    exactly the keys k >= L[b], and k > i + L[b] + c or k < i + L[b] + s for the bounds present.

    Checked by running the terms' subgraph for every length 0..kv_len given to all batches
    at once (the subgraph is element-wise, so each batch row sees its own length only), and
    for a few vectors with different lengths per batch, which catch batch axes that do not
    line up: exhaustive over the lengths, sampled over their mixtures.
    """
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
        total = sum(np.asarray(v, np.float64) for v in run(lengths.astype(dtypes.dtype(graph.tensors[source].dtype).numpy)))
        if total.ndim != 4 or total.shape[0] != batch or total.shape[2:] not in ((1, kv_len), (q_len, kv_len)):
            return None
        total = np.broadcast_to(total, (batch, total.shape[1], q_len, kv_len))
        if not np.all((total == 0) | np.isneginf(total)):
            return None  # finite minimums change fully hidden rows: leave the terms as a mask
        hidden.append(np.isneginf(total))
    # Candidate bounds, read off rows that see some but not all of their keys.
    uppers, lowers = {None, -(q_len + kv_len)}, {None}
    for lengths, mask in zip(samples, hidden):
        seen = ~mask[:, 0]  # (batch, rows, keys)
        for b, i in zip(*np.nonzero(seen.any(axis=-1))):
            keys = np.nonzero(seen[b, i])[0]
            if keys[-1] < lengths[b] - 1:
                uppers.add(int(keys[-1]) - int(i) - int(lengths[b]))
            if keys[0] > 0:
                lowers.add(int(keys[0]) - int(i) - int(lengths[b]))
    first = lambda c: (c is not None, c or 0)  # noqa: E731 (no bound first)
    for band in ((c, s) for c in sorted(uppers, key=first) for s in sorted(lowers, key=first)):
        if all(np.array_equal(mask, np.broadcast_to(_band_hides(band, q_len, kv_len, lengths.reshape(-1, 1, 1, 1)),
                                                    mask.shape))
               for lengths, mask in zip(samples, hidden)):
            absorbed.extend(n.name for n in nodes)
            return found, source, band
    return None
