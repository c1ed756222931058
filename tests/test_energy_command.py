"""An external power meter given as a command (issue 7, item 3): the command runs on this
machine once per sampling interval, each reading is one sample of the same format as the
on-board sampler's, and the joules come from the same integration as for a sensor's files."""
import shlex
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto as T, helper, numpy_helper
import pytest

from conftest import board_file, require_board
from moa_edge.energy import measure_energy, parse_sensor
from moa_edge.energy.measure import joules_per_inference, parse_sampler_output
from moa_edge.energy.sensors import Channel, CommandMeter
from moa_edge.errors import MoaEdgeError
from moa_edge.pipeline import convert

METER = r'''
import os, sys, time
flag, idle, active, unit = sys.argv[1:5]
value = float(active if os.path.exists(flag) else idle)
if len(sys.argv) > 5:  # wobble: +-0.1 W on alternate milliseconds, so that the reading is live
    value += 0.1 if int(time.monotonic() * 1000) % 2 else -0.1
print(f"{value:g}{unit}")
'''


def _meter(tmp_path, idle="2", active="5", unit=" W", extra="", wobble=False) -> str:
    """The spec of a fake meter printing `idle` watts, or `active` while the flag file exists."""
    script = tmp_path / "meter.py"
    script.write_text(METER)
    flag = tmp_path / "running"
    return (f"command:{extra}{shlex.quote(sys.executable)} -S {shlex.quote(str(script))} {shlex.quote(str(flag))} "
            f"{idle} {active} {shlex.quote(unit)}" + (" wobble" if wobble else ""))


def _script(tmp_path, body: str) -> str:
    script = tmp_path / "meter.py"
    script.write_text(body)
    return f"command:{shlex.quote(sys.executable)} {shlex.quote(str(script))}"


# --- readings -------------------------------------------------------------------------------

@pytest.mark.parametrize("printed, extra, kind, value", [
    (" W", "", "power", 12.5), ("W", "", "power", 12.5), (" mW", "", "power", 0.0125),
    (" J", "", "energy", 12.5), (" mJ", "", "energy", 0.0125), ("", "--unit=W ", "power", 12.5),
    ("", "--unit=mJ ", "energy", 0.0125),
])
def test_a_reading_with_its_unit(tmp_path, printed, extra, kind, value):
    meter = CommandMeter.parse(_meter(tmp_path, idle="12.5", unit=printed, extra=extra))
    channel = parse_sensor(_meter(tmp_path, idle="12.5", unit=printed, extra=extra))
    assert meter.channel == channel and channel.kind == kind
    reading, unit = meter.read()
    # kept as integers of micro-units, like a sysfs file's
    assert channel.value((round(reading * {"W": 1, "J": 1, "mW": 1e-3, "mJ": 1e-3}[unit] / 1e-6),)) == \
        pytest.approx(value)


@pytest.mark.parametrize("body, extra, message", [
    ("print('hello')", "", r"the meter printed 'hello'; expected one reading such as '12.5 W'"),
    ("print('12.5')", "", r"printed '12.5'.*a bare number needs --unit=W"),
    ("print('12.5 V')", "", r"printed '12.5 V'; expected one reading"),
    ("print('1 W'); print('2 W')", "", r"printed '1 W\\n2 W'"),
    ("print('nan W')", "", r"printed 'nan W'"),
    ("print('')", "", r"printed ''"),
    ("import sys; sys.stderr.write('no meter on /dev/ttyUSB0'); sys.exit(3)", "",
     r"the meter command failed \(3\): no meter on /dev/ttyUSB0"),
    ("print('1 W')", "--unit=kW ", r"unknown unit 'kW'"),
])
def test_a_meter_that_fails_or_prints_garbage_is_one_clear_error(tmp_path, body, extra, message):
    spec = _script(tmp_path, body).replace("command:", "command:" + extra, 1)
    with pytest.raises(MoaEdgeError, match=message):
        parse_sensor(spec)


