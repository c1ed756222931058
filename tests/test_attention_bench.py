"""`moa-edge bench attention` end to end at a small size, one repeat: the JSON's structure,
every side's output against PyTorch float64, the build each count ran, and that the qemu
instruction counter is exact. No timed assertions: the host is shared and noisy."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.harness import attention_bench as ab
from moa_edge.harness import compare as cmp

SEQ = 64


@pytest.fixture(scope="module")
def cross_boards():
    return [require_board(name) for name in ("rpi4", "k230", "visionfive2")]


@pytest.mark.board
def test_bench_attention_end_to_end(tmp_path, cross_boards):
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, "-m", "moa_edge.cli", "bench", "attention", "--seq", str(SEQ), "--repeat", "1",
                        "--count-seq", str(SEQ), "--out", str(out), "--json", str(tmp_path / "r.json"), "--threads", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "moa-edge fused kernel" in r.stderr and "kernel instructions" in r.stderr  # progress
    assert "| seq | causal |" in r.stdout and "wrote" in r.stdout
    result = json.loads((out / "attention.json").read_text())
    assert result == json.loads((tmp_path / "r.json").read_text())
    assert (out / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["command"].startswith("moa-edge bench attention --seq 64")
    assert (result["batch"], result["heads"], result["head_dim"]) == (1, 8, 64)
    assert result["host"]["threads"] == result["host"]["torch_threads"] == result["host"]["onnxruntime_intra_op_threads"] == 2
    assert result["host"]["isa"] in ("avx512", "avx2", "neon", "scalar")

    timing = result["timing"]
    assert [(p["seq"], p["causal"]) for p in timing] == [(SEQ, False), (SEQ, True)]
    for p in timing:
        assert set(p["time_us"]) == set(ab.SIDES) == set(p["ratio_to_torch"]) == set(p["errors"])
        assert all(t > 0 for t in p["time_us"].values())
        assert p["ratio_to_torch"]["torch_sdpa"] == 1.0
        for side, t in p["time_us"].items():
            assert p["ratio_to_torch"][side] == pytest.approx(t / p["time_us"]["torch_sdpa"])
        assert all(n == 1 for n in p["runs"].values())
        for side, e in p["errors"].items():
            assert e["max_abs_err"] <= cmp.MAX_ABS_ERR and e["max_rel_err"] <= cmp.MAX_REL_ERR, (side, e)
        assert {"strategy", "block_q", "block_k"} <= set(p["schedule"])

    counts = result["instructions"]
    assert (counts["seq"], counts["heads"], counts["causal"]) == (SEQ, 1, False)
    builds = {b["name"]: b for b in counts["builds"]}
    assert set(builds) == {b.name for b in ab.COUNT_BUILDS}
    for b in ab.COUNT_BUILDS:
        row = builds[b.name]
        assert row["isa"] == b.isa
        assert 0 < row["instructions"] < row["process_instructions"]
        assert row["errors"]["max_abs_err"] <= cmp.MAX_ABS_ERR
        # the ideal: the FMAs alone, 4 lanes on NEON, VLEN / 32 on RVV, 1 on scalar code
        lanes = {"neon": 4, "rvv": row["vlen"] // 32}.get(b.isa, 1)
        assert row["fma_lanes"] == lanes
        assert row["ideal_instructions"] == 4 * 64 * SEQ * SEQ / (2 * lanes)
        assert row["over_ideal"] == pytest.approx(row["instructions"] / row["ideal_instructions"])
    assert builds["rvv-vlen256"]["vlen"] == 256 and builds["rvv-vlen128"]["vlen"] == 128
    # the same RVV binary at two vector lengths executes different instruction streams
    assert builds["rvv-vlen128"]["instructions"] != builds["rvv-vlen256"]["instructions"]
    assert set(counts["ratios"]) == {name for name, _, _ in ab.COUNT_RATIOS}
    assert isinstance(result["targets"], dict)
    assert "| / ideal |" in r.stdout


def test_targets_hold_each_build_to_its_ideal_fma_count():
    """The three "within 1.5x of ideal FMA count" targets read each build's count / ideal."""
    def build(name, over):
        return {"name": name, "over_ideal": over}
    counts = {"seq": 1024, "ratios": {},
              "builds": [build("aarch64-neon", 1.6), build("rvv-vlen128", 1.5), build("rvv-vlen256", 0.9)]}
    out = ab.targets([], counts)
    assert out["NEON within 1.5x of ideal FMA count at seq 1024"] == {"met": False, "value": 1.6}
    assert out["RVV VLEN 128 within 1.5x of ideal FMA count at seq 1024"] == {"met": True, "value": 1.5}
    assert out["RVV VLEN 256 within 1.5x of ideal FMA count at seq 1024"] == {"met": True, "value": 0.9}
    assert ab.fma_lanes("neon", 128) == 4 and ab.fma_lanes("rvv", 256) == 8 and ab.fma_lanes("scalar", 128) == 1
    assert ab.attention_flops(1024, 1, 64, False) == 268435456


def _garbage(source: str) -> str:
    """The fused kernel's output nudged after it returns: what a broken kernel looks like."""
    call = "if (kernel_on(&pool, Q, K, V, NULL, O, scratch) != MOA_OK) { return 3; }"
    assert call in source
    return source.replace(call, call + " O[no / 2] += 1e-3f;")


