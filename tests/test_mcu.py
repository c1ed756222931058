"""Microcontrollers (issue 16): bare-metal builds with arm-none-eabi-gcc and picolibc, run under
qemu-system-arm as the board's core (M55, M33, M7), their files over semihosting; each build held
to the part's memories by the linker scripts convert writes, and a model that does not fit refused
at convert or at link time, naming the memory."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import MCU_BOARDS, one_error, require_board, run_cli
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.mcu_bench import section_sizes
from moa_edge.harness.runner import check_inputs, project_io, run
from moa_edge.pipeline import convert
from moa_edge.target import load_board, symbol_lister


class TinyEncoder(torch.nn.Module):
    """A transformer encoder sized for an MCU: 2 layers, width 64, 4 heads, 32 tokens."""

    def __init__(self):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x):
        return self.encoder(x)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The encoder exported by torch, an input, and its float64 output from PyTorch."""
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    x = torch.randn(1, 32, 64)
    path = tmp_path_factory.mktemp("mcu") / "tiny.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    with torch.no_grad():
        expected = model.double()(x.double()).numpy()
    return path, x.numpy(), expected


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A vision transformer on 32 x 32 images (Hugging Face's ViT: patch 4, so 65 tokens; width
    64, 2 layers, 10 classes), exported by torch, with its float64 logits."""
    from transformers import ViTConfig, ViTForImageClassification
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, num_labels=10, attn_implementation="eager")
    model = ViTForImageClassification(config).eval()
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path_factory.mktemp("mcu-vit") / "vit.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    with torch.no_grad():
        expected = model.double()(x.double()).logits.numpy()
    return path, x.numpy(), expected


@pytest.mark.board
@pytest.mark.parametrize("model", ["tiny", "tiny_vit"])
@pytest.mark.parametrize("board_name", MCU_BOARDS)
def test_a_tiny_transformer_runs_on_the_mcu_within_1e5_of_pytorch_float64(request, model, board_name, tmp_path):
    board = require_board(board_name)
    path, x, expected = request.getfixturevalue(model)
    convert(path, tmp_path / "p", board=board)
    binary = build(tmp_path / "p", board)
    io = project_io(tmp_path / "p")
    outputs, run_us = run(binary, board, io, check_inputs(io, {"x": x}, "test"))
    assert np.abs(outputs["y"] - expected).max() <= 1e-5
    assert np.isnan(run_us)  # bare metal has no clock: no time is made up


@pytest.mark.board
@pytest.mark.parametrize("board_name", MCU_BOARDS)
def test_the_device_script_puts_code_weights_and_data_in_the_parts_memories(tiny, board_name, tmp_path):
    """Built with memory.ld (the part's map, as a user flashing the board would), every section
    lies inside the memory the board names for it; under the emulator the same sizes hold."""
    board = require_board(board_name)
    convert(tiny[0], tmp_path / "p", board=board)
    flags = board.toolchain
    subprocess.run([sys.executable, "-m", "SCons", "-Q", "-C", str(tmp_path / "p"), f"CC={flags['cc'][0]}",
                    f"CFLAGS={' '.join(flags['cflags'])}", f"LINKFLAGS={' '.join(flags['ldflags'])} -T memory.ld",
                    "VARIANT=device"], check=True, capture_output=True)
    sections = {name: (address, size) for name, address, size in
                section_sizes(tmp_path / "p/build/device/model_main", board)}

    def inside(name, role):
        memory = board.memory_for(role)
        address, size = sections[name]
        return memory.base <= address and address + size <= memory.base + memory.size

    assert inside(".text", "code") and inside(".bss", "data") and inside(".stack", "data")
    weights = ".moa_weights" if board.placement["weights"] != board.placement["code"] else ".text"
    assert inside(weights, "weights")
    if weights == ".moa_weights":
        assert sections[".moa_weights"][1] >= 260_000  # the encoder's 268 kB of weights, out of the code's memory
    for pool in json.loads((tmp_path / "p/report.json").read_text())["memory"]["pools"]:  # the fast memories' share
        memory = next(m for m in board.memories if m.name == pool["memory"])
        address, size = sections[f".moa_pool_{pool['name']}"]
        assert memory.base <= address and address + size <= memory.base + memory.size and size >= pool["bytes"]
    script = (tmp_path / "p/memory-qemu.ld").read_text()
    assert f"__ram_size = {board.memory_for('data').size:#x};" in script
    _check_vector_table(tmp_path / "p/build/device/model_main", board, sections)


RP2350_IMAGE_DEF = (0xFFFFDED3, 0x10210142, 0x000001FF, 0x00000000, 0xAB123579)  # datasheet 5.9.5.1


def _check_vector_table(binary, board, sections):
    """Where the core reads it at reset (Arm ARM B1.5.3): at the code memory's base, the initial
    stack pointer (the data memory's top), the reset handler (startup.c's, a Thumb address in
    the code memory); on the RP2350 the boot ROM's IMAGE_DEF right after the 16 words, inside
    the first 4 KiB it searches."""
    code, data = board.memory_for("code"), board.memory_for("data")
    assert sections[".init"][0] == code.base
    tool = board.compiler().replace("gcc", "")
    raw = subprocess.run([tool + "objcopy", "-O", "binary", "-j", ".init", str(binary), "/dev/stdout"],
                         capture_output=True, check=True).stdout
    words = np.frombuffer(raw[:len(raw) // 4 * 4], "<u4")
    symbols = dict(line.split()[::-2] for line in subprocess.run(
        [tool + "nm", str(binary)], capture_output=True, text=True, check=True).stdout.splitlines() if " " in line)
    assert words[0] == data.base + data.size
    assert words[1] == int(symbols["moa_reset"], 16) | 1 and code.base <= words[1] < code.base + code.size
    if board.name == "pico2":
        assert tuple(words[16:21]) == RP2350_IMAGE_DEF


def _matmul_model(path, rows: int, k: int, n: int):
    """y = x W with a float32 weight of k x n."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.full((k, n), 0.5, np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_weights_past_their_memory_are_refused_at_convert(tmp_path):
    """Weights larger than alif-e7's 5.5 MiB MRAM (QEMU's QSPI there holds 8 MiB): one error
    naming the memory and the shortfall, no project left."""
    _matmul_model(tmp_path / "m.onnx", 2, 1536, 1024)  # 6 MiB of weights
    proc = run_cli("convert", tmp_path / "m.onnx", "-o", tmp_path / "p", "--board", "alif-e7")
    one_error(proc, "does not fit board alif-e7", "memory 'mram' (flash, 5767168 bytes)",
              f"{1536 * 1024 * 4 - 5767168} bytes short")
    assert not (tmp_path / "p").exists()


def test_data_past_the_data_memory_is_refused_at_convert(tmp_path):
    """pico2's 512 KiB SRAM holds the stack, the arena, the inputs and the outputs: a product
    whose input and output take 600 kB does not fit (QEMU's machine has 2 MiB there)."""
    _matmul_model(tmp_path / "m.onnx", 1200, 64, 64)
    proc = run_cli("convert", tmp_path / "m.onnx", "-o", tmp_path / "p", "--board", "pico2")
    one_error(proc, "does not fit board pico2", "memory 'sram' (sram, 524288 bytes)", "stack 16384")
    assert not (tmp_path / "p").exists()


@pytest.mark.board
def test_code_and_weights_past_the_flash_fail_at_link_time_naming_it(tmp_path):
    """pico2's flash holds the code and the weights: weights that fit alone pass convert, and
    the linker script then refuses the program the part could not hold."""
    board = require_board("pico2")
    flash = board.memory_for("code").size
    _matmul_model(tmp_path / "m.onnx", 1, 1024, (flash - 2048) // 4096)  # the weights leave 2 kB of code room
    convert(tmp_path / "m.onnx", tmp_path / "p", board=board)
    with pytest.raises(MoaEdgeError, match=r"region `flash' overflowed by \d+ bytes"):
        build(tmp_path / "p", board)


@pytest.mark.board
def test_a_failing_run_reports_the_programs_exit_status(tiny, tmp_path):
    """The runner's own error and exit status come back through semihosting and qemu's exit status."""
    board = require_board("pico2")
    convert(tiny[0], tmp_path / "p", board=board)
    binary = build(tmp_path / "p", board)
    (tmp_path / "x.bin").write_bytes(b"\0" * 12)  # the input is 8192 bytes
    proc = subprocess.run(board.command(str(binary), [str(tmp_path / "x.bin"), str(tmp_path / "y.bin")]),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "expected exactly 8192 bytes" in proc.stdout + proc.stderr
    assert not (tmp_path / "y.bin").exists()


def test_a_project_for_another_board_is_refused(tiny, tmp_path):
    convert(tiny[0], tmp_path / "p")  # for the host
    with pytest.raises(MoaEdgeError, match="converted for board host, not for bare-metal board pico2"):
        build(tmp_path / "p", load_board("pico2"))


def test_a_generation_build_for_a_bare_metal_board_is_refused(tiny, tmp_path):
    proc = run_cli("convert", tiny[0], "-o", tmp_path / "p", "--board", "pico2", "--max-context", "64")
    one_error(proc, "board pico2 is bare metal")
    assert not (tmp_path / "p").exists()


@pytest.mark.board
def test_qemu_counts_the_instructions_of_one_inference(tiny, tmp_path):
    """Between the runner's profile hooks: at least one instruction per multiply-add of the
    encoder (the M33 has no vector unit), and less than the whole run (which reads and writes
    its files over semihosting)."""
    board = require_board("pico2")
    path, x, _ = tiny
    convert(path, tmp_path / "p", board=board)
    binary = build(tmp_path / "p", board)
    io = project_io(tmp_path / "p")
    stats = {}
    run(binary, board, io, check_inputs(io, {"x": x}, "test"), stats=stats)
    tokens, width, hidden, layers = 32, 64, 128, 2
    macs = layers * (tokens * width * 4 * width + 2 * tokens * width * hidden + 2 * tokens * tokens * width)
    assert stats["inferences"] == 1
    assert macs <= stats["instructions_per_inference"] < stats["instructions"]


@pytest.mark.board
def test_a_definition_of_the_profile_hooks_replaces_the_weak_ones(tiny, tmp_path):
    """An external meter's trigger: the user's moa_profile_begin/end, linked beside the runner,
    run around the inference in place of the empty defaults."""
    board = require_board("pico2")
    convert(tiny[0], tmp_path / "p", board=board)
    build(tmp_path / "p", board)
    (tmp_path / "hooks.c").write_text('#include <stdio.h>\nvoid moa_profile_begin(void) { fputs("gpio high\\n", stdout); }\n'
                                      'void moa_profile_end(void) { fputs("gpio low\\n", stdout); }\n')
    objects = sorted(str(o) for o in (tmp_path / "p/build/pico2/obj").rglob("*.o"))
    cc, flags = board.toolchain["cc"][0], board.toolchain
    elf = tmp_path / "metered.elf"
    subprocess.run([cc, *flags["cflags"], "-c", str(tmp_path / "hooks.c"), "-o", str(tmp_path / "hooks.o")], check=True)
    subprocess.run([cc, *flags["ldflags"], "-T", str(tmp_path / "p/memory-qemu.ld"), *objects, str(tmp_path / "hooks.o"),
                    "-lm", "-o", str(elf)], check=True, cwd=tmp_path / "p")
    tiny[1].tofile(tmp_path / "x.bin")
    proc = subprocess.run(board.command(str(elf), [str(tmp_path / "x.bin"), str(tmp_path / "y.bin")]),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).count("gpio high") == 1 and (proc.stdout + proc.stderr).count("gpio low") == 1


def test_energy_on_bare_metal_takes_an_external_meter(tiny, tmp_path):
    convert(tiny[0], tmp_path / "p", board=load_board("pico2"))
    proc = run_cli("energy", tmp_path / "p", "--board", "pico2", "--sensor", "rapl:/sys/class/powercap/intel-rapl:0")
    one_error(proc, "board pico2 is bare metal: measure it with an external meter, --sensor command:CMD")


DEVICE_RUNNER = """#!/bin/sh
# A stand-in for a debug probe: the part draws its active current from the moment the program
# starts (the flag the fake meter reads) until it exits; the program runs as the M55's kernel,
# its arguments on the semihosting command line (picolibc's crt0 puts a name of its own first).
elf="$1"; shift
echo "$elf $*" > "{log}"
touch "{flag}"
args=$(for a in "$@"; do printf ',arg=%s' "$a"; done)
qemu-system-arm -machine mps3-an547 -cpu cortex-m55 -nographic -monitor none -serial none \\
    -semihosting-config "enable=on,target=native$args" -kernel "$elf"
status=$?
rm -f "{flag}"
exit $status
"""


@pytest.mark.board
def test_energy_of_an_mcu_with_a_command_meter_and_a_device_runner(tiny, tmp_path):
    """The meter reads 2 W while the part idles and 5 W while the program runs on it: each
    inference costs 3 W times its share of the run. The runner is given the ELF and the runner's
    files, as a probe's script would be, and the runs' count is built into the program."""
    board = require_board("alif-e7")
    from test_energy_command import METER
    convert(tiny[0], tmp_path / "p", board=board)
    (tmp_path / "meter.py").write_text(METER)
    flag, log = tmp_path / "running", tmp_path / "runner.log"
    runner = tmp_path / "probe-run"
    runner.write_text(DEVICE_RUNNER.format(flag=flag, log=log))
    runner.chmod(0o755)
    meter = f"command:{sys.executable} -S {tmp_path / 'meter.py'} {flag} 2 5 W wobble"
    proc = run_cli("energy", tmp_path / "p", "--board", "alif-e7", "--sensor", meter, "--device-runner", str(runner),
                   "--iterations", "100", "--idle-ms", "300", "--interval-us", "20000", "--json", tmp_path / "e.json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["idle_power_w"] == pytest.approx(2.0, abs=0.15)
    assert result["active_power_w"] == pytest.approx(5.0, abs=0.3)  # the samples before the flag is set
    assert result["joules_per_inference"] == pytest.approx(3.0 * result["mean_run_s"], rel=0.15)
    elf, *files = log.read_text().split()
    assert elf.endswith("alif-e7-energy/model_main") and len(files) == 2  # x, then y
    assert result["device_runner"] == str(runner)


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["alif-e7", "pico2"])
def test_int8_weights_and_activations_run_on_the_mcu_as_on_the_host(tiny, board_name, tmp_path):
    """The integer GEMM's Helium tile (VMLADAVA over gathered columns) on the M55, its DSP tile
    (SXTB16 + SMLAD) on the M33: the encoder with int8 weights and activations gives the host
    build's outputs (the same quantized model, whose integer sums are exact) within float32
    rounding, and stays near the float model."""
    from moa_edge.passes import parse_weights
    path, x, expected = tiny
    outputs = {}
    for name in ("host", board_name):
        board = require_board(name)
        convert(path, tmp_path / name, board=board, weights=parse_weights("int8"), activations="int8")
        io = project_io(tmp_path / name)
        outputs[name] = run(build(tmp_path / name, board), board, io, check_inputs(io, {"x": x}, "test"))[0]["y"]
    assert np.abs(outputs[board_name] - outputs["host"]).max() <= 1e-5
    assert np.abs(outputs[board_name] - expected).max() < 0.05  # int8's own error, not a broken kernel's


def test_the_m7s_intermediates_go_to_its_dtcm_first(tiny, tmp_path):
    """nucleo-h743zi's data memory is the AXI SRAM; its DTCM (a TCM: no wait states, no cache) is
    the first pool: every intermediate of the encoder fits there, the kernel scratch among them,
    and model.h states the pool's bytes and section."""
    convert(tiny[0], tmp_path / "p", board=load_board("nucleo-h743zi"))
    memory = json.loads((tmp_path / "p/report.json").read_text())["memory"]
    assert [p["name"] for p in memory["pools"]] == ["dtcm"] and memory["arena_bytes"] == 0
    assert all(b["pool"] == "dtcm" for b in memory["buffers"]) and any(b["name"].startswith("scratch:")
                                                                       for b in memory["buffers"])
    header = (tmp_path / "p/model.h").read_text()
    assert f"#define MODEL_POOL_DTCM_BYTES {memory['pools'][0]['bytes']}u" in header
    assert '#define MODEL_POOL_DTCM_SECTION ".bss.moa_pool.dtcm"' in header


def test_intermediates_past_every_pool_are_refused_naming_them(tiny, tmp_path):
    """pico2 with its SRAM capped at 48 KiB (--pool sram:49152): the stack, the inputs and
    outputs and the C library leave too little for the encoder's intermediates, and its two 4 KiB
    scratch banks cannot take the rest."""
    proc = run_cli("convert", tiny[0], "-o", tmp_path / "p", "--board", "pico2", "--pool", "sram:49152")
    one_error(proc, "do not fit the memory pools", "the arena (memory sram): 8192 of 8192 bytes free",
              "scratch_x (memory scratch_x): 4096 of 4096", "16384 bytes short")  # a 24576-byte activation
    assert not (tmp_path / "p").exists()
    one_error(run_cli("validate", tiny[0], "--board", "pico2", "--pool", "sram:49152"), "16384 bytes short")


@pytest.mark.parametrize("pool, message", [
    ("fast", "give NAME:SIZE[:SECTION]"), ("Fast:100", "give NAME:SIZE[:SECTION]"), ("fast:64K", "no units"),
    ("fast:0", "positive number of bytes"), ("fast:100:.a;b", "SECTION is a section name"),
    ("fast:100:\"x", "SECTION is a section name")])
def test_a_bad_pool_is_one_clear_error(tiny, tmp_path, pool, message):
    proc = run_cli("convert", tiny[0], "-o", tmp_path / "p", "--pool", pool)
    one_error(proc, "--pool", message)
    assert not (tmp_path / "p").exists()


def test_a_bare_metal_pool_names_one_of_the_boards_memories(tiny, tmp_path):
    for pool, message in (("sdram:1000", "its pools are its data memories (sram, scratch_x, scratch_y)"),
                          ("sram:1000:.fast", "SIZE <= 524288"), ("sram:600000", "SIZE <= 524288")):
        one_error(run_cli("convert", tiny[0], "-o", tmp_path / "p", "--board", "pico2", "--pool", pool), message)


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["host", "k230"])
def test_a_linux_pool_takes_the_hottest_intermediates_and_changes_no_bit(tiny, board_name, tmp_path):
    """--pool fast:16384:.fastmem on a Linux board (the host, and the K230 under qemu-user, whose
    SRAM such a region would name): the kernel scratch and the most-read activations that fit
    16 KiB go to the pool, which the runner declares in section .fastmem; the outputs are
    bitwise those of the build without it."""
    board = require_board(board_name)
    path, x, _ = tiny
    outputs = {}
    for name, pools in (("plain", []), ("pooled", ["fast:16384:.fastmem"])):
        proc = run_cli("convert", path, "-o", tmp_path / name, "--board", board_name,
                       *(a for p in pools for a in ("--pool", p)))
        assert proc.returncode == 0, proc.stderr
        io = project_io(tmp_path / name)
        outputs[name] = run(build(tmp_path / name, board), board, io, check_inputs(io, {"x": x}, "test"))[0]["y"]
    memory = json.loads((tmp_path / "pooled/report.json").read_text())["memory"]
    placed = [b for b in memory["buffers"] if b["pool"] == "fast"]
    assert memory["pools"] == [{"name": "fast", "bytes": memory["pools"][0]["bytes"], "section": ".fastmem", "kind": "",
                                "memory": ""}]
    assert 0 < memory["pools"][0]["bytes"] <= 16384 and any(b["name"].startswith("scratch:") for b in placed)
    assert '#define MODEL_POOL_FAST_SECTION ".fastmem"' in (tmp_path / "pooled/model.h").read_text()
    objdump = symbol_lister(board)[:-len("nm")] + "objdump"  # the board's binutils: nm's sibling
    sections = subprocess.run([objdump, "-t", str(tmp_path / f"pooled/build/{board_name}/model_main")],
                              capture_output=True, text=True, check=True).stdout
    assert re.search(r"\.fastmem\s+[0-9a-f]+\s+fast_pool", sections), sections[:2000]
    assert np.array_equal(outputs["plain"], outputs["pooled"])


@pytest.mark.board
def test_bench_model_on_an_mcu_reports_instructions_and_each_memorys_bytes(tiny, tmp_path):
    """What the linked program takes in each of pico2's memories, from its ELF: the flash holds the
    code and the weights, the SRAM the arena, the inputs and outputs and the stack, all within
    the part's sizes and at least what convert planned."""
    board = require_board("pico2")
    proc = run_cli("bench", "model", tiny[0], "--board", "pico2", "--json", tmp_path / "b.json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    planned, memories = result["planned"], result["memories"]
    assert 0 < result["instructions_per_inference"] < result["instructions_whole_run"]
    assert memories["flash"]["used"] >= planned["weights_bytes"]
    assert memories["sram"]["used"] >= planned["arena_bytes"] + planned["io_bytes"] + planned["stack_bytes"]
    assert all(m["used"] <= m["size"] for m in memories.values())
    assert f"{result['instructions_per_inference']:,} instructions per inference" in proc.stdout
    assert board.name in proc.stdout


FAKE_PPK2 = '''
class PPK2_API:
    """A stand-in for ppk2-api's class: each read 25 samples of 1500 uA and 25 of 500 uA."""

    @staticmethod
    def list_devices():
        return [("/dev/ttyFAKE", "C0FFEE")]

    def __init__(self, port, **options):
        assert port == "/dev/ttyFAKE" and options.get("exclusive")
        self.measuring = False

    def get_modifiers(self):
        pass

    def use_ampere_meter(self):
        pass

    def start_measuring(self):
        self.measuring = True

    def stop_measuring(self):
        self.measuring = False

    def get_data(self):
        assert self.measuring
        return b"raw"

    def get_samples(self, data):
        return [1500.0, 500.0] * 25, [0] * 50
'''


def test_the_ppk2_meter_script_prints_the_mean_current_times_the_supply(tmp_path):
    """examples/meters/ppk2_power.py against a stand-in for its ppk2-api module: a mean of
    1000 uA at 3.3 V is 3.3 mW, a reading the energy verb's command meter takes."""
    from moa_edge import PROJECT_ROOT
    from moa_edge.energy.sensors import CommandMeter
    (tmp_path / "ppk2_api").mkdir()
    (tmp_path / "ppk2_api/__init__.py").write_text("")
    (tmp_path / "ppk2_api/ppk2_api.py").write_text(FAKE_PPK2)
    script = PROJECT_ROOT / "examples/meters/ppk2_power.py"
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(script), "--volts", "3.3", "--window-ms", "5"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    value, unit = proc.stdout.split()
    assert unit == "mW" and float(value) == pytest.approx(3.3, rel=1e-6)
    meter = CommandMeter.parse(f"command:env PYTHONPATH={tmp_path} {sys.executable} {script} --volts 3.3 --window-ms 5")
    assert meter.kind == "power" and meter.read()[1] == "mW"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "--volts" in proc.stderr
