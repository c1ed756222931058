"""MoaMlp: a feed-forward block run ROWS rows at a time (made by passes/mlp.py).

The members (MoaGemm, element-wise ops, MoaGemm) are emitted by their own units, for a
block of rows: X and Y are offset to the block's first row, each intermediate is a slot of
the node's scratch holding one block. An element-wise member writes over an operand that
dies there (as the arena does for whole tensors), so GELU's chain needs one or two slots.
"""
from __future__ import annotations

from dataclasses import replace
import math

from moa_edge.lazy import torch

from moa_edge.ir import Graph, Node, Tensor, dtypes
from moa_edge.ir.c_syntax import c_comment_text

from . import elementwise, matmul
from .contract import EmitContext, EmittedUnit, OpCost, TensorType, op_of, operand_bytes

OPS = ("MoaMlp",)
C_SOURCES = list(dict.fromkeys(matmul.C_SOURCES + elementwise.C_SOURCES))  # the members' sources
C_LOCALS = frozenset({"row0"})  # the first row of the block
# What a member can be (passes/mlp.py): a MoaGemm or an element-wise op.
_MEMBER_OPS = {op: op_of(module) for module in (matmul, elementwise) for op in module.OPS}


def rows_of(node: Node) -> int:
    body = node.attrs["body"]
    return math.prod(body.tensors[body.inputs[0]].shape[:-1])


def _slots(body: Graph) -> tuple[dict[str, int], int]:
    """Scratch slot of every intermediate, and how many slots: a slot is free again after
    its tensor's last reader; an element-wise member takes over a dying operand's slot."""
    y = body.outputs[0]
    last_read = {}
    for k, n in enumerate(body.nodes):
        for name in n.inputs:
            last_read[name] = k
    slot, free, count = {}, [], 0
    for k, n in enumerate(body.nodes):
        out = n.outputs[0]
        dying = [i for i in dict.fromkeys(n.inputs) if i in slot and last_read[i] == k]
        if out != y:
            if dying and _MEMBER_OPS[n.op].IN_PLACE:
                slot[out] = slot[dying.pop(0)]
            elif free:
                slot[out] = free.pop()
            else:
                slot[out], count = count, count + 1
        free += [slot[i] for i in dying]
    return slot, count


def _width(body: Graph) -> int:
    """Floats in one row of the widest intermediate."""
    made = {o for n in body.nodes for o in n.outputs} - set(body.outputs)
    return max(body.tensors[name].shape[-1] for name in made)


def scratch_bytes(node, graph=None) -> int:
    body = node.attrs["body"]
    return _slots(body)[1] * min(node.attrs["rows"], rows_of(node)) * _width(body) * dtypes.COMPUTE_DTYPE.itemsize


def _block(graph: Graph, rows: int) -> Graph:
    """The body for a block of `rows` rows: every computed tensor [rows, width]; constants as they are."""
    def with_rows(t: Tensor) -> Tensor:
        return t if t.is_constant else Tensor(t.name, (rows, t.shape[-1]), t.dtype)

    def node_with_rows(n: Node) -> Node:
        if isinstance(n.attrs.get("body"), Graph):  # a fused element-wise node carries its own
            return replace(n, attrs={**n.attrs, "body": _block(n.attrs["body"], rows)})
        return n

    return Graph(graph.name, list(graph.inputs), list(graph.outputs), [node_with_rows(n) for n in graph.nodes],
                 {name: with_rows(t) for name, t in graph.tensors.items()}, dict(graph.opsets))


def infer(node, graph) -> list[TensorType]:
    """Y as X's rows by the last member's width (its rule, in the body), of X's dtype."""
    body = node.attrs["body"]
    x, last = graph.tensors[node.inputs[0]], body.nodes[-1]
    (y,) = _MEMBER_OPS[last.op].infer(last, body)
    return [TensorType(tuple(x.shape[:-1]) + tuple(y.shape[-1:]), x.dtype)]


def op_cost(node, graph) -> OpCost:
    """The members' arithmetic on the whole tensors; only X, the weights and Y move (the
    intermediates stay in scratch)."""
    body = node.attrs["body"]
    moved = operand_bytes(node, graph)
    return OpCost(sum(_MEMBER_OPS[m.op].op_cost(m, body).flops for m in body.nodes), moved.weight_bytes,
                  moved.activation_bytes)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    """The members in order on the whole tensors (rows are independent, so blocks change nothing)."""
    body = node.attrs["body"]
    env = dict(zip(node.inputs, inputs))
    for member in body.nodes:
        values = [env[n] if n else None for n in member.inputs]
        env.update(zip(member.outputs, _MEMBER_OPS[member.op].evaluate(member, values, body)))
    return [env[body.outputs[0]]]


def _emit_block(node, ctx, rows: int, first_row: str) -> tuple[list[str], list[str]]:
    """The members' statements for `rows` rows from row `first_row`, and their declarations."""
    body = node.attrs["body"]
    block = _block(body, rows)
    x, y = body.inputs[0], body.outputs[0]
    slot, _ = _slots(body)
    stride = min(node.attrs["rows"], rows_of(node)) * _width(body)
    where = dict(ctx.where)
    where[x] = f"({ctx.where[x]} + {first_row} * {body.tensors[x].shape[-1]})"
    where[y] = f"({ctx.where[y]} + {first_row} * {body.tensors[y].shape[-1]})"
    where.update({name: f"({ctx.scratch} + {s * stride})" for name, s in slot.items()})
    lines, declarations = [], []
    for k, member in enumerate(block.nodes):
        # A member on scratch slots alone may lift its loop onto the pool (the GEMMs lift their own):
        # the lifted loop is a task function, which sees the arena but not this block's row0.
        lift = ctx.lift if ctx.lift and not {x, y} & {*member.inputs, *member.outputs} else None
        unit = _MEMBER_OPS[member.op].emit(member, EmitContext(name=f"{ctx.name}_{k}", board=ctx.board, where=where,
                                                                 scratch="NULL", graph=block, lift=lift))
        lines += ["    " + line if line else line for line in unit.call.rstrip("\n").splitlines()]
        declarations += unit.declarations
    return lines, declarations


def emit(node, ctx):
    body, rows = node.attrs["body"], node.attrs["rows"]
    total = rows_of(node)
    full, rest = divmod(total, rows)
    ops = ", ".join(n.op for n in body.nodes)
    lines = [f"    {{ /* {c_comment_text(node.name)}: feed-forward block ({ops}) over {total} rows, {rows} at a time; "
             f"each intermediate one [{rows}, {_width(body)}] slot of scratch */",
             "        ptrdiff_t row0;",
             f"        for (row0 = 0; row0 < {full * rows}; row0 += {rows}) {{"]
    block, declarations = _emit_block(node, ctx, rows, "row0")
    lines += ["    " + line if line else line for line in block] + ["        }"]
    if rest:
        lines.append(f"        row0 = {full * rows}; /* the last {rest} rows */")
        block, more = _emit_block(node, ctx, rest, "row0")
        lines += block
        declarations += more
    lines.append("    }")
    return EmittedUnit("\n".join(lines) + "\n", declarations=list(dict.fromkeys(declarations)))
