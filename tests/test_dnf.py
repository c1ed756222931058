"""psi-reduction rules, the derived attention DNF and its float64 interpreter.

Expected numbers come only from the paper's tables and row-0 trace (moa-attention-paper.md
section 7) or from PyTorch float64; a rule is checked against the term it rewrites.
"""
import dataclasses
import math

import numpy as np
import pytest
import torch

from moa_edge.moa.dnf import (
    RULES, AddBias, AttentionFeatures, CausalBias, KeyPadding, WindowBias, Exp, FloorDiv, Index, InnerProduct, Lifted, Load,
    Psi, Reduce, ReduceRows, RepeatKV, RowBroadcast, Scale, Softcap, Term, Transpose, Var, ZeroEmptyRows, derive,
    evaluate_array, evaluate_dnf, evaluate_term, format_derivation, free_index_vars, index_vars, psi_inner_product,
    psi_reduce, reference_expression, score_term, split_keys, subterms, value_term,
)

# --- the paper's worked example (section 7) -------------------------------------------

PAPER_Q = [[-0.1984, 0.2698, 0.3414, -0.0372], [0.2547, -1.0674, 0.3460, -2.5242], [0.6822, -0.6265, 0.0252, 0.3978]]
PAPER_K = [[-1.1567, 0.6885, -0.1884, 0.4743], [0.2246, 1.7564, 0.5235, -2.3014], [-1.5899, 0.3730, -0.8257, -1.2069]]
PAPER_V = [[1.0739, 0.4006, -0.9671, 0.4870], [0.5589, -0.7209, -0.7650, 0.2689], [0.8237, 0.3763, 0.8320, 0.0014]]
PAPER_FEATURES = AttentionFeatures(scale=1 / math.sqrt(4))
TABLE_1_WEIGHTS = [[0.3202, 0.3834, 0.2964], [0.0288, 0.7300, 0.2412], [0.4270, 0.2844, 0.2887]]
TABLE_2_OUTPUT = [[0.8023, -0.0366, -0.3563, 0.2595], [0.6376, -0.4240, -0.3857, 0.2107],
                  [0.8552, 0.0747, -0.3903, 0.2848]]
ROW_0_TRACE = {  # the authors' reproduction log, Eqs. 14-21
    "x": [0.16664143, 0.34682553, 0.08953713],
    "z": [-0.1801841, 0, -0.2572884],
    "num": [0.83511645, 1, 0.77314521],
    "Y": [0.32018124, 0.38339712, 0.29642164],
    "Out": [0.80228579, -0.03658291, -0.35632326, 0.25943874],
}
ROW_0_DEN = 2.608261658851098


def paper_operands():
    return [np.array(a).reshape(1, 1, 3, 4) for a in (PAPER_Q, PAPER_K, PAPER_V)]


def test_paper_table_1_weights():
    weights = evaluate_dnf(derive(PAPER_FEATURES, "Y"), *paper_operands())[0, 0]
    np.testing.assert_allclose(weights, TABLE_1_WEIGHTS, rtol=0, atol=1e-4)


def test_paper_table_2_output():
    # Out[0,3] recomputes to 0.25943874 against a printed 0.2595: inside atol 1e-4 (reference notes).
    out = evaluate_dnf(derive(PAPER_FEATURES), *paper_operands())[0, 0]
    np.testing.assert_allclose(out, TABLE_2_OUTPUT, rtol=0, atol=1e-4)


@pytest.mark.parametrize("step", ROW_0_TRACE)
def test_paper_row_0_trace(step):
    # The log prints 8 decimals.
    row = evaluate_dnf(derive(PAPER_FEATURES, step), *paper_operands())[0, 0, 0]
    np.testing.assert_allclose(row, ROW_0_TRACE[step], rtol=0, atol=1e-8)


def test_paper_row_0_denominator():
    den = evaluate_dnf(derive(PAPER_FEATURES, "den"), *paper_operands())[0, 0, 0]
    assert den == pytest.approx(ROW_0_DEN, abs=1e-12)


# --- each rule on its own -----------------------------------------------------------------

