"""Writes the generated C project: model.h, model.c, weights.h/.S/.bin, main.c, SConstruct,
the c_runtime sources it needs, and report.json."""
from __future__ import annotations

import collections
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moa_edge import C_RUNTIME_DIR
from moa_edge.plan.predict import predict_model
from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Tensor, dtypes
from moa_edge.ir.graph import bytes_by_type
from moa_edge.ir.c_syntax import c_comment_text, c_identifier, c_string_literal, check_prefix
from moa_edge.ops import SUPPORTED_OPS, EmitContext
from moa_edge.ops.contract import RUN_LOCALS, check_status
from moa_edge.plan import plan_arena
from moa_edge.plan.arena import ArenaPlan, Pool
from moa_edge.target import Board, load_board

from .linker import write_linker_scripts
from .startup import STARTUP, write_startup
from .pools import PoolRequest, graph_pools, io_bytes

TEMPLATES = Path(__file__).parent / "templates"


def _weights_blob(weights) -> tuple[bytes, str]:
    """weights.bin (every constant, 64-byte aligned, little-endian as the boards are) and the
    assembler lines that give each its own symbol inside it."""
    blob, lines = bytearray(), []
    for t, sym in weights:
        blob += bytes(-len(blob) % 64)
        numpy_type = dtypes.dtype(t.dtype).numpy
        data = np.ascontiguousarray(t.data, dtype=numpy_type).astype(numpy_type).tobytes()
        lines += [f"    /* {c_comment_text(t.name)}: {t.dtype} {list(t.shape)} */", "    .balign 64", f"    .global {sym}",
                  f"    .type {sym}, %object", f"    .size {sym}, {max(len(data), 1)}", f"{sym}:",
                  f'    .incbin "weights.bin", {len(blob)}, {len(data)}' if data else "    .byte 0"]
        blob += data
    return bytes(blob), "\n".join(lines)


def weight_type_macros(P: str, weights) -> str:
    """model.h's weight bytes per stored type (float32, int8, int4, ...): what --weights saved."""
    return "".join(f"#define {P}_WEIGHTS_BYTES_{kind.upper()} {n}u\n"
                   for kind, n in bytes_by_type(t for t, _ in weights).items())


@dataclass
class GraphCode:
    """One lowered graph as C: where each tensor lives, the kernels and the calls that run it."""
    plan: ArenaPlan
    io: list[dict]                       # inputs then outputs: names, C names, shapes, types, bytes
    weights: list[tuple[Tensor, str]]    # each constant and its symbol
    kernels: list[str] = field(default_factory=list)
    kernel_decls: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)  # loops lifted onto the worker pool: functions in model.c
    task_statuses: bool = False  # some lifted task returns a status (each thread's kept in args.failed)
    sources: set[str] = field(default_factory=set)


