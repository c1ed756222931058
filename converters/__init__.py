"""Model frontends, installed as moa_edge.converters."""
from .onnx_import import import_decoder, import_onnx, model_path, parse_input_shapes

__all__ = ["import_decoder", "import_onnx", "model_path", "parse_input_shapes"]
