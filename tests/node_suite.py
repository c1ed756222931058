"""Every node test case of the installed onnx through convert -> generated C -> host run, many
cases to one program (issue 17, item 6).

Each case is converted with a prefix of its own (c0, c1, ...) into a folder of its own; the
projects of a group are compiled beside one driver into one executable, linked with the
runtime compiled once, and each case runs as `driver K INPUT... OUTPUT...` (as main.c runs
one model). A case ends as one of:
  pass          its outputs are the case's own expected outputs (within its tolerance)
  by design     it needs what moa-edge leaves out on purpose (DESIGN below), or a type it does not have
  not yet       convert refused it with one clear error (the message says what it lacks)
  wrong         it converted, ran, and gave other numbers: a bug
  crash         convert raised something other than MoaEdgeError, or the program failed: a bug"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import json
import os
import re
from pathlib import Path
import shutil
import subprocess
import warnings

import numpy as np
import onnx
from onnx import numpy_helper

from backend_cases import HALF_ULPS, arrays
from moa_edge import C_RUNTIME_DIR
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.runner import check_inputs, runner_files
from moa_edge.ir import dtypes
from moa_edge.pipeline import convert

# What moa-edge leaves out on purpose: training (optimisers, gradients, losses), random generators,
# strings, sequences and optionals, and control flow or outputs whose shapes the data decides.
DESIGN_OPS = {
    "training": {"Adagrad", "Adam", "Momentum", "Gradient", "SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"},
    "random": {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"},
    "strings": {"StringNormalizer", "StringConcat", "StringSplit", "RegexFullMatch", "TfIdfVectorizer", "LabelEncoder"},
    "sequences": {"SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
                  "SequenceLength", "SequenceMap", "SplitToSequence", "ConcatFromSequence", "Optional",
                  "OptionalGetElement", "OptionalHasElement"},
    "data-dependent shapes": {"Loop", "If", "Scan", "NonZero", "Unique", "NonMaxSuppression", "Compress"},
}
# Cases whose refusal is by design, by name: training-mode Dropout draws a random mask; training-mode
# BatchNormalization computes the batch's statistics and the running means an optimiser keeps.
DESIGN_NAMES = {r"^test_training_dropout": "random", r"_training_mode$": "training"}


def by_design(case) -> str | None:
    """Why a case is out of scope by design before converting it, or None."""
    ops = {n.op_type for n in case.model.graph.node} | {n.domain for n in case.model.graph.node}
    if "ai.onnx.preview.training" in ops:
        return "training"
    for why, names in DESIGN_OPS.items():
        if ops & names:
            return why
    for vi in [*case.model.graph.input, *case.model.graph.output]:
        kind = vi.type.WhichOneof("value")
        if kind in ("sequence_type", "optional_type", "map_type"):
            return "sequences"
        if kind == "tensor_type" and vi.type.tensor_type.elem_type == onnx.TensorProto.STRING:
            return "strings"
    return None


def close(got: np.ndarray, want, rtol: float, atol: float) -> bool:
    """As backend_cases.run_case compares: floats within rtol/atol (halves within two units in their
    last place too), everything else exactly; NaN where the case has NaN."""
    want = np.asarray(want)
    if got.shape != want.shape:
        return False
    record = dtypes.from_numpy(want.dtype)
    if record is not None and record.is_float:
        return bool(np.allclose(got.astype(np.float64), want.astype(np.float64),
                                rtol=max(rtol, HALF_ULPS.get(record.name, 0.0)), atol=atol, equal_nan=True))
    return bool(np.array_equal(got, want))


def runtime_library(folder: Path, cc: str, cflags: list[str]) -> Path:
    """Every runtime source compiled once (the ISA files compile to nothing elsewhere): libmoa.a."""
    library = folder / "libmoa.a"
    if library.exists():
        return library
    sources = sorted((C_RUNTIME_DIR / "src").rglob("*.c"))
    objects = [folder / "obj" / (str(s.relative_to(C_RUNTIME_DIR / "src")).replace("/", "_")[:-2] + ".o")
               for s in sources]
    (folder / "obj").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for proc in pool.map(lambda so: subprocess.run(
                [*cc.split(), *cflags, "-I", str(C_RUNTIME_DIR / "include"), "-c", str(so[0]), "-o", str(so[1])],
                capture_output=True, text=True), zip(sources, objects)):
            if proc.returncode:
                raise RuntimeError(f"the runtime does not compile:\n{proc.stderr}")
    subprocess.run(["ar", "rcs", str(library), *map(str, objects)], check=True)
    return library


DRIVER = """/* Generated by tests/node_suite.py: runs case K of a group. usage: driver K INPUT... OUTPUT... */
#include <stdio.h>
#include <stdlib.h>
#include "moa/pool.h"
#include "moa/status.h"

