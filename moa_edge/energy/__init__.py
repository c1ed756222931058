"""Energy on the device: sensors, the sampler run beside the model, joules per inference,
and the cost model's prediction set beside the measurement."""
from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import subprocess
import tempfile

from moa_edge import C_RUNTIME_DIR
from moa_edge.errors import MoaEdgeError

from .measure import joules_per_inference, parse_sampler_output
from .sensors import Channel, board_sensor, parse_sensor

SAMPLER_SOURCE = C_RUNTIME_DIR / "tools" / "moa_sampler.c"


def build_sampler(workdir: Path) -> Path:
    """The sampler for the machine that reads the sensor. An emulated board's sensor is the
    host's own, so this is the host build (a real board over ssh needs its own, with its runner)."""
    cc = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        raise MoaEdgeError("no host C compiler (cc, gcc or clang) to build the power sampler")
    exe = Path(workdir) / "moa_sampler"
    proc = subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", str(SAMPLER_SOURCE), "-o", str(exe)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise MoaEdgeError(f"building the power sampler failed:\n{proc.stderr.strip()}")
    return exe


def predicted(project: Path) -> dict:
    """The cost model's energy per inference for the attention blocks (report.json)."""
    report = json.loads((Path(project) / "report.json").read_text())
    blocks = [{"node": b["node"], "energy_j": b["predicted"]["energy_uj"] * 1e-6,
               "dram_bytes": b["predicted"]["dram_bytes"]} for b in report.get("attention_blocks", [])]
    return {"attention_blocks": blocks, "attention_energy_j": sum(b["energy_j"] for b in blocks)}


def measure_energy(project, board, sensor: str | None = None, sysfs_root="/", iterations: int = 100,
                   idle_ms: int = 1000, interval_us: int = 10000, inputs=None, progress=lambda msg: None) -> dict:
    """Sample the sensor while the board idles for idle_ms, then while the built model runs
    `iterations` times in one process; joules per inference with its confidence interval."""
    from moa_edge.harness.build import build
    from moa_edge.harness.inputs import random_inputs
    from moa_edge.harness.runner import check_inputs, project_io

    spec = sensor or board_sensor(board)
    if spec is None:
        raise MoaEdgeError(f"board {board.name} has no power sensor; give one with --sensor "
                           f"(hwmon:DIR[:N], hwmon-label:LABEL, jetson:RAIL, rapl:DIR)")
    if iterations < 1 or idle_ms < 0 or interval_us < 100:
        raise MoaEdgeError("need --iterations >= 1, --idle-ms >= 0 and a sampling interval of at least 100 us")
    channel: Channel = parse_sensor(spec, sysfs_root)
    project = Path(project)
    io = project_io(project)
    feeds = check_inputs(io, inputs if inputs is not None else random_inputs(io), str(project))
    progress(f"{board.name}: build")
    binary = build(project, board)
    with tempfile.TemporaryDirectory(prefix="moa-energy-") as tmp:
        tmp = Path(tmp)
        sampler = build_sampler(tmp)
        args = []
        for k, e in enumerate(e for e in io if e["kind"] == "input"):
            feeds[e["name"]].tofile(tmp / f"in{k}.bin")
            args.append(str(tmp / f"in{k}.bin"))
        args += [str(tmp / f"out{k}.bin") for k, e in enumerate(e for e in io if e["kind"] == "output")]
        runner = board.runner()
        if runner:  # the sampler starts the runner with execv: no PATH search
            runner[0] = shutil.which(runner[0]) or runner[0]
        cmd = [str(sampler), str(interval_us), str(idle_ms), *channel.files, "--", *runner,
               str(Path(binary).resolve()), *args]
        progress(f"{board.name}: {idle_ms} ms idle, then {iterations} runs, sampling every {interval_us} us")
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MOA_REPEAT": str(iterations)})
        if proc.returncode not in (0,) and "exit " not in proc.stdout:
            raise MoaEdgeError(f"the power sampler failed ({proc.returncode}): {proc.stderr.strip()}")
    run = parse_sampler_output(proc.stdout, channel)
    if run.exit_status != 0:
        raise MoaEdgeError(f"board {board.name}: the runner exited with {run.exit_status}: {proc.stderr.strip()}")
    result = joules_per_inference(channel, run, iterations)
    result.update(board=board.name, project=str(project), predicted=predicted(project),
                  mean_run_s=run.active_seconds / iterations)
    return result


__all__ = ["build_sampler", "measure_energy", "parse_sensor", "predicted"]