Q, K, V, M = Var("Q"), Var("K"), Var("V"), Var("M")
SHARED_KEYS = RepeatKV(K, 2)
QK = InnerProduct(Q, Transpose(SHARED_KEYS))
SCORES = Scale(QK, 0.7)
HIDDEN_SCORES = AddBias(SCORES, M, "bool")  # on rule_operands("bool"), row (0, 1, 2) hides every key
BHIK, BHI = index_vars("b", "h", "i", "k"), index_vars("b", "h", "i")

# (rule, a term it rewrites, the mask operand it reads: "float" or "bool")
RULE_CASES = [
    ("psi-load", Psi(index_vars("b", "h", "i", "j"), Q), "float"),
    ("psi-load", Psi(BHIK, M), "bool"),
    ("psi-transpose", Psi(index_vars("b", "h", "j", "k"), Transpose(SHARED_KEYS)), "float"),
    ("psi-repeat-kv", Psi(index_vars("b", "h", "k", "j"), SHARED_KEYS), "float"),
    ("psi-inner-product", Psi(BHIK, QK), "float"),
    ("psi-inner-product", Psi(index_vars("b", "h", "i", "q"), InnerProduct(Exp(SCORES), RepeatKV(V, 2))), "float"),
    ("psi-scalar", Psi(BHIK, SCORES), "float"),
    ("psi-softcap", Psi(BHIK, Softcap(SCORES, 0.8)), "float"),
    ("psi-mask", Psi(BHIK, AddBias(SCORES, M, "float")), "float"),
    ("psi-mask", Psi(BHIK, HIDDEN_SCORES), "bool"),
    ("psi-mask", Psi(BHIK, AddBias(SCORES, M, "bool", -3.4e38)), "bool"),
    ("psi-causal", Psi(BHIK, CausalBias(SCORES)), "float"),
    ("psi-causal", Psi(BHIK, CausalBias(SCORES, -3, per_batch=True)), "lengths"),
    ("psi-window", Psi(BHIK, WindowBias(SCORES, -1)), "float"),
    ("psi-window", Psi(BHIK, WindowBias(SCORES, -4, per_batch=True)), "lengths"),
    ("psi-key-padding", Psi(BHIK, KeyPadding(SCORES)), "lengths"),
    ("psi-reduce", Psi(BHI, ReduceRows("max", SCORES)), "float"),
    ("psi-reduce", Psi(BHI, ReduceRows("+", SCORES)), "float"),
    ("psi-row-broadcast", Psi(BHIK, RowBroadcast("-", SCORES, ReduceRows("max", SCORES))), "float"),
    ("psi-row-broadcast", Psi(BHIK, RowBroadcast("/", Exp(SCORES), ReduceRows("+", Exp(SCORES)))), "float"),
    ("psi-elementwise", Psi(BHIK, Exp(SCORES)), "float"),
    ("psi-empty-row", Psi(BHIK, ZeroEmptyRows(Exp(HIDDEN_SCORES), ReduceRows("max", HIDDEN_SCORES))), "bool"),
]
RULE_IDS = [f"{rule}-{n}" for n, (rule, _, _) in enumerate(RULE_CASES)]


def rule_operands(mask_kind):
    """B=2, Hq=4 over Hkv=2, Sq=3, Skv=5, D=4, Dv=3."""
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal(shape) for shape in ((2, 4, 3, 4), (2, 2, 5, 4), (2, 2, 5, 3)))
    if mask_kind == "float":
        return q, k, v, rng.standard_normal((2, 4, 3, 5))
    if mask_kind == "lengths":  # valid key counts per batch (nonpad_kv_seqlen)
        return q, k, v, None, np.array([5, 2])
    mask = rng.random((2, 4, 3, 5)) < 0.5
    mask[..., 0] = True
    mask[0, 1, 2] = False
    return q, k, v, mask


def values_over_index(term, index, operands, shape):
    env_names = [e.name for e in index]
    return np.array([evaluate_term(term, dict(zip(env_names, position)), *operands)
                     for position in np.ndindex(shape)]).reshape(shape)


