"""moa-edge command line: parse, call, print."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import shlex
import shutil
import signal
import sys
import threading

try:  # Ctrl-C while the libraries load: nothing made yet, so one line and 130, not a traceback
    import numpy as np

    from moa_edge.errors import MoaEdgeError
    from moa_edge.harness import ownership
    from moa_edge.harness.ssh import TIMEOUT_S
    from moa_edge.target import Board, load_board, load_catalogue
except KeyboardInterrupt:
    print("moa-edge: interrupted (SIGINT)", file=sys.stderr)
    raise SystemExit(128 + signal.SIGINT) from None


def board_arg(text: str) -> Board:
    """A --board value: a catalogue name (boards/NAME.toml) or the path of a board's TOML file.
    The one place a board's name becomes the Board that everything below is given."""
    return load_board(text.strip())


def board_list_arg(text: str) -> list[Board]:
    """A comma-separated --board value (validate, bench): each a catalogue name or a TOML path."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise MoaEdgeError("--board needs at least one board name")
    return [board_arg(n) for n in names]


def _progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def _write_file(option: str, path: str, write) -> None:
    """write(file object) to path: a failure (disk full, /proc, an immutable folder) is one clear
    error and leaves no partial file; a file written into a project folder is listed there as moa-edge's."""
    opened = False
    try:
        with open(path, "wb") as f:
            opened = True
            write(f)
    except OSError as exc:
        if opened and Path(path).is_file():  # what we truncated and half wrote
            Path(path).unlink(missing_ok=True)
        raise MoaEdgeError(f"{option} {path}: cannot write it: {exc.strerror or exc}") from None
    ownership.claim(path)


def _write_json(path: str | None, data: dict) -> None:
    if path:
        text = json.dumps(data, indent=2, default=str) + "\n"
        _write_file("--json", path, lambda f: f.write(text.encode()))


def _pool_line(pool: dict) -> str:
    """A memory pool of report.json: its bytes, and its board memory or the section it goes to."""
    where = f"in {pool['kind']} {pool['memory']}" if pool["memory"] else f"(section {pool['section'] or 'none'})"
    return f"  memory pool {pool['name']}: {pool['bytes']} B {where}"


def _by_type(totals: dict) -> str:
    return ", ".join(f"{kind} {n} B" for kind, n in totals.items()) or "none"


WEIGHTS_HELP = ("store the float weights of MatMul, Gemm, Conv and embedding tables quantized: int8 (a scale per "
                "output column), int8:BLOCK, int4[:BLOCK] (a float16 scale and minimum per BLOCK rows, default 32, "
                "llama.cpp's Q4_1; the output layer stays int8), fp16 (float16 values, multiplied in float32), or "
                "fp16:native (multiplied in float16 on a board whose core has it: rpi5, jetson-orin-nano, bpi-f3)")


ACTIVATIONS_HELP = ("int8: quantize the activations that multiply int8 weights to int8 at run time, a scale per row, "
                    "and run the integer GEMM (needs --weights int8)")


def cmd_convert(a) -> int:
    from moa_edge.converters import parse_input_shapes
    from moa_edge.passes import parse_activations, parse_weights
    from moa_edge.pipeline import convert
    from moa_edge.pipeline import parse_schedule
    board = board_arg(a.board)
    if a.max_context is None and a.prefill_chunk is not None:
        raise MoaEdgeError("--prefill-chunk is for a generation build: give --max-context N too")
    if a.max_context is None and a.kv_cache is not None:
        raise MoaEdgeError("--kv-cache is for a generation build: give --max-context N too")
    weights = parse_weights(a.weights)
    activations = parse_activations(a.activations, weights)
    from moa_edge.codegen.pools import parse_pool
    report = convert(a.model, a.output, board=board, input_shapes=parse_input_shapes(a.input_shape), prefix=a.prefix,
                     scratch_budget=a.scratch_budget, schedule=parse_schedule(a.schedule),
                     fuse_attention=a.attention == "fused", max_context=a.max_context,
                     weights=weights, activations=activations, kv_cache=a.kv_cache or "float32", threads=a.threads,
                     pools=[parse_pool(p) for p in a.pool or []],
                     **({"prefill_chunk": a.prefill_chunk} if a.prefill_chunk else {}))
    blocks = report["attention_blocks"]
    print(f"{a.model} -> {a.output}: {len(blocks)} attention block(s), arena {report['memory']['arena_bytes']} B, "
          f"weights {report['memory']['weights_bytes']} B ({_by_type(report['memory']['weights_bytes_by_type'])})")
    for pool in report["memory"].get("pools", []):
        print(_pool_line(pool))
    if "generation" in report:
        g = report["generation"]
        row = {"float32": f"{g['head_dim']} x 4", "float16": f"{g['head_dim']} x 2"}.get(
            g["kv_cache"], f"({g['head_dim']} int8 + a float32 scale)")
        print(f"  generation: max context {g['max_context']} tokens, key/value cache {report['memory']['cache_bytes']} B "
              f"({g['layers']} layers x 2 x {g['kv_heads']} heads x {g['max_context']} x {row}), "
              f"state {report['memory']['state_bytes']} B, prefill chunk {g['prefill_chunk']}"
              + (", tokenizer copied" if g["tokenizer"] else ""))
    for b in blocks:
        p = b["predicted"]
        print(f"  {b['node']}: {b['pattern']}, shape {b['shape']}, causal={b['is_causal']}, mask={b['mask']}")
        print(f"    ONF {p['strategy']} Br={p['block_q']} Bc={p['block_k']}: scratch {p['scratch_bytes']} B, "
              f"predicted DRAM {p['dram_bytes']} B on {board.name}")
    _write_json(a.json, report)
    return 0


def cmd_build(a) -> int:
    from moa_edge.harness.build import build
    board = board_arg(a.board)
    binary = build(Path(a.project), board)
    print(binary)
    _write_json(a.json, {"ok": True, "binary": str(binary), "board": board.name})
    return 0


