"""bench model on a bare-metal board: what a microcontroller's user weighs before flashing. The
instructions of one inference, counted by qemu (insn_count), and the bytes the built program
takes in each of the board's memories, read from the ELF's sections: code, weights, static data,
stack, the arena and the memory pools, all fixed at link time (the runtime never allocates),
beside what convert planned."""
from __future__ import annotations

from pathlib import Path
import re
import shutil
import subprocess

from moa_edge.errors import MoaEdgeError
from moa_edge.target import Board

from .build import build
from .inputs import load_npz, random_inputs
from .runner import run
from .scratch_folder import scratch_folder


def section_sizes(binary: Path, board: Board) -> list[tuple[str, int, int]]:
    """(name, address, bytes) of the program's allocated sections (its compiler's readelf)."""
    readelf = shutil.which(board.compiler().replace("gcc", "readelf")) if board.compiler() else None
    if readelf is None:
        raise MoaEdgeError(f"board {board.name}: no readelf beside {board.compiler()} (Debian: binutils-arm-none-eabi)")
    out = subprocess.run([readelf, "-SW", str(binary)], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\s+(\S*A\S*)", line)
        if m and int(m.group(3), 16) and "T" not in m.group(4):  # a TLS template: .tbss_space holds its bytes
            found.append((m.group(1), int(m.group(2), 16), int(m.group(3), 16)))
    return found


def memory_use(binary: Path, board: Board) -> dict[str, dict]:
    """Each memory's bytes taken by the program's sections, and which (addresses as emulated)."""
    use = {m.name: {"kind": m.kind, "size": m.size, "used": 0, "sections": {}} for m in board.memories}
    for name, address, size in section_sizes(binary, board):
        for m in board.memories:
            if m.emulated_base <= address < m.emulated_base + m.size:
                use[m.name]["used"] += size
                use[m.name]["sections"][name] = size
    return use


def bench_mcu(model, convert, board: Board, input_shapes=None, inputs_path=None, seed: int = 0,
              progress=lambda msg: None) -> dict:
    """Convert for the bare-metal `board`, build it as its emulator runs it, run one inference."""
    with scratch_folder("moa-bench-mcu-") as tmp:
        project = Path(tmp) / "p"
        progress(f"convert for {board.name}")
        report = convert(model, project, board=board, input_shapes=input_shapes)
        progress(f"build for {board.name}")
        binary = build(project, board)
        inputs = load_npz(inputs_path) if inputs_path else random_inputs(report["io"], seed)
        progress(f"run under {board.runner()[0]}")
        stats = {}
        run(binary, board, report["io"], inputs, stats=stats)
        memory = report["memory"]
        return {"model": str(model), "board": board.name, "instructions_per_inference": stats["instructions_per_inference"],
                "instructions_whole_run": stats["instructions"],
                "planned": {"arena_bytes": memory["arena_bytes"], "weights_bytes": memory["weights_bytes"],
                            "io_bytes": memory["io_bytes"], "pools": memory["pools"], "stack_bytes": board.stack_bytes},
                "memories": memory_use(binary, board)}


def table(result: dict) -> str:
    lines = [f"{result['model']} on {result['board']}: {result['instructions_per_inference']:,} instructions per "
             f"inference (qemu's count; {result['instructions_whole_run']:,} for the whole run with its file I/O)",
             f"{'memory':10} {'kind':6} {'used':>10} {'of':>10}  sections"]
    for name, m in result["memories"].items():
        lines.append(f"{name:10} {m['kind']:6} {m['used']:>10} {m['size']:>10}  "
                     + ", ".join(f"{s} {b}" for s, b in m["sections"].items()))
    p = result["planned"]
    lines.append(f"planned by convert: arena {p['arena_bytes']} B, weights {p['weights_bytes']} B, inputs and outputs "
                 f"{p['io_bytes']} B, stack {p['stack_bytes']} B"
                 + "".join(f", pool {q['name']} {q['bytes']} B" for q in p["pools"]))
    return "\n".join(lines)
