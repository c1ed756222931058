"""The attention DNF, derived by psi-reduction from the reference expression.

The start is the reference expression

    Out = softmax(scale * Q (+.x) transpose(K) + bias) (+.x) V

written as a small tree of array operations, with softmax spelled out in the paper's steps
(I shift, II exp, III sum, IV normalise; moa-attention-paper.md, section 3). A
psi-reduction rule rewrites one index-level term `<index> psi A` by looking at the top node
of A. `derive` applies the rules until only loads of Q, K, V and M remain: the Denotational
Normal Form (DNF), one scalar expression for Out[b,h,i,q] in which the transpose, the head
repeat and the masks have become index arithmetic and no intermediate array is left.

`evaluate_dnf` runs that expression literally in float64, one scalar at a time. The array
semantics (`evaluate_array`, `evaluate_term`) materialise every intermediate; they are the
meaning each rule must preserve and exist to check the rules, not to run attention.

Operands: Q (B,Hq,Sq,D), K (B,Hkv,Skv,D), V (B,Hkv,Skv,Dv), and an optional mask M that
broadcasts to (B,Hq,Sq,Skv). Semantics follow ONNX Attention (onnx 1.23): softcap is applied
before the bias; a bool mask keeps a key where True and adds `mask_fill` where False; causal
is top-left aligned (key k is hidden from query i iff k > i); query head h reads key/value
head h // G; a row whose every key is hidden by a -inf bias gives 0.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
import functools
import itertools
import math
import operator
from typing import Callable, Iterator

import numpy as np

from .mask import MASK_KINDS

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


def index_vars(*names: str) -> tuple[Index, ...]:
    return tuple(Index(name) for name in names)


def _index_names(expr: IndexExpr) -> set[str]:
    if isinstance(expr, Index):
        return {expr.name}
    if isinstance(expr, Sum):
        return _index_names(expr.left) | _index_names(expr.right)
    return _index_names(expr.arg)


def _rename_in_index(expr: IndexExpr, old: str, new: str) -> IndexExpr:
    if isinstance(expr, Index):
        return Index(new) if expr.name == old else expr
    if isinstance(expr, Sum):
        return Sum(_rename_in_index(expr.left, old, new), _rename_in_index(expr.right, old, new))
    return replace(expr, arg=_rename_in_index(expr.arg, old, new))


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
    """red_op over var in iota(extent) of body; var is bound in body only."""
    op: str  # "+", "max"
    var: str
    extent: str
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


def _rename(term: Term, old: str, new: str) -> Term:
    """term with its free index variable `old` renamed `new`."""
    if isinstance(term, Reduce) and term.var == old:
        return term  # `old` is rebound here
    if isinstance(term, (Psi, Load)):
        term = replace(term, index=tuple(_rename_in_index(e, old, new) for e in term.index))
    elif isinstance(term, IndexGreater):
        term = replace(term, left=_rename_in_index(term.left, old, new), right=_rename_in_index(term.right, old, new))
    return _map_children(term, lambda child: _rename(child, old, new))


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


# --- psi-reduction rules ---------------------------------------------------------------
# Each rule rewrites <index> psi A by the top node of A, or returns None when that node is
# not its own. Index variables of the term stay free; a rule that sums over an axis binds
# a fresh index for it.

def psi_load(term: Psi) -> Term | None:
    """<i> psi Q = Q[i]: an operand is read where it is stored."""
    if not isinstance(term.array, Var):
        return None
    return Load(term.array.name, term.index)


def psi_transpose(term: Psi) -> Term | None:
    """<..,i,j> psi (transpose A) = <..,j,i> psi A: no transposed copy, only swapped indices."""
    if not isinstance(term.array, Transpose):
        return None
    *batch, row, col = term.index
    return Psi((*batch, col, row), term.array.array)


def psi_repeat_kv(term: Psi) -> Term | None:
    """<b,h,..> psi (repeat_kv_G A) = <b,h//G,..> psi A: query head h reads key/value head h//G."""
    if not isinstance(term.array, RepeatKV):
        return None
    batch, head, *rest = term.index
    return Psi((batch, FloorDiv(head, term.array.group), *rest), term.array.array)