def cmd_run(a) -> int:
    from moa_edge.harness.build import build
    from moa_edge.harness.inputs import load_npz
    from moa_edge.harness.runner import check_inputs, project_io, project_threads, run
    board = board_arg(a.board)
    project = Path(a.project)
    io = project_io(project)
    threads = project_threads(project, a.threads)
    inputs = check_inputs(io, load_npz(a.inputs), a.inputs)
    binary = build(project, board)
    ssh = _ssh_target(a, [board])
    stats = {}
    outputs, run_us = run(binary, board, io, inputs, ssh=ssh, timeout=a.timeout, threads=threads, stats=stats)
    _write_file("--outputs", a.outputs, lambda f: np.savez(f, **outputs))
    where = f" over ssh {ssh.destination}" if ssh else ""
    took = (f"{stats['instructions_per_inference']:,} instructions, counted by qemu" if board.bare_metal
            else f"run {run_us:.1f} us")
    print(f"{board.name}{where}: wrote {', '.join(outputs)} to {a.outputs} ({took})")
    _write_json(a.json, {"ok": True, "board": board.name, "outputs": a.outputs, "run_us": run_us,
                         "instructions_per_inference": stats.get("instructions_per_inference"),
                         "ssh": ssh.destination if ssh else None})
    return 0


def cmd_validate(a) -> int:
    from moa_edge.converters import parse_input_shapes
    from moa_edge.passes import parse_weights
    from moa_edge.pipeline import validate
    boards = board_list_arg(a.board)
    from moa_edge.pipeline import parse_schedule
    from moa_edge.codegen.pools import parse_pool
    result = validate(a.model, boards, inputs_path=a.inputs, input_shapes=parse_input_shapes(a.input_shape),
                      seed=a.seed, scratch_budget=a.scratch_budget, schedule=parse_schedule(a.schedule),
                      ssh=_ssh_target(a, boards), timeout=a.timeout, progress=_progress,
                      weights=parse_weights(a.weights), threads=a.threads, pools=[parse_pool(p) for p in a.pool or []])
    print(format_table(result))
    _write_json(a.json, result)
    return 0 if result["ok"] else 1


def cmd_generate(a) -> int:
    from moa_edge.harness.build import build
    from moa_edge.harness.generation import Sampling, generate_ids, generation_info
    from moa_edge.harness.runner import project_threads
    board = board_arg(a.board)
    project = Path(a.project)
    info = generation_info(project)
    threads = project_threads(project, a.threads)
    sampling = Sampling(a.temperature, a.top_k, a.top_p, a.seed)
    sampling.check()
    tokenizer = None
    if a.prompt is not None:
        from moa_edge.harness.tokenizer import Tokenizer
        tokenizer = Tokenizer(Path(a.tokenizer) if a.tokenizer else project / "tokenizer")
        prompt_ids = tokenizer.encode(a.prompt, chat=a.chat)
    else:
        if a.tokenizer or a.chat:
            raise MoaEdgeError("--tokenizer and --chat go with --prompt TEXT, not --prompt-ids")
        prompt_ids = _id_list("--prompt-ids", a.prompt_ids)
    stop_ids = _id_list("--stop-ids", a.stop_ids) if a.stop_ids else (tokenizer.stop_ids if tokenizer else [])
    binary = build(project, board)
    ssh = _ssh_target(a, [board])
    shown, new = "", []

    def on_token(token: int) -> None:  # the text as it comes (a character may span tokens)
        nonlocal shown
        new.append(token)
        if tokenizer is None:
            print(token, end=" ", flush=True)
            return
        text = tokenizer.decode(new)
        if text.startswith(shown) and not text.endswith("\ufffd"):
            print(text[len(shown):], end="", flush=True)
            shown = text
    result = generate_ids(binary, board, info, prompt_ids, a.max_new_tokens, sampling, stop_ids, ssh=ssh,
                          timeout=a.timeout, on_token=on_token, threads=threads)
    result.pop("logits")
    if tokenizer is not None:
        result["text"] = tokenizer.decode(result["tokens"])
        print(result["text"][len(shown):])
    else:
        print()
    rate = lambda r: f"{r:.1f} tokens/s" if r else "n/a"  # noqa: E731
    memory = info["memory"]
    print(f"{board.name}{f' over ssh {ssh.destination}' if ssh else ''}: prefill {len(prompt_ids)} tokens "
          f"{rate(result['prefill_tokens_per_s'])}, decode {result['decode_steps']} steps "
          f"{rate(result['decode_tokens_per_s'])}; peak resident "
          + (f"{result['max_rss_bytes'] / 2**20:.1f} MiB" if result["max_rss_bytes"] else "n/a")
          + f" (weights {memory['weights_bytes'] / 2**20:.1f} MiB, cache {memory['cache_bytes'] / 2**20:.1f} MiB, "
          f"arena {memory['arena_bytes'] / 2**20:.2f} MiB)"
          + ("; stopped at the end of the context" if result["context_full"] else ""), file=sys.stderr)
    result.update({"ok": True, "board": board.name, "ssh": ssh.destination if ssh else None, "prompt_ids": prompt_ids,
                   "state_bytes": memory["state_bytes"], "arena_bytes": memory["arena_bytes"],
                   "weights_bytes": memory["weights_bytes"]})
    _write_json(a.json, result)
    return 0


def _id_list(option: str, text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.split(",")]
    except ValueError:
        raise MoaEdgeError(f"{option} {text!r} is not a comma-separated list of token ids") from None
    return ids


def _ssh_target(a, boards):
    """--ssh (or the one board's [run] ssh address), for a single board."""
    from moa_edge.harness.ssh import SshTarget
    address = a.ssh or (boards[0].run.get("ssh") if len(boards) == 1 else None)
    if address is None:
        return None
    if len(boards) != 1:
        raise MoaEdgeError("--ssh names one board's address: give a single --board with it")
    return SshTarget.parse(address, a.ssh_config)


