"""The attention DNF, derived by psi-reduction from the reference expression.

The start is the reference expression

    Out = softmax(scale * Q (+.x) transpose(K) + bias) (+.x) V

written as a small tree of array operations, with softmax spelled out in the paper's steps
(I shift, II exp, III sum, IV normalise; moa-attention-paper.md, section 3); psi-reduction
turns it into the Denotational Normal Form, one scalar expression for Out[b,h,i,q].

Operands: Q (B,Hq,Sq,D), K (B,Hkv,Skv,D), V (B,Hkv,Skv,Dv), and an optional mask M that
broadcasts to (B,Hq,Sq,Skv). Semantics follow ONNX Attention (onnx 1.23): softcap is applied
before the bias; a bool mask keeps a key where True and adds `mask_fill` where False; causal
is top-left aligned (key k is hidden from query i iff k > i); query head h reads key/value
head h // G; a row whose every key is hidden by a -inf bias gives 0.

Modules, each importing only those above it in this list:
  terms      the term languages (index expressions, array expressions, scalar terms),
             AttentionFeatures and the reference expression
  printing   the MoA notation of terms: format_index, format_array, format_term
  rules      the psi-reduction rules (RULES), the driver (derive, derive_term, score_term,
             value_term), its record (Step, Derivation) and format_derivation
  interpret  the float64 interpreters: evaluate_array, evaluate_term, evaluate_dnf
  split      the split-K (flash-decoding) rewrite of Out's key axis: split_keys
"""
from .interpret import evaluate_array, evaluate_dnf, evaluate_term
from .printing import format_array, format_index, format_term
from .rules import (
    RULES, Derivation, Step, derive, derive_term, format_derivation, psi_causal, psi_elementwise, psi_empty_row,
    psi_inner_product, psi_key_padding, psi_load, psi_mask, psi_reduce, psi_repeat_kv, psi_row_broadcast, psi_scalar,
    psi_softcap, psi_transpose, psi_window, score_term, value_term,
)
from .split import CHUNK_KEY_INDEX, split_keys
from .terms import (
    FREE_INDEX_NAMES, MASK_KINDS, OPERAND_SHAPES, OUT_INDEX_NAMES, OUT_SHAPE, SPLIT_INDEX, AddBias, Array,
    AttentionFeatures, Binary, Call, CausalBias, Const, Exp, FloorDiv, Index, IndexExpr, IndexGreater, InnerProduct,
    IsNegInf, KeyCount, KeyPadding, Lifted, Literal, Load, Psi, Reduce, ReduceRows, RepeatKV, RowBroadcast, Scale, Shift,
    Softcap, Sum, Term, Transpose, Var, Where, WindowBias, ZeroEmptyRows, free_index_vars, index_vars,
    reference_definitions, reference_expression, substitute_index, subterms,
)

__all__ = [
    "CHUNK_KEY_INDEX", "FREE_INDEX_NAMES", "MASK_KINDS", "OPERAND_SHAPES", "OUT_INDEX_NAMES", "OUT_SHAPE", "RULES",
    "SPLIT_INDEX", "AddBias", "Array", "AttentionFeatures", "Binary", "Call", "CausalBias", "Const", "Derivation", "Exp",
    "FloorDiv", "Index", "IndexExpr", "IndexGreater", "InnerProduct", "IsNegInf", "KeyCount", "KeyPadding", "Lifted",
    "Literal", "Load", "Psi", "Reduce", "ReduceRows", "RepeatKV", "RowBroadcast", "Scale", "Shift", "Softcap", "Step",
    "Sum", "Term", "Transpose", "Var", "Where", "WindowBias", "ZeroEmptyRows", "derive", "derive_term", "evaluate_array", "evaluate_dnf",
    "evaluate_term", "format_array", "format_derivation", "format_index", "format_term", "free_index_vars",
    "index_vars", "psi_causal", "psi_elementwise", "psi_empty_row", "psi_inner_product", "psi_key_padding",
    "psi_load", "psi_mask", "psi_reduce", "psi_repeat_kv", "psi_row_broadcast", "psi_scalar", "psi_softcap",
    "psi_transpose", "psi_window", "reference_definitions", "reference_expression", "score_term", "split_keys",
    "substitute_index", "subterms", "value_term",
]