# The paper's names: j runs over features, p over the keys an output element sums.
_CONTRACTED_INDEX_NAMES = {"D": "j", "Skv": "p"}


def psi_inner_product(term: Psi) -> Term | None:
    """<..,i,k> psi (A +.x B) = red_+_j (<..,i,j> psi A x <..,j,k> psi B)."""
    if not isinstance(term.array, InnerProduct):
        return None
    *batch, row, col = term.index
    extent = term.array.left.shape[-1]
    j = Index(_fresh(_CONTRACTED_INDEX_NAMES[extent], free_index_vars(term)))
    product = Binary("*", Psi((*batch, row, j), term.array.left), Psi((*batch, j, col), term.array.right))
    return Reduce("+", j.name, extent, product)


def psi_scalar(term: Psi) -> Term | None:
    """<i> psi (c x A) = c x <i> psi A."""
    if not isinstance(term.array, Scale):
        return None
    return Binary("*", Literal(term.array.factor), Psi(term.index, term.array.array))


def psi_softcap(term: Psi) -> Term | None:
    """<i> psi softcap_c A = c x tanh(<i> psi A / c)."""
    if not isinstance(term.array, Softcap):
        return None
    cap = Literal(term.array.cap)
    return Binary("*", cap, Call("tanh", Binary("/", Psi(term.index, term.array.array), cap)))


def psi_mask(term: Psi) -> Term | None:
    """<i> psi (A + bias M) = <i> psi A + <i> psi M (float), or + where(<i> psi M, 0, fill) (bool)."""
    if not isinstance(term.array, AddBias):
        return None
    node = term.array
    mask = Psi(term.index, node.mask)
    bias = mask if node.kind == "float" else Where(mask, Literal(0.0), Literal(node.fill))
    return Binary("+", Psi(term.index, node.array), bias)


def psi_causal(term: Psi) -> Term | None:
    """<..,i,k> psi causal A = where(k > i, -inf, <..,i,k> psi A): a hidden key's score is not even read."""
    if not isinstance(term.array, CausalBias):
        return None
    batch, *_, query, key = term.index
    limit = Sum(query, KeyCount(batch)) if term.array.per_batch else query
    limit = Shift(limit, term.array.offset) if term.array.offset else limit
    return Where(IndexGreater(key, limit), Literal(-math.inf), Psi(term.index, term.array.array))


def psi_window(term: Psi) -> Term | None:
    """<..,i,k> psi window_s A = where(i + s > k, -inf, <..,i,k> psi A): keys before the window are not read."""
    if not isinstance(term.array, WindowBias):
        return None
    batch, *_, query, key = term.index
    start = Sum(query, KeyCount(batch)) if term.array.per_batch else query
    start = Shift(start, term.array.offset) if term.array.offset else start
    return Where(IndexGreater(start, key), Literal(-math.inf), Psi(term.index, term.array.array))


def psi_key_padding(term: Psi) -> Term | None:
    """<b,..,k> psi keypad A = where(k > L[b] - 1, -inf, <b,..,k> psi A): keys past the valid length are hidden."""
    if not isinstance(term.array, KeyPadding):
        return None
    batch, *_, key = term.index
    return Where(IndexGreater(key, Shift(KeyCount(batch), -1)), Literal(-math.inf), Psi(term.index, term.array.array))


def psi_reduce(term: Psi) -> Term | None:
    """<i> psi ((red_op Omega<1>) A) = red_op_k (<i,k> psi A): a row reduction over a fresh index."""
    if not isinstance(term.array, ReduceRows):
        return None
    k = Index(_fresh("k", free_index_vars(term)))
    extent = term.array.array.shape[-1]
    return Reduce(term.array.op, k.name, extent, Psi((*term.index, k), term.array.array))