def _device_runner(command: str | None) -> list[str] | None:
    if command is None:
        return None
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise MoaEdgeError(f"--device-runner {command!r}: cannot split it into words ({e})") from None
    if not words or shutil.which(words[0]) is None:
        raise MoaEdgeError(f"--device-runner {command!r}: {words[0] if words else 'the command'!r} is not a program "
                           "on PATH")
    return words


def cmd_energy(a) -> int:
    from moa_edge.energy import measure_energy
    from moa_edge.harness.inputs import load_npz
    board = board_arg(a.board)
    result = measure_energy(a.project, board, a.sensor, a.sysfs_root, a.iterations, a.idle_ms, a.interval_us,
                            load_npz(a.inputs) if a.inputs else None, ssh=_ssh_target(a, [board]), timeout=a.timeout,
                            progress=_progress, device_runner=_device_runner(a.device_runner))
    ci = result["ci95_joules"]
    print(f"{board.name}: {result['joules_per_inference'] * 1e3:.3f} mJ per inference"
          + (f" (95% CI +/- {ci * 1e3:.3f} mJ)" if ci is not None else " (too few samples for an interval)"))
    print(f"  mean power {result['active_power_w']:.3f} W running, {result['idle_power_w']:.3f} W idle; "
          f"{result['iterations']} runs in {result['active_s']:.3f} s ({result['mean_run_s'] * 1e3:.3f} ms each); "
          f"{result['samples']['active']} + {result['samples']['idle']} samples of {result['sensor']}")
    pred = result["predicted"]
    print(f"  predicted (cost model, {board.name}'s constants): {pred['energy_j'] * 1e3:.3f} mJ per inference, "
          f"of which attention {pred['attention_energy_j'] * 1e3:.3f} mJ")
    for block in pred["attention_blocks"]:
        print(f"    {block['node']}: {block['energy_j'] * 1e3:.3f} mJ, {block['dram_bytes']} B from DRAM "
              f"(unfused, scores materialised: {block['unfused_dram_bytes']} B)")
    _write_json(a.json, result)
    return 0


def cmd_report(a) -> int:
    from moa_edge.harness.report import write_report
    result = write_report(a.project, a.output, validation=a.validation, energy=a.energy)
    print(f"wrote {result['html']} (self-contained) and {len(result['pngs'])} PNG(s) beside it"
          + "".join(f"; {k} from {v}" for k, v in result["sources"].items() if k != "report"))
    _write_json(a.json, result)
    return 0


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
        elif r.get("instructions_per_inference") is not None:
            lines.append(f"{name}: {r['instructions_per_inference']:,} instructions per inference (counted by qemu)")
    tol = result["tolerance"]
    same = " (of the same quantized weights)" if "accuracy" in result else ""
    bound = (f"max abs <= {tol['max_abs_err']:g}, " if "max_abs_err" in tol else "") + f"max rel <= {tol['max_rel_err']:g}"
    lines.append(f"tolerance: {bound} vs PyTorch float64"
                 f"{same}; {'ALL PASS' if result['ok'] else 'FAILED'}")
    if "accuracy" in result:
        lines.append(f"accuracy of --weights {result['accuracy']['weights']} against PyTorch float64 of the float model:")
        for name, r in result["accuracy"]["outputs"].items():
            top1 = f", top-1 agreement {r['top1_agreement']:.1%}" if "top1_agreement" in r else ""
            lines.append(f"  {name}: cosine {r['cosine']:.6f}, max abs {r['max_abs_err']:.3g}, "
                         f"max rel {r['max_rel_err']:.3g}{top1}")
    return "\n".join(lines)


def cmd_inspect(a) -> int:
    from moa_edge.converters import parse_input_shapes
    from moa_edge.passes import parse_activations, parse_weights
    from moa_edge.pipeline import inspect
    board = board_arg(a.board)
    weights = parse_weights(a.weights)
    result = inspect(a.model, board, parse_input_shapes(a.input_shape), a.scratch_budget, a.max_context,
                     weights, parse_activations(a.activations, weights))
    if not a.derivation:
        for b in result["attention_blocks"]:
            b.pop("derivation")
    print(f"{a.model}: {len(result['attention_blocks'])} attention block(s); predictions for board {board.name}")
    for b in result["attention_blocks"]:
        s, p = b["shape"], b["predicted"]
        print(f"  {b['node']}: {b['pattern']}")
        print(f"    batch {s['batch']}, heads {s['q_heads']} (kv {s['kv_heads']}), q_len {s['q_len']}, kv_len {s['kv_len']}, "
              f"head_dim {s['head_dim']}, value_dim {s['value_dim']}")
        print(f"    scale {b['scale']:.6g}, causal {b['is_causal']}, softcap {b['softcap']:g}, mask {b['mask']}")
        print(f"    absorbed: {', '.join(b['absorbed_nodes'])}")
        print(f"    schedule: {p['strategy']} softmax, Br={p['block_q']}, Bc={p['block_k']}, scratch {p['scratch_bytes']} B")
        print(f"    predicted: DRAM {p['dram_bytes']} B ({p['dram_bytes'] / p['compulsory_bytes']:.2f}x compulsory"
              f"{'' if p['kv_fits_llc'] else ', K/V do not fit in the last-level cache'}), L1 fills "
              f"{p['l1_fill_bytes']} B, {p['flops']} flops, {p['exps']} exps, {p['energy_uj']:.3g} uJ")
        if a.derivation:
            print("    derivation:")
            for line in b["derivation"].splitlines():
                print("      " + line)
    print(f"  op types left: {', '.join(result['op_types']) or '-'}")
    for op, nodes in result["unsupported_ops"].items():
        print(f"  unsupported: {op} ({', '.join(nodes)})")
    if result["memory"]:
        m = result["memory"]
        print(f"  memory: arena {m['arena_bytes']} B ({m['algorithm']}; live-bytes lower bound "
              f"{m['live_bytes_lower_bound']} B), weights {m['weights_bytes']} B "
              f"({_by_type(m['weights_bytes_by_type'])}); peak at {m['peak_step']}: "
              f"{', '.join(m['live_at_peak'])}")
        for pool in m["pools"]:
            print(_pool_line(pool) + ": " + ", ".join(b for b, where in m["placement"].items() if where == pool["name"]))
    _write_json(a.json, result)
    return 0


