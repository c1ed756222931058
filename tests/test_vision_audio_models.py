"""CNN, hybrid and audio models (issue 17, item 5; tests/vision_models.py), exported by torch
with random weights at a 64 x 64 image (a quarter second of audio), validated within 1e-5 of
PyTorch float64 (validate's own tolerance), the original file run by onnxruntime beside."""
import numpy as np
import pytest

from conftest import BOARDS, require_board
from moa_edge.pipeline import validate
import vision_models

# The models whose emulated runs are quick run on every board; the others validate on the host
# here, and on all three boards in benchmarks/vision_audio_models.py (minutes under qemu). MobileNetV2
# and MobileViT-S, whose ops MobileNetV3-small and LeViT-128S cover here, are left to the benchmark
# (make test's 20 minutes).
ON_EVERY_BOARD = ("resnet18", "levit_128s")
IN_THE_SUITE = tuple(name for name in vision_models.MODELS if name not in ("mobilenet_v2", "mobilevit_s"))


@pytest.mark.board
@pytest.mark.parametrize("name", IN_THE_SUITE)
def test_model_validates(name, tmp_path):
    boards = [require_board(b) for b in (BOARDS if name in ON_EVERY_BOARD else ["host"])]
    x = vision_models.export(name, tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=x)
    report = validate(tmp_path / "m.onnx", boards, inputs_path=tmp_path / "x.npz")
    assert report["importer_check"]["ok"], report["importer_check"]
    for board, result in report["boards"].items():
        assert result["ok"], (board, result)
