"""The feed-forward block run in blocks of the hidden layer, so that layer never exists whole.

Y = act(X W1 + b1) W2 + b2 is row-local: row r of Y needs row r of X and nothing else; and
column f of the hidden layer needs column f of W1 only, and adds to Y through row f of W2
alone. A MoaGemm, then element-wise ops whose other operands are constants broadcast along
rows, then a MoaGemm reading their result, become one MoaMlp node: the generated code runs
the members on a block of hidden columns (and, for many rows, of rows) at a time, at most
BLOCK floats in scratch (not M x F, where F is four times the model width in BERT, GPT-2
and MiniLM), each block's product adding its slice of the sum to Y (ops/mlp.py). Dimension
lifting applied to the token and hidden axes, as the attention rewrite lifts the query axis.
"""
from __future__ import annotations

from dataclasses import replace
import math

from moa_edge.ir import Graph, Node
from moa_edge.ops import elementwise, views

# A block of the hidden layer: 512 KiB of float32, so it stays in L2 between the two products
# (ViT-B/16's feed-forward alone, 197 rows in hidden blocks of 512 columns: 6-10% faster than in
# blocks of 52 whole rows and 5-6% faster than whole, AVX2 and AVX-512; ops/mlp.py says how blocks
# are cut).
BLOCK = 128 * 1024


def _row_gemm(graph: Graph, node: Node | None) -> bool:
    """A MoaGemm whose rows are independent: A not transposed, C at most one row."""
    if node is None or node.op != "MoaGemm" or node.attrs["trans_a"]:
        return False
    if len(node.inputs) > 2 and node.inputs[2]:
        return math.prod(graph.tensors[node.inputs[2]].shape[:-1]) == 1
    return True


def _row_broadcast(graph: Graph, name: str, width: int) -> bool:
    """A constant that every row reads alike: a scalar, or one row [width]."""
    t = graph.tensors[name]
    return t.is_constant and math.prod(t.shape[:-1]) == 1 and (not t.shape or t.shape[-1] in (1, width))


def _rows_by_width(shape) -> tuple[int, int]:
    return math.prod(shape[:-1]), shape[-1]


def _chain(graph: Graph, first: Node, last: Node) -> list[Node] | None:
    """The element-wise members between two MoaGemms (in schedule order), or None when
    something outside the block reads an intermediate or a member is not row-local. A view
    that keeps the rows (GPT-2's Conv1D reshapes [M, F] to [1, M, F] and back) is a member
    too; it computes nothing."""
    hidden = first.outputs[0]
    shape = graph.tensors[hidden].shape
    members, names = [], {hidden}
    stack = [last.inputs[0]]
    while stack:
        name = stack.pop()
        if name in names:
            continue
        node = graph.producer(name)
        if node is None or node.op not in elementwise.OPS + views.OPS or len(node.outputs) != 1:
            return None
        t = graph.tensors[name]
        if _rows_by_width(t.shape) != _rows_by_width(shape) or t.dtype != "float32":
            return None
        members.append(node)
        names.add(name)
        operands = node.inputs[:1] if node.op in views.OPS else node.inputs  # (not a Reshape's shape)
        for operand in operands:
            if operand and operand not in names and not _row_broadcast(graph, operand, shape[-1]):
                stack.append(operand)
    inside = {id(n) for n in members} | {id(last)}
    for name in names:
        if name in graph.outputs or any(id(r) not in inside for r in graph.consumers(name)):
            return None
    order = {id(n): k for k, n in enumerate(graph.nodes)}
    return sorted(members, key=lambda n: order[id(n)])


def tile_mlp(graph: Graph, block: int = BLOCK) -> int:
    """Rewrite every MoaGemm -> element-wise -> MoaGemm block whose hidden layer is more than
    `block` floats; returns how many."""
    count = 0
    for last in list(graph.nodes):
        if not any(n is last for n in graph.nodes) or not _row_gemm(graph, last):
            continue  # (or already inside a block)
        first = _first_gemm(graph, last)
        if not _row_gemm(graph, first) or first.outputs[0] in graph.outputs:
            continue
        members = _chain(graph, first, last)
        if members is None:
            continue
        x, y = first.inputs[0], last.outputs[0]
        if math.prod(graph.tensors[first.outputs[0]].shape) <= block:
            continue  # one block: nothing to save
        # a view's data alone: the block sees its rows as they are
        body_nodes = [first, *(replace(m, inputs=m.inputs[:1]) if m.op in views.OPS else m for m in members), last]
        made = {o for n in body_nodes for o in n.outputs}
        constants = list(dict.fromkeys(i for n in body_nodes for i in n.inputs if i and i not in made and i != x))
        tensors = {n: graph.tensors[n] for n in [x, *constants, *made]}
        body = Graph(f"{first.name}_mlp", [x, *constants], [y], body_nodes, tensors, dict(graph.opsets))
        fused = Node("MoaMlp", first.name, [x, *constants], [y], {"body": body, "block": block})
        position = graph.nodes.index(last)
        graph.nodes[position] = fused
        graph.nodes = [n for n in graph.nodes if all(n is not m for m in [first, *members, last])]
        count += 1
    return count


def _first_gemm(graph: Graph, last: Node) -> Node | None:
    """The MoaGemm whose output the element-wise chain into `last` starts from."""
    seen, stack = set(), [last.inputs[0]]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = graph.producer(name)
        if node is None:
            continue
        if node.op == "MoaGemm":
            return node
        if node.op in views.OPS:
            stack.append(node.inputs[0])
        elif node.op in elementwise.OPS:
            stack.extend(i for i in node.inputs if i and not graph.tensors[i].is_constant)
    return None
