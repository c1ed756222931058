"""Two or more converted projects timed in turns: did a change make a model faster?

Each project (a `moa-edge convert` output directory, e.g. one converted by the session's starting
commit, one by the change) is built for the host's own ISA and, with --host-march, for others
(x86-64-v3: the AVX2 kernels on an AVX-512 machine); then every round runs each build --repeat
times on the same inputs, in turn, so a change of load on a shared machine reaches all of them.
The fastest run of each build counts. The outputs of every build must equal the first project's
within --rtol (a change that speeds a model up by breaking it is not a change to keep).

    git archive BASE | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base python -m moa_edge.cli convert MODEL.onnx -o /tmp/p-base --threads 2
    moa-edge convert MODEL.onnx -o /tmp/p-new --threads 2
    python benchmarks/alternate_builds.py --inputs MODEL.inputs.npz --threads 1 --rounds 10 \\
        --host-march x86-64-v3 /tmp/p-base /tmp/p-new
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moa_edge.harness.build import build, build_for_march, build_isa  # noqa: E402
from moa_edge.harness.inputs import load_npz  # noqa: E402
from moa_edge.harness.runner import check_inputs, run  # noqa: E402
from moa_edge.target import load_board  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("projects", nargs="+", type=Path)
    parser.add_argument("--inputs", type=Path, required=True, help=".npz of the model's inputs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--host-march", default="", help="also these -march builds, e.g. x86-64-v3")
    parser.add_argument("--rtol", type=float, default=1e-4)
    a = parser.parse_args()
    host = load_board("host")
    builds = {}
    for project in a.projects:
        io = json.loads((project / "report.json").read_text())["io"]
        inputs = check_inputs(io, load_npz(a.inputs), str(a.inputs))
        builds[(project, "native")] = (build(project, host), io, inputs, build_isa(project, host))
        for march in filter(None, a.host_march.split(",")):
            binary, isa = build_for_march(project, host, march)
            builds[(project, march)] = (binary, io, inputs, isa)
    best: dict = {}
    first: dict = {}
    for _ in range(a.rounds):
        for key, (binary, io, inputs, _) in builds.items():
            outputs, us = run(binary, host, io, inputs, repeat=a.repeat, threads=a.threads, timeout=3600)
            best[key] = min(best.get(key, us), us)
            for name, value in outputs.items():
                want = first.setdefault(name, value)
                if not np.allclose(value, want, rtol=a.rtol, atol=a.rtol * float(np.abs(want).max())):
                    print(f"{key[0]} ({key[1]}): output {name} differs from {a.projects[0]}'s", file=sys.stderr)
                    return 1
    print(f"best of {a.rounds} rounds x {a.repeat} runs, {a.threads} thread(s):")
    for (project, march), us in best.items():
        print(f"  {march:10s} ({builds[(project, march)][3]:6s}) {project}: {us / 1e3:9.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
