"""Generation with a key/value cache (issue 13 point 1b and 1c): decoders whose cache goes through
the attention op itself, built by hand with onnx.helper as the tools write them, convert with
--max-context into the same generation build as the Hugging Face form (state, in-place writes,
run-time key lengths):
  * the ONNX Attention op (opsets 23 and 24) with its past_key/past_value inputs and
    present_key/present_value outputs, 3-D (q_num_heads/kv_num_heads) or 4-D after reshapes, cache
    inputs and outputs named freely (found by structure, not by name);
  * com.microsoft.GroupQueryAttention as onnxruntime-genai's model builder emits it, with seqlens_k
    and total_sequence_length computed in the graph from attention_mask.
Expected values: onnxruntime running the original file step by step, the cache fed back, or
transformers' own generate (never moa-edge)."""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort
import pytest

from conftest import one_error, require_board, run_cli
import decoders
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.generation import generate_ids, generation_info
from moa_edge.pipeline import convert
from moa_edge.target import load_board

# head_dim 16: onnxruntime's GroupQueryAttention rotary wants a multiple of 16.
LAYERS, Q_HEADS, KV_HEADS, HEAD_DIM, HIDDEN, VOCAB, POSITIONS = 2, 4, 2, 16, 32, 96, 64
MAX_CONTEXT, CHUNK = 40, 4
PROMPT_LEN, NEW = 7, 10  # one whole prefill chunk, three single prompt steps, then the token loop
RELATIVE_LOGITS = 1e-4  # issue 13: |logit - reference| within 1e-4 of the largest |logit|


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = lambda *shape: (rng.standard_normal(shape) * (1 / np.sqrt(shape[0]))).astype(np.float32)  # noqa: E731
    weights = {"wte": (rng.standard_normal((VOCAB, HIDDEN))).astype(np.float32),
               "wpe": (rng.standard_normal((POSITIONS, HIDDEN)) * 0.5).astype(np.float32),
               "lm_head": w(HIDDEN, VOCAB)}
    for i in range(LAYERS):
        weights.update({f"wq{i}": w(HIDDEN, Q_HEADS * HEAD_DIM) * 2, f"wk{i}": w(HIDDEN, KV_HEADS * HEAD_DIM) * 2,
                        f"wv{i}": w(HIDDEN, KV_HEADS * HEAD_DIM), f"wo{i}": w(Q_HEADS * HEAD_DIM, HIDDEN),
                        f"w1{i}": w(HIDDEN, 2 * HIDDEN), f"w2{i}": w(2 * HIDDEN, HIDDEN),
                        f"ln{i}": np.ones(HIDDEN, np.float32), f"lnb{i}": np.zeros(HIDDEN, np.float32)})
    return weights


def _const(name: str, values, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype), name)


class _Builder:
    """A small decoder (token and learned position embeddings, pre-norm layers of attention and a
    ReLU MLP, an lm_head): the attention of layer i is given by `attention(i, q, k, v)`."""

    def __init__(self, seed: int):
        self.nodes, self.inputs, self.outputs, self.extra_inits = [], [], [], []
        self.weights = _weights(seed)

    def node(self, op, inputs, outputs, name, domain=None, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs[0]

    def body(self, attention, learned_positions: bool = True) -> str:
        x = self.node("Gather", ["wte", "input_ids"], ["tok"], "/embed/tokens")
        if learned_positions:
            where = self.node("Gather", ["wpe", "position_ids"], ["pos"], "/embed/positions")
            x = self.node("Add", [x, where], ["x_0"], "/embed/add")
        else:
            del self.weights["wpe"]
        for i in range(LAYERS):
            h = self.node("LayerNormalization", [x, f"ln{i}", f"lnb{i}"], [f"h{i}"], f"/layers.{i}/norm", axis=-1)
            q, k, v = (self.node("MatMul", [h, f"w{c}{i}"], [f"{c}{i}"], f"/layers.{i}/attn/{c}_proj") for c in "qkv")
            y = attention(i, q, k, v)
            o = self.node("MatMul", [y, f"wo{i}"], [f"o{i}"], f"/layers.{i}/attn/o_proj")
            x = self.node("Add", [x, o], [f"x_{i}_attn"], f"/layers.{i}/attn/residual")
            up = self.node("Relu", [self.node("MatMul", [x, f"w1{i}"], [f"u{i}"], f"/layers.{i}/mlp/up")],
                           [f"r{i}"], f"/layers.{i}/mlp/act")
            down = self.node("MatMul", [up, f"w2{i}"], [f"d{i}"], f"/layers.{i}/mlp/down")
            x = self.node("Add", [x, down], [f"x_{i + 1}"], f"/layers.{i}/mlp/residual")
        return self.node("MatMul", [x, "lm_head"], ["logits"], "/lm_head")

    def model(self, opsets: dict[str, int]) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(a, n) for n, a in self.weights.items()] + self.extra_inits
        graph = helper.make_graph(self.nodes, "decoder", self.inputs, self.outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
        model.ir_version = 10
        return model


def _token_inputs(b: _Builder, with_mask: bool, with_positions: bool = True) -> None:
    b.inputs.append(helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]))
    if with_positions:
        b.inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]))
    if with_mask:
        b.inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]))
    b.outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", VOCAB]))