def cmd_bench(a) -> int:
    if a.what == "generate":
        return _bench_generate(a)
    timed_attention = a.what == "attention" and not a.traffic  # bench attention's host timing takes these two
    for flag, given in (("--weights", a.weights), ("--no-onnxruntime", a.no_onnxruntime),
                        ("--host-march", a.host_march and not timed_attention),
                        ("--rounds", a.rounds != 1 and not timed_attention), ("--llama-python", a.llama_python)):
        if given:
            raise MoaEdgeError(f"{flag} is an option of bench generate{' and attention' if flag in ('--host-march', '--rounds') else ''}, "
                               f"not bench {a.what}{' --traffic' if a.traffic else ''}")
    a.board = a.board or "rpi4,k230"  # bench generate's default is the host alone
    if a.what == "gemm":
        return _bench_gemm(a)
    if a.what == "model":
        return _bench_model(a)
    if not a.traffic:
        return _bench_attention(a)
    from moa_edge.harness.traffic import measure, plot
    a.seq = a.seq or [256, 1024, 4096]
    a.heads = a.heads or [1, 8]
    boards = board_list_arg(a.board)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    points = []
    header = (f"{'board':6} {'seq':>5} {'heads':>5} {'schedule':>16} {'compulsory':>11} {'predicted':>11} "
              f"{'measured':>11} {'pred/meas':>9} {'meas/comp':>9} {'naive':>12} {'naive/fused':>11}")
    print(header)
    for board in boards:
        for heads in a.heads:
            for seq in a.seq:
                _progress(f"{board.name}: seq {seq}, {heads} head(s) under cachegrind")
                p = measure(seq, heads, a.head_dim, board, out / "work" / f"{board.name}-{seq}-{heads}",
                            naive=not a.no_naive, scratch_budget=a.scratch_budget).as_dict()
                points.append(p)
                sched = f"{p['schedule']['strategy']} {p['schedule']['block_q']}x{p['schedule']['block_k']}"
                naive = p["naive_dram_bytes"]
                print(f"{board.name:6} {seq:>5} {heads:>5} {sched:>16} {p['compulsory_bytes']:>11} "
                      f"{p['predicted_dram_bytes']:>11} {p['fused_dram_bytes']:>11} {p['predicted_over_measured']:>9.3f} "
                      f"{p['fused_over_compulsory']:>9.3f} {naive if naive else '-':>12} "
                      f"{p['naive_over_fused'] if naive else float('nan'):>11.2f}", flush=True)
    result = {"benchmark": "attention traffic (cachegrind)", "head_dim": a.head_dim, "points": points}
    (out / "traffic.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(points, out / "traffic.png")
    print(f"wrote {out / 'traffic.json'} and {out / 'traffic.png'}")
    _write_json(a.json, result)
    return 0


def _bench_attention(a) -> int:
    from moa_edge.harness.attention_bench import SEQS, bench_attention, plot, table
    heads = a.heads or [8]
    if len(heads) != 1:
        raise MoaEdgeError("bench attention times one head count: give --heads a single number")
    if a.count_seq is None:
        a.count_seq = 1024
    remote = board_list_arg(a.board) if a.ssh else []  # with --ssh, --board names the one board there
    ssh = _ssh_target(a, remote) if a.ssh else None
    result = bench_attention(seqs=a.seq or list(SEQS), causals={"both": (False, True), "yes": (True,), "no": (False,)}[a.causal],
                             heads=heads[0], head_dim=a.head_dim, repeat=a.repeat or 10, budget=a.budget,
                             count_seq=0 if a.no_count else a.count_seq, count_heads=a.count_heads,
                             time_host_side=not a.no_time, command="moa-edge " + " ".join(sys.argv[1:]),
                             board=remote[0] if remote else None, ssh=ssh, progress=_progress,
                             threads=a.threads or load_board("host").threads(), host_march=a.host_march or [],
                             rounds=a.rounds)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "attention.png")
    print(table(result))
    if result["board"]:
        for point in result["board"]["timing"]:
            print(f"{result['board']['board']} over ssh, seq {point['seq']}{' causal' if point['causal'] else ''}: "
                  f"moa-edge {point['time_us']['moa_edge']:.0f} us, naive C {point['time_us']['naive_c']:.0f} us "
                  f"({point['naive_over_moa_edge']:.1f}x)")
    for target, verdict in result["targets"].items():
        print(f"target {'met    ' if verdict['met'] else 'not met'}: {target} "
              f"({verdict.get('values', verdict.get('value'))})")
    print(f"wrote {out / 'attention.json'} and {out / 'attention.png'}")
    _write_json(a.json, result)
    return 0


def _bench_gemm(a) -> int:
    from moa_edge.harness.gemm_bench import SHAPES, bench_gemm, parse_shapes, table, write
    result = bench_gemm(shapes=parse_shapes(a.shapes) if a.shapes else SHAPES, repeat=a.repeat or 50, budget=a.budget,
                        rounds=a.gemm_rounds, threads=a.threads or 1, time_host_side=not a.no_time,
                        count=not a.no_count, baseline=Path(a.baseline) if a.baseline else None,
                        command="moa-edge " + " ".join(sys.argv[1:]), progress=_progress)
    path = write(result, Path(a.out))
    print(table(result))
    print(f"wrote {path}")
    _write_json(a.json, result)
    return 0