def psi_row_broadcast(term: Psi) -> Term | None:
    """<i,k> psi (A (op Omega<1,0>) r) = <i,k> psi A op <i> psi r: row minus (or over) its row scalar."""
    if not isinstance(term.array, RowBroadcast):
        return None
    node = term.array
    return Binary(node.op, Psi(term.index, node.array), Psi(term.index[:-1], node.row))


def psi_elementwise(term: Psi) -> Term | None:
    """<i> psi (exp A) = exp(<i> psi A)."""
    if not isinstance(term.array, Exp):
        return None
    return Call("exp", Psi(term.index, term.array.array))


def psi_empty_row(term: Psi) -> Term | None:
    """<i,k> psi zero_empty_rows(A, m) = where(<i> psi m = -inf, 0, <i,k> psi A)."""
    if not isinstance(term.array, ZeroEmptyRows):
        return None
    row_is_empty = IsNegInf(Psi(term.index[:-1], term.array.row_max))
    return Where(row_is_empty, Literal(0.0), Psi(term.index, term.array.array))


RULES: dict[str, Callable[[Psi], Term | None]] = {
    rule.__name__.replace("_", "-"): rule
    for rule in (psi_load, psi_transpose, psi_repeat_kv, psi_inner_product, psi_scalar, psi_softcap, psi_mask,
                 psi_causal, psi_window, psi_key_padding, psi_reduce, psi_row_broadcast, psi_elementwise, psi_empty_row)
}


# --- the driver ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    rule: str
    before: Psi
    after: Term


@dataclass(frozen=True)
class Derivation:
    root: Psi  # <free indices> psi (reference array)
    steps: tuple[Step, ...]
    dnf: Term  # the root's value: loads of operands and index arithmetic only
    definitions: tuple[tuple[str, Array], ...] = ()  # the paper's named steps, for printing
    features: AttentionFeatures | None = None

    @property
    def free_vars(self) -> tuple[str, ...]:
        return tuple(expr.name for expr in self.root.index)

    @property
    def shape(self) -> tuple[str, ...]:
        return self.root.array.shape


def _rewrite(term: Psi) -> tuple[str, Term]:
    for name, rule in RULES.items():
        rewritten = rule(term)
        if rewritten is not None:
            return name, rewritten
    raise ValueError(f"no psi-reduction rule applies to {format_term(term)}")


def derive_term(root: Psi, definitions=(), features: AttentionFeatures | None = None) -> Derivation:
    """Apply the rules to root until no psi is left, recording every rewrite.

    A psi term met again (the row max, say, is used by the shift and by the guard) reuses
    its first reduction instead of repeating the same steps.
    """
    steps: list[Step] = []
    reduced: dict[Psi, Term] = {}

    def normalise(term: Term, scope: frozenset[str]) -> Term:
        if isinstance(term, Psi):
            if term not in reduced:
                rule, rewritten = _rewrite(term)
                steps.append(Step(rule, term, rewritten))
                reduced[term] = normalise(rewritten, scope)
            return _hygienic(reduced[term], scope)
        if isinstance(term, Reduce):
            return replace(term, body=normalise(term.body, scope | {term.var}))
        return _map_children(term, lambda child: normalise(child, scope))

    dnf = normalise(root, free_index_vars(root))
    return Derivation(root, tuple(steps), dnf, tuple(definitions), features)


def derive(features: AttentionFeatures, target: str = "Out") -> Derivation:
    """The DNF of one named step of the reference expression (default: Out[b,h,i,q])."""
    definitions = reference_definitions(features)
    array = dict(definitions)[target]
    root = Psi(index_vars(*(FREE_INDEX_NAMES[extent] for extent in array.shape)), array)
    return derive_term(root, definitions, features)


def score_term(derivation: Derivation) -> Term:
    """s(b,h,i,k): the score of key k for query i after scale, softcap and bias (loads of Q, K, M)."""
    x = dict(derivation.definitions)["x"]
    return derive_term(Psi(index_vars("b", "h", "i", "k"), x)).dnf


