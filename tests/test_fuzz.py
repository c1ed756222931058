"""Fuzzing campaign (issue 18): hostile and careless input, seeded (hypothesis, derandomize=True) and
bounded (max_examples per family, a time limit per case). One strategy per family, one oracle
(fuzz_oracle.judge): each case must end as a clear error with a non-zero exit, or a correct result
(onnxruntime's outputs). A family's test fails listing one example per kind of failure; the counts
per family are printed at the end of the session.

The CLI runs in this process (a subprocess costs seconds of imports); only signals need one."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time
import tomllib

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime
import pytest

from conftest import REPO
import fuzz_oracle as oracle
from fuzz_oracle import UNVERIFIED, judge, run_cli, snapshot
from moa_edge.harness.inputs import random_inputs
from moa_edge.harness.ownership import MARKER
from moa_edge.target import load_board


def campaign(max_examples: int):
    """Seeded and bounded; every example runs (failures are collected, not raised, so that the
    counts are complete and the test lists all kinds of failure found)."""
    return settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
                    phases=[Phase.generate], suppress_health_check=list(HealthCheck))


HOST_MEMORY = load_board("host").memory["dram_bytes"]
RUNNABLE_BYTES = 1 << 26  # larger inputs and outputs are not run by the campaign (counted as not run)
# Accepted models built and run against onnxruntime, per family (about 4 s each); hostile paths
# more, as the build is where a path could reach a shell.
BUILD_BUDGET = {"6 hostile paths": 4}
_builds: dict[str, int] = {}


class Case:
    """A fresh folder per example (under the test's tmp_path) with its own empty $TMPDIR."""
    count = 0

    def __init__(self, root: Path):
        Case.count += 1
        self.dir = root / f"case{Case.count}"
        self.tmp = root / f"tmp{Case.count}"
        self.dir.mkdir()
        self.tmp.mkdir()

    def done(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- models --------------------------------------------------------------------------------------

DIMS = [1, 2, 4, 8]


def attention_model() -> onnx.ModelProto:
    """q @ W, then ONNX Attention with k and v: an initializer, a projection and attention."""
    rng = np.random.default_rng(0)
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, DIMS) for n in ("q", "k", "v")]
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["q", "W"], ["qw"], name="project"),
             helper.make_node("Attention", ["qw", "k", "v"], ["y"], name="attn")]
    graph = helper.make_graph(nodes, "attention", io, [helper.make_tensor_value_info("y", TensorProto.FLOAT, DIMS)],
                              initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


VOCAB = 16


def embedding_model() -> onnx.ModelProto:
    """Token ids -> embedding rows (Gather) + positions -> projection: run-time indices."""
    rng = np.random.default_rng(1)
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])
    inits = [numpy_helper.from_array(rng.standard_normal((VOCAB, 8)).astype(np.float32), "E"),
             numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "P"),
             numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W")]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["e"], name="embed"),
             helper.make_node("Add", ["e", "P"], ["h"], name="position"),
             helper.make_node("MatMul", ["h", "W"], ["y"], name="project")]
    graph = helper.make_graph(nodes, "embedding", [ids], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


MODELS = {"attention": attention_model, "embedding": embedding_model}


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())  # no checker: the file is what a hostile hub serves
    return path


# --- correctness: onnxruntime's outputs ------------------------------------------------------------

def ort_session(model: Path):
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # its refusals are expected here; they come back as exceptions
    return onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def onnxruntime_outputs(model: Path, inputs: dict) -> dict:
    session = ort_session(model)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, inputs)))


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def same(got: dict, want: dict) -> str | None:
    for name, w in want.items():
        g = got.get(name)
        if g is None or g.shape != w.shape:
            return f"output {name!r}: {None if g is None else list(g.shape)} where onnxruntime gives {list(w.shape)}"
        if not np.allclose(g, w, rtol=1e-3, atol=1e-4, equal_nan=True):
            return f"output {name!r} differs from onnxruntime by {np.nanmax(np.abs(g - w)):.3g}"
    return None


