"""Joules per inference from a sampled power sensor: the model in a loop against the idle board.

The sampler (c_runtime/tools/moa_sampler.c) reads the sensor's files while the board idles,
then while the runner loops over the model N times. Energy of a phase is the trapezoid
integral of power (or the wrapped differences of an energy counter); a phase's mean power
is its energy over its sampled time. Joules per inference = (active mean power - idle mean
power) x active time / N. Its 95% confidence interval comes from the spread of the mean
power over equal windows of each phase (Student's t, Welch's degrees of freedom).
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

from moa_edge.errors import MoaEdgeError

from .sensors import Channel

WINDOWS = 8  # per phase, for the confidence interval
# Two-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: 1.96).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042}


@dataclass
class Phase:
    times: np.ndarray   # seconds
    raw: np.ndarray     # samples x files, the integers read


@dataclass
class SamplerRun:
    idle: Phase
    active: Phase
    active_seconds: float
    exit_status: int


def parse_sampler_output(text: str, channel: Channel) -> SamplerRun:
    rows = {0: [], 1: []}
    active_ns = exit_status = None
    for line in text.splitlines():
        fields = line.split()
        if fields[:1] == ["sample"] and len(fields) == 3 + len(channel.files):
            values = fields[3:]
            for path, value in zip(channel.files, values):
                if value == "-":
                    raise MoaEdgeError(f"sensor {channel.description}: {path} could not be read during the run")
            rows[int(fields[1])].append((int(fields[2]) * 1e-9, [int(v) for v in values]))
        elif fields[:1] == ["active_ns"]:
            active_ns = int(fields[1])
        elif fields[:1] == ["exit"]:
            exit_status = int(fields[1])
    if active_ns is None or exit_status is None:
        raise MoaEdgeError(f"the sampler's output is incomplete (no active_ns/exit line):\n{text[-2000:]}")
    phases = [Phase(np.array([t for t, _ in rows[k]]), np.array([v for _, v in rows[k]], dtype=np.int64).reshape(
        len(rows[k]), len(channel.files))) for k in (0, 1)]
    return SamplerRun(phases[0], phases[1], active_ns * 1e-9, exit_status)


def _series(channel: Channel, phase: Phase, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(times, cumulative joules) of a phase."""
    if len(phase.times) < 2:
        raise MoaEdgeError(f"the {name} phase is shorter than one sampling interval ({len(phase.times)} sample); "
                           f"raise --iterations (or the idle time) so that the sensor is read at least twice")
    if channel.kind == "power":
        watts = np.prod(phase.raw, axis=1) * channel.scale
        steps = np.diff(phase.times) * (watts[1:] + watts[:-1]) / 2
    else:
        counts = np.diff(phase.raw[:, 0]).astype(np.float64)
        backwards = counts < 0
        if backwards.any():
            if not channel.wrap_joules:
                raise MoaEdgeError(f"sensor {channel.description}: the energy counter went backwards and has no range")
            counts[backwards] += channel.wrap_joules / channel.scale  # one wrap between two samples
        steps = counts * channel.scale
    return phase.times, np.concatenate([[0.0], np.cumsum(steps)])


def _window_powers(times: np.ndarray, joules: np.ndarray) -> np.ndarray:
    """Mean power over up to WINDOWS equal stretches of samples."""
    count = min(WINDOWS, len(times) - 1)
    edges = np.linspace(0, len(times) - 1, count + 1).round().astype(int)
    return np.array([(joules[b] - joules[a]) / (times[b] - times[a]) for a, b in zip(edges[:-1], edges[1:])
                     if times[b] > times[a]])


def _stale(channel: Channel, run: SamplerRun) -> bool:
    everything = np.concatenate([run.idle.raw, run.active.raw])
    if channel.kind == "energy":
        return bool(np.all(run.active.raw[:, 0] == run.active.raw[0, 0]))
    return len(everything) >= 8 and bool(np.all(everything == everything[0]))


def joules_per_inference(channel: Channel, run: SamplerRun, iterations: int) -> dict:
    if run.exit_status != 0:
        raise MoaEdgeError(f"the runner exited with status {run.exit_status} during the energy run")
    idle_t, idle_j = _series(channel, run.idle, "idle")
    active_t, active_j = _series(channel, run.active, "active")
    if _stale(channel, run):
        raise MoaEdgeError(f"sensor {channel.description}: the reading did not change over "
                           f"{len(run.idle.times) + len(run.active.times)} samples; is the sensor live?")
    idle_w = idle_j[-1] / (idle_t[-1] - idle_t[0])
    active_w = active_j[-1] / (active_t[-1] - active_t[0])
    per_run = run.active_seconds / iterations
    result = {"sensor": channel.description, "iterations": iterations, "active_s": run.active_seconds,
              "idle_power_w": idle_w, "active_power_w": active_w,
              "joules_per_inference": (active_w - idle_w) * per_run,
              "samples": {"idle": len(idle_t), "active": len(active_t)}}
    windows = [_window_powers(idle_t, idle_j), _window_powers(active_t, active_j)]
    if all(len(w) >= 2 for w in windows):
        variances = [w.var(ddof=1) / len(w) for w in windows]
        se = math.sqrt(sum(variances))
        # Welch-Satterthwaite degrees of freedom; no spread at all gives an interval of 0.
        df = (sum(variances) ** 2 / sum(v * v / (len(w) - 1) for v, w in zip(variances, windows))
              if se > 0 else 30)
        result["ci95_joules"] = _T95.get(max(1, int(df)), 1.96) * se * per_run
    else:
        result["ci95_joules"] = None  # too few samples for a spread
    return result