def value_term(derivation: Derivation) -> Term:
    """V(b,h//G,p,q): the value element the output sums over key p."""
    out = dict(derivation.definitions)["Out"]
    return derive_term(Psi(index_vars("b", "h", "p", "q"), out.right)).dnf


# --- printing -----------------------------------------------------------------------------

_OP_SYMBOLS = {"+": "+", "-": "−", "*": "×", "/": "÷"}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def format_index(expr: IndexExpr) -> str:
    if isinstance(expr, Index):
        return expr.name
    if isinstance(expr, Shift):
        return f"{format_index(expr.arg)}{expr.amount:+d}"
    if isinstance(expr, KeyCount):
        return f"L[{format_index(expr.arg)}]"
    if isinstance(expr, Sum):
        return f"{format_index(expr.left)}+{format_index(expr.right)}"
    return f"{format_index(expr.arg)}//{expr.divisor}"


def _format_number(value: float) -> str:
    if math.isinf(value):
        return "−∞" if value < 0 else "∞"
    return f"{value:g}"


def _format_operand(array: Array, names) -> str:
    if array in names:
        return names[array]
    if isinstance(array, (Var, Transpose)):  # ⍉ binds tighter than any other operator here
        return format_array(array, names)
    return f"({format_array(array, names)})"


def format_array(array: Array, names=None) -> str:
    """The array in MoA notation; sub-arrays found in `names` print as their name."""
    names = names or {}
    arg = functools.partial(_format_operand, names=names)
    match array:
        case Var(name):
            return name
        case Transpose(a):
            return f"⍉{arg(a)}"
        case RepeatKV(a, group):
            return f"repeat_kv_{group} {arg(a)}"
        case InnerProduct(left, right):
            return f"{arg(left)} +.× {arg(right)}"
        case Scale(a, factor):
            return f"{_format_number(factor)} × {arg(a)}"
        case Softcap(a, cap):
            return f"softcap_{_format_number(cap)} {arg(a)}"
        case AddBias(a, mask, "float", _):
            return f"{arg(a)} + {arg(mask)}"
        case AddBias(a, mask, "bool", fill):
            return f"{arg(a)} + where({arg(mask)}, 0, {_format_number(fill)})"
        case CausalBias(a, offset, per_batch):
            shift = ("+L[b]" if per_batch else "") + (f"{offset:+d}" if offset else "")
            return f"causal{'_' + shift if shift else ''} {arg(a)}"
        case WindowBias(a, offset, per_batch):
            shift = ("+L[b]" if per_batch else "") + (f"{offset:+d}" if offset else "")
            return f"window{'_' + shift if shift else ''} {arg(a)}"
        case KeyPadding(a):
            return f"keypad_L {arg(a)}"
        case ReduceRows(op, a):
            return f"red_{op} Ω⟨1⟩ {arg(a)}"
        case RowBroadcast(op, a, row):
            return f"{arg(a)} {_OP_SYMBOLS[op]}Ω⟨1,0⟩ {arg(row)}"
        case Exp(a):
            return f"exp {arg(a)}"
        case ZeroEmptyRows(a, row_max):
            return f"where({arg(row_max)} = −∞, 0, {format_array(a, names)})"
    raise TypeError(f"not an array expression: {array!r}")


def _format_psi(term: Psi, names, spell_out: bool = False) -> str:
    """<i>ψA; spell_out shows A's top node even when A has a name."""
    index = ",".join(map(format_index, term.index))
    if spell_out and not isinstance(term.array, (Var, Transpose)):
        array = f"({format_array(term.array, names)})"
    else:
        array = _format_operand(term.array, names)
    return f"⟨{index}⟩ψ{array}"


def _format_side(child: Term, parent_op: str, right: bool, names) -> str:
    text = format_term(child, names)
    if isinstance(child, Binary):
        looser = _PRECEDENCE[child.op] < _PRECEDENCE[parent_op]
        regrouped = right and _PRECEDENCE[child.op] == _PRECEDENCE[parent_op] and parent_op in "-/"
        if looser or regrouped:
            return f"({text})"
    return text


