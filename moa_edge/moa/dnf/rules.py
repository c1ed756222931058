"""psi-reduction: the rules, the driver that applies them (derive), and its printed record.

A psi-reduction rule rewrites one index-level term `<index> psi A` by looking at the top
node of A. `derive` applies the rules to the reference expression until only loads of Q,
K, V and M remain: the Denotational Normal Form (DNF), one scalar expression for
Out[b,h,i,q] in which the transpose, the head repeat and the masks have become index
arithmetic and no intermediate array is left. Every rewrite is kept as a Step of the
Derivation, which format_derivation prints next to the reference steps and the DNF.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
import math
from typing import Callable

from .printing import _format_psi, format_array, format_term
from .terms import (
    FREE_INDEX_NAMES, AddBias, Array, AttentionFeatures, Binary, Call, CausalBias, Exp, FloorDiv, Index, IndexGreater,
    InnerProduct, IsNegInf, KeyCount, KeyPadding, Literal, Load, Psi, Reduce, ReduceRows, RepeatKV, RowBroadcast, Scale,
    Shift, Softcap, Sum, Term, Transpose, Var, Where, WindowBias, ZeroEmptyRows, _fresh, _hygienic, _map_children,
    free_index_vars, index_vars, reference_definitions,
)


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


# --- printing a derivation ------------------------------------------------------------------
# Here rather than in printing.py: it lists RULES, and the driver above uses printing.py.

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
