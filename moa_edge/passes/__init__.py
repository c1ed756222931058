"""Graph rewrites, run in a fixed order by `lower`."""
from __future__ import annotations

from collections import defaultdict

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import Graph, Node, dtypes
from moa_edge.ops import SUPPORTED_OPS, check_output_types

from .attention import rewrite_attention
from .canonical import bypass_no_ops, copy_constant_outputs, lower_copies, narrow_softmax_precision, unfold_batched_transposes
from .dynamic_quantize import expand_dynamic_quantizers, fold_dynamic_quantization, parse_activations, quantize_activations
from .float32_kernels import read_through_float32
from .fold import fold_constants, infer_missing_shapes, range_lengths_from_consumers
from .half import compute_in_float32
from .half_attention import read_half_operands
from .mlp import tile_mlp
from .nbits import lower_matmul_nbits
from .normalizations import lower_normalizations
from .pack import pack_weights
from .patch_conv import gemm_patch_convs
from .qdq import lower_qdq
from .qdq_attention import read_quantized_operands, sink_key_transposes
from .quantize import WeightFormat, parse_weights
from .score_reshapes import unfold_batched_scores
from .fuse import fuse_elementwise
from .versions import check_onnx_versions
from .views import check_views


def unsupported_ops(graph: Graph) -> dict[str, list[str]]:
    """Op type -> names of the nodes the runtime cannot execute."""
    unsupported = defaultdict(list)
    for node in graph.nodes:
        if node.op not in SUPPORTED_OPS:
            unsupported[node.op].append(node.name)
    return dict(sorted(unsupported.items()))


def lower(graph: Graph, source: str = "model", strict: bool = True, fuse_attention: bool = True,
          weights: WeightFormat | None = None, activations: str | None = None, half_outputs: bool = True) -> Graph:
    """Fold shape plumbing, rewrite attention, drop dead nodes, then (strict) insist every op is supported.
    Without `fuse_attention` the attention subgraphs stay as they are (scores materialised),
    the baseline the rewrite is measured against. `weights` quantizes the float weights (convert --weights), and
    `activations` "int8" the activations they multiply (--activations, passes/dynamic_quantize.py).
    A float16 or bfloat16 model computes in float32; without `half_outputs` its outputs stay float32."""
    check_onnx_versions(graph, source)
    while True:  # folding can reveal shapes, and shapes more folding (layer after layer)
        inferred = infer_missing_shapes(graph)
        if not fold_constants(graph) and not inferred and not range_lengths_from_consumers(graph):
            break
    if compute_in_float32(graph, half_outputs):  # float16 and bfloat16 models: halves only at the inputs and outputs
        fold_constants(graph)  # a CastLike of a constant to a half input's type is a Cast of a constant now
    read_through_float32(graph)  # double (and, where they only select, bool and small integers) through Casts
    lower_qdq(graph)  # QuantizeLinear/DequantizeLinear: quantized GEMM weights, folded constants, roundings
    lower_normalizations(graph)  # batch norm into the Conv before it; instance and group norm as LayerNorm
    check_views(graph, source)  # before the rewrites turn views into access maps
    bypass_no_ops(graph)
    narrow_softmax_precision(graph)
    unfold_batched_scores(graph)  # scores reshaped to 4-D for the mask and back around the Softmax
    unfold_batched_transposes(graph)
    gemm_patch_convs(graph, weights)  # ViT's patch embedding: one GEMM, before pack_weights packs its weight
    if fuse_attention:
        sink_key_transposes(graph)  # a rounded K^T of a QDQ file: the Transpose below the roundings
        rewrite_attention(graph)
        read_quantized_operands(graph)  # K and V of QDQ files as their int8 tensors
        read_half_operands(graph)  # half Q, K and V (float16 models) as the halves themselves
    lower_copies(graph)
    fold_constants(graph)
    copy_constant_outputs(graph)
    lower_matmul_nbits(graph)  # onnxruntime's quantized weights, before pack_weights quantizes float ones
    fold_dynamic_quantization(graph)
    graph.remove_dead()
    expand_dynamic_quantizers(graph)  # those no kernel took, as the spec's ops
    pack_weights(graph, weights)
    if activations == "int8":
        quantize_activations(graph)
    graph.remove_dead()
    fuse_elementwise(graph)
    tile_mlp(graph)
    if not strict:
        return graph
    unsupported = unsupported_ops(graph)
    if unsupported:
        listing = "; ".join(f"{op} (nodes: {', '.join(names)})" for op, names in sorted(unsupported.items()))
        raise MoaEdgeError(f"{source}: unsupported ops: {listing}")
    for node in graph.nodes:
        for name in node.outputs:
            if name and graph.tensors.get(name) is None:
                raise MoaEdgeError(f"{source}: node {node.name!r} ({node.op}) makes {name!r}, whose element type "
                                   f"or shape is unknown or not supported "
                                   f"(the runtime has {', '.join(dtypes.RUNTIME_DTYPES)})")
            if name and graph.tensors[name].dtype not in dtypes.HELD_DTYPES and not _int8_operand(graph, node):
                raise MoaEdgeError(f"{source}: node {node.name!r} ({node.op}) makes {name!r} of type "
                                   f"{graph.tensors[name].dtype}; the runtime has {', '.join(dtypes.RUNTIME_DTYPES)} only")
    check_output_types(graph, source)
    for name in graph.outputs:
        if graph.producer(name) is None:
            raise MoaEdgeError(f"{source}: output {name!r} is not computed by any node (constant or pass-through outputs are not supported yet)")
    return graph


def _int8_operand(graph: Graph, node: Node) -> bool:
    """A quantized K or V (passes/qdq_attention.py): the int8 result of MoaQuantize (alone or ending
    a fused loop) that only attention reads."""
    root = node.attrs["body"].nodes[-1] if node.op == "MoaElementwise" else node
    return root.op == "MoaQuantize" and all(r.op == "MoaAttention" for r in graph.consumers(node.outputs[0]))


__all__ = ["fold_constants", "fuse_elementwise", "lower", "parse_activations", "rewrite_attention", "unsupported_ops"]
