"""moa-edge: ONNX transformer models to fixed-memory C for edge boards."""
import os
from pathlib import Path

__version__ = "0.1.0"

# Boards and the C runtime live beside the package in the source tree.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
BOARDS_DIR = PROJECT_ROOT / "boards"
C_RUNTIME_DIR = PROJECT_ROOT / "c_runtime"

# onnxruntime (folding, reference checks) otherwise writes a telemetry session file (.ses) into
# $TMPDIR and leaves it there; it reads this variable once, when it is first imported.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
