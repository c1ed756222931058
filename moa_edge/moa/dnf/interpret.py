"""float64 interpreters: the meaning each rule must preserve, and the DNF run literally.

`evaluate_dnf` runs the DNF in float64, one scalar at a time, with the reductions as loops
over scalars: no transposed K and no Sq x Skv array is built. The array semantics
(`evaluate_array`, `evaluate_term`) materialise every intermediate with numpy; they are
the meaning each rule must preserve and exist to check the rules, not to run attention.
"""
from __future__ import annotations

from dataclasses import dataclass
import functools
import math
import operator

import numpy as np

from .printing import format_term
from .rules import Derivation
from .terms import (
    OUT_INDEX_NAMES, OUT_SHAPE, SPLIT_INDEX, AddBias, Array, AttentionFeatures, Binary, Call, CausalBias, Const, Exp,
    Index, IndexExpr, IndexGreater, InnerProduct, IsNegInf, KeyCount, KeyPadding, Lifted, Literal, Load, Psi, Reduce,
    ReduceRows, RepeatKV, RowBroadcast, Scale, Shift, Softcap, Sum, Term, Transpose, Var, Where, WindowBias,
    ZeroEmptyRows, free_index_vars, subterms,
)


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
    if isinstance(expr, Lifted):
        return _index_value(expr.outer, env, lengths) * expr.size + _index_value(expr.inner, env, lengths)
    if isinstance(expr, Const):
        return expr.value
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
        extent = term.extent if isinstance(term.extent, int) else self.operands.extents[term.extent]
        for position in range(extent):
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
    on the free indices (the row max and row sum, and with a split key axis each chunk's) is
    kept per binding, O(rows) memory (O(rows x chunks) split).

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
    # A split key axis (split_keys) keeps its chunks' maxima and sums too: O(rows x chunks).
    interpreter = _Interpreter(operands, cached_vars=frozenset(free_vars) | {SPLIT_INDEX})
    out = np.empty(tuple(operands.extents[extent] for extent in shape))
    for position in np.ndindex(out.shape):
        out[position] = interpreter.value(dnf, dict(zip(free_vars, position)))
    return out
