"""Run a built model on a board (natively or under qemu-user) with numpy inputs."""
from __future__ import annotations

import json
import os
from pathlib import Path
import re
import signal
import subprocess
import threading
from typing import Callable

import numpy as np

from moa_edge import C_RUNTIME_DIR
from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.target import Board

from . import insn_count
from .scratch_folder import scratch_folder
from .ssh import TIMEOUT_S, RemoteFolder, SshTarget

MAX_THREADS = 64  # MOA_POOL_MAX_THREADS (moa/pool.h)


def _status_names() -> dict[int, str]:
    """moa_status values by number, each as its name and what it means (moa/status.h)."""
    text = (C_RUNTIME_DIR / "include" / "moa" / "status.h").read_text()
    return {int(number): f"{name}: {meaning.strip()}"
            for name, number, meaning in re.findall(r"(MOA_\w+) = (\d+),? */\* (.*?) \*/", text)}


STATUS_NAMES = _status_names()


def runner_failure(where: str, binary: Path, returncode: int, stderr: str) -> MoaEdgeError:
    """One error for a runner that exited non-zero; a model status is named as in moa/status.h."""
    text = re.sub(r"failed with status (\d+)\b",
                  lambda m: m.group(0) + (f" ({STATUS_NAMES[int(m.group(1))]})" if int(m.group(1)) in STATUS_NAMES else ""),
                  stderr.strip())
    return MoaEdgeError(f"{where}: {Path(binary).name} exited with {returncode}: {text}")


def project_io(project: Path) -> list[dict]:
    report = Path(project) / "report.json"
    if not report.is_file():
        raise MoaEdgeError(f"{project}: no report.json; is this a `moa-edge convert` output folder?")
    return json.loads(report.read_text())["io"]


def project_threads(project: Path, asked: int | None) -> int:
    """The threads of a run of `project`: `asked`, or by default as many as it was converted for
    (convert --threads: the arena holds a kernel scratch per thread); more is one clear error."""
    most = json.loads((Path(project) / "report.json").read_text()).get("max_threads", 1)
    if asked is not None and asked > most:
        raise MoaEdgeError(f"--threads {asked}: {project} was converted for at most {most} thread(s) "
                           f"(convert --threads {asked} plans the arena for more)")
    return asked or most


def check_inputs(io: list[dict], inputs: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Inputs by graph name, checked against the model's shapes and cast to its dtypes."""
    wanted = [e for e in io if e["kind"] == "input"]
    names = {e["name"] for e in wanted}
    unknown = sorted(set(inputs) - names)
    missing = sorted(names - set(inputs))
    if unknown or missing:
        raise MoaEdgeError(f"{source}: inputs must be exactly {sorted(names)}"
                           + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else ""))
    out = {}
    for e in wanted:
        arr = np.asarray(inputs[e["name"]])
        if list(arr.shape) != e["shape"]:
            raise MoaEdgeError(f"{source}: input {e['name']!r} has shape {list(arr.shape)}, the model expects {e['shape']}")
        out[e["name"]] = np.ascontiguousarray(_exact_cast(arr, e, source))
    return out


