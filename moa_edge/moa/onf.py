"""ONF lowering: the attention DNF as a C loop nest over lifted axes.

Dimension lifting splits the query axis i into (ib, ii) with i = ib*Br + ii and the key
axis k into (kb, kk) with k = kb*Bc + kk (the paper's N -> Pi # (N / Pi)). Every operand
is read through its access map, so gamma is folded into the index arithmetic as
compile-time constants: the kernel reads Q, K, V and the mask where they are stored.

Two softmax schedules, both exact rewrites of the DNF
    s[i,k]   = scale * red_+_j Q[i,j] K[k,j]  (softcap)  + bias[i,k]
    Out[i,q] = red_+_k exp(s[i,k] - max_k s[i,k]) V[k,q] / red_+_k exp(s[i,k] - max_k s[i,k])
  * "two_pass": the paper's row form: scores of Br rows into Br x Skv scratch, then the
    max, then exp and sum, then the output (O(Br * Skv) scratch);
  * "online": per Br x Bc tile keep the running max m, normaliser l and accumulator acc,
    rescaling by exp(m_old - m_new) (O(Br * (Bc + Dv)) scratch, independent of Skv).

In float, when Q, K, V and the output are read row by row (each row contiguous, rows at a
constant stride: every layout attention produces), the inner loops are calls to the SIMD
micro-kernels of c_runtime's moa/attention.h: the Br x Bc score tile (Q K^T, or Q times K^T
stored as such), the row max, exp in place with its sum, the rescale, and the P V update as
a small GEMM tile. What the DNF adds to Q.K (softcap, mask, causal, window, key lengths) is
printed as one pass over the tile with the reduction replaced by the tile's value. Other
layouts, and the double build that proves the lowering exact, print the whole DNF term.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import math
import re

from moa_edge.ir import dtypes

from . import dnf
from .layout import Layout

STRATEGIES = ("online", "two_pass")


@dataclass(frozen=True)
class Schedule:
    strategy: str
    block_q: int  # Br: query rows per tile
    block_k: int  # Bc: keys per tile

    def __post_init__(self):
        assert self.strategy in STRATEGIES and self.block_q >= 1 and self.block_k >= 1


@dataclass(frozen=True)
class Scratch:
    """Scratch regions of one kernel call, in elements, in the order they sit in memory."""
    regions: tuple[tuple[str, int], ...]

    @property
    def elements(self) -> int:
        return sum(n for _, n in self.regions)


def scratch_layout(spec, schedule: Schedule) -> Scratch:
    br = min(schedule.block_q, spec.q_len)
    bc = min(schedule.block_k, spec.kv_len)
    if schedule.strategy == "online":
        return Scratch((("s", br * bc), ("m", br), ("l", br), ("alpha", br), ("acc", br * spec.value_dim)))
    return Scratch((("s", br * spec.kv_len), ("m", br), ("l", br)))


def scratch_bytes(spec, schedule: Schedule, elem_bytes: int = dtypes.COMPUTE_DTYPE.itemsize) -> int:
    """Bytes of the block's scratch; its elements are of the compute type (the spec names no type yet)."""
    return scratch_layout(spec, schedule).elements * elem_bytes


# --- index arithmetic ----------------------------------------------------------------

def _gamma(layout: Layout, *index: str) -> str:
    """C expression for layout's offset at a symbolic index; zero strides vanish."""
    divisors = getattr(layout, "divisors", None) or (1,) * len(layout.shape)
    terms = [str(layout.offset)] if layout.offset else []
    for var, stride, div, extent in zip(index, layout.strides, divisors, layout.shape):
        if stride == 0 or extent == 1 or var == "0":
            continue
        if any(c in var for c in " +-*"):
            var = f"({var})"
        v = f"({var} / {div})" if div != 1 else var
        terms.append(v if stride == 1 else f"{v} * {stride}")
    return " + ".join(terms) or "0"


def _kv_head(spec) -> str:  # the value load's head index, as the DNF's psi-repeat-kv gives it
    group = spec.q_heads // spec.kv_heads
    return "h" if group == 1 else f"(h / {group})"


# --- C emission ------------------------------------------------------------------------

