"""Resize (float32; opsets 13-19, and the old Upsample, which onnx's version converter writes as
Resize): nearest (every nearest_mode), linear and cubic (cubic_coeff_a, exclude_outside),
antialias, every coordinate_transformation_mode (tf_crop_and_resize with its extrapolation_value),
axes, scales or sizes with keep_aspect_ratio_policy; roi, scales and sizes must be constants.

Resize is separable: each resized axis is one moa_resample_axis_f32 call (c_runtime/src/resample.c)
over a table of taps, the input positions and weights of every output position, computed here
at convert time from the spec's formulas. The axes are chained through the node's scratch,
shrinking axes first so that the intermediates stay small. The reference is onnx's own Resize
(its ReferenceEvaluator on the one node, in float64), independent of these tables."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text, c_float_short
from moa_edge.lazy import torch

from .contract import EmittedUnit, OpCost, TensorType, check_status, operand_bytes

OPS = ("Resize",)
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"Resize": 19}
C_SOURCES = ["resample.c"]
DECLARATIONS = ['#include "moa/resample.h"\n']
MODES = ("nearest", "linear", "cubic")
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
POLICIES = ("stretch", "not_larger", "not_smaller")


@dataclass(frozen=True)
class AxisTaps:
    """One resized axis: output position j is sum_t weight[j, t] * input[index[j, t]], or the
    extrapolation value where outside[j]."""
    axis: int
    in_extent: int
    index: np.ndarray           # [out_extent, taps] input positions
    weight: np.ndarray          # [out_extent, taps]
    outside: np.ndarray | None  # [out_extent] booleans (tf_crop_and_resize), or None

    @property
    def out_extent(self) -> int:
        return self.index.shape[0]

    @property
    def is_identity(self) -> bool:
        return (self.outside is None or not self.outside.any()) and self.out_extent == self.in_extent and \
            self.index.shape[1] == 1 and (self.index[:, 0] == np.arange(self.in_extent)).all() and \
            (self.weight == 1.0).all()


def _refuse(node, feature: str):
    raise MoaEdgeError(f"Resize node {node.name!r}: {feature} is not supported")


def _text(node, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = node.attrs.get(name, default)
    value = value.decode() if isinstance(value, bytes) else str(value)
    if value not in choices:
        _refuse(node, f"{name} {value!r}")
    return value


def _geometry_input(node, graph, k: int, what: str) -> np.ndarray | None:
    """Input k (roi, scales or sizes) as its constant values; None when absent or empty."""
    if len(node.inputs) <= k or not node.inputs[k]:
        return None
    data = graph.constant(node.inputs[k])
    if data is None:
        _refuse(node, f"{what} {node.inputs[k]!r} computed at run time (the tables are built at convert time)")
    data = np.asarray(data).reshape(-1)
    return data if data.size else None


def _output_size(node, graph) -> tuple[list[int], dict[int, float], dict[int, int], np.ndarray | None]:
    """The axes resized, each one's scale and output extent (as onnx's reference computes them),
    and the roi of every axis as [starts..., ends...] over the input's rank (tf_crop_and_resize)."""
    shape = graph.tensors[node.inputs[0]].shape
    rank = len(shape)
    axes = [int(a) for a in node.attrs.get("axes", range(rank))]
    if any(not -rank <= a < rank for a in axes) or len({a % max(rank, 1) for a in axes}) != len(axes):
        _refuse(node, f"axes {axes} for an input of rank {rank}")
    axes = [a % rank for a in axes]
    scales = _geometry_input(node, graph, 2, "scales")
    sizes = _geometry_input(node, graph, 3, "sizes")
    if (scales is None) == (sizes is None):
        _refuse(node, "giving neither or both of scales and sizes")
    given = scales if scales is not None else sizes
    if given.size != len(axes):
        _refuse(node, f"{given.size} {'scales' if scales is not None else 'sizes'} for {len(axes)} axes")
    if scales is not None:
        scale = {d: float(s) for d, s in zip(axes, scales)}
        if min(scale.values()) <= 0:
            _refuse(node, f"scales {scales.tolist()} (they must be positive)")
        out = {d: int(math.floor(scale[d] * shape[d])) for d in axes}
    else:
        if min(sizes) < 0 or min(shape[d] for d in axes) == 0:
            _refuse(node, f"sizes {sizes.tolist()} for the extents {[shape[d] for d in axes]}")
        scale = {d: int(s) / shape[d] for d, s in zip(axes, sizes)}
        out = {d: int(s) for d, s in zip(axes, sizes)}
        policy = _text(node, "keep_aspect_ratio_policy", "stretch", POLICIES)
        if policy != "stretch":
            kept = (min if policy == "not_larger" else max)(scale.values())
            scale = {d: kept for d in axes}
            out = {d: int(kept * shape[d] + 0.5) for d in axes}  # round half up
    roi = None
    if _text(node, "coordinate_transformation_mode", "half_pixel", COORDINATE_MODES) == "tf_crop_and_resize":
        given_roi = _geometry_input(node, graph, 1, "roi")
        if given_roi is None or given_roi.size != 2 * len(axes):
            _refuse(node, f"tf_crop_and_resize without a roi of {2 * len(axes)} values")
        roi = np.array([0.0] * rank + [1.0] * rank)
        roi[axes] = given_roi[:len(axes)]
        roi[[rank + d for d in axes]] = given_roi[len(axes):]
    return axes, scale, out, roi


