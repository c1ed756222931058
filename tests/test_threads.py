"""A whole model on N threads (moa/pool.h): the outputs are bitwise the same for every thread
count, on the host and under qemu-user with 4 threads on rpi4 and k230 (and 2 and 3 on the
element-wise loops and the row-wise ops), and equal to
onnxruntime's within float32 tolerance; the verbs take --threads."""
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import one_error, require_board, run_cli
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.runner import check_inputs, run
from moa_edge.pipeline import convert


class Block(torch.nn.Module):
    """An encoder block's products: GEMMs wide enough to lift columns (192, 640), tall enough to
    lift rows (the 300 x 16 head), attention between them, and a feed-forward block whose rows
    are shared among the threads."""

    def __init__(self):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(64, 4, batch_first=True)
        self.up, self.down, self.head = torch.nn.Linear(64, 640), torch.nn.Linear(640, 64), torch.nn.Linear(64, 16)

    def forward(self, x):
        x = x + self.attention(x, x, x, need_weights=False)[0]
        x = x + self.down(torch.nn.functional.gelu(self.up(x)))
        return self.head(x)


def _exported_block(folder, rows: int):
    torch.manual_seed(0)
    path = folder / f"block{rows}.onnx"
    torch.onnx.export(Block().eval(), (torch.randn(1, rows, 64),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    x = np.random.default_rng(1).standard_normal((1, rows, 64)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return path, x, expected


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    return _exported_block(tmp_path_factory.mktemp("threads"), 300)


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["host", "rpi4", "k230"])
def test_outputs_are_bitwise_the_same_on_every_thread_count(block, tmp_path, board_name):
    board = require_board(board_name)
    path, x, expected = block
    report = convert(path, tmp_path / "p", board=board, threads=4)
    model_c = (tmp_path / "p" / "model.c").read_text()
    assert "moa_gemm_packed_f32_on(pool," in model_c and re.search(r"status = \w+_on\(pool, ", model_c)  # and attention
    # The feed-forward block's 300 rows are shared among the 4 threads: one job runs all its members.
    assert "300 rows, 4 shares of rows lifted onto the pool" in model_c
    assert re.search(r"moa_pool_for\(pool, 4, model_task_\d+, &args\);", model_c)
    binary = build(tmp_path / "p", board)
    inputs = check_inputs(report["io"], {"x": x}, "x")
    outputs = [run(binary, board, report["io"], inputs, threads=threads)[0]["y"] for threads in (1, 4)]
    for y in outputs[1:]:
        assert np.array_equal(y.view(np.uint32), outputs[0].view(np.uint32))
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(MoaEdgeError, match="MOA_ERR_BAD_PARAMS"):  # more threads than the arena has scratch for
        run(binary, board, report["io"], inputs, threads=5)


def test_on_one_thread_the_feed_forward_rows_are_not_cut_into_shares(block, tmp_path):
    """300 rows converted for 2 threads: on 2 threads each share's 150 rows run through the hidden
    columns 256 at a time, on one thread all 300 rows at once (shares of rows would stream the
    weights once a share); the outputs are bitwise the same either way."""
    board = require_board("host")
    path, x, expected = block
    report = convert(path, tmp_path / "p", board=board, threads=2)
    model_c = (tmp_path / "p" / "model.c").read_text()
    assert "300 rows, 2 shares of rows lifted onto the pool, 150 rows and 256 hidden columns at a time" in model_c
    assert "if (moa_pool_threads(pool) > 1) {" in model_c and "over 300 rows, 300 rows and 256 hidden columns" in model_c
    binary = build(tmp_path / "p", board)
    inputs = check_inputs(report["io"], {"x": x}, "x")
    outputs = [run(binary, board, report["io"], inputs, threads=threads)[0]["y"] for threads in (1, 2)]
    assert np.array_equal(outputs[1].view(np.uint32), outputs[0].view(np.uint32))
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-4, atol=1e-5)


def test_a_feed_forward_block_too_short_to_share_lifts_its_members(block, tmp_path):
    """Converted for 12 threads, the block's 300 rows are fewer than 32 a thread: its members are
    lifted one by one instead (the GEMMs' tiles, the GELU's chunks), and the outputs stay bitwise
    the same on 1 and 3 threads."""
    board = require_board("host")
    path, x, expected = block
    report = convert(path, tmp_path / "p", board=board, threads=12)
    model_c = (tmp_path / "p" / "model.c").read_text()
    feed_forward = model_c[model_c.index("feed-forward block"):]
    assert "300 rows and 256 hidden columns at a time" in feed_forward and "shares of rows" not in model_c
    assert feed_forward.index("moa_pool_for(pool, ") < feed_forward.index("\n    }\n")  # its GELU
    binary = build(tmp_path / "p", board)
    inputs = check_inputs(report["io"], {"x": x}, "x")
    outputs = [run(binary, board, report["io"], inputs, threads=threads)[0]["y"] for threads in (1, 3)]
    assert np.array_equal(outputs[1].view(np.uint32), outputs[0].view(np.uint32))
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def elementwise(tmp_path_factory):
    """Element-wise loops large enough to be lifted: one over two axes (a bias broadcast along
    rows: its rows are the items) and one over one axis (its chunks are the items); and the
    row-wise ops, whose rows are the items: LayerNormalization with its Mean and InvStdDev,
    RMSNormalization, Softmax."""
    from onnx import TensorProto, helper, numpy_helper
    rows, cols = 300, 150
    bias = np.random.default_rng(2).standard_normal(cols).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["xb"]), helper.make_node("Sigmoid", ["xb"], ["s"]),
         helper.make_node("Mul", ["s", "x"], ["gated"]), helper.make_node("Tanh", ["gated"], ["t"]),
         helper.make_node("Add", ["t", "x"], ["y"]), helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["ln", "mean", "inv_std_dev"]),
         helper.make_node("RMSNormalization", ["x", "scale"], ["rms"]),
         helper.make_node("Softmax", ["x"], ["softmax"], axis=1)],
        "elementwise", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, cols])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [rows, cols]) for n in ("y", "r", "ln")]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, [rows, 1]) for n in ("mean", "inv_std_dev")]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, [rows, cols]) for n in ("rms", "softmax")],
        [numpy_helper.from_array(bias, "bias"),
         numpy_helper.from_array(np.random.default_rng(4).standard_normal(cols).astype(np.float32), "scale")])
    path = tmp_path_factory.mktemp("threads") / "elementwise.onnx"
    import onnx
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), path)
    x = np.random.default_rng(3).standard_normal((rows, cols)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    return path, x, expected


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["host", "rpi4"])
def test_lifted_elementwise_loops_are_bitwise_the_same(elementwise, tmp_path, board_name):
    board = require_board(board_name)
    path, x, expected = elementwise
    report = convert(path, tmp_path / "p", board=board, threads=3)
    model_c = (tmp_path / "p" / "model.c").read_text()
    assert model_c.count("moa_pool_for(pool, ") == 2 and "its first axis lifted onto the pool" in model_c
    assert "in chunks of 4096 lifted onto the pool" in model_c
    for kernel in ("moa_layer_norm_f32_on", "moa_rms_norm_f32_on", "moa_softmax_f32_on"):
        assert f"{kernel}(pool, " in model_c
    binary = build(tmp_path / "p", board)
    inputs = check_inputs(report["io"], {"x": x}, "x")
    outputs = [run(binary, board, report["io"], inputs, threads=threads)[0] for threads in (1, 2, 3)]
    for name, want in zip(("y", "r", "ln", "mean", "inv_std_dev", "rms", "softmax"), expected):
        for got in outputs[1:]:
            assert np.array_equal(got[name].view(np.uint32), outputs[0][name].view(np.uint32))
        np.testing.assert_allclose(outputs[0][name], want, rtol=1e-5, atol=1e-6)


