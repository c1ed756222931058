"""`moa-edge bench generate` (issue 13, point 6) as a user types it, on a tiny exported Llama with
its cache: one run gives moa-edge's and onnxruntime's rates, memory and greedy tokens side by side.
No timing is asserted (the machine is shared); the tokens are: both sides must give transformers'
own greedy tokens (moa-edge's on a pool of two threads), and the bench must say whether the sides agree. llama.cpp is left out (no
--gguf): its column then says why it did not run."""
import importlib.util
import json
from pathlib import Path
import subprocess
import sys

import gguf
import numpy as np
import pytest

from moa_edge.errors import MoaEdgeError

from conftest import require_board
import decoders
from moa_edge.harness.generate_bench import (_best_turn, _build_tags, _like_pairs, context_for, first_difference,
                                             llama_isa, llama_python, table)
from moa_edge.harness.gguf_weights import FILE_TYPES, tensor_type, write_gguf

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
                        "--threads", "2", "--out", str(tmp_path / "out"), "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result == json.loads((tmp_path / "out" / f"generate-{case.path.stem}.json").read_text())
    assert result["prompt_ids"] == prompt and result["prompt_tokens"] == PROMPT and result["new_tokens"] == NEW
    assert result["threads"] == {"moa_edge": 2, "onnxruntime": 2, "llama_cpp": 2} and result["isa"]
    assert result["runtimes"]["moa_edge"]["threads"] == 2  # its pool ran the prefill and the steps
    # The kernels the build selected, as moa/isa.h names them, are those of the host's widest ISA.
    assert result["runtimes"]["moa_edge"]["isa"] == {"AVX-512": "avx512", "AVX2": "avx2", "NEON": "neon"}.get(
        result["isa"], result["runtimes"]["moa_edge"]["isa"])

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
    assert "onnxruntime" in r.stdout and "same as moa-edge" in r.stdout and "every side runs 2 thread(s)" in r.stdout

    # A mismatch is flagged where it is printed.
    result["tokens_agree"]["onnxruntime"] = {"agree": False, "first_difference": 2}
    assert "DIFFER from moa-edge's at step 2" in table(result)


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2, 3], [1, 2]) == 2  # one side stopped early


def test_the_best_of_the_rounds_counts_and_a_failed_turn_is_the_result():
    turns = [{"status": "ok", "prefill_s": 0.5, "decode_s": 2.0, "peak_rss_bytes": 10, "tokens": [1, 2, 3],
              "decode_tokens_per_s": 1.0},
             {"status": "ok", "prefill_s": 0.8, "decode_s": 1.0, "peak_rss_bytes": 12, "tokens": [1, 2, 3],
              "decode_tokens_per_s": 2.0}]
    best = _best_turn(turns, 4, 3)
    assert (best["prefill_s"], best["decode_s"], best["peak_rss_bytes"]) == (0.5, 1.0, 12)
    assert best["prefill_tokens_per_s"] == 8.0 and best["decode_tokens_per_s"] == 2.0  # 2 decode steps in 1 s
    assert [t["decode_s"] for t in best["turns"]] == [2.0, 1.0]
    assert _best_turn([*turns, {"status": "failed: gone"}], 4, 3) == {"status": "failed: gone"}


def test_a_llama_cpp_build_is_named_by_the_isa_it_reports(tmp_path):
    """llama_print_system_info's features give the build's ISA in moa/isa.h's names; a target pairs a
    moa-edge build only with a llama.cpp build of its ISA (a peer that did not run: the host build)."""
    avx512 = "CPU : SSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | AVX512_VNNI = 1 |"
    avx2 = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | REPACK = 1 | "
    assert llama_isa(avx512) == ("avx512", ["AVX", "AVX2", "AVX512", "AVX512_VNNI", "AVX_VNNI", "F16C", "FMA", "SSE3"])
    assert llama_isa(avx2)[0] == "avx2" and llama_isa("CPU : NEON = 1 | ARM_FMA = 1 |")[0] == "neon"
    assert llama_isa("CPU : SSE3 = 1 | AVX2 = 0 |")[0] == "scalar"
    assert _build_tags([{"isa": "avx512"}, {"isa": "avx2"}]) == ["avx512", "avx2"]
    assert _build_tags([{"isa": "avx2"}, {"isa": "avx2"}, {"status": "not built"}]) == ["avx2_1", "avx2_2", "build3"]
    runtimes = {"moa_edge": {"isa": "avx512"}, "moa_edge_x86-64-v3": {"isa": "avx2"},
                "llama_cpp_avx512": {"isa": "avx512"}, "llama_cpp_avx2": {"isa": "avx2"},
                "llama_cpp_avx2_Q4_1": {"isa": "avx2"}, "llama_cpp_build3": {"status": "not built"}}
    assert _like_pairs(runtimes) == [("moa_edge", "llama_cpp_avx512", ", AVX-512 both"),
                                     ("moa_edge_x86-64-v3", "llama_cpp_avx2", ", AVX2 both"),
                                     ("moa_edge_x86-64-v3", "llama_cpp_avx2_Q4_1", ", AVX2 both"),
                                     ("moa_edge", "llama_cpp_build3", "")]
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").write_text("")
    assert llama_python(str(tmp_path / "venv")) == str(tmp_path / "venv" / "bin" / "python")
    with pytest.raises(MoaEdgeError, match="--llama-python"):
        llama_python(str(tmp_path / "nowhere"))


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


