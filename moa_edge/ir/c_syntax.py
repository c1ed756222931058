"""C identifiers and literals, as the generated C spells them (op emitters and codegen alike).

A model file is untrusted input: every string from it (tensor, node and file names) that reaches
generated C, assembly or build text goes through this module, and nowhere else is escaped:
c_identifier for a name the code uses, c_comment_text inside /* */ (also in weights.S, which the
C preprocessor reads first, so its comments are C comments), c_string_literal inside "".
"""
from __future__ import annotations

import math
import re

import numpy as np

from moa_edge.errors import MoaEdgeError

# Words a C (C89 to C23) or C++ compiler reads as keywords: model.h is also included from C++.
KEYWORDS = frozenset("""
    auto break case char const continue default do double else enum extern float for goto if inline int long
    register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while
    alignas alignof bool constexpr false nullptr static_assert thread_local true typeof typeof_unqual
    and and_eq asm bitand bitor catch char8_t char16_t char32_t class compl concept consteval constinit
    const_cast co_await co_return co_yield decltype delete dynamic_cast explicit export friend mutable namespace
    new noexcept not not_eq operator or or_eq private protected public reinterpret_cast requires
    static_cast template this throw try typeid typename using virtual wchar_t xor xor_eq
""".split())

_MATH = """acos acosh asin asinh atan atan2 atanh cbrt ceil copysign cos cosh erf erfc exp exp2 expm1 fabs fdim
    floor fma fmax fmin fmod frexp hypot ilogb ldexp lgamma llrint llround log log10 log1p log2 logb lrint lround
    modf nan nearbyint nextafter nexttoward pow remainder remquo rint round scalbln scalbn sin sinh sqrt tan tanh
    tgamma trunc""".split()
# Names the generated files or the headers they include (math, stddef, stdint, stdio, stdlib, time,
# string) declare, or that compilers predefine: a parameter or macro of that name would shadow or
# break them.
LIBRARY_NAMES = frozenset([*(m + suffix for m in _MATH for suffix in ("", "f", "l")), *"""
    main NULL size_t ptrdiff_t offsetof max_align_t wchar_t errno
    int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t intptr_t uintptr_t intmax_t uintmax_t
    INFINITY NAN HUGE_VAL HUGE_VALF HUGE_VALL FP_NAN FP_INFINITE FP_ZERO FP_NORMAL FP_SUBNORMAL
    M_PI M_E EOF BUFSIZ FILENAME_MAX stdin stdout stderr FILE fpos_t EXIT_SUCCESS EXIT_FAILURE RAND_MAX
    MB_CUR_MAX CLOCKS_PER_SEC CLOCK_MONOTONIC CLOCK_REALTIME clock_t time_t timespec
    printf fprintf sprintf snprintf fopen fclose fread fwrite fgetc fgets sscanf getenv atoi abs labs malloc
    calloc realloc free exit abort memcpy memmove memset memcmp strlen clock_gettime
    linux unix i386 restrict inline bool true false
""".split()])


def _reserved(ident: str, avoid_prefixes: tuple[str, ...]) -> bool:
    """Not free for a model's name: keywords, the library's and compilers' names, what C reserves
    (a leading __ or _ and a capital), and the prefixes of the runtime's and the project's symbols."""
    return (ident in KEYWORDS or ident in LIBRARY_NAMES or ident.startswith("__")
            or re.match(r"_[A-Z]", ident) is not None
            or any(ident.lower().startswith(p.lower()) for p in avoid_prefixes))


def c_identifier(name: str, taken: set[str], avoid_prefixes: tuple[str, ...] = ("moa_",),
                 distinct_upper: set[str] | None = None) -> str:
    """A C identifier for `name`, made only of [A-Za-z0-9_], new to `taken` (which it joins), never
    a keyword or reserved name nor starting with one of avoid_prefixes (compared ignoring case);
    given distinct_upper, new to it also in capitals (the name also spells macros in capitals)."""
    # At most 63 characters: what C99 promises to tell apart (the prefix and _1 come on top).
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name)[:63] or "t"
    if ident[0].isdigit() or _reserved(ident, avoid_prefixes):
        ident = "t_" + ident
    base, k = ident, 1
    while ident in taken or (distinct_upper is not None and ident.upper() in distinct_upper):
        ident = f"{base}_{k}"
        k += 1
    taken.add(ident)
    if distinct_upper is not None:
        distinct_upper.add(ident.upper())
    return ident


def check_prefix(prefix: str) -> str:
    """The project's symbol prefix (<prefix>_run, <PREFIX>_ARENA_BYTES): a plain C identifier that
    is no keyword and cannot collide with the runtime's moa_ and MOA_ names."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise MoaEdgeError(f"--prefix {prefix!r} is not a C identifier")
    if prefix.lower() == "moa" or prefix.lower().startswith("moa_"):
        raise MoaEdgeError(f"--prefix {prefix!r} would collide with the runtime's moa_ and MOA_ names; "
                           "choose another")
    if prefix in KEYWORDS or prefix in LIBRARY_NAMES or prefix.startswith("_"):
        raise MoaEdgeError(f"--prefix {prefix!r} is a C keyword or a reserved name; choose another")
    return prefix


COMMENT_LIMIT = 80


def c_comment_text(text: str, limit: int = COMMENT_LIMIT) -> str:
    """`text` made harmless inside a /* */ comment: printable ASCII only (anything else, and a
    backslash, becomes _), so no newline or line splice; no ?? (a trigraph under -std=c99); a space
    between any two of * and / (no */ to end the comment early, no /* for -Wcomment); at most
    `limit` characters, then "..."."""
    text = "".join(c if " " <= c <= "~" and c != "\\" else "_" for c in str(text))
    text = re.sub(r"\?{2,}", "?", text)
    if len(text) > limit:
        text = text[:limit] + "..."
    return re.sub(r"(?<=[*/])(?=[*/])", " ", text)


def c_string_literal(text: str) -> str:
    """`text` as a C string literal with the same bytes (UTF-8): printable ASCII as itself except
    backslash, quote and ? (trigraphs), everything else as a three-digit octal escape."""
    out = []
    for byte in str(text).encode("utf-8", "surrogatepass"):
        c = chr(byte)
        out.append("\\" + c if c in '\\"?' else c if " " <= c <= "~" else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def c_real(x: float, suffix: str) -> str:
    """A decimal literal that reads back as the same double (repr), with `suffix` ("f" for float,
    "" for double); math.h names for the infinities. The ONF kernels print in either type."""
    return repr(float(x)) + suffix if math.isfinite(x) else ("INFINITY" if x > 0 else "-INFINITY")


def c_float(x: float) -> str:
    """Exact C99 literal for a float32 value (hex float), with math.h names for inf and nan."""
    x = float(np.float32(x))
    if math.isnan(x):
        return "NAN"
    if math.isinf(x):
        return "INFINITY" if x > 0 else "-INFINITY"
    return x.hex() + "f"


def c_float_short(x: float) -> str:
    """A float32 literal as short as reads back as the same float32 (1.0f, 0.5f, 1e-10f); c_float
    for inf and nan."""
    x = np.float32(x)
    if not np.isfinite(x):
        return c_float(float(x))
    text = str(x)
    return text + ("f" if "." in text or "e" in text else ".0f")