def output_over_q(spec) -> bool:
    """Y may be written over Q (FlashAttention's O over Q): element (b, h, i, d) of both at
    one address, and every schedule here reads a row block's Q rows (for all its key tiles)
    before it writes those rows of Y, rows no other block reads. Not with a second scores
    output: its kernel reads Q again after this one."""
    return spec.q == spec.y and spec.qk_mode < 0


def emit_kernel(spec, schedule: Schedule, name: str, real: str = "float", micro_kernels: bool = True) -> str:
    """A C function `moa_status name(Q, K, V, M, Y, scratch)` computing the block; its inner
    loops call moa/attention.h's micro-kernels when `micro_kernels` and rows_of(spec) allow."""
    exp = "expf" if real == "float" else "exp"
    tanh = "tanhf" if real == "float" else "tanh"
    suffix = "f" if real == "float" else ""
    br = min(schedule.block_q, spec.q_len)
    bc = min(schedule.block_k, spec.kv_len)
    scratch = scratch_layout(spec, schedule)
    mask_type = {"float": "float", "bool": "uint8_t"}.get(spec.mask_kind, "void")
    L = []
    w = L.append

    w(f"/* {name}: ONF of one attention block ({schedule.strategy} softmax).\n"
      f" * Q[{spec.batch},{spec.q_heads},{spec.q_len},{spec.head_dim}] K,V[{spec.batch},{spec.kv_heads},"
      f"{spec.kv_len},{spec.head_dim}|{spec.value_dim}] -> Y[{spec.batch},{spec.q_heads},{spec.q_len},{spec.value_dim}]\n"
      f" * lifted: i = ib*{br} + ii, k = kb*{bc} + kk; scratch {scratch.elements} x {real}: "
      + ", ".join(f"{r}[{n}]" for r, n in scratch.regions) + " */")
    lengths = f", const {getattr(spec, 'lengths_ctype', 'int64_t')} *restrict L" if getattr(spec, "kv_lengths", False) else ""
    shared = "" if output_over_q(spec) else "restrict "  # Y may be Q's storage
    w(f"moa_status {name}(const {real} *{shared}Q, const {real} *restrict K, const {real} *restrict V,\n"
      f"    const {mask_type} *restrict M, {real} *{shared}Y, {real} *restrict scratch{lengths})")
    w("{")
    offset = 0
    for region, n in scratch.regions:
        w(f"    {real} *const {region} = scratch + {offset};")
        offset += n
    if any(region == "alpha" for region, _ in scratch.regions):
        w("    (void)alpha; /* the micro-kernel form's per-row rescale factors */")
    w("    ptrdiff_t b, h, ib; /* 64-bit on 64-bit targets: offsets past 2^31 stay defined */")
    if spec.mask_kind == "none":
        w("    (void)M;")
    w(f"    for (b = 0; b < {spec.batch}; b++) {{")
    w(f"    for (h = 0; h < {spec.q_heads}; h++) {{")
    w(f"    for (ib = 0; ib < {spec.q_len}; ib += {br}) {{")
    w(f"        const ptrdiff_t rows = {spec.q_len} - ib < {br} ? {spec.q_len} - ib : {br};")
    # Causal: keys past the tile's last row are hidden for every row of the tile.
    # Keys past kv_end are hidden for every row of the tile: causal, or past a batch's valid length.
    limit = f"(ptrdiff_t)L[b] < {spec.kv_len} ? (ptrdiff_t)L[b] : {spec.kv_len}" if getattr(spec, "kv_lengths", False) \
        else str(spec.kv_len)
    w(f"        const ptrdiff_t kv_limit = {limit};")
    if spec.is_causal:
        last = "ib + rows" + (f" + {spec.causal_offset}" if spec.causal_offset else "") + \
            (" + (ptrdiff_t)L[b]" if getattr(spec, "kv_lengths", False) else "")
        w(f"        const ptrdiff_t kv_end = {last} < 0 ? 0 : ({last} < kv_limit ? {last} : kv_limit);")
    else:
        w("        const ptrdiff_t kv_end = kv_limit < 0 ? 0 : kv_limit;")
    rows_form = rows_of(spec) if micro_kernels and real == "float" else None
    if rows_form is not None:
        w("        ptrdiff_t ii, kb, kk;")
        w("        (void)kk;")
        tile = _TileEmitter(spec, rows_form, real, {"exp": exp, "tanh": tanh}, suffix)
        (_online_tiles if schedule.strategy == "online" else _two_pass_tiles)(spec, bc, tile, w)
    else:
        w("        ptrdiff_t ii, kb, kk, j, q;")
        score = _score_lines(spec, real, exp, tanh, suffix)
        if schedule.strategy == "online":
            _online_body(spec, bc, real, exp, suffix, score, w)
        else:
            _two_pass_body(spec, bc, real, exp, suffix, score, w)
    w("    }\n    }\n    }")
    w("    return MOA_OK;")
    w("}")
    return "\n".join(L) + "\n"


