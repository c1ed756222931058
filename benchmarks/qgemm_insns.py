"""Executed instructions of the quantized-weight GEMM against the float32 one, under qemu-user
(issue 14, item 6): moa_gemm_packed_f32 (float32 weights in panels) beside moa_gemm_qw_f32 with
int8 weights (one scale per column) and 4-bit weights (blocks of 32 with offsets, as
`convert --weights int4` stores them), for a decode step's GEMV (M = 1) and a prefill chunk's
GEMM (M = 16) of K = 576, N = 1536 (SmolLM2-135M's MLP up projection), on rpi4 (NEON) and k230
(RVV, VLEN 128).

Each build's instructions per call are a run that calls the kernel once minus a run of the
same program that does not call it (the plugin and method of `moa-edge bench attention`,
moa_edge/harness/attention_bench.count_instructions). Every kernel's output is checked
against numpy in float64 first. Not a test: prints one table and writes a JSON record.

    PYTHONPATH=$PWD python benchmarks/qgemm_insns.py [--out benchmarks/results/qgemm-insns.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import subprocess
import sys
import tempfile

import numpy as np

from moa_edge import C_RUNTIME_DIR
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.attention_bench import count_instructions
from moa_edge.ops.matmul import C_SOURCES, pack_b
from moa_edge.ops.qmatmul import pack_quantized
from moa_edge.passes.quantize import quantize, two_level
from moa_edge.target import load_board

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moa/isa.h"
#include "moa/qmatmul.h"

/* argv: f32|i8|u4 M N K block calls A B scale offset Y  (scale and offset "-" for f32, offset "-"
 * for none; u4's are two-level, as convert --weights int4 stores a MatMul's). Reads the operands,
 * calls the kernel `calls` times (0: the baseline run), writes Y. */
static void *load(const char *path, size_t bytes)
{
    FILE *f = fopen(path, "rb");
    void *p = malloc(bytes ? bytes : 1);
    if (f == NULL || p == NULL || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    return p;
}

int main(int argc, char **argv)
{
    size_t M, N, K, block, calls, call;
    moa_matrix_f32 a, none = {NULL, 0, 0};
    moa_qweights w;
    float *Y, *packed = NULL;
    FILE *out;
    int is_f32, is_i8;
    moa_status status = MOA_OK;
    if (argc != 12) {
        return 2;
    }
    is_f32 = strcmp(argv[1], "f32") == 0, is_i8 = strcmp(argv[1], "i8") == 0;
    M = strtoul(argv[2], NULL, 10), N = strtoul(argv[3], NULL, 10), K = strtoul(argv[4], NULL, 10);
    block = strtoul(argv[5], NULL, 10), calls = strtoul(argv[6], NULL, 10);
    a.data = load(argv[7], M * K * sizeof(float)), a.row_stride = (ptrdiff_t)K, a.col_stride = 1;
    Y = calloc(M * N, sizeof *Y);
    if (is_f32) {
        packed = load(argv[8], MOA_GEMM_PACKED_B_ELEMS(K, N) * sizeof(float));
    } else {
        const size_t scale_bytes = is_i8 ? MOA_QW_SCALES(K, N, block) * sizeof(float)
                                         : MOA_QW_PANELS(N) * MOA_QS_SUPER_BYTES(MOA_QW_BLOCKS(K, block));
        w.type = is_i8 ? MOA_QW_I8 : MOA_QW_U4, w.block = block, w.zero = 0;
        w.half_scales = is_i8 ? MOA_QS_FLOAT : MOA_QS_SUPER;
        w.q = load(argv[8], is_i8 ? MOA_QW_I8_BYTES(K, N, block) : MOA_QW_U4_BYTES(K, N, block));
        w.scale = load(argv[9], scale_bytes);
        w.offset = argv[10][0] == '-' ? NULL : load(argv[10], scale_bytes);
    }
    for (call = 0; call < calls && status == MOA_OK; call++) {
        status = is_f32 ? moa_gemm_packed_f32(M, N, K, 1.0f, a, packed, 0.0f, none, Y, (ptrdiff_t)N)
                             : moa_gemm_qw_f32(M, N, K, 1.0f, a, w, 0.0f, none, Y, (ptrdiff_t)N);
    }
    fprintf(stderr, "isa=%s\n", MOA_ISA_NAME);
    out = fopen(argv[11], "wb");
    if (status != MOA_OK || out == NULL || fwrite(Y, sizeof *Y, M * N, out) != M * N) {
        return 3;
    }
    fclose(out);
    return 0;
}
"""

BUILDS = (("rpi4", "neon"), ("k230", "rvv"))  # (board, the kernel variant its build must select)
SHAPES = (("decode GEMV", 1), ("prefill GEMM", 16))
K, N = 576, 1536
WEIGHTS = (("float32", "f32", None), ("int8 per column", "i8", K), ("int4 blocks of 32", "u4", 32))