@pytest.mark.parametrize("rule, term, mask_kind", RULE_CASES, ids=RULE_IDS)
def test_rule_preserves_the_value(rule, term, mask_kind):
    operands = rule_operands(mask_kind)
    rewritten = RULES[rule](term)
    assert rewritten is not None and rewritten != term
    assert free_index_vars(rewritten) == free_index_vars(term)
    shape = evaluate_array(term.array, *operands).shape
    before = values_over_index(term, term.index, operands, shape)
    after = values_over_index(rewritten, term.index, operands, shape)
    np.testing.assert_allclose(after, before, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("rule, term, mask_kind", RULE_CASES, ids=RULE_IDS)
def test_only_its_own_rule_applies(rule, term, mask_kind):
    assert [name for name, other in RULES.items() if other(term) is not None] == [rule]


def test_every_rule_has_a_case():
    assert {rule for rule, _, _ in RULE_CASES} == set(RULES)


def test_psi_repeat_kv_divides_the_head_index():
    term = Psi(index_vars("b", "h", "k", "j"), SHARED_KEYS)
    assert RULES["psi-repeat-kv"](term) == Psi((Index("b"), FloorDiv(Index("h"), 2), Index("k"), Index("j")), K)


def test_psi_transpose_swaps_the_last_two_indices():
    assert RULES["psi-transpose"](Psi(index_vars("b", "h", "j", "k"), Transpose(K))) == \
        Psi(index_vars("b", "h", "k", "j"), K)


@pytest.mark.parametrize("rule, term", [
    (psi_inner_product, Psi(index_vars("b", "h", "j", "k"), QK)),  # query index named j
    (psi_reduce, Psi(index_vars("b", "h", "k"), ReduceRows("max", SCORES))),  # query index named k
])
def test_a_fresh_reduction_index_never_captures_a_free_one(rule, term):
    operands = rule_operands("float")
    rewritten = rule(term)
    assert isinstance(rewritten, Reduce) and rewritten.var not in free_index_vars(term)
    shape = evaluate_array(term.array, *operands).shape
    np.testing.assert_allclose(values_over_index(rewritten, term.index, operands, shape),
                               values_over_index(term, term.index, operands, shape), rtol=1e-13, atol=1e-13)


# --- the derivation -------------------------------------------------------------------------

EVERY_FEATURE = AttentionFeatures(scale=0.3, causal=True, mask="bool", softcap=5.0, group=2)
FEATURE_SETS = [PAPER_FEATURES, EVERY_FEATURE, AttentionFeatures(scale=0.2, mask="float"),
                AttentionFeatures(scale=1.0, causal=True, mask="bool", mask_fill=-3.4e38)]


@pytest.mark.parametrize("features", FEATURE_SETS)
def test_steps_replay(features):
    derivation = derive(features)
    assert derivation.steps[0].before == derivation.root
    for step in derivation.steps:
        assert RULES[step.rule](step.before) == step.after


def test_every_rule_is_used_and_printed():
    derivation = derive(dataclasses.replace(EVERY_FEATURE, kv_lengths=True, causal_offset=-3, window_start=-5))
    used = {step.rule for step in derivation.steps}
    assert used == set(RULES)
    text = format_derivation(derivation)
    for rule in used:
        assert f" {rule} " in text


@pytest.mark.parametrize("features", FEATURE_SETS)
def test_the_dnf_has_only_loads_left(features):
    derivation = derive(features)
    terms = list(subterms(derivation.dnf))
    assert not any(isinstance(t, Psi) for t in terms)
    assert {t.array for t in terms if isinstance(t, Load)} <= {"Q", "K", "V", "M"}
    assert free_index_vars(derivation.dnf) == {"b", "h", "i", "q"}
    *_, heading, dnf_line = format_derivation(derivation).splitlines()
    assert heading == "DNF:" and dnf_line.startswith("  Out[b,h,i,q] = ")
    assert "ψ" not in dnf_line and "⍉" not in dnf_line


def test_no_reduction_index_shadows_another():
    def check(term, scope):
        if isinstance(term, Reduce):
            assert term.var not in scope, f"red over {term.var} inside a scope binding it"
            scope = scope | {term.var}
        for field in dataclasses.fields(term):
            child = getattr(term, field.name)
            if isinstance(child, Term):
                check(child, scope)
    check(derive(EVERY_FEATURE).dnf, {"b", "h", "i", "q"})


def test_gqa_reads_shared_heads_through_index_arithmetic():
    derivation = derive(EVERY_FEATURE)
    text = format_derivation(derivation).splitlines()[-1]
    assert "K[b,h//2,k,j]" in text and "V[b,h//2,p,q]" in text
    assert value_term(derivation) == Load("V", (Index("b"), FloorDiv(Index("h"), 2), Index("p"), Index("q")))


def test_score_term_matches_torch_scores():
    features = EVERY_FEATURE
    rng = np.random.default_rng(3)
    q, k, mask = rng.standard_normal((1, 4, 3, 5)), rng.standard_normal((1, 2, 4, 5)), rng.random((1, 4, 3, 4)) < 0.6
    v = rng.standard_normal((1, 2, 4, 2))
    expected = torch_scores(features, *(torch.from_numpy(a) for a in (q, k, mask)))
    term = score_term(derive(features))
    got = values_over_index(term, index_vars("b", "h", "i", "k"), (q, k, v, mask), expected.shape)
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-12)