@pytest.mark.parametrize("spec, message", [
    ("command:/nonexistent/usb-meter --read", r"the meter command '/nonexistent/usb-meter' was not found"),
    ("command:", r"expected KIND:WHERE \(.*command:CMD\)"),
    ("command:--unit=W", r"expected command:\[--unit=U \]CMD"),
    ("command:meter 'unclosed", r"cannot split the command into words"),
])
def test_a_bad_command_spec(spec, message):
    with pytest.raises(MoaEdgeError, match=message):
        parse_sensor(spec)


def test_the_command_is_argv_words_never_a_shell(tmp_path):
    """`;` and `$(...)` reach the meter as arguments: no shell runs them."""
    marker = tmp_path / "pwned"
    script = tmp_path / "meter.py"
    script.write_text("import sys; print('1 W' if sys.argv[1:] == [';', 'touch', sys.argv[3], '$(id)'] else 'x')")
    meter = CommandMeter.parse(f"command:{shlex.quote(sys.executable)} {shlex.quote(str(script))} "
                               f"';' touch {shlex.quote(str(marker))} '$(id)'")
    assert meter.read() == (1.0, "W") and not marker.exists()


# --- sampling a known profile ----------------------------------------------------------------

def _model_for(tmp_path, seconds: float):
    """A stand-in for the runner: `seconds` long, with the meter's flag raised meanwhile."""
    flag = tmp_path / "running"

    def run_model():
        flag.touch()
        time.sleep(seconds)
        flag.unlink()
        return subprocess.CompletedProcess(["model"], 0, "", "run_us=1\n")
    return run_model


def test_joules_of_a_known_power_profile(tmp_path):
    """2 W idle, 5 W while 10 inferences run for 1 s: (5 - 2) W x 1 s / 10 = 300 mJ each, less
    what the samples at the edges blur (a meter answers in tens of milliseconds)."""
    meter = CommandMeter.parse(_meter(tmp_path))
    proc = meter.sample(300, 20_000, _model_for(tmp_path, 1.0))
    run = parse_sampler_output(proc.stdout, meter.channel)
    assert run.exit_status == 0 and run.active_seconds == pytest.approx(1.0, abs=0.05)
    assert set(run.idle.raw[:, 0]) == {2_000_000}
    result = joules_per_inference(meter.channel, run, 10)
    assert result["idle_power_w"] == pytest.approx(2.0)
    assert result["active_power_w"] == pytest.approx(5.0, rel=0.1)
    assert result["joules_per_inference"] == pytest.approx(3.0 * run.active_seconds / 10, rel=0.1)
    assert result["samples"]["idle"] >= 5 and result["samples"]["active"] >= 5


def test_joules_integrate_exactly_as_for_files(tmp_path):
    """The meter's samples, read back as a sysfs power file's microwatts, give the same
    joules to the last bit: one integration for both."""
    meter = CommandMeter.parse(_meter(tmp_path, idle="1.25", active="3.5"))
    proc = meter.sample(200, 20_000, _model_for(tmp_path, 0.3))
    as_meter = joules_per_inference(meter.channel, parse_sampler_output(proc.stdout, meter.channel), 7)
    file_channel = Channel("hwmon power1_input (uW)", "power", ("/sys/class/hwmon/hwmon3/power1_input",), 1e-6)
    as_file = joules_per_inference(file_channel, parse_sampler_output(proc.stdout, file_channel), 7)
    assert {k: v for k, v in as_meter.items() if k != "sensor"} == {k: v for k, v in as_file.items() if k != "sensor"}


