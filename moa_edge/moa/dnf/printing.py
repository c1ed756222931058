"""The MoA notation of the three term languages, for people reading a derivation.

format_index, format_array and format_term print index expressions, array expressions and
scalar terms as the paper writes them (⍉, +.×, Ω⟨1⟩, ⟨i,k⟩ψA, red_+_j, −∞); an array given a
name in `names` (a step of the reference expression) prints as that name. Printing a
whole derivation (format_derivation) lives with the driver in rules.py, which this module
sits below: the driver names in its error the term no rule applies to.
"""
from __future__ import annotations

import functools
import math

from .terms import (
    AddBias, Array, Binary, Call, CausalBias, Const, Exp, Index, IndexExpr, IndexGreater, InnerProduct, IsNegInf, KeyCount,
    KeyPadding, Lifted, Literal, Load, Psi, Reduce, ReduceRows, RepeatKV, RowBroadcast, Scale, Shift, Softcap, Sum, Term,
    Transpose, Var, Where, WindowBias, ZeroEmptyRows,
)

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
    if isinstance(expr, Lifted):
        return f"{format_index(expr.outer)}·{expr.size}+{format_index(expr.inner)}"
    if isinstance(expr, Const):
        return str(expr.value)
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