typedef moa_status (*run_v)(const void *const *, void *const *, void *, size_t, moa_pool *);
@DECLS@
struct node_case { run_v run; int inputs, outputs; size_t arena; const size_t *bytes; };
@TABLES@
static const struct node_case cases[] = {@CASES@};

static int transfer(const char *path, void *data, size_t bytes, int writing)
{
    FILE *f = fopen(path, writing ? "wb" : "rb");
    size_t done;
    if (!f) { perror(path); return 0; }
    done = writing ? fwrite(data, 1, bytes, f) : fread(data, 1, bytes, f);
    fclose(f);
    return done == bytes;
}

int main(int argc, char **argv)
{
    const struct node_case *c;
    void *buffers[64];
    void *arena;
    moa_pool pool;
    moa_status status;
    int k, n;
    if (argc < 2) { return 2; }
    c = &cases[atoi(argv[1])];
    n = c->inputs + c->outputs;
    if (argc != 2 + n || n > 64) { fprintf(stderr, "case %s: %d files expected\\n", argv[1], n); return 2; }
    for (k = 0; k < n; k++) {
        buffers[k] = calloc(c->bytes[k] ? c->bytes[k] : 1, 1);
        if (k < c->inputs && !transfer(argv[2 + k], buffers[k], c->bytes[k], 0)) { return 2; }
    }
    arena = aligned_alloc(MOA_ARENA_ALIGN, (c->arena + MOA_ARENA_ALIGN - 1) / MOA_ARENA_ALIGN * MOA_ARENA_ALIGN
                          + MOA_ARENA_ALIGN);
    if (moa_pool_init(&pool, 1) != MOA_OK) { return 2; }
    status = c->run((const void *const *)buffers, buffers + c->inputs, arena, c->arena, &pool);
    moa_pool_destroy(&pool);
    if (status != MOA_OK) { fprintf(stderr, "run failed: status %d\\n", (int)status); return 3; }
    for (k = c->inputs; k < n; k++) {
        if (!transfer(argv[2 + k], buffers[k], c->bytes[k], 1)) { return 2; }
    }
    return 0;
}
"""


def _driver_source(projects: list[tuple[int, dict]]) -> str:
    decls, tables, rows = [], [], []
    for index, report in projects:
        p = f"c{index}"
        decls.append(f"moa_status {p}_run_v(const void *const *, void *const *, void *, size_t, moa_pool *);")
        sizes = [str(io["bytes"]) for io in report["io"]] or ["0"]
        tables.append(f"static const size_t {p}_bytes[] = {{{', '.join(sizes)}}};")
        inputs = sum(io["kind"] == "input" for io in report["io"])
        rows.append(f"{{{p}_run_v, {inputs}, {len(report['io']) - inputs}, {report['memory']['arena_bytes']}u, "
                    f"{p}_bytes}}")
    return (DRIVER.replace("@DECLS@", "\n".join(decls)).replace("@TABLES@", "\n".join(tables))
            .replace("@CASES@", ",\n    ".join(rows)))


def run_group(cases: list, folder: Path, cc: str, cflags: list[str], library: Path) -> dict[str, dict]:
    """Each case's outcome: {name: {"status": ..., "detail": ...}}."""
    outcomes: dict[str, dict] = {}
    converted: list[tuple] = []  # (index, case, report, feeds, the inputs held as constants)
    for index, case in cases:
        why = by_design(case)
        if why is not None:
            outcomes[case.name] = {"status": "by design", "detail": why}
            continue
        here = folder / f"c{index}"
        here.mkdir(parents=True)
        model, feeds, held = case.model, _feeds(case), []
        for attempt in ("as shipped", "constant inputs"):
            if attempt == "constant inputs":
                model, feeds, held = with_constant_inputs(case)
                if not held:
                    break
            onnx.save(model, here / "model.onnx")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    report = convert(here / "model.onnx", here / "p", prefix=f"c{index}")
            except MoaEdgeError as exc:
                message = str(exc).splitlines()[0].replace(str(here / "model.onnx"), "model.onnx")
                design = next((why for pattern, why in DESIGN_NAMES.items() if re.search(pattern, case.name)), None)
                if _design_type(message) or design:
                    outcomes.setdefault(case.name, {"status": "by design", "detail": design or message})
                else:
                    outcomes.setdefault(case.name, {"status": "not yet", "detail": message})
                continue
            except Exception as exc:  # a bug: convert must refuse with MoaEdgeError
                outcomes[case.name] = {"status": "crash", "detail": f"{type(exc).__name__}: {exc}"[:300]}
                break
            outcomes.pop(case.name, None)
            converted.append((index, case, report, feeds, held))
            break
    if not converted:
        return outcomes
    _build(folder, [(i, c, r) for i, c, r, _, _ in converted], cc, cflags, library)
    for slot, (index, case, report, feeds, held) in enumerate(converted):
        try:
            outcomes[case.name] = _run_case(folder, slot, index, case, report, feeds)
        except Exception as exc:  # a bug either way: a case that converts must run
            outcomes[case.name] = {"status": "crash", "detail": f"{type(exc).__name__}: {exc}"[:300]}
        if held and outcomes[case.name]["status"] == "pass":
            outcomes[case.name]["detail"] = "constant inputs: " + ", ".join(held)
    return outcomes


