"""Element-wise fusion: a tree of element-wise nodes becomes one MoaElementwise node that
computes the whole expression per element in one loop, so its intermediates never exist.

The rule, over producer edges: a producer joins the group of the node it feeds when
  - it is element-wise (ops/elementwise.py) with one output,
  - its output has the group output's shape (one broadcast to a larger shape would be
    recomputed per element: it stays a node of its own),
  - its output is no graph output, and every node that reads it is in the group.
A group is grown from its last node (the root, whose output is the group's) until no
producer qualifies. The members keep their ops and attributes in a small body Graph, which
the emitter turns into one statement per member and the reference executes op by op.
"""
from __future__ import annotations

from collections import defaultdict

from moa_edge.ir import Graph, Node, dtypes
from moa_edge.ops import elementwise

MAX_VALUES = 16  # named values in one loop body: its operand loads and members (d0..d15, names no tensor takes)


def _fusable(graph: Graph, node: Node) -> bool:
    if node.op not in elementwise.OPS or node.op == "MoaElementwise" or len(node.outputs) != 1:
        return False
    t = graph.tensors.get(node.outputs[0])
    return t is not None and (t.dtype in dtypes.HELD_DTYPES or node.op == "MoaQuantize")  # int8 for attention


def _loads(graph: Graph, members: list[Node]) -> list[str]:
    """The tensors a group reads from memory: operands no member makes, less scalar literals."""
    made = {m.outputs[0] for m in members}
    names = dict.fromkeys(n for m in members for n in m.inputs if n and n not in made)
    return [n for n in names if elementwise.literal(graph.tensors[n]) is None]


def _group(graph: Graph, root: Node, producer: dict, readers: dict, taken: set) -> list[Node]:
    shape = graph.tensors[root.outputs[0]].shape
    members, ids = [root], {id(root)}
    grown = True
    while grown:
        grown = False
        for node in list(members):
            for name in node.inputs:
                p = producer.get(name)
                if (p is None or id(p) in ids or id(p) in taken or not _fusable(graph, p)
                        or graph.tensors[name].shape != shape or name in graph.outputs
                        or any(id(r) not in ids for r in readers[name])
                        or len(members) + 1 + len(_loads(graph, members + [p])) > MAX_VALUES):
                    continue
                members.append(p)
                ids.add(id(p))
                grown = True
    return members


def fuse_elementwise(graph: Graph) -> int:
    """Replace every group of two or more element-wise nodes by one MoaElementwise node; returns how many."""
    producer = {o: n for n in graph.nodes for o in n.outputs if o}
    readers = defaultdict(list)
    for node in graph.nodes:
        for name in dict.fromkeys(node.inputs):
            if name:
                readers[name].append(node)
    order = {id(n): k for k, n in enumerate(graph.nodes)}
    taken: set[int] = set()
    replaced: dict[int, Node] = {}  # id(root) -> the fused node taking its place
    for root in reversed(graph.nodes):
        if id(root) in taken or not _fusable(graph, root):
            continue
        members = sorted(_group(graph, root, producer, readers, taken), key=lambda n: order[id(n)])
        if len(members) < 2:
            continue
        taken.update(id(m) for m in members)
        made = {m.outputs[0] for m in members}
        operands = list(dict.fromkeys(n for m in members for n in m.inputs if n and n not in made))
        used = dict.fromkeys(operands + [o for m in members for o in m.outputs])
        body = Graph(root.name, operands, list(root.outputs), members, {n: graph.tensors[n] for n in used},
                     dict(graph.opsets))
        replaced[id(root)] = Node("MoaElementwise", root.name, _loads(graph, members), list(root.outputs),
                                  {"body": body})
    graph.nodes = [replaced.get(id(n), n) for n in graph.nodes if id(n) not in taken or id(n) in replaced]
    return len(replaced)