def _source_coordinates(mode: str, out_extent: int, in_extent: int, scale: float, roi_pair) -> np.ndarray:
    """x_original of every output position (the spec's coordinate_transformation_mode; the output
    width is the real scale * in_extent, as onnx's reference and test data take it)."""
    x = np.arange(out_extent, dtype=np.float64)
    width = scale * in_extent
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = in_extent / 2 * (1 - out_extent / width)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if width != 1 else np.full(out_extent, -0.5)
    if mode == "align_corners":
        return x * (in_extent - 1) / (width - 1) if width != 1 else np.zeros(out_extent)
    if mode == "asymmetric":
        return x / scale
    start, end = roi_pair  # tf_crop_and_resize
    if width == 1:
        return np.full(out_extent, (end - start) * (in_extent - 1) / 2 + start * (in_extent - 1))
    return x * (end - start) * (in_extent - 1) / (width - 1) + start * (in_extent - 1)


def _cubic(d: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with coefficient a."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _linear(d: np.ndarray) -> np.ndarray:
    return np.clip(1 - np.abs(d), 0.0, 1.0)


def axis_taps(node, axis: int, in_extent: int, out_extent: int, scale: float, roi_pair) -> AxisTaps:
    """The taps of one axis; roi_pair: its (start, end) for tf_crop_and_resize, else None."""
    mode = _text(node, "mode", "nearest", MODES)
    transform = _text(node, "coordinate_transformation_mode", "half_pixel", COORDINATE_MODES)
    x = _source_coordinates(transform, out_extent, in_extent, scale, roi_pair)
    outside = (x < 0) | (x > in_extent - 1) if transform == "tf_crop_and_resize" else None
    if mode == "nearest":
        if node.attrs.get("antialias", 0):
            _refuse(node, "antialias with mode 'nearest'")
        frac = x - np.floor(x)
        nearest_mode = _text(node, "nearest_mode", "round_prefer_floor", NEAREST_MODES)
        up = {"round_prefer_floor": frac > 0.5, "round_prefer_ceil": frac >= 0.5, "floor": np.zeros_like(x, bool),
              "ceil": frac > 0}[nearest_mode]
        positions = (np.floor(x) + up).astype(np.int64)[:, None]
        weight = np.ones(positions.shape)
    else:
        # The window: from `first` positions before the one left of x (x - 1 when x is an
        # integer) to as many after it; antialiasing widens it by 1 / scale when shrinking.
        stretch = min(scale, 1.0) if node.attrs.get("antialias", 0) else 1.0
        first = math.floor(-(1 if mode == "linear" else 2) / stretch) + 1
        left = np.ceil(x).astype(np.int64) - 1
        positions = left[:, None] + np.arange(first, 2 - first)[None, :]
        distance = (positions - x[:, None]) * stretch
        a = float(node.attrs.get("cubic_coeff_a", -0.75))
        weight = _linear(distance) if mode == "linear" else _cubic(distance, a)
        if node.attrs.get("antialias", 0):
            weight = weight / weight.sum(axis=1, keepdims=True)
    if node.attrs.get("exclude_outside", 0):
        weight = np.where((positions < 0) | (positions >= in_extent), 0.0, weight)
        total = weight.sum(axis=1, keepdims=True)
        weight = weight / np.where(total == 0, 1.0, total)
    positions = np.clip(positions, 0, in_extent - 1)  # beyond the edges: the edge elements
    # Only the taps of non-zero weight: 1 per output for nearest, and for linear at integer x.
    order = np.argsort(weight == 0, axis=1, kind="stable")
    positions, weight = np.take_along_axis(positions, order, 1), np.take_along_axis(weight, order, 1)
    taps = max(1, int((weight != 0).sum(axis=1).max(initial=0)))
    return AxisTaps(axis, in_extent, positions[:, :taps], weight[:, :taps], outside)


def plan(node, graph) -> list[AxisTaps]:
    """The passes, one per axis that changes, shrinking ones first (at least one pass: a Resize
    that changes nothing copies)."""
    x = graph.tensors[node.inputs[0]]
    axes, scale, out, roi = _output_size(node, graph)
    rank = len(x.shape)
    passes = [axis_taps(node, d, x.shape[d], out[d], scale[d], None if roi is None else (roi[d], roi[rank + d]))
              for d in axes if x.shape[d] > 0]
    changing = [p for p in passes if not p.is_identity] or passes[-1:]
    return sorted(changing, key=lambda p: p.out_extent / p.in_extent)


def _output_shape(node, graph) -> tuple[int, ...]:
    shape = list(graph.tensors[node.inputs[0]].shape)
    _, _, out, _ = _output_size(node, graph)
    for d, extent in out.items():
        shape[d] = extent
    return tuple(shape)


def _geometry_known(node, graph) -> bool:
    return all(graph.constant(n) is not None for n in node.inputs[1:4] if n)


def infer(node, graph) -> list[TensorType]:
    x = graph.tensors[node.inputs[0]]
    if not _geometry_known(node, graph):  # run-time roi, scales or sizes: refused at emission
        return [TensorType(None, x.dtype)]
    return [TensorType(_output_shape(node, graph), x.dtype)]


def _check(node, graph) -> None:
    dtypes.require_dtypes(node, graph, names=[node.inputs[0], node.outputs[0]])
    if graph.tensors[node.inputs[0]].size == 0 or graph.tensors[node.outputs[0]].size == 0:
        _refuse(node, "an empty input or output")


def _shapes(node, graph) -> list[tuple[int, ...]]:
    """The shape before the first pass and after each."""
    shapes = [tuple(graph.tensors[node.inputs[0]].shape)]
    for p in plan(node, graph):
        shapes.append(shapes[-1][:p.axis] + (p.out_extent,) + shapes[-1][p.axis + 1:])
    return shapes


def _intermediate_bytes(node, graph) -> tuple[int, int]:
    """Two scratch halves the intermediates alternate between (pass k writes half k % 2)."""
    halves = [0, 0]
    for k, shape in enumerate(_shapes(node, graph)[1:-1]):
        halves[k % 2] = max(halves[k % 2], math.prod(shape) * 4)
    return halves[0], halves[1]


def scratch_bytes(node, graph) -> int:
    _check(node, graph)
    return sum(_intermediate_bytes(node, graph))


def op_cost(node, graph) -> OpCost:
    """A multiply and an add per tap of every output element of each pass."""
    moved = operand_bytes(node, graph)
    flops = sum(2 * p.index.shape[1] * math.prod(shape)
                for p, shape in zip(plan(node, graph), _shapes(node, graph)[1:]))
    return OpCost(flops, moved.weight_bytes, moved.activation_bytes)


def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    """onnx's reference Resize on the one node, in float64."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    _check(node, graph)
    types = (np.float64, np.float64, np.float32, np.int64)  # roi in float64: the reference computes with it
    feeds = {f"i{k}": np.asarray(v.numpy() if hasattr(v, "numpy") else v, types[k])
             for k, v in enumerate(inputs[:4]) if v is not None}
    proto = onnx.helper.make_node("Resize", [f"i{k}" if v is not None else "" for k, v in enumerate(inputs[:4])],
                                  ["y"], **node.attrs)
    model = onnx.helper.make_model(
        onnx.helper.make_graph([proto], "resize", [
            onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for k, v in feeds.items()], [onnx.helper.make_empty_tensor_value_info("y")]),
        opset_imports=[onnx.helper.make_opsetid("", graph.opsets.get("", graph.opsets.get("ai.onnx", 19)))])
    (y,) = ReferenceEvaluator(model).run(None, feeds)
    return [torch.from_numpy(np.asarray(y, np.float64))]


def _table(ctype: str, name: str, rows: np.ndarray, literal) -> str:
    """A static const table, one output position's taps to a line (16 single values to a line)."""
    rows = np.asarray(rows).reshape(len(rows), -1)
    per_line = max(1, 16 // rows.shape[1]) if rows.shape[1] == 1 else 1
    lines = [", ".join(literal(v) for v in rows[k:k + per_line].reshape(-1)) for k in range(0, len(rows), per_line)]
    return (f"        static const {ctype} {name}[{rows.size}] = {{\n"
            + ",\n".join(f"            {line}" for line in lines) + "};")


def emit(node, ctx) -> EmittedUnit:
    graph = ctx.graph
    _check(node, graph)
    passes, shapes = plan(node, graph), _shapes(node, graph)
    first_half, _ = _intermediate_bytes(node, graph)
    halves = [ctx.scratch, f"({ctx.scratch} + {first_half // 4})"]  # a float pointer
    extrapolation = c_float_short(float(node.attrs.get("extrapolation_value", 0.0)))
    lines = [f"    {{ /* {c_comment_text(node.name)}: Resize "
             f"{_text(node, 'mode', 'nearest', MODES)}, "
             f"{_text(node, 'coordinate_transformation_mode', 'half_pixel', COORDINATE_MODES)}, "
             f"{list(shapes[0])} -> {list(shapes[-1])}, axes {[p.axis for p in passes]} in turn */"]
    calls, source = [], ctx.where[node.inputs[0]]
    for k, (p, before) in enumerate(zip(passes, shapes)):
        stem = f"{ctx.name}_axis{p.axis}"
        outside = f"{stem}_outside" if p.outside is not None else "NULL"
        lines += [_table("int32_t", f"{stem}_index", p.index, lambda v: str(int(v))),
                  _table("float", f"{stem}_weight", p.weight, c_float_short)]
        if p.outside is not None:
            lines.append(_table("unsigned char", outside, p.outside, lambda v: str(int(v))))
        fields = [("outer", math.prod(before[:p.axis])), ("in_extent", p.in_extent), ("out_extent", p.out_extent),
                  ("inner", math.prod(before[p.axis + 1:])), ("taps", p.index.shape[1])]
        lines += [f"        const moa_resample_axis_params {stem} = {{",
                  "            " + ", ".join(f".{name} = {value}u" for name, value in fields) + ",",
                  f"            .index = {stem}_index, .weight = {stem}_weight,",
                  f"            .outside = {outside}, .extrapolation = {extrapolation},",
                  "        };"]
        target = ctx.where[node.outputs[0]] if k == len(passes) - 1 else halves[k % 2]
        calls.append(check_status(f"moa_resample_axis_f32(&{stem}, {source}, {target})", indent="        "))
        source = target
    lines += ["".join(calls).rstrip("\n"), "    }"]
    return EmittedUnit("\n".join(lines) + "\n", declarations=DECLARATIONS)


