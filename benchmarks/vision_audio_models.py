"""The CNN, hybrid and audio models of tests/vision_models.py (issue 17, item 5) validated on
every board: exported by torch at --size (224 is their real input; 64 is the suite's), each
validated on host, rpi4 and k230 within 1e-5 of PyTorch float64; prints each board's worst
error and writes results/vision-audio-models.json.

    python benchmarks/vision_audio_models.py [--size 64] [--samples 4000] [--boards host,rpi4,k230]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
import tempfile
import warnings

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the models' builders, shared with the suite

import vision_models  # noqa: E402
from moa_edge.pipeline import validate  # noqa: E402
from moa_edge.target import load_board  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="image side (default 64; 224 is the models' own)")
    parser.add_argument("--samples", type=int, default=4000, help="audio samples at 16 kHz (default 4000)")
    parser.add_argument("--boards", default="host,rpi4,k230")
    parser.add_argument("--models", default=",".join(vision_models.MODELS))
    parser.add_argument("-o", "--output", default=str(ROOT / "benchmarks/results/vision-audio-models.json"))
    a = parser.parse_args()
    boards = [load_board(b) for b in a.boards.split(",")]
    results, ok = {}, True
    for name in a.models.split(","):
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = vision_models.export(name, Path(tmp) / "m.onnx", a.size, a.samples)
            np.savez(Path(tmp) / "x.npz", x=x)
            report = validate(Path(tmp) / "m.onnx", boards, inputs_path=Path(tmp) / "x.npz")
        results[name] = {board: {"ok": r["ok"], "max_abs_err": r.get("max_abs_err"), "max_rel_err": r.get("max_rel_err")}
                         for board, r in report["boards"].items()}
        results[name]["importer_check_ok"] = report["importer_check"]["ok"]
        ok &= report["ok"]
        print(f"{name:22s} " + "  ".join(f"{b}: {'pass' if r['ok'] else 'FAIL'} ({r.get('max_abs_err') or 0:.1e})"
                                         for b, r in report["boards"].items()), flush=True)
    Path(a.output).write_text(json.dumps({"size": a.size, "samples": a.samples, "results": results}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
