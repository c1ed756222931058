"""Standalone C programs around one generated ONF kernel, for exactness tests and benchmarks.

    kernel_main Q.bin K.bin V.bin [KS.bin VS.bin] [M.bin] [L.bin] Y.bin
reads raw operands (an int8 cache: K and V int8, their row scales KS, VS float32; a float16
cache: K and V as IEEE halves, uint16_t; Q in its own type when it is not `real`: int8, or a
half's uint16_t bits;
`real` = float: the production kernel; double: the DNF-printed oracle
of onf.emit_oracle_kernel; a float mask as float32, a bool mask as bytes; the valid key
counts L, per batch, in the spec's lengths type when it has kv_lengths), gives the kernel a heap scratch buffer of exactly the cost model's size filled
with a sentinel (so ASan catches any overrun), writes Y, and prints
`scratch_tail_touched=0|1` on stderr: whether the last scratch element was used.
"""
from __future__ import annotations

from pathlib import Path
import subprocess
import tempfile

from moa_edge import C_RUNTIME_DIR
from moa_edge.errors import MoaEdgeError
from moa_edge.moa import onf
from moa_edge.moa.mask import MASK_NONE
from moa_edge.ops.attention import C_SOURCES

from .build import cc_launcher

RUNTIME_INCLUDE = C_RUNTIME_DIR / "include"  # moa/status.h


def harness_source(spec, schedule: onf.Schedule, real: str = "float") -> str:
    scratch = onf.scratch_layout(spec, schedule).elements
    q_elems = spec.q.storage_extent()
    k_elems = spec.k.storage_extent()
    v_elems = spec.v.storage_extent()
    y_elems = spec.y.storage_extent()
    has_mask = spec.mask_kind != MASK_NONE
    m_elems = spec.mask.storage_extent() if has_mask else 0
    kv = spec.kv_ctype or real
    reads = [("Q", spec.q_ctype or real, q_elems), ("K", kv, k_elems), ("V", kv, v_elems)]
    if spec.kv_dtype == "int8":  # the cache's row scales, float32 whatever `real` is
        reads += [("KS", "float", spec.k_scale.storage_extent()), ("VS", "float", spec.v_scale.storage_extent())]
    if has_mask:
        reads.append(("M", spec.mask_ctype, m_elems))
    if spec.kv_lengths:
        reads.append(("L", spec.lengths_ctype, spec.batch))
    lines = ["#include <math.h>", "#include <stddef.h>", "#include <stdint.h>", "#include <stdio.h>", "#include <stdlib.h>",
             '#include "moa/attention.h"', '#include "moa/half.h"', '#include "moa/status.h"', "",
             (onf.emit_oracle_kernel if real == "double" else onf.emit_kernel)(spec, schedule, "kernel"),
             "static void *load(const char *path, size_t bytes)", "{",
             "    FILE *f = fopen(path, \"rb\");",
             "    void *p = malloc(bytes ? bytes : 1);",
             "    if (!f || !p || fread(p, 1, bytes, f) != bytes) { fprintf(stderr, \"cannot read %s\\n\", path); exit(2); }",
             "    fclose(f);", "    return p;", "}", "",
             "int main(int argc, char **argv)", "{",
             f"    const size_t scratch_elems = {scratch};",
             f"    {real} *scratch = malloc(scratch_elems * sizeof({real}));",
             f"    {real} *Y = calloc({y_elems}, sizeof({real}));",
             "    FILE *out;", "    size_t n;", "    moa_status status;"]
    for k, (name, ctype, elems) in enumerate(reads):
        lines.append(f"    {ctype} *{name} = load(argv[{k + 1}], {elems} * sizeof({ctype}));")
    lines += [f"    if (argc != {len(reads) + 2} || !scratch || !Y) {{ return 2; }}",
              f"    for (n = 0; n < scratch_elems; n++) {{ scratch[n] = ({real})12345.0; }}",
              f"    status = kernel(Q, K, V, {'KS, VS, ' if spec.kv_dtype == 'int8' else ''}{'M' if has_mask else 'NULL'}, "
              f"Y, scratch{', L' if spec.kv_lengths else ''});",
              "    if (status != MOA_OK) { return 3; }",
              f"    fprintf(stderr, \"scratch_tail_touched=%d\\n\", scratch[scratch_elems - 1] != ({real})12345.0);",
              f"    out = fopen(argv[{len(reads) + 1}], \"wb\");",
              f"    if (!out || fwrite(Y, sizeof({real}), {y_elems}, out) != {y_elems}) {{ return 2; }}",
              "    fclose(out);"]
    lines += [f"    free({name});" for name, _, _ in reads] + ["    free(Y);", "    free(scratch);", "    return 0;", "}"]
    return "\n".join(lines) + "\n"


_objects: dict[tuple, list[Path]] = {}


def runtime_objects(cc: str, cflags: tuple, sources=C_SOURCES) -> list[Path]:
    """Runtime sources (names under c_runtime/src or paths; default the attention micro-kernels,
    ops/attention.py's C_SOURCES) compiled once per compiler, flags and sources in this process,
    for every harness built with them: one source a command, through $MOA_EDGE_CC_LAUNCHER when
    set (a compiler cache keeps single-source compiles, not one command of many sources)."""
    key = (cc, tuple(cflags), tuple(map(str, sources)))
    if key not in _objects:
        out = Path(tempfile.mkdtemp(prefix="moa-runtime-"))
        launcher = list(filter(None, [cc_launcher()]))
        objs = []
        for k, source in enumerate(sources):
            obj = out / f"{k}_{Path(source).stem}.o"
            cmd = [*launcher, cc, *cflags, "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{RUNTIME_INCLUDE}",
                   "-c", str(C_RUNTIME_DIR / "src" / source), "-o", str(obj)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise MoaEdgeError(f"runtime source {source} failed to compile:\n{proc.stderr}")
            objs.append(obj)
        _objects[key] = objs
    return _objects[key]


def build_harness(spec, schedule, workdir: Path, real: str = "float", cc: str = "cc",
                  cflags=("-O2",), ldflags=()) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "kernel_main.c"
    src.write_text(harness_source(spec, schedule, real))
    exe = workdir / "kernel_main"
    cmd = [cc, *cflags, "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{RUNTIME_INCLUDE}",
           str(src), *map(str, runtime_objects(cc, tuple(cflags))), "-o", str(exe), *ldflags, "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise MoaEdgeError(f"kernel harness failed to compile:\n{proc.stderr}")
    return exe