def _bench_model(a) -> int:
    from moa_edge.converters import parse_input_shapes
    from moa_edge.harness.model_bench import bench_model, plot
    from moa_edge.pipeline import convert
    if not a.model:
        raise MoaEdgeError("bench model needs the model file: moa-edge bench model MODEL.onnx")
    mcu = [b for b in board_list_arg(a.board) if b.bare_metal] if a.board else []
    if mcu:  # a microcontroller: instructions and the bytes of each memory, no onnxruntime beside it
        from moa_edge.harness.mcu_bench import bench_mcu, table
        if len(mcu) > 1 or a.ssh:
            raise MoaEdgeError("bench model on a bare-metal board: give that one board, without --ssh")
        result = bench_mcu(a.model, convert, mcu[0], parse_input_shapes(a.input_shape), a.inputs, progress=_progress)
        print(table(result))
        _write_json(a.json, result)
        return 0
    boards = board_list_arg(a.board) if a.ssh else []
    ssh = _ssh_target(a, boards) if a.ssh else None
    result = bench_model(a.model, convert, parse_input_shapes(a.input_shape), a.repeat or 20, a.inputs,
                         remote_board=boards[0] if boards else None, ssh=ssh, progress=_progress,
                         threads=a.threads or load_board("host").threads())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(a.model).stem
    (out / f"model-{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / f"model-{stem}.png")
    lat, mem = result["latency_us"], result["memory_bytes"]
    print(f"{a.model}: host latency {lat['moa_edge']:.0f} us vs onnxruntime {lat['onnxruntime']:.0f} us "
          f"(ratio {lat['ratio']:.2f}, {result['threads']} thread(s) each, best of {result['repeat']})")
    unfused = (f"without the attention rewrite {mem['arena_without_attention_rewrite']} B, ratio "
               f"{mem['arena_ratio_to_unfused']:.2f}" if mem["arena_without_attention_rewrite"]
               else f"no unfused baseline: {mem['unfused_error']}")
    print(f"  arena {mem['arena']} B ({unfused}); arena + weights {mem['arena'] + mem['weights']} B vs "
          f"onnxruntime resident growth {mem['onnxruntime_resident_growth']} B (ratio {mem['total_ratio_to_onnxruntime']:.2f})")
    if mem["moa_edge_max_resident"]:
        print(f"  measured: the C runner's peak resident memory {mem['moa_edge_max_resident']} B, whole process "
              f"(ratio {mem['resident_ratio_to_onnxruntime']:.2f} to onnxruntime's growth)")
    print(f"  convert {result['convert_s']:.1f} s, host build {result['host_build_s']:.1f} s")
    if result["board_latency"]:
        remote = result["board_latency"]
        print(f"  {remote['board']} over ssh {remote['ssh']}: {remote['moa_edge_us']:.0f} us (best of {result['repeat']})")
    print(f"wrote {out / f'model-{stem}.json'} and {out / f'model-{stem}.png'}")
    _write_json(a.json, result)
    return 0


def _bench_generate(a) -> int:
    from moa_edge.harness.generate_bench import bench_generate, table
    from moa_edge.passes import parse_weights
    from moa_edge.pipeline import convert
    weights = parse_weights(a.weights)  # a bad format fails before any work
    if not a.model:
        raise MoaEdgeError("bench generate needs the model file: moa-edge bench generate MODEL.onnx")
    board = board_arg(a.board) if a.board else None
    ssh = _ssh_target(a, [board]) if board else None
    if a.ssh and board is None:
        raise MoaEdgeError("--ssh runs moa-edge's side on a real board: name it with --board")
    prompt_ids = _id_list("--prompt-ids", a.prompt_ids) if a.prompt_ids else None
    result = bench_generate(a.model, convert, prompt_ids, a.prompt_tokens, a.new_tokens, a.threads or 1, a.repeat or 3,
                            a.gguf, board, ssh, progress=_progress, weights=weights,
                            onnxruntime=not a.no_onnxruntime, host_march=a.host_march or [], rounds=a.rounds,
                            llama_pythons=a.llama_python or [])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    form = f"-{weights.text.replace(':', '-')}" if weights is not None else ""
    path = out / f"generate-{Path(a.model).stem}{form}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {path}")
    _write_json(a.json, result)
    return 0


def cmd_boards(a) -> int:
    boards = load_catalogue(a.dir)  # every file validated: one error lists every broken one
    rows = []
    for b in boards:
        caches = ", ".join(f"{c.name.upper()} {c.size // 1024} KiB" for c in b.caches)
        missing = b.missing_tools()
        rows.append({**b.catalogue_entry(), "ready": not missing, "missing": missing})
        sensor = b.power_sensor.get("spec", b.power_sensor["kind"])
        print(f"{b.name:16} {b.arch:14} {b.isa:6} {caches:36} {b.run['kind']:11} {sensor:16} "
              f"{'ready' if not missing else 'missing: ' + '; '.join(missing)}")
        print(f"                 {b.description}")
        if b.memories:  # a bare-metal board: where the code, the weights and the data go
            print("                 memories: " + ", ".join(
                f"{m.name} {m.size // 1024} KiB @ {m.base:#010x}"
                + "".join(f" ({role})" for role in b.placement if b.placement[role] == m.name) for m in b.memories))
    _write_json(a.json, {"boards": rows})
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive integers")
    return values


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    values = _int_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return values[0]


