"""Attention over half Q, K and V: a float16 (or bfloat16) operand read as the halves themselves
instead of a float32 copy of their values.

A float16 or bfloat16 model computes in float32 (passes/half.py), and a half value reaches the
float32 graph through one exact widening, Cast(to float32) of a half tensor:

    a half input x              x (uint16_t bits at the C API) -> Cast -> x__float32
    a rounding Cast to a half   Cast(to half) -> the half tensor -> Cast -> the float32 tensor

When such a widened tensor is an operand of a detected attention block and only that block reads
it, the block reads the half tensor itself (the Cast is dead and the arena holds no float32 copy):

    K and V (together or neither)  float16: kv_dtype "float16", the `_f16` score and P V micro-kernels
                                   of `--kv-cache fp16` (the same ONF loop nest), which widen each half
                                   exactly in registers as they load it
    Q                              float16 or bfloat16: q_dtype, its rows widened exactly (moa/half.h)
                                   into the kernel's scratch as each row block is packed, as int8 Q is

Every value the kernels compute with is the float32 the Cast would have written (widening is exact),
and the scores, the softmax and every sum stay float32: only where the float32 values come from
changes. Anything else stays on the float path, unchanged: bfloat16 K and V (no `_bf16` kernel
set), a widened tensor the graph reads elsewhere too or outputs, a block that also outputs its
scores (its scores kernel reads float32 Q and K), K or V whose rows are not contiguous as the
`_f16` kernels read them in place, a block already reading int8 or a half cache.
"""
from __future__ import annotations

import dataclasses

from moa_edge.ir import Graph, Node, dtypes
from moa_edge.moa import onf

FLOAT = dtypes.COMPUTE_DTYPE


def _widened_half(graph: Graph, name: str, attention: Node) -> str | None:
    """The half tensor that `name` is the exact float32 widening of (a Cast to float32), when
    only `attention` reads `name`; else None."""
    cast = graph.producer(name)
    if cast is None or cast.op != "Cast" or len(cast.inputs) != 1 or cast.attrs.get("to") != FLOAT.onnx:
        return None
    source = graph.tensors.get(cast.inputs[0])
    if source is None or source.dtype not in dtypes.HALF_DTYPES or graph.tensors[name].dtype != FLOAT.name:
        return None
    if name in graph.outputs or any(r is not attention for r in graph.consumers(name)):
        return None
    return source.name


def read_half_operands(graph: Graph) -> int:
    """Every MoaAttention whose Q, or K and V, are widened halves it alone reads: those read as
    halves (the module's docstring). Returns how many blocks read a half operand."""
    count = 0
    for attention in [n for n in graph.nodes if n.op == "MoaAttention"]:
        spec = attention.attrs["spec"]
        if spec.kv_dtype != "float32" or spec.q_dtype != "float32" or spec.qk_mode >= 0:
            continue
        inputs = list(attention.inputs)
        changed = spec
        halves = [_widened_half(graph, name, attention) for name in inputs[1:3]]
        with_kv = dataclasses.replace(spec, kv_dtype="float16")
        rows = onf.rows_of(with_kv)
        if None not in halves and all(graph.tensors[h].dtype == "float16" for h in halves) and \
                rows.k is not None and rows.v is not None and rows.k_form == "nt":  # the _f16 kernels read rows in place
            inputs[1:3], changed = halves, with_kv
        q_half = _widened_half(graph, inputs[0], attention)
        if q_half is not None and inputs[0] not in inputs[1:3]:  # not a float32 K or V too (a packed QKV)
            inputs[0] = q_half
            changed = dataclasses.replace(changed, q_dtype=graph.tensors[q_half].dtype)
        attention.inputs = inputs
        attention.attrs["spec"] = changed
        count += changed != spec
    return count


__all__ = ["read_half_operands"]