def run_project(project: Path, inputs: dict, tmp: Path, extra=()) -> tuple[dict | None, str]:
    """`moa-edge run` on the project (it builds it): outputs, or the error."""
    scratch = tmp.parent / (tmp.name + "-run")
    scratch.mkdir(exist_ok=True)
    try:
        np.savez(scratch / "in.npz", **inputs)
        r = run_cli(["run", project, "--inputs", scratch / "in.npz", "--outputs", scratch / "out.npz", *extra], tmp)
        if r.code != 0:
            return None, (r.crash or r.stderr).strip()[-300:]
        with np.load(scratch / "out.npz") as data:
            return {k: data[k] for k in data.files}, ""
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def project_check(family: str, project: Path, model: Path, tmp: Path, extra=()):
    """The oracle for an accepted convert: a complete project whose outputs are onnxruntime's
    (onnxruntime must accept the model too); built and run for BUILD_BUDGET models per family."""
    def check():
        if not (project / MARKER).is_file() or not (project / "model.c").is_file():
            return f"exit 0 but {project} is not a complete project"
        report = json.loads((project / "report.json").read_text())
        io = report["io"]
        negative = [e["name"] for e in io if any(d < 0 for d in e["shape"])]
        if negative:
            return f"converted with negative dimensions in {negative}"
        io_bytes = sum(math.prod(e["shape"]) * np.dtype(e["dtype"]).itemsize for e in io)
        needed = io_bytes + report["memory"]["arena_bytes"] + report["memory"]["weights_bytes"]
        if needed > HOST_MEMORY:
            return f"converted for the host although it needs {needed} B, more than its {HOST_MEMORY} B"
        if io_bytes > RUNNABLE_BYTES:
            return UNVERIFIED
        inputs = random_inputs(io, seed=1)
        try:
            want = onnxruntime_outputs(model, inputs)
        except Exception as exc:  # noqa: BLE001
            return f"onnxruntime refuses this model ({first_line(exc)}); moa-edge converted it"
        shapes = {e["name"]: e["shape"] for e in io if e["kind"] == "output"}
        if shapes != {k: list(v.shape) for k, v in want.items()}:
            return f"outputs {shapes}, onnxruntime's {({k: list(v.shape) for k, v in want.items()})}"
        if _builds.get(family, 0) >= BUILD_BUDGET.get(family, 2):
            return UNVERIFIED
        _builds[family] = _builds.get(family, 0) + 1
        got, error = run_project(project, inputs, tmp, extra)
        return f"the converted project does not run: {error}" if got is None else same(got, want)
    return check


def convert_case(family: str, case: Case, model: Path, description: str, group: str, extra=(), cwd=None, board_args=()):
    """convert MODEL -o case/out [extra]: judged, with the model's folder precious."""
    out = case.dir / "out"
    precious = {model.parent: snapshot(model.parent)} if model.parent != case.dir else {}
    precious = {**precious, case.dir: {k: v for k, v in snapshot(case.dir).items() if not k.startswith("out")}}
    r = run_cli(["convert", model, "-o", out, *board_args, *extra], case.tmp, cwd=cwd)
    return judge(family, description, r, group=group, tmpdir=case.tmp, precious=precious, absent_on_error=[out],
                 staging_parents=[case.dir], check=project_check(family, out, model, case.tmp, board_args))


def assert_no_failures(family: str):
    print("\n" + oracle.failure_report(family))
    assert not oracle.FAILURES[family], oracle.failure_report(family)


# --- (1) mutated protobufs -------------------------------------------------------------------------

mutation = st.tuples(st.sampled_from(["flip", "insert", "delete", "overwrite", "truncate"]),
                     st.floats(0, 1, exclude_max=True), st.integers(0, 255))


