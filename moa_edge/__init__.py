"""moa-edge: ONNX transformer models to fixed-memory C for edge boards."""
from pathlib import Path

__version__ = "0.1.0"

# Boards and the C runtime live beside the package in the source tree.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
BOARDS_DIR = PROJECT_ROOT / "boards"
C_RUNTIME_DIR = PROJECT_ROOT / "c_runtime"
