"""`moa-edge bench generate` (issue 13, point 6) as a user types it, on a tiny exported Llama with
its cache: one run gives moa-edge's and onnxruntime's rates, memory and greedy tokens side by side.
No timing is asserted (the machine is shared); the tokens are: both sides must give transformers'
own greedy tokens, and the bench must say whether the sides agree. llama.cpp is left out (no
--gguf): its column then says why it did not run."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import require_board
import decoders
from moa_edge.harness.generate_bench import context_for, first_difference, table

PROMPT, NEW = 9, 6


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
