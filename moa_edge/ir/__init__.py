"""The moa-edge IR: a Graph of Nodes over Tensors with static shapes and dtypes."""
from .graph import DTYPES, Graph, Node, Tensor

__all__ = ["DTYPES", "Graph", "Node", "Tensor"]