def format_term(term: Term, names=None) -> str:
    names = names or {}
    match term:
        case Psi():
            return _format_psi(term, names)
        case Load(array, index):
            return f"{array}[{','.join(map(format_index, index))}]"
        case Literal(value):
            return _format_number(value)
        case Binary(op, left, right):
            return (f"{_format_side(left, op, False, names)} {_OP_SYMBOLS[op]} "
                    f"{_format_side(right, op, True, names)}")
        case Call(function, arg):
            return f"{function}({format_term(arg, names)})"
        case Reduce(op, var, _, body):
            return f"red_{op}_{var} ({format_term(body, names)})"
        case Where(cond, then, otherwise):
            return f"where({format_term(cond, names)}, {format_term(then, names)}, {format_term(otherwise, names)})"
        case IndexGreater(left, right):
            return f"{format_index(left)} > {format_index(right)}"
        case IsNegInf(arg):
            return f"{format_term(arg, names)} = −∞"
    raise TypeError(f"not a term: {term!r}")


def format_derivation(derivation: Derivation) -> str:
    """The named reference steps, each rewrite (rule: before → after), then the DNF."""
    names = {array: name for name, array in derivation.definitions}
    lines = []
    if derivation.definitions:
        lines.append("Reference expression, in the paper's steps:")
        width = max(len(name) for name, _ in derivation.definitions)
        lines += [f"  {name:<{width}} = {format_array(array, names)}" for name, array in derivation.definitions]
    lines.append(f"ψ-reduction of {format_term(derivation.root, names)}:")
    rule_width = max(map(len, RULES))
    for number, step in enumerate(derivation.steps, 1):
        lines.append(f"  {number:>2}. {step.rule:<{rule_width}}  {_format_psi(step.before, names, spell_out=True)}"
                     f"  →  {format_term(step.after, names)}")
    target = names.get(derivation.root.array, "A")
    lines.append("DNF:")
    lines.append(f"  {target}[{','.join(derivation.free_vars)}] = {format_term(derivation.dnf)}")
    return "\n".join(lines)


# --- semantics ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Operands:
    arrays: dict[str, np.ndarray]
    extents: dict[str, int]


def _operands(Q, K, V, M=None, L=None) -> _Operands:
    Q, K, V = (np.asarray(a, dtype=np.float64) for a in (Q, K, V))
    if Q.ndim != 4 or K.ndim != 4 or V.ndim != 4:
        raise ValueError("Q, K and V must be 4-D (B, H, S, d)")
    B, Hq, Sq, D = Q.shape
    _, Hkv, Skv, _ = K.shape
    if K.shape[0] != B or K.shape[3] != D or V.shape[:3] != K.shape[:3] or Hq % Hkv:
        raise ValueError(f"inconsistent shapes Q {Q.shape}, K {K.shape}, V {V.shape}")
    extents = dict(B=B, Hq=Hq, Sq=Sq, D=D, Hkv=Hkv, Skv=Skv, Dv=V.shape[3])
    arrays = {"Q": Q, "K": K, "V": V}
    if M is not None:
        M = np.asarray(M)
        if M.dtype != np.bool_:
            M = M.astype(np.float64)
        arrays["M"] = np.broadcast_to(M, (B, Hq, Sq, Skv))  # a view: broadcast axes have stride 0
    if L is not None:
        arrays["L"] = np.asarray(L, dtype=np.int64).reshape(B)
    return _Operands(arrays, extents)


