"""The scalar functions of the element-wise ops that attributes parameterise (activations,
Mod), each its C expression over the operands a, b and its float64 torch reference, both
written from the formula in the ONNX spec. ops/elementwise.py runs them in its loops.

An attribute is a float32 in the model; the C literal and the reference both use that float32
value (LeakyRelu's default alpha 0.01 is 0.00999999977648...)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.ir.c_syntax import c_float_short
from moa_edge.lazy import torch


@dataclass(frozen=True)
class Formula:
    c: Callable[..., str]     # (node, floating) -> C expression over a (and b)
    torch: Callable          # (node, a[, b]) -> float64 (or integer) tensor
    defaults: dict           # attribute -> the spec's default


def _attr(node, formula: "Formula", name: str) -> float:
    return float(np.float32(node.attrs.get(name, formula.defaults[name])))


def _lit(value: float) -> str:
    return f"({c_float_short(value)})"


def _softplus_c(x: str) -> str:
    # log(1 + e^x) without overflow: max(x, 0) + log1p(e^-|x|); NaN stays NaN through log1pf
    return f"(fmaxf({x}, 0.0f) + log1pf(expf(-fabsf({x}))))"


def _f(expr: Callable[[Callable[[str], float]], str], reference, **defaults) -> Formula:
    """A float formula: `expr` builds the C text from an attribute getter, `reference` the tensor."""
    formula: Formula

    def c(node, floating: bool = True) -> str:
        if not floating:
            raise MoaEdgeError(f"{node.op} node {node.name!r}: integer operands are not supported (float32 only)")
        return expr(lambda name: _lit(_attr(node, formula, name)))

    def ref(node, *operands):
        return reference(lambda name: _attr(node, formula, name), *operands)

    formula = Formula(c, ref, defaults)
    return formula


def _softplus(a):
    return torch.logaddexp(a, torch.zeros_like(a))


def _sign_c(node, floating: bool = True) -> str:
    return "(a > 0 ? 1.0f : a < 0 ? -1.0f : a)" if floating else "(a > 0 ? 1 : a < 0 ? -1 : 0)"


def _mod_c(node, floating: bool = True) -> str:
    if floating:  # fmod=0: the remainder takes b's sign (defined for floats from Mod 28)
        return "fmodf(a, b)" if node.attrs.get("fmod", 0) else "moa_fmod_floor(a, b)"
    # fmod=1: C's truncated remainder; 0: the remainder takes the divisor's sign. x % 0 is 0.
    return "moa_imod_trunc(a, b)" if node.attrs.get("fmod", 0) else "moa_imod(a, b)"


def _mod_torch(node, a, b):
    if a.is_floating_point():  # numpy's mod and fmod follow the spec's special cases (inf, 0, NaN)
        pick = np.fmod if node.attrs.get("fmod", 0) else np.mod
        with np.errstate(invalid="ignore", divide="ignore"):
            return torch.from_numpy(pick(*np.broadcast_arrays(a.numpy(), b.numpy())))
    safe = torch.where(b == 0, torch.ones_like(b), b)
    out = torch.fmod(a, safe) if node.attrs.get("fmod", 0) else torch.remainder(a, safe)
    return torch.where(b == 0, torch.zeros_like(out), out)


FORMULAS: dict[str, Formula] = {
    "LeakyRelu": _f(lambda k: f"(a < 0 ? {k('alpha')} * a : a)",
                    lambda k, a: torch.where(a < 0, k("alpha") * a, a), alpha=0.01),
    "Elu": _f(lambda k: f"(a < 0 ? {k('alpha')} * expm1f(a) : a)",
              lambda k, a: torch.where(a < 0, k("alpha") * torch.expm1(a), a), alpha=1.0),
    "Selu": _f(lambda k: f"(a <= 0 ? {k('gamma')} * ({k('alpha')} * expm1f(a)) : {k('gamma')} * a)",
               lambda k, a: k("gamma") * torch.where(a <= 0, k("alpha") * torch.expm1(a), a),
               alpha=1.67326319217681884765625, gamma=1.05070102214813232421875),
    "Celu": _f(lambda k: f"(a > 0 ? a : {k('alpha')} * expm1f(a / {k('alpha')}))",
               lambda k, a: torch.clamp(a, min=0) + torch.clamp(k("alpha") * torch.expm1(a / k("alpha")), max=0),
               alpha=1.0),
    "ThresholdedRelu": _f(lambda k: f"(a > {k('alpha')} ? a : 0.0f)",
                          lambda k, a: torch.where(a > k("alpha"), a, torch.zeros_like(a)), alpha=1.0),
    "HardSigmoid": _f(lambda k: f"moa_clip({k('alpha')} * a + {k('beta')}, 0.0f, 1.0f)",
                      lambda k, a: torch.clamp(k("alpha") * a + k("beta"), 0, 1), alpha=0.2, beta=0.5),
    "HardSwish": _f(lambda k: "(a * moa_clip(a * (1.0f / 6.0f) + 0.5f, 0.0f, 1.0f))",
                    lambda k, a: a * torch.clamp(a / 6 + 0.5, 0, 1)),
    "Shrink": _f(lambda k: f"(a < -{k('lambd')} ? a + {k('bias')} : a > {k('lambd')} ? a - {k('bias')} : 0.0f)",
                 lambda k, a: torch.where(a < -k("lambd"), a + k("bias"),
                                          torch.where(a > k("lambd"), a - k("bias"), torch.zeros_like(a))),
                 lambd=0.5, bias=0.0),
    "Softplus": _f(lambda k: _softplus_c("a"), lambda k, a: _softplus(a)),
    "Softsign": _f(lambda k: "(a / (1.0f + fabsf(a)))", lambda k, a: a / (1 + a.abs())),
    "Mish": _f(lambda k: f"(a * moa_tanh_f32({_softplus_c('a')}))", lambda k, a: a * torch.tanh(_softplus(a))),
    "Swish": _f(lambda k: f"(a * moa_sigmoid({k('alpha')} * a))", lambda k, a: a * torch.sigmoid(k("alpha") * a),
                alpha=1.0),
    # the gate a through Swish, times the value b (same shapes, as the spec says)
    "SwiGLU": _f(lambda k: f"(a * moa_sigmoid({k('alpha')} * a) * b)",
                 lambda k, a, b: a * torch.sigmoid(k("alpha") * a) * b, alpha=1.0),
    "Round": _f(lambda k: "nearbyintf(a)", lambda k, a: torch.round(a)),  # half to even, as the spec
    "Sign": Formula(_sign_c, lambda node, a: torch.sign(a), {}),
    "PRelu": Formula(lambda node, floating=True: "(a < 0 ? a * b : a)",
                     lambda node, a, b: torch.where(a < 0, a * b, a), {}),
    "Mod": Formula(_mod_c, _mod_torch, {"fmod": 0}),
}