ONE_BOARD = "a catalogue board's name (see `moa-edge boards`) or the path of a board TOML file"
SOME_BOARDS = "catalogue board names or paths of board TOML files"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moa-edge", description="ONNX transformers to fixed-memory C for edge boards")
    sub = p.add_subparsers(dest="verb", required=True)

    def verb(name, fn, help):
        s = sub.add_parser(name, help=help)
        s.add_argument("--json", metavar="FILE", help="also write the result as JSON")
        s.set_defaults(fn=fn)
        return s

    def pool_option(s):
        s.add_argument("--pool", action="append", metavar="NAME:SIZE[:SECTION]",
                       help="a memory pool for intermediates, filled (hottest buffers first) before the arena: on a "
                            "Linux board a region the runner places in SECTION; on a bare-metal board NAME:SIZE caps "
                            "one of its memories (each RAM memory is a pool already); model.h: "
                            "<P>_POOL_<NAME>_BYTES (repeatable)")

    s = verb("convert", cmd_convert, "import an ONNX model, rewrite attention, emit a C project")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True, help="project folder to create")
    s.add_argument("--board", default="host", help=ONE_BOARD)
    s.add_argument("--input-shape", action="append", metavar="NAME=D0xD1...", help="pin a symbolic input shape")
    s.add_argument("--prefix", default="model", help="C symbol prefix (default: model)")
    s.add_argument("--scratch-budget", type=int, metavar="BYTES", help="kernel scratch limit (default: the larger of L1D and L2/8)")
    s.add_argument("--schedule", metavar="STRATEGY:BRxBC[/sS]",
                   help="force an ONF schedule, e.g. online:16x64; /sS splits the key axis in S chunks "
                        "(split-K, online only, e.g. online:16x64/s4); Br above the query length stacks "
                        "the query heads of a K/V head (grouped-query decode)")
    s.add_argument("--attention", choices=["fused", "unfused"], default="fused",
                   help="unfused: keep the exported attention ops (scores materialised), the baseline")

    s.add_argument("--max-context", type=_positive_int, metavar="N",
                   help="a decoder exported with its key/value cache: build for generation, the cache holding N tokens "
                        "(the longest prompt + generation)")
    s.add_argument("--prefill-chunk", type=_positive_int, metavar="N",
                   help="prompt tokens per prefill call of a generation build (default 16)")
    s.add_argument("--weights", metavar="FORMAT", help=WEIGHTS_HELP)
    s.add_argument("--activations", metavar="FORMAT", help=ACTIVATIONS_HELP)
    s.add_argument("--kv-cache", metavar="TYPE",
                   help="the key/value cache of a generation build: float32 (default), int8 with a float32 scale "
                        "per cached row (one position of one kv head), about 4x smaller, or fp16 (IEEE halves, no "
                        "scale: each value rounded to the nearest half), 2x smaller; attention stays float32")
    s.add_argument("--threads", type=_positive_int, metavar="N",
                   help="the most threads a run may use: the arena holds a kernel scratch for each (default: the "
                        "board's cores; model.h's <P>_MAX_THREADS)")
    pool_option(s)

    s = verb("build", cmd_build, "compile a converted project for a board with SCons")
    s.add_argument("project")
    s.add_argument("--board", default="host", help=ONE_BOARD)

    s = verb("run", cmd_run, "run a converted project on a board")
    s.add_argument("project")
    s.add_argument("--board", default="host", help=ONE_BOARD)
    s.add_argument("--inputs", required=True, help=".npz keyed by graph input names")
    s.add_argument("--outputs", required=True, help=".npz to write, keyed by graph output names")

    def threads_option(s):
        s.add_argument("--threads", type=_positive_int, metavar="N",
                       help="threads of the runner's worker pool (default: the board's cores; the outputs are "
                            "bitwise the same for every count)")

    def timeout_option(s):
        s.add_argument("--timeout", type=_seconds, default=TIMEOUT_S, metavar="SECONDS",
                       help=f"stop the runner (and fail) when it runs longer (default {TIMEOUT_S})")

    def ssh_options(s):
        s.add_argument("--ssh", metavar="USER@HOST[:PORT]", help="run on a real board over ssh (key authentication)")
        s.add_argument("--ssh-config", metavar="FILE", help="an ssh_config file for that connection (ssh -F)")

    ssh_options(s)
    timeout_option(s)
    threads_option(s)

    s = verb("generate", cmd_generate, "generate text with a generation build (convert --max-context) on a board")
    s.add_argument("project", help="a project converted with --max-context")
    s.add_argument("--board", default="host", help=ONE_BOARD)
    prompt = s.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="the prompt, tokenized with the model's tokenizer")
    prompt.add_argument("--prompt-ids", metavar="ID,ID,...", help="the prompt as token ids")
    s.add_argument("--tokenizer", metavar="PATH", help="tokenizer folder or tokenizer.json (default: PROJECT/tokenizer, "
                   "copied by convert from beside the model)")
    s.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template (a user turn)")
    s.add_argument("--max-new-tokens", type=_positive_int, default=32, metavar="K", help="tokens to generate (default 32)")
    s.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sample")
    s.add_argument("--top-k", type=int, default=0, help="sample among the K most likely (default 0: off)")
    s.add_argument("--top-p", type=float, default=1.0, help="sample within probability mass P (default 1: off)")
    s.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    s.add_argument("--stop-ids", metavar="ID,ID,...", help="stop at these ids (default: the tokenizer's end of sequence)")
    ssh_options(s)
    timeout_option(s)
    threads_option(s)

    s = verb("energy", cmd_energy, "joules per inference from a power sensor, beside the cost model's prediction")
    s.add_argument("project", help="a converted project folder")
    s.add_argument("--board", default="host", help=ONE_BOARD)
    s.add_argument("--sensor", metavar="SPEC", help="hwmon:DIR[:N], hwmon-label:LABEL, jetson:RAIL, rapl:DIR, or "
                   "command:[--unit=U ]CMD (an external meter run here that prints '12.5 W' or '3.2 J') "
                   "(default: the board's [power_sensor])")
    s.add_argument("--sysfs-root", default="/", metavar="DIR", help="prefix of the sensor's paths (a fake sysfs)")
    s.add_argument("--iterations", type=_positive_int, default=100, help="runs of the model while sampling")
    s.add_argument("--idle-ms", type=int, default=1000, help="idle sampling before the runs (default 1000)")
    s.add_argument("--interval-us", type=_positive_int, default=10000, help="sampling interval (default 10000)")
    s.add_argument("--inputs", help=".npz keyed by graph input names (default: seeded random)")
    s.add_argument("--device-runner", metavar="CMD", help="bare metal: the command that runs the program on the device "
                   "(a debug probe's, with semihosting), called as CMD ELF INPUT... OUTPUT... and exiting with the "
                   "program's status (default: the board's emulator)")
    ssh_options(s)
    timeout_option(s)

    s = verb("report", cmd_report, "one self-contained HTML page (and PNGs) about a converted project")
    s.add_argument("project", help="a converted project folder")
    s.add_argument("-o", "--output", metavar="FILE", help="the HTML file (default: PROJECT/report.html)")
    s.add_argument("--validation", metavar="FILE", help="a `validate --json` result (default: PROJECT/validation.json)")
    s.add_argument("--energy", metavar="FILE", help="an `energy --json` result (default: PROJECT/energy.json)")

    s = verb("validate", cmd_validate, "convert, build, run on boards and compare with PyTorch float64")
    s.add_argument("model")
    s.add_argument("--board", default="host", help="comma-separated " + SOME_BOARDS)
    s.add_argument("--inputs", help=".npz keyed by graph input names (default: seeded random)")
    s.add_argument("--input-shape", action="append", metavar="NAME=D0xD1...")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scratch-budget", type=int, metavar="BYTES", help="kernel scratch limit (default: the larger of L1D and L2/8)")
    s.add_argument("--schedule", metavar="STRATEGY:BRxBC[/sS]",
                   help="force an ONF schedule, e.g. two_pass:1x64 or online:16x64/s4 (S key splits)")
    ssh_options(s)
    timeout_option(s)
    threads_option(s)
    s.add_argument("--weights", metavar="FORMAT", help=WEIGHTS_HELP + "; the boards are checked against "
                   "the same weights and the accuracy given up against the float model is reported")
    pool_option(s)

    s = verb("inspect", cmd_inspect, "attention blocks found, what was absorbed, schedule and predicted cost")
    s.add_argument("model")
    s.add_argument("--board", default="host", help=ONE_BOARD + "; its caches are the cost model's")
    s.add_argument("--input-shape", action="append", metavar="NAME=D0xD1...")
    s.add_argument("--scratch-budget", type=int, metavar="BYTES", help="kernel scratch limit (default: the larger of L1D and L2/8)")
    s.add_argument("--derivation", action="store_true", help="print the MoA derivation of each block's DNF")
    s.add_argument("--max-context", type=_positive_int, metavar="N",
                   help="a decoder exported with its cache: inspect its decode step over a cache of N tokens")
    s.add_argument("--weights", metavar="FORMAT", help=WEIGHTS_HELP)
    s.add_argument("--activations", metavar="FORMAT", help=ACTIVATIONS_HELP)

    s = verb("bench", cmd_bench, "benchmarks: `bench attention` (host time vs PyTorch, onnxruntime, naive C; "
             "instructions under qemu), `bench attention --traffic` (cachegrind vs the cost model), `bench model`, "
             "`bench generate` (a decoder with its cache: tokens/s and memory vs onnxruntime and llama.cpp), "
             "`bench gemm` (the packed float32 GEMM: GFLOP/s per host ISA vs numpy, instructions per FMA lane "
             "under qemu)")
    s.add_argument("what", choices=["attention", "model", "generate", "gemm"])
    s.add_argument("model", nargs="?", help="bench model, bench generate: the ONNX file")
    s.add_argument("--input-shape", action="append", metavar="NAME=D0xD1...")
    s.add_argument("--inputs", help="bench model: .npz of inputs (default: seeded)")
    s.add_argument("--repeat", type=_positive_int,
                   help="runs per side, the fastest counts (model: 20, attention: 10, generate: 3, gemm: 50 a round)")
    s.add_argument("--budget", type=float, default=3.0, metavar="SECONDS",
                   help="bench attention, gemm: stop repeating a side once it has run this long (default 3)")
    s.add_argument("--causal", choices=["both", "yes", "no"], default="both", help="bench attention: which masks")
    s.add_argument("--count-seq", type=_positive_int, metavar="N",
                   help="bench attention: sequence length of the qemu instruction counts (default 1024)")
    s.add_argument("--count-heads", type=_positive_int, default=1, help="bench attention: heads in the counted runs")
    s.add_argument("--no-count", action="store_true", help="bench attention, gemm: skip the qemu instruction counts")
    s.add_argument("--no-time", action="store_true", help="bench attention, gemm: skip the host timing")
    s.add_argument("--shapes", metavar="MxKxN,...", help="bench gemm: the products Y[M][N] = A[M][K] B[K][N] (default "
                   "BERT-base's at 128 tokens 128x768x768,128x768x3072,128x3072x768, a decode GEMV 1x576x1536 and "
                   "the edge shape 77x300x515)")
    s.add_argument("--gemm-rounds", type=_positive_int, default=3, metavar="N",
                   help="bench gemm: the sides take turns N times, each a --repeat runs, the best of all counting (default 3)")
    s.add_argument("--baseline", metavar="C_RUNTIME_DIR", help="bench gemm: also time the native and AVX2 builds, and "
                   "count the cross builds, of another c_runtime folder (e.g. main's), in the same run (NAME-baseline)")
    s.add_argument("--traffic", action="store_true", help="measure DRAM traffic under cachegrind")
    s.add_argument("--board", help="comma-separated " + SOME_BOARDS + " whose cache geometry to simulate "
                   "(default rpi4,k230; bench model and attention with --ssh: the one board there; bench generate: "
                   "one board where moa-edge's side also runs, default the host alone)")
    s.add_argument("--seq", type=_int_list, help="sequence lengths (attention: 128,512,1024,2048,4096; "
                   "--traffic: 256,1024,4096)")
    s.add_argument("--heads", type=_int_list, help="heads (attention: 8; --traffic: 1,8)")
    s.add_argument("--head-dim", type=int, default=64)
    s.add_argument("--scratch-budget", type=int, metavar="BYTES")
    s.add_argument("--no-naive", action="store_true", help="skip the naive n x n kernel")
    s.add_argument("--out", default="benchmarks/results",
                   help="folder for attention.json/.png (traffic.json/.png with --traffic)")
    s.add_argument("--prompt-tokens", type=_positive_int, default=64, metavar="N",
                   help="bench generate: a prompt of N seeded random token ids (default 64)")
    s.add_argument("--prompt-ids", metavar="ID,ID,...", help="bench generate: this prompt instead")
    s.add_argument("--new-tokens", type=_positive_int, default=64, metavar="K",
                   help="bench generate: greedy tokens to generate (default 64; decode is the K-1 after the first)")
    s.add_argument("--threads", type=_positive_int, metavar="N",
                   help="bench model and attention: moa-edge's threads and onnxruntime's and PyTorch's (default: "
                        "the host's cores); bench generate: every side's threads (default 1)")
    s.add_argument("--gguf", metavar="FILE", help="bench generate: llama.cpp's weights, a GGUF of the same model "
                   "(benchmarks/gguf_f32.py writes an F32 one); with --weights, any GGUF of those weights, from which "
                   "the matching types are written")
    s.add_argument("--weights", metavar="FORMAT", help="bench generate: moa-edge's weights as `convert --weights` "
                   "stores them (int8, int8:BLOCK, int4[:BLOCK]); llama.cpp then runs --gguf's weights quantised "
                   "by the gguf package to the matching types: Q8_0 for int8, Q4_0 and Q4_1 for int4 (the output "
                   "layer at Q8_0, as llama-quantize does); the JSON is generate-STEM-FORMAT.json")
    s.add_argument("--no-onnxruntime", action="store_true", help="bench generate: leave onnxruntime out")
    s.add_argument("--rounds", type=_positive_int, default=1, metavar="N",
                   help="bench generate and attention: the sides take turns N times, --repeat runs each turn, the best of all "
                   "counting (default 1), so that a change of load on a shared machine reaches every side")
    s.add_argument("--host-march", type=lambda text: [m for m in text.split(",") if m], metavar="ARCH,...",
                   help="bench generate and attention: also time moa-edge's host build compiled with -march=ARCH "
                   "(x86-64-v3: the AVX2 kernels on an AVX-512 machine); each row names the ISA its build selected")
    s.add_argument("--llama-python", type=lambda text: [m for m in text.split(",") if m], metavar="PY,...",
                   help="bench generate: the llama.cpp peers, each a Python interpreter or venv folder holding a "
                   "llama-cpp-python build (default this interpreter's); benchmarks/setup_llama_cpp.sh with "
                   "MARCH=x86-64-v3 VENV=DIR builds an AVX2 one. Each is named by the ISA it was built for")
    ssh_options(s)  # bench model, generate: also time the model on the one --board over ssh

    s = verb("boards", cmd_boards, "list the board catalogue (every file validated)")
    s.add_argument("--dir", metavar="DIR", help="a folder of board TOML files to check and list instead of boards/")
    return p