def test_the_verbs_take_threads(block, tmp_path):
    path, x, expected = block
    np.savez(tmp_path / "in.npz", x=x)
    r = run_cli("convert", path, "-o", tmp_path / "p", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert "#define MODEL_MAX_THREADS 2u" in (tmp_path / "p" / "model.h").read_text()
    r = run_cli("run", tmp_path / "p", "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz",
                "--threads", "2")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["y"], expected, rtol=1e-4, atol=1e-5)
    r = run_cli("run", tmp_path / "p", "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out2.npz",
                "--threads", "65")
    one_error(r, "--threads 65: ", "was converted for at most 2 thread(s)")
    assert not (tmp_path / "out2.npz").exists()
    r = run_cli("validate", path, "--threads", "2")
    assert r.returncode == 0 and "ALL PASS" in r.stdout, r.stdout + r.stderr


@pytest.fixture(scope="module")
def split_decoder(tmp_path_factory):
    """A multi-query decoder (llama-mqa: one K/V head), a 200-token prompt, transformers' greedy
    tokens after it and its float64 logits."""
    import decoders
    folder = tmp_path_factory.mktemp("split-decoder")
    case = decoders.cached_decoder("llama-mqa", "torchscript", 17, folder)
    prompt = [int(t) for t in np.random.default_rng(5).integers(0, case.geometry.vocab, 200)]
    want = decoders.reference_generate(case, prompt, 6)
    reference = decoders.reference_logits(case, prompt + want)[len(prompt) - 1:-1]
    return case, prompt, want, reference


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["host", "rpi4", "k230"])
def test_a_decode_steps_key_splits_are_lifted_onto_the_cores(split_decoder, tmp_path, board_name):
    """Split-K on cores: converted for 512 tokens and 4 threads, the decode step has one (K/V head,
    row block) item, so the cost model splits its keys in 2 (200-205 keys: two splits of whole key
    tiles), each split an item of the pool, the partials combined once all have run. Greedy tokens
    and teacher-forced logits are bitwise the same on 1, 2 and 4 threads, and transformers' (logits
    within 1e-4 of the largest)."""
    from moa_edge.harness.generation import generate_ids, generation_info
    board = require_board(board_name)
    case, prompt, want, reference = split_decoder
    report = convert(case.path, tmp_path / "p", board=board, max_context=512, threads=4)
    step = [b for b in report["attention_blocks"] if b["chunk"] == 1]
    assert step and all(b["predicted"]["splits"] == 2 for b in step)
    assert "_combine_share, &job);" in (tmp_path / "p" / "attention.c").read_text()
    binary, info = build(tmp_path / "p", board), generation_info(tmp_path / "p")
    runs = [generate_ids(binary, board, info, prompt, len(want), forced_ids=want, threads=t) for t in (1, 2, 4)]
    for got in runs[1:]:
        assert np.array_equal(got["logits"].view(np.uint32), runs[0]["logits"].view(np.uint32))
    assert generate_ids(binary, board, info, prompt, len(want), threads=4)["tokens"] == want
    error = np.abs(runs[0]["logits"] - reference).max() / np.abs(reference).max()
    assert error < 1e-4, error
