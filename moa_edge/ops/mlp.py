"""MoaMlp: a feed-forward block run about ROWS rows at a time (made by passes/mlp.py).

The members (MoaGemm, element-wise ops, MoaGemm) are emitted by their own units, for a
block of rows: X and Y are offset to the block's first row, each intermediate is a slot of
the node's scratch holding one block. An element-wise member writes over an operand that
dies there (as the arena does for whole tensors), so GELU's chain needs one or two slots.

On T threads with at least MIN_SHARE_ROWS rows each, the rows are lifted onto cores: one job,
thread s running rows [M s / T, M (s + 1) / T) through every member in blocks of its own, with
its own slots (the scratch is T blocks). Otherwise the members lift their own loops.
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
C_LOCALS = frozenset({"row0", "s", "lo", "hi"})  # the block loop, and a share's rows
# Fewer rows a thread than this, and its blocks would be thin (few register tiles per read of the
# weights): the members lift their own loops instead.
MIN_SHARE_ROWS = 32
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


def _shares(node, graph) -> int:
    """Threads the block's rows are shared among (1: its GEMMs lift their own tiles instead):
    the graph's max_threads when each gets at least MIN_SHARE_ROWS rows."""
    threads = getattr(graph, "max_threads", 1) if graph is not None else 1
    return threads if threads > 1 and rows_of(node) >= MIN_SHARE_ROWS * threads else 1


def _share_sizes(node, threads: int) -> list[int]:
    """The rows of each thread's share, [M s / T, M (s + 1) / T)."""
    total = rows_of(node)
    starts = [total * s // threads for s in range(threads + 1)]
    return [end - start for start, end in zip(starts, starts[1:])]


def _block_rows(node, threads: int) -> int:
    """The height of a block: the rows of a thread's share (all the rows unshared) in the fewest
    blocks of at most an eighth more than ROWS, of about equal height, a multiple of 4 rows
    unless one block takes them all. BERT's 128 rows on one thread run as 64 + 64, not
    60 + 60 + 8 (whose 8-row GEMMs streamed both weight matrices for 8 rows, at half the
    GEMM's speed: 7% of BERT-base's time); a share of 100 as 52 + 48; BERT's 64 rows a thread
    as one block, not 32 + 32 (on one thread 4% (AVX2) and 6% (AVX-512) less time)."""
    most = node.attrs["rows"] + node.attrs["rows"] // 8
    rows = max(_share_sizes(node, threads))
    blocks = -(-rows // most)
    while True:
        height = -(-rows // blocks)
        height = rows if blocks == 1 else (height + 3) // 4 * 4
        if height <= most:
            return height
        blocks += 1


def _block_elements(node, threads: int) -> int:
    body = node.attrs["body"]
    return _slots(body)[1] * _block_rows(node, threads) * _width(body)


def scratch_bytes(node, graph=None) -> int:
    """One block's intermediates, for each thread the rows are shared among (or for the one
    thread when the block is emitted unshared)."""
    shares = _shares(node, graph)
    elements = max(_block_elements(node, shares) * shares, _block_elements(node, 1))
    return elements * dtypes.COMPUTE_DTYPE.itemsize


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


def _emit_block(node, ctx, rows: int, first_row: str, threads: int = 1) -> tuple[list[str], list[str]]:
    """The members' statements for `rows` rows from row `first_row`, and their declarations;
    the slots are blocks of _block_rows(node, threads) rows."""
    body = node.attrs["body"]
    block = _block(body, rows)
    x, y = body.inputs[0], body.outputs[0]
    slot, _ = _slots(body)
    stride = _block_rows(node, threads) * _width(body)
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


def _emit_shares(node, ctx, threads: int) -> EmittedUnit:
    """The rows lifted onto cores (Pi = cores, as attention lifts its row blocks): thread s of T
    takes rows [M s / T, M (s + 1) / T) through every member, in blocks of its own, with its own
    intermediates (scratch slot s), one job for the whole block. The members run on the thread
    that holds their rows (their GEMMs on one core), so the hidden rows never leave its cache
    and the run hands the pool one job, not three per block of rows. A row is computed alike
    whichever share holds it: outputs are bitwise the same for every thread count."""
    body, total = node.attrs["body"], rows_of(node)
    inner = EmitContext(name=ctx.name, board=ctx.board, where=ctx.where, graph=ctx.graph, lift=None,
                        scratch=f"({ctx.scratch} + thread * {_block_elements(node, threads)})")
    sizes = _share_sizes(node, threads)
    rows = _block_rows(node, threads)
    tails = sorted({size % rows for size in sizes} - {0})
    lines = [f"    /* {c_comment_text(node.name)}: feed-forward block ({', '.join(n.op for n in body.nodes)}) over "
             f"{total} rows, {threads} shares of rows lifted onto the pool, {rows} rows at a time */",
             "    moa_pool *const pool = NULL; /* the members run on this share's thread */",
             "    moa_status status = MOA_OK;",
             "    ptrdiff_t s, row0;",
             "    for (s = (ptrdiff_t)first; s < (ptrdiff_t)end; s++) {",
             f"        const ptrdiff_t lo = s * {total} / {threads}, hi = (s + 1) * {total} / {threads};",
             f"        for (row0 = lo; row0 + {rows} <= hi; row0 += {rows}) {{"]
    declarations = []
    for size in [rows] + tails:
        block, more = _emit_block(node, inner, size, "row0", threads)
        declarations += more
        if size != rows:
            lines.append(f"        if (hi - row0 == {size}) {{ /* the share's last rows */")
        lines += ["        " + line if line else line for line in block] + ["        }"]
    lines += ["    }", "    return status;"]
    call = ctx.lift(threads, lines, returns_status=True)
    return EmittedUnit(call, declarations=list(dict.fromkeys(declarations)))


def emit(node, ctx):
    body, total = node.attrs["body"], rows_of(node)
    shares = _shares(node, ctx.graph)
    if ctx.lift and shares > 1:
        return _emit_shares(node, ctx, shares)
    rows = _block_rows(node, 1)
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
