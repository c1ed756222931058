"""RotaryEmbedding (ONNX opset 23): each head row of X turned by its position's angles.

For a row x of head_size D whose first R = rotary_embedding_dim entries rotate (R = D when
the attribute is 0 or absent), with c, s = cos_cache and sin_cache at the row's position
(position_ids[b, t] picks a cache row; without position_ids the caches are [B, S, R/2]):
  x1[i], x2[i] = x[i], x[i + R/2]    (interleaved: x[2i], x[2i + 1])
  y1[i] = c[i] x1[i] - s[i] x2[i];   y2[i] = s[i] x1[i] + c[i] x2[i]
written back where x1 and x2 came from; the entries past R are copied. X is [B, H, S, D],
or [B, S, H * D] with num_heads = H. A position outside the cache stops the model with
MOA_ERR_INDEX_OUT_OF_RANGE (negative ones too: a position has no "from the end").
Each pair is read before either half is written, so the output may overwrite X.
"""
from __future__ import annotations

from moa_edge.lazy import torch

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text

from .contract import EmittedUnit, OpCost, TensorType, operand_bytes

OPS = ("RotaryEmbedding",)
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"RotaryEmbedding": 23}
C_SOURCES: list[str] = []
IN_PLACE = True  # every (x1, x2) pair is read before it is written; caches never share X's shape

_LOCALS = {"b", "h", "t", "i", "p", "cs", "sn", "xr", "yr", "x1", "x2"}
# The ones codegen keeps every tensor's C name clear of (emit refuses a tensor named like the others).
C_LOCALS = frozenset({"b", "h", "t", "i", "p", "cs"})


def infer(node, graph) -> list[TensorType]:
    """Y as X."""
    x = graph.tensors[node.inputs[0]]
    return [TensorType(tuple(x.shape), x.dtype)]


def op_cost(node, graph) -> OpCost:
    """Three flops per element of X (two products and a sum per turned entry)."""
    moved = operand_bytes(node, graph)
    return OpCost(3 * graph.tensors[node.inputs[0]].size, moved.weight_bytes, moved.activation_bytes)