def test_evaluate_dnf_refuses_a_term_that_is_not_reduced():
    with pytest.raises(ValueError, match="not in DNF"):
        evaluate_dnf(Psi(index_vars("b", "h", "i", "q"), reference_expression(PAPER_FEATURES)), *paper_operands())


def test_evaluate_dnf_wants_the_mask_the_features_name():
    with pytest.raises(ValueError, match="bool mask"):
        evaluate_dnf(derive(AttentionFeatures(scale=0.5, mask="bool")), *paper_operands())


# --- randomised cases against PyTorch float64 --------------------------------------------------

def torch_bias(features, mask, q_len, kv_len):
    """ONNX 1.23's additive bias: the mask (float as is; bool as 0 / fill) plus -inf above the diagonal."""
    bias = torch.zeros(q_len, kv_len, dtype=torch.float64)
    if features.mask == "float":
        bias = bias + mask
    elif features.mask == "bool":
        bias = torch.where(mask, bias, torch.tensor(features.mask_fill, dtype=torch.float64))
    if features.causal:
        bias = bias.masked_fill(torch.ones(q_len, kv_len, dtype=torch.bool).triu(1), -math.inf)
    return bias


def torch_scores(features, q, k, mask):
    """scores * scale -> softcap -> + bias, as ONNX 1.23 orders them."""
    k = k.repeat_interleave(features.group, dim=1)
    scores = q @ k.transpose(-2, -1) * features.scale
    if features.softcap:
        scores = features.softcap * torch.tanh(scores / features.softcap)
    return scores + torch_bias(features, mask, q.shape[2], k.shape[2])


def torch_attention(features, q, k, v, mask):
    q, k, v = (torch.from_numpy(a) for a in (q, k, v))
    mask = None if mask is None else torch.from_numpy(mask)
    bias = torch_bias(features, mask, q.shape[2], k.shape[2])
    if features.softcap:  # SDPA has no softcap
        weights = torch.softmax(torch_scores(features, q, k, mask), dim=-1)
        out = weights @ v.repeat_interleave(features.group, dim=1)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=features.scale,
                                                               enable_gqa=features.group > 1)
    full_bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    empty_rows = torch.isneginf(full_bias).all(dim=-1, keepdim=True)
    return torch.where(empty_rows, 0.0, out).numpy(), empty_rows[..., 0].numpy()


def random_mask(rng, kind, full_shape, empty_rows):
    """A mask of a random shape that broadcasts to full_shape; one True per row unless empty_rows."""
    shape = [n if rng.random() < 0.5 else 1 for n in full_shape[:-1]] + [full_shape[-1]]
    shape = shape[rng.integers(0, 3):]
    if kind == "float":
        mask = rng.standard_normal(shape)
        if empty_rows:
            mask[rng.random(shape) < 0.3] = -math.inf
            mask[tuple(rng.integers(n) for n in shape[:-1])] = -math.inf
        return mask
    mask = rng.random(shape) < 0.5
    np.put_along_axis(mask, rng.integers(shape[-1], size=(*shape[:-1], 1)), True, axis=-1)
    if empty_rows:
        mask[tuple(rng.integers(n) for n in shape[:-1])] = False
    return mask