def _exact_cast(arr: np.ndarray, entry: dict, source: str) -> np.ndarray:
    """arr as the input's dtype where that keeps every value: floats to its float type (rounded, as the
    model computes in it, but never a finite value to infinity), integers and bools to an integer
    type whose range holds every value, 0/1 integers to bool. Never floats to integers (token
    ids would be truncated) and never complex numbers (the imaginary part would be dropped)."""
    want = dtypes.dtype(entry["dtype"]).numpy
    have = arr.dtype
    if have == want:
        return arr
    # Which kinds may become which; then whether every value does (bfloat16 is numpy kind "V").
    bfloat16 = dtypes.dtype("bfloat16").numpy
    want_kind, have_kind = ("f" if t == bfloat16 else t.kind for t in (want, have))
    kinds = {"f": "fiub", "i": "iub", "u": "iub", "b": "iu"}.get(want_kind, "")
    fits = False
    if have_kind in kinds:
        with np.errstate(invalid="ignore", over="ignore"):  # a value that does not fit fails the check, quietly
            cast = arr.astype(want)
            if want_kind == "f" and have_kind == "f":
                fits = np.array_equal(np.isfinite(cast), np.isfinite(arr))
            elif want_kind == "f":
                fits = np.array_equal(cast.astype(have), arr)
            elif want_kind == "b":
                fits = bool(np.isin(arr, (0, 1)).all())
            else:
                info = np.iinfo(want)
                fits = have.kind == "b" or arr.size == 0 or (int(arr.min()) >= info.min and int(arr.max()) <= info.max)
    if not fits:
        raise MoaEdgeError(f"{source}: input {entry['name']!r} has dtype {have}, the model expects {want}"
                           + (" (not every value fits)" if have_kind in kinds else ""))
    return cast


def runner_files(io: list[dict], inputs: dict[str, np.ndarray], folder: Path) -> tuple[list[Path], list[Path]]:
    """The runner's arguments in `folder`: each input written raw (in0.bin, ...), in graph order,
    and the paths it is to write its outputs to (out0.bin, ...)."""
    ins = []
    for k, e in enumerate(e for e in io if e["kind"] == "input"):
        ins.append(folder / f"in{k}.bin")
        inputs[e["name"]].tofile(ins[-1])
    return ins, [folder / f"out{k}.bin" for k in range(sum(e["kind"] == "output" for e in io))]


def run(binary: Path, board: Board, io: list[dict], inputs: dict[str, np.ndarray],
        timeout: float = TIMEOUT_S, repeat: int = 1, ssh: SshTarget | None = None,
        stats: dict | None = None, threads: int = 1) -> tuple[dict[str, np.ndarray], float]:
    """Run `repeat` times in one process on `threads` threads (on a real board when `ssh` is
    given); returns (outputs by name, the fastest run's time in microseconds, as the runner
    measures it). `stats`, when given, gets the runner's peak resident memory (max_rss_bytes),
    and on a bare-metal board, which has no clock, the instructions qemu counted
    (insn_count.read_counts: instructions_per_inference, ...)."""
    with scratch_folder("moa-run-") as tmp:
        args, out_paths = runner_files(io, inputs, Path(tmp))
        args = [str(a) for a in args]
        outs = [e for e in io if e["kind"] == "output"]
        env = runner_env(repeat, threads)
        counted = Path(tmp) / "instructions.log"
        if ssh is not None:
            stderr = _run_over_ssh(ssh, binary, board, args, out_paths, env, timeout)
        elif board.bare_metal:
            stderr = _run_here(binary, board, args, out_paths, env, timeout,
                               insn_count.emulator_options(binary, board, counted))
            if stats is not None:
                stats.update(insn_count.read_counts(counted))
        else:
            stderr = _run_here(binary, board, args, out_paths, env, timeout)
        outputs = {e["name"]: np.fromfile(p, dtype=dtypes.dtype(e["dtype"]).numpy).reshape(e["shape"])
                   for e, p in zip(outs, out_paths)}
        match = re.search(r"run_us=([0-9.]+)", stderr)
        rss = re.search(r"max_rss_kb=(\d+)", stderr)
        if stats is not None:
            stats["max_rss_bytes"] = int(rss.group(1)) * 1024 if rss else None
        return outputs, float(match.group(1)) if match else float("nan")


