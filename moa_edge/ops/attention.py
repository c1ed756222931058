"""MoaAttention: one attention block, its operands read through access maps.

Semantics (ONNX Attention, onnx 1.23): Y = softmax(scale * Q K^T + bias) V per head,
bias = mask (float: added; bool: 0 where True, mask_fill where False) plus -inf above
the top-left causal diagonal; query head h reads KV head h // (Hq / Hkv); a row whose
bias is -inf everywhere gives 0.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from moa_edge.lazy import torch

from moa_edge.ir.c_syntax import c_comment_text
from moa_edge.moa import Layout, cost, onf
from moa_edge.moa.mask import MASK_BOOL, MASK_FLOAT
from moa_edge.moa.spec import AttentionSpec

from .contract import EmittedUnit, OpCost, TensorType, check_status
OPS = ("MoaAttention",)
# The loop nest is generated per block (attention.c); its inner loops call the micro-kernels
# of moa/attention.h: the scalar reference and one variant per ISA folder, each compiled to
# nothing unless moa/isa.h selects it for the build's target; and the worker pool (moa/pool.h)
# that name_on lifts the block's items onto.
C_SOURCES: list[str] = ["attention_f32.c", "x86/attention_f32_avx512.c", "x86/attention_f32_avx2.c",
                        "neon/attention_f32_neon.c", "rvv/attention_f32_rvv.c", "helium/attention_f32_helium.c",
                        "pool.c"]


def scratch_bytes(node, graph=None) -> int:
    """Kernel scratch of the node's chosen ONF schedule, one per thread the run may use (its
    items are lifted onto cores) and split-K's partials once; never an Sq x Skv score matrix
    for the online strategy."""
    return onf.scratch_bytes(node.attrs["spec"], node.attrs["schedule"], node.attrs.get("threads", 1))


def in_place_inputs(node, graph) -> list[str]:
    """The arena may give Y the storage of a Q that dies here (FlashAttention's O over Q)."""
    q = node.inputs[0]
    return [q] if onf.output_over_q(node.attrs["spec"]) and q not in node.inputs[1:] else []  # not a packed QKV


def infer(node, graph) -> list[TensorType]:
    """float32 Y (and scores); their shapes are the replaced subgraph's, which spec.y (and the
    scores' row-major (B, Hq, Sq, Skv) order) map onto, so the rule leaves them to the graph."""
    return [TensorType(None, "float32") for _ in node.outputs]


def op_cost(node, graph) -> OpCost:
    """The ONF cost model's prediction for the chosen schedule: its flops and its DRAM bytes."""
    c = node.attrs["cost"]
    return OpCost(c.flops, 0, c.dram_bytes)


def schedule(node, board, scratch_budget=None, forced: "onf.Schedule | None" = None, workers: int = 1) -> None:
    """Pick the ONF schedule with the cost model for runs on up to `workers` threads (which may
    split a decode step's keys) and record the prediction on the node."""
    spec = node.attrs["spec"]
    node.attrs["cost"] = (cost.predict(spec, forced, board) if forced
                          else cost.choose(spec, board, scratch_budget, workers=workers))
    node.attrs["schedule"] = node.attrs["cost"].schedule


# --- torch float64 reference -------------------------------------------------------

def gather(flat: torch.Tensor, lay: Layout) -> torch.Tensor:
    """The tensor a layout describes over flat storage (divisors and broadcasts included)."""
    return flat[torch.from_numpy(lay.offsets())]


def scores_reference(spec: AttentionSpec, q, k, mask, lengths=None) -> torch.Tensor:
    """The qk_matmul_output stage the spec asks for, in float64 (ONNX 1.23 numbering)."""
    q4 = gather(q.reshape(-1), spec.q)
    k4 = gather(k.reshape(-1), spec.k).repeat_interleave(spec.q_heads // spec.kv_heads, dim=1)
    scores = spec.scale * q4 @ k4.transpose(-1, -2)
    if spec.qk_mode >= 1 and spec.softcap:
        scores = spec.softcap * torch.tanh(scores / spec.softcap)
    if spec.qk_mode >= 2:
        scores = scores + _bias(spec, mask, lengths)
    if spec.qk_mode == 3:
        hidden = torch.isneginf(scores).all(dim=-1, keepdim=True)
        scores = torch.where(hidden, 0.0, torch.softmax(scores, dim=-1))
    return scores


def _bias(spec: AttentionSpec, mask, lengths=None) -> torch.Tensor:
    full = (spec.batch, spec.q_heads, spec.q_len, spec.kv_len)
    bias = torch.zeros(full, dtype=torch.float64)
    if spec.mask_kind == MASK_FLOAT:
        bias = bias + gather(mask.reshape(-1), spec.mask)
    elif spec.mask_kind == MASK_BOOL:
        keep = gather(mask.reshape(-1), spec.mask)
        bias = torch.where(keep, bias, torch.tensor(spec.mask_fill, dtype=torch.float64))
    keys, queries = torch.arange(spec.kv_len), torch.arange(spec.q_len)[:, None]
    shift = lengths.reshape(-1, 1, 1, 1) if spec.kv_lengths else 0
    if spec.kv_lengths:
        bias = bias.masked_fill(keys >= shift, -math.inf)
    if spec.is_causal:
        bias = bias.masked_fill(keys > queries + spec.causal_offset + shift, -math.inf)
    if spec.window_start is not None:
        bias = bias.masked_fill(keys < queries + spec.window_start + shift, -math.inf)
    return bias


def reference(spec: AttentionSpec, q, k, v, mask, out_shape, lengths=None) -> torch.Tensor:
    """Evaluate with torch SDPA in float64, reading operands through their access maps."""
    q4 = gather(q.reshape(-1), spec.q)
    k4 = gather(k.reshape(-1), spec.k)
    v4 = gather(v.reshape(-1), spec.v)
    group = spec.q_heads // spec.kv_heads
    k4 = k4.repeat_interleave(group, dim=1)
    v4 = v4.repeat_interleave(group, dim=1)
    bias = _bias(spec, mask, lengths)
    if spec.softcap:
        scores = spec.scale * q4 @ k4.transpose(-1, -2)
        scores = spec.softcap * torch.tanh(scores / spec.softcap) + bias
        y4 = torch.softmax(scores, dim=-1) @ v4
    else:
        y4 = torch.nn.functional.scaled_dot_product_attention(q4, k4, v4, attn_mask=bias, scale=spec.scale)
    fully_masked = torch.isneginf(bias).all(dim=-1, keepdim=True)
    y4 = torch.where(fully_masked, torch.zeros_like(y4), y4)
    out = torch.zeros(int(np.prod(out_shape)), dtype=torch.float64)
    out[torch.from_numpy(spec.y.offsets())] = y4
    return out.reshape(out_shape)


# --- C emission --------------------------------------------------------------------

def dequantized(spec: AttentionSpec, k, v, k_scales, v_scales) -> tuple[AttentionSpec, torch.Tensor, torch.Tensor]:
    """An int8 cache's K and V as float64 (each element times its row's scale), and the spec that
    reads them as row-major float tensors."""
    k4 = gather(k.reshape(-1), spec.k).double() * gather(k_scales.reshape(-1), spec.k_scale).double()[..., None]
    v4 = gather(v.reshape(-1), spec.v).double() * gather(v_scales.reshape(-1), spec.v_scale).double()[..., None]
    return (dataclasses.replace(spec, k=Layout.row_major(k4.shape), v=Layout.row_major(v4.shape), kv_dtype="float32",
                                k_scale=None, v_scale=None), k4, v4)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    """The block's outputs: Y, and the scores of its qk mode when it has a second output."""
    q, k, v, mask, lengths = (inputs + [None] * 5)[:5]
    spec = node.attrs["spec"]
    if spec.q_dtype == "int8":  # a QDQ file's int8 Q: its values, q_scale times the integers
        q, spec = q.double() * spec.q_scale, dataclasses.replace(spec, q_dtype="float32", q_scale=1.0)
    if spec.kv_dtype == "int8":
        spec, k, v = dequantized(spec, k, v, inputs[5], inputs[6])
    outputs = [reference(spec, q, k, v, mask, graph.tensors[node.outputs[0]].shape, lengths)]
    if len(node.outputs) > 1:
        outputs.append(scores_reference(spec, q, k, mask, lengths).reshape(graph.tensors[node.outputs[1]].shape))
    return outputs


def emit_kernel(node, name: str) -> str:
    return onf.emit_kernel(node.attrs["spec"], node.attrs["schedule"], name)


def emit(node, ctx):
    spec, c = node.attrs["spec"], node.attrs["cost"]
    kernel = (f"/* {c_comment_text(node.name)}: {spec.pattern}; absorbed {len(spec.absorbed)} ONNX nodes.\n"
              f" * schedule {c.strategy} Br={c.block_q} Bc={c.block_k}" + (f" S={c.splits}" if c.splits > 1 else "")
              + f"; predicted on {c_comment_text(ctx.board.name)}: "
              f"{c.dram_bytes} B from DRAM, {c.flops} flops, {c.scratch_bytes} B scratch */\n"
              + emit_kernel(node, ctx.name) + "\n" + onf.emit_lifted(spec, node.attrs["schedule"], ctx.name))
    lengths_param = f", const {spec.lengths_ctype} *restrict L" if spec.kv_lengths else ""
    declaration = (f"moa_status {ctx.name}({onf.kernel_parameters(spec)});\n"
                   f"moa_status {ctx.name}_on(moa_pool *pool, {onf.kernel_parameters(spec)});\n")
    q, k, v, mask = (ctx.where[n] if n else "NULL" for n in node.inputs[:4])
    lengths = f", {ctx.where[node.inputs[4]]}" if spec.kv_lengths else ""
    scales = "".join(f", {ctx.where[n]}" for n in node.inputs[5:7])  # an int8 cache's row scales, beside K and V
    call = check_status(f"{ctx.name}_on(pool, {q}, {k}, {v}{scales}, {mask}, {ctx.where[node.outputs[0]]}, "
                        f"{ctx.scratch}{lengths})")
    kernels, declarations = [kernel], [declaration]
    if spec.qk_mode >= 0:  # the scores the graph also outputs: an Sq x Skv tensor it asked for
        scores = f"{ctx.name}_scores"
        kernels.append(onf.emit_scores_kernel(spec, scores))
        declarations.append(f"void {scores}(const float *restrict Q, const float *restrict K, "
                            f"const {spec.mask_ctype} *restrict M, float *restrict P{lengths_param});\n")
        call += f"    {scores}({q}, {k}, {mask}, {ctx.where[node.outputs[1]]}{lengths});\n"
    return EmittedUnit(call, kernels, declarations)