class WeightSymbols:
    """The symbol of each constant, shared by the graphs of one project: a constant two graphs
    hold alike (same name, type and bytes) is stored once."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.taken: set[str] = set()
        self.known: dict[str, list[tuple[Tensor, str]]] = {}

    def symbol(self, t: Tensor) -> str:
        for other, sym in self.known.get(t.name, []):
            if other.dtype == t.dtype and other.shape == t.shape and np.array_equal(other.data, t.data):
                return sym
        sym = f"{self.prefix}_w_{c_identifier(t.name, self.taken, ('moa_', self.prefix + '_'))}"
        self.known.setdefault(t.name, []).append((t, sym))
        return sym


def graph_code(graph: Graph, prefix: str, board: Board, stem: str, where: dict[str, str] | None = None,
               symbols: WeightSymbols | None = None, lift_loops: bool = False, pools: list[Pool] | None = None) -> GraphCode:
    """The C of `graph`: its kernels named stem_<op>_<k>, intermediates in `base` (the arena)
    or, spread over memory `pools`, in `base_<pool>`, inputs and outputs under their C names
    unless `where` places them (and the state), and constants under their symbols (`symbols`,
    when shared, holds another graph's)."""
    # Names the generated statements use for their own locals (each op module's C_LOCALS): no
    # tensor may take one. q, k, v, x, y and m stay free for the usual model names.
    taken: set[str] = set(RUN_LOCALS).union(*(op.C_LOCALS for op in SUPPORTED_OPS.values()))
    taken |= {n for p in pools or [] if p.name for n in (f"base_{p.name}", f"{p.name}_pool")}
    plan = plan_arena(graph, pools=pools)
    symbols = symbols or WeightSymbols(prefix)
    symbols.taken |= taken

    # A name the code uses is never a keyword, a library name or one of the runtime's (moa_) or
    # this project's (<prefix>_) symbols; inputs and outputs also name macros, so differ in capitals.
    avoid, macro_names = ("moa_", prefix + "_"), set()
    io = []
    for kind, names in (("input", graph.inputs), ("output", graph.outputs)):
        for name in names:
            t = graph.tensors[name]
            if t.dtype not in dtypes.HELD_DTYPES:
                raise MoaEdgeError(f"{kind} {name!r} has dtype {t.dtype}; "
                                   f"only {', '.join(dtypes.HELD_DTYPES)} are supported")
            io.append({"kind": kind, "name": name, "c_name": c_identifier(name, taken, avoid, macro_names),
                       "shape": list(t.shape),
                       "dtype": t.dtype, "c_type": dtypes.dtype(t.dtype).c_type, "elems": t.size, "bytes": t.nbytes})

    weights = []
    for t in graph.weights():
        if t.dtype not in dtypes.WEIGHT_DTYPES:
            raise MoaEdgeError(f"constant {t.name!r} has dtype {t.dtype}; "
                               f"only {', '.join(dtypes.WEIGHT_DTYPES)} weights are supported")
        weights.append((t, symbols.symbol(t)))

    # Where each tensor lives, as a C expression.
    place = {e["name"]: e["c_name"] for e in io}
    place.update(where or {})
    place.update({t.name: sym for t, sym in weights})
    def at(name: str) -> str:  # a buffer's address: its pool's base plus its offset
        pool = plan.pool_of.get(name, "")
        return f"({'base_' + pool if pool else 'base'} + {plan.offsets[name]})"

    for name in plan.offsets:
        if not name.startswith("scratch:"):
            place[name] = f"(({dtypes.dtype(graph.tensors[name].dtype).c_type} *){at(name)})"
    for name in plan.storage_of:  # views and in-place outputs: another tensor's storage
        root = name
        while root in plan.storage_of:
            root = plan.storage_of[root]
        place[name] = f"(({dtypes.dtype(graph.tensors[name].dtype).c_type} *){place[root]})"

    code = GraphCode(plan, io, weights)
    lift = _lifter(code, prefix) if lift_loops else None
    for k, node in enumerate(graph.nodes):
        op = SUPPORTED_OPS[node.op]
        if node.outputs[0] in plan.storage_of and op.ALIASES:
            continue  # a view: nothing to run
        code.sources.update(op.C_SOURCES)
        scratch = "scratch:" + node.name
        unit = op.emit(node, EmitContext(name=f"{stem}_{node.op.lower()}_{k}", board=board, where=place,
                                         scratch=f"({dtypes.COMPUTE_DTYPE.c_type} *){at(scratch)}"
                                         if scratch in plan.offsets else "NULL",
                                         graph=graph, lift=lift and (lambda items, lines, returns_status=False, k=k:
                                                                     lift(k, items, lines, returns_status))))
        code.kernels += unit.kernels
        code.kernel_decls += unit.declarations
        code.calls.append(unit.call)
    return code


def _lifter(code: GraphCode, prefix: str):
    """EmitContext.lift for the nodes of one model: node k's loop becomes the static function
    <prefix>_task_<k>(ctx, first, end, thread) in model.c, reading the arena and the run's inputs
    and outputs from the run's <prefix>_run_args, and the node's call a moa_pool_for over it."""
    lifted: collections.Counter = collections.Counter()  # loops lifted so far, per node

    def lift(k: int, items: int, lines: list[str], returns_status: bool = False) -> str:
        """returns_status: `lines` end a function returning moa_status (and may return an error
        early); a thread's error is kept in args.failed[thread], and the run returns the first."""
        body = "\n".join(lines)
        bases = ["base"] + [f"base_{p.name}" for p in code.plan.pools]
        locals_ = [f"    uint8_t *const {b} = args->{b};" for b in bases if re.search(rf"\b{b}\b", body)]
        locals_ += [f"    {'const ' if e['kind'] == 'input' else ''}{e['c_type']} *const {e['c_name']} = args->{e['c_name']};"
                    for e in code.io if re.search(rf"\b{re.escape(e['c_name'])}\b", body)]
        # node k may lift more than one loop (a feed-forward block's members): _1, _2, ... after the first
        name = f"{prefix}_task_{k}" + (f"_{lifted[k]}" if lifted[k] else "")
        lifted[k] += 1
        head = (f"    const {prefix}_run_args *const args = (const {prefix}_run_args *)ctx;\n"
                + "\n".join(locals_ + ["    (void)args, (void)thread;", body]) + "\n}\n")
        if not returns_status:
            code.tasks.append(f"static void {name}(void *ctx, size_t first, size_t end, size_t thread)\n{{\n" + head)
            return f"    moa_pool_for(pool, {items}, {name}, &args);\n"
        code.task_statuses = True
        code.tasks.append(f"static moa_status {name}_items(void *ctx, size_t first, size_t end, size_t thread)\n{{\n"
                          + head + "\n"
                          f"static void {name}(void *ctx, size_t first, size_t end, size_t thread)\n{{\n"
                          f"    const moa_status status = {name}_items(ctx, first, end, thread);\n"
                          "    if (status != MOA_OK) {\n"
                          f"        ((const {prefix}_run_args *)ctx)->failed[thread] = status;\n"
                          "    }\n}\n")
        return (f"    moa_pool_for(pool, {items}, {name}, &args);\n"
                + check_status(f"{prefix}_failure(failed)"))
    return lift


def check_memory(board: Board, source: str, needed: dict[str, int]) -> None:
    """Refused before weights.bin is written: the model's memory past what the board states; on
    a bare-metal board, the weights past their memory and the rest (arena, inputs and outputs,
    state) past the data's memory with the board's stack, each named with what it lacks. The
    linker script then holds the whole program to the part: the code beside the weights, its
    static data beside the arena (codegen.linker)."""
    what = source or "the model"
    if board.bare_metal:
        weights, data = board.memory_for("weights"), board.memory_for("data")
        rest = {k: v for k, v in needed.items() if k != "weights"} | {"stack": board.stack_bytes}
        for memory, parts in ((weights, {"weights": needed.get("weights", 0)}), (data, rest)):
            if sum(parts.values()) > memory.size:
                raise MoaEdgeError(f"{what} does not fit board {board.name}: its {', '.join(parts)} need "
                                   f"{sum(parts.values())} bytes of memory {memory.name!r} ({memory.kind}, "
                                   f"{memory.size} bytes): {sum(parts.values()) - memory.size} bytes short ("
                                   + ", ".join(f"{k} {v}" for k, v in parts.items()) + ")")
        return
    if sum(needed.values()) > board.memory_bytes():
        raise MoaEdgeError(f"{what} needs {sum(needed.values())} bytes of memory ("
                           + ", ".join(f"{k} {v}" for k, v in needed.items())
                           + f"), more than the {board.memory_bytes()} bytes board {board.name} states")


POOL_SOURCE = "pool.c"  # moa/pool.h
TEMPLATE_FILES = ("model.h", "model.c", "attention.h", "attention.c", "weights.h", "weights.S", "main.c", "SConstruct")


def write_project(out_dir: Path, subst: dict[str, str], templates: dict[str, str], weights: list[tuple[Tensor, str]],
                  sources: set[str], board: Board) -> None:
    """The project's files: each template (file name -> template name) with @KEY@ replaced from
    subst, the weights (weights.bin and their symbols), the runtime sources the calls need, and
    a bare-metal board's linker scripts and startup.c."""
    subst = dict(subst)
    sources = sources | {POOL_SOURCE}  # every run entry point takes a worker pool
    subst["WEIGHT_DECLS"] = "".join(
        f"extern const {dtypes.dtype(t.dtype).c_type} {sym}[{max(t.size, 1)}];\n" for t, sym in weights)  # C99 has no [0]
    blob, symbols = _weights_blob(weights)
    subst["WEIGHT_SYMBOLS"] = symbols
    subst["WEIGHTS_PRESENT"] = "1" if weights else "0"
    subst["RUNTIME_SOURCES"] = "".join(f', "runtime/src/{s}"' for s in sorted(sources))
    subst["RUNNER_SOURCES"] = ", ".join(f'"{s}"' for s in ["main.c"] + ([STARTUP] if board.bare_metal else []))
    (out_dir / "weights.bin").write_bytes(blob)
    for name, template in templates.items():
        # One pass: text substituted (kernels, comments) is never searched for @KEY@ again.
        text = re.sub(r"@([A-Za-z_]+)@", lambda m: subst.get(m.group(1), m.group(0)),
                      (TEMPLATES / (template + ".in")).read_text())
        (out_dir / name).write_text(text)
    shutil.copytree(C_RUNTIME_DIR / "include", out_dir / "runtime" / "include")
    for s in sorted(sources):  # "x86/gemm_f32_avx2.c": ISA variants sit in their own folders
        (out_dir / "runtime" / "src" / s).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(C_RUNTIME_DIR / "src" / s, out_dir / "runtime" / "src" / s)
    write_linker_scripts(out_dir, board)
    write_startup(out_dir, board)


def emit_project(graph: Graph, out_dir: Path, prefix: str = "model", board: Board | None = None,
                 source: str = "", pools: list[PoolRequest] = ()) -> dict:
    """Write the project for `board` (default: the host) into out_dir (which must exist and be
    empty), its intermediates spread over the board's memory pools and those of `pools`
    (--pool); returns report.json's content."""
    out_dir = Path(out_dir)
    board = board or load_board("host")
    P = check_prefix(prefix).upper()
    runner_bytes = io_bytes(graph)
    weights_bytes = sum(t.nbytes for t in graph.weights())
    check_memory(board, source, {"weights": weights_bytes, "inputs and outputs": runner_bytes})
    code = graph_code(graph, prefix, board, prefix, lift_loops=True, pools=graph_pools(graph, board, pools))
    plan, io, weights = code.plan, code.io, code.weights
    kernels, kernel_decls, calls, sources = code.kernels, code.kernel_decls, code.calls, code.sources
    check_memory(board, source, {"weights": weights_bytes, "arena": plan.total_bytes,
                                 "inputs and outputs": runner_bytes})

    subst = {
        "P": P, "p": prefix, "SOURCE": c_comment_text(source), "BOARD": c_comment_text(board.name),
        "ARENA_BYTES": str(plan.total_bytes), "WEIGHTS_BYTES": str(weights_bytes), "MAX_THREADS": str(graph.max_threads),
        "WEIGHTS_BY_TYPE": weight_type_macros(P, weights),
        "NUM_INPUTS": str(len(graph.inputs)), "NUM_OUTPUTS": str(len(graph.outputs)),
        # (A model with no intermediates needs no arena bytes: `size < 0u` would not compile with -Werror.)
        "ARENA_SIZE_CHECK": (f"    if (arena_bytes < {P}_ARENA_BYTES) {{\n        return MOA_ERR_ARENA_TOO_SMALL;\n    }}\n"
                             if plan.total_bytes else "    (void)arena_bytes;\n"),
    }
    io_macros, args, v_unpack = [], [], []
    for e in io:
        M = f"{P}_{e['kind'].upper()}_{e['c_name'].upper()}"
        io_macros.append(f"/* {e['kind']} '{c_comment_text(e['name'])}': {e['dtype']} {e['shape']} */\n"
                         f"#define {M}_NAME {c_string_literal(e['name'])}\n#define {M}_ELEMS {e['elems']}u\n#define {M}_BYTES {e['bytes']}u\n"
                         f"#define {M}_SHAPE {{{', '.join(map(str, e['shape']))}}}\n")
        const = "const " if e["kind"] == "input" else ""
        args.append(f"{const}{e['c_type']} *{e['c_name']}")
    ins = [e for e in io if e["kind"] == "input"]
    outs = [e for e in io if e["kind"] == "output"]
    v_unpack = ([f"(const {e['c_type']} *)inputs[{k}]" for k, e in enumerate(ins)]
                + [f"({e['c_type']} *)outputs[{k}]" for k, e in enumerate(outs)])
    subst["IO_MACROS"] = "\n".join(io_macros)
    pool_args = [f"void *{p.name}_pool" for p in plan.pools]
    subst["RUN_ARGS"] = ",\n        ".join(args + ["void *arena", "size_t arena_bytes", *pool_args, "moa_pool *pool"])
    # The definition's pointers are restrict (the prototype's need not be, and C++ has no
    # restrict): a loop between an input or output and the arena may then be vectorised.
    subst["RUN_PARAMS"] = ",\n        ".join([a.replace(" *", " *restrict ") for a in args]
                                            + ["void *restrict arena", "size_t arena_bytes",
                                               *(a.replace(" *", " *restrict ") for a in pool_args), "moa_pool *pool"])
    subst["RUN_V_CALL"] = ", ".join(v_unpack + ["arena", "arena_bytes", *(f"pools[{k}]" for k in range(len(plan.pools))),
                                                "pool"])
    subst["RUN_V_POOLS"] = ", void *const pools[]" if plan.pools else ""
    subst["POOL_MACROS"] = "".join(
        f"#define {P}_POOL_{p.name.upper()}_BYTES {plan.pool_bytes[p.name]}u /* memory pool {p.name}"
        f"{f' ({p.kind} of memory {p.memory})' if p.memory else ''}: the intermediates placed there */\n"
        f"#define {P}_POOL_{p.name.upper()}_SECTION {c_string_literal(p.section)}\n" for p in plan.pools)
    subst["POOL_SETUP"] = "".join(
        f"    uint8_t *const base_{p.name} = (uint8_t *){p.name}_pool;\n" for p in plan.pools)
    subst["POOL_CHECKS"] = "".join(
        f"    if ({p.name}_pool == NULL) {{\n        return MOA_ERR_NULL_ARGUMENT;\n    }}\n"
        f"    if ((uintptr_t){p.name}_pool % MOA_ARENA_ALIGN != 0) {{\n        return MOA_ERR_ARENA_MISALIGNED;\n    }}\n"
        for p in plan.pools)
    subst["MAIN_POOLS"] = "".join(
        f"static unsigned char {p.name}_pool[{P}_POOL_{p.name.upper()}_BYTES] __attribute__((aligned(MOA_ARENA_ALIGN)"
        + (f", section({P}_POOL_{p.name.upper()}_SECTION)" if p.section else "") + "));\n" for p in plan.pools)
    subst["MAIN_POOL_ARRAY"] = ("    void *const pools[] = {" + ", ".join(f"{p.name}_pool" for p in plan.pools) + "};\n"
                                if plan.pools else "")
    subst["MAIN_RUN_POOLS"] = ", pools" if plan.pools else ""
    subst["KERNELS"] = "\n".join(kernels)
    subst["KERNEL_DECLS"] = "\n".join(kernel_decls)
    # Loops lifted onto the pool read the arena and the run's inputs and outputs from `args`.
    fields = (["uint8_t *base;"] + [f"uint8_t *base_{p.name};" for p in plan.pools]
              + [f"{'const ' if e['kind'] == 'input' else ''}{e['c_type']} *{e['c_name']};" for e in io])
    failure = ""
    if code.task_statuses:  # each thread's error from a lifted task that returns a status
        fields.append("moa_status *failed; /* [MAX_THREADS] */")
        failure = (f"/* The first error a thread of the last job kept (MOA_OK: none). */\n"
                   f"static moa_status {prefix}_failure(const moa_status *failed)\n{{\n    size_t k;\n"
                   f"    for (k = 0; k < {P}_MAX_THREADS; k++) {{\n"
                   "        if (failed[k] != MOA_OK) {\n            return failed[k];\n        }\n    }\n"
                   "    return MOA_OK;\n}\n\n")
    subst["TASKS"] = (f"/* What the loops lifted onto the worker pool read: the run's arena and its inputs and outputs. */\n"
                      f"typedef struct {{\n" + "".join(f"    {f}\n" for f in fields) + f"}} {prefix}_run_args;\n\n"
                      + failure + "\n".join(code.tasks) + "\n") if code.tasks else ""
    subst["RUN_ARGS_DECL"] = (f"    {prefix}_run_args args;\n" if code.tasks else "") + (
        f"    moa_status failed[{P}_MAX_THREADS] = {{MOA_OK}}; /* MOA_OK is 0: all of them */\n"
        if code.task_statuses else "")
    subst["RUN_ARGS_SETUP"] = ("    args.base = base;\n" + "".join(f"    args.base_{p.name} = base_{p.name};\n" for p in plan.pools)
                               + "".join(f"    args.{e['c_name']} = {e['c_name']};\n" for e in io)
                               + ("    args.failed = failed;\n" if code.task_statuses else "") if code.tasks else "")
    # An input only shape inference needed (a Reshape target) is not read at run time.
    subst["CALLS"] = "".join(f"    (void){e['c_name']};\n" for e in ins) + "".join(calls)
    subst["MAIN_BUFFERS"] = "".join(
        f"static {e['c_type']} {e['kind']}_{k}[{e['elems']}];\n" for k, e in enumerate(ins)) + "".join(
        f"static {e['c_type']} {e['kind']}_{k}[{e['elems']}];\n" for k, e in enumerate(outs))
    subst["MAIN_INPUTS"] = ", ".join(f"input_{k}" for k in range(len(ins))) or "NULL"
    subst["MAIN_OUTPUTS"] = ", ".join(f"output_{k}" for k in range(len(outs)))
    subst["MAIN_INPUT_BYTES"] = ", ".join(f"sizeof input_{k}" for k in range(len(ins))) or "0"
    subst["MAIN_OUTPUT_BYTES"] = ", ".join(f"sizeof output_{k}" for k in range(len(outs)))
    write_project(out_dir, subst, {name: name for name in TEMPLATE_FILES}, weights, sources, board)

    report = {
        "source": source,
        "board": board.name,
        "max_threads": graph.max_threads,
        "prefix": prefix,
        "io": io,
        "attention_blocks": [dict(node=n.name, **n.attrs["spec"].describe(), predicted=n.attrs["cost"].describe())
                             for n in graph.nodes if n.op == "MoaAttention"],
        "ops": [{"node": n.name, "op": n.op} for n in graph.nodes],
        "memory": {**plan.describe(), "weights_bytes": weights_bytes,
                   "weights_bytes_by_type": bytes_by_type(t for t, _ in weights),
                   "io_bytes": runner_bytes},
        "predicted": predict_model(graph, board, plan.total_bytes),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