def geometry(node, graph) -> dict:
    """B, S, H, D, R and the X layout ('bhsd' or 'bs(hd)'), checked against the caches."""
    shape = graph.tensors[node.inputs[0]].shape
    cos_shape = graph.tensors[node.inputs[1]].shape
    has_pos = len(node.inputs) > 3 and bool(node.inputs[3])
    if len(shape) == 4:
        B, H, S, D = shape
    elif len(shape) == 3:
        heads = node.attrs.get("num_heads", 0)
        if not heads or shape[2] % heads:
            raise MoaEdgeError(f"RotaryEmbedding node {node.name!r}: 3-D input {node.inputs[0]!r} {list(shape)} "
                               f"needs a num_heads attribute that divides {shape[2]} (given {heads})")
        B, S, H, D = shape[0], shape[1], heads, shape[2] // heads
    else:
        raise MoaEdgeError(f"RotaryEmbedding node {node.name!r}: input {node.inputs[0]!r} has rank {len(shape)}; "
                           f"ONNX allows 3 or 4")
    R = node.attrs.get("rotary_embedding_dim", 0) or D
    if R % 2 or R > D:
        raise MoaEdgeError(f"RotaryEmbedding node {node.name!r}: rotary_embedding_dim {R} must be even and "
                           f"at most the head size {D}")
    want = "[max_position, R/2]" if has_pos else "[B, S, R/2]"
    if (cos_shape[-1] != R // 2 or graph.tensors[node.inputs[2]].shape != cos_shape
            or (not has_pos and tuple(cos_shape) != (B, S, R // 2)) or (has_pos and len(cos_shape) != 2)):
        raise MoaEdgeError(f"RotaryEmbedding node {node.name!r}: caches are {list(cos_shape)} and "
                           f"{list(graph.tensors[node.inputs[2]].shape)}; expected {want} with R/2 = {R // 2}")
    return dict(B=B, S=S, H=H, D=D, R=R, layout="bhsd" if len(shape) == 4 else "bs(hd)",
                positions=cos_shape[0] if has_pos else None)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    g = geometry(node, graph)
    x, cos, sin = inputs[:3]
    pos = inputs[3] if len(inputs) > 3 else None
    B, S, H, D, R = (g[k] for k in "BSHDR")
    rows = x.reshape(B, S, H, D) if g["layout"] == "bs(hd)" else x.permute(0, 2, 1, 3)  # [B, S, H, D]
    if pos is not None:
        if pos.numel() and (pos.min() < 0 or pos.max() >= g["positions"]):
            raise MoaEdgeError(f"RotaryEmbedding node {node.name!r}: a position id is outside [0, {g['positions']})")
        cos, sin = cos[pos.long()], sin[pos.long()]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [B, S, 1, R/2]
    turned = rows[..., :R]
    x1, x2 = (turned[..., 0::2], turned[..., 1::2]) if node.attrs.get("interleaved", 0) else turned.chunk(2, -1)
    y1, y2 = cos * x1 - sin * x2, sin * x1 + cos * x2
    if node.attrs.get("interleaved", 0):
        turned = torch.stack([y1, y2], -1).reshape(turned.shape)
    else:
        turned = torch.cat([y1, y2], -1)
    out = torch.cat([turned, rows[..., R:]], -1)
    return [out.reshape(x.shape) if g["layout"] == "bs(hd)" else out.permute(0, 2, 1, 3).contiguous()]


def emit(node, ctx):
    graph = ctx.graph
    g = geometry(node, graph)
    B, S, H, D, R = (g[k] for k in "BSHDR")
    half = R // 2
    names = [n for n in [*node.inputs, *node.outputs] if n]
    position_ids = (node.inputs[3:4] or [""])[0]
    dtypes.require_dtypes(node, graph, ("int64",), names=[position_ids])
    dtypes.require_dtypes(node, graph, names=[n for n in names if n != position_ids])
    for name in names:
        if ctx.where[name] in _LOCALS:
            raise MoaEdgeError(f"RotaryEmbedding node {node.name!r}: the C name of tensor {name!r} collides "
                               f"with a local of the generated loop; rename the tensor")
    x, cos, sin, out = (ctx.where[n] for n in (*node.inputs[:3], node.outputs[0]))
    interleaved = bool(node.attrs.get("interleaved", 0))
    row = f"((b * {H} + h) * {S} + t) * {D}" if g["layout"] == "bhsd" else f"((b * {S} + t) * {H} + h) * {D}"
    if g["positions"] is not None:
        cache_row = [f"const int64_t p = {ctx.where[node.inputs[3]]}[b * {S} + t];",
                     f"if (MOA_UNLIKELY(p < 0 || p >= {g['positions']})) {{ return MOA_ERR_INDEX_OUT_OF_RANGE; }}"]
        cache_at = f"p * {half}"
    else:
        cache_row, cache_at = [], f"(b * {S} + t) * {half}"
    one, two = ("2 * i", "2 * i + 1") if interleaved else ("i", f"i + {half}")
    head = [f"const float *const xr = {x} + {row};",
            f"float *const yr = {out} + {row};",
            f"for (i = 0; i < {half}; i++) {{",
            f"    const float x1 = xr[{one}], x2 = xr[{two}];",
            f"    yr[{one}] = cs[i] * x1 - sn[i] * x2;",
            f"    yr[{two}] = sn[i] * x1 + cs[i] * x2;",
            "}"]
    if R < D:
        head += [f"for (i = {R}; i < {D}; i++) {{", "    yr[i] = xr[i];", "}"]
    position = [*cache_row, f"const float *const cs = {cos} + {cache_at}, *const sn = {sin} + {cache_at};",
                f"for (h = 0; h < {H}; h++) {{", *("    " + line for line in head), "}"]
    lines = [f"    {{ /* {c_comment_text(node.name)}: RotaryEmbedding, {'interleaved' if interleaved else 'half-split'} pairs, "
             f"{R} of {D} dims turned, X as [{g['layout']}] */",
             "        ptrdiff_t b, t, h, i;",
             f"        for (b = 0; b < {B}; b++) {{",
             f"            for (t = 0; t < {S}; t++) {{",
             *("                " + line for line in position),
             "            }", "        }", "    }"]
    return EmittedUnit("\n".join(lines) + "\n")