def random_case(rng, *, group=1, kv_heads=None, causal=False, mask="none", mask_fill=-math.inf, softcap=0.0,
                sq_ne_skv=False, dv_ne_dk=False, empty_rows=False):
    batch = rng.integers(1, 3)
    kv_heads = kv_heads or rng.integers(1, 3)
    q_len, head_dim = rng.integers(1, 6, size=2)
    kv_len = rng.choice([n for n in range(1, 7) if n != q_len]) if sq_ne_skv else q_len
    value_dim = rng.choice([n for n in range(1, 6) if n != head_dim]) if dv_ne_dk else head_dim
    q_heads = kv_heads * group
    features = AttentionFeatures(scale=float(rng.uniform(0.1, 1.5)), causal=causal, mask=mask, mask_fill=mask_fill,
                                 softcap=softcap, group=group)
    q = rng.standard_normal((batch, q_heads, q_len, head_dim)) * 2
    k = rng.standard_normal((batch, kv_heads, kv_len, head_dim)) * 2
    v = rng.standard_normal((batch, kv_heads, kv_len, value_dim))
    m = None if mask == "none" else random_mask(rng, mask, (batch, q_heads, q_len, kv_len), empty_rows)
    return features, q, k, v, m


RANDOM_CASES = {
    "scale": {},
    "causal": dict(causal=True),
    "causal, Sq != Skv": dict(causal=True, sq_ne_skv=True),
    "float mask": dict(mask="float"),
    "float mask with -inf rows": dict(mask="float", empty_rows=True),
    "bool mask": dict(mask="bool"),
    "bool mask, fully masked rows": dict(mask="bool", empty_rows=True),
    "bool mask, finite fill": dict(mask="bool", mask_fill=-3.4e38, empty_rows=True),
    "gqa (Hq=4, Hkv=2)": dict(group=2, kv_heads=2),
    "softcap": dict(softcap=2.0),
    "dv != dk": dict(dv_ne_dk=True),
    "Sq != Skv": dict(sq_ne_skv=True),
    "everything": dict(group=2, kv_heads=2, causal=True, mask="bool", softcap=3.0, sq_ne_skv=True, dv_ne_dk=True),
}


@pytest.mark.parametrize("name", RANDOM_CASES)
def test_matches_torch_float64(name):
    rng = np.random.default_rng(sorted(RANDOM_CASES).index(name))
    for _ in range(6):
        features, q, k, v, m = random_case(rng, **RANDOM_CASES[name])
        expected, empty_rows = torch_attention(features, q, k, v, m)
        got = evaluate_dnf(derive(features), q, k, v, m)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        if math.isinf(features.mask_fill):
            assert np.all(got[empty_rows] == 0)



@pytest.mark.parametrize("causal, window", [(False, None), (True, None), (True, 1), (False, 0)])
def test_valid_key_lengths_agree_with_pytorch(causal, window):
    """nonpad_kv_seqlen: batch b sees its first L[b] keys; causal aligns query i to key
    i + L[b] - Sq (an external cache), a left window of w keys starts at i + L[b] - Sq - w;
    a row with nothing visible gives 0."""
    rng = np.random.default_rng(3)
    B, H, Sq, Skv, D = 3, 2, 3, 6, 4
    q, k, v = (rng.standard_normal(s) for s in ((B, H, Sq, D), (B, H, Skv, D), (B, H, Skv, D)))
    lengths = np.array([6, 4, 1])
    features = AttentionFeatures(scale=0.5, causal=causal, causal_offset=-Sq if causal else 0, kv_lengths=True,
                                 window_start=None if window is None else -Sq - window)
    got = evaluate_dnf(derive(features), q, k, v, L=lengths)
    keys, queries = np.arange(Skv), np.arange(Sq)[:, None]
    hidden = keys >= lengths.reshape(-1, 1, 1, 1)
    if causal:
        hidden = hidden | (keys > queries + lengths.reshape(-1, 1, 1, 1) - Sq)
    if window is not None:
        hidden = hidden | (keys < queries + lengths.reshape(-1, 1, 1, 1) - Sq - window)
    bias = torch.from_numpy(np.where(hidden, -np.inf, 0.0))
    want = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), attn_mask=bias, scale=0.5)
    want = torch.where(torch.isneginf(bias).all(-1, keepdim=True), 0.0, want).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


