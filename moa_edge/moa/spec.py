"""AttentionSpec: one attention block as the MoA layer sees it: its shapes, the features the
DNF derives around Q.K, and the access map of every operand over its storage."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import dnf
from .layout import Layout
from .mask import MASK_BOOL, MASK_CTYPE


# K's and V's element types: the C type each is read as (None: the compute type, float).
KV_DTYPES = {"float32": None, "int8": "int8_t", "float16": "uint16_t"}  # a half as its bits
# Q's element types likewise: int8 (a QDQ file's integers, with q_scale), or a half (its bits,
# widened exactly as the kernel packs Q's rows; passes/half_attention.py).
Q_DTYPES = {"float32": None, "int8": "int8_t", "float16": "uint16_t", "bfloat16": "uint16_t"}


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
    kv_dtype: str = "float32"  # K and V's element type; "int8": a quantized cache, element (b, g, k, j)
                               # worth KS[b, g, k] * K[b, g, k, j] (and V likewise with VS); "float16":
                               # IEEE halves, each worth its own value, no scale
    k_scale: Layout | None = None  # (B, Hkv, Skv) over the K scales' storage (kv_dtype int8)
    v_scale: Layout | None = None  # (B, Hkv, Skv) over the V scales' storage
    q_dtype: str = "float32"  # Q's element type; "int8": element (b, h, i, j) worth q_scale * Q[b, h, i, j];
                              # "float16", "bfloat16": each worth its own value, no scale
    q_scale: float = 1.0  # (a QDQ file's per-tensor scale, passes/qdq_attention.py)

    def __post_init__(self):
        assert self.kv_dtype in KV_DTYPES, self.kv_dtype
        assert self.q_dtype in Q_DTYPES and (self.q_dtype == "int8" or self.q_scale == 1.0)
        assert (self.kv_dtype == "int8") == (self.k_scale is not None) == (self.v_scale is not None)

    @property
    def kv_ctype(self) -> str | None:
        """K's and V's C element type when it is not the compute type (None: it is)."""
        return KV_DTYPES[self.kv_dtype]

    @property
    def q_ctype(self) -> str | None:
        """Q's C element type when it is not the compute type (None: it is)."""
        return Q_DTYPES[self.q_dtype]

    @property
    def kv_row_bytes(self) -> int:
        """Bytes of one key row and one value row as stored (an int8 row with its float scale)."""
        if self.kv_dtype == "int8":
            return self.head_dim + self.value_dim + 2 * 4
        if self.kv_dtype == "float16":
            return (self.head_dim + self.value_dim) * 2
        return (self.head_dim + self.value_dim) * 4

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
            **({"kv_dtype": self.kv_dtype} if self.kv_dtype != "float32" else {}),
            **({"q_dtype": self.q_dtype} if self.q_dtype != "float32" else {}),
        }