def mutate_bytes(data: bytes, mutations) -> bytes:
    b = bytearray(data)
    for kind, where, value in mutations:
        i = int(where * len(b)) if b else 0
        if kind == "flip" and b:
            b[i] ^= 1 << (value % 8)
        elif kind == "insert":
            b[i:i] = bytes([value])
        elif kind == "delete" and b:
            del b[i]
        elif kind == "overwrite" and b:
            b[i] = value
        elif kind == "truncate":
            del b[i:]
    return bytes(b)


def test_fuzz_mutated_protobufs(tmp_path):
    family = "1 mutated protobufs"
    originals = {name: make().SerializeToString() for name, make in MODELS.items()}

    @campaign(max_examples=50)
    @given(st.sampled_from(sorted(MODELS)), st.lists(mutation, min_size=1, max_size=4))
    def one(name, mutations):
        case = Case(tmp_path)
        model = case.dir / "m.onnx"
        model.write_bytes(mutate_bytes(originals[name], mutations))
        convert_case(family, case, model, f"{name} model, bytes mutated {mutations}", name)
        case.done()

    one()
    assert_no_failures(family)


# --- (2) structural mutations ---------------------------------------------------------------------

HUGE = [0, -1, -3, 2**31, 2**40, 2**62, 2**63 - 1]
DTYPES = [0, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8, TensorProto.INT64, TensorProto.BOOL,
          TensorProto.STRING, TensorProto.COMPLEX64, 99]


def _set_dim(model, index, axis, value):
    model.graph.input[index].type.tensor_type.shape.dim[axis].dim_value = value


def _init_dims(model, dims):
    w = next(t for t in model.graph.initializer if t.name == "W")
    del w.dims[:]
    w.dims.extend(dims)


def _input_dtype(model, index, dtype):
    model.graph.input[index % len(model.graph.input)].type.tensor_type.elem_type = dtype


def _init_dtype(model, dtype):
    next(t for t in model.graph.initializer if t.name == "W").data_type = dtype


def _cycle(model, _):
    model.graph.node[0].input[0] = model.graph.node[-1].output[0]


def _missing_producer(model, index):
    node = model.graph.node[index % len(model.graph.node)]
    node.input[-1] = "produced_by_nobody"


def _reshape(model, shape):
    const = numpy_helper.from_array(np.array(shape, np.int64), "target_shape")
    model.graph.initializer.append(const)
    out = model.graph.output[0].name
    model.graph.node[-1].output[0] = "before_reshape"
    model.graph.node.append(helper.make_node("Reshape", ["before_reshape", "target_shape"], [out], name="reshape"))
    model.graph.output[0].type.tensor_type.ClearField("shape")


def _no_outputs(model, _):
    del model.graph.output[:]


def _duplicate_output(model, _):
    model.graph.node[0].output[0] = model.graph.node[-1].output[0]


def _unknown_op(model, kind):
    node = model.graph.node[-1]
    if kind == "op":
        node.op_type = "NoSuchOp"
    else:
        node.domain = "evil.example"


def _gather_out_of_range(model, index):
    """A Gather with a constant index (folded at convert time) into its own output."""
    model.graph.initializer.append(numpy_helper.from_array(np.array([index], np.int64), "const_index"))
    model.graph.node.append(helper.make_node("Gather", ["W", "const_index"], ["picked"], name="pick", axis=0))
    model.graph.output.append(helper.make_tensor_value_info("picked", TensorProto.FLOAT, None))


def _attention_shapes(model, dims):
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_value  # k exists
    for axis, value in enumerate(dims):
        model.graph.input[1].type.tensor_type.shape.dim[axis].dim_value = value


# External data: the weights W moved to a file, at a location of the model's choosing.
EXTERNAL = ["w.bin", "../escape.bin", "../../etc/passwd", "/etc/passwd", "link.bin", "sub/../../escape.bin",
            "w.bin@past-end", "w.bin@too-long", "w.bin@negative", "missing.bin", "folder"]


