"""The moa-edge IR: a Graph of Nodes over Tensors with static shapes and dtypes (records in ir.dtypes)."""
from . import dtypes
from .graph import Graph, Node, Tensor, attribute_text, check_sizes

__all__ = ["Graph", "Node", "Tensor", "attribute_text", "check_sizes", "dtypes"]
