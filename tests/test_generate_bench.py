"""`moa-edge bench generate` (issue 13, point 6) as a user types it, on a tiny exported Llama with
its cache: one run gives moa-edge's and onnxruntime's rates, memory and greedy tokens side by side.
No timing is asserted (the machine is shared); the tokens are: both sides must give transformers'
own greedy tokens, and the bench must say whether the sides agree. llama.cpp is left out (no
--gguf): its column then says why it did not run."""
import importlib.util
import json
from pathlib import Path
import subprocess
import sys

import gguf
import numpy as np
import pytest

from conftest import require_board
import decoders
from moa_edge.harness.generate_bench import context_for, first_difference, table

PROMPT, NEW = 9, 6
_spec = importlib.util.spec_from_file_location("gguf_f32", Path(__file__).parent.parent / "benchmarks" / "gguf_f32.py")
gguf_f32 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gguf_f32)


@pytest.mark.board
def test_bench_generate_side_by_side(tmp_path):
    require_board("host")
    case = decoders.cached_decoder("llama", "torchscript", 17, tmp_path)
    prompt = [int(t) for t in np.random.default_rng(3).integers(0, case.geometry.vocab, PROMPT)]
    r = subprocess.run([sys.executable, "-m", "moa_edge.cli", "bench", "generate", str(case.path),
                        "--prompt-ids", ",".join(map(str, prompt)), "--new-tokens", str(NEW), "--repeat", "2",
                        "--out", str(tmp_path / "out"), "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result == json.loads((tmp_path / "out" / f"generate-{case.path.stem}.json").read_text())
    assert result["prompt_ids"] == prompt and result["prompt_tokens"] == PROMPT and result["new_tokens"] == NEW
    assert result["threads"] == {"moa_edge": 1, "onnxruntime": 1, "llama_cpp": 1} and result["isa"]

    want = decoders.reference_generate(case, prompt, NEW)  # transformers' greedy generate
    ours, ort = result["runtimes"]["moa_edge"], result["runtimes"]["onnxruntime"]
    for side in (ours, ort):
        assert side["status"] == "ok" and side["tokens"] == want
        assert side["decode_steps"] == NEW - 1 and side["prefill_s"] > 0 and side["decode_s"] > 0
        assert side["prefill_tokens_per_s"] == pytest.approx(PROMPT / side["prefill_s"])
        assert side["decode_tokens_per_s"] == pytest.approx((NEW - 1) / side["decode_s"])
        assert side["peak_rss_bytes"] > 0
    assert ours["max_context"] == context_for(PROMPT, NEW) >= PROMPT + NEW
    assert result["tokens_agree"]["onnxruntime"] == {"agree": True, "first_difference": None}
    assert result["runtimes"]["llama_cpp"]["status"] != "ok" and "llama_cpp" not in result["tokens_agree"]
    ratios = result["ratios"]
    assert ratios["decode_moa_edge_over_onnxruntime"] == pytest.approx(
        ours["decode_tokens_per_s"] / ort["decode_tokens_per_s"])
    assert ratios["rss_moa_edge_over_onnxruntime"] == pytest.approx(ours["peak_rss_bytes"] / ort["peak_rss_bytes"])
    assert ratios["decode_moa_edge_over_llama_cpp"] is None and ratios["rss_moa_edge_over_llama_cpp"] is None
    assert "onnxruntime" in r.stdout and "same as moa-edge" in r.stdout and "single-threaded" in r.stdout

    # A mismatch is flagged where it is printed.
    result["tokens_agree"]["onnxruntime"] = {"agree": False, "first_difference": 2}
    assert "DIFFER from moa-edge's at step 2" in table(result)


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2, 3], [1, 2]) == 2  # one side stopped early


def test_context_rounds_up():
    assert context_for(64, 64) == 128 and context_for(9, 6) == 16 and context_for(60, 10) == 80


def test_gguf_f32_dequantises_every_tensor_and_keeps_the_metadata(tmp_path):
    """benchmarks/gguf_f32.py: each tensor equals gguf's own dequantisation, in F32; every key kept."""
    rng = np.random.default_rng(0)
    weight, norm = rng.standard_normal((4, 64)).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    writer = gguf.GGUFWriter(tmp_path / "q.gguf", "llama")
    writer.add_block_count(1)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_token_list(["<s>", "a", "b"])
    writer.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", norm)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    assert gguf_f32.main([str(tmp_path / "q.gguf"), str(tmp_path / "f32.gguf")]) == 0
    source, target = gguf.GGUFReader(tmp_path / "q.gguf"), gguf.GGUFReader(tmp_path / "f32.gguf")
    assert set(source.fields) == set(target.fields)
    for name in ("general.architecture", "llama.block_count", "tokenizer.ggml.tokens"):
        assert target.get_field(name).contents() == source.get_field(name).contents()
    assert target.get_field("general.file_type").contents() == gguf.LlamaFileType.ALL_F32
    converted = {t.name: t for t in target.tensors}
    for tensor in source.tensors:
        out = converted[tensor.name]
        assert out.tensor_type == gguf.GGMLQuantizationType.F32 and list(out.shape) == list(tensor.shape)
        want = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        np.testing.assert_array_equal(np.asarray(out.data).reshape(want.shape), want)
    # The quantised weight really was rounded: the copy is its dequantisation, not the original.
    assert not np.array_equal(np.asarray(converted["blk.0.attn_q.weight"].data), weight)
