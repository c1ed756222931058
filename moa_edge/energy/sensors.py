"""Power sensors as the files a sampler reads, and what their integers mean.

A sensor is named by a spec (the --sensor option, or a board's [power_sensor] table):

    hwmon:DIR[:N]      a Linux hwmon power monitor (INA219/INA226/INA3221, ...): powerN_input
                       in microwatts, or currN_input (mA) x inN_input (mV) when it has no power
                       attribute; N defaults to 1
    hwmon-label:LABEL  the hwmon channel whose inN_label is LABEL, searched under every
                       /sys/class/hwmon/hwmon*/ (how Jetson boards name their rails: VDD_IN, ...)
    jetson:RAIL        the same search under the Jetson INA3221 driver's folders
    rapl:DIR           an Intel RAPL powercap domain: energy_uj (microjoules, a counter that
                       wraps at max_energy_range_uj)
    command:[--unit=U ]CMD ARG...
                       an external meter (a USB power meter's reader, a script summing a PMIC's
                       rails): a command that prints one reading, "12.5 W", "850 mW", "3.2 J"
                       or "3200 mJ", or a bare number in the unit U (W, mW, J or mJ). Watts are
                       power; joules an energy counter that only grows. It runs on this machine
                       (where the meter is plugged in), also for a board over ssh, once per
                       sampling interval (or as fast as it answers); split into argv words by
                       shlex.split and run without a shell

File paths are of the board's file system (this machine's for native and emulated boards, the
board's over ssh); `sysfs_root` prefixes them (a fake sysfs folder in tests). Sampling them
is the sampler's job (c_runtime/tools/moa_sampler.c), on the board itself.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import Path
import posixpath
import re
import shlex
import subprocess
import threading
import time

from moa_edge.errors import MoaEdgeError

JETSON_HWMON = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
HWMON = "sys/class/hwmon/hwmon*"


@dataclass(frozen=True)
class Channel:
    """What the sampler reads and how its integers become watts or joules."""
    description: str
    kind: str                 # "power": the product of the files' values x scale is watts;
                              # "energy": the one file's value x scale is a counter in joules
    files: tuple[str, ...]
    scale: float
    wrap_joules: float = 0.0  # an energy counter's range (0: never wraps)

    def value(self, raw: tuple[int, ...]) -> float:
        return math.prod(raw) * self.scale


class LocalFiles:
    """The sensor's files on this machine (native and emulated boards)."""

    def read(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        return Path(path).exists()

    def glob(self, pattern: str) -> list[str]:
        return sorted(str(p) for p in Path("/").glob(pattern.lstrip("/")))


def _readable(files, path: str, spec: str) -> str:
    text = files.read(path)
    if text is None:
        why = "is not readable (permissions? try as root)" if files.exists(path) else "does not exist"
        raise MoaEdgeError(f"sensor {spec!r}: {path} {why}")
    try:
        int(text.strip())
    except ValueError:
        raise MoaEdgeError(f"sensor {spec!r}: {path} does not hold an integer reading ({text.strip()[:40]!r})") from None
    return path


def _hwmon_channel(files, folder: str, n: int, spec: str) -> Channel:
    power = posixpath.join(folder, f"power{n}_input")
    if files.exists(power):
        return Channel(f"hwmon {folder} power{n}_input (uW)", "power", (_readable(files, power, spec),), 1e-6)
    current, voltage = posixpath.join(folder, f"curr{n}_input"), posixpath.join(folder, f"in{n}_input")
    if files.exists(current) and files.exists(voltage):
        return Channel(f"hwmon {folder} curr{n}_input (mA) x in{n}_input (mV)", "power",
                       (_readable(files, current, spec), _readable(files, voltage, spec)), 1e-6)
    raise MoaEdgeError(f"sensor {spec!r}: {folder} has neither power{n}_input nor curr{n}_input and in{n}_input")


def _by_label(files, root: str, pattern: str, label: str, spec: str) -> Channel:
    for label_file in files.glob(posixpath.join(root, pattern, "in*_label")):
        if (files.read(label_file) or "").strip() == label:
            name = posixpath.basename(label_file)
            return _hwmon_channel(files, posixpath.dirname(label_file), int(name[2:-len("_label")]), spec)
    raise MoaEdgeError(f"sensor {spec!r}: no channel labelled {label!r} under {posixpath.join(root, pattern)}")


def parse_sensor(spec: str, sysfs_root: str | Path = "/", files=None) -> Channel:
    """The channel a sensor spec names, its files checked to be readable integers (on this
    machine, or through `files`: the board's, over ssh)."""
    files = files or LocalFiles()
    root = str(sysfs_root)
    kind, _, rest = spec.partition(":")
    if not rest:
        raise MoaEdgeError(f"sensor {spec!r}: expected KIND:WHERE (hwmon:DIR[:N], hwmon-label:LABEL, jetson:RAIL, "
                           f"rapl:DIR, command:CMD)")
    if kind == "hwmon":
        folder, _, n = rest.partition(":")
        if n and not n.isdigit():
            raise MoaEdgeError(f"sensor {spec!r}: channel {n!r} is not a number")
        return _hwmon_channel(files, posixpath.join(root, folder.lstrip("/")), int(n or 1), spec)
    if kind == "hwmon-label":
        return _by_label(files, root, HWMON, rest, spec)
    if kind == "jetson":
        return _by_label(files, root, JETSON_HWMON, rest, spec)
    if kind == "command":
        return CommandMeter.parse(spec).channel
    if kind == "rapl":
        folder = posixpath.join(root, rest.lstrip("/"))
        counter = _readable(files, posixpath.join(folder, "energy_uj"), spec)
        wrap = int(files.read(_readable(files, posixpath.join(folder, "max_energy_range_uj"), spec))) * 1e-6
        return Channel(f"RAPL {folder} energy_uj (uJ, wraps at {wrap:g} J)", "energy", (counter,), 1e-6, wrap)
    raise MoaEdgeError(f"sensor {spec!r}: unknown kind {kind!r} (hwmon, hwmon-label, jetson, rapl, command)")


def board_sensor(board) -> str | None:
    """The sensor spec of a board's [power_sensor] table, or None when it has none."""
    sensor = board.power_sensor
    if sensor.get("kind", "none") == "none":
        return None
    if "spec" not in sensor:
        raise MoaEdgeError(f"{board.path}: [power_sensor] kind {sensor['kind']!r} needs spec = \"KIND:WHERE\"")
    return sensor["spec"]


# --- an external meter given as a command ------------------------------------------------------

UNITS = {"W": ("power", 1.0), "mW": ("power", 1e-3), "J": ("energy", 1.0), "mJ": ("energy", 1e-3)}
_READING = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([a-zA-Z]*)\s*$")
MICRO = 1e-6  # readings are kept as integers of micro-watts or micro-joules, as sysfs files are


class CommandMeter:
    """An external meter: a command run on this machine that prints one reading. It samples
    like c_runtime/tools/moa_sampler.c and prints what that prints, so that the joules come
    from the same integration as for a sensor's files."""

    def __init__(self, spec: str, argv: list[str], unit: str | None, timeout_s: float = 10.0):
        self.spec, self.argv, self.unit, self.timeout_s = spec, argv, unit, timeout_s
        first = self.read()  # a meter that fails or prints garbage is an error before the run
        self.kind = UNITS[first[1]][0]
        self.channel = Channel(f"command meter `{shlex.join(argv)}` ({'W' if self.kind == 'power' else 'J'})",
                               self.kind, (shlex.join(argv),), MICRO)

    @classmethod
    def parse(cls, spec: str) -> "CommandMeter":
        kind, _, rest = spec.partition(":")
        if kind != "command":
            raise MoaEdgeError(f"sensor {spec!r}: not a command meter")
        try:
            argv = shlex.split(rest)
        except ValueError as e:
            raise MoaEdgeError(f"sensor {spec!r}: cannot split the command into words ({e})") from None
        unit = None
        if argv and argv[0].startswith("--unit="):
            unit = argv.pop(0)[len("--unit="):]
            if unit not in UNITS:
                raise MoaEdgeError(f"sensor {spec!r}: unknown unit {unit!r} (W, mW, J or mJ)")
        if not argv:
            raise MoaEdgeError(f"sensor {spec!r}: expected command:[--unit=U ]CMD ARG...")
        return cls(spec, argv, unit)

    def read(self) -> tuple[float, str]:
        """One reading: (value, unit)."""
        try:
            proc = subprocess.run(self.argv, capture_output=True, text=True, timeout=self.timeout_s,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise MoaEdgeError(f"sensor {self.spec!r}: the meter command {self.argv[0]!r} was not found") from None
        except PermissionError:
            raise MoaEdgeError(f"sensor {self.spec!r}: the meter command {self.argv[0]!r} is not executable") from None
        except subprocess.TimeoutExpired:
            raise MoaEdgeError(f"sensor {self.spec!r}: the meter command gave no reading within "
                               f"{self.timeout_s:g} s") from None
        if proc.returncode != 0:
            raise MoaEdgeError(f"sensor {self.spec!r}: the meter command failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-300:]}")
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        match = _READING.match(lines[-1]) if len(lines) == 1 else None
        unit = (match.group(2) or self.unit) if match else None
        if unit not in UNITS:
            wanted = "one reading such as '12.5 W', '850 mW', '3.2 J' or '3200 mJ'"
            if match and not match.group(2):
                wanted += " (a bare number needs --unit=W, mW, J or mJ before the command)"
            raise MoaEdgeError(f"sensor {self.spec!r}: the meter printed {proc.stdout.strip()[:80]!r}; "
                               f"expected {wanted}")
        value = float(match.group(1))
        if not math.isfinite(value):
            raise MoaEdgeError(f"sensor {self.spec!r}: the meter printed {proc.stdout.strip()[:80]!r}")
        if hasattr(self, "kind") and UNITS[unit][0] != self.kind:
            raise MoaEdgeError(f"sensor {self.spec!r}: the meter switched from {self.kind} to {unit} readings")
        return value, unit

    def _sample(self, phase: int, lines: list[str]) -> None:
        start = time.monotonic_ns()
        value, unit = self.read()
        stamp = (start + time.monotonic_ns()) // 2  # the reading is of the middle of the call
        lines.append(f"sample {phase} {stamp} {round(value * UNITS[unit][1] / MICRO)}")

    def sample(self, idle_ms: int, interval_us: int, run_model) -> subprocess.CompletedProcess:
        """Read the meter for idle_ms, then while run_model() (a callable returning a
        CompletedProcess: the runner, here or over ssh) runs in a thread. Returns the
        sampler's output format on stdout, the runner's stderr and exit status."""
        lines: list[str] = []
        interval = interval_us * 1000
        next_ns = time.monotonic_ns()
        deadline = next_ns + idle_ms * 1_000_000
        while next_ns <= deadline:
            self._sample(0, lines)
            next_ns += interval
            time.sleep(max(0, next_ns - time.monotonic_ns()) * 1e-9)
        result: dict = {}

        def target():
            try:
                result["proc"] = run_model()
                result["end"] = time.monotonic_ns()
            except BaseException as e:  # re-raised in the caller's thread
                result["error"] = e

        start = next_ns = time.monotonic_ns()
        runner = threading.Thread(target=target, daemon=True)
        runner.start()
        try:
            while True:
                done = not runner.is_alive()
                self._sample(1, lines)
                if done:
                    break
                next_ns += interval
                runner.join(max(0, next_ns - time.monotonic_ns()) * 1e-9)
        finally:
            runner.join()
        if "error" in result:
            raise result["error"]
        proc = result["proc"]
        lines += [f"active_ns {result['end'] - start}", f"exit {proc.returncode}"]
        return subprocess.CompletedProcess(proc.args, proc.returncode, "\n".join(lines) + "\n", proc.stderr)
