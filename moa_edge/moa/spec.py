"""AttentionSpec: one attention block as the MoA layer sees it: its shapes, the features the
DNF derives around Q.K, and the access map of every operand over its storage."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import dnf
from .layout import Layout
from .mask import MASK_BOOL, MASK_CTYPE


@dataclass(frozen=True)
class AttentionSpec:
    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    value_dim: int
    scale: float
    is_causal: bool
    mask_kind: str
    mask_fill: float  # bias for a False entry of a bool mask
    q: Layout  # (B, Hq, Sq, D) over the Q input's storage
    k: Layout  # (B, Hkv, Skv, D)
    v: Layout  # (B, Hkv, Skv, Dv)
    y: Layout  # (B, Hq, Sq, Dv) over the output's storage
    mask: Layout | None  # broadcast to (B, Hq, Sq, Skv)
    pattern: str = ""
    absorbed: tuple[str, ...] = field(default=())
    softcap: float = 0.0  # softcap * tanh(s / softcap) on the scaled scores, before the bias
    causal_offset: int = 0  # causal: key k hidden from query i when k > i + causal_offset (cached keys)
    kv_lengths: bool = False  # a 5th input L (per batch): only keys k < L[b] are valid, and a
                              # causal diagonal sits at k = i + L[b] + causal_offset (ONNX nonpad_kv_seqlen)
    lengths_ctype: str = "int64_t"  # L's C type: int32_t for onnxruntime's mask_index
    window_start: int | None = None  # a sliding window: key k hidden from query i when k < i + window_start
                                     # (+ L[b] with kv_lengths), ONNX left_window_size
    qk_mode: int = -1  # a second output of the scores (B, Hq, Sq, Skv): 0 scaled Q K^T, 1 after
                       # softcap, 2 after the bias, 3 after softmax (ONNX qk_matmul_output_mode); -1 none

    @property
    def mask_ctype(self) -> str:
        """M's C element type ("void" without a mask: the kernel still takes the pointer)."""
        return MASK_CTYPE[self.mask_kind]

    def features(self) -> dnf.AttentionFeatures:
        """What the DNF derivation needs of this block: the features around Q.K."""
        return dnf.AttentionFeatures(scale=self.scale, causal=self.is_causal, causal_offset=self.causal_offset,
                                     kv_lengths=self.kv_lengths, window_start=self.window_start,
                                     mask=self.mask_kind, mask_fill=self.mask_fill, softcap=self.softcap,
                                     group=self.q_heads // self.kv_heads)

    def describe(self) -> dict:
        return {
            "pattern": self.pattern,
            "shape": {"batch": self.batch, "q_heads": self.q_heads, "kv_heads": self.kv_heads,
                      "q_len": self.q_len, "kv_len": self.kv_len, "head_dim": self.head_dim,
                      "value_dim": self.value_dim},
            "scale": self.scale,
            "is_causal": self.is_causal,
            "causal_offset": self.causal_offset,
            "window_start": self.window_start,
            "softcap": self.softcap,
            "mask": self.mask_kind if self.mask_kind != MASK_BOOL else f"bool (fill {self.mask_fill:g})",
            "absorbed_nodes": list(self.absorbed),
        }
