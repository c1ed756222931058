"""Fits the polynomial pieces of moa/vmath.h's erf and tanh and prints them as the header's
Horner statements, with the error of a float32 evaluation (numpy, no FMA) on a dense grid; and
the degree-6 2^f on [-1/2, 1/2] of the AVX-512 softmax's exp (src/x86/attention_f32_avx512.c).

    .venv/bin/python tests/fit_vmath.py

Each piece is a Lawson (iteratively reweighted least squares) minimax fit of relative error
in float64 on Chebyshev nodes, rounded to float32. The exhaustive error over every float32
input, in C, is tests/vmath_ulp.c's (run with STEP 1).
"""
import numpy as np
from scipy.special import erf, erfc

f32 = np.float32

# name: (f, 1 - f's 16th-root form (k, Q target), T1, T2, clamp, degrees of the three pieces)
PIECES = {
    "erf": (erf, (1.0, lambda x: erfc(x) ** (-1 / 16)), 0.75, 2.0, 4.0, (6, 10, 6)),
    "tanh": (np.tanh, (2.0, lambda x: (np.exp(2 * x) + 1) ** (1 / 16)), 0.6, 2.25, 9.1, (6, 12, 9)),
}


def minimax(target, var, lo, hi, degree, weight, n=4000, iterations=30):
    x = (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
    a, y, w = np.vander(var(x), degree + 1, increasing=True), target(x), weight(x)
    lawson = np.full(n, 1 / n)
    for _ in range(iterations):
        root = np.sqrt(lawson) * w
        c = np.linalg.lstsq(a * root[:, None], y * root, rcond=None)[0]
        lawson *= np.abs((a @ c - y) * w)
        lawson /= lawson.sum()
    return c.astype(f32)


def horner(c, t):
    r = np.full_like(t, c[-1])
    for ci in c[-2::-1]:
        r = (r * t + ci).astype(f32)
    return r


def fit(name):
    f, (k, q_target), t1, t2, clamp, (da, db, dc) = PIECES[name]
    m, mc = (t1 + t2) / 2, (t2 + clamp) / 2
    if name == "erf":  # erf = x + x R(x^2)
        small = minimax(lambda x: f(x) / x - 1, lambda x: x * x, 1e-4, t1, da, lambda x: x / f(x))
    else:  # tanh = x + x u R(u): tanh's x^3 term is the first correction
        small = minimax(lambda x: (f(x) / x - 1) / (x * x), lambda x: x * x, 1e-4, t1, da, lambda x: x ** 3 / f(x))
    middle = minimax(f, lambda x: x - m, t1, t2, db, lambda x: 1 / f(x))
    q = minimax(q_target, lambda x: x - mc, t2, clamp, dc, lambda x: 1 / q_target(x))
    return (m, mc), (small, middle, q)


def evaluate(name, centres, pieces, x):
    _, (k, _), t1, t2, clamp, _ = PIECES[name]
    (m, mc), (small, middle, q) = centres, pieces
    a = np.minimum(x, f32(clamp))
    u = (a * a).astype(f32)
    r = horner(small, u) if name == "erf" else (u * horner(small, u)).astype(f32)
    lo = (a + (a * r).astype(f32)).astype(f32)
    mid = horner(middle, (a - f32(m)).astype(f32))
    p = horner(q, (a - f32(mc)).astype(f32))
    for _ in range(4):
        p = (p * p).astype(f32)
    hi = (f32(1) - (f32(k) / p).astype(f32)).astype(f32)
    return np.where(a < f32(t1), lo, np.where(a < f32(t2), mid, hi))


def ulp_error(got, want):
    exponent = np.frexp(np.abs(want))[1]
    return np.abs(got.astype(np.float64) - want) / np.ldexp(1.0, np.maximum(exponent - 24, -149))


def statements(var, name, c):
    lines = [f"    float {name} = {float(c[-1]):.9e}f;"]
    lines += [f"    {name} = {name} * {var} {'-' if v < 0 else '+'} {abs(float(v)):.9e}f;" for v in c[-2::-1]]
    return "\n".join(lines)


def fit_exp2(degree=6):
    """2^f = 1 + f P(f) on [-1/2, 1/2], minimax in relative error, the constant exactly 1."""
    c = minimax(lambda f: (np.exp2(f) - 1) / f, lambda f: f, -0.5, 0.5, degree - 1,
                lambda f: f / np.exp2(f), iterations=60)
    return np.concatenate([[f32(1)], c])


if __name__ == "__main__":
    c = fit_exp2()
    f = np.linspace(-0.5, 0.5, 2_000_001)
    rel = np.abs(np.polyval(c[::-1].astype(np.float64), f) / np.exp2(f) - 1)
    print(f"/* exp2: max relative error {rel.max():.3g} (float64 evaluation) */\n{statements('f', 'p', c)}\n")
    for name in PIECES:
        centres, pieces = fit(name)
        x = np.unique(np.linspace(0, PIECES[name][4] + 1, 4_000_001).astype(f32))
        err = ulp_error(evaluate(name, centres, pieces, x), PIECES[name][0](x.astype(np.float64)))
        print(f"/* {name}: m {centres[0]}, mc {centres[1]}; max {err.max():.3f} ulp at {x[np.argmax(err)]} (numpy, no FMA) */")
        for var, piece, c in zip(("u", "t", "s"), ("small", "middle", "q"), pieces):
            print(statements(var, piece, c) + "\n")
