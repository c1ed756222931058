"""`moa-edge report BUILD`: one self-contained HTML page about a converted project.

Everything on the page comes from files: BUILD/report.json (written by `convert`: I/O,
attention blocks with their ONF schedule and the cost model's prediction, the arena plan,
and the per-op prediction of plan/predict.py), and, when present, the JSON results of
`moa-edge validate ... --json F` and `moa-edge energy BUILD --json F` (by default
BUILD/validation.json and BUILD/energy.json). Nothing is measured or re-predicted here; a
figure that is an estimate says so, as report.json labels it.

The plots are written as PNGs beside the page and embedded in it as data URIs, so the page
opens on its own (no scripts, no external files).
"""
from __future__ import annotations

import base64
from html import escape
import json
from pathlib import Path

from moa_edge.errors import MoaEdgeError
from moa_edge.harness import ownership


def _load_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MoaEdgeError(f"{path}: no such file ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MoaEdgeError(f"{path}: not a readable JSON file ({what}): {exc}") from None
    if not isinstance(data, dict):
        raise MoaEdgeError(f"{path}: expected a JSON object ({what})")
    return data


def load_inputs(project, validation=None, energy=None) -> tuple[dict, dict | None, dict | None, dict]:
    """report.json, the validation and energy results (given paths, else BUILD/validation.json and
    BUILD/energy.json when they exist), and where each came from."""
    project = Path(project)
    if not project.is_dir():
        raise MoaEdgeError(f"{project}: no such folder (give a project folder made by moa-edge convert)")
    if not (project / "report.json").is_file():
        raise MoaEdgeError(f"{project}/report.json not found: is {project} a folder made by moa-edge convert?")
    report = _load_json(project / "report.json", "the project's report.json")
    for key in ("io", "attention_blocks", "ops", "memory"):
        if key not in report:
            raise MoaEdgeError(f"{project}/report.json has no '{key}': convert the model again with this moa-edge")
    sources = {"report": str(project / "report.json")}
    results = {}
    for name, given in (("validation", validation), ("energy", energy)):
        path = Path(given) if given else project / f"{name}.json"
        if given or path.is_file():
            results[name] = _load_json(path, f"a moa-edge {name} --json result")
            sources[name] = str(path)
        else:
            results[name] = None
    for name, keys in (("validation", ("boards", "ok")), ("energy", ("joules_per_inference", "board"))):
        if results[name] is not None and not all(k in results[name] for k in keys):
            raise MoaEdgeError(f"{sources[name]}: not the JSON of moa-edge {name} (it lacks "
                               f"{', '.join(k for k in keys if k not in results[name])})")
    return report, results["validation"], results["energy"], sources


# --- numbers ------------------------------------------------------------------------------------

def _bytes(n) -> str:
    """Exact bytes, with a binary unit beside large ones: '1622016 B (1.55 MiB)'."""
    if n is None:
        return "-"
    n = int(n)
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= 10 * size:
            return f"{n} B ({n / size:.3g} {unit})"
    return f"{n} B"


def _si(x, unit="") -> str:
    if x is None:
        return "-"
    x = float(x)
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _joules(j) -> str:
    if j is None:
        return "-"
    j = float(j)
    for unit, scale in (("J", 1.0), ("mJ", 1e-3), ("uJ", 1e-6)):
        if abs(j) >= scale:
            return f"{j / scale:.4g} {unit}"
    return f"{j / 1e-9:.4g} nJ"


def _err(x) -> str:
    return "-" if x is None else f"{x:.2e}"


# --- plots ----------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


LABEL_LIMIT = 40


def _label(name: str) -> str:
    """A model's name as plot text: printable, `$` escaped (matplotlib would parse $...$ as math, and
    fail on a malformed one), at most LABEL_LIMIT characters (a long name would stretch the figure)."""
    text = "".join(c if c.isprintable() else "?" for c in str(name))
    text = text[:LABEL_LIMIT] + ("..." if len(text) > LABEL_LIMIT else "")
    return text.replace("$", r"\$")


def _step_ticks(ax, names: list[str]) -> None:
    ax.set_xlim(-0.6, len(names) - 0.4)
    if len(names) <= 40:
        ax.set_xticks(range(len(names)), [_label(n) for n in names], rotation=60, ha="right", fontsize=7)
    else:
        ax.set_xlabel("schedule step (the per-op table names each step)")


def plot_memory(report: dict, path: Path) -> None:
    """Live arena bytes at each step of the schedule, with the arena size and the lower bound."""
    plt = _pyplot()
    mem = report["memory"]
    names = list(mem["per_op_live_bytes"])
    live = [mem["per_op_live_bytes"][n] for n in names]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    colors = ["C3" if n == mem.get("peak_step") else "C0" for n in names]
    ax.bar(range(len(names)), live, color=colors, width=0.8, label="live bytes at the step")
    ax.axhline(mem["arena_bytes"], color="k", lw=1.2, label=f"arena: {mem['arena_bytes']} B")
    ax.axhline(mem["live_bytes_lower_bound"], color="C1", ls="--", lw=1.2,
               label=f"lower bound (peak live): {mem['live_bytes_lower_bound']} B")
    ax.set_ylabel("bytes in the arena")
    ax.set_title("Memory plan over the schedule (peak step in red)")
    _step_ticks(ax, names)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    ax.set_ylim(0, max([mem["arena_bytes"], *live, 1]) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_arena(report: dict, path: Path) -> bool:
    """Each arena buffer as a rectangle: schedule steps (x) by byte offsets (y). False when
    report.json predates the buffers' steps."""
    mem = report["memory"]
    if any("first_step" not in b for b in mem["buffers"]):
        return False
    buffers = [b for b in mem["buffers"] if not b.get("pool")]  # the arena's (a memory pool's offsets are its own)
    if not buffers:
        return False
    plt = _pyplot()
    from matplotlib.patches import Rectangle
    names = list(mem["per_op_live_bytes"])
    fig, ax = plt.subplots(figsize=(10, 3.8))
    palette = ["C0", "C2", "C4", "C5", "C6", "C8", "C9", "C7"]  # orange is kept for kernel scratch
    for k, b in enumerate(buffers):
        scratch = b["name"].startswith("scratch:")
        x, w = b["first_step"] - 0.4, b["last_step"] - b["first_step"] + 0.8
        ax.add_patch(Rectangle((x, b["offset"]), w, b["bytes"], facecolor="C1" if scratch else palette[k % len(palette)],
                               edgecolor="k", lw=0.5, alpha=0.75))
        if len(buffers) <= 40 and b["bytes"] >= 0.06 * mem["arena_bytes"]:
            ax.text(x + w / 2, b["offset"] + b["bytes"] / 2, _label(b["name"].replace("scratch:", "scratch ")),
                    ha="center", va="center", fontsize=7, clip_on=True)
    ax.axhline(mem["arena_bytes"], color="k", lw=1.2)
    ax.set_ylim(0, mem["arena_bytes"] * 1.08 or 1)
    ax.set_ylabel("arena offset (bytes)")
    ax.set_title("Arena map: each buffer from the step that writes it to its last reader (kernel scratch orange)")
    _step_ticks(ax, names)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_cost(ops: list[dict], path: Path) -> None:
    """Flops and bytes of each op along the schedule (log scale)."""
    plt = _pyplot()
    names = [o["node"] for o in ops]
    x = range(len(ops))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.6), sharex=True)
    flops = [o["flops"] or 0 for o in ops]
    top.bar(x, flops, width=0.8, color=["C3" if o["op"] == "MoaAttention" else "C0" for o in ops])
    top.set_yscale("log")
    if any(flops):
        top.set_ylim(min(f for f in flops if f > 0) / 2, max(flops) * 3)
    top.set_ylabel("flops")
    top.set_title("Per-op cost (attention in red: the ONF cost model; others: estimate from shapes)")
    w = [o.get("weight_bytes") or 0 for o in ops]
    a = [o.get("activation_bytes") or 0 for o in ops]
    d = [o.get("dram_bytes") or 0 for o in ops]
    # side by side, so each bar's height is its own figure on the log axis
    bottom.bar([i - 0.2 for i in x], a, width=0.4, color="C2", label="activations read + written (estimate)")
    bottom.bar([i + 0.2 for i in x], w, width=0.4, color="C4", label="weights read (estimate)")
    bottom.bar(x, d, width=0.8, color="C3", label="attention: predicted DRAM bytes")
    bottom.set_yscale("log")
    positive = [v for v in a + w + d if v > 0]
    if positive:
        bottom.set_ylim(min(positive) / 2, max(positive) * 8)
    bottom.set_ylabel("bytes")
    bottom.legend(fontsize=8, loc="upper right")
    _step_ticks(bottom, names)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_attention(blocks: list[dict], unfused: dict, path: Path) -> None:
    """Per block: compulsory bytes, predicted DRAM bytes of the fused kernel, and of the unfused form."""
    plt = _pyplot()
    series = [("compulsory (Q, K, V, O once)", "compulsory_bytes", "C7"), ("predicted DRAM, fused ONF", "dram_bytes", "C0"),
              ("predicted L1 fills", "l1_fill_bytes", "C2")]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / (len(series) + (1 if unfused else 0))
    for k, (label, key, color) in enumerate(series):
        ax.bar([i + k * width for i in range(len(blocks))], [b["predicted"][key] for b in blocks], width,
               label=label, color=color)
    if unfused:
        ax.bar([i + len(series) * width for i in range(len(blocks))], [unfused.get(b["node"], 0) for b in blocks],
               width, label="predicted DRAM, unfused (scores materialised)", color="C3")
    ax.set_xticks([i + width * (len(series) - 1 + bool(unfused)) / 2 for i in range(len(blocks))],
                  [_label(b["node"]) for b in blocks], rotation=30 if len(blocks) > 6 else 0, ha="right" if len(blocks) > 6 else "center",
                  fontsize=7)
    values = [b["predicted"][key] for b in blocks for _, key, _ in series] + [v for v in unfused.values() if v]
    if min(values, default=1) > 0 and max(values, default=1) / min(values, default=1) > 30:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, max(values, default=1) * 1.5)  # room for the legend
    ax.set_ylabel("bytes")
    ax.set_title("Attention blocks: predicted traffic (cost model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_energy(energy: dict, path: Path) -> None:
    plt = _pyplot()
    pred = energy.get("predicted") or {}
    labels, joules, errs, colors = ["measured"], [energy["joules_per_inference"]], [energy.get("ci95_joules") or 0], ["C0"]
    for label, key, color in (("predicted, whole model", "energy_j", "C1"),
                              ("predicted, attention", "attention_energy_j", "C3")):
        if pred.get(key) is not None:
            labels.append(label)
            joules.append(pred[key])
            errs.append(0)
            colors.append(color)
    top = max(abs(j) + e for j, e in zip(joules, errs)) or 1.0
    unit, scale = next(((u, s) for u, s in (("J", 1.0), ("mJ", 1e-3), ("uJ", 1e-6)) if top >= s), ("nJ", 1e-9))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(labels, [j / scale for j in joules], yerr=[e / scale for e in errs], capsize=6, color=colors)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel(f"{unit} per inference")
    ax.set_title(f"Energy on {_label(energy.get('board', '?'))} (measured: 95% interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the page -----------------------------------------------------------------------------------

CSS = """
body { font-family: 'DejaVu Sans', Arial, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td { white-space: nowrap; } td.l { white-space: normal; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
tr.attn td { background: #fdeaea; } tr.peak td { background: #fff3d6; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; } .card { border: 1px solid #ccc; border-radius: 6px; padding: 8px 12px; }
.card b { display: block; font-size: 1.15em; } .note { color: #666; font-size: 0.85em; }
.pass { color: #080; font-weight: bold; } .fail { color: #b00; font-weight: bold; }
img { max-width: 100%; border: 1px solid #eee; } .wide { overflow-x: auto; }
"""


def _table(header: list[str], rows: list[list], left: int = 1, row_class=None) -> str:
    """HTML table; the first `left` columns align left. Cells are escaped unless wrapped in _Raw."""
    def align(k):
        return ' class="l"' if k < left else ""

    def cell(v, k):
        return f"<td{align(k)}>{v.html if isinstance(v, _Raw) else escape(str(v))}</td>"

    out = ['<div class="wide"><table><tr>' + "".join(f"<th{align(k)}>{escape(h)}</th>" for k, h in enumerate(header)) + "</tr>"]
    for i, r in enumerate(rows):
        cls = row_class(i) if row_class else None
        tr = f'<tr class="{cls}">' if cls else "<tr>"
        out.append(tr + "".join(cell(v, k) for k, v in enumerate(r)) + "</tr>")
    return "\n".join(out) + "</table></div>"


class _Raw:
    def __init__(self, html: str):
        self.html = html


def _img(png: Path, alt: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<p><img alt="{escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _verdict(ok) -> _Raw:
    return _Raw({True: '<span class="pass">pass</span>', False: '<span class="fail">FAIL</span>',
                 None: "n/a"}[ok])


def per_op_rows(report: dict) -> tuple[list[dict], bool]:
    """One row per scheduled op: report.json's per-op prediction (plan/predict.py) merged with
    the live bytes at its step; attention ops take their block's cost-model figures. The flag
    says whether report.json had a per-op prediction at all."""
    predicted = {o["node"]: o for o in (report.get("predicted") or {}).get("ops", [])}
    blocks = {b["node"]: b["predicted"] for b in report["attention_blocks"]}
    live = report["memory"]["per_op_live_bytes"]
    rows = []
    for op in report["ops"]:
        p = predicted.get(op["node"], {})
        row = {"node": op["node"], "op": op["op"], "live_bytes": live.get(op["node"]), "flops": p.get("flops"),
               "weight_bytes": p.get("weight_bytes"), "activation_bytes": p.get("activation_bytes"),
               "dram_bytes": None, "energy_j": p.get("energy_j"), "source": p.get("source", "-")}
        if op["node"] in blocks:
            b = blocks[op["node"]]
            row.update(flops=b["flops"], dram_bytes=b["dram_bytes"], source="cost model")
            if row["energy_j"] is None:
                row["energy_j"] = b["energy_uj"] * 1e-6
        rows.append(row)
    return rows, bool(predicted)


def _memory_section(report: dict, pngs: dict) -> str:
    mem = report["memory"]
    parts = ["<h2>Memory plan over the schedule</h2>",
             f"<p>Arena <b>{_bytes(mem['arena_bytes'])}</b> ({escape(str(mem.get('algorithm', '')))} placement); "
             f"lower bound (most bytes live at one step) <b>{_bytes(mem['live_bytes_lower_bound'])}</b>, "
             f"reached at <b>{escape(mem.get('peak_step', ''))}</b> with "
             f"{escape(', '.join(mem.get('live_at_peak', [])))} live. "
             f"Weights {_bytes(mem.get('weights_bytes'))} (in weights.bin, not in the arena); "
             f"inputs and outputs {_bytes(mem.get('io_bytes'))} (the caller's buffers).</p>",
             *([f"<p>Memory pools (filled first, hottest buffers first): "
                + escape(", ".join(f"{p['name']} {p['bytes']} B" + (f" in {p['kind']} {p['memory']}" if p["memory"]
                                                                      else f" (section {p['section'] or 'none'})")
                                   for p in mem["pools"])) + ".</p>"] if mem.get("pools") else []),
             _img(pngs["memory"], "live arena bytes per schedule step")]
    if "arena" in pngs:
        parts.append(_img(pngs["arena"], "arena map: buffers by schedule step and offset"))
    steps = list(mem["per_op_live_bytes"])
    rows = [[b["name"], b.get("pool") or "arena", b["offset"], b["bytes"],
             *( [steps[b["first_step"]] if b["first_step"] < len(steps) else b["first_step"],
                 steps[b["last_step"]] if b["last_step"] < len(steps) else b["last_step"]]
               if "first_step" in b else ["-", "-"])] for b in mem["buffers"]]
    parts.append("<h3>Arena buffers</h3>" + _table(["buffer", "pool", "offset (B)", "bytes", "written at",
                                                    "last read at"], rows, left=2))
    if mem.get("shared_storage"):
        shared = sorted(mem["shared_storage"].items())
        parts.append("<p class=\"note\">Tensors without a buffer of their own (views, in-place results): "
                     + escape(", ".join(f"{a} in {b}" for a, b in shared)) + "</p>")
    return "\n".join(parts)


def _cost_section(report: dict, rows: list[dict], have_prediction: bool, pngs: dict) -> str:
    parts = ["<h2>Per-op cost</h2>"]
    if have_prediction:
        pred = report["predicted"]
        consts = pred.get("constants", {})
        parts.append(
            "<p>Attention ops: the ONF cost model's counts for the chosen tiles. Every other op: an "
            "<b>estimate from shapes</b> made at conversion (each op module's op_cost: 2&middot;M&middot;N&middot;K flops for a "
            "GEMM, a few flops per element elsewhere; weights read once, activations read and written once). "
            f"Energy uses board {escape(str(report.get('board', '?')))}'s constants "
            f"({escape(', '.join(f'{k} {v:g}' for k, v in consts.items()))}"
            f"{'; ' + escape(str(pred['source'])) if pred.get('source') else ''}). "
            f"Predicted total <b>{_joules(pred.get('energy_j'))}</b> per inference, "
            f"attention {_joules(pred.get('attention_energy_j'))}.</p>")
    else:
        parts.append("<p class=\"note\">This report.json has no per-op prediction (convert the model again with "
                     "this moa-edge for flops, bytes and energy per op); only the attention blocks' cost model "
                     "figures are shown.</p>")
    parts.append(_img(pngs["cost"], "per-op flops and bytes along the schedule"))
    peak = report["memory"].get("peak_step")
    table_rows = [[k, r["node"], r["op"], r["live_bytes"] if r["live_bytes"] is not None else "-",
                   r["flops"] if r["flops"] is not None else "-",
                   r["weight_bytes"] if r["weight_bytes"] is not None else "-",
                   r["activation_bytes"] if r["activation_bytes"] is not None else "-",
                   r["dram_bytes"] if r["dram_bytes"] is not None else "-",
                   _joules(r["energy_j"]), r["source"]] for k, r in enumerate(rows)]
    parts.append(_table(["step", "node", "op", "live bytes", "flops", "weight bytes", "activation bytes",
                         "DRAM bytes (attention)", "energy", "source"], table_rows, left=3,
                        row_class=lambda i: "attn" if rows[i]["op"] == "MoaAttention"
                        else ("peak" if rows[i]["node"] == peak else None)))
    total_flops = sum(r["flops"] or 0 for r in rows)
    parts.append(f"<p>Total {total_flops} flops ({_si(total_flops, 'flop')}) over {len(rows)} ops.</p>")
    return "\n".join(parts)


def _attention_section(report: dict, pngs: dict) -> str:
    blocks = report["attention_blocks"]
    parts = ["<h2>Attention blocks</h2>"]
    if not blocks:
        return parts[0] + "<p>No attention block was found in this model.</p>"
    unfused = {b["node"]: b.get("unfused_dram_bytes") for b in (report.get("predicted") or {}).get("attention_blocks", [])}
    parts.append(f"<p>{len(blocks)} block(s), each one MoaAttention node with an ONF kernel tiled for board "
                 f"{escape(str(report.get('board', '?')))}; traffic and energy are the cost model's predictions.</p>")
    if "attention" in pngs:
        parts.append(_img(pngs["attention"], "attention blocks: predicted traffic"))
    schedule, traffic = [], []
    for b in blocks:
        s, p = b["shape"], b["predicted"]
        masking = ", ".join((["causal"] if b.get("is_causal") else []) + [f"mask {b.get('mask', '-')}"])
        schedule.append([b["node"], b["pattern"],
                         f"B{s['batch']} H{s['q_heads']}/{s['kv_heads']} Sq{s['q_len']} Skv{s['kv_len']} "
                         f"D{s['head_dim']} Dv{s['value_dim']}", masking,
                         p["strategy"], f"{p['block_q']} x {p['block_k']}", p["scratch_bytes"]])
        traffic.append([b["node"], p["compulsory_bytes"], p["dram_bytes"],
                        unfused.get(b["node"]) if unfused.get(b["node"]) is not None else "-",
                        p["l1_fill_bytes"], p["flops"], p["exps"], _joules(p["energy_uj"] * 1e-6),
                        "yes" if p.get("kv_fits_llc") else "no"])
    parts.append("<h3>Schedule and tiles</h3>" + _table(
        ["block", "pattern", "shape (batch, q/kv heads, lengths, dims)", "masking", "softmax", "tile Br x Bc",
         "scratch B"], schedule, left=4))
    parts.append("<h3>Predicted traffic and cost</h3>" + _table(
        ["block", "compulsory B", "DRAM B (fused)", "DRAM B (unfused)", "L1 fills B", "flops", "exps", "energy",
         "K/V fit LLC"], traffic))
    absorbed = [f"{b['node']}: {', '.join(b.get('absorbed_nodes', []))}" for b in blocks]
    parts.append("<p class=\"note\">Absorbed into each block (index maps and attributes, never copies): "
                 + escape("; ".join(absorbed)) + "</p>")
    return "\n".join(parts)


def _validation_section(report: dict, validation: dict | None, source: str | None) -> str:
    head = "<h2>Validation</h2>"
    if validation is None:
        return head + ("<p>No validation result. Write one with <code>moa-edge validate MODEL.onnx --board host,... "
                       "--json BUILD/validation.json</code> (or pass <code>--validation FILE</code>).</p>")
    parts = [head, f"<p>From {escape(source)}: model {escape(str(validation.get('model', '?')))}, "
                   f"overall {_verdict(validation.get('ok')).html}.</p>"]
    if validation.get("model") and Path(str(validation["model"])).name != report.get("source"):
        parts.append(f"<p class=\"fail\">This result is for {escape(Path(str(validation['model'])).name)}, but the "
                     f"project was converted from {escape(str(report.get('source')))}.</p>")
    rows = []
    check = validation.get("importer_check")
    if check:
        rows.append(["(onnx reference vs PyTorch)", _err(check.get("max_abs_err")), _err(check.get("max_rel_err")),
                     check.get("max_ulp", "-"), "-", _verdict(check.get("ok")), check.get("error", "")])
    for name, r in validation["boards"].items():
        rows.append([name, _err(r.get("max_abs_err")), _err(r.get("max_rel_err")),
                     r.get("max_ulp") if r.get("max_ulp") is not None else "-",
                     f"{r['run_us']:.1f}" if r.get("run_us") is not None else "-", _verdict(r.get("ok")),
                     r.get("error", "")])
    parts.append(_table(["board", "max abs err", "max rel err", "max ulp", "run (us)", "result", "error"], rows))
    tol = validation.get("tolerance") or {}
    if tol:
        parts.append(f"<p class=\"note\">Tolerance vs PyTorch float64: max abs &le; {escape(str(tol.get('max_abs_err')))}, "
                     f"max rel &le; {escape(str(tol.get('max_rel_err')))}.</p>")
    return "\n".join(parts)


def _energy_section(energy: dict | None, source: str | None, pngs: dict) -> str:
    head = "<h2>Energy</h2>"
    if energy is None:
        return head + ("<p>No energy measurement. Write one with <code>moa-edge energy BUILD --board NAME "
                       "--json BUILD/energy.json</code> (or pass <code>--energy FILE</code>).</p>")
    ci = energy.get("ci95_joules")
    samples = energy.get("samples") or {}
    parts = [head, f"<p>From {escape(source)}: board {escape(str(energy.get('board')))}"
                   f"{' over ssh ' + escape(str(energy['ssh'])) if energy.get('ssh') else ''}, sensor "
                   f"{escape(str(energy.get('sensor', '?')))}.</p>"]
    if "energy" in pngs:
        parts.append(_img(pngs["energy"], "measured and predicted energy per inference"))
    rows = [["measured, per inference", _joules(energy["joules_per_inference"])
             + (f" &plusmn; {_joules(ci)} (95%)" if ci is not None else " (too few samples for an interval)")],
            ["mean power running / idle", f"{energy.get('active_power_w', 0):.4g} W / {energy.get('idle_power_w', 0):.4g} W"],
            ["runs", f"{energy.get('iterations')} in {energy.get('active_s', 0):.4g} s "
                     f"({(energy.get('mean_run_s') or 0) * 1e3:.4g} ms each)"],
            ["samples (running + idle)", f"{samples.get('active', '?')} + {samples.get('idle', '?')}"]]
    pred = energy.get("predicted") or {}
    if pred.get("energy_j") is not None:
        rows.append(["predicted, whole model (cost model + estimates)", _joules(pred["energy_j"])])
    if pred.get("attention_energy_j") is not None:
        rows.append(["predicted, attention blocks (cost model)", _joules(pred["attention_energy_j"])])
    parts.append(_table(["", "value"], [[a, _Raw(b if "&" in b else escape(b))] for a, b in rows]))
    blocks = pred.get("attention_blocks") or []
    if blocks:
        parts.append(_table(["block", "predicted energy", "DRAM B (fused)", "DRAM B (unfused)"],
                            [[b["node"], _joules(b.get("energy_j")), b.get("dram_bytes", "-"),
                              b.get("unfused_dram_bytes", "-")] for b in blocks]))
    return "\n".join(parts)


def _io_section(report: dict) -> str:
    rows = [[e["kind"], e["name"], " x ".join(map(str, e["shape"])) or "scalar", e["dtype"], e["bytes"]]
            for e in report["io"]]
    return "<h2>Inputs and outputs</h2>" + _table(["kind", "name", "shape", "dtype", "bytes"], rows, left=4)


def write_report(project, out: Path | None = None, validation=None, energy=None) -> dict:
    """Write the HTML page (default BUILD/report.html) and its PNGs beside it; returns what was written."""
    project = Path(project)
    report, val, en, sources = load_inputs(project, validation, energy)
    out = Path(out) if out else project / "report.html"
    if not out.resolve().parent.is_dir():
        raise MoaEdgeError(f"{out}: the folder {out.parent} does not exist")
    stem = out.with_suffix("")
    pngs = {}
    rows, have_prediction = per_op_rows(report)

    def png(name):
        pngs[name] = Path(f"{stem}-{name}.png")
        return pngs[name]

    plot_memory(report, png("memory"))
    if not plot_arena(report, png("arena")):
        pngs.pop("arena")
    plot_cost(rows, png("cost"))
    if report["attention_blocks"]:
        unfused = {b["node"]: b.get("unfused_dram_bytes") or 0
                   for b in (report.get("predicted") or {}).get("attention_blocks", [])}
        plot_attention(report["attention_blocks"], unfused, png("attention"))
    if en is not None:
        plot_energy(en, png("energy"))

    mem = report["memory"]
    blocks = report["attention_blocks"]
    total_flops = sum(r["flops"] or 0 for r in rows)
    cards = [("arena", _bytes(mem["arena_bytes"])), ("live-bytes lower bound", _bytes(mem["live_bytes_lower_bound"])),
             ("weights", _bytes(mem.get("weights_bytes"))), ("ops scheduled", str(len(report["ops"]))),
             ("attention blocks", str(len(blocks))), ("flops per inference", _si(total_flops, "flop"))]
    if have_prediction:
        cards.append(("predicted energy", _joules(report["predicted"].get("energy_j"))))
    if val is not None:
        cards.append(("validation", _verdict(val.get("ok")).html))
    if en is not None:
        cards.append(("measured energy", _joules(en["joules_per_inference"])))
    title = f"moa-edge report: {report.get('source', project.name)}"
    body = [f"<h1>{escape(title)}</h1>",
            f"<p class=\"note\">Project {escape(str(project))}, board {escape(str(report.get('board', '?')))}, "
            f"C prefix {escape(str(report.get('prefix', '?')))}; from {escape(sources['report'])}.</p>",
            "<div class=\"cards\">" + "".join(f"<div class=\"card\">{escape(k)}<b>{v if '<' in v else escape(v)}</b></div>"
                                              for k, v in cards) + "</div>",
            _memory_section(report, pngs),
            _cost_section(report, rows, have_prediction, pngs),
            _attention_section(report, pngs),
            _validation_section(report, val, sources.get("validation")),
            _energy_section(en, sources.get("energy"), pngs),
            _io_section(report)]
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
    out.write_text(page, encoding="utf-8")
    for written in (out, *pngs.values()):  # listed as moa-edge's, if out is in a project folder
        ownership.claim(written)
    return {"html": str(out), "pngs": {k: str(v) for k, v in pngs.items()}, "sources": sources,
            "validation": val is not None, "energy": en is not None, "per_op_prediction": have_prediction}
