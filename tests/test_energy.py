"""Energy measurement (issue 7): sensor specs over a sysfs-shaped folder, the integration
with exactly known answers, its errors, and whole runs of a built model beside a fake
sensor that a test thread drives with a known power profile."""
import os
from pathlib import Path
import threading
import time

import numpy as np
import onnx
from onnx import TensorProto as T, helper, numpy_helper
import pytest

from conftest import require_board
from moa_edge.energy import measure_energy, parse_sensor
from moa_edge.energy.measure import Phase, SamplerRun, joules_per_inference, parse_sampler_output
from moa_edge.energy.sensors import Channel
from moa_edge.errors import MoaEdgeError
from moa_edge.pipeline import convert


def _write(path: Path, value: int) -> None:
    """As the kernel updates an attribute: readers see the old or the new integer, never half."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{value}\n")
    tmp.replace(path)


def _hwmon(root: Path, n: int = 1, power_uw=None, curr_ma=None, in_mv=None, label=None) -> Path:
    folder = root / "sys/class/hwmon/hwmon3"
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in ((f"power{n}_input", power_uw), (f"curr{n}_input", curr_ma), (f"in{n}_input", in_mv)):
        if value is not None:
            _write(folder / name, value)
    if label:
        (folder / f"in{n}_label").write_text(label + "\n")
    return folder


def _rapl(root: Path, energy_uj: int, max_uj: int) -> Path:
    folder = root / "sys/class/powercap/intel-rapl:0"
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "energy_uj", energy_uj)
    (folder / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return folder


# --- sensor specs --------------------------------------------------------------------------

def test_hwmon_power_attribute_is_microwatts(tmp_path):
    _hwmon(tmp_path, power_uw=2_500_000)
    channel = parse_sensor("hwmon:/sys/class/hwmon/hwmon3", tmp_path)
    assert channel.kind == "power" and channel.value((2_500_000,)) == pytest.approx(2.5)


def test_hwmon_current_times_voltage(tmp_path):
    """INA3221 channels have no power attribute: mA x mV = uW."""
    _hwmon(tmp_path, n=2, curr_ma=400, in_mv=5000)
    channel = parse_sensor("hwmon:/sys/class/hwmon/hwmon3:2", tmp_path)
    assert [Path(f).name for f in channel.files] == ["curr2_input", "in2_input"]
    assert channel.value((400, 5000)) == pytest.approx(2.0)


def test_a_rail_found_by_its_label(tmp_path):
    _hwmon(tmp_path, n=3, curr_ma=1200, in_mv=5080, label="VDD_IN")
    channel = parse_sensor("hwmon-label:VDD_IN", tmp_path)
    assert channel.value((1200, 5080)) == pytest.approx(6.096)


@pytest.mark.parametrize("spec, message", [
    ("hwmon:/sys/class/hwmon/hwmon9", "neither power1_input"),
    ("rapl:/sys/class/powercap/intel-rapl:7", "does not exist"),
    ("hwmon-label:VDD_GPU", "no channel labelled 'VDD_GPU'"),
    ("ina:/x", "unknown kind 'ina'"),
    ("hwmon", "expected KIND:WHERE"),
])
def test_a_missing_sensor_is_one_clear_error(spec, message, tmp_path):
    _hwmon(tmp_path, power_uw=1)
    with pytest.raises(MoaEdgeError, match=message):
        parse_sensor(spec, tmp_path)


def test_an_unreadable_sensor_is_one_clear_error(tmp_path):
    folder = _hwmon(tmp_path, power_uw=5)
    (folder / "power1_input").write_text("N/A\n")
    with pytest.raises(MoaEdgeError, match="does not hold an integer"):
        parse_sensor("hwmon:/sys/class/hwmon/hwmon3", tmp_path)


# --- integration with known answers --------------------------------------------------------

POWER = Channel("test power", "power", ("p",), 1e-6)
COUNTER = Channel("test counter", "energy", ("e",), 1e-6, wrap_joules=10.0)


def _phase(times, values) -> Phase:
    return Phase(np.asarray(times, float), np.asarray(values, np.int64).reshape(len(times), -1))


def test_power_samples_give_the_exact_joules():
    """2 W idle, 5 W while 100 inferences run for 2 s: (5 - 2) W x 2 s / 100 = 60 mJ each."""
    times = np.linspace(0, 1, 11)
    run = SamplerRun(_phase(times, [2_000_000] * 11), _phase(times * 2, [5_000_000] * 11), 2.0, 0)
    result = joules_per_inference(POWER, run, 100)
    assert result["idle_power_w"] == pytest.approx(2.0) and result["active_power_w"] == pytest.approx(5.0)
    assert result["joules_per_inference"] == pytest.approx(0.06)
    assert result["ci95_joules"] == pytest.approx(0.0)


def test_a_ramp_is_integrated_by_trapezoids():
    """Power rising linearly 1 -> 3 W over 1 s is 2 J exactly: mean 2 W."""
    times = np.linspace(0, 1, 5)
    run = SamplerRun(_phase(times, [1_000_000] * 5), _phase(times, np.linspace(1e6, 3e6, 5).astype(int)), 1.0, 0)
    result = joules_per_inference(POWER, run, 10)
    assert result["active_power_w"] == pytest.approx(2.0)
    assert result["joules_per_inference"] == pytest.approx(0.1)
    assert result["ci95_joules"] > 0  # the windows' mean powers differ


def test_an_energy_counter_that_wraps():
    """4 W on a counter that wraps at 10 J: 9.2 -> 1.2 J is 2 J, not -8 J."""
    times = np.arange(6) * 0.5
    idle = _phase(times, [0, 1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000])          # 2 W
    active = _phase(times, [5_200_000, 7_200_000, 9_200_000, 1_200_000, 3_200_000, 5_200_000])  # 4 W
    result = joules_per_inference(COUNTER, SamplerRun(idle, active, 2.5, 0), 50)
    assert result["active_power_w"] == pytest.approx(4.0) and result["idle_power_w"] == pytest.approx(2.0)
    assert result["joules_per_inference"] == pytest.approx(2.0 * 2.5 / 50)


def test_a_counter_that_stops_is_an_error():
    times = np.arange(5) * 0.1
    run = SamplerRun(_phase(times, [0, 10, 20, 30, 40]), _phase(times, [50] * 5), 0.4, 0)
    with pytest.raises(MoaEdgeError, match="did not change"):
        joules_per_inference(COUNTER, run, 10)


def test_a_power_reading_that_never_changes_is_an_error():
    times = np.arange(6) * 0.1
    run = SamplerRun(_phase(times, [7] * 6), _phase(times, [7] * 6), 0.5, 0)
    with pytest.raises(MoaEdgeError, match="did not change"):
        joules_per_inference(POWER, run, 10)


def test_a_run_shorter_than_one_sample_is_an_error():
    run = SamplerRun(_phase([0, 0.1], [1, 2]), _phase([0.2], [3]), 0.001, 0)
    with pytest.raises(MoaEdgeError, match="shorter than one sampling interval.*--iterations"):
        joules_per_inference(POWER, run, 1)


def test_an_unreadable_sample_names_the_file():
    text = "sample 0 1000 5\nsample 1 2000 -\nactive_ns 5\nexit 0\n"
    with pytest.raises(MoaEdgeError, match="p could not be read"):
        parse_sampler_output(text, POWER)


# --- whole runs beside a fake sensor --------------------------------------------------------

class Profile(threading.Thread):
    """Drives a fake sensor file: mean 4 W, alternating 3.9 and 4.1 W every millisecond as a
    power reading, or as a microjoule counter growing at that rate (wrapping at `wrap_uj`)."""

    def __init__(self, path: Path, counter: bool, wrap_uj: int = 0):
        super().__init__(daemon=True)
        self.path, self.counter, self.wrap_uj = path, counter, wrap_uj
        self.stop = threading.Event()

    def run(self):
        energy_uj, last, k = 0.0, time.monotonic(), 0
        while not self.stop.is_set():
            now = time.monotonic()
            watts = 3.9 if k % 2 else 4.1
            energy_uj += 4.0 * (now - last) * 1e6
            last, k = now, k + 1
            _write(self.path, int(energy_uj) % self.wrap_uj if self.counter else int(watts * 1e6))
            time.sleep(0.001)


RUNNERS = {"model_main", "qemu-aarch64", "qemu-riscv64"}


def _runner_alive() -> bool:
    """Whether a model runner (native or under qemu-user) started by this test process is running.
    Only this process's descendants count: other pytest workers and other users of the machine
    run their own runners at the same time."""
    parent, runners = {}, []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process has ended
        comm, fields = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        if comm in RUNNERS:
            runners.append(pid)
    me = os.getpid()
    for pid in runners:
        while pid > 1 and pid != me:
            pid = parent.get(pid, 0)
        if pid == me:
            return True
    return False


class LoadProfile(threading.Thread):
    """A power monitor that reads 2 W while no runner runs and 5 W while one does: each
    inference then costs 3 W times its run time, a figure known in advance."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            _write(self.path, 5_000_000 if _runner_alive() else 2_000_000)
            time.sleep(0.001)


