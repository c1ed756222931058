"""`moa-edge report BUILD`: the page holds report.json's numbers and the validation and energy
results the real verbs wrote, its plots are embedded, and headless Chromium renders it."""
import base64
import json
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import pytest

from conftest import require_board

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADINGS = ["Memory plan over the schedule", "Per-op cost", "Attention blocks", "Validation", "Energy",
            "Inputs and outputs"]


def moa(*args):
    return subprocess.run([sys.executable, "-m", "moa_edge.cli", *map(str, args)], capture_output=True, text=True)


def _encoder_block(path: Path) -> Path:
    """Q, K, V projections, one causal ONNX Attention (3-D, 2 heads), output projection with bias,
    residual, LayerNormalization."""
    rng = np.random.default_rng(0)
    seq, heads, dim = 16, 2, 16

    def weight(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("MatMul", ["x", "wv"], ["v"]),
             helper.make_node("Attention", ["q", "k", "v"], ["a"], q_num_heads=heads, kv_num_heads=heads, is_causal=1),
             helper.make_node("MatMul", ["a", "wo"], ["o"]), helper.make_node("Add", ["o", "bo"], ["ob"]),
             helper.make_node("Add", ["ob", "x"], ["r"]),
             helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["y"], axis=-1)]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, dim])],
        [weight(n, (dim, dim)) for n in ("wq", "wk", "wv", "wo")] + [weight(n, (dim,)) for n in ("bo", "gamma", "beta")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), path)
    return path


class _FakePowerSensor(threading.Thread):
    """A hwmon power1_input (microwatts) alternating 3.9 / 4.1 W every millisecond."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.folder = root / "sys/class/hwmon/hwmon0"
        self.folder.mkdir(parents=True)
        self.stop = threading.Event()
        self._write(4_000_000)

    def _write(self, microwatts: int) -> None:
        tmp = self.folder / "power1_input.tmp"
        tmp.write_text(f"{microwatts}\n")
        tmp.replace(self.folder / "power1_input")

    def run(self):
        k = 0
        while not self.stop.is_set():
            self._write(3_900_000 if k % 2 else 4_100_000)
            k += 1
            time.sleep(0.001)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A converted project with the JSON results of `validate` and `energy` beside its report.json."""
    require_board("host")
    work = tmp_path_factory.mktemp("report")
    model = _encoder_block(work / "block.onnx")
    build = work / "build"
    for args in (("convert", model, "-o", build),
                 ("validate", model, "--board", "host", "--json", build / "validation.json")):
        r = moa(*args)
        assert r.returncode == 0, r.stderr
    sensor = _FakePowerSensor(work / "sysfs")
    sensor.start()
    try:
        r = moa("energy", build, "--sensor", "hwmon:/sys/class/hwmon/hwmon0", "--sysfs-root", work / "sysfs",
                "--iterations", "1000", "--idle-ms", "200", "--interval-us", "2000", "--json", build / "energy.json")
    finally:
        sensor.stop.set()
        sensor.join()
    assert r.returncode == 0, r.stderr
    r = moa("report", build, "--json", work / "written.json")
    assert r.returncode == 0, r.stderr
    return build