def _cache_io(b: _Builder, past: str, present: str) -> None:
    b.inputs.append(helper.make_tensor_value_info(past, TensorProto.FLOAT, ["batch", KV_HEADS, "past", HEAD_DIM]))
    b.outputs.append(helper.make_tensor_value_info(present, TensorProto.FLOAT,
                                                   ["batch", KV_HEADS, "total", HEAD_DIM]))


def attention_op_decoder(path: Path, opset: int, four_d: bool, seed: int = 0, masked: bool = False) -> Path:
    """ONNX Attention with its own past inputs and present outputs, is_causal=1; the cache names
    are the file's own (past_k_i / past_v_i, cache_k_i / cache_v_i), none of the Hugging Face ones.
    `masked`: an attention_mask input too, as Attention's boolean attn_mask (B, 1, 1, past + S)."""
    b = _Builder(seed)
    _token_inputs(b, with_mask=masked)
    mask = ""
    if masked:
        # (B, 1, S, past + S): onnxruntime wants the query axis whole, not broadcast.
        b.extra_inits += [_const("one", 1), _const("mask_axes", [1, 2]), _const("ones_2", [1, 1]),
                          _const("at_1", [1]), _const("at_2", [2])]
        keep = b.node("Equal", ["attention_mask", "one"], ["keep"], "/model/mask/Equal")
        keep = b.node("Unsqueeze", [keep, "mask_axes"], ["keep_4d"], "/model/mask/Unsqueeze")
        rows = b.node("Slice", [b.node("Shape", ["input_ids"], ["ids_shape"], "/model/mask/Shape_ids"),
                                "at_1", "at_2"], ["rows"], "/model/mask/Slice_ids")
        keys = b.node("Slice", [b.node("Shape", ["attention_mask"], ["mask_shape"], "/model/mask/Shape_mask"),
                                "at_1", "at_2"], ["keys"], "/model/mask/Slice_mask")
        shape = b.node("Concat", ["ones_2", rows, keys], ["mask_4d_shape"], "/model/mask/Concat", axis=0)
        mask = b.node("Expand", [keep, shape], ["attn_mask"], "/model/mask/Expand")
    if four_d:
        b.extra_inits += [_const("split_q", [0, 0, Q_HEADS, HEAD_DIM]),
                          _const("split_kv", [0, 0, KV_HEADS, HEAD_DIM]), _const("merge", [0, 0, Q_HEADS * HEAD_DIM])]

    def attention(i, q, k, v):
        pasts, presents = [f"past_k_{i}", f"past_v_{i}"], [f"cache_k_{i}", f"cache_v_{i}"]
        for past, present in zip(pasts, presents):
            _cache_io(b, past, present)
        name = f"/layers.{i}/attn/Attention"
        if not four_d:
            return b.node("Attention", [q, k, v, mask, *pasts], [f"y{i}", *presents], name,
                          is_causal=1, q_num_heads=Q_HEADS, kv_num_heads=KV_HEADS)
        heads = []
        for c, src, split in (("q", q, "split_q"), ("k", k, "split_kv"), ("v", v, "split_kv")):
            split = b.node("Reshape", [src, split], [f"{c}{i}_split"], f"/layers.{i}/attn/{c}_reshape")
            heads.append(b.node("Transpose", [split], [f"{c}{i}_heads"], f"/layers.{i}/attn/{c}_transpose",
                                perm=[0, 2, 1, 3]))
        y = b.node("Attention", [*heads, mask, *pasts], [f"y{i}_heads", *presents], name, is_causal=1)
        y = b.node("Transpose", [y], [f"y{i}_rows"], f"/layers.{i}/attn/y_transpose", perm=[0, 2, 1, 3])
        return b.node("Reshape", [y, "merge"], [f"y{i}"], f"/layers.{i}/attn/y_reshape")

    b.body(attention)
    onnx.save(b.model({"": opset}), str(path))
    return path