def weights(folder: Path, seed: int = 0) -> tuple[dict, dict]:
    """W (K x N) in its three stored forms as files, and each form's exact value in float64 (the
    float32 W, and scale q + offset from its integers, scales and offsets)."""
    w = (np.random.default_rng(seed).standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    files, exact = {}, {}
    for _, form, block in WEIGHTS:
        if form == "f32":
            pack_b(w).tofile(folder / "B.f32.bin")
            files[form] = [folder / "B.f32.bin", "-", "-"]
            exact[form] = w.astype(np.float64)
            continue
        q, scale, offset, _ = quantize(w, form, block, two_levels=form == "u4")  # as convert stores a MatMul's
        levels = (two_level(scale), two_level(offset)) if form == "u4" else None
        values, scales, offsets = pack_quantized(q, scale, offset, form, block, levels)
        paths = [folder / f"B.{form}.bin", folder / f"S.{form}.bin", folder / f"O.{form}.bin"]
        for path, x in zip(paths, (values, scales, offsets)):
            if x is not None:
                x.tofile(path)
        files[form] = [paths[0], paths[1], paths[2] if offsets is not None else "-"]
        rows = np.arange(K) // block
        exact[form] = scale[rows].astype(np.float64) * q + (offset[rows].astype(np.float64) if offset is not None else 0.0)
    return files, exact


def build(board_name: str, folder: Path) -> tuple[list, Path]:
    board = load_board(board_name)
    missing = board.missing_tools()
    if missing:
        raise MoaEdgeError(f"qgemm_insns: board {board_name} is not ready: missing {'; '.join(missing)}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "driver.c").write_text(DRIVER)
    exe = folder / "qgemm_bench"
    cmd = [board.compiler(), *board.toolchain.get("cflags", []), "-std=c99", "-Wall", "-Wextra", "-Werror",
           f"-I{C_RUNTIME_DIR / 'include'}", str(folder / "driver.c"), *(str(C_RUNTIME_DIR / "src" / s) for s in C_SOURCES),
           *board.toolchain.get("ldflags", []), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise MoaEdgeError(f"qgemm_insns: the {board_name} build failed:\n{proc.stderr[-3000:]}")
    return board.runner(), exe


def measure(runner, exe, isa, M, form, block, a_path, form_files, expected, folder: Path) -> int:
    y_path = folder / f"Y.{form}.{M}.bin"
    args = lambda calls: [form, str(M), str(N), str(K), str(block or K), str(calls), str(a_path),  # noqa: E731
                          *map(str, form_files), str(y_path)]
    proc = subprocess.run([*runner, str(exe), *args(1)], capture_output=True, text=True)
    if proc.returncode or f"isa={isa}" not in proc.stderr:
        raise MoaEdgeError(f"qgemm_insns: {exe} {form} M={M} failed ({proc.returncode}) or is not {isa}: {proc.stderr}")
    got = np.fromfile(y_path, np.float32).reshape(M, N)
    exact, magnitude = expected
    worst = float(np.max(np.abs(got - exact) / (magnitude + 1e-30)))
    if worst > 1e-5:
        raise MoaEdgeError(f"qgemm_insns: {form} M={M} on {isa} differs from numpy by {worst:.2e} of the sum of |terms|")
    return count_instructions(runner, exe, args(1), folder) - count_instructions(runner, exe, args(0), folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/qgemm-insns.json"))
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="qgemm-insns-") as tmp:
        folder = Path(tmp)
        files, exact = weights(folder)
        activations = {}
        for _, M in SHAPES:
            activations[M] = np.random.default_rng(M).standard_normal((M, K)).astype(np.float32)
            activations[M].tofile(folder / f"A{M}.bin")
        for board_name, isa in BUILDS:
            runner, exe = build(board_name, folder / board_name)
            for shape, M in SHAPES:
                a = activations[M].astype(np.float64)
                counts = {}
                for label, form, block in WEIGHTS:
                    expected = (a @ exact[form], np.abs(a) @ np.abs(exact[form]))
                    counts[form] = measure(runner, exe, isa, M, form, block, folder / f"A{M}.bin", files[form], expected,
                                           folder)
                    print(f"  {board_name} {isa} {shape} {label}: {counts[form]:,}", file=sys.stderr, flush=True)
                macs16 = M * K * -(-N // 16)  # multiply-adds of 16 columns (one panel row times one x)
                rows.append({"board": board_name, "isa": isa, "flags": load_board(board_name).toolchain["cflags"],
                             "shape": shape, "M": M, "K": K, "N": N, "instructions_per_call": counts,
                             "ratio_to_float32": {f: round(counts[f] / counts["f32"], 3) for f in ("i8", "u4")},
                             "instructions_per_16_multiply_adds": {f: round(c / macs16, 2) for f, c in counts.items()}})
    weight_bytes = {"f32": 4 * K * N, "i8": K * N + 4 * N, "u4": K * N // 2 + 2 * 4 * (K // 32) * N}
    print(f"\nExecuted instructions per call under qemu-user, K={K} N={N} (weights: float32 {weight_bytes['f32']:,} B, "
          f"int8 {weight_bytes['i8']:,} B, int4/32 {weight_bytes['u4']:,} B)")
    print(f"{'build':<12}{'shape':<18}{'float32':>12}{'int8/col':>12}{'ratio':>7}{'int4/b32':>12}{'ratio':>7}"
          f"   per 16 multiply-adds (f32 i8 u4)")
    for r in rows:
        c, q, per = r["instructions_per_call"], r["ratio_to_float32"], r["instructions_per_16_multiply_adds"]
        print(f"{r['board'] + ' ' + r['isa']:<12}{r['shape'] + ' M=' + str(r['M']):<18}{c['f32']:>12,}{c['i8']:>12,}"
              f"{q['i8']:>7.2f}{c['u4']:>12,}{q['u4']:>7.2f}   {per['f32']:.1f} {per['i8']:.1f} {per['u4']:.1f}")
    record = {"benchmark": "qgemm-insns", "command": "PYTHONPATH=$PWD python benchmarks/qgemm_insns.py",
              "what": "executed instructions per call of moa_gemm_packed_f32 and moa_gemm_qw_f32 (int8 one scale per "
                      "column; 4-bit blocks of 32 with offsets), and the ratio quantized / float32",
              "method": "qemu-user TCG plugin counting every executed translation block's instructions "
                        "(moa_edge.harness.attention_bench.count_instructions); per call = run with one call - run "
                        "without it, both under env -i; every output checked against numpy float64 first",
              "weight_bytes": weight_bytes, "rows": rows}
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {options.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MoaEdgeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
