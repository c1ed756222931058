"""The term languages of the attention DNF, and the reference expression written in them.

Three small languages, each a tree of frozen dataclasses: index expressions (IndexExpr: loop
indices with floor division, shifts, sums and the per-batch key count L[b]), array
expressions (Array: the operands Q, K, V, M and the array operations of the reference
expression, each with a symbolic shape such as ("B", "Hq", "Sq", "Skv")) and scalar terms
(Term: `<index> psi A` for one element of an array, loads of operands, arithmetic, calls,
reductions over a bound index and guards). AttentionFeatures says which parts of attention
a model uses, and `reference_definitions` builds from them the paper's named steps,
ending in Out. The helpers here walk terms, find free indices and rename bound ones.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
import itertools
import math
from typing import Callable, Iterator

from ..mask import MASK_KINDS

# Symbolic shapes of the operands. M is seen broadcast to the scores' shape.
OPERAND_SHAPES = {
    "Q": ("B", "Hq", "Sq", "D"),
    "K": ("B", "Hkv", "Skv", "D"),
    "V": ("B", "Hkv", "Skv", "Dv"),
    "M": ("B", "Hq", "Sq", "Skv"),
}
# The name of the free index that runs over each extent of a derived array.
FREE_INDEX_NAMES = {"B": "b", "Hq": "h", "Sq": "i", "Skv": "k", "Dv": "q"}
OUT_INDEX_NAMES = ("b", "h", "i", "q")
OUT_SHAPE = ("B", "Hq", "Sq", "Dv")


@dataclass(frozen=True)
class AttentionFeatures:
    scale: float
    causal: bool = False
    causal_offset: int = 0  # key k is hidden from query i when k > i + causal_offset (keys cached before)
    kv_lengths: bool = False  # only the first L[b] keys of batch b are valid; causal then aligns to L[b]
    window_start: int | None = None  # a sliding window: key k is hidden from query i when k < i + window_start
    mask: str = "none"  # "none" | "float" (added to the scores) | "bool" (True keeps a key)
    mask_fill: float = -math.inf  # bias of a False entry of a bool mask
    softcap: float = 0.0  # 0 means no softcap
    group: int = 1  # query heads per key/value head (GQA)

    def __post_init__(self):
        if self.mask not in MASK_KINDS:
            raise ValueError(f"mask must be one of {MASK_KINDS}, not {self.mask!r}")
        if self.group < 1:
            raise ValueError(f"group must be >= 1, not {self.group}")
        if self.softcap < 0:
            raise ValueError(f"softcap must be >= 0, not {self.softcap}")


# --- index expressions ---------------------------------------------------------------

class IndexExpr:
    """Integer arithmetic on loop indices: a tree of Index, FloorDiv and Shift."""


@dataclass(frozen=True)
class Index(IndexExpr):
    name: str


@dataclass(frozen=True)
class FloorDiv(IndexExpr):
    arg: IndexExpr
    divisor: int


@dataclass(frozen=True)
class Shift(IndexExpr):
    """arg + amount: the causal diagonal moved by the cached keys before the queries."""
    arg: IndexExpr
    amount: int


@dataclass(frozen=True)
class KeyCount(IndexExpr):
    """L[arg]: how many keys of batch `arg` are valid (ONNX nonpad_kv_seqlen)."""
    arg: IndexExpr


@dataclass(frozen=True)
class Sum(IndexExpr):
    left: IndexExpr
    right: IndexExpr


@dataclass(frozen=True)
class Lifted(IndexExpr):
    """outer * size + inner: one axis lifted into (outer, inner) blocks of `size` (the paper's
    N -> Pi # (N / Pi)), as the split key axis k = c * C + kk."""
    outer: IndexExpr
    inner: IndexExpr
    size: int


@dataclass(frozen=True)
class Const(IndexExpr):
    """A fixed index, such as the last key Skv - 1 of a key axis of known length."""
    value: int


# The index over the chunks of a split key axis (split_keys): reductions that depend only on
# it and on the output's indices (each chunk's max and sum) are per-row values.
SPLIT_INDEX = "c"


def index_vars(*names: str) -> tuple[Index, ...]:
    return tuple(Index(name) for name in names)


def _index_names(expr: IndexExpr) -> set[str]:
    if isinstance(expr, Index):
        return {expr.name}
    if isinstance(expr, Const):
        return set()
    if isinstance(expr, Sum):
        return _index_names(expr.left) | _index_names(expr.right)
    if isinstance(expr, Lifted):
        return _index_names(expr.outer) | _index_names(expr.inner)
    return _index_names(expr.arg)


def substitute_in_index(expr: IndexExpr, name: str, value: IndexExpr) -> IndexExpr:
    """expr with every Index(name) replaced by `value`."""
    if isinstance(expr, Index):
        return value if expr.name == name else expr
    if isinstance(expr, Const):
        return expr
    if isinstance(expr, Sum):
        return Sum(substitute_in_index(expr.left, name, value), substitute_in_index(expr.right, name, value))
    if isinstance(expr, Lifted):
        return replace(expr, outer=substitute_in_index(expr.outer, name, value),
                       inner=substitute_in_index(expr.inner, name, value))
    return replace(expr, arg=substitute_in_index(expr.arg, name, value))


def _rename_in_index(expr: IndexExpr, old: str, new: str) -> IndexExpr:
    return substitute_in_index(expr, old, Index(new))


# --- array expressions -----------------------------------------------------------------

class Array:
    """An array expression. `shape` is symbolic: a tuple of extent names such as "Sq"."""


class _SameShape(Array):
    """A node whose result has the shape of its operand `array`."""

    @property
    def shape(self) -> tuple[str, ...]:
        return self.array.shape


@dataclass(frozen=True)
class Var(Array):
    name: str  # Q, K, V or M

    @property
    def shape(self) -> tuple[str, ...]:
        return OPERAND_SHAPES[self.name]


@dataclass(frozen=True)
class Transpose(Array):
    """The two innermost axes swapped: (transpose Omega<2>) A."""
    array: Array

    @property
    def shape(self) -> tuple[str, ...]:
        *batch, rows, cols = self.array.shape
        return (*batch, cols, rows)


@dataclass(frozen=True)
class RepeatKV(Array):
    """Each key/value head repeated `group` times along the head axis (torch repeat_interleave)."""
    array: Array
    group: int

    @property
    def shape(self) -> tuple[str, ...]:
        batch, _, *rest = self.array.shape
        return (batch, "Hq", *rest)


@dataclass(frozen=True)
class InnerProduct(Array):
    """left ((+.x) Omega<2,2>) right: a matrix product per (batch, head)."""
    left: Array
    right: Array

    def __post_init__(self):
        if self.left.shape[-1] != self.right.shape[-2]:
            raise ValueError(f"+.x contracts {self.left.shape[-1]} with {self.right.shape[-2]}")

    @property
    def shape(self) -> tuple[str, ...]:
        return self.left.shape[:-1] + self.right.shape[-1:]


@dataclass(frozen=True)
class Scale(_SameShape):
    array: Array
    factor: float


@dataclass(frozen=True)
class Softcap(_SameShape):
    """cap * tanh(A / cap)."""
    array: Array
    cap: float


@dataclass(frozen=True)
class AddBias(_SameShape):
    """A plus the mask's bias: M itself (float) or where(M, 0, fill) (bool)."""
    array: Array
    mask: Var
    kind: str  # "float" | "bool"
    fill: float = -math.inf


@dataclass(frozen=True)
class CausalBias(_SameShape):
    """A with -inf where key k comes after query i + offset (top-left aligned when offset is 0);
    per_batch adds L[b], the valid key count of the batch (an external cache)."""
    array: Array
    offset: int = 0
    per_batch: bool = False


@dataclass(frozen=True)
class WindowBias(_SameShape):
    """A with -inf where key k comes before query i + offset (the start of a sliding window);
    per_batch adds L[b], as for CausalBias."""
    array: Array
    offset: int = 0
    per_batch: bool = False


@dataclass(frozen=True)
class KeyPadding(_SameShape):
    """A with -inf for the keys k >= L[b] past a batch's valid length."""
    array: Array


@dataclass(frozen=True)
class ReduceRows(Array):
    """(red_op Omega<1>) A: the innermost axis reduced by "+" or "max"."""
    op: str
    array: Array

    @property
    def shape(self) -> tuple[str, ...]:
        return self.array.shape[:-1]


@dataclass(frozen=True)
class RowBroadcast(_SameShape):
    """A (op Omega<1,0>) row: each row of A combined with its row's scalar, op "-" or "/"."""
    op: str
    array: Array
    row: Array


@dataclass(frozen=True)
class Exp(_SameShape):
    array: Array


@dataclass(frozen=True)
class ZeroEmptyRows(_SameShape):
    """A with 0 in every row whose row max is -inf: a query that may see no key attends to nothing."""
    array: Array
    row_max: Array


# --- index-level terms -----------------------------------------------------------------

class Term:
    """A scalar expression of index variables."""


@dataclass(frozen=True)
class Psi(Term):
    """<index> psi array: one element of a (possibly compound) array."""
    index: tuple[IndexExpr, ...]
    array: Array

    def __post_init__(self):
        if len(self.index) != len(self.array.shape):
            raise ValueError(f"psi needs a full index: {len(self.index)} indices for shape {self.array.shape}")


@dataclass(frozen=True)
class Load(Term):
    """An element of an operand, read at gamma(index) of its storage."""
    array: str
    index: tuple[IndexExpr, ...]


@dataclass(frozen=True)
class Literal(Term):
    value: float


@dataclass(frozen=True)
class Binary(Term):
    op: str  # "+", "-", "*", "/"
    left: Term
    right: Term


@dataclass(frozen=True)
class Call(Term):
    function: str  # "exp", "tanh"
    arg: Term


@dataclass(frozen=True)
class Reduce(Term):
    """red_op over var in iota(extent) of body; var is bound in body only. The extent is an
    axis name ("Skv"), or a count when the axis was lifted for a known length (split_keys)."""
    op: str  # "+", "max"
    var: str
    extent: str | int
    body: Term


@dataclass(frozen=True)
class Where(Term):
    cond: Term
    then: Term
    otherwise: Term


@dataclass(frozen=True)
class IndexGreater(Term):
    left: IndexExpr
    right: IndexExpr


@dataclass(frozen=True)
class IsNegInf(Term):
    arg: Term


def _children(term: Term) -> list[Term]:
    return [value for f in fields(term) if isinstance(value := getattr(term, f.name), Term)]


def _map_children(term: Term, fn: Callable[[Term], Term]) -> Term:
    changes = {f.name: fn(value) for f in fields(term) if isinstance(value := getattr(term, f.name), Term)}
    return replace(term, **changes) if changes else term


def _own_index_exprs(term: Term) -> tuple[IndexExpr, ...]:
    if isinstance(term, (Psi, Load)):
        return term.index
    if isinstance(term, IndexGreater):
        return (term.left, term.right)
    return ()


def subterms(term: Term) -> Iterator[Term]:
    """term and every term below it."""
    yield term
    for child in _children(term):
        yield from subterms(child)


def free_index_vars(term: Term) -> frozenset[str]:
    if isinstance(term, Reduce):
        return free_index_vars(term.body) - {term.var}
    names = {name for expr in _own_index_exprs(term) for name in _index_names(expr)}
    return frozenset(names.union(*map(free_index_vars, _children(term))))


def _all_index_names(term: Term) -> set[str]:
    names = set()
    for t in subterms(term):
        names.update(name for expr in _own_index_exprs(t) for name in _index_names(expr))
        if isinstance(t, Reduce):
            names.add(t.var)
    return names


def _fresh(base: str, taken) -> str:
    """base, else base1, base2, ...: the first name not taken."""
    base = base.rstrip("0123456789")
    candidates = itertools.chain([base], (f"{base}{n}" for n in itertools.count(1)))
    return next(name for name in candidates if name not in taken)


def substitute_index(term: Term, name: str, value: IndexExpr) -> Term:
    """term with its free index variable `name` replaced by the index expression `value`
    (whose own indices no reduction of term may bind)."""
    if isinstance(term, Reduce) and term.var == name:
        return term  # `name` is rebound here
    if isinstance(term, (Psi, Load)):
        term = replace(term, index=tuple(substitute_in_index(e, name, value) for e in term.index))
    elif isinstance(term, IndexGreater):
        term = replace(term, left=substitute_in_index(term.left, name, value),
                       right=substitute_in_index(term.right, name, value))
    return _map_children(term, lambda child: substitute_index(child, name, value))


def _rename(term: Term, old: str, new: str) -> Term:
    """term with its free index variable `old` renamed `new`."""
    return substitute_index(term, old, Index(new))


def _hygienic(term: Term, scope: frozenset[str]) -> Term:
    """term with every reduction index that would shadow a name in scope renamed.

    Rules pick conventional names (j, k, p); when a derived piece such as the row max is
    used inside another reduction over k, its own k becomes k1, so no bound index hides
    another and the DNF reads (and prints as C) without scoping puzzles.
    """
    if isinstance(term, Reduce):
        var, body = term.var, term.body
        if var in scope:
            var = _fresh(var, scope | _all_index_names(body))
            body = _rename(body, term.var, var)
        return replace(term, var=var, body=_hygienic(body, scope | {var}))
    return _map_children(term, lambda child: _hygienic(child, scope))


# --- the reference expression ------------------------------------------------------------

def reference_definitions(features: AttentionFeatures) -> tuple[tuple[str, Array], ...]:
    """The reference expression as the paper's named steps; the last one is Out."""
    keys, values = Var("K"), Var("V")
    if features.group > 1:
        keys, values = RepeatKV(keys, features.group), RepeatKV(values, features.group)
    x = Scale(InnerProduct(Var("Q"), Transpose(keys)), features.scale)
    if features.softcap:
        x = Softcap(x, features.softcap)  # before the bias, so a hidden key stays at -inf
    if features.mask != "none":
        x = AddBias(x, Var("M"), features.mask, features.mask_fill)
    if features.kv_lengths:
        x = KeyPadding(x)
    if features.causal:
        x = CausalBias(x, features.causal_offset, features.kv_lengths)
    if features.window_start is not None:
        x = WindowBias(x, features.window_start, features.kv_lengths)
    m = ReduceRows("max", x)  # I: row max
    z = RowBroadcast("-", x, m)  # I: shift
    num = Exp(z)  # II
    den = ReduceRows("+", num)  # III
    y = RowBroadcast("/", num, den)  # IV
    if features.mask != "none" or features.causal_offset < 0 or features.kv_lengths or features.window_start is not None:
        # Only a mask, a diagonal moved left or a window can hide a whole row: otherwise key 0 is visible.
        y = ZeroEmptyRows(y, m)
    return (("x", x), ("m", m), ("z", z), ("num", num), ("den", den), ("Y", y), ("Out", InnerProduct(y, values)))


def reference_expression(features: AttentionFeatures) -> Array:
    return reference_definitions(features)[-1][1]