def test_a_meter_printing_joules_is_a_counter(tmp_path):
    """A meter that prints accumulated energy: 4 J/s of this machine's monotonic clock is 4 W
    in both phases, so each inference costs ~0 J."""
    spec = _script(tmp_path, "import time; print(f'{4 * time.monotonic():.6f} J')")
    meter = CommandMeter.parse(spec)
    assert meter.channel.kind == "energy"
    proc = meter.sample(300, 20_000, _model_for(tmp_path, 0.4))
    result = joules_per_inference(meter.channel, parse_sampler_output(proc.stdout, meter.channel), 10)
    assert result["idle_power_w"] == pytest.approx(4.0, rel=0.05)
    assert result["active_power_w"] == pytest.approx(4.0, rel=0.05)


def test_a_meter_that_breaks_during_the_run_is_an_error(tmp_path):
    body = ("import os, sys\nflag = os.path.join(os.path.dirname(sys.argv[0]), 'running')\n"
            "sys.exit(5) if os.path.exists(flag) else print('2 W')")
    meter = CommandMeter.parse(_script(tmp_path, body))
    with pytest.raises(MoaEdgeError, match=r"the meter command failed \(5\)"):
        meter.sample(100, 20_000, _model_for(tmp_path, 0.3))


# --- whole runs ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("energy_command")
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", T.FLOAT, [256, 256])], [helper.make_tensor_value_info("y", T.FLOAT, [256, 256])],
        initializer=[numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), folder / "tiny.onnx")
    convert(folder / "tiny.onnx", folder / "project")
    return folder / "project"


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["host", "rpi5"])
def test_energy_of_a_built_model_with_a_command_meter(board_name, tiny_project, tmp_path):
    """4 W (+-0.1 W) throughout: idle and active mean power are 4 W, so each inference costs ~0 J."""
    board = require_board(board_name)
    result = measure_energy(tiny_project, board, _meter(tmp_path, idle="4", active="4", wobble=True),
                            iterations=1000 if board_name == "host" else 40, idle_ms=300, interval_us=10_000)
    assert result["idle_power_w"] == pytest.approx(4.0, rel=0.03)
    assert result["active_power_w"] == pytest.approx(4.0, rel=0.03)
    assert abs(result["joules_per_inference"]) <= 0.05 * 4.0 * result["mean_run_s"] + (result["ci95_joules"] or 0)
    assert result["sensor"].startswith("command meter `") and result["samples"]["active"] >= 2


def test_energy_verb_with_a_command_meter(tiny_project, tmp_path, capsys):
    import json
    from moa_edge.cli import main
    code = main(["energy", str(tiny_project), "--sensor", _meter(tmp_path, idle="3", active="3", wobble=True),
                 "--iterations", "1000", "--idle-ms", "200", "--interval-us", "20000", "--json", str(tmp_path / "e.json")])
    out = capsys.readouterr().out
    assert code == 0 and "mJ per inference" in out and "command meter" in out
    assert json.loads((tmp_path / "e.json").read_text())["active_power_w"] == pytest.approx(3.0, rel=0.05)
    assert main(["energy", str(tiny_project), "--sensor", "command:/nonexistent/meter"]) == 1
    assert "'/nonexistent/meter' was not found" in capsys.readouterr().err


def test_energy_verb_takes_a_board_file_and_its_sensor(tiny_project, tmp_path, capsys):
    """--board a TOML file: the board and its [power_sensor] (here a command meter) are that file's."""
    import json
    from moa_edge.cli import main
    path = board_file(tmp_path)
    text = path.read_text()
    none = 'kind = "none"   # no RAPL or hwmon on the build VMs'
    assert none in text
    meter = _meter(tmp_path, idle="3", active="3", wobble=True)
    path.write_text(text.replace(none, f'kind = "command"\nspec = {json.dumps(meter)}'))
    assert main(["energy", str(tiny_project), "--board", str(path), "--iterations", "300", "--idle-ms", "100",
                 "--interval-us", "10000", "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["board"] == "my board" and result["sensor"].startswith("command meter `")
    assert result["idle_power_w"] == pytest.approx(3.0, rel=0.05)
    assert capsys.readouterr().out.startswith("my board: ")
