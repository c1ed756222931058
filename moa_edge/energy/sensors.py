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

Paths are of the board's file system (this machine's for native and emulated boards, the
board's over ssh); `sysfs_root` prefixes them (a fake sysfs folder in tests). Sampling them
is the sampler's job (c_runtime/tools/moa_sampler.c), on the board itself.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import Path
import posixpath

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
                           f"rapl:DIR)")
    if kind == "hwmon":
        folder, _, n = rest.partition(":")
        if n and not n.isdigit():
            raise MoaEdgeError(f"sensor {spec!r}: channel {n!r} is not a number")
        return _hwmon_channel(files, posixpath.join(root, folder.lstrip("/")), int(n or 1), spec)
    if kind == "hwmon-label":
        return _by_label(files, root, HWMON, rest, spec)
    if kind == "jetson":
        return _by_label(files, root, JETSON_HWMON, rest, spec)
    if kind == "rapl":
        folder = posixpath.join(root, rest.lstrip("/"))
        counter = _readable(files, posixpath.join(folder, "energy_uj"), spec)
        wrap = int(files.read(_readable(files, posixpath.join(folder, "max_energy_range_uj"), spec))) * 1e-6
        return Channel(f"RAPL {folder} energy_uj (uJ, wraps at {wrap:g} J)", "energy", (counter,), 1e-6, wrap)
    raise MoaEdgeError(f"sensor {spec!r}: unknown kind {kind!r} (hwmon, hwmon-label, jetson, rapl)")


def board_sensor(board) -> str | None:
    """The sensor spec of a board's [power_sensor] table, or None when it has none."""
    sensor = board.power_sensor
    if sensor.get("kind", "none") == "none":
        return None
    if "spec" not in sensor:
        raise MoaEdgeError(f"{board.path}: [power_sensor] kind {sensor['kind']!r} needs spec = \"KIND:WHERE\"")
    return sensor["spec"]