def gqa_decoder(path: Path, seed: int = 0, rotary: bool = False) -> Path:
    """com.microsoft.GroupQueryAttention per layer as onnxruntime-genai's builder writes it:
    past_key_values.i.key/value (B, kv_heads, past, head_dim) in, present.i.key/value out, and
    seqlens_k / total_sequence_length made from attention_mask by the attn_mask_reformat subgraph.
    With `rotary`, no position input at all: GQA turns q and k itself (do_rotary=1, its cos/sin
    caches of 64 positions), at positions it derives from seqlens_k."""
    b = _Builder(seed)
    _token_inputs(b, with_mask=True, with_positions=not rotary)
    rope = {}
    if rotary:
        angles = np.outer(np.arange(POSITIONS), 10000.0 ** (-np.arange(0, HEAD_DIM, 2) / HEAD_DIM))
        b.extra_inits += [numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos_cache"),
                          numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin_cache")]
        rope = dict(do_rotary=1)
    b.extra_inits += [_const("one", 1), _const("axis_1", [1]), _const("index_1", 1)]
    stem = "/model/attn_mask_reformat/attn_mask_subgraph"
    total = b.node("ReduceSum", ["attention_mask", "axis_1"], ["mask_sum"], f"{stem}/ReduceSum", keepdims=0)
    minus = b.node("Sub", [total, "one"], ["mask_sum_minus_1"], f"{stem}/Sub")
    seqlens = b.node("Cast", [minus], ["seqlens_k"], f"{stem}/Sub/Cast", to=TensorProto.INT32)
    shape = b.node("Shape", ["attention_mask"], ["mask_shape"], f"{stem}/Shape")
    length = b.node("Gather", [shape, "index_1"], ["mask_length"], f"{stem}/Gather", axis=0)
    total_length = b.node("Cast", [length], ["total_seq_len"], f"{stem}/Gather/Cast", to=TensorProto.INT32)

    def attention(i, q, k, v):
        pasts = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        presents = [f"present.{i}.key", f"present.{i}.value"]
        for past, present in zip(pasts, presents):
            _cache_io(b, past, present)
        caches = ["cos_cache", "sin_cache"] if rotary else []
        return b.node("GroupQueryAttention", [q, k, v, *pasts, seqlens, total_length, *caches],
                      [f"y{i}", *presents], f"/model/layers.{i}/attn/GroupQueryAttention", domain="com.microsoft",
                      num_heads=Q_HEADS, kv_num_heads=KV_HEADS, **rope)

    b.body(attention, learned_positions=not rotary)
    onnx.save(b.model({"": 21, "com.microsoft": 1}), str(path))
    return path


def _present_of(past: str) -> str:
    """The output the builders above pair with a past input."""
    return past.replace("past_k_", "cache_k_").replace("past_v_", "cache_v_").replace("past_key_values", "present")


def ort_greedy(path: Path, prompt: list[int], new: int) -> tuple[list[int], np.ndarray]:
    """onnxruntime on the original file: the prompt in one call over an empty past, then one token
    per call, each call's presents fed back as the next call's pasts. The greedy tokens, and the
    logits after the prompt and after each new token but the last, (new, vocab)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    pasts = [n for n in names if n not in ("input_ids", "position_ids", "attention_mask")]
    presents = [_present_of(n) for n in pasts]
    cache = {n: np.zeros((1, KV_HEADS, 0, HEAD_DIM), np.float32) for n in pasts}
    position, chunk, tokens, rows = 0, list(prompt), [], []
    while len(tokens) < new:
        feed = {"input_ids": np.array([chunk], np.int64),
                "position_ids": np.arange(position, position + len(chunk), dtype=np.int64)[None],
                "attention_mask": np.ones((1, position + len(chunk)), np.int64), **cache}
        logits, *updated = session.run(["logits", *presents], {n: feed[n] for n in names})
        cache = dict(zip(pasts, updated))
        position += len(chunk)
        rows.append(logits[0, -1])
        tokens.append(int(np.argmax(logits[0, -1])))
        chunk = [tokens[-1]]
    return tokens, np.stack(rows)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("forms")


def _prompt(seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, VOCAB, PROMPT_LEN)]


def _check_generation(model: Path, project: Path, board=None) -> dict:
    board = board or load_board("host")
    convert(model, project, board=board, max_context=MAX_CONTEXT, prefill_chunk=CHUNK)
    binary, info = build(project, board), generation_info(project)
    prompt = _prompt()
    want, reference = ort_greedy(model, prompt, NEW)
    assert len(set(want)) > 2  # the model is not stuck on one token: the check can fail
    got = generate_ids(binary, board, info, prompt, NEW)
    assert got["tokens"] == want
    forced = generate_ids(binary, board, info, prompt, NEW, forced_ids=want)
    assert forced["logits"].shape == reference.shape
    error = np.abs(forced["logits"] - reference).max() / np.abs(reference).max()
    assert error < RELATIVE_LOGITS, error
    return info


@pytest.mark.parametrize("opset,four_d,masked", [(23, False, False), (23, True, False), (24, False, False),
                                                  (24, True, False), (23, False, True)])
def test_attention_op_with_its_own_cache_generates_as_onnxruntime(folder, opset, four_d, masked):
    name = f"attention{opset}-{'4d' if four_d else '3d'}{'-masked' if masked else ''}"
    model = attention_op_decoder(folder / f"{name}.onnx", opset, four_d, masked=masked)
    info = _check_generation(model, folder / f"p-{name}")
    assert info["layers"] == LAYERS and info["kv_heads"] == KV_HEADS and info["head_dim"] == HEAD_DIM
    assert info["memory"]["cache_bytes"] == LAYERS * 2 * KV_HEADS * MAX_CONTEXT * HEAD_DIM * 4


@pytest.mark.parametrize("rotary", [False, True], ids=["positions-input", "do_rotary"])
def test_group_query_attention_generates_as_onnxruntime(folder, rotary):
    model = gqa_decoder(folder / f"gqa-{rotary}.onnx", rotary=rotary)
    info = _check_generation(model, folder / f"p-gqa-{rotary}")
    assert info["memory"]["cache_bytes"] == LAYERS * 2 * KV_HEADS * MAX_CONTEXT * HEAD_DIM * 4


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["rpi4", "k230"])
def test_both_forms_generate_on_the_emulated_boards(folder, board_name):
    board = require_board(board_name)
    _check_generation(attention_op_decoder(folder / "attention-board.onnx", 24, four_d=True),
                      folder / f"p-attention-{board_name}", board)
    _check_generation(gqa_decoder(folder / "gqa-board.onnx", rotary=True), folder / f"p-gqa-{board_name}", board)


# --- what cannot be mapped: one clear error naming the node, non-zero exit, nothing written ------

def test_a_past_sharing_its_buffer_with_the_present_is_refused_by_node(folder):
    """onnxruntime-genai's past_present_share_buffer: past and present of max_sequence_length rows,
    the new rows written in place at seqlens_k. The file's past has a fixed length that is not
    max_context - C rows before the chunk; refused, naming the GroupQueryAttention node."""
    model = onnx.load(str(gqa_decoder(folder / "gqa-shared.onnx")))
    for value in [*model.graph.input, *model.graph.output]:
        if value.name.startswith(("past_key_values", "present")):
            value.type.tensor_type.shape.dim[2].Clear()
            value.type.tensor_type.shape.dim[2].dim_value = 64  # max_sequence_length
    onnx.save(model, str(folder / "gqa-shared.onnx"))
    one_error(run_cli("convert", folder / "gqa-shared.onnx", "-o", folder / "p-shared", "--max-context", MAX_CONTEXT),
               "'/model/layers.0/attn/GroupQueryAttention'", "past_key_values.0.key", "fixed length 64",
               "shar", "cannot map")
    assert not (folder / "p-shared").exists()


def test_seqlens_that_do_not_cover_the_cache_are_refused_by_node(folder):
    """seqlens_k must be the total length minus one (the builder's ReduceSum - 1); without the
    subtraction the last key would be hidden from every query: refused, naming the node."""
    model = onnx.load(str(gqa_decoder(folder / "gqa-seqlens.onnx")))
    cast = next(n for n in model.graph.node if n.output[0] == "seqlens_k")
    cast.input[0] = "mask_sum"
    model.graph.node.remove(next(n for n in model.graph.node if n.output[0] == "mask_sum_minus_1"))
    onnx.save(model, str(folder / "gqa-seqlens.onnx"))
    with pytest.raises(MoaEdgeError, match="node '/model/layers.0/attn/GroupQueryAttention': seqlens_k"):
        convert(folder / "gqa-seqlens.onnx", folder / "p-seqlens", max_context=MAX_CONTEXT, prefill_chunk=CHUNK)
    assert not (folder / "p-seqlens").exists()


def test_the_cli_converts_and_generates_an_attention_op_decoder(folder, tmp_path):
    """moa-edge convert --max-context, then moa-edge generate: onnxruntime's greedy tokens. Without
    --max-context the file is recognised as a decoder with a cache (by structure: its cache
    inputs are named past_k_i / past_v_i) and refused with the hint."""
    model = attention_op_decoder(folder / "attention-cli.onnx", 23, four_d=False, seed=3)
    one_error(run_cli("convert", model, "-o", tmp_path / "no-context"), "key/value cache", "--max-context")
    proc = run_cli("convert", model, "-o", tmp_path / "p", "--max-context", MAX_CONTEXT)
    assert proc.returncode == 0, proc.stderr
    prompt = _prompt(1)
    want, _ = ort_greedy(model, prompt, 8)
    proc = run_cli("generate", tmp_path / "p", "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", 8)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(t) for t in want]


def test_a_concat_cache_under_other_names_is_found_by_structure(folder):
    """The Hugging Face form (present = Concat(past, new)) with its caches renamed kv_in_N_k /
    kv_out_N_k: found by structure, transformers' greedy tokens as under the usual names."""
    case = decoders.cached_decoder("llama", "torchscript", 17, folder)
    model = onnx.load(str(case.path))
    renamed = {}
    for value in [*model.graph.input, *model.graph.output]:
        for old, new in (("past_key_values.", "kv_in_"), ("present.", "kv_out_")):
            if value.name.startswith(old):
                renamed[value.name] = new + value.name[len(old):].replace(".", "_")
                value.name = renamed[value.name]
    assert len(renamed) == 4 * case.geometry.layers
    for node in model.graph.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    onnx.save(model, str(folder / "renamed.onnx"))
    convert(folder / "renamed.onnx", folder / "p-renamed", max_context=MAX_CONTEXT, prefill_chunk=CHUNK)
    board = load_board("host")
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, case.geometry.vocab, PROMPT_LEN)]
    got = generate_ids(build(folder / "p-renamed", board), board, generation_info(folder / "p-renamed"), prompt, NEW)
    assert got["tokens"] == decoders.reference_generate(case, prompt, NEW)
