"""Layout ops seen as index maps: what a kernel operand really reads, and where an output
is really written, so that head splits, transposes and repeat_kv cost no copy."""
from __future__ import annotations

import math

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph
from moa_edge.moa import Layout

VIEW_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")


def check_views(graph: Graph, source: str) -> None:
    """A view sees the same elements with another shape: one whose output holds more or fewer
    elements than its input (a Reshape of [1, 4, 8] to [5, 7]) would make the generated C read
    past the input's buffer, so it is refused, naming the node."""
    for node in graph.nodes:
        data, out = (graph.tensors.get(name) for name in (node.inputs[0], node.outputs[0]))
        if node.op not in VIEW_OPS or data is None or out is None:
            continue
        if math.prod(data.shape) != math.prod(out.shape):
            raise MoaEdgeError(f"{source}: {node.op} node {node.name!r} turns {node.inputs[0]!r} of shape "
                               f"{list(data.shape)} ({math.prod(data.shape)} elements) into shape {list(out.shape)} "
                               f"({math.prod(out.shape)} elements); a reshape must keep the element count")


def trace_view(graph: Graph, name: str, absorbed: list[str]) -> tuple[str, Layout]:
    """Follow layout ops back to stored data: (source tensor, access map). Transpose,
    view-compatible Reshape, Unsqueeze/Squeeze, Identity, Slice and Split are index maps; so is
    Unsqueeze -> Expand -> Reshape merging the expanded axis into the one before it,
    which is repeat_kv (the merged index h reads h // group)."""
    node = graph.producer(name)
    shape = graph.tensors[name].shape
    if node is None:
        return name, Layout.row_major(shape)
    inner = list(absorbed)
    view = None
    if node.op == "Transpose":
        source, layout = trace_view(graph, node.inputs[0], inner)
        view = layout.transpose(node.attrs.get("perm", list(range(len(shape)))[::-1]))
    elif node.op in ("Reshape", "Unsqueeze", "Squeeze", "Identity"):
        source, layout = trace_view(graph, node.inputs[0], inner)
        view = _repeat_kv_merge(layout, shape) if node.op == "Reshape" else None
        view = view or layout.reshape(shape)
    elif node.op == "Expand" and graph.constant(node.inputs[1]) is not None:
        source, layout = trace_view(graph, node.inputs[0], inner)
        if len(layout.shape) < len(shape):  # numpy broadcasting: leading unit axes first
            layout = layout.reshape((1,) * (len(shape) - len(layout.shape)) + layout.shape)
        if layout is not None and len(layout.shape) == len(shape):
            view = layout.broadcast_to(shape)
    elif node.op in ("Slice", "Split"):
        cut = slice_of(graph, node, name)
        if cut is not None:
            source, layout = trace_view(graph, node.inputs[0], inner)
            for axis, start, stop, step in cut:
                layout = layout.slice(axis, start, stop, step) if layout is not None else None
            view = layout
    if view is None:
        return name, Layout.row_major(shape)
    absorbed[:] = inner + [node.name]
    return source, view


def slice_of(graph: Graph, node, output: str) -> list[tuple[int, int, int, int]] | None:
    """Slice (constant starts/ends/axes, positive steps) and Split as (axis, start, stop, step)
    cuts of the input giving `output`; None for anything else."""
    shape = graph.tensors[node.inputs[0]].shape
    rank = len(shape)
    if node.op == "Split":
        axis = node.attrs.get("axis", 0) % rank
        count = len(node.outputs)
        sizes = graph.constant(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
        if sizes is None and len(node.inputs) > 1 and node.inputs[1]:
            return None
        if sizes is None:
            sizes = [-(-shape[axis] // count)] * count
            sizes[-1] = shape[axis] - sum(sizes[:-1])
        k = node.outputs.index(output)
        start = int(sum(int(n) for n in list(sizes)[:k]))
        return [(axis, start, start + int(list(sizes)[k]), 1)]
    names = (list(node.inputs[1:5]) + [""] * 4)[:4]
    values = [graph.constant(n) if n else None for n in names]
    starts, ends = values[0], values[1]
    if starts is None or ends is None or any(n and v is None for n, v in zip(names[2:], values[2:])):
        return None
    axes = values[2] if values[2] is not None else range(len(starts))
    steps = values[3] if values[3] is not None else [1] * len(starts)
    cuts = []
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step <= 0:
            return None
        extent = shape[int(axis) % rank]
        cuts.append((int(axis) % rank, max(min(int(start), extent), -extent - 1), max(min(int(end), extent), -extent - 1),
                     int(step)))
    return cuts


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


def kv_heads_of(layout: Layout) -> tuple[Layout, int]:
    """A (B, Hq, S, d) map whose head axis divides by G, as (B, Hq/G, S, d) and G."""
    group = layout.axis_divisors()[1]
    if group == 1:
        return layout, 1
    divisors = layout.axis_divisors()
    plain = Layout((layout.shape[0], layout.shape[1] // group) + layout.shape[2:], layout.strides, layout.offset,
                   (divisors[0], 1) + divisors[2:])
    return plain, group


def as_4d(layout: Layout) -> Layout | None:
    """Rank-3 operands (heads folded into the batch, as nn.MultiheadAttention does) gain a batch of 1."""
    if len(layout.shape) == 4:
        return layout
    if len(layout.shape) == 3:
        return Layout((1,) + layout.shape, (0,) + layout.strides, layout.offset,
                      None if layout.divisors is None else (1,) + layout.divisors)
    return None


def trace_output_view(graph: Graph, name: str, absorbed: list[str]) -> tuple[str, Layout]:
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


def broadcast_mask(graph: Graph, name: str, full, where: str) -> Layout:
    shape = graph.tensors[name].shape
    if len(shape) > 4 or any(m not in (1, n) for m, n in zip(shape[::-1], full[::-1])):
        raise MoaEdgeError(f"node {where}: mask {name!r} of shape {list(shape)} does not broadcast "
                           f"to the scores' shape {list(full)}")
    return Layout.row_major(shape).broadcast_to(full)


def traced_mask(graph: Graph, name: str, full, where: str) -> tuple[str, Layout]:
    """The mask as stored and its broadcast map to the scores' shape, through the views that
    made it (an Expand of a key-padding mask to Sq x Skv is a stride 0, not a copy). The
    view nodes stay for any other reader; unread, they are dropped as dead code."""
    source, layout = trace_view(graph, name, [])
    if source != name and len(layout.shape) <= len(full) and all(
            m in (1, n) for m, n in zip(layout.shape[::-1], full[::-1])):
        return source, layout.broadcast_to(full)
    return name, broadcast_mask(graph, name, full, where)
