"""MoaMlp: a feed-forward block run a block of the hidden layer at a time (made by passes/mlp.py).

The members (MoaGemm, element-wise ops, MoaGemm) are emitted by their own units, for a
block: rows r0 .. r0 + R of X and Y (all the rows, unless they are many), hidden columns
h0 .. h0 + H. The first product computes those columns (its packed panels and bias from
column h0), the element-wise members read their per-column constants from h0, and the last
product adds rows h0 .. h0 + H of its sum to Y, its bias with the first block
(moa_gemm_packed_rows_f32_on). H is a multiple of HIDDEN_STEP, so every element of Y is the
same sum, in the same order, as the whole product's. Each intermediate is a slot of the
node's scratch holding one block; an element-wise member writes over an operand that dies
there (as the arena does for whole tensors), so GELU's chain needs one or two slots.

On T threads with at least MIN_SHARE_ROWS rows each, the rows are lifted onto cores: one job,
thread s running rows [M s / T, M (s + 1) / T) through every member in blocks of its own, with
its own slots (the scratch is T blocks), when the run's pool has more than one thread (on one,
all the rows at once, as unshared). Otherwise the members lift their own loops.
"""
from __future__ import annotations

from dataclasses import replace
import math

from moa_edge.lazy import torch

from moa_edge.ir import Graph, Node, Tensor, dtypes
from moa_edge.ir.c_syntax import c_comment_text

from . import elementwise, matmul, views
from .contract import EmitContext, EmittedUnit, OpCost, TensorType, op_of, operand_bytes

OPS = ("MoaMlp",)
C_SOURCES = list(dict.fromkeys(matmul.C_SOURCES + elementwise.C_SOURCES))  # the members' sources
C_LOCALS = frozenset({"row0", "h0", "s", "lo", "hi"})  # the block loops, and a share's rows
# A hidden block's width is a multiple of this: of every ISA's MOA_GEMM_KC (matmul.h), so the last
# product's slices of the sum are the whole product's.
HIDDEN_STEP = 256
# Fewer rows a thread than this, and its blocks would be thin (few register tiles per read of the
# weights): the members lift their own loops instead.
MIN_SHARE_ROWS = 32
# What a member can be (passes/mlp.py): a MoaGemm, an element-wise op or a view that keeps the rows.
_MEMBER_OPS = {op: op_of(module) for module in (matmul, elementwise, views) for op in module.OPS}


def rows_of(node: Node) -> int:
    body = node.attrs["body"]
    return math.prod(body.tensors[body.inputs[0]].shape[:-1])


def _slots(body: Graph) -> tuple[dict[str, int], int]:
    """Scratch slot of every intermediate, and how many slots: a slot is free again after
    its tensor's last reader; an element-wise member takes over a dying operand's slot; a view
    is its operand's slot (and reading it reads that)."""
    y = body.outputs[0]
    viewed = {}
    for n in body.nodes:
        if n.op in views.OPS:
            viewed[n.outputs[0]] = viewed.get(n.inputs[0], n.inputs[0])
    last_read = {}
    for k, n in enumerate(body.nodes):
        for name in n.inputs:
            last_read[viewed.get(name, name)] = k
    slot, free, count = {}, [], 0
    for k, n in enumerate(body.nodes):
        out = n.outputs[0]
        if out in viewed:
            continue
        dying = [i for i in dict.fromkeys(viewed.get(i, i) for i in n.inputs) if i in slot and last_read[i] == k]
        if out != y:
            if dying and _MEMBER_OPS[n.op].IN_PLACE:
                slot[out] = slot[dying.pop(0)]
            elif free:
                slot[out] = free.pop()
            else:
                slot[out], count = count, count + 1
        free += [slot[i] for i in dying]
    slot.update({out: slot[source] for out, source in viewed.items()})
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
    blocks of at most BLOCK / HIDDEN_STEP rows (512), of about equal height, a multiple of 4
    rows unless one block takes them all. Most models' rows are one block: each block of rows
    streams both weight matrices again (ViT-B/16's 197 rows in blocks of 52 ran its two products
    at 78-84 GFLOP/s on AVX2, against 89-94 whole)."""
    most = node.attrs["block"] // HIDDEN_STEP
    rows = max(_share_sizes(node, threads))
    blocks = -(-rows // most)
    while True:
        height = -(-rows // blocks)
        height = rows if blocks == 1 else (height + 3) // 4 * 4
        if height <= most:
            return height
        blocks += 1


def _sliced_constants(body: Graph) -> set[str]:
    """The constants read a hidden column at a time: the first product's bias and the element-wise
    members' operands one hidden row wide."""
    width = _width(body)
    readers = [body.nodes[0].inputs[2:3], *(n.inputs for n in body.nodes[1:-1])]
    return {name for names in readers for name in names
            if name and body.tensors[name].is_constant and body.tensors[name].size > 1
            and body.tensors[name].shape[-1] == width}