def _external(model, kind, folder: Path):
    w = next(t for t in model.graph.initializer if t.name == "W")
    data = w.raw_data
    (folder / "w.bin").write_bytes(data)
    (folder.parent / "escape.bin").write_bytes(data)
    (folder / "link.bin").symlink_to(folder.parent / "escape.bin")
    (folder / "folder").mkdir()
    location, _, how = kind.partition("@")
    offset, length = {"": (0, len(data)), "past-end": (len(data) + 64, len(data)), "too-long": (0, 10 * len(data)),
                      "negative": (-4, len(data))}[how]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value


STRUCTURAL = {
    "input dim": st.tuples(st.integers(0, 2), st.integers(0, 3), st.sampled_from(HUGE)),
    "initializer dims": st.sampled_from([[8, 0], [0, 8], [2**40, 8], [8, 8, 1], [64], [-8, -1], [2**31, 2**31]]),
    "input dtype": st.tuples(st.integers(0, 2), st.sampled_from(DTYPES)),
    "initializer dtype": st.sampled_from(DTYPES),
    "cycle": st.none(),
    "missing producer": st.integers(0, 2),
    "reshape": st.sampled_from([[5, 7], [64, 64], [2**40, 0], [-1, -1], [0, 3], [2, -1], [1, 2, 4, 8], [4, 16]]),
    "external data": st.sampled_from(EXTERNAL),
    "no outputs": st.none(),
    "duplicate output": st.none(),
    "unknown op": st.sampled_from(["op", "domain"]),
    "gather constant index": st.sampled_from([0, -1, 8, -9, 2**40]),
    "attention shapes": st.sampled_from([[1, 2, 4, 16], [1, 2, 6, 8], [1, 4, 4, 8], [2, 2, 4, 8], [1, 2, 4, 8]]),
    "--input-shape": st.sampled_from(["q=1x1099511627776x4x8", "q=1x2x4x8", "q=0x2x4x8", "k=1x2x4", "nosuch=1",
                                      "q=1x2x4x-8", "ids=1x4", "q=" + "x".join(["2"] * 40)]),
}
APPLY = {"input dim": lambda m, p, f: _set_dim(m, *p), "initializer dims": lambda m, p, f: _init_dims(m, p),
         "input dtype": lambda m, p, f: _input_dtype(m, *p), "initializer dtype": lambda m, p, f: _init_dtype(m, p),
         "cycle": lambda m, p, f: _cycle(m, p), "missing producer": lambda m, p, f: _missing_producer(m, p),
         "reshape": lambda m, p, f: _reshape(m, p), "external data": lambda m, p, f: _external(m, p, f),
         "no outputs": lambda m, p, f: _no_outputs(m, p), "duplicate output": lambda m, p, f: _duplicate_output(m, p),
         "unknown op": lambda m, p, f: _unknown_op(m, p),
         "gather constant index": lambda m, p, f: _gather_out_of_range(m, p),
         "attention shapes": lambda m, p, f: _attention_shapes(m, p), "--input-shape": lambda m, p, f: None}
structural = st.one_of(*(st.tuples(st.just(kind), param) for kind, param in STRUCTURAL.items()))


def test_fuzz_structural_mutations(tmp_path):
    family = "2 structural mutations"

    @campaign(max_examples=70)
    @given(structural)
    def one(mutation):
        kind, param = mutation
        case = Case(tmp_path)
        folder = case.dir / "models"
        folder.mkdir()
        model = attention_model()
        APPLY[kind](model, param, folder)
        extra = ["--input-shape", param] if kind == "--input-shape" else []
        convert_case(family, case, save(model, folder / "m.onnx"), f"{kind}: {param!r}", kind, extra)
        case.done()

    one()
    assert_no_failures(family)


# --- (3) bad run-time inputs ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def built_projects(tmp_path_factory):
    """Each model converted and built once (run then only runs it)."""
    root = tmp_path_factory.mktemp("projects")
    tmp = root / "tmp"
    tmp.mkdir()
    projects = {}
    for name, make in MODELS.items():
        model = save(make(), root / f"{name}.onnx")
        for verb in (["convert", model, "-o", root / name], ["build", root / name]):
            r = run_cli(verb, tmp)
            assert r.code == 0, r.crash or r.stderr
        projects[name] = (model, root / name)
    return projects


