"""Issue 15's table: the four models of benchmarks/make_models.py, moa-edge against onnxruntime on
the same file and inputs, on 1 and on all of the host's threads, all sides in one run and in turns.

Each model is converted once (its arena planned for the most threads asked) and built for the
host's own ISA (`-march=native`) and, with --host-march, again for other ISAs (x86-64-v3: the AVX2
kernels on an AVX-512 machine). A build for AVX2 on an AVX-512 host is compared with onnxruntime
held to its AVX2 kernels (moa_edge/harness/cpuid_mask.py: its process sees no AVX-512 in CPUID),
any other build with onnxruntime as it runs here. Every round runs each side --repeat times per thread count (the fastest run
counts, best over the rounds), so a change of load on a shared machine reaches all of them. The
outputs of moa-edge's first run are checked against PyTorch's (.expected.npz) before a figure
counts.

    python benchmarks/make_models.py --out build/bench-models
    python benchmarks/four_models.py --models build/bench-models [--threads 1,2] [--rounds 3]
        [--repeat 10] [--host-march x86-64-v3] [--only bert-base,vit-b16]

prints the table (latency in ms, moa-edge / onnxruntime, and moa-edge's speed-up from 1 thread) and
writes benchmarks/results/four-models.json.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys
import tempfile

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moa_edge.harness.attention_bench import host_cpu  # noqa: E402
from moa_edge.harness.build import build, build_for_march, build_isa  # noqa: E402
from moa_edge.harness.cpuid_mask import peer_env  # noqa: E402
from moa_edge.harness.generate_bench import cpu_isa  # noqa: E402
from moa_edge.harness.inputs import load_npz  # noqa: E402
from moa_edge.harness.model_bench import onnxruntime_probe  # noqa: E402
from moa_edge.harness.runner import check_inputs, run  # noqa: E402
from moa_edge.pipeline import convert  # noqa: E402
from moa_edge.target import load_board  # noqa: E402

MODELS = ("minilm-l6", "bert-base", "gpt2", "vit-b16")
# GPT-2's logits are 512 x 50257 values of magnitude ~100: an absolute bound would not fit all four.
RELATIVE_TOLERANCE = 1e-4  # of the largest |expected| value, as test_generate's logits


def _check(stem: str, outputs: dict, expected: dict) -> float:
    worst = 0.0
    for name, want in expected.items():
        got = outputs[name].reshape(want.shape).astype(np.float64)
        error = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
        if not error <= RELATIVE_TOLERANCE:
            raise SystemExit(f"{stem}: output {name!r} is {error:.2e} of its largest value from PyTorch's")
        worst = max(worst, error)
    return worst


def bench(models: Path, stems, threads: list[int], rounds: int, repeat: int, marches: list[str], progress) -> dict:
    host = load_board("host")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="moa-four-models-") as tmp:
        tmp = Path(tmp)
        for stem in stems:
            model = models / f"{stem}.onnx"
            progress(f"{stem}: convert (--threads {max(threads)}) and build")
            project = tmp / stem
            report = convert(model, project, threads=max(threads))
            builds = {"native": build(project, host)}
            isas = {"native": build_isa(project, host)}
            for march in marches:
                builds[march], isas[march] = build_for_march(project, host, march)
            # onnxruntime as each build is compared with: AVX2 builds on an AVX-512 host, held to AVX2
            ort_for = {name: "onnxruntime" for name in builds}
            ort_env = {"onnxruntime": None}
            ort_isa = {"onnxruntime": isas["native"]}
            for march in marches:
                env = peer_env(isas["native"], isas[march], tmp / "cpuid-mask")
                if env is not None:
                    ort_for[march] = "onnxruntime-avx2"
                    ort_env["onnxruntime-avx2"] = env
                    ort_isa["onnxruntime-avx2"] = "avx2 (CPUID masked)"
            inputs = check_inputs(report["io"], load_npz(models / f"{stem}.inputs.npz"), stem)
            expected = dict(np.load(models / f"{stem}.expected.npz"))
            best: dict = {}
            errors = {}
            for r in range(rounds):
                for t in threads:
                    for name, binary in builds.items():
                        progress(f"{stem}: round {r + 1}, moa-edge {name} ({isas[name]}), {t} thread(s)")
                        outputs, us = run(binary, host, report["io"], inputs, repeat=repeat, threads=t, timeout=3600)
                        if (name, t) not in errors:
                            errors[(name, t)] = _check(stem, outputs, expected)
                        best[(name, t)] = min(best.get((name, t), us), us)
                    for ort, env in ort_env.items():
                        progress(f"{stem}: round {r + 1}, {ort} ({ort_isa[ort]}), {t} thread(s)")
                        us = onnxruntime_probe(model, models / f"{stem}.inputs.npz", repeat, t, env)["run_us"]
                        best[(ort, t)] = min(best.get((ort, t), us), us)
            rows[stem] = {
                "isa": isas,
                "onnxruntime_isa": ort_isa,
                "compared_with": ort_for,
                "max_rel_error_vs_pytorch": max(errors.values()),
                "latency_ms": {f"{name}@{t}": best[(name, t)] / 1e3 for name, t in best},
                "ratio_to_onnxruntime": {f"{name}@{t}": best[(name, t)] / best[(ort_for[name], t)]
                                         for name, t in best if name in builds},
                "speedup_from_1_thread": {f"{name}@{t}": best[(name, 1)] / best[(name, t)]
                                          for name, t in best if 1 in threads and t != 1},
            }
    return {"host": host_cpu(), "host_isa": cpu_isa(), "cpus": os.cpu_count(), "threads": threads, "rounds": rounds, "repeat": repeat,
            "load_average": os.getloadavg(), "models": rows}


def table(result: dict) -> str:
    threads = result["threads"]
    lines = [f"host: {result['host']} ({result['host_isa']}, {result['cpus']} CPUs); best of {result['rounds']} rounds x {result['repeat']} runs; "
             f"load average at the end {' '.join(f'{v:.2f}' for v in result['load_average'])}"]
    head = ["model", "build"] + [c for t in threads for c in (f"moa {t}t ms", f"ORT {t}t ms", f"ratio {t}t")]
    head += [f"1->{t} speed-up" for t in threads if t != 1]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stem, row in result["models"].items():
        for name, isa in row["isa"].items():
            ort = row["compared_with"][name]
            cells = [stem, f"{name} ({isa}), ORT {row['onnxruntime_isa'][ort]}"]
            for t in threads:
                cells += [f"{row['latency_ms'][f'{name}@{t}']:.1f}", f"{row['latency_ms'][f'{ort}@{t}']:.1f}",
                          f"{row['ratio_to_onnxruntime'][f'{name}@{t}']:.2f}"]
            cells += [f"{row['speedup_from_1_thread'][f'{name}@{t}']:.2f}" for t in threads if t != 1]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "build" / "bench-models")
    parser.add_argument("--only", help="comma-separated stems (default: all four)")
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}", help="thread counts (default 1 and all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--host-march", default="", help="also these -march builds, e.g. x86-64-v3")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "four-models.json")
    a = parser.parse_args()
    stems = a.only.split(",") if a.only else list(MODELS)
    missing = [s for s in stems if not (a.models / f"{s}.onnx").is_file()]
    if missing:
        print(f"four_models.py: no {', '.join(missing)} in {a.models}: run benchmarks/make_models.py --out {a.models}",
              file=sys.stderr)
        return 2
    threads = sorted({int(t) for t in a.threads.split(",")})
    result = bench(a.models, stems, threads, a.rounds, a.repeat, [m for m in a.host_march.split(",") if m],
                   lambda msg: print(f"  .. {msg}", file=sys.stderr, flush=True))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
