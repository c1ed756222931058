"""`moa-edge bench gemm` end to end on tiny shapes, a few repeats: the JSON's structure, its
figures recomputed from its own times and counts, and that a wrong product is reported
(check_gemm on a perturbed Y; a runtime whose packing is off fails the whole benchmark). No
timed assertions: the host is shared and noisy."""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import require_board
from moa_edge import C_RUNTIME_DIR
from moa_edge.errors import MoaEdgeError
from moa_edge.harness import gemm_bench as gb

SHAPES = [(5, 7, 9), (17, 33, 20)]  # below one tile; past one tile in M and N with both edges


def _bench(tmp_path, *extra):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "moa_edge.cli", "bench", "gemm", "--shapes",
                           ",".join("x".join(map(str, s)) for s in SHAPES), "--repeat", "2", "--gemm-rounds", "2",
                           "--budget", "0.1", "--out", str(out), "--json", str(tmp_path / "r.json"), *extra],
                          capture_output=True, text=True)
    return proc, out


@pytest.mark.board
def test_bench_gemm_end_to_end(tmp_path):
    for name in ("rpi4", "k230"):
        require_board(name)
    proc, out = _bench(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| M x K x N |" in proc.stdout and "instr. / FMA lane" in proc.stdout and "wrote" in proc.stdout
    result = json.loads((out / "gemm.json").read_text())
    assert result == json.loads((tmp_path / "r.json").read_text())
    assert result["benchmark"] == "gemm" and result["command"].startswith("moa-edge bench gemm --shapes 5x7x9,17x33x20")
    assert result["shapes"] == [list(s) for s in SHAPES]
    host = result["host"]
    assert host["threads"] == 1 and all("openblas" in text.lower() for text in host["blas"].values())
    builds, peers = host["builds"], host["peers"]
    if platform.machine() == "x86_64":
        assert set(builds) == {"native", "avx2"}
        assert builds["avx2"] == {**builds["avx2"], "isa": "avx2", "march": "x86-64-v3"}
        assert builds["native"]["isa"] in ("avx512", "avx2")
        if builds["native"]["isa"] == "avx512":  # the AVX2 build's peer is OpenBLAS's AVX2 kernels
            assert host["peer_of"] == {"native": "numpy", "avx2": "numpy-avx2"}
            assert "Haswell" in host["blas"]["numpy-avx2"] and "Haswell" not in host["blas"]["numpy"]

    assert [(p["M"], p["K"], p["N"]) for p in result["timing"]] == SHAPES
    for p in result["timing"]:
        assert set(p["time_us"]) == {*builds, *peers} == set(p["errors"]) == set(p["gflops"])
        assert "numpy" in peers and set(p["ratio_to_numpy"]) == set(builds) == set(p["ratio_to_numpy_same_isa"])
        assert p["flops"] == 2 * p["M"] * p["K"] * p["N"]
        for side, t in p["time_us"].items():
            assert t > 0 and p["runs"][side] >= 2
            assert p["gflops"][side] == pytest.approx(p["flops"] / (t * 1e3))
            assert p["errors"][side]["max_abs_err"] <= 1e-5 * (1 + np.sqrt(p["K"])) * 10
        for side in builds:
            assert p["ratio_to_numpy"][side] == pytest.approx(p["time_us"][side] / p["time_us"]["numpy"])
            assert p["ratio_to_numpy_same_isa"][side] == pytest.approx(
                p["time_us"][side] / p["time_us"][host["peer_of"][side]])

    assert [(p["M"], p["K"], p["N"]) for p in result["instructions"]] == SHAPES
    for p in result["instructions"]:
        rows = {b["name"]: b for b in p["builds"]}
        assert set(rows) == {b.name for b in gb.COUNT_BUILDS}
        assert [(rows[n]["isa"], rows[n]["vlen"], rows[n]["lanes"]) for n in
                ("rpi4-neon", "k230-rvv-vlen128", "bpi-f3-rvv-vlen256")] == [("neon", 128, 4), ("rvv", 128, 4),
                                                                            ("rvv", 256, 8)]
        for b in rows.values():
            ideal = p["M"] * p["K"] * p["N"] / b["lanes"]
            assert b["instructions"] > 0 and b["fma_instructions_ideal"] == ideal
            assert b["per_fma_lane"] == pytest.approx(b["instructions"] / ideal)
            assert b["errors"]["max_abs_err"] < 1e-3


def test_check_gemm_rejects_a_wrong_product():
    a, b = gb.operands(13, 300, 21)
    y = a @ b
    assert gb.check_gemm("numpy fp32", y, a, b)["max_abs_err"] < 1e-4
    for name, bad in (("one element off by 1e-3", lambda z: z.__setitem__((3, 4), z[3, 4] + 1e-3)),
                      ("a NaN", lambda z: z.__setitem__((12, 20), np.nan)),
                      ("the last column missing", lambda z: z.__setitem__((slice(None), 20), 0.0)),
                      ("transposed B", None)):
        z = y.copy() if bad else (a @ b.reshape(21, 300).T)
        if bad:
            bad(z)
        with pytest.raises(MoaEdgeError, match="disagrees with numpy float64"):
            gb.check_gemm(name, z, a, b)
    with pytest.raises(MoaEdgeError, match="wrote 272 values, not 273"):
        gb.check_gemm("short", y.ravel()[:-1], a, b)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the --baseline builds are the x86 host's")
def test_bench_gemm_fails_on_a_wrong_kernel(tmp_path):
    """A runtime whose packed B is scaled by 1.0001 (a plausible slip): the benchmark stops with
    the build and the element, and prints no figure."""
    broken = tmp_path / "c_runtime"
    shutil.copytree(C_RUNTIME_DIR, broken, ignore=shutil.ignore_patterns("*.o"))
    matmul = broken / "src" / "matmul.c"
    text = matmul.read_text()
    assert "*packed++ = col < N ? at(b, p, col) : 0.0f;" in text
    matmul.write_text(text.replace("*packed++ = col < N ? at(b, p, col) : 0.0f;",
                                   "*packed++ = col < N ? 1.0001f * at(b, p, col) : 0.0f;"))
    proc, out = _bench(tmp_path, "--no-count", "--baseline", str(broken))
    assert proc.returncode != 0
    assert "baseline side at M=5 K=7 N=9 disagrees with numpy float64" in proc.stderr, proc.stderr
    assert not (out / "gemm.json").exists() and "GFLOP/s" not in proc.stdout
