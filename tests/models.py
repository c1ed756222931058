"""Attention models for the tests, made the way users make them: torch.onnx.export
(dynamo, opset 18 decomposes SDPA, opset 23 emits the Attention op), plus hand-built
ONNX Attention nodes for what the exporter does not emit (3-D inputs, Dv != D).
Expected outputs never come from moa-edge: PyTorch float64 or the ONNX reference."""
from __future__ import annotations

from dataclasses import dataclass, field
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Case:
    name: str
    form: str            # "op23" | "sdpa18" | "onnx3d"
    batch: int = 1
    q_heads: int = 2
    kv_heads: int = 2
    q_len: int = 8
    kv_len: int = 8
    head_dim: int = 16
    value_dim: int | None = None
    causal: bool = False
    mask: str = "none"    # none | float | bool | const_float
    mask_shape: tuple = field(default=())  # default (Sq, Skv)

    @property
    def dv(self):
        return self.value_dim or self.head_dim


class _SDPA(torch.nn.Module):
    def __init__(self, case: Case, const_mask=None):
        super().__init__()
        self.case = case
        if const_mask is not None:
            self.register_buffer("const_mask", const_mask)
        else:
            self.const_mask = None

    def forward(self, q, k, v, *mask):
        m = mask[0] if mask else self.const_mask
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=self.case.causal,
                                              enable_gqa=self.case.q_heads != self.case.kv_heads)


def case_inputs(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    B, Hq, Hkv, Sq, Skv, D, Dv = case.batch, case.q_heads, case.kv_heads, case.q_len, case.kv_len, case.head_dim, case.dv
    if case.form == "onnx3d":
        x = {"q": rng.standard_normal((B, Sq, Hq * D)), "k": rng.standard_normal((B, Skv, Hkv * D)),
             "v": rng.standard_normal((B, Skv, Hkv * Dv))}
    else:
        x = {"q": rng.standard_normal((B, Hq, Sq, D)), "k": rng.standard_normal((B, Hkv, Skv, D)),
             "v": rng.standard_normal((B, Hkv, Skv, Dv))}
    x = {k: v.astype(np.float32) for k, v in x.items()}
    mshape = case.mask_shape or (Sq, Skv)
    if case.mask == "float":
        x["m"] = (rng.standard_normal(mshape) * 2).astype(np.float32)
    elif case.mask == "bool":
        keep = rng.random(mshape) < 0.7
        keep[..., 0] = True  # padding masks keep at least one key per row
        x["m"] = keep
    return x


def _const_mask(case: Case) -> torch.Tensor:
    rng = np.random.default_rng(123)
    return torch.from_numpy(rng.standard_normal(case.mask_shape or (case.q_len, case.kv_len)).astype(np.float32))


def export(case: Case, path) -> None:
    """Write the case's ONNX model to path."""
    if case.form == "onnx3d":
        _onnx_attention_3d(case, path)
        return
    inputs = case_inputs(case)
    const = _const_mask(case) if case.mask == "const_float" else None
    args = tuple(torch.from_numpy(inputs[n]) for n in ("q", "k", "v", "m") if n in inputs)
    names = [n for n in ("q", "k", "v", "m") if n in inputs]
    opset = 23 if case.form == "op23" else 18
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_SDPA(case, const), args, str(path), dynamo=True, opset_version=opset,
                          input_names=names, output_names=["y"], verbose=False)


def expected(case: Case, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """PyTorch float64 SDPA on the inputs (the ONNX reference evaluator for 3-D Attention nodes)."""
    if case.form == "onnx3d":
        from onnx.reference import ReferenceEvaluator
        model = _onnx_attention_3d_model(case)
        return ReferenceEvaluator(model).run(None, {k: v.astype(np.float64) if v.dtype == np.float32 else v
                                                     for k, v in inputs.items()})[0]
    t = {k: torch.from_numpy(v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in inputs.items()}
    mask = t.get("m")
    if case.mask == "const_float":
        mask = _const_mask(case).double()
    with torch.no_grad():
        y = F.scaled_dot_product_attention(t["q"], t["k"], t["v"], attn_mask=mask, is_causal=case.causal,
                                           enable_gqa=case.q_heads != case.kv_heads)
    return y.numpy()


def _onnx_attention_3d_model(case: Case) -> onnx.ModelProto:
    # The evaluator's expected values are float64; the converted file is float32.
    return _attention_3d(case, TensorProto.DOUBLE)


def _attention_3d(case: Case, dtype) -> onnx.ModelProto:
    B, Sq, Skv, Hq, Hkv, D, Dv = case.batch, case.q_len, case.kv_len, case.q_heads, case.kv_heads, case.head_dim, case.dv
    inputs = [helper.make_tensor_value_info("q", dtype, [B, Sq, Hq * D]),
              helper.make_tensor_value_info("k", dtype, [B, Skv, Hkv * D]),
              helper.make_tensor_value_info("v", dtype, [B, Skv, Hkv * Dv])]
    names = ["q", "k", "v"]
    if case.mask == "bool":
        inputs.append(helper.make_tensor_value_info("m", TensorProto.BOOL, list(case.mask_shape or (Sq, Skv))))
        names.append("m")
    node = helper.make_node("Attention", names, ["y"], is_causal=int(case.causal), q_num_heads=Hq, kv_num_heads=Hkv)
    graph = helper.make_graph([node], case.name, inputs, [helper.make_tensor_value_info("y", dtype, [B, Sq, Hq * Dv])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def _onnx_attention_3d(case: Case, path) -> None:
    onnx.save(_attention_3d(case, TensorProto.FLOAT), str(path))