def _materialise(array: Array, operands: _Operands) -> np.ndarray:
    value = functools.partial(_materialise, operands=operands)
    match array:
        case Var(name):
            return operands.arrays[name]
        case Transpose(a):
            return np.swapaxes(value(a), -1, -2)
        case RepeatKV(a, group):
            return np.repeat(value(a), group, axis=1)
        case InnerProduct(left, right):
            return value(left) @ value(right)
        case Scale(a, factor):
            return factor * value(a)
        case Softcap(a, cap):
            return cap * np.tanh(value(a) / cap)
        case AddBias(a, mask, kind, fill):
            bias = value(mask) if kind == "float" else np.where(value(mask), 0.0, fill)
            return value(a) + bias
        case CausalBias(a, offset, per_batch):
            scores = value(a)
            queries, keys = scores.shape[-2:]
            limit = np.arange(queries)[:, None] + offset
            if per_batch:  # (B, 1, Sq, 1): each batch's diagonal moves by its valid length
                limit = limit + operands.arrays["L"].reshape(-1, 1, 1, 1)
            return np.where(np.arange(keys) > limit, -math.inf, scores)
        case WindowBias(a, offset, per_batch):
            scores = value(a)
            queries, keys = scores.shape[-2:]
            start = np.arange(queries)[:, None] + offset
            if per_batch:
                start = start + operands.arrays["L"].reshape(-1, 1, 1, 1)
            return np.where(np.arange(keys) < start, -math.inf, scores)
        case KeyPadding(a):
            scores = value(a)
            valid = np.arange(scores.shape[-1]) < operands.arrays["L"].reshape(-1, 1, 1, 1)
            return np.where(valid, scores, -math.inf)
        case ReduceRows(op, a):
            return (np.max if op == "max" else np.sum)(value(a), axis=-1)
        case RowBroadcast(op, a, row):
            return (np.subtract if op == "-" else np.divide)(value(a), value(row)[..., None])
        case Exp(a):
            return np.exp(value(a))
        case ZeroEmptyRows(a, row_max):
            return np.where(np.isneginf(value(row_max))[..., None], 0.0, value(a))
    raise TypeError(f"not an array expression: {array!r}")


def evaluate_array(array: Array, Q, K, V, M=None, L=None) -> np.ndarray:
    """The array an expression denotes, by whole-array numpy operations (materialises everything)."""
    with np.errstate(invalid="ignore"):  # -inf - -inf in a fully hidden row, zeroed by its guard
        return _materialise(array, _operands(Q, K, V, M, L))


_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_CALLS = {"exp": math.exp, "tanh": math.tanh}


def _index_value(expr: IndexExpr, env: dict[str, int], lengths=None) -> int:
    if isinstance(expr, Index):
        return env[expr.name]
    if isinstance(expr, Shift):
        return _index_value(expr.arg, env, lengths) + expr.amount
    if isinstance(expr, KeyCount):
        return int(lengths[_index_value(expr.arg, env, lengths)])
    if isinstance(expr, Sum):
        return _index_value(expr.left, env, lengths) + _index_value(expr.right, env, lengths)
    return _index_value(expr.arg, env, lengths) // expr.divisor