NAME_MAX = 255  # bytes in one file name on Linux file systems


def _check_output_paths(args) -> None:
    """Files the verb will write must have a folder to go in, a name the file system takes, and
    must not be a folder, each other or a file the verb reads: say so before any work."""
    read = {Path(path).resolve(): flag for option, flag in (("model", "the model"), ("inputs", "--inputs"))
            if isinstance(path := getattr(args, option, None), str) and path.strip()}
    seen = {}
    for option, flag in (("output", "-o"), ("json", "--json"), ("outputs", "--outputs")):
        path = getattr(args, option, None)
        if path is None:
            continue
        if not path.strip():
            raise MoaEdgeError(f"{flag} is empty: name the {'folder' if option == 'output' else 'file'} to write")
        p = Path(path)
        long = next((part for part in p.parts if len(part.encode()) > NAME_MAX), None)
        if long is not None:
            raise MoaEdgeError(f"{flag}: the name {long[:40]}... is {len(long.encode())} bytes long, "
                               f"more than the {NAME_MAX} a file system takes")
        if option == "output" and args.verb == "convert":
            pass  # a folder: convert checks it (pipeline._check_replaceable)
        elif p.is_dir():
            raise MoaEdgeError(f"{flag} {path} is a folder; name a file to write")
        elif not p.resolve().parent.is_dir():
            raise MoaEdgeError(f"{flag} {path}: the folder {p.parent} does not exist")
        if option != "output" and not p.exists():  # a folder that takes no new file: say so now, not after the work
            try:
                p.open("xb").close()
                p.unlink()
            except OSError as exc:
                raise MoaEdgeError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None
        if option == "outputs" and p.suffix != ".npz":
            raise MoaEdgeError(f"{flag} {path}: name a .npz file (numpy would otherwise write {path}.npz)")
        if p.resolve() in read:
            raise MoaEdgeError(f"{flag} {path} is {read[p.resolve()]} this command reads; name another file")
        same = seen.get(p.resolve())
        if same is not None:
            raise MoaEdgeError(f"{same} and {flag} are the same path {path}; each output needs its own")
        seen[p.resolve()] = flag