def _feeds(case) -> dict:
    (inputs, _), *_ = case.data_sets
    return dict(zip([vi.name for vi in case.model.graph.input], arrays(inputs)))


# Float inputs after the first that exporters write as constants too: Resize's roi and scales,
# quantization scales and zero points, normalization weights.
GEOMETRY_INPUTS = {"Resize": slice(1, 3), "Upsample": slice(1, 2), "QuantizeLinear": slice(1, 3),
                   "DequantizeLinear": slice(1, 3), "GroupNormalization": slice(1, 3),
                   "InstanceNormalization": slice(1, 3), "BatchNormalization": slice(1, 5)}


def with_constant_inputs(case) -> tuple[onnx.ModelProto, dict, list[str]]:
    """The case as an exporter writes it: the integer and one-element inputs of its nodes after their
    first (axes, pads and the pad value, shapes, starts and ends, repeats, split sizes, k), and the
    GEOMETRY_INPUTS, which the backend models pass as graph inputs, held as initializers of the
    test's own values; the remaining feeds; the names held."""
    feeds = _feeds(case)
    later = {name for node in case.model.graph.node for name in node.input[1:]} - {
        node.input[0] for node in case.model.graph.node if node.input}
    geometry = {name for node in case.model.graph.node
                for name in node.input[GEOMETRY_INPUTS.get(node.op_type, slice(0))]}
    held = [name for name in feeds if name in later
            and (np.asarray(feeds[name]).dtype in (np.int64, np.int32) or np.asarray(feeds[name]).size == 1
                 or name in geometry)]
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    for name in held:
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(feeds.pop(name)), name))
    kept = [vi for vi in model.graph.input if vi.name in feeds]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model, feeds, held


def _design_type(message: str) -> bool:
    return any(f"element type {t}" in message for t in ("STRING", "COMPLEX64", "COMPLEX128"))


def _build(folder: Path, converted, cc: str, cflags: list[str], library: Path) -> None:
    strict = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
    jobs = []
    for index, case, report in converted:
        project = folder / f"c{index}" / "p"
        include = ["-I", str(project), "-I", str(C_RUNTIME_DIR / "include")]
        for source in ("model.c", "attention.c", "weights.S"):
            if (project / source).exists():
                extra = [f"-Wa,-I{project}"] if source.endswith(".S") else []
                jobs.append([*cc.split(), *cflags, *strict, *include, *extra, "-c", str(project / source),
                             "-o", str(project / (source[:-2] + ".o"))])
    (folder / "driver.c").write_text(_driver_source([(i, r) for i, _, r in converted]))
    jobs.append([*cc.split(), *cflags, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", str(C_RUNTIME_DIR / "include"),
                 "-c", str(folder / "driver.c"), "-o", str(folder / "driver.o")])
    with ThreadPoolExecutor(2) as pool:
        failed = [p for p in pool.map(lambda cmd: subprocess.run(cmd, capture_output=True, text=True), jobs)
                  if p.returncode]
    if failed:
        raise RuntimeError(f"a generated project does not compile:\n{failed[0].args}\n{failed[0].stderr[-3000:]}")
    objects = [str(o) for i, _, _ in converted for o in sorted((folder / f"c{i}" / "p").glob("*.o"))]
    subprocess.run([*cc.split(), *cflags, str(folder / "driver.o"), *objects, str(library), "-lm", "-lpthread",
                    "-o", str(folder / "driver")], check=True, capture_output=True, text=True)


