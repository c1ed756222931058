"""Microcontrollers (issue 16): bare-metal builds with arm-none-eabi-gcc and picolibc, run under
qemu-system-arm as the board's core (M55, M33, M7), their files over semihosting; each build held
to the part's memories by the linker scripts convert writes, and a model that does not fit refused
at convert or at link time, naming the memory."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import MCU_BOARDS, one_error, require_board, run_cli
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.runner import check_inputs, project_io, run
from moa_edge.pipeline import convert
from moa_edge.target import load_board


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


def _readelf_sections(readelf: str, elf) -> dict[str, tuple[int, int]]:
    """name -> (address, size) of the allocated sections."""
    out = subprocess.run([readelf, "-SW", str(elf)], capture_output=True, text=True, check=True).stdout
    sections = {}
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]{8})\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\s+(\S*A\S*)", line)
        if m:
            sections[m.group(1)] = (int(m.group(2), 16), int(m.group(3), 16))
    return sections


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
    sections = _readelf_sections(flags["cc"][0].replace("gcc", "readelf"), tmp_path / "p/build/device/model_main")

    def inside(name, role):
        memory = board.memory_for(role)
        address, size = sections[name]
        return memory.base <= address and address + size <= memory.base + memory.size

    assert inside(".text", "code") and inside(".bss", "data") and inside(".stack", "data")
    weights = ".moa_weights" if board.placement["weights"] != board.placement["code"] else ".text"
    assert inside(weights, "weights")
    if weights == ".moa_weights":
        assert sections[".moa_weights"][1] >= 260_000  # the encoder's 268 kB of weights, out of the code's memory
    script = (tmp_path / "p/memory-qemu.ld").read_text()
    assert f"__ram_size = {board.memory_for('data').size:#x};" in script


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


def test_energy_refuses_a_bare_metal_board(tiny, tmp_path):
    convert(tiny[0], tmp_path / "p", board=load_board("pico2"))
    proc = run_cli("energy", tmp_path / "p", "--board", "pico2", "--sensor", "command:echo 1")
    one_error(proc, "board pico2 is bare metal", "moa_profile_begin/end")


@pytest.mark.board
def test_int8_weights_and_activations_run_on_the_m55_as_on_the_host(tiny, tmp_path):
    """The integer GEMM's Helium tile (VMLADAVA over gathered columns): the encoder with int8
    weights and activations gives the host build's outputs (the same quantized model, whose
    integer sums are exact) within float32 rounding, and stays near the float model."""
    from moa_edge.passes import parse_weights
    path, x, expected = tiny
    outputs = {}
    for name in ("host", "alif-e7"):
        board = require_board(name)
        convert(path, tmp_path / name, board=board, weights=parse_weights("int8"), activations="int8")
        io = project_io(tmp_path / name)
        outputs[name] = run(build(tmp_path / name, board), board, io, check_inputs(io, {"x": x}, "test"))[0]["y"]
    assert np.abs(outputs["alif-e7"] - outputs["host"]).max() <= 1e-5
    assert np.abs(outputs["alif-e7"] - expected).max() < 0.05  # int8's own error, not a broken kernel's
