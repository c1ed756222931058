#!/usr/bin/env python3
"""One power reading from a Nordic Power Profiler Kit II, for `moa-edge energy --sensor command:`.

The PPK2 sits in the part's supply as an ampere meter (its VIN/VOUT pins in series, the board
powered as usual), so opening it between readings leaves the part running. Each call measures
for --window-ms and prints the mean power, the mean current times the supply's --volts:

    moa-edge energy proj --board pico2 --device-runner ./probe-run \
        --sensor "command:python examples/meters/ppk2_power.py --volts 3.3" --interval-us 100000

Needs `pip install ppk2-api` (IRNAS's ppk2-api-python) and the PPK2 on USB. Not run on a PPK2
here: the build machines have no meter; tests/test_mcu.py runs it against a stand-in module.
"""
import argparse
import sys
import time


def mean_power_mw(ppk2, window_s: float, volts: float) -> float:
    """Sample for window_s seconds; the PPK2 reports microamps (100 000 samples a second)."""
    ppk2.get_modifiers()  # the calibration the samples are converted with
    ppk2.use_ampere_meter()
    ppk2.start_measuring()
    microamps = []
    end = time.monotonic() + window_s
    try:
        while time.monotonic() < end or not microamps:
            data = ppk2.get_data()
            if data:
                got = ppk2.get_samples(data)
                microamps += got[0] if isinstance(got, tuple) else got  # (samples, digital) since ppk2-api 0.9
            time.sleep(0.001)
    finally:
        ppk2.stop_measuring()
    return sum(microamps) / len(microamps) * 1e-6 * volts * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volts", type=float, required=True, help="the part's supply voltage (the PPK2 measures current)")
    parser.add_argument("--port", help="the PPK2's serial port (default: the one PPK2 connected)")
    parser.add_argument("--window-ms", type=float, default=50.0, help="how long one reading averages (default 50)")
    a = parser.parse_args()
    try:
        from ppk2_api.ppk2_api import PPK2_API
    except ImportError:
        print("ppk2_power: the ppk2-api package is not installed (pip install ppk2-api)", file=sys.stderr)
        return 2
    port = a.port
    if port is None:
        found = PPK2_API.list_devices()  # ports, or (port, serial number) pairs since 0.9
        if len(found) != 1:
            print(f"ppk2_power: {len(found)} PPK2s connected; name one with --port", file=sys.stderr)
            return 2
        port = found[0][0] if isinstance(found[0], tuple) else found[0]
    print(f"{mean_power_mw(PPK2_API(port, timeout=1, write_timeout=1, exclusive=True), a.window_ms / 1e3, a.volts):.6g} mW")
    return 0


if __name__ == "__main__":
    sys.exit(main())
