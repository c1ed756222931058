"""Einsum: out[output labels] = sum over the other labels of the product of the operands, each
read at its labels.

The equation is parsed once, here in Python, into one list of axis labels per operand and one
for the output; the C is a plain loop nest, one output element per iteration of the output's
labels, summing over the contracted labels:

    "bij,bjk->bik"   for b, i, k:  sum = 0;  for j:  sum += A[b, i, j] * B[b, j, k];  out[b, i, k] = sum

with row-major offsets computed from the static shapes. A label repeated within one operand
reads a diagonal (its strides add: "ii->i" reads A[i * (n + 1)]); an axis of extent 1 against a
longer one broadcasts (stride 0); `...` stands for the same trailing run of axes in every operand
that has one, right-aligned as numpy broadcasts; without `->` the output is the ellipsis's axes
then the labels seen exactly once, in ASCII order (the spec's implicit form).

Nothing is blocked or vectorised: a large contraction that is a plain matrix product runs
much slower here than as MatMul (its GEMM kernel), which is acceptable for the small einsums
models carry; rewriting those into MatMul is left for when a model needs it.
"""
from __future__ import annotations

import math

from moa_edge.lazy import torch

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text

from .contract import EmittedUnit, OpCost, TensorType, operand_bytes

OPS = ("Einsum",)
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"Einsum": 28}
C_SOURCES: list[str] = []
_ELLIPSIS_LABELS = [f"_{k}" for k in range(16)]  # C loop index names: e_a.. for letters, e__0.. for ellipsis axes
C_LOCALS = frozenset({"sum", *(f"e_{c}" for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                      *(f"e_{k}" for k in _ELLIPSIS_LABELS)})
# The types the loop computes in: float32 (the runtime's), double, and the integers (which wrap).
_TYPES = ("float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")


def _equation(node) -> str:
    equation = node.attrs.get("equation", "")
    return (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")


def labels(node, ranks: list[int]) -> tuple[list[list[str]], list[str]]:
    """(each operand's axis labels, the output's): letters as written, the axes an ellipsis
    stands for as _0, _1, ... (the last of them being every operand's last ellipsis axis)."""
    equation = _equation(node)

    def refuse(why: str) -> MoaEdgeError:
        return MoaEdgeError(f"Einsum node {node.name!r}: equation {equation!r} {why}")
    left, arrow, right = equation.partition("->")
    terms = left.split(",")
    if len(terms) != len(ranks):
        raise refuse(f"has {len(terms)} operand term(s) for {len(ranks)} input(s)")
    for term in [*terms, right]:
        if not all(c.isascii() and c.isalpha() for c in term.replace("...", "", 1)):
            raise refuse(f"has the term {term!r}; a term is letters with at most one '...'")
    spans = []  # how many axes each operand's ellipsis stands for
    for term, rank in zip(terms, ranks):
        letters = len(term.replace("...", ""))
        if ("..." in term and rank < letters) or ("..." not in term and rank != letters):
            raise refuse(f"has the term {term!r} for an operand of rank {rank}")
        spans.append(rank - letters if "..." in term else 0)
    span = max(spans, default=0)
    if span > len(_ELLIPSIS_LABELS):
        raise refuse(f"has an ellipsis of {span} axes; at most {len(_ELLIPSIS_LABELS)} are supported")

    def expand(term: str, count: int) -> list[str]:
        before, dots, after = term.partition("...")
        return [*before, *(_ELLIPSIS_LABELS[span - count:span] if dots else []), *after]
    operands = [expand(term, count) for term, count in zip(terms, spans)]
    if arrow:
        output = expand(right, span)
        if len(set(output)) != len(output):
            raise refuse("repeats a label in its output")
        missing = [label for label in output if not any(label in o for o in operands)]
        if missing:
            raise refuse(f"has output label(s) {''.join(missing)} that no operand has")
    else:
        seen = [label for o in operands for label in o if not label.startswith("_")]
        output = _ELLIPSIS_LABELS[:span] + sorted(c for c in set(seen) if seen.count(c) == 1)
    return operands, output


def extents(node, graph) -> tuple[list[list[str]], list[str], dict[str, int]]:
    """The labels (see `labels`) and each label's extent: the operands' extents must agree,
    except that 1 broadcasts."""
    shapes = [tuple(graph.tensors[n].shape) for n in node.inputs]
    operands, output = labels(node, [len(s) for s in shapes])
    extent: dict[str, int] = {}
    for term, shape in zip(operands, shapes):
        for label, n in zip(term, shape):
            if extent.get(label, 1) not in (1, n) and n != 1:
                raise MoaEdgeError(f"Einsum node {node.name!r}: {_named(label)} has extents {extent[label]} and {n} "
                                   f"in equation {_equation(node)!r}")
            extent[label] = max(extent.get(label, 1), n) if n != 0 else 0
    return operands, output, extent


def _named(label: str) -> str:
    return "an axis of '...'" if label.startswith("_") else f"label {label}"


def infer(node, graph) -> list[TensorType]:
    """The output labels' extents; the operands' type."""
    _, output, extent = extents(node, graph)
    return [TensorType(tuple(extent[label] for label in output), graph.tensors[node.inputs[0]].dtype)]


def op_cost(node, graph) -> OpCost:
    """One multiply per operand after the first and one add, per point of the label space."""
    _, _, extent = extents(node, graph)
    moved = operand_bytes(node, graph)
    return OpCost(math.prod(extent.values()) * len(node.inputs), moved.weight_bytes, moved.activation_bytes)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    return [torch.einsum(_equation(node), *inputs)]


def _index(label: str) -> str:
    return f"e_{label}"


def _offset(term: list[str], shape, extent: dict[str, int]) -> str:
    """The row-major offset of an operand (or the output) read at its labels: a repeated label's
    strides add (a diagonal); an axis of extent 1 adds nothing (it broadcasts or is 0)."""
    strides: dict[str, int] = {}
    for axis, label in enumerate(term):
        if shape[axis] != 1:
            strides[label] = strides.get(label, 0) + math.prod(shape[axis + 1:])
    terms = [_index(label) if s == 1 else f"{_index(label)} * {s}"
             for label, s in strides.items() if extent[label] != 1]
    return " + ".join(terms) or "0"


def _for(label: str, extent: dict[str, int], depth: int) -> str:
    i = _index(label)
    return "    " * depth + f"for ({i} = 0; {i} < {extent[label]}; {i}++) {{"


def emit(node, ctx):
    graph = ctx.graph
    dtypes.require_dtypes(node, graph, allowed=_TYPES)
    operands, output, extent = extents(node, graph)
    out = node.outputs[0]
    ctype = dtypes.dtype(graph.tensors[out].dtype).c_type
    summed = [label for label in dict.fromkeys(label for term in operands for label in term) if label not in output]
    # Labels of extent 1 have only index 0: no loop, no offset term.
    outer = [label for label in output if extent[label] != 1]
    inner = [label for label in summed if extent[label] != 1]
    reads = [f"{ctx.where[name]}[{_offset(term, graph.tensors[name].shape, extent)}]"
             for name, term in zip(node.inputs, operands)]
    over = f", summing over {', '.join(_named(label) for label in summed)}" if summed else ""
    lines = [f"    {{ /* {c_comment_text(node.name)}: Einsum {c_comment_text(_equation(node))}{over} */"]
    if outer or inner:
        lines.append(f"        ptrdiff_t {', '.join(_index(label) for label in outer + inner)};")
    depth = 2
    for label in outer:
        lines.append(_for(label, extent, depth))
        depth += 1
    # Integers add and multiply in uint64_t, which wraps (signed overflow would be undefined).
    wrapping = not dtypes.dtype(graph.tensors[out].dtype).is_float
    accumulator = "uint64_t" if wrapping else ctype
    terms = [f"(uint64_t){r}" for r in reads] if wrapping else reads
    lines.append("    " * depth + f"{accumulator} sum = 0;")
    for k, label in enumerate(inner):
        lines.append(_for(label, extent, depth + k))
    lines.append("    " * (depth + len(inner)) + f"sum += {' * '.join(terms)};")
    lines += ["    " * (depth + k) + "}" for k in reversed(range(len(inner)))]
    stored = f"({ctype})sum" if wrapping else "sum"
    lines.append("    " * depth + f"{ctx.where[out]}[{_offset(output, graph.tensors[out].shape, extent)}] = {stored};")
    lines += ["    " * k + "}" for k in reversed(range(2, depth))]
    lines.append("    }")
    return EmittedUnit("\n".join(lines) + "\n")