def _moa(*args):
    return subprocess.run([sys.executable, "-m", "moa_edge.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("form", ["int3", "int4:7"])
def test_bench_generate_refuses_a_bad_weight_format_before_any_work(tmp_path, form):
    r = _moa("bench", "generate", tmp_path / "missing.onnx", "--weights", form, "--out", tmp_path / "out")
    assert r.returncode != 0 and r.stderr.count("error") == 1 and f"--weights {form!r}" in r.stderr
    assert not (tmp_path / "out").exists()


def test_weight_options_are_bench_generate_s(tmp_path):
    r = _moa("bench", "model", tmp_path / "missing.onnx", "--weights", "int8")
    assert r.returncode != 0 and "--weights is an option of bench generate" in r.stderr


def test_gguf_file_types_are_llama_cpp_s():
    for name, number in FILE_TYPES.items():
        assert number == {"F32": gguf.LlamaFileType.ALL_F32, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                          "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}[name]


def test_gguf_tensor_types_follow_llama_quantize():
    """Matrices take the file's type; norms stay F32; at 4 bits the output layer and the token table
    (the output when tied) are Q8_0; a row that is not whole blocks stays F32."""
    T = gguf.GGMLQuantizationType
    matrix, table_shape, norm = (1536, 576), (49152, 576), (576,)
    for file_type, want in (("F32", T.F32), ("Q8_0", T.Q8_0), ("Q4_0", T.Q4_0), ("Q4_1", T.Q4_1)):
        assert tensor_type("blk.0.ffn_up.weight", matrix, file_type) == want
        assert tensor_type("blk.0.attn_norm.weight", norm, file_type) == T.F32
        for name in ("token_embd.weight", "output.weight"):
            assert tensor_type(name, table_shape, file_type) == (T.Q8_0 if file_type in ("Q4_0", "Q4_1") else want)
        assert tensor_type("blk.0.ffn_up.weight", (8, 48), file_type) == T.F32  # 48 is not whole 32-blocks
    with pytest.raises(MoaEdgeError, match="'Q5_0'"):
        tensor_type("blk.0.ffn_up.weight", matrix, "Q5_0")


def test_write_gguf_quantises_the_float_weights_with_gguf(tmp_path):
    """Each tensor is gguf's quantize of gguf's dequantisation of the source, at the mapped type,
    metadata kept and general.file_type rewritten."""
    rng = np.random.default_rng(1)
    T = gguf.GGMLQuantizationType
    tensors = {"token_embd.weight": (rng.standard_normal((6, 64)).astype(np.float32), T.Q8_0),
               "blk.0.attn_q.weight": (rng.standard_normal((4, 64)).astype(np.float32), T.Q4_1),
               "output_norm.weight": (rng.standard_normal(64).astype(np.float32), T.F32)}
    writer = gguf.GGUFWriter(tmp_path / "q.gguf", "llama")
    writer.add_block_count(1)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_token_list(["<s>", "a", "b"])
    for name, (values, qtype) in tensors.items():
        if qtype == T.F32:
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    source = {t.name: t for t in gguf.GGUFReader(tmp_path / "q.gguf").tensors}
    for file_type, want in (("Q4_0", {"token_embd.weight": T.Q8_0, "blk.0.attn_q.weight": T.Q4_0}),
                            ("Q8_0", {"token_embd.weight": T.Q8_0, "blk.0.attn_q.weight": T.Q8_0})):
        wrote = write_gguf(tmp_path / "q.gguf", tmp_path / f"{file_type}.gguf", file_type)
        target = gguf.GGUFReader(tmp_path / f"{file_type}.gguf")
        assert target.get_field("general.file_type").contents() == FILE_TYPES[file_type]
        assert target.get_field("tokenizer.ggml.tokens").contents() == ["<s>", "a", "b"]
        out = {t.name: t for t in target.tensors}
        assert {name: t.tensor_type for name, t in out.items()} == {**want, "output_norm.weight": T.F32}
        for name, qtype in {**want, "output_norm.weight": T.F32}.items():
            floats = gguf.quants.dequantize(source[name].data, source[name].tensor_type)
            expected = gguf.quants.quantize(floats, qtype)
            np.testing.assert_array_equal(np.asarray(out[name].data).reshape(expected.shape), expected)
        assert wrote["weights_bytes"] == sum(int(t.n_bytes) for t in target.tensors)
        assert wrote["tensor_types"] == {T.Q8_0.name: 2 if file_type == "Q8_0" else 1, T.F32.name: 1,
                                         **({T.Q4_0.name: 1} if file_type == "Q4_0" else {})}
    with pytest.raises(MoaEdgeError, match="another file"):
        write_gguf(tmp_path / "q.gguf", tmp_path / "q.gguf", "Q8_0")