def features_of(spec) -> dnf.AttentionFeatures:
    return dnf.AttentionFeatures(scale=spec.scale, causal=spec.is_causal, causal_offset=spec.causal_offset,
                                 kv_lengths=getattr(spec, "kv_lengths", False),
                                 window_start=getattr(spec, "window_start", None), mask=spec.mask_kind,
                                 mask_fill=spec.mask_fill, softcap=spec.softcap,
                                 group=spec.q_heads // spec.kv_heads)


def _score_lines(spec, real, exp, tanh, suffix) -> list[str]:
    """Statements assigning `sc`, the biased score s(b, h, i, k): the DNF's score term
    printed as C, each Load through its operand's access map (gamma folded in)."""
    term = dnf.score_term(dnf.derive(features_of(spec)))
    printer = _CPrinter(spec, real, {"exp": exp, "tanh": tanh}, suffix)
    return [f"{real} sc;"] + printer.assign("sc", term)


class _CPrinter:
    """Prints DNF scalar terms as C. Reductions become loops into temporaries; a Where
    whose branches hold reductions becomes if/else, so hidden keys cost nothing."""

    def __init__(self, spec, real, functions, suffix):
        self.spec, self.real, self.functions, self.suffix = spec, real, functions, suffix
        self.extents = {"D": spec.head_dim, "Dv": spec.value_dim, "Skv": spec.kv_len, "Sq": spec.q_len}
        self.layouts = {"Q": spec.q, "K": spec.k, "V": spec.v, "M": spec.mask}
        self.temps = 0
        self.tile = "s[ii * ld + kk]"  # what a TileScore prints as

    def assign(self, target: str, term) -> list[str]:
        if isinstance(term, dnf.Where) and self._has_reduce(term):
            lines = [f"if ({self.expr(term.cond, [])}) {{"]
            lines += ["    " + ln for ln in self.assign(target, term.then)]
            lines.append("} else {")
            lines += ["    " + ln for ln in self.assign(target, term.otherwise)]
            return lines + ["}"]
        pre: list[str] = []
        value = self.expr(term, pre)
        return pre + [f"{target} = {value};"]

    def _has_reduce(self, term) -> bool:
        return any(isinstance(t, dnf.Reduce) for t in dnf.subterms(term))

    def expr(self, term, pre: list[str]) -> str:
        if isinstance(term, TileScore):
            return self.tile
        if isinstance(term, dnf.Literal):
            return _c_real(term.value, self.suffix)
        if isinstance(term, dnf.Load):
            index = [self._index(ix) for ix in term.index]
            return f"{term.array}[{_gamma(self.layouts[term.array], *index)}]"
        if isinstance(term, dnf.Binary):
            return f"({self.expr(term.left, pre)} {term.op} {self.expr(term.right, pre)})"
        if isinstance(term, dnf.Call):
            return f"{self.functions[term.function]}({self.expr(term.arg, pre)})"
        if isinstance(term, dnf.Where):
            return f"({self.expr(term.cond, pre)} ? {self.expr(term.then, pre)} : {self.expr(term.otherwise, pre)})"
        if isinstance(term, dnf.IndexGreater):
            return f"({self._index(term.left)} > {self._index(term.right)})"
        if isinstance(term, dnf.Reduce) and term.op == "+":
            self.temps += 1
            acc = f"red{self.temps}"
            body_pre: list[str] = []
            body = self.expr(term.body, body_pre)
            pre.append(f"{self.real} {acc} = 0;")
            pre.append(f"for ({term.var} = 0; {term.var} < {self.extents[term.extent]}; {term.var}++) {{")
            pre += ["    " + ln for ln in body_pre]
            pre.append(f"    {acc} += {body};")
            pre.append("}")
            return acc
        raise NotImplementedError(f"no C form for {type(term).__name__} in a score term")

    @staticmethod
    def _index(ix) -> str:
        if isinstance(ix, dnf.FloorDiv):
            return f"({_CPrinter._index(ix.arg)} / {ix.divisor})"
        if isinstance(ix, dnf.Shift):
            return f"({_CPrinter._index(ix.arg)} + {ix.amount})"
        if isinstance(ix, dnf.KeyCount):
            return f"(ptrdiff_t)L[{_CPrinter._index(ix.arg)}]"
        if isinstance(ix, dnf.Sum):
            return f"({_CPrinter._index(ix.left)} + {_CPrinter._index(ix.right)})"
        return ix.name


def emit_scores_kernel(spec, name: str, real: str = "float") -> str:
    """The qk_matmul_output stage, row by row: modes 0-2 are the DNF's score term for fewer
    features (no softcap, no bias), mode 3 the row softmax of the full score."""
    features = {0: dict(softcap=0.0, causal=False, mask="none"), 1: dict(causal=False, mask="none"),
                2: {}, 3: {}}[spec.qk_mode]
    term = dnf.score_term(dnf.derive(dataclasses.replace(features_of(spec), **features)))
    exp = "expf" if real == "float" else "exp"
    printer = _CPrinter(spec, real, {"exp": exp, "tanh": "tanhf" if real == "float" else "tanh"},
                        "f" if real == "float" else "")
    mask_type = {"float": "float", "bool": "uint8_t"}.get(spec.mask_kind, "void")
    skv = spec.kv_len
    L = [f"/* {name}: scores of stage {spec.qk_mode} (0 scaled Q K^T, 1 softcapped, 2 biased, 3 softmax) */",
         f"void {name}(const {real} *restrict Q, const {real} *restrict K, const {mask_type} *restrict M,"
         f" {real} *restrict P" + (f", const {getattr(spec, 'lengths_ctype', 'int64_t')} *restrict L)" if getattr(spec, "kv_lengths", False) else ")"),
         "{", "    ptrdiff_t b, h, i, k, j;", "    (void)M;",
         f"    for (b = 0; b < {spec.batch}; b++) {{", f"    for (h = 0; h < {spec.q_heads}; h++) {{",
         f"    for (i = 0; i < {spec.q_len}; i++) {{",
         f"        {real} *const row = P + ((b * {spec.q_heads} + h) * {spec.q_len} + i) * {skv};",
         f"        for (k = 0; k < {skv}; k++) {{", f"            {real} sc;"]
    L += ["            " + ln for ln in printer.assign("sc", term)]
    L += ["            row[k] = sc;", "        }"]
    if spec.qk_mode == 3:
        L += [f"        {{ {real} m = -INFINITY, l = 0;",
              f"          for (k = 0; k < {skv}; k++) {{ if (!(row[k] <= m)) {{ m = row[k]; }} }}",
              f"          for (k = 0; k < {skv}; k++) {{ row[k] = m == -INFINITY ? 0 : {exp}(row[k] - m); l += row[k]; }}",
              f"          for (k = 0; k < {skv}; k++) {{ if (l > 0) {{ row[k] /= l; }} }} }}"]
    L += ["    }", "    }", "    }", "    (void)j;", "}"]
    return "\n".join(L) + "\n"


def _c_real(x: float, suffix: str) -> str:
    return repr(float(x)) + suffix if math.isfinite(x) else ("INFINITY" if x > 0 else "-INFINITY")


def _score_tile(bc, score, store, w):
    """Opens the key-tile loop (kb) and fills the Br x Bc tile of biased scores; the caller
    closes the loop after its own use of the tile."""
    w(f"        for (kb = 0; kb < kv_end; kb += {bc}) {{")
    w(f"            const ptrdiff_t cols = kv_end - kb < {bc} ? kv_end - kb : {bc};")
    w("            for (ii = 0; ii < rows; ii++) {")
    if any(re.search(r"\bi\b", line) for line in score):  # a single query row folds i away
        w("                const ptrdiff_t i = ib + ii;")
    w("                for (kk = 0; kk < cols; kk++) {")
    w("                    const ptrdiff_t k = kb + kk;")
    for line in list(score) + list(store):
        w("                    " + line)
    w("                }")
    w("            }")


def _online_body(spec, bc, real, exp, suffix, score, w):
    # Row maxima take a NaN score (`!(s <= m)`), so NaN inputs give NaN, never a silent 0.
    dv = spec.value_dim
    kvh = _kv_head(spec)
    w("        for (ii = 0; ii < rows; ii++) {")
    w("            m[ii] = -INFINITY;")
    w("            l[ii] = 0;")
    w(f"            for (q = 0; q < {dv}; q++) {{ acc[ii * {dv} + q] = 0; }}")
    w("        }")
    _score_tile(bc, score, [f"s[ii * {bc} + kk] = sc;"], w)
    w("            for (ii = 0; ii < rows; ii++) {")
    w(f"                {real} m_new = m[ii], rescale;")
    w(f"                for (kk = 0; kk < cols; kk++) {{ if (!(s[ii * {bc} + kk] <= m_new)) {{ m_new = s[ii * {bc} + kk]; }} }}")
    w("                if (m_new == -INFINITY) { continue; } /* every key so far hidden */")
    w(f"                rescale = {exp}(m[ii] - m_new);")
    w("                l[ii] *= rescale;")
    w(f"                for (q = 0; q < {dv}; q++) {{ acc[ii * {dv} + q] *= rescale; }}")
    w("                for (kk = 0; kk < cols; kk++) {")
    w(f"                    const {real} p = {exp}(s[ii * {bc} + kk] - m_new);")
    w(f"                    const {real} *restrict v_row = V + {_gamma(spec.v, 'b', kvh, 'kb + kk', '0')};")
    w("                    l[ii] += p;")
    w(f"                    for (q = 0; q < {dv}; q++) {{ acc[ii * {dv} + q] += p * v_row[{_stride_term(spec.v.strides[3], 'q')}]; }}")
    w("                }")
    w("                m[ii] = m_new;")
    w("            }")
    w("        }")
    w("        for (ii = 0; ii < rows; ii++) {")
    w("            const ptrdiff_t i = ib + ii;")
    w(f"            const {real} inv_l = l[ii] > 0 ? ({real})1 / l[ii] : 0; /* fully hidden row -> 0 */")
    w(f"            {real} *restrict y_row = Y + {_gamma(spec.y, 'b', 'h', 'i', '0')};")
    w(f"            for (q = 0; q < {dv}; q++) {{ y_row[{_stride_term(spec.y.strides[3], 'q')}] = acc[ii * {dv} + q] * inv_l; }}")
    w("        }")


def _two_pass_body(spec, bc, real, exp, suffix, score, w):
    """The paper's row form, lifted: Step I (scores and row max) and Eq. 21 (output) walk
    the key tiles outermost so each K and V tile serves all Br rows while it is in cache."""
    dv, skv = spec.value_dim, spec.kv_len
    kvh = _kv_head(spec)
    w("        for (ii = 0; ii < rows; ii++) { m[ii] = -INFINITY; }")
    _score_tile(bc, score, [f"s[ii * {skv} + k] = sc;", "if (!(sc <= m[ii])) { m[ii] = sc; } /* a NaN score wins, so NaN propagates */"], w)
    w("        }")
    w("        for (ii = 0; ii < rows; ii++) { /* Steps II-III: exponentiate and sum */")
    w(f"            {real} *const row = s + ii * {skv};")
    w("            l[ii] = 0;")
    w("            if (m[ii] == -INFINITY) { continue; } /* every key hidden */")
    w(f"            for (kk = 0; kk < kv_end; kk++) {{ row[kk] = {exp}(row[kk] - m[ii]); l[ii] += row[kk]; }}")
    w("        }")
    w("        for (ii = 0; ii < rows; ii++) {")
    w(f"            {real} *restrict y_row = Y + {_gamma(spec.y, 'b', 'h', 'ib + ii', '0')};")
    w(f"            for (q = 0; q < {dv}; q++) {{ y_row[{_stride_term(spec.y.strides[3], 'q')}] = 0; }}")
    w("        }")
    w(f"        for (kb = 0; kb < kv_end; kb += {bc}) {{ /* Step IV and Eq. 21 */")
    w(f"            const ptrdiff_t cols = kv_end - kb < {bc} ? kv_end - kb : {bc};")
    w("            for (ii = 0; ii < rows; ii++) {")
    w(f"                const {real} *const row = s + ii * {skv};")
    w(f"                {real} *restrict y_row = Y + {_gamma(spec.y, 'b', 'h', 'ib + ii', '0')};")
    w(f"                {real} inv_l;")
    w("                if (l[ii] == 0) { continue; } /* fully hidden row stays 0 */")
    w(f"                inv_l = ({real})1 / l[ii];")
    w("                for (kk = 0; kk < cols; kk++) {")
    w(f"                    const {real} p = row[kb + kk] * inv_l;")
    w(f"                    const {real} *restrict v_row = V + {_gamma(spec.v, 'b', kvh, 'kb + kk', '0')};")
    w(f"                    for (q = 0; q < {dv}; q++) {{ y_row[{_stride_term(spec.y.strides[3], 'q')}] += p * v_row[{_stride_term(spec.v.strides[3], 'q')}]; }}")
    w("                }")
    w("            }")
    w("        }")


def _stride_term(stride: int, var: str) -> str:
    return var if stride == 1 else f"{var} * {stride}"


# --- the micro-kernel form -------------------------------------------------------------

@dataclass(frozen=True)
class TileScore(dnf.Term):
    """The score tile's element (ii, kk) as the score kernel left it: Q.K, scaled when the
    kernel folded the scale in."""


@dataclass(frozen=True)
class Rows:
    """How the micro-kernels read a block: row strides (in elements) of Q, K, V and Y, and
    whether K's rows are keys ("nt": s = Q K^T by dot products) or head dims ("nn": K is
    stored transposed, s = Q (K^T) as a GEMM tile)."""
    q: int
    k: int
    v: int
    y: int
    k_form: str


def _row_stride(layout: Layout, extent_inner: int, transposed: bool = False) -> int | None:
    """The stride between rows of the (row, element) axes 2 and 3 when elements are
    contiguous (axes swapped when `transposed`), else None."""
    row, inner = (3, 2) if transposed else (2, 3)
    if any(layout.axis_divisors()[a] != 1 for a in (2, 3)):
        return None
    if extent_inner > 1 and layout.strides[inner] != 1:
        return None
    return layout.strides[row] if layout.shape[row] > 1 else 0


def rows_of(spec) -> Rows | None:
    q = _row_stride(spec.q, spec.head_dim)
    v = _row_stride(spec.v, spec.value_dim)
    y = _row_stride(spec.y, spec.value_dim)
    k, form = _row_stride(spec.k, spec.head_dim), "nt"
    if k is None:
        k, form = _row_stride(spec.k, spec.kv_len, transposed=True), "nn"
    if None in (q, k, v, y):
        return None
    return Rows(q, k, v, y, form)


def _substitute(term, scale_folded: bool):
    """(term with its Q.K reduction replaced by TileScore, the scale the score kernel
    applies): the kernel computes `scale * Q.K` when the term has that product."""
    found = []

    def sub(t):
        if (scale_folded and isinstance(t, dnf.Binary) and t.op == "*" and isinstance(t.left, dnf.Literal)
                and isinstance(t.right, dnf.Reduce)):
            found.append(t.left.value)
            return TileScore()
        if isinstance(t, dnf.Reduce):
            return TileScore()
        if isinstance(t, dnf.Term) and dataclasses.is_dataclass(t):
            return dataclasses.replace(t, **{f.name: sub(getattr(t, f.name)) for f in dataclasses.fields(t)
                                             if isinstance(getattr(t, f.name), dnf.Term)})
        return t

    out = sub(term)
    assert len(set(found)) <= 1
    return out, (found[0] if found else 1.0)


class _TileEmitter:
    """The score tile of one key block: the kernel call and the DNF's pass over it."""

    def __init__(self, spec, rows: Rows, real, functions, suffix):
        self.spec, self.rows, self.real = spec, rows, real
        term = dnf.score_term(dnf.derive(features_of(spec)))
        self.term, self.scale = _substitute(term, scale_folded=rows.k_form == "nt")
        self.printer = _CPrinter(spec, real, functions, suffix)

    def emit(self, w, ld: int, col0: str, indent: str):
        """Fills s[ii * ld + col0 + kk] for ii < rows, kk < cols, keys kb + kk."""
        spec, rows = self.spec, self.rows
        tile = f"s + {col0}" if col0 != "0" else "s"
        element = f"s[ii * {ld} + {col0} + kk]" if col0 != "0" else f"s[ii * {ld} + kk]"
        q = f"Q + {_gamma(spec.q, 'b', 'h', 'ib', '0')}"
        k = f"K + {_gamma(spec.k, 'b', _kv_head(spec), 'kb', '0')}"
        if rows.k_form == "nt":
            w(f"{indent}moa_attn_scores_f32((size_t)rows, (size_t)cols, {spec.head_dim}, {_c_real(self.scale, 'f')}, "
              f"{q}, {rows.q}, {k}, {rows.k}, {tile}, {ld});")
        else:  # K^T stored: the tile is Q (rows x D) times K^T (D x cols), a GEMM tile from zero
            w(f"{indent}for (ii = 0; ii < rows; ii++) {{ for (kk = 0; kk < cols; kk++) {{ {element} = 0; }} }}")
            w(f"{indent}moa_attn_pv_f32((size_t)rows, {spec.head_dim}, (size_t)cols, {q}, {rows.q}, {k}, {rows.k}, {tile}, {ld});")
        self.printer.tile = element
        hidden, rest = _split_hidden(self.term)
        if not hidden:
            self._pass(w, self.term, element, indent)
            return
        # Keys hidden by index alone (causal, window, key lengths) are affine in (i, k), so a
        # tile hides one iff one of its corners does; a tile no corner hides skips them.
        corners = [(i, k) for i in ("ib", "(ib + rows - 1)") for k in ("kb", "(kb + cols - 1)")]
        tests = " || ".join(self.printer.expr(_rename(cond, {"i": i, "k": k}), [])
                            for cond in hidden for i, k in corners)
        w(f"{indent}if ({tests}) {{ /* some key of the tile is hidden */")
        self._pass(w, self.term, element, indent + "    ")
        if rest == TileScore():
            w(f"{indent}}}")
            return
        w(f"{indent}}} else {{")
        self._pass(w, rest, element, indent + "    ")
        w(f"{indent}}}")

    def _pass(self, w, term, element, indent):
        if term == TileScore():
            return
        pre: list[str] = []
        value = self.printer.expr(term, pre)
        assert not pre
        w(f"{indent}for (ii = 0; ii < rows; ii++) {{ /* the DNF's terms around Q.K: softcap, bias, hidden keys */")
        if re.search(r"\bi\b", value):
            w(f"{indent}    const ptrdiff_t i = ib + ii;")
        w(f"{indent}    for (kk = 0; kk < cols; kk++) {{")
        if re.search(r"\bk\b", value):
            w(f"{indent}        const ptrdiff_t k = kb + kk;")
        w(f"{indent}        {element} = {value};")
        w(f"{indent}    }}")
        w(f"{indent}}}")


def _split_hidden(term):
    """(the index-only conditions hiding a key, the term when none holds): the chain of
    Where(i/k comparison, -inf, ...) the DNF puts around the score, peeled while affine."""
    conditions = []
    while (isinstance(term, dnf.Where) and isinstance(term.cond, dnf.IndexGreater)
           and isinstance(term.then, dnf.Literal) and term.then.value == -math.inf
           and _affine(term.cond.left) and _affine(term.cond.right)):
        conditions.append(term.cond)
        term = term.otherwise
    return conditions, term


def _affine(ix) -> bool:
    if isinstance(ix, dnf.FloorDiv):
        return False
    if isinstance(ix, dnf.Sum):
        return _affine(ix.left) and _affine(ix.right)
    if isinstance(ix, (dnf.Shift, dnf.KeyCount)):
        return isinstance(ix, dnf.KeyCount) or _affine(ix.arg)
    return True


def _rename(cond: dnf.IndexGreater, names: dict) -> dnf.IndexGreater:
    def ren(ix):
        if isinstance(ix, dnf.Index):
            return dnf.Index(names.get(ix.name, ix.name))
        if isinstance(ix, dnf.Sum):
            return dnf.Sum(ren(ix.left), ren(ix.right))
        if isinstance(ix, dnf.KeyCount):
            return ix  # L[b]: b is fixed over the tile
        return dataclasses.replace(ix, arg=ren(ix.arg))
    return dnf.IndexGreater(ren(cond.left), ren(cond.right))


def _online_tiles(spec, bc, tile: _TileEmitter, w):
    dv, rows = spec.value_dim, tile.rows
    v = f"V + {_gamma(spec.v, 'b', _kv_head(spec), 'kb', '0')}"
    w("        for (ii = 0; ii < rows; ii++) {")
    w("            m[ii] = -INFINITY;")
    w("            l[ii] = 0;")
    w(f"            for (kk = 0; kk < {dv}; kk++) {{ acc[ii * {dv} + kk] = 0; }}")
    w("        }")
    w(f"        for (kb = 0; kb < kv_end; kb += {bc}) {{")
    w(f"            const ptrdiff_t cols = kv_end - kb < {bc} ? kv_end - kb : {bc};")
    tile.emit(w, bc, "0", "            ")
    w(f"            moa_attn_softmax_f32((size_t)rows, (size_t)cols, s, {bc}, m, l, alpha); /* p = exp(s - m), m, l */")
    w("            for (ii = 0; ii < rows; ii++) {")
    w("                if (alpha[ii] != 1.0f) { /* the running max moved: rescale what earlier key tiles summed */")
    w(f"                    moa_attn_scale_f32({dv}, alpha[ii], acc + ii * {dv}, acc + ii * {dv});")
    w("                }")
    w("            }")
    w(f"            moa_attn_pv_f32((size_t)rows, (size_t)cols, {dv}, s, {bc}, {v}, {rows.v}, acc, {dv});")
    w("        }")
    w("        for (ii = 0; ii < rows; ii++) {")
    w("            const float inv_l = l[ii] > 0 ? 1.0f / l[ii] : 0; /* fully hidden row -> 0 */")
    w(f"            moa_attn_scale_f32({dv}, inv_l, acc + ii * {dv}, Y + {_gamma(spec.y, 'b', 'h', 'ib + ii', '0')});")
    w("        }")


def _two_pass_tiles(spec, bc, tile: _TileEmitter, w):
    """Scores of all visible keys per key tile, then per row max and exp in place, then
    Y += P V tile by tile (each V tile serves all Br rows), then Y *= 1 / l."""
    dv, skv, rows = spec.value_dim, spec.kv_len, tile.rows
    v = f"V + {_gamma(spec.v, 'b', _kv_head(spec), 'kb', '0')}"
    y_row = f"Y + {_gamma(spec.y, 'b', 'h', 'ib + ii', '0')}"
    w(f"        for (kb = 0; kb < kv_end; kb += {bc}) {{ /* Step I: the scores */")
    w(f"            const ptrdiff_t cols = kv_end - kb < {bc} ? kv_end - kb : {bc};")
    tile.emit(w, skv, "kb", "            ")
    w("        }")
    w("        for (ii = 0; ii < rows; ii++) { /* Steps II-III: max, exponentiate and sum */")
    w(f"            float *const row = s + ii * {skv};")
    w("            m[ii] = moa_attn_max_f32((size_t)kv_end, row);")
    w("            if (m[ii] == -INFINITY) { /* every key hidden: the row adds nothing */")
    w("                l[ii] = 0;")
    w("                for (kk = 0; kk < kv_end; kk++) { row[kk] = 0; }")
    w("            } else {")
    w("                l[ii] = moa_attn_exp_f32((size_t)kv_end, row, m[ii]);")
    w("            }")
    w(f"            for (kk = 0; kk < {dv}; kk++) {{ ({y_row})[kk] = 0; }}")
    w("        }")
    w(f"        for (kb = 0; kb < kv_end; kb += {bc}) {{ /* Step IV and Eq. 21 */")
    w(f"            const ptrdiff_t cols = kv_end - kb < {bc} ? kv_end - kb : {bc};")
    w(f"            moa_attn_pv_f32((size_t)rows, (size_t)cols, {dv}, s + kb, {skv}, {v}, {rows.v}, "
      f"Y + {_gamma(spec.y, 'b', 'h', 'ib', '0')}, {rows.y});")
    w("        }")
    w("        for (ii = 0; ii < rows; ii++) {")
    w("            const float inv_l = l[ii] > 0 ? 1.0f / l[ii] : 0; /* fully hidden row stays 0 */")
    w(f"            moa_attn_scale_f32({dv}, inv_l, {y_row}, {y_row});")
    w("        }")