def test_energy_of_a_built_model_under_load_is_the_power_step_times_the_run_time(tiny_project, tmp_path):
    board = require_board("host")
    profile = LoadProfile(_hwmon(tmp_path, power_uw=2_000_000) / "power1_input")
    profile.start()
    try:
        result = measure_energy(tiny_project, board, "hwmon:/sys/class/hwmon/hwmon3", sysfs_root=tmp_path,
                                iterations=1000, idle_ms=300, interval_us=5000)
    finally:
        profile.stop.set()
        profile.join()
    assert result["idle_power_w"] == pytest.approx(2.0, rel=0.02)
    assert result["active_power_w"] == pytest.approx(5.0, rel=0.05)
    assert result["joules_per_inference"] == pytest.approx(3.0 * result["mean_run_s"], rel=0.1)


def _tiny_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", T.FLOAT, [256, 256])], [helper.make_tensor_value_info("y", T.FLOAT, [256, 256])],
        initializer=[numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("energy")
    convert(_tiny_model(folder / "tiny.onnx"), folder / "project")
    return folder / "project"


@pytest.mark.board
@pytest.mark.parametrize("board_name, sensor", [("host", "hwmon"), ("host", "rapl"), ("rpi4", "hwmon")])
def test_energy_of_a_built_model_beside_a_known_profile(board_name, sensor, tiny_project, tmp_path):
    """A flat 4 W profile: idle and active mean power are 4 W, so each inference costs ~0 J;
    the counter wraps several times during the run."""
    board = require_board(board_name)
    if sensor == "hwmon":
        path, spec = _hwmon(tmp_path, power_uw=4_000_000) / "power1_input", "hwmon:/sys/class/hwmon/hwmon3"
        profile = Profile(path, counter=False)
    else:
        path, spec = _rapl(tmp_path, 0, 1_000_000) / "energy_uj", "rapl:/sys/class/powercap/intel-rapl:0"
        # wraps every 250 ms at 4 W: several times in the run, yet a sampler stalled for a while
        # by a busy machine (the other pytest worker) still sees each wrap
        profile = Profile(path, counter=True, wrap_uj=1_000_000)
    profile.start()
    try:
        # ~0.2 s of runs (a 256 x 256 product: ~0.2 ms on the host, ~5 ms under qemu)
        result = measure_energy(tiny_project, board, spec, sysfs_root=tmp_path, iterations=1000 if board_name == "host"
                                else 40, idle_ms=600 if sensor == "rapl" else 300, interval_us=5000)
    finally:
        profile.stop.set()
        profile.join()
    assert result["idle_power_w"] == pytest.approx(4.0, rel=0.05)
    assert result["active_power_w"] == pytest.approx(4.0, rel=0.05)
    assert abs(result["joules_per_inference"]) <= 0.05 * 4.0 * result["mean_run_s"] + (result["ci95_joules"] or 0)
    assert result["samples"]["idle"] >= 20 and result["samples"]["active"] >= 2


def test_no_sensor_is_one_clear_error(tiny_project):
    with pytest.raises(MoaEdgeError, match="no power sensor; give one with --sensor"):
        measure_energy(tiny_project, require_board("host"))


def test_energy_verb(tiny_project, tmp_path, capsys):
    """`moa-edge energy` prints joules per inference and the interval, and writes the JSON."""
    import json
    from moa_edge.cli import main
    profile = Profile(_hwmon(tmp_path, power_uw=4_000_000) / "power1_input", counter=False)
    profile.start()
    try:
        code = main(["energy", str(tiny_project), "--sensor", "hwmon:/sys/class/hwmon/hwmon3", "--sysfs-root",
                     str(tmp_path), "--iterations", "1000", "--idle-ms", "300", "--interval-us", "5000",
                     "--json", str(tmp_path / "e.json")])
    finally:
        profile.stop.set()
        profile.join()
    out = capsys.readouterr().out
    assert code == 0 and "mJ per inference" in out and "W running" in out
    assert json.loads((tmp_path / "e.json").read_text())["active_power_w"] == pytest.approx(4.0, rel=0.05)
    assert main(["energy", str(tiny_project), "--board", "rpi4"]) == 1
    assert "has no power sensor" in capsys.readouterr().err


# --- the prediction beside the measurement ---------------------------------------------------

def test_prediction_counts_gemm_flops_and_weights_from_the_shapes(tiny_project):
    """The tiny model is one 256 x 256 x 256 product with a 256 x 256 weight: 2 M N K flops,
    the weight read once from DRAM, X and Y moved once, at the host's constants."""
    import json
    from moa_edge.target import load_board
    predicted = json.loads((tiny_project / "report.json").read_text())["predicted"]
    (op,) = predicted["ops"]
    assert op["flops"] == 2 * 256 ** 3
    e = load_board("host").energy
    weights = 256 * 256 * 4  # packed panels of 16 columns: no padding at N = 256
    expected = 2 * 256 ** 3 * e["pj_per_flop"] + weights * e["pj_per_byte_dram"] + 2 * 256 * 256 * 4 * e["pj_per_byte_l2"]
    assert op["weight_bytes"] == weights
    assert predicted["energy_j"] == pytest.approx(expected * 1e-12)


def test_attention_prediction_sets_the_unfused_traffic_beside_the_fused(tmp_path):
    """At 8 heads x 2048 x 2048 the materialised scores (128 MiB) exceed any cache: the
    unfused form moves them four times more than the fused kernel's compulsory traffic."""
    import torch
    import json

    class Sdpa(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    q = torch.zeros(1, 8, 2048, 64)
    torch.onnx.export(Sdpa(), (q, q, q), tmp_path / "sdpa.onnx", input_names=["q", "k", "v"], opset_version=18,
                      dynamo=True)
    report = convert(tmp_path / "sdpa.onnx", tmp_path / "p")
    (block,) = json.loads((tmp_path / "p" / "report.json").read_text())["predicted"]["attention_blocks"]
    scores = 8 * 2048 * 2048 * 4
    assert block["unfused_dram_bytes"] >= 4 * scores > 10 * block["dram_bytes"]
    assert block["energy_j"] == pytest.approx(report["attention_blocks"][0]["predicted"]["energy_uj"] * 1e-6)