def good_inputs(name: str) -> dict:
    rng = np.random.default_rng(2)
    if name == "embedding":
        return {"ids": rng.integers(0, VOCAB, (1, 4)).astype(np.int64)}
    return {n: rng.standard_normal(DIMS).astype(np.float32) for n in "qkv"}


BAD_INPUTS = ["good", "missing", "extra", "shape", "scalar", "float64", "float16", "int32", "bool", "complex64",
              "uint64", "nan", "inf", "ids out of range", "float ids", "empty"]
runtime = st.tuples(st.sampled_from(sorted(MODELS)), st.sampled_from(BAD_INPUTS), st.sampled_from(["run", "validate"]),
                    st.sampled_from([VOCAB, -VOCAB - 1, 2**40, -2**62, 2**63 - 1, -1]))


def bad_inputs(name: str, kind: str, big: int) -> dict:
    x = good_inputs(name)
    first = sorted(x)[0]
    if kind == "missing":
        x.pop(first)
    elif kind == "extra":
        x["not_an_input"] = np.zeros(3, np.float32)
    elif kind == "shape":
        x[first] = np.concatenate([x[first], x[first]], axis=-1)
    elif kind == "scalar":
        x[first] = x[first].reshape(-1)[0]
    elif kind == "empty":
        x[first] = x[first][..., :0]
    elif kind in ("float64", "float16", "int32", "bool", "complex64", "uint64"):
        x[first] = x[first].astype(kind)
    elif kind in ("nan", "inf"):
        x[first] = x[first].astype(np.float32)
        x[first].flat[1] = np.nan if kind == "nan" else -np.inf
    elif kind == "ids out of range" and name == "embedding":
        x["ids"][0, 2] = big
    elif kind == "float ids":
        x[first] = x[first].astype(np.float32) + 0.5
    return x


def inputs_check(model: Path, inputs: dict, outputs: Path):
    """run exit 0: its outputs must be onnxruntime's on these inputs, given as they are or cast to the
    model's dtypes where every value survives the cast (a lossless cast is a fair thing to accept)."""
    def check():
        session = ort_session(model)
        fed = {}
        for i in session.get_inputs():
            if i.name in inputs:
                want = {"tensor(float)": np.float32, "tensor(int64)": np.int64}[i.type]
                value = np.asarray(inputs[i.name])
                cast = value.astype(want)
                fed[i.name] = cast if np.array_equal(cast.astype(value.dtype), value, equal_nan=True) else value
        try:
            want = dict(zip([o.name for o in session.get_outputs()], session.run(None, fed)))
        except Exception as exc:  # noqa: BLE001
            return f"onnxruntime refuses these inputs ({first_line(exc)}); moa-edge accepted them"
        if outputs is None:
            return None  # validate: it compared with its own reference
        with np.load(outputs) as data:
            return same({k: data[k] for k in data.files}, want)
    return check


def test_fuzz_runtime_inputs(tmp_path, built_projects):
    family = "3 run-time inputs"

    @campaign(max_examples=30)
    @given(runtime)
    def one(example):
        name, kind, verb, big = example
        if verb == "validate" and kind in ("good", "nan", "inf"):
            verb = "run"  # validate builds afresh (seconds): only where the inputs are refused first
        model, project = built_projects[name]
        case = Case(tmp_path)
        inputs = bad_inputs(name, kind, big)
        np.savez(case.dir / "in.npz", **inputs)
        outputs = case.dir / "out.npz"
        argv = (["run", project, "--inputs", case.dir / "in.npz", "--outputs", outputs] if verb == "run"
                else ["validate", model, "--inputs", case.dir / "in.npz"])
        r = run_cli(argv, case.tmp)
        judge(family, f"{verb} {name} with {kind} inputs ({ {k: (v.dtype.name, v.shape) for k, v in inputs.items()} }"
              + (f", id {big})" if kind == "ids out of range" else ")"), r, group=kind, tmpdir=case.tmp,
              precious={case.dir: snapshot(case.dir)}, absent_on_error=[outputs],
              check=inputs_check(model, inputs, outputs if verb == "run" else None))
        case.done()

    one()
    assert_no_failures(family)