def _block_hidden(node) -> int:
    """The width of a block of hidden columns: BLOCK floats over the rows of an unshared block,
    a multiple of HIDDEN_STEP (ViT-B/16: 512 of 3072 for 197 rows), or all of them. The same
    for every thread count (a share's blocks are shorter, not wider), so Y is too."""
    body = node.attrs["body"]
    width = _width(body)
    if _sliced_constants(body) & set(body.nodes[-1].inputs):
        return width  # (a constant the last product also reads whole)
    hidden = max(HIDDEN_STEP, node.attrs["block"] // _block_rows(node, 1) // HIDDEN_STEP * HIDDEN_STEP)
    return min(hidden, width)


def _block_elements(node, threads: int) -> int:
    return _slots(node.attrs["body"])[1] * _block_rows(node, threads) * _block_hidden(node)


def scratch_bytes(node, graph=None) -> int:
    """One block's intermediates, for each thread the rows are shared among (or for the one
    thread when the block is emitted unshared)."""
    shares = _shares(node, graph)
    elements = max(_block_elements(node, shares) * shares, _block_elements(node, 1))
    return elements * dtypes.COMPUTE_DTYPE.itemsize


def _block(graph: Graph, rows: int, hidden: int, first_col: str) -> Graph:
    """The body for a block of `rows` rows and `hidden` hidden columns from column first_col:
    every intermediate [rows, hidden], X and Y [rows, width]; the sliced constants `hidden`
    wide (the emitted code reads them from first_col), the first product `hidden` columns wide
    and the last a slice of its sum (from row first_col of its B) when the block is not all of
    the hidden layer."""
    width, sliced = _width(graph), _sliced_constants(graph)
    made = {o for n in graph.nodes for o in n.outputs} - set(graph.outputs)

    def resized(t: Tensor, inner: bool = False) -> Tensor:
        if t.name in sliced:  # (its first columns: a shape to emit from, never evaluated)
            return replace(t, shape=t.shape[:-1] + (hidden,), data=t.data[..., :hidden])
        if t.is_constant:
            return t
        return Tensor(t.name, (rows, hidden if inner or t.name in made else t.shape[-1]), t.dtype)

    def resized_node(n: Node, k: int) -> Node:
        if isinstance(n.attrs.get("body"), Graph):  # a fused element-wise node carries its own
            inner = n.attrs["body"]
            tensors = {name: resized(t, True) for name, t in inner.tensors.items()}
            return replace(n, attrs={**n.attrs, "body": replace(inner, tensors=tensors)})
        if hidden == width:
            return n
        if k == 0:
            return replace(n, attrs={**n.attrs, "n": hidden})
        if k == len(graph.nodes) - 1:
            return replace(n, attrs={**n.attrs, "first_row": first_col})
        return n

    return replace(graph, nodes=[resized_node(n, k) for k, n in enumerate(graph.nodes)],
                   tensors={name: resized(t) for name, t in graph.tensors.items()})


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


def _indented(lines: list[str], depth: int) -> list[str]:
    """Lines indented `depth` levels of four spaces (blank lines left blank)."""
    return ["    " * depth + line if line else line for line in lines]


def _emit_block(node, ctx, rows: int, first_row: str, hidden: int, first_col: str,
                threads: int = 1) -> tuple[list[str], list[str]]:
    """The members' statements for `rows` rows from row `first_row` and `hidden` hidden columns
    from column `first_col`, and their declarations; the slots are blocks of
    _block_rows(node, threads) x _block_hidden(node)."""
    body = node.attrs["body"]
    block = _block(body, rows, hidden, first_col)
    x, y, first = body.inputs[0], body.outputs[0], body.nodes[0]
    slot, _ = _slots(body)
    stride = _block_rows(node, threads) * _block_hidden(node)
    where = dict(ctx.where)
    where[x] = f"({ctx.where[x]} + {first_row} * {body.tensors[x].shape[-1]})"
    where[y] = f"({ctx.where[y]} + {first_row} * {body.tensors[y].shape[-1]})"
    where.update({name: f"({ctx.scratch} + {s * stride})" for name, s in slot.items()})
    if hidden != _width(body):  # the first product's panels from column first_col (matmul.h's layout)
        where[first.inputs[1]] = f"({ctx.where[first.inputs[1]]} + {first_col} * {body.tensors[first.inputs[1]].shape[1]})"
        where.update({name: f"({ctx.where[name]} + {first_col})" for name in _sliced_constants(body)})
    lines, declarations = [], []
    for k, member in enumerate(block.nodes):
        if member.op in views.OPS:
            continue  # its slot is its operand's
        # A member on scratch slots alone may lift its loop onto the pool (the GEMMs lift their own):
        # the lifted loop is a task function, which sees the arena but not this block's row0.
        lift = ctx.lift if ctx.lift and not {x, y} & {*member.inputs, *member.outputs} else None
        unit = _MEMBER_OPS[member.op].emit(member, EmitContext(name=f"{ctx.name}_{k}", board=ctx.board, where=where,
                                                                 scratch="NULL", graph=block, lift=lift))
        lines += [line[4:] if line.startswith("    ") else line for line in unit.call.rstrip("\n").splitlines()]
        declarations += unit.declarations
    return lines, declarations


def _emit_rows(node, ctx, rows: int, first_row: str, threads: int = 1) -> tuple[list[str], list[str], bool]:
    """A block of rows through every block of hidden columns: (statements, unindented;
    declarations; whether they use the loop index h0)."""
    width, hidden = _width(node.attrs["body"]), _block_hidden(node)
    full, rest = divmod(width, hidden)
    lines, declarations = [], []
    if full > 1:
        lines.append(f"for (h0 = 0; h0 + {hidden} <= {width}; h0 += {hidden}) {{")
        block, declarations = _emit_block(node, ctx, rows, first_row, hidden, "h0", threads)
        lines += _indented(block, 1) + ["}"]
    else:
        lines, declarations = _emit_block(node, ctx, rows, first_row, hidden, "0", threads)
    if rest:
        lines.append(f"/* the last {rest} hidden columns */")
        block, more = _emit_block(node, ctx, rows, first_row, rest, str(full * hidden), threads)
        lines += block
        declarations += more
    return lines, declarations, full > 1


def _emit_shares(node, ctx, threads: int) -> EmittedUnit:
    """The rows lifted onto cores (Pi = cores, as attention lifts its row blocks): thread s of T
    takes rows [M s / T, M (s + 1) / T) through every member, in blocks of its own, with its own
    intermediates (scratch slot s), one job for the whole block. The members run on the thread
    that holds their rows (their GEMMs on one core), so the hidden rows never leave its cache
    and the run hands the pool one job, not three per block. A row is computed alike
    whichever share holds it: outputs are bitwise the same for every thread count."""
    body, total = node.attrs["body"], rows_of(node)
    inner = EmitContext(name=ctx.name, board=ctx.board, where=ctx.where, graph=ctx.graph, lift=None,
                        scratch=f"({ctx.scratch} + thread * {_block_elements(node, threads)})")
    sizes = _share_sizes(node, threads)
    rows = _block_rows(node, threads)
    tails = sorted({size % rows for size in sizes} - {0})
    loops, declarations, uses_h0 = [], [], False
    for size in [rows] + tails:
        block, more, hidden_loop = _emit_rows(node, inner, size, "row0", threads)
        declarations += more
        uses_h0 |= hidden_loop
        if size != rows:
            loops.append(f"        if (hi - row0 == {size}) {{ /* the share's last rows */")
        loops += _indented(block, 3) + ["        }"]
    lines = [f"    /* {c_comment_text(node.name)}: feed-forward block ({', '.join(n.op for n in body.nodes)}) over "
             f"{total} rows, {threads} shares of rows lifted onto the pool, {rows} rows and {_block_hidden(node)} "
             "hidden columns at a time */",
             "    moa_pool *const pool = NULL; /* the members run on this share's thread */",
             "    moa_status status = MOA_OK;",
             f"    ptrdiff_t s, row0{', h0' if uses_h0 else ''};",
             "    for (s = (ptrdiff_t)first; s < (ptrdiff_t)end; s++) {",
             f"        const ptrdiff_t lo = s * {total} / {threads}, hi = (s + 1) * {total} / {threads};",
             f"        for (row0 = lo; row0 + {rows} <= hi; row0 += {rows}) {{",
             *loops, "    }", "    return status;"]
    call = ctx.lift(threads, lines, returns_status=True)
    return EmittedUnit(call, declarations=list(dict.fromkeys(declarations)))


def emit(node, ctx):
    """On a pool of more than one thread the rows lifted onto cores (_emit_shares); on one, in
    blocks of all the rows (ViT-B/16 converted for 2 threads and run on one: its two shares'
    blocks of 99 rows streamed both weight matrices twice, 2-6% of the run, AVX2 and AVX-512)."""
    shares = _shares(node, ctx.graph)
    if not ctx.lift or shares == 1:
        return _emit_unshared(node, ctx)
    lifted, alone = _emit_shares(node, ctx, shares), _emit_unshared(node, ctx)
    call = "\n".join(["    if (moa_pool_threads(pool) > 1) {", *_indented(lifted.call.rstrip("\n").splitlines(), 1),
                      "    } else {", *_indented(alone.call.rstrip("\n").splitlines(), 1), "    }"]) + "\n"
    return EmittedUnit(call, declarations=list(dict.fromkeys(lifted.declarations + alone.declarations)))


def _emit_unshared(node, ctx) -> EmittedUnit:
    """Blocks of all the rows (or of many rows' blocks), each member lifting its own loop when ctx.lift."""
    body, total = node.attrs["body"], rows_of(node)
    rows, hidden = _block_rows(node, 1), _block_hidden(node)
    full, rest = divmod(total, rows)
    ops = ", ".join(n.op for n in body.nodes)
    block, declarations, uses_h0 = _emit_rows(node, ctx, rows, "row0")
    lines = [f"    {{ /* {c_comment_text(node.name)}: feed-forward block ({ops}) over {total} rows, {rows} rows and "
             f"{hidden} hidden columns at a time; each intermediate one [{rows}, {hidden}] slot of scratch */",
             f"        ptrdiff_t row0{', h0' if uses_h0 else ''};",
             f"        for (row0 = 0; row0 < {full * rows}; row0 += {rows}) {{"]
    lines += _indented(block, 3) + ["        }"]
    if rest:
        lines.append(f"        row0 = {full * rows}; /* the last {rest} rows */")
        block, more, _ = _emit_rows(node, ctx, rest, "row0")
        lines += _indented(block, 2)
        declarations += more
    lines.append("    }")
    return EmittedUnit("\n".join(lines) + "\n", declarations=list(dict.fromkeys(declarations)))
