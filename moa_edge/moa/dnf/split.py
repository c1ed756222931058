"""Split-K (flash-decoding): the DNF of Out with its key axis lifted into chunks.

The key axis k in iota(Skv) is lifted as k = c * C + kk, c in iota(S), kk in iota(C),
C = ceil(Skv / S) (keys past Skv in the last chunk are hidden). Each chunk c reduces only its
own keys, with its own maximum, into a partial (m_c, l_c, acc_c[q]):

    m_c      = red_max_kk s[c*C+kk]
    l_c      = red_+_kk exp(s[c*C+kk] - m_c)
    acc_c[q] = red_+_kk exp(s[c*C+kk] - m_c) V[c*C+kk, q]

and the partials combine exactly, since exp(s - m) = exp(s - m_c) exp(m_c - m):

    m      = red_max_c m_c
    Out[q] = red_+_c acc_c[q] exp(m_c - m)  /  red_+_c l_c exp(m_c - m)

A chunk all of whose keys are hidden (m_c = -inf: past a run-time length L[b], or causal)
adds nothing: its terms are 0, not exp(-inf + inf); a row no chunk sees gives 0, as the
unsplit DNF's empty-row guard does. The ONF (onf.py) splits [0, kv_end) at run time in
whole key tiles; the combination is the same for any partition, which this static one proves.
"""
from __future__ import annotations

import dataclasses
import math

from .rules import Derivation, score_term, value_term
from .terms import (
    OUT_SHAPE, SPLIT_INDEX, Binary, Call, Const, Index, IndexGreater, IsNegInf, Lifted, Literal, Reduce, Term, Where,
    _hygienic, substitute_index,
)

CHUNK_KEY_INDEX = "kk"  # a key's place in its chunk


def _hidden_past(key, kv_len: int, term: Term, value: float) -> Term:
    """term, or `value` for a key past the axis's end (a last chunk longer than what is left)."""
    return Where(IndexGreater(key, Const(kv_len - 1)), Literal(value), term)


def split_keys(derivation: Derivation, splits: int, kv_len: int) -> Derivation:
    """The derivation of Out with its DNF rewritten into `splits` key chunks combined exactly;
    evaluate_dnf gives the unsplit DNF's value (tests/test_dnf.py)."""
    if derivation.shape != OUT_SHAPE:
        raise ValueError(f"split_keys rewrites Out[b,h,i,q], not an array of shape {derivation.shape}")
    if splits < 1 or kv_len < 1:
        raise ValueError(f"cannot split {kv_len} keys into {splits} chunks")
    chunk = math.ceil(kv_len / splits)
    c, kk = Index(SPLIT_INDEX), Index(CHUNK_KEY_INDEX)
    key = Lifted(c, kk, chunk)
    padded = chunk * splits > kv_len

    score = substitute_index(score_term(derivation), "k", key)
    if padded:
        score = _hidden_past(key, kv_len, score, -math.inf)
    chunk_max = Reduce("max", kk.name, chunk, score)
    weight = Where(IsNegInf(chunk_max), Literal(0.0), Call("exp", Binary("-", score, chunk_max)))
    value = substitute_index(value_term(derivation), "p", key)
    weighted_value = Binary("*", weight, value)
    if padded:
        weighted_value = _hidden_past(key, kv_len, weighted_value, 0.0)
    chunk_sum = Reduce("+", kk.name, chunk, weight)
    chunk_acc = Reduce("+", kk.name, chunk, weighted_value)

    row_max = Reduce("max", c.name, splits, chunk_max)
    rebase = Call("exp", Binary("-", chunk_max, row_max))  # exp(m_c - m): 0 for an empty chunk
    numerator = Reduce("+", c.name, splits, Binary("*", chunk_acc, rebase))
    denominator = Reduce("+", c.name, splits, Binary("*", chunk_sum, rebase))
    out = Where(IsNegInf(row_max), Literal(0.0), Binary("/", numerator, denominator))
    # The chunk max sits inside sums over the same kk: renamed, so no index hides another.
    return dataclasses.replace(derivation, dnf=_hygienic(out, frozenset(derivation.free_vars)))
