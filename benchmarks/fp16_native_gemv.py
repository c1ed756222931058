"""Instruction counts (qemu-user, exact) and errors of a decode-step GEMV with float16 weights:
float32 arithmetic (the runtime's MOA_QW_F16 kernels) against native float16 arithmetic on a
Cortex-A76 (FEAT_FP16, the rpi5 board) and on a SpacemiT X60 (Zvfh, the bpi-f3 board): the
runtime's MOA_QW_F16_NATIVE kernels (f16n, convert --weights fp16:native) and two experiments.

    PYTHONPATH=. python benchmarks/fp16_native_gemv.py [K N]

Errors are max |y - y64| / (|x| @ |W|) against numpy in float64 on the same weights (float32 ones
for f32, their float16 rounding for the others).
"""
from pathlib import Path
import subprocess
import sys
import tempfile

import numpy as np

from moa_edge import C_RUNTIME_DIR
from moa_edge.harness.attention_bench import count_instructions
from moa_edge.ops import matmul
from moa_edge.target import load_board

HERE = Path(__file__).parent
SOURCES = matmul.C_SOURCES  # the GEMM and its panel kernels, every ISA's (each compiles to nothing elsewhere)
CORES = {  # name: (compiler and flags, qemu, variants)
    "cortex-a76": (["aarch64-linux-gnu-gcc", "-mcpu=cortex-a76", "-static"], ["qemu-aarch64", "-cpu", "cortex-a76"],
                   ("f32", "i8", "f16", "f16n", "h16blk", "h16")),
    "cortex-a72": (["aarch64-linux-gnu-gcc", "-mcpu=cortex-a72", "-static"], ["qemu-aarch64", "-cpu", "cortex-a72"],
                   ("f32", "i8", "f16")),
    "c908 (rvv)": (["clang-19", "--target=riscv64-linux-gnu", "-march=rv64gcv", "-mabi=lp64d", "-static",
                    "-fuse-ld=lld"], ["qemu-riscv64", "-cpu", "rv64,v=true,vlen=128,vext_spec=v1.0"], ("f32", "i8", "f16")),
    "x60 (rvv, zvfh)": (["clang-19", "--target=riscv64-linux-gnu", "-march=rv64gcv_zfh_zvfh", "-mabi=lp64d", "-static",
                         "-fuse-ld=lld"], load_board("bpi-f3").runner(), ("f32", "i8", "f16", "f16n")),
}


def main(k: int, n: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(k).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    weights = {"f32": w.astype(np.float64), "f16": w.astype(np.float16).astype(np.float64)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "in.bin").write_bytes(x.tobytes() + w.tobytes())
        for core, (cc, qemu, variants) in CORES.items():
            exe = work / "gemv"
            subprocess.run([*cc, "-O2", "-std=c99", f"-I{C_RUNTIME_DIR / 'include'}", str(HERE / "fp16_native_gemv.c"),
                            *(str(C_RUNTIME_DIR / "src" / s) for s in SOURCES), "-o", str(exe)], check=True)
            args = [str(k), str(n), str(work / "in.bin")]
            base = count_instructions(qemu, exe, ["none", *args, "quiet"], work)
            print(f"{core}: instructions per weight, and error")
            for v in variants:
                count = count_instructions(qemu, exe, [v, *args, "quiet"], work) - base
                y = np.frombuffer(subprocess.run([*qemu, str(exe), v, *args], capture_output=True, check=True).stdout,
                                  np.float32)
                b = weights["f32" if v == "f32" else "f16"]
                error = np.max(np.abs(y - x @ b) / (np.abs(x) @ np.abs(b))) if v != "i8" else float("nan")
                print(f"  {v:7s} {count / (k * n):6.3f}  {error:.1e}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3])) if len(sys.argv) == 3 else main(576, 1536)
