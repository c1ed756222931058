"""moa-edge command line: parse, call, print."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys

import numpy as np

from moa_edge.errors import MoaEdgeError


def _progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def _write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


def cmd_convert(a) -> int:
    from moa_edge.converters import parse_input_shapes
    from moa_edge.pipeline import convert
    report = convert(a.model, a.output, board=a.board, input_shapes=parse_input_shapes(a.input_shape), prefix=a.prefix)
    blocks = report["attention_blocks"]
    print(f"{a.model} -> {a.output}: {len(blocks)} attention block(s), arena {report['memory']['arena_bytes']} B, "
          f"weights {report['memory']['weights_bytes']} B")
    for b in blocks:
        print(f"  {b['node']}: {b['pattern']}, shape {b['shape']}, causal={b['is_causal']}, mask={b['mask']}")
    _write_json(a.json, report)
    return 0


def cmd_build(a) -> int:
    from moa_edge.harness.boards import load_board
    from moa_edge.harness.build import build
    binary = build(Path(a.project), load_board(a.board))
    print(binary)
    _write_json(a.json, {"ok": True, "binary": str(binary), "board": a.board})
    return 0


def cmd_run(a) -> int:
    from moa_edge.harness.boards import load_board
    from moa_edge.harness.build import build
    from moa_edge.harness.inputs import load_npz
    from moa_edge.harness.runner import check_inputs, project_io, run
    board = load_board(a.board)
    project = Path(a.project)
    io = project_io(project)
    inputs = check_inputs(io, load_npz(a.inputs), a.inputs)
    binary = build(project, board)
    outputs, run_us = run(binary, board, io, inputs)
    np.savez(a.outputs, **outputs)
    print(f"{board.name}: wrote {', '.join(outputs)} to {a.outputs} (run {run_us:.1f} us)")
    _write_json(a.json, {"ok": True, "board": board.name, "outputs": a.outputs, "run_us": run_us})
    return 0


def cmd_validate(a) -> int:
    from moa_edge.converters import parse_input_shapes
    from moa_edge.harness.boards import parse_board_list
    from moa_edge.pipeline import validate
    boards = parse_board_list(a.board)
    result = validate(a.model, boards, inputs_path=a.inputs, input_shapes=parse_input_shapes(a.input_shape),
                      seed=a.seed, progress=_progress)
    print(format_table(result))
    _write_json(a.json, result)
    return 0 if result["ok"] else 1


def format_table(result: dict) -> str:
    def num(x):
        return "-" if x is None else f"{x:.2e}"
    rows = [("board", "max abs err", "max rel err", "max ulp", "result")]
    check = result.get("importer_check")
    if check:
        rows.append(("(onnx reference)", num(check.get("max_abs_err")), num(check.get("max_rel_err")),
                     str(check.get("max_ulp", "-")), {True: "pass", False: "FAIL", None: "n/a"}[check["ok"]]))
    for name, r in result["boards"].items():
        rows.append((name, num(r["max_abs_err"]), num(r["max_rel_err"]), str(r["max_ulp"] if r["max_ulp"] is not None else "-"),
                     "pass" if r["ok"] else "FAIL"))
    widths = [max(len(r[k]) for r in rows) for k in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for name, r in result["boards"].items():
        if r.get("error"):
            lines.append(f"{name}: {r['error']}")
    tol = result["tolerance"]
    lines.append(f"tolerance: max abs <= {tol['max_abs_err']:g}, max rel <= {tol['max_rel_err']:g} vs PyTorch float64; "
                 f"{'ALL PASS' if result['ok'] else 'FAILED'}")
    return "\n".join(lines)


def cmd_boards(a) -> int:
    from moa_edge.harness.boards import board_names, load_board
    boards = [load_board(n) for n in board_names()]
    rows = []
    for b in boards:
        c = b.caches
        caches = ", ".join(f"{lvl.upper()} {c[lvl]['size'] // 1024} KiB" for lvl in ("l1d", "l2", "l3") if lvl in c)
        missing = b.missing_tools()
        rows.append({"name": b.name, "arch": b.arch, "isa": b.isa, "vlen": b.vlen, "caches": caches,
                     "run": b.run["kind"], "ready": not missing, "missing": missing, "description": b.description})
        print(f"{b.name:8} {b.arch:8} {b.isa:5} {caches:32} {b.run['kind']:7} "
              f"{'ready' if not missing else 'missing: ' + '; '.join(missing)}")
        print(f"         {b.description}")
    _write_json(a.json, {"boards": rows})
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moa-edge", description="ONNX transformers to fixed-memory C for edge boards")
    sub = p.add_subparsers(dest="verb", required=True)

    def verb(name, fn, help):
        s = sub.add_parser(name, help=help)
        s.add_argument("--json", metavar="FILE", help="also write the result as JSON")
        s.set_defaults(fn=fn)
        return s

    s = verb("convert", cmd_convert, "import an ONNX model, rewrite attention, emit a C project")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True, help="project folder to create")
    s.add_argument("--board", default="host")
    s.add_argument("--input-shape", action="append", metavar="NAME=D0xD1...", help="pin a symbolic input shape")
    s.add_argument("--prefix", default="model", help="C symbol prefix (default: model)")

    s = verb("build", cmd_build, "compile a converted project for a board with SCons")
    s.add_argument("project")
    s.add_argument("--board", default="host")

    s = verb("run", cmd_run, "run a converted project on a board")
    s.add_argument("project")
    s.add_argument("--board", default="host")
    s.add_argument("--inputs", required=True, help=".npz keyed by graph input names")
    s.add_argument("--outputs", required=True, help=".npz to write, keyed by graph output names")

    s = verb("validate", cmd_validate, "convert, build, run on boards and compare with PyTorch float64")
    s.add_argument("model")
    s.add_argument("--board", default="host", help="comma-separated board names")
    s.add_argument("--inputs", help=".npz keyed by graph input names (default: seeded random)")
    s.add_argument("--input-shape", action="append", metavar="NAME=D0xD1...")
    s.add_argument("--seed", type=int, default=0)

    verb("boards", cmd_boards, "list the board catalogue")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except MoaEdgeError as exc:
        print(f"moa-edge: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("moa-edge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
