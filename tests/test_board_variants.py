"""The two RISC-V boards outside conftest.BOARDS run the attention micro-kernel table of
test_attention_kernels.py: bpi-f3 (SpacemiT K1, VLEN 256) must select the RVV variant and
visionfive2 (JH7110, rv64gc) the scalar one, as each build reports through MOA_ISA_NAME.
Targeted here so that the whole-model tests are not multiplied by two more boards."""
from __future__ import annotations

import subprocess

import pytest

import test_attention_kernels as kernels
from conftest import require_board

BOARD_BUILDS = [
    kernels.Build("bpi-f3-rvv", "bpi-f3", "rvv"),
    kernels.Build("visionfive2-scalar", "visionfive2", "scalar"),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("board_variants")


@pytest.mark.board
@pytest.mark.parametrize("build", BOARD_BUILDS, ids=lambda b: b.name)
def test_board_runs_its_variant_through_the_kernel_table(build, workdir):
    """The whole table against PyTorch float64 and the scalar reference; the harness's
    `isa=` banner (MOA_ISA_NAME) proves which variant the board's flags selected."""
    kernels.test_every_variant_matches_scalar_reference_and_torch(build, workdir)


@pytest.mark.board
@pytest.mark.parametrize("build", BOARD_BUILDS, ids=lambda b: b.name)
def test_board_exp_within_header_bound(build, workdir):
    kernels.test_exp_ulp_error_is_the_header_bound(build, workdir)


@pytest.mark.board
def test_bpi_f3_runs_at_vlen_256(workdir):
    """The bpi-f3 runner gives the vector unit 256 bits: vlenb reads 32."""
    board = require_board("bpi-f3")
    src, exe = workdir / "vlenb.c", workdir / "vlenb"
    src.write_text('#include <stdio.h>\nint main(void) { unsigned long b; __asm__ volatile("csrr %0, vlenb" : "=r"(b));'
                   ' printf("%lu\\n", b); return 0; }\n')
    subprocess.run([board.compiler(), *board.toolchain["cflags"], str(src), "-o", str(exe), *board.toolchain["ldflags"]],
                   check=True)
    out = subprocess.run([*board.runner(), str(exe)], capture_output=True, text=True, check=True).stdout
    assert int(out) * 8 == board.vlen == 256


@pytest.mark.board
def test_visionfive2_has_no_vector_unit(workdir):
    """An RVV build dies with SIGILL under the visionfive2 runner, so the scalar result
    above cannot come from a vector unit qemu happened to provide."""
    rvv = require_board("bpi-f3")
    board = require_board("visionfive2")
    src, exe = workdir / "vsetvl.c", workdir / "vsetvl"
    src.write_text('int main(void) { unsigned long vl; __asm__ volatile("vsetvli %0, zero, e32, m1, ta, ma" : "=r"(vl));'
                   ' return vl == 0; }\n')
    subprocess.run([rvv.compiler(), *rvv.toolchain["cflags"], str(src), "-o", str(exe), *rvv.toolchain["ldflags"]],
                   check=True)
    proc = subprocess.run([*board.runner(), str(exe)], capture_output=True)
    assert proc.returncode in (132, -4), proc  # SIGILL