class _Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP as an exception, so that the cleanup Ctrl-C gets (convert's staging
    folder, validate's temporary folder, running children) happens for them too."""


def _on_signal(signum, frame):
    for s in _CAUGHT:  # a second signal must not cut the cleanup short
        signal.signal(s, signal.SIG_IGN)
    raise _Signalled(signum)


_CAUGHT = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _finalizer_hook(default):
    """A signal whose handler ran inside a finalizer (__del__, a weakref callback) is printed by
    Python as "Exception ignored" with a traceback, and the run goes on: keep it for main()."""
    def hook(unraisable):
        if isinstance(unraisable.exc_value, _Signalled):
            _SWALLOWED.append(unraisable.exc_value.args[0])
        else:
            default(unraisable)
    return hook


_SWALLOWED: list[int] = []


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _on_signal) for s in _CAUGHT} if in_main_thread else {}
    unraisable_hook, sys.unraisablehook = sys.unraisablehook, _finalizer_hook(sys.unraisablehook)
    try:
        _check_output_paths(args)
        code = args.fn(args)
        if _SWALLOWED:  # the work ran to its end all the same; say that a signal came
            raise _Signalled(_SWALLOWED[0])
        return code
    except MoaEdgeError as exc:
        print(f"moa-edge: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into head and closed early
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if isinstance(exc, _Signalled) else signal.SIGINT
        print(f"moa-edge: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    except OSError as exc:  # a file the verb reads or writes: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"moa-edge: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        sys.unraisablehook = unraisable_hook
        _SWALLOWED.clear()
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