def _run_case(folder: Path, slot: int, index: int, case, report: dict, feeds: dict) -> dict:
    (_, expected), *_ = case.data_sets
    io = report["io"]
    feeds = check_inputs(io, feeds, case.name)
    ins, outs = runner_files(io, feeds, folder / f"c{index}")
    proc = subprocess.run([str(folder / "driver"), str(slot), *map(str, ins + outs)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        return {"status": "crash", "detail": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    wants = dict(zip([vi.name for vi in case.model.graph.output], arrays(expected)))
    for entry, path in zip([e for e in io if e["kind"] == "output"], outs):
        got = np.fromfile(path, dtype=dtypes.dtype(entry["dtype"]).numpy).reshape(entry["shape"])
        if not close(got, wants[entry["name"]], max(case.rtol, 1e-5), max(case.atol, 1e-6)):
            return {"status": "wrong", "detail": f"output {entry['name']!r} differs"}
    return {"status": "pass", "detail": ""}


def save(outcomes: dict, path: Path) -> None:
    path.write_text(json.dumps(outcomes, indent=0, sort_keys=True))


def clean(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


# --- the suite's figures --------------------------------------------------------------------

GROUPS = 24  # test items, interleaved over the cases so that each holds a share of every op
PASS_FLOOR = 0.90  # of the cases not out of scope by design: a run below it fails (conftest)
OUTCOMES: dict[str, dict] = {}  # case name -> outcome, this process's (and the workers', at the end)


def counts() -> dict[str, int]:
    from collections import Counter
    return dict(Counter(o["status"] for o in OUTCOMES.values()))


def summary_lines() -> list[str]:
    if not OUTCOMES:
        return []
    from collections import Counter
    n = counts()
    in_scope = len(OUTCOMES) - n.get("by design", 0)
    held = sum(o["status"] == "pass" and o["detail"].startswith("constant inputs") for o in OUTCOMES.values())
    lines = [f"{len(OUTCOMES)} cases: {n.get('pass', 0)} pass ({held} of them with their shape inputs held as "
             f"constants, as exporters write them), {n.get('by design', 0)} refused by design, "
             f"{n.get('not yet', 0)} not yet, {n.get('wrong', 0)} wrong, {n.get('crash', 0)} crashed",
             f"pass / cases not refused by design: {n.get('pass', 0)} / {in_scope} = "
             f"{n.get('pass', 0) / max(in_scope, 1):.1%}",
             "by design: " + ", ".join(f"{why} {k}" for why, k in Counter(
                 o["detail"] for o in OUTCOMES.values() if o["status"] == "by design").most_common()),
             "not yet, the most common reasons:"]
    reasons = Counter(re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'X'", o["detail"]))[:120]
                      for o in OUTCOMES.values() if o["status"] == "not yet")
    lines += [f"  {k:4d}  {reason}" for reason, k in reasons.most_common(12)]
    return lines


def shortfall() -> str | None:
    """Why the run fails on the figures, when every case ran; else None."""
    from onnx.backend.test.loader import load_model_tests
    if not OUTCOMES:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if len(OUTCOMES) < len(load_model_tests(kind="node")):
            return None
    n = counts()
    in_scope = len(OUTCOMES) - n.get("by design", 0)
    share = n.get("pass", 0) / max(in_scope, 1)
    return (None if share >= PASS_FLOOR else
            f"{share:.1%} of the ONNX node cases in scope pass, under the floor of {PASS_FLOOR:.0%} (node_suite.PASS_FLOOR)")
