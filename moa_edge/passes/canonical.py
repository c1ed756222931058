"""Canonicalisation: ops that do nothing at inference are bypassed, so patterns need not
list every place an exporter may put them (Identity, Cast or CastLike to the same type, Dropout, Pad by zero,
x AND True, x OR False, x * 1)."""
from __future__ import annotations

import numpy as np

from moa_edge.ir import Graph, Node, Tensor, attribute_text, dtypes
from moa_edge.moa import Layout

from .fold import evaluate_onnx_node
from .pack import packs_its_transpose

# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
# Pad 18 takes axes, 19 the wrap mode; 21 on add types.
ONNX_VERSIONS = {"Identity": 25, "Dropout": 22, "Pad": 25, "CastLike": 25, "Transpose": 25, "Concat": 13,
                 "Slice": 13, "Split": 18, "Expand": 13, "CenterCropPad": 18}


def _cast_to(node) -> str | None:
    """The type a Cast node makes; None for one moa-edge does not name."""
    record = dtypes.from_onnx(node.attrs.get("to"))
    return record.name if record is not None else None
from .views import trace_view


def _is_no_op(graph: Graph, node) -> bool:
    if node.op == "Identity":
        return True
    if node.op == "Dropout":  # inference (no training_mode, or a constant False), or a ratio of 0: the input
        training = graph.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.zeros(())
        ratio = graph.constant(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
        identity = (training is not None and not training.any()) or (ratio is not None and not ratio.any())
        return identity and len([o for o in node.outputs if o]) == 1
    if node.op == "Cast":
        source = graph.tensors.get(node.inputs[0])
        return source is not None and _cast_to(node) == source.dtype
    if node.op == "Pad":  # padding by nothing (the opset-24 function body pads masks to the key length)
        pads = graph.constant(node.inputs[1]) if len(node.inputs) > 1 else None
        return pads is not None and not np.any(pads)
    if node.op == "CastLike":
        source, like = graph.tensors.get(node.inputs[0]), graph.tensors.get(node.inputs[1])
        return source is not None and like is not None and source.dtype == like.dtype
    return False


# op -> the constant that leaves the other operand unchanged, exactly (x * 1 keeps -0, NaN
# and inf; x + 0 would not keep -0, so Add is not here).
_NEUTRAL = {"And": True, "Or": False, "Mul": 1}


def _neutral_operand(graph: Graph, node) -> str | None:
    """The operand a Mul by ones, And with all-True or Or with all-False passes through."""
    if node.op not in _NEUTRAL or len(node.inputs) != 2:
        return None
    for k in (0, 1):
        value, other = graph.constant(node.inputs[k]), node.inputs[1 - k]
        if (value is not None and value.size and np.all(value == _NEUTRAL[node.op])
                and graph.tensors.get(other) is not None
                and graph.tensors[other].dtype == graph.tensors[node.outputs[0]].dtype
                and len(value.shape) <= len(graph.tensors[node.outputs[0]].shape)):
            return other
    return None


def drop_neutral_operands(graph: Graph) -> int:
    """x AND True, x OR False, x * 1 become x (an Expand when the constant only widened x's
    shape, which attention then reads as a broadcast map): the attention mask of BERT
    exports is the key-padding mask ANDed with an all-True band, an Sq x Skv copy for nothing."""
    dropped = 0
    for node in list(graph.nodes):
        other = _neutral_operand(graph, node)
        if other is None:
            continue
        out = node.outputs[0]
        if graph.tensors[other].shape == graph.tensors[out].shape:
            node.op, node.inputs, node.attrs = "Identity", [other], {}
        else:
            shape = f"{node.name}__shape"
            dims = np.array(graph.tensors[out].shape, np.int64)
            graph.tensors[shape] = Tensor(shape, dims.shape, "int64", dims)
            node.op, node.inputs, node.attrs = "Expand", [other, shape], {}
        dropped += 1
    return dropped


def _fold_dropout_masks(graph: Graph) -> None:
    """An inference Dropout keeps every element: its mask output is a constant of all True."""
    for node in graph.nodes:
        mask = node.outputs[1] if node.op == "Dropout" and len(node.outputs) > 1 else ""
        if mask and graph.tensors.get(mask) is not None and _is_no_op(graph, Node("Dropout", node.name, node.inputs,
                                                                                   node.outputs[:1], node.attrs)):
            graph.tensors[mask].data = np.ones(graph.tensors[mask].shape, bool)
            node.outputs = node.outputs[:1]


def bypass_no_ops(graph: Graph) -> int:
    drop_neutral_operands(graph)
    _fold_dropout_masks(graph)
    bypassed = 0
    for node in list(graph.nodes):
        if not _is_no_op(graph, node):
            continue
        old, new = node.outputs[0], node.inputs[0]
        if old in graph.outputs:
            # A no-op that names a graph output: let the producer write that output itself,
            # or, with no producer to ask (a graph input, a constant), copy into it.
            producer = graph.producer(new)
            if producer is None or new in graph.outputs or len(graph.consumers(new)) != 1:
                if node.op != "Identity":
                    node.op, node.inputs, node.outputs, node.attrs = "Identity", [new], [old], {}
                continue
            producer.outputs = [old if name == new else name for name in producer.outputs]
        else:
            for user in graph.nodes:
                user.inputs = [new if name == old else name for name in user.inputs]
        graph.nodes.remove(node)
        bypassed += 1
    return bypassed


def narrow_softmax_precision(graph: Graph) -> int:
    """Cast(float32 -> float64) -> Softmax -> Cast(-> float32), the ONNX function body's
    softmax_precision=DOUBLE, becomes a float32 Softmax: the runtime computes in float32
    (as it does for the Attention op's softmax_precision attribute)."""
    narrowed = 0
    for softmax in [n for n in graph.nodes if n.op == "Softmax"]:
        widen = graph.producer(softmax.inputs[0])
        users = graph.consumers(softmax.outputs[0])
        if (widen is None or widen.op != "Cast" or _cast_to(widen) != "float64"
                or graph.tensors.get(widen.inputs[0]) is None or graph.tensors[widen.inputs[0]].dtype != "float32"
                or len(users) != 1 or users[0].op != "Cast" or _cast_to(users[0]) != "float32"
                or softmax.outputs[0] in graph.outputs):
            continue
        narrow = users[0]
        softmax.inputs = [widen.inputs[0]]
        softmax.outputs = list(narrow.outputs)
        graph.nodes.remove(narrow)
        narrowed += 1
    graph.remove_dead()
    return narrowed


def unfold_batched_transposes(graph: Graph) -> int:
    """Reshape(merge the leading axes) -> Transpose(axis 0 kept) -> Reshape(split them back),
    BERT's K^T through a [B*H, S, d] batch, becomes one Transpose of the unmerged tensor: the
    merge of a transposed (strided) head split is no access map, so the chain would otherwise
    cost attention detection the K operand and the graph a transposed copy per layer."""
    unfolded = 0
    for split in [n for n in graph.nodes if n.op == "Reshape"]:
        turn = graph.producer(split.inputs[0])
        merge = graph.producer(turn.inputs[0]) if turn is not None and turn.op == "Transpose" else None
        if merge is None or merge.op != "Reshape" or split.outputs[0] in graph.outputs:
            continue
        source = graph.tensors[merge.inputs[0]].shape
        merged, final = graph.tensors[merge.outputs[0]].shape, graph.tensors[split.outputs[0]].shape
        perm = list(turn.attrs.get("perm", range(len(merged))[::-1]))
        lead = len(source) - len(merged) + 1  # leading source axes folded into merged axis 0
        if (lead < 2 or perm[0] != 0 or tuple(source[lead:]) != tuple(merged[1:])
                or int(np.prod(source[:lead])) != merged[0] or tuple(final[:lead]) != tuple(source[:lead])
                or tuple(final[lead:]) != tuple(graph.tensors[turn.outputs[0]].shape[1:])):
            continue
        full = list(range(lead)) + [p + lead - 1 for p in perm[1:]]
        # Named after the Transpose it stands for, unless that one stays for another reader.
        name = turn.name if graph.consumers(turn.outputs[0]) == [split] else split.name
        graph.nodes[graph.nodes.index(split)] = Node("Transpose", name, [merge.inputs[0]], list(split.outputs),
                                                     {"perm": full})
        unfolded += 1
    graph.toposort()
    graph.remove_dead()
    return unfolded


def pad_nodes(graph: Graph, name: str, axis: int, before: int, after: int, value, out: str, stem: str) -> Node:
    """`out` = `name` padded along `axis` with `value`, as one MoaConcat: the fill parts are a
    single stored element read through a stride-0 map, whatever their size."""
    source = graph.tensors[name]
    fill = f"{stem}__fill"
    graph.tensors[fill] = Tensor(fill, (1,) * len(source.shape), source.dtype,
                                 np.full((1,) * len(source.shape), value, dtypes.dtype(source.dtype).numpy))
    parts, layouts = [], []
    for size, part in ((before, fill), (None, name), (after, fill)):
        if size == 0:
            continue
        shape = source.shape if size is None else source.shape[:axis] + (size,) + source.shape[axis + 1:]
        parts.append(part)
        layouts.append(Layout.row_major(shape) if size is None else Layout(shape, (0,) * len(shape)))
    out_shape = source.shape[:axis] + (source.shape[axis] + before + after,) + source.shape[axis + 1:]
    graph.tensors.setdefault(out, Tensor(out, out_shape, source.dtype))
    return Node("MoaConcat", stem, parts, [out], {"layouts": layouts, "axis": axis})


def _constant_pad(graph: Graph, node) -> list[Node] | None:
    """Pad(mode=constant) by constant, non-negative amounts (the opset-24 function body pads
    a short mask to the key length so) -> one MoaConcat per padded axis."""
    if node.op != "Pad" or node.attrs.get("mode", b"constant") not in ("constant", b"constant") or len(node.inputs) < 2:
        return None
    data = graph.tensors.get(node.inputs[0])
    pads = graph.constant(node.inputs[1])
    has_value, has_axes = (len(node.inputs) > k and bool(node.inputs[k]) for k in (2, 3))
    value = graph.constant(node.inputs[2]) if has_value else np.zeros(())
    axes = graph.constant(node.inputs[3]) if has_axes else None
    if data is None or data.dtype not in ("float32", "bool") or pads is None or value is None or (has_axes and axes is None):
        return None
    rank = len(data.shape)
    axes = [int(a) % rank for a in (range(rank) if axes is None else axes.reshape(-1))]
    if pads.size != 2 * len(axes):
        return None  # malformed: left as Pad, reported unsupported by name
    amounts = pads.reshape(2, len(axes))
    padded = [(axis, int(b), int(a)) for axis, b, a in zip(axes, amounts[0], amounts[1]) if b or a]
    if not padded or min(min(b, a) for _, b, a in padded) < 0:
        return None
    # One copy per padded axis, each padding the previous one's result.
    nodes, source = [], node.inputs[0]
    for k, (axis, before, after) in enumerate(padded):
        out = node.outputs[0] if k == len(padded) - 1 else f"{node.name}__padded_{axis}"
        nodes.append(pad_nodes(graph, source, axis, before, after, value.reshape(-1)[0], out, f"{node.name}__{k}"
                               if len(padded) > 1 else node.name))
        source = out
    return nodes


def _gathers(graph: Graph, node, source: str, tables: list[tuple[int, np.ndarray]], out: str) -> list[Node]:
    """`out` = `source` read through a constant index table per axis (applied in turn): one
    Gather each, or a strided copy where the picks are affine (a crop)."""
    nodes = []
    for k, (axis, table) in enumerate(tables):
        shape = list(graph.tensors[source].shape)
        shape[axis] = len(table)
        made = out if k == len(tables) - 1 else graph.fresh_name(f"{node.name}__along_{axis}")
        graph.tensors.setdefault(made, Tensor(made, tuple(shape), graph.tensors[source].dtype))
        picks = graph.fresh_name(f"{node.name}__picks_{axis}")
        graph.tensors[picks] = Tensor(picks, (len(table),), "int64", np.asarray(table, np.int64))
        gather = Node("Gather", f"{node.name}__{k}" if len(tables) > 1 else node.name, [source, picks], [made],
                      {"axis": axis})
        nodes.append(_constant_gather(graph, gather, trace_view) or gather)
        source = made
    return nodes


def _index_pad(graph: Graph, node) -> list[Node] | None:
    """Pad(mode=edge, reflect or wrap) by constant amounts: per padded axis, the index each
    output position reads (numpy's pad of the positions, the same three modes); a negative
    amount crops first."""
    mode = attribute_text(node.attrs.get("mode", "constant"))
    if node.op != "Pad" or mode not in ("edge", "reflect", "wrap") or len(node.inputs) < 2:
        return None
    data, pads = graph.tensors.get(node.inputs[0]), graph.constant(node.inputs[1])
    has_axes = len(node.inputs) > 3 and bool(node.inputs[3])
    axes = graph.constant(node.inputs[3]) if has_axes else None
    if data is None or pads is None or (has_axes and axes is None) or data.dtype not in dtypes.RUNTIME_DTYPES:
        return None
    rank = len(data.shape)
    axes = [int(a) % rank for a in (range(rank) if axes is None else axes.reshape(-1))]
    if pads.size != 2 * len(axes):
        return None
    tables = []
    for axis, before, after in zip(axes, *pads.reshape(2, len(axes)).astype(int)):
        if not before and not after:
            continue
        kept = np.arange(data.shape[axis])[max(-before, 0):data.shape[axis] - max(-after, 0)]
        if kept.size == 0 or (mode == "reflect" and kept.size == 1 and max(before, after) > 0):
            return None  # nothing to repeat from: left as Pad, refused by name
        tables.append((axis, np.pad(kept, (max(before, 0), max(after, 0)), mode=mode)))
    return _gathers(graph, node, node.inputs[0], tables, node.outputs[0]) if tables else None


def _center_crop_pad(graph: Graph, node) -> list[Node] | None:
    """CenterCropPad to a constant shape: each larger axis cut to its centre (a strided copy),
    each smaller one padded with zeros around it, the odd element after (as the spec's reference)."""
    if node.op != "CenterCropPad" or len(node.inputs) < 2:
        return None
    data, shape = graph.tensors.get(node.inputs[0]), graph.constant(node.inputs[1])
    if data is None or shape is None or data.dtype not in dtypes.RUNTIME_DTYPES:
        return None
    rank = len(data.shape)
    axes = [int(a) % rank for a in node.attrs.get("axes", range(rank))]
    wanted = [int(n) for n in shape.reshape(-1)]
    if len(wanted) != len(axes):
        return None
    crops = [(a, np.arange(n) + (data.shape[a] - n) // 2) for a, n in zip(axes, wanted) if n < data.shape[a]]
    padded = [(a, (n - data.shape[a]) // 2, n - data.shape[a] - (n - data.shape[a]) // 2)
              for a, n in zip(axes, wanted) if n > data.shape[a]]
    source, nodes = node.inputs[0], []
    if crops:
        cropped = node.outputs[0] if not padded else graph.fresh_name(f"{node.name}__cropped")
        nodes, source = _gathers(graph, node, source, crops, cropped), cropped
    for k, (axis, before, after) in enumerate(padded):
        out = node.outputs[0] if k == len(padded) - 1 else graph.fresh_name(f"{node.name}__padded_{axis}")
        nodes.append(pad_nodes(graph, source, axis, before, after, 0, out, graph.fresh_name(
                                                                                       f"{node.name}__pad_{axis}")))
        source = out
    return nodes or None


def _reversing_slice(graph: Graph, node) -> list[Node] | None:
    """A Slice with a negative step (constant parameters): the positions each axis keeps,
    Python's slicing giving ONNX's clamping, as an index table per sliced axis."""
    names = (list(node.inputs[1:5]) + [""] * 4)[:4]
    values = [graph.constant(n) if n else None for n in names]
    if values[0] is None or values[1] is None or any(n and v is None for n, v in zip(names[2:], values[2:])):
        return None
    shape = graph.tensors[node.inputs[0]].shape
    starts, ends = values[0].reshape(-1), values[1].reshape(-1)
    axes = values[2].reshape(-1) if values[2] is not None else range(len(starts))
    steps = values[3].reshape(-1) if values[3] is not None else np.ones(len(starts), np.int64)
    if not np.any(steps < 0) or np.any(steps == 0):
        return None
    tables = [(int(a) % len(shape), np.arange(shape[int(a) % len(shape)])[slice(int(b), int(e), int(st))])
              for a, b, e, st in zip(axes, starts, ends, steps)]
    return _gathers(graph, node, node.inputs[0], tables, node.outputs[0])


def _copy_through_view(graph: Graph, node, out: str) -> Node | None:
    """A layout op left after the rewrites (a head merge the kernel could not write through, a
    Split, a broadcast): one copy of its input read through the op's access map."""
    if out not in graph.tensors:
        return None
    rank = len(graph.tensors[node.inputs[0]].shape)
    if node.op == "Transpose" and len(node.attrs.get("perm", range(rank))) != rank:
        return None  # a shape inference could not give: leave the op, to be reported
    source, layout = trace_view(graph, out, [])
    if source == out:
        return None
    if (len(node.outputs) == 1 and layout.is_row_major() and layout.offset == 0 and graph.constant(source) is None
            and graph.tensors[source].size == graph.tensors[out].size):
        # The views cancel (a transpose undone by the next, as after a patch embedding's GEMM): the
        # source's elements in their stored order, a Reshape of it (no copy) instead of a copy.
        shape = f"{node.name}__shape"
        while shape in graph.tensors:
            shape += "_"
        graph.tensors[shape] = Tensor(shape, (len(layout.shape),), "int64", np.array(layout.shape, np.int64))
        return Node("Reshape", node.name, [source, shape], [out])
    return Node("MoaConcat", f"{node.name}__{out}" if len(node.outputs) > 1 else node.name, [source], [out],
                {"layouts": [layout], "axis": 0})


def _constant_gather(graph: Graph, node, trace_view) -> Node | None:
    """A gather by constant indices (the batch/key index grids transformers' mask code feeds
    GatherND) reads its data through a strided map when the picked offsets are affine: then
    it is a copy through that map. The op's own semantics pick the offsets: it is run on the
    storage positions of its data."""
    indices, data = graph.constant(node.inputs[1]), graph.tensors[node.inputs[0]]
    if indices is None or graph.constant(node.inputs[0]) is not None or data.dtype not in dtypes.RUNTIME_DTYPES:
        return None
    positions = np.arange(data.size, dtype=np.int64).reshape(data.shape)
    picked = evaluate_onnx_node(node, [positions, indices], graph.opsets.get("", graph.opsets.get("ai.onnx", 18)))[0]
    source, view = trace_view(graph, node.inputs[0], [])
    layout = Layout.fit(view.offsets().reshape(-1)[picked])
    if layout is None:
        return None
    return Node("MoaConcat", node.name, [source], list(node.outputs), {"layouts": [layout], "axis": 0})


def lower_copies(graph: Graph) -> None:
    """ONNX Concat, constant Pad, the Identity ops still left and the layout ops no kernel
    absorbed (Transpose, Expand, Slice, Split) become MoaConcat: a copy through access maps; one whose
    map reads its source whole and in stored order (layout ops that cancel) becomes a Reshape of it, no copy.
    Pad's edge, reflect and wrap modes, CenterCropPad's crops and a Slice with a negative step read
    constant index tables (Gather), or a strided map where the picks are affine."""
    lowered = []  # the parts are read in place through their layout ops (trace_view)
    for node in graph.nodes:
        lowered += _lowered_copy(graph, node, trace_view) or [node]
    graph.nodes = lowered
    graph.remove_dead()


def _lowered_copy(graph: Graph, node, trace_view) -> list[Node] | None:
    if any(name and graph.tensors.get(name) is None for name in node.inputs[:1]):
        return None
    pad = _constant_pad(graph, node) or _index_pad(graph, node) or _center_crop_pad(graph, node)
    if pad is not None:
        return pad
    if node.op == "Slice" and graph.tensors[node.inputs[0]].dtype in dtypes.RUNTIME_DTYPES:
        reversing = _reversing_slice(graph, node)
        if reversing is not None:
            return reversing
    if node.op in ("Gather", "GatherND", "GatherElements"):
        gathered = _constant_gather(graph, node, trace_view)
        return [gathered] if gathered is not None else None
    if node.op == "Transpose" and packs_its_transpose(graph, node):
        return None  # pack_weights packs the MatMul from the constant itself (no run-time copy)
    if node.op in ("Transpose", "Expand", "Slice", "Split") and graph.tensors[node.inputs[0]].dtype in dtypes.RUNTIME_DTYPES:
        copies = [_copy_through_view(graph, node, out) for out in node.outputs]
        return copies if all(copies) else None
    if node.op not in ("Concat", "Identity") or any(graph.tensors.get(i) is None for i in node.inputs):
        return None
    if (len({graph.tensors[i].dtype for i in node.inputs}) != 1
            or graph.tensors[node.inputs[0]].dtype not in dtypes.RUNTIME_DTYPES):
        return None
    rank = len(graph.tensors[node.inputs[0]].shape)
    axis = node.attrs.get("axis", 0) % rank if node.op == "Concat" else 0
    # empty parts add nothing (all empty: the first stays, for the output's shape)
    traced = ([trace_view(graph, i, []) for i in node.inputs if graph.tensors[i].size]
              or [trace_view(graph, node.inputs[0], [])])
    return [Node("MoaConcat", node.name, [src for src, _ in traced], list(node.outputs),
                 {"layouts": [lay for _, lay in traced], "axis": axis})]


def copy_constant_outputs(graph: Graph) -> None:
    """A graph output that folding made a constant (Shape, Size, a Constant, Dropout's mask) is
    copied into the caller's buffer by a MoaConcat of the constant, kept under a name of its own."""
    for name in graph.outputs:
        tensor = graph.tensors.get(name)
        if graph.producer(name) is not None or tensor is None or not tensor.is_constant:
            continue
        if tensor.dtype not in dtypes.RUNTIME_DTYPES:
            continue  # the check after lowering names the type
        kept = graph.fresh_name(f"{name}_constant")
        graph.tensors[kept] = Tensor(kept, tensor.shape, tensor.dtype, tensor.data)
        graph.tensors[name] = Tensor(name, tensor.shape, tensor.dtype)
        graph.nodes += _lowered_copy(graph, Node("Identity", f"{name}_copy", [kept], [name]), trace_view)