def run_limited(cmd: list[str], timeout: float | None, env: dict[str, str], what: str) -> subprocess.CompletedProcess:
    """cmd in a process group of its own (qemu, the sampler and the runner it starts; scons and
    its compilers), all of it stopped when it outlives `timeout` seconds (None: no limit; one
    MoaEdgeError naming `what` and the limit) or when we are interrupted. FileNotFoundError when cmd[0] cannot be executed."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                          env=env, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException as exc:
            _stop_group(proc)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise MoaEdgeError(f"{what} did not finish within the time limit of {timeout:g} s "
                                   f"(--timeout SECONDS); it was stopped") from None
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def stream_limited(cmd: list[str], timeout: float | None, env: dict[str, str] | None, what: str,
                   on_line: Callable[[str], None], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """run_limited for a program that reports as it goes: on_line gets each line of its stdout
    as soon as it is written. FileNotFoundError when cmd[0] cannot be executed."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                          env=env, cwd=cwd, start_new_session=True) as proc:
        stderr: list[str] = []
        reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
        reader.start()
        expired = threading.Event()

        def expire():
            expired.set()
            _end_group(proc)
        timer = threading.Timer(timeout, expire) if timeout is not None else None
        lines = []
        try:
            if timer is not None:
                timer.start()
            for line in proc.stdout:
                lines.append(line)
                on_line(line.rstrip("\n"))
            proc.wait()
        except BaseException:
            _end_group(proc)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            reader.join()
        if expired.is_set():
            raise MoaEdgeError(f"{what} did not finish within the time limit of {timeout:g} s "
                               f"(--timeout SECONDS); it was stopped")
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "".join(stderr))


def _end_group(proc: subprocess.Popen) -> None:
    """_stop_group for a process whose pipes other threads read: SIGTERM, SIGKILL after 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:  # it had ended
        pass


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group first (a compiler driver then deletes its temporary files),
    SIGKILL to what is left after 10 s; returns once the leader has ended and its pipes are read."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=10)
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had ended
        pass
    proc.communicate()


def runner_env(repeat: int = 1, threads: int = 1) -> dict[str, str]:
    """What the generated runners read from their environment: the runs, and the threads of the
    worker pool they start (main.c)."""
    if not 1 <= threads <= MAX_THREADS:
        raise MoaEdgeError(f"--threads {threads}: give 1 to {MAX_THREADS}")
    return {"MOA_REPEAT": str(repeat), "MOA_THREADS": str(threads)}


def _run_here(binary: Path, board: Board, args: list[str], out_paths: list[Path], env: dict, timeout: float,
              emulator_options: list[str] = ()) -> str:
    cmd = board.command(str(binary), args + [str(p) for p in out_paths], emulator_options)
    try:
        proc = run_limited(cmd, timeout, {**os.environ, **env}, f"board {board.name}: {binary.name}")
    except FileNotFoundError:
        raise MoaEdgeError(f"board {board.name}: cannot execute {cmd[0]}; missing {'; '.join(board.missing_tools())}") from None
    if proc.returncode != 0:
        raise runner_failure(f"board {board.name}", binary, proc.returncode, proc.stderr)
    return proc.stderr


def _run_over_ssh(ssh: SshTarget, binary: Path, board: Board, args: list[str], out_paths: list[Path], env: dict,
                  timeout: float) -> str:
    """Copy the runner and its inputs to a fresh folder on the board, run it there (under the
    board's emulator command, if it has one), fetch the outputs."""
    if board.bare_metal:
        raise MoaEdgeError(f"board {board.name} is bare metal: it runs here under {board.runner()[0]}, not over ssh")
    with RemoteFolder(ssh) as folder:
        ssh.copy([Path(binary), *map(Path, args)], folder + "/")
        remote_args = [Path(a).name for a in args] + [p.name for p in out_paths]
        try:
            proc = ssh.run(board.runner() + ["./" + Path(binary).name, *remote_args], env=env,
                           cwd=folder, timeout=timeout)
        except MoaEdgeError as exc:  # the time limit
            raise MoaEdgeError(f"board {board.name}: {exc}") from None
        if proc.returncode != 0:
            raise runner_failure(f"board {board.name} over ssh {ssh.destination}", binary, proc.returncode, proc.stderr)
        ssh.copy([f"{folder}/{p.name}" for p in out_paths], out_paths[0].parent, upload=False)
    return proc.stderr