def test_garbage_fused_kernel_fails_the_host_bench(tmp_path, monkeypatch):
    require_board("host")
    real = ab.program
    monkeypatch.setattr(ab, "program", lambda spec, schedule: _garbage(real(spec, schedule)))
    with pytest.raises(MoaEdgeError, match="the moa-edge kernel at seq 64, not causal disagrees with PyTorch"):
        ab.time_host([SEQ], [False], 2, 64, 1, 0.0, tmp_path)


def test_garbage_naive_kernel_fails_the_host_bench(tmp_path, monkeypatch):
    require_board("host")
    monkeypatch.setattr(ab, "NAIVE_KERNEL", ab.NAIVE_KERNEL.replace("Si[k] /= l;", "Si[k] /= 2 * l;"))
    with pytest.raises(MoaEdgeError, match="naive C kernel at seq 64, causal disagrees"):
        ab.time_host([SEQ], [True], 2, 64, 1, 0.0, tmp_path)


@pytest.mark.board
def test_garbage_cross_build_fails_the_count(tmp_path, monkeypatch):
    require_board("visionfive2")
    real = ab.program
    monkeypatch.setattr(ab, "program", lambda spec, schedule: _garbage(real(spec, schedule)))
    builds = [b for b in ab.COUNT_BUILDS if b.name == "visionfive2-rv64gc"]
    with pytest.raises(MoaEdgeError, match="visionfive2-rv64gc build .* disagrees"):
        ab.count_kernels(SEQ, 1, 64, False, tmp_path, builds)


@pytest.mark.board
def test_count_build_must_select_its_isa(tmp_path):
    """A build that silently falls back to other kernels is an error, not a count."""
    require_board("visionfive2")
    wrong = [ab.CountBuild("claims-rvv", "visionfive2", "rvv", "k230")]
    with pytest.raises(MoaEdgeError, match="selected the scalar kernels, not rvv"):
        ab.count_kernels(SEQ, 1, 64, False, tmp_path, wrong)


LOOP = "int main(void) { volatile long s = 0; long i; for (i = 0; i < 100000; i++) { s += i; } return 0; }\n"


@pytest.mark.board
def test_plugin_count_equals_the_trace_count(tmp_path):
    board = require_board("rpi4")
    src, exe = tmp_path / "loop.c", tmp_path / "loop"
    src.write_text(LOOP)
    subprocess.run([board.compiler(), "-O1", str(src), "-o", str(exe), *board.toolchain["ldflags"]], check=True)
    counted = ab.count_instructions(board.runner(), exe, [], tmp_path)
    log = tmp_path / "trace.log"
    subprocess.run(["env", "-i", *board.runner(), "-d", "in_asm,exec,nochain", "-D", str(log), str(exe)], check=True)
    assert counted == ab.trace_count(log.read_text(errors="replace"))
    assert counted > 100000 * 3


def test_host_march_build_is_a_row_named_by_its_isa(tmp_path):
    """--host-march x86-64-v3: the AVX2 build times beside the native one, each row naming the ISA
    its build selected; on an AVX-512 host it is compared with PyTorch limited to AVX2."""
    require_board("host")
    cpu = open("/proc/cpuinfo").read()
    if " avx2 " not in cpu or " fma " not in cpu:
        pytest.skip("needs an x86-64 host with AVX2 and FMA")
    points, host = ab.time_host([SEQ], [True], 2, 64, 1, 0.0, tmp_path, host_march=("x86-64-v3",), rounds=2)
    assert host["host_march"] == ["x86-64-v3"] and host["rounds"] == 2
    (p,) = points
    native, avx2 = p["moa_edge_builds"]
    assert (native["build"], native["isa"], native["cflags_added"]) == ("native", host["isa"], [])
    assert (avx2["build"], avx2["isa"], avx2["cflags_added"]) == ("x86-64-v3", "avx2", ["-march=x86-64-v3"])
    assert p["time_us"]["moa_edge"] == native["time_us"] and p["isa"] == host["isa"]
    assert native["runs"] == avx2["runs"] == 2  # one run per turn, two turns
    limited = host["isa"] == "avx512"
    assert avx2["torch_sdpa_isa"] == ("avx2" if limited else host["torch_cpu_capability"])
    assert avx2["ratio_to_torch"] == pytest.approx(avx2["time_us"] / avx2["torch_sdpa_time_us"])
    assert native["ratio_to_torch"] == pytest.approx(p["ratio_to_torch"]["moa_edge"])
    if limited:
        assert avx2["torch_sdpa_env"]["ATEN_CPU_CAPABILITY"] == "avx2"
        assert avx2["torch_sdpa_errors"]["max_abs_err"] <= cmp.MAX_ABS_ERR
    for b in (native, avx2):
        assert b["errors"]["max_abs_err"] <= cmp.MAX_ABS_ERR and b["errors"]["max_rel_err"] <= cmp.MAX_REL_ERR
    text = ab.table({"timing": points, "host": host, "instructions": None})
    assert "| AVX2 (-march=x86-64-v3) |" in text and f"| {SEQ} | yes |" in text
    verdict = ab.targets([{**p, "seq": 1024}], None)
    assert set(next(iter(verdict.values()))["values"]) == {f"{host['isa']} 1024 causal", "avx2 1024 causal"}


def test_host_march_refuses_a_flag_that_is_not_an_arch(tmp_path):
    with pytest.raises(MoaEdgeError, match="not a -march value"):
        ab.time_host([SEQ], [True], 2, 64, 1, 0.0, tmp_path, host_march=("native -O0",))