# --- split-K (flash-decoding): the key axis lifted into chunks ---------------------------------

def decode_case(rng, q_len, group, kv_heads, kv_len, head_dim=4):
    """A decode block: Q (1, Hq, Sq, D) against a cache of kv_len keys of which the first L are
    valid, the causal diagonal at key i + L - Sq (causal_offset = -Sq)."""
    q = rng.standard_normal((1, kv_heads * group, q_len, head_dim))
    k = rng.standard_normal((1, kv_heads, kv_len, head_dim))
    v = rng.standard_normal((1, kv_heads, kv_len, head_dim + 1))
    features = AttentionFeatures(scale=1 / math.sqrt(head_dim), causal=True, causal_offset=-q_len, kv_lengths=True,
                                 group=group)
    return features, q, k, v


def torch_decode(q, k, v, length, scale):
    """SDPA on the first L keys, query i seeing keys k <= i + L - Sq; a row that sees none gives 0."""
    q_len, group = q.shape[2], q.shape[1] // k.shape[1]
    keys = torch.from_numpy(k[:, :, :length]).repeat_interleave(group, 1)
    values = torch.from_numpy(v[:, :, :length]).repeat_interleave(group, 1)
    hidden = torch.arange(length) > torch.arange(q_len)[:, None] + length - q_len
    bias = torch.zeros(q_len, length, dtype=torch.float64).masked_fill(hidden, -math.inf)
    out = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q), keys, values, attn_mask=bias,
                                                           scale=scale)
    return torch.where(hidden.all(-1, keepdim=True), 0.0, out).numpy()


@pytest.mark.parametrize("splits", [1, 2, 4, 7])
@pytest.mark.parametrize("q_len, group, kv_heads, kv_len", [(1, 1, 2, 13), (1, 3, 1, 16), (4, 4, 1, 11), (4, 3, 2, 9)])
def test_split_keys_equals_the_unsplit_dnf_for_run_time_lengths(q_len, group, kv_heads, kv_len, splits):
    """Out with the key axis lifted into `splits` chunks, each reduced with its own maximum and
    combined by exp(m_c - m), is the unsplit DNF's value and PyTorch's, for valid lengths L of 1,
    a value inside a chunk and kv_len (chunks past L and rows that see no key included)."""
    rng = np.random.default_rng(q_len * 100 + group * 10 + splits)
    features, q, k, v = decode_case(rng, q_len, group, kv_heads, kv_len)
    derivation = derive(features)
    split = split_keys(derivation, splits, kv_len)
    for length in sorted({1, kv_len // 2 + 1, kv_len}):
        lengths = np.array([length])
        got = evaluate_dnf(split, q, k, v, L=lengths)
        np.testing.assert_allclose(got, evaluate_dnf(derivation, q, k, v, L=lengths), rtol=0, atol=1e-13)
        np.testing.assert_allclose(got, torch_decode(q, k, v, length, features.scale), rtol=0, atol=1e-12)


def test_split_keys_is_a_combination_of_per_chunk_partials():
    """The rewritten DNF reduces the key axis only inside chunks (k = c·C+kk), keeps the reads of
    K and V through the shared head h//G, and prints as MoA notation."""
    features = AttentionFeatures(scale=0.5, causal=True, causal_offset=-1, kv_lengths=True, group=3)
    split = split_keys(derive(features), 4, 10)
    reduces = [t for t in subterms(split.dnf) if isinstance(t, Reduce)]
    assert {r.extent for r in reduces} >= {4, 3, "D"} and "Skv" not in {r.extent for r in reduces}
    loads = {t.array: t.index for t in subterms(split.dnf) if isinstance(t, Load)}
    assert loads["V"][1] == FloorDiv(Index("h"), 3) and isinstance(loads["V"][2], Lifted)
    text = format_derivation(split).splitlines()[-1]
    assert "c·3+kk" in text and "V[b,h//3,c·3+kk" in text
    assert free_index_vars(split.dnf) == {"b", "h", "i", "q"}
    with pytest.raises(ValueError, match="Out"):
        split_keys(derive(features, "Y"), 2, 10)