class _Interpreter:
    """Evaluates terms one float64 scalar at a time."""

    def __init__(self, operands: _Operands, cached_vars=frozenset(), materialise: bool = False):
        self.operands = operands
        self.cached_vars = cached_vars  # a reduction depending on these only is computed once per binding
        self.materialise = materialise  # evaluate psi of compound arrays (checking rules only)
        self.reductions: dict[tuple, float] = {}
        self.free_vars: dict[int, tuple[str, ...]] = {}
        self.materialised: dict[int, np.ndarray] = {}

    def value(self, term: Term, env: dict[str, int]):
        match term:
            case Load(array, index):
                return self.operands.arrays[array].item(tuple(self._index(e, env) for e in index))
            case Literal(value):
                return value
            case Binary(op, left, right):
                return _BINARY[op](self.value(left, env), self.value(right, env))
            case Call(function, arg):
                return _CALLS[function](self.value(arg, env))
            case Where(cond, then, otherwise):
                # Lazy: the guard of an empty row never evaluates its 0/0 weights.
                return self.value(then if self.value(cond, env) else otherwise, env)
            case IndexGreater(left, right):
                return self._index(left, env) > self._index(right, env)
            case IsNegInf(arg):
                return self.value(arg, env) == -math.inf
            case Reduce():
                return self._reduce(term, env)
            case Psi(index, array) if self.materialise:
                if id(array) not in self.materialised:
                    with np.errstate(invalid="ignore"):
                        self.materialised[id(array)] = _materialise(array, self.operands)
                return self.materialised[id(array)].item(tuple(self._index(e, env) for e in index))
            case Psi():
                raise ValueError(f"not in DNF: {format_term(term)} is left")
        raise TypeError(f"not a term: {term!r}")

    def _index(self, expr: IndexExpr, env: dict[str, int]) -> int:
        return _index_value(expr, env, self.operands.arrays.get("L"))

    def _reduce(self, term: Reduce, env: dict[str, int]) -> float:
        if id(term) not in self.free_vars:
            self.free_vars[id(term)] = tuple(sorted(free_index_vars(term)))
        free = self.free_vars[id(term)]
        key = None
        if self.cached_vars.issuperset(free):  # e.g. the row max and row sum: one value per (b,h,i)
            key = (id(term), tuple(env[name] for name in free))
            if key in self.reductions:
                return self.reductions[key]
        combine, total = (max, -math.inf) if term.op == "max" else (operator.add, 0.0)
        inner = dict(env)
        for position in range(self.operands.extents[term.extent]):
            inner[term.var] = position
            total = combine(total, self.value(term.body, inner))
        if key is not None:
            self.reductions[key] = total
        return total


def evaluate_term(term: Term, env: dict[str, int], Q, K, V, M=None, L=None) -> float:
    """term at one binding of its free indices; psi of a compound array is read from its materialised value."""
    return _Interpreter(_operands(Q, K, V, M, L), materialise=True).value(term, dict(env))


def _check_features(features: AttentionFeatures, Q, K, M) -> None:
    if np.shape(Q)[1] != features.group * np.shape(K)[1]:
        raise ValueError(f"{np.shape(Q)[1]} query heads do not make groups of {features.group} "
                         f"over {np.shape(K)[1]} key/value heads")
    if features.mask != "none" and (M is None or (np.asarray(M).dtype == np.bool_) != (features.mask == "bool")):
        raise ValueError(f"the features ask for a {features.mask} mask")


def evaluate_dnf(derivation_or_dnf: Derivation | Term, Q, K, V, M=None, L=None) -> np.ndarray:
    """Evaluate the DNF literally in float64: loops over its free indices, reductions as loops
    over scalars. No transposed K and no Sq x Skv array is built; a reduction that depends only
    on the free indices (the row max and row sum) is kept per binding, O(rows) memory.

    A bare DNF is taken as Out[b,h,i,q]; a Derivation gives its own free indices and shape.
    """
    if isinstance(derivation_or_dnf, Derivation):
        dnf, free_vars, shape = derivation_or_dnf.dnf, derivation_or_dnf.free_vars, derivation_or_dnf.shape
        if derivation_or_dnf.features is not None:
            _check_features(derivation_or_dnf.features, Q, K, M)
    else:
        dnf, free_vars, shape = derivation_or_dnf, OUT_INDEX_NAMES, OUT_SHAPE
    unbound = free_index_vars(dnf) - set(free_vars)
    if unbound:
        raise ValueError(f"the DNF has free indices {sorted(unbound)} beyond {free_vars}")
    operands = _operands(Q, K, V, M, L)
    missing = {t.array for t in subterms(dnf) if isinstance(t, Load)} - operands.arrays.keys()
    if missing:
        raise ValueError(f"the DNF reads {sorted(missing)}, which was not given")
    interpreter = _Interpreter(operands, cached_vars=frozenset(free_vars))
    out = np.empty(tuple(operands.extents[extent] for extent in shape))
    for position in np.ndindex(out.shape):
        out[position] = interpreter.value(dnf, dict(zip(free_vars, position)))
    return out