# --- (4) bad board files --------------------------------------------------------------------------

HOST = tomllib.loads((REPO / "boards" / "host.toml").read_text())


def toml_text(d: dict, prefix: str = "") -> str:
    """A small TOML writer for board dictionaries (plain values, lists, inline tables, tables)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
    plain = [f"{json.dumps(k)} = {value(v)}" for k, v in d.items() if not isinstance(v, dict) or prefix]
    tables = [f"\n[{json.dumps(k)}]\n" + toml_text(v, k) for k, v in d.items() if isinstance(v, dict) and not prefix]
    return "\n".join(plain) + "\n" + "".join(tables)


def key_paths(d: dict, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from key_paths(v, prefix + (k,))


KEYS = sorted(key_paths(HOST))
WRONG = ["text", -1, 0, 2**70, 1.5, True, [], [1, "a"], {"a": 1}, "../../etc/passwd", "x" * 5000]
board_file = st.one_of(
    st.tuples(st.just("random bytes"), st.binary(max_size=300)),
    st.tuples(st.just("truncated"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("key missing"), st.sampled_from(KEYS)),
    st.tuples(st.just("wrong type"), st.tuples(st.sampled_from(KEYS), st.sampled_from(WRONG))),
    st.tuples(st.just("renamed"), st.sampled_from(["fuzzed", "my board", "é`$x'\""])))


def board_text(kind, param) -> bytes:
    if kind == "random bytes":
        return param
    text = toml_text(HOST)
    if kind == "truncated":
        return text[: int(param * len(text))].encode()
    d = json.loads(json.dumps(HOST))
    path, new = (param, None) if kind == "key missing" else param if kind == "wrong type" else (("name",), param)
    where = d
    for k in path[:-1]:
        where = where[k]
    if kind == "key missing":
        where.pop(path[-1])
    else:
        where[path[-1]] = new
    return toml_text(d).encode()


def test_fuzz_board_files(tmp_path):
    family = "4 board files"
    source = save(attention_model(), tmp_path / "models" / "m.onnx")

    @campaign(max_examples=36)
    @given(board_file)
    def one(example):
        kind, param = example
        case = Case(tmp_path)
        text = board_text(kind, param)
        name = param if kind == "renamed" else "host"  # a board file is named after its board
        board = case.dir / f"{name}.toml"
        board.write_bytes(text)
        model = case.dir / "m.onnx"
        shutil.copy(source, model)
        shown = repr(param)[:80]
        convert_case(family, case, model, f"{kind}: {shown}", kind, board_args=["--board", board])
        case.done()

    one()
    assert_no_failures(family)


# --- (5) output folders ---------------------------------------------------------------------------

def _chattr_works(folder: Path) -> bool:
    probe = folder / "chattr-probe"
    probe.mkdir()
    ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0 if shutil.which("chattr") else False
    if ok:
        subprocess.run(["chattr", "-i", str(probe)], check=True)
    probe.rmdir()
    return ok


FOLDER_CASES = ["user files", "forged marker", "earlier project + user file", "edited project file", "-o .",
                "-o the model's folder", "under a regular file", "/proc", "/sys", "immutable folder",
                "--json immutable folder", "--json the model", "--json a folder", "run --outputs a user folder",
                "-o a symlink to a user folder"]
names = st.text(st.characters(codec="utf-8", exclude_characters="/\x00\n\r"), min_size=1, max_size=12).filter(
    lambda n: n not in (".", ".."))
user_files = st.dictionaries(names, st.binary(max_size=64), min_size=1, max_size=4)


def test_fuzz_output_folders(tmp_path):
    family = "5 output folders"
    source = save(attention_model(), tmp_path / "models" / "m.onnx")
    immutable = _chattr_works(tmp_path)
    project = tmp_path / "project"
    assert run_cli(["convert", source, "-o", project], tmp_path).code == 0
    (tmp_path / ".moa-edge-project.json").unlink(missing_ok=True)

    @campaign(max_examples=36)
    @given(st.sampled_from(FOLDER_CASES), user_files)
    def one(kind, files):
        if kind in ("immutable folder", "--json immutable folder") and not immutable:
            kind = "under a regular file"
        case = Case(tmp_path)
        user = case.dir / "user"
        user.mkdir()
        for name, data in files.items():
            (user / name).write_bytes(data)
        model = user / "m.onnx"
        shutil.copy(source, model)
        out, cwd, args = case.dir / "out", None, []
        if kind == "user files":
            out = user
        elif kind == "forged marker":
            (user / MARKER).write_text(json.dumps({"files": {n: {"bytes": 0, "sha256": "0" * 64} for n in files}}))
            out = user
        elif kind in ("earlier project + user file", "edited project file"):
            shutil.copytree(project, case.dir / "out")
            target = case.dir / "out" / ("model.c" if kind == "edited project file" else next(iter(files)))
            target.write_bytes(b"/* the user's */" + next(iter(files.values())))
            user = case.dir / "out"
        elif kind == "-o .":
            out, cwd = Path("."), user
        elif kind == "-o the model's folder":
            out = user
        elif kind == "under a regular file":
            out = user / next(iter(files)) / "proj"
        elif kind in ("/proc", "/sys"):
            out = Path(kind) / f"moa-fuzz-{Case.count}"
        elif kind == "immutable folder":
            out = user / "proj"
        elif kind == "--json immutable folder":
            args = ["--json", user / "r.json"]
        elif kind == "--json the model":
            args = ["--json", model]
        elif kind == "--json a folder":
            args = ["--json", user]
        elif kind == "-o a symlink to a user folder":
            out = case.dir / "link"
            out.symlink_to(user)
        if kind in ("immutable folder", "--json immutable folder"):
            subprocess.run(["chattr", "+i", str(user)], check=True)
        before = snapshot(user)
        try:
            if kind == "run --outputs a user folder":
                np.savez(case.dir / "in.npz", **good_inputs("attention"))
                r = run_cli(["run", project, "--inputs", case.dir / "in.npz", "--outputs", user], case.tmp)
                check = None
            else:
                r = run_cli(["convert", model, "-o", out, *args], case.tmp, cwd=cwd)
                check = project_check(family, case.dir / "out", model, case.tmp) if out == case.dir / "out" else \
                    (lambda: f"exit 0 writing into {out}, which holds the user's files")
        finally:
            if kind in ("immutable folder", "--json immutable folder"):
                subprocess.run(["chattr", "-i", str(user)], check=True)
        absent = [] if out in (user, Path("."), case.dir / "link") or kind.startswith("earlier") or kind.startswith("edited") \
            else [out]
        judge(family, f"{kind}, user files {sorted(files)}", r, group=kind, tmpdir=case.tmp, precious={user: before},
              absent_on_error=absent, staging_parents=[case.dir, user], check=check)
        case.done()

    one()
    assert_no_failures(family)


# --- (6) hostile paths ----------------------------------------------------------------------------

PAYLOADS = ["", "`touch PWNED`", "$(touch PWNED)", "; touch PWNED", "' \"", "$HOME", "é中"]
hostile = st.text(st.sampled_from(list(" '\"$`é中;\\*!&|(){}<>#~-=ab")), min_size=1, max_size=10)


def test_fuzz_hostile_paths(tmp_path):
    family = "6 hostile paths"
    source = attention_model().SerializeToString()

    @campaign(max_examples=20)
    @given(hostile, st.sampled_from(PAYLOADS), st.booleans())
    def one(name, payload, relative):
        name = "p" + name + payload  # never an option, never . or ..
        case = Case(tmp_path)
        model = case.dir / f"m {name}" / f"{name}.onnx"
        model.parent.mkdir()
        model.write_bytes(source)
        out, json_path = case.dir / f"o {name}" / name, case.dir / f"{name}.json"
        shown_out = Path(os.path.relpath(out, case.dir)) if relative else out
        before = snapshot(model.parent)
        r = run_cli(["convert", model, "-o", shown_out, "--json", json_path], case.tmp, cwd=case.dir)

        def check():
            if not json_path.is_file() or "attention_blocks" not in json.loads(json_path.read_text()):
                return f"exit 0 but no JSON at {json_path}"
            verdict = project_check(family, out, model, case.tmp)()
            pwned = [str(p) for p in (*case.dir.rglob("PWNED"), REPO / "PWNED", Path.cwd() / "PWNED") if p.exists()]
            return f"a shell ran the path: {pwned}" if pwned else verdict

        judge(family, f"model, -o and --json named {name!r}" + (" (relative)" if relative else ""), r, group=payload,
              tmpdir=case.tmp, precious={model.parent: before}, absent_on_error=[out, json_path],
              staging_parents=[out.parent], check=check)
        case.done()

    one()
    assert_no_failures(family)


# --- (7) signals ----------------------------------------------------------------------------------

def _staging_made(err: str, work: Path) -> bool:
    return (work / "new").is_dir() and any(".partial-" in p.name for p in (work / "new").iterdir())


# (verb, signal, when: the stderr so far and the working folder tell that the phase has begun, at most
# this many more seconds (a seeded fraction of it) after that)
SIGNAL_CASES = [("convert", signal.SIGINT, lambda err, work: True, 1.0),  # during the imports
                ("convert", signal.SIGTERM, _staging_made, 0.3),
                ("validate", signal.SIGTERM, lambda err, work: "host: build" in err, 1.5),
                ("validate", signal.SIGHUP, lambda err, work: "host: run" in err, 0.0)]


def test_fuzz_signals(tmp_path):
    """A signal at a seeded moment of a phase of convert or validate (a subprocess): the run ends as
    `interrupted` (128 + signal) or completes; no half-written project, staging or temporary folder."""
    family = "7 signals"
    rng = np.random.default_rng(7)
    source = save(attention_model(), tmp_path / "models" / "m.onnx")
    for verb, sig, phase_begun, extra in SIGNAL_CASES:
        case = Case(tmp_path)
        work = case.dir / "work"
        work.mkdir()
        out = work / "new" / "proj"
        argv = ["convert", source, "-o", out] if verb == "convert" else ["validate", source]
        env = {**os.environ, "TMPDIR": str(case.tmp), "PYTHONPATH": str(REPO)}
        err_path = case.dir / "stderr.txt"
        with open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "moa_edge.cli", *map(str, argv)], stdout=subprocess.DEVNULL,
                                    stderr=err, env=env, cwd=work)
        deadline = time.monotonic() + 120
        while proc.poll() is None and not phase_begun(err_path.read_text(), work) and time.monotonic() < deadline:
            time.sleep(0.005)
        delay = extra * rng.uniform(0, 1)
        time.sleep(delay)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=120)
            r = oracle.Result(proc.returncode, "", err_path.read_text())
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            r = oracle.Result(None, "", "", hung=True)
        err_path.unlink()
        if r.code == -sig:  # the signal's default action: it came after main() had returned, its work done
            r.code = 0

        def check():
            if verb == "convert":
                return None if (out / MARKER).is_file() else f"exit 0 but {out} is incomplete"
            return None  # validate's table: it ran to its end

        judge(family, f"{verb}, {sig.name} {delay:.2f} s into its phase", r, group=f"{verb} {sig.name}",
              tmpdir=case.tmp, absent_on_error=list(work.iterdir()) if r.code != 0 else [],
              staging_parents=[work, work / "new"], check=check)
        case.done()
    assert_no_failures(family)
