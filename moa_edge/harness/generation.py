"""Run a generation build's runner (prefill + token loop in C) on a board: natively, under
qemu-user, or on a real board over ssh, with the token ids streamed back as they come."""
from __future__ import annotations

from dataclasses import asdict, dataclass
import json
import os
from pathlib import Path
import re
from typing import Callable

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.target import Board

from .runner import runner_env, runner_failure, stream_limited
from .scratch_folder import scratch_folder
from .ssh import TIMEOUT_S, RemoteFolder, SshTarget


@dataclass(frozen=True)
class Sampling:
    """How the runner picks each token (moa/sampling.h): greedy at temperature 0."""
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> None:
        if not self.temperature >= 0:
            raise MoaEdgeError(f"--temperature {self.temperature}: must be 0 (greedy) or positive")
        if self.top_k < 0:
            raise MoaEdgeError(f"--top-k {self.top_k}: must be 0 (off) or positive")
        if not 0 < self.top_p <= 1:
            raise MoaEdgeError(f"--top-p {self.top_p}: must be in (0, 1]")
        if not 0 <= self.seed < 2 ** 64:
            raise MoaEdgeError(f"--seed {self.seed}: must be in [0, 2^64)")


def generation_info(project: Path) -> dict:
    """report.json's `generation` entry: max_context, vocab, ...; one error for a build without a cache."""
    report = Path(project) / "report.json"
    if not report.is_file():
        raise MoaEdgeError(f"{project}: no report.json; is this a `moa-edge convert` output folder?")
    content = json.loads(report.read_text())
    if "generation" not in content:
        raise MoaEdgeError(f"{project}: was not converted for generation (it has no key/value cache): convert a decoder "
                           "exported with past_key_values inputs, with --max-context N")
    return {**content["generation"], "memory": content["memory"]}


def check_prompt(info: dict, prompt_ids: list[int], max_new_tokens: int, stop_ids: list[int]) -> None:
    """The errors the runner would meet, said before it starts."""
    vocab, context = info["vocab"], info["max_context"]
    if not prompt_ids:
        raise MoaEdgeError("the prompt is empty: give at least one token")
    if len(prompt_ids) > context:
        raise MoaEdgeError(f"the prompt has {len(prompt_ids)} tokens, more than the build's max context of {context} "
                           "(convert again with a larger --max-context)")
    bad = next((t for t in [*prompt_ids, *stop_ids] if not 0 <= t < vocab), None)
    if bad is not None:
        raise MoaEdgeError(f"token id {bad} is outside the vocabulary [0, {vocab})")
    if max_new_tokens < 1:
        raise MoaEdgeError(f"--max-new-tokens {max_new_tokens}: must be at least 1")


def generate_ids(binary: Path, board: Board, info: dict, prompt_ids: list[int], max_new_tokens: int,
                 sampling: Sampling = Sampling(), stop_ids: list[int] = (), ssh: SshTarget | None = None,
                 timeout: float | None = TIMEOUT_S, on_token: Callable[[int], None] = lambda token: None,
                 forced_ids: list[int] | None = None, threads: int = 1) -> dict:
    """Run the runner once: `tokens` (the new ids, prompt excluded), the timings and memory; with
    forced_ids, those ids are fed instead (teacher forcing) and `logits` holds the scores after
    the prompt and after each forced id but the last, (len(forced_ids), vocab). The runner's
    worker pool has `threads` threads."""
    sampling.check()
    check_prompt(info, prompt_ids, max_new_tokens if forced_ids is None else max(len(forced_ids), 1), stop_ids)
    tokens: list[int] = []

    def on_line(line: str) -> None:
        match = re.fullmatch(r"token=(-?\d+)", line.strip())
        if match:
            tokens.append(int(match.group(1)))
            on_token(tokens[-1])

    with scratch_folder("moa-generate-") as tmp:
        folder = Path(tmp)
        files = [folder / "prompt.bin"]
        np.asarray(prompt_ids, dtype="<i8").tofile(files[0])
        args = ["prompt.bin", str(max_new_tokens), f"temperature={sampling.temperature!r}", f"top_k={sampling.top_k}",
                f"top_p={sampling.top_p!r}", f"seed={sampling.seed}"]
        if stop_ids:
            args.append("stop=" + ",".join(map(str, stop_ids)))
        if forced_ids is not None:
            files.append(folder / "force.bin")
            np.asarray(forced_ids, dtype="<i8").tofile(files[1])
            args += ["force=force.bin", "logits=logits.bin"]
        what = f"board {board.name}" + (f" over ssh {ssh.destination}" if ssh else "")
        if ssh is None:
            cmd = board.runner() + [str(Path(binary).resolve()), *args]
            try:
                proc = stream_limited(cmd, timeout, {**os.environ, **runner_env(threads=threads)},
                                      f"{what}: {Path(binary).name}", on_line, cwd=folder)
            except FileNotFoundError:
                raise MoaEdgeError(f"board {board.name}: cannot execute {cmd[0]}; "
                                   f"missing {'; '.join(board.missing_tools())}") from None
        else:
            with RemoteFolder(ssh) as remote:
                ssh.copy([Path(binary), *files], remote + "/")
                cmd = ssh.command(board.runner() + ["./" + Path(binary).name, *args], cwd=remote,
                                  env=runner_env(threads=threads))
                proc = stream_limited(cmd, timeout, None, f"{what}: {Path(binary).name}", on_line)
                if proc.returncode == 0 and forced_ids is not None:
                    ssh.copy([f"{remote}/logits.bin"], folder, upload=False)
        if proc.returncode != 0:
            raise runner_failure(what, binary, proc.returncode, proc.stderr)
        stats = dict(re.findall(r"^(\w+)=([0-9.]+)$", proc.stderr, re.MULTILINE))
        logits = (np.fromfile(folder / "logits.bin", dtype="<f4").reshape(-1, info["vocab"])
                  if forced_ids is not None else None)
    prefill_s, decode_s = float(stats["prefill_us"]) / 1e6, float(stats["decode_us"]) / 1e6
    steps = int(stats["decode_steps"])
    return {
        "tokens": tokens,
        "prompt_tokens": len(prompt_ids),
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "decode_steps": steps,
        "prefill_tokens_per_s": len(prompt_ids) / prefill_s if prefill_s > 0 else None,
        "decode_tokens_per_s": steps / decode_s if steps and decode_s > 0 else None,
        "context_full": stats.get("context_full") == "1",
        "max_rss_bytes": int(stats["max_rss_kb"]) * 1024 if "max_rss_kb" in stats else None,
        "sampling": asdict(sampling),
        "logits": logits,
    }
