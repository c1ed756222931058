"""The feed-forward block run in row blocks, so its wide hidden layer never exists whole.

Y = act(X W1 + b1) W2 + b2 is row-local: row r of Y needs row r of X and nothing else.
A MoaGemm, then element-wise ops whose other operands are constants broadcast along rows,
then a MoaGemm reading their result, become one MoaMlp node: the generated code runs the
members on ROWS rows at a time with the hidden rows in scratch (ROWS x F floats, not
M x F, where F is four times the model width in BERT, GPT-2 and MiniLM). Dimension lifting
applied to the token axis, as the attention rewrite applies it to the query axis.
"""
from __future__ import annotations

import math

from moa_edge.ir import Graph, Node
from moa_edge.ops import elementwise

ROWS = 60  # a block's height: at most ROWS + ROWS / 8 rows, about equal blocks (ops/mlp.py _block_rows)


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


def _chain(graph: Graph, first: Node, last: Node) -> list[Node] | None:
    """The element-wise members between two MoaGemms (in schedule order), or None when
    something outside the block reads an intermediate or a member is not row-local."""
    hidden = first.outputs[0]
    shape = graph.tensors[hidden].shape
    members, names = [], {hidden}
    stack = [last.inputs[0]]
    while stack:
        name = stack.pop()
        if name in names:
            continue
        node = graph.producer(name)
        if node is None or node.op not in elementwise.OPS or len(node.outputs) != 1:
            return None
        if graph.tensors[name].shape != shape or graph.tensors[name].dtype != "float32":
            return None
        members.append(node)
        names.add(name)
        for operand in node.inputs:
            if operand and operand not in names and not _row_broadcast(graph, operand, shape[-1]):
                stack.append(operand)
    inside = {id(n) for n in members} | {id(last)}
    for name in names:
        if name in graph.outputs or any(id(r) not in inside for r in graph.consumers(name)):
            return None
    order = {id(n): k for k, n in enumerate(graph.nodes)}
    return sorted(members, key=lambda n: order[id(n)])


def tile_mlp_rows(graph: Graph, rows: int = ROWS) -> int:
    """Rewrite every MoaGemm -> element-wise -> MoaGemm block with more than `rows` rows;
    returns how many."""
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
        if math.prod(graph.tensors[x].shape[:-1]) <= rows:
            continue  # one block: nothing to save
        body_nodes = [first, *members, last]
        made = {o for n in body_nodes for o in n.outputs}
        constants = list(dict.fromkeys(i for n in body_nodes for i in n.inputs if i and i not in made and i != x))
        tensors = {n: graph.tensors[n] for n in [x, *constants, *made]}
        body = Graph(f"{first.name}_mlp", [x, *constants], [y], body_nodes, tensors, dict(graph.opsets))
        fused = Node("MoaMlp", first.name, [x, *constants], [y], {"body": body, "rows": rows})
        position = graph.nodes.index(last)
        graph.nodes[position] = fused
        graph.nodes = [n for n in graph.nodes if all(n is not m for m in body_nodes)]
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
        if node.op in elementwise.OPS:
            stack.extend(i for i in node.inputs if i and not graph.tensors[i].is_constant)
    return None