def _text(html: str) -> str:
    """The page's visible text, tags removed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]*"', "", html)))


def test_the_page_holds_the_projects_numbers(project):
    report = json.loads((project / "report.json").read_text())
    text = _text((project / "report.html").read_text())
    mem = report["memory"]
    assert f"Arena {mem['arena_bytes']} B" in text
    assert f"lower bound (most bytes live at one step) {mem['live_bytes_lower_bound']} B" in text
    assert f"reached at {mem['peak_step']}" in text
    for buf in mem["buffers"]:
        assert f"{buf['name']} {buf['pool'] or 'arena'} {buf['offset']} {buf['bytes']} " in text  # the buffer table's row
    steps = list(mem["per_op_live_bytes"])
    predicted = {o["node"]: o for o in report["predicted"]["ops"]}
    for k, op in enumerate(report["ops"]):
        p = predicted[op["node"]]
        row = f"{k} {op['node']} {op['op']} {mem['per_op_live_bytes'][op['node']]} {p['flops']} "
        assert row in text, row
        assert p["source"] in text
    assert steps == [op["node"] for op in report["ops"]]
    assert "estimate from shapes" in text and "cost model" in text
    (block,) = report["attention_blocks"]
    p = block["predicted"]
    unfused = report["predicted"]["attention_blocks"][0]["unfused_dram_bytes"]
    for row in (f"{block['node']} {block['pattern']}", f"causal, mask none {p['strategy']} {p['block_q']} x {p['block_k']} "
                f"{p['scratch_bytes']} ", f"{block['node']} {p['compulsory_bytes']} {p['dram_bytes']} {unfused} "
                f"{p['l1_fill_bytes']} {p['flops']} {p['exps']} "):
        assert row in text, row
    for name in block["absorbed_nodes"]:
        assert name in text


def test_the_page_holds_the_validation_and_energy_results(project):
    text = _text((project / "report.html").read_text())
    validation = json.loads((project / "validation.json").read_text())
    host = validation["boards"]["host"]
    assert f"host {host['max_abs_err']:.2e} {host['max_rel_err']:.2e} {host['max_ulp']} " in text
    assert f"From {project / 'validation.json'}: model " in text
    assert "overall pass" in text
    energy = json.loads((project / "energy.json").read_text())
    assert str(project / "energy.json") in text
    assert energy["sensor"] in text
    mj = energy["joules_per_inference"]
    shown = re.search(r"measured, per inference (-?[0-9.e+-]+) (J|mJ|uJ|nJ)", text)
    assert shown, text
    scale = {"J": 1, "mJ": 1e-3, "uJ": 1e-6, "nJ": 1e-9}[shown.group(2)]
    assert float(shown.group(1)) * scale == pytest.approx(mj, rel=1e-3, abs=1e-12)
    assert "predicted, whole model" in text


def test_the_plots_are_embedded_and_written_beside_the_page(project):
    html = (project / "report.html").read_text()
    written = json.loads((project.parent / "written.json").read_text())  # report --json
    assert written["html"] == str(project / "report.html") and written["validation"] and written["energy"]
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    pngs = sorted(project.glob("report-*.png"))
    assert {p.name for p in pngs} == {f"report-{k}.png" for k in ("memory", "arena", "cost", "attention", "energy")}
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(p.read_bytes() for p in pngs)
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    # self-contained: nothing else is fetched
    assert "<script" not in html and "href=" not in html and "@import" not in html and "url(" not in html
    assert re.findall(r'src="(?!data:)', html) == []


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        message = "chromium is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: skipping is not allowed)")
        pytest.skip(message)
    return path


def _headless(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                           *args], capture_output=True, text=True, timeout=120)


def test_chromium_renders_the_page(project, tmp_path):
    from PIL import Image
    url = (project / "report.html").resolve().as_uri()
    shot = tmp_path / "shot.png"
    r = _headless(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", url)
    assert shot.is_file(), r.stderr
    assert shot.read_bytes().startswith(PNG_MAGIC)
    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
        rgb = np.asarray(image.convert("RGB")).astype(int)
    white = (rgb > 245).all(axis=2)
    assert 0.01 < 1 - white.mean() < 0.9, "the screenshot is blank or a solid colour"
    # the embedded plots were decoded and drawn: matplotlib's first colour (#1f77b4) and the peak's red (#d62728)
    for colour in ((0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)):
        assert (np.abs(rgb - colour).sum(axis=2) < 12).sum() > 500, colour
    r = _headless(tmp_path, "--dump-dom", url)
    assert r.returncode == 0, r.stderr
    headings = re.findall(r"<h2>([^<]*)</h2>", r.stdout)
    assert headings == HEADINGS
    assert r.stdout.count("data:image/png;base64,") == 5


def test_a_project_without_results_or_prediction_still_has_a_page(project, tmp_path):
    """An older report.json (no per-op prediction, no buffer steps) and no validation or energy
    files: the page says what is missing and shows the rest."""
    build = tmp_path / "old"
    build.mkdir()
    report = json.loads((project / "report.json").read_text())
    report.pop("predicted")
    for b in report["memory"]["buffers"]:
        b.pop("first_step"), b.pop("last_step")
    (build / "report.json").write_text(json.dumps(report))
    r = moa("report", build, "-o", tmp_path / "page.html")
    assert r.returncode == 0, r.stderr
    text = _text((tmp_path / "page.html").read_text())
    assert "no per-op prediction" in text
    assert "No validation result" in text and "No energy measurement" in text
    assert f"{report['attention_blocks'][0]['node']} MoaAttention" in text
    assert sorted(p.name for p in tmp_path.glob("page-*.png")) == ["page-attention.png", "page-cost.png",
                                                                     "page-memory.png"]


def test_bad_input_is_one_clear_error(project, tmp_path):
    (tmp_path / "not.json").write_text("{")
    (tmp_path / "other.json").write_text('{"boards": {}}')
    for args, message in (((tmp_path / "missing",), "no such folder"),
                          ((tmp_path,), "report.json not found"),
                          ((project, "--energy", tmp_path / "not.json"), "not a readable JSON file"),
                          ((project, "--energy", tmp_path / "other.json"), "not the JSON of moa-edge energy"),
                          ((project, "--validation", tmp_path / "nope.json"), "no such file"),
                          ((project, "-o", tmp_path / "no" / "page.html"), "does not exist")):
        r = moa("report", *args)
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
