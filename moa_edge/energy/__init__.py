"""Energy on the device: sensors, the sampler run beside the model, joules per inference,
and the cost model's prediction set beside the measurement."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
import shlex
import shutil
import subprocess
import tempfile

from moa_edge import C_RUNTIME_DIR
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.inputs import random_inputs
from moa_edge.harness.runner import check_inputs, project_io, run_limited, runner_failure, runner_files
from moa_edge.harness.ssh import TIMEOUT_S, RemoteFolder
from moa_edge.target import Board

from .measure import joules_per_inference, parse_sampler_output
from .sensors import Channel, CommandMeter, board_sensor, parse_sensor

SAMPLER_SOURCE = C_RUNTIME_DIR / "tools" / "moa_sampler.c"


def build_sampler(workdir: Path, board: Board | None = None) -> Path:
    """The sampler for the machine that reads the sensor: the host's for native and emulated
    boards (their sensor is the host's), the board's own (its toolchain) for one over ssh."""
    if board is None:
        cc, flags = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None), ["-O2"]
        if cc is None:
            raise MoaEdgeError("no host C compiler (cc, gcc or clang) to build the power sampler")
    else:
        cc = board.compiler()
        if cc is None:
            raise MoaEdgeError(f"board {board.name}: missing {'; '.join(board.missing_tools())}; run `make setup` as root")
        flags = [*board.toolchain.get("cflags", []), *board.toolchain.get("ldflags", [])]
    exe = Path(workdir) / "moa_sampler"
    proc = subprocess.run([cc, *flags, "-std=c99", "-Wall", "-Wextra", "-Werror", str(SAMPLER_SOURCE), "-o", str(exe)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise MoaEdgeError(f"building the power sampler failed:\n{proc.stderr.strip()}")
    return exe


class RemoteFiles:
    """The sensor's files on a board over ssh."""

    def __init__(self, ssh):
        self.ssh = ssh

    def read(self, path: str) -> str | None:
        proc = self.ssh.run(["cat", path])
        return proc.stdout if proc.returncode == 0 else None

    def exists(self, path: str) -> bool:
        return self.ssh.run(["test", "-e", path]).returncode == 0

    def glob(self, pattern: str) -> list[str]:
        # The board's shell expands the pattern; only the fixed sysfs part of it is unquoted.
        root, _, rest = pattern.partition("/sys/")
        loop = f'for f in {shlex.quote(root)}/sys/{rest}; do [ -e "$f" ] && echo "$f"; done; true'
        return sorted(self.ssh.check(["sh", "-c", loop], "listing the sensor's files").split())


def predicted(project: Path) -> dict:
    """The prediction `convert` wrote into report.json (plan/predict.py), without the per-op list."""
    report = json.loads((Path(project) / "report.json").read_text())
    if "predicted" not in report:
        raise MoaEdgeError(f"{project}/report.json has no prediction: convert the model again with this moa-edge")
    return {k: v for k, v in report["predicted"].items() if k != "ops"}


def measure_energy(project, board: Board, sensor: str | None = None, sysfs_root="/", iterations: int = 100,
                   idle_ms: int = 1000, interval_us: int = 10000, inputs=None, ssh=None, timeout: float = TIMEOUT_S,
                   progress=lambda msg: None, device_runner: list[str] | None = None) -> dict:
    """Sample the sensor while the board idles for idle_ms, then while the built model runs
    `iterations` times in one process (on a real board when `ssh` is given); joules per
    inference with its confidence interval, beside the cost model's prediction. The runs
    together may take `timeout` seconds: then the runner (and its emulator) is killed.

    A bare-metal board has no files to read a sensor from: an external meter (`command:`) reads
    the part's supply here while the program runs, by `device_runner` (a probe's command, called
    as DEVICE_RUNNER ELF ARG..., its exit status the program's) or else the board's emulator."""
    spec = sensor or board_sensor(board)
    if spec is None:
        raise MoaEdgeError(f"board {board.name} has no power sensor; give one with --sensor "
                           f"(hwmon:DIR[:N], hwmon-label:LABEL, jetson:RAIL, rapl:DIR, command:CMD)")
    if board.bare_metal and not spec.startswith("command:"):
        raise MoaEdgeError(f"board {board.name} is bare metal: measure it with an external meter, --sensor "
                           f"command:CMD (a Nordic PPK2 or a Joulescope: examples/meters/), not {spec!r}")
    if board.bare_metal and ssh is not None:
        raise MoaEdgeError(f"board {board.name} is bare metal: it runs by its probe (--device-runner), not over ssh")
    if device_runner and not board.bare_metal:
        raise MoaEdgeError(f"--device-runner is for a bare-metal board; {board.name} runs {'over ssh' if ssh else 'here'}")
    if iterations < 1 or idle_ms < 0 or interval_us < 100:
        raise MoaEdgeError("need --iterations >= 1, --idle-ms >= 0 and a sampling interval of at least 100 us")
    # An external meter runs here and samples in this process; a sensor's files are read by
    # the sampler beside the runner, on the board.
    meter = CommandMeter.parse(spec) if spec.startswith("command:") else None
    channel: Channel = meter.channel if meter else parse_sensor(spec, sysfs_root, RemoteFiles(ssh) if ssh else None)
    project = Path(project)
    io = project_io(project)
    feeds = check_inputs(io, inputs if inputs is not None else random_inputs(io), str(project))
    progress(f"{board.name}: build")
    # Bare metal has no environment for MOA_REPEAT: the count is built in.
    binary = Path(build(project, board, [f"-DMOA_REPEAT_DEFAULT={iterations}"], variant=f"{board.name}-energy")
                  if board.bare_metal else build(project, board)).resolve()
    env = {"MOA_REPEAT": str(iterations)}
    # The sampler stops the runner at the limit (whole seconds); ours stops the sampler, should
    # it hang itself (a sensor file that blocks), a while later.
    limit = ["-t", str(math.ceil(timeout))]
    sampler_timeout = math.ceil(timeout) + idle_ms / 1000 + 30
    where = f"board {board.name}"

    def on_board(cmd, limit_s, folder):
        try:
            return ssh.run(cmd, env=env, cwd=folder, timeout=limit_s)
        except MoaEdgeError as exc:  # a time limit: name the board
            raise MoaEdgeError(f"{where}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="moa-energy-") as tmp:
        tmp = Path(tmp)
        sampler = None if meter else build_sampler(tmp, board if ssh else None)
        files, out_paths = runner_files(io, feeds, tmp)
        outs = [p.name for p in out_paths]
        progress(f"{board.name}: {idle_ms} ms idle, then {iterations} runs, sampling every {interval_us} us")
        if ssh is None:
            args = [*map(str, files), *(str(tmp / o) for o in outs)]
            if board.bare_metal:
                model = [*device_runner, str(binary), *args] if device_runner else board.command(str(binary), args)
            else:
                runner = board.runner()
                if runner:  # the sampler starts the runner with execv: no PATH search
                    runner[0] = shutil.which(runner[0]) or runner[0]
                model = [*runner, str(binary), *args]
            if meter:
                proc = meter.sample(idle_ms, interval_us, lambda: run_limited(
                    model, timeout, {**os.environ, **env}, f"{where}: {binary.name}"))
            else:
                cmd = [str(sampler), *limit, str(interval_us), str(idle_ms), *channel.files, "--", *model]
                proc = run_limited(cmd, sampler_timeout, {**os.environ, **env}, f"{where}: the power sampler")
        else:
            with RemoteFolder(ssh) as folder:
                ssh.copy([*([sampler] if sampler else []), binary, *files], folder + "/")
                runner = board.runner()
                if runner:
                    runner[0] = ssh.check(["sh", "-c", 'command -v "$1"', "sh", runner[0]], "finding the emulator").strip()
                model = [*runner, "./" + binary.name, *(f.name for f in files), *outs]
                if meter:  # the meter's window includes the ssh session's start: at idle power
                    proc = meter.sample(idle_ms, interval_us, lambda: on_board(model, timeout, folder))
                else:
                    cmd = [*runner, "./moa_sampler", *limit, str(interval_us), str(idle_ms), *channel.files, "--", *model]
                    proc = on_board(cmd, sampler_timeout, folder)
    if any(line.startswith("timeout ") for line in proc.stdout.splitlines()):
        raise MoaEdgeError(f"{where}: {binary.name} did not finish within the time limit of {timeout:g} s "
                           f"(--timeout SECONDS); it was stopped")
    if "exit " not in proc.stdout:
        raise MoaEdgeError(f"the power sampler failed ({proc.returncode}): {proc.stderr.strip()}")
    run = parse_sampler_output(proc.stdout, channel)
    if run.exit_status != 0:
        raise runner_failure(where, binary, run.exit_status, proc.stderr)
    result = joules_per_inference(channel, run, iterations)
    result.update(board=board.name, project=str(project), predicted=predicted(project),
                  mean_run_s=run.active_seconds / iterations, ssh=ssh.destination if ssh else None,
                  device_runner=shlex.join(device_runner) if device_runner else None)
    return result


__all__ = ["build_sampler", "measure_energy", "parse_sensor", "predicted"]
