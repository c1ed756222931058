"""An audio front end: the windows (HannWindow, HammingWindow, BlackmanWindow), MelWeightMatrix,
DFT and STFT, in float32.

Every table is made at convert time, in float64, and emitted as a constant:
  windows          w[n] = a0 - a1 cos(2 pi n / N) + a2 cos(4 pi n / N), N = size (periodic) or size - 1
  MelWeightMatrix  onnx's reference evaluation of the op at the converted shape
  DFT, STFT        the transform as a real matrix W[t, co, k, ci] (output point t, component co; input
                   point k, component ci), numpy's FFT of every unit impulse, so the inverse, onesided and
                   irfft forms and dft_length's truncation or zero padding are all in the table.
A window or a mel matrix whose size arrives at run time is the table of the converted output's size,
the run-time scalar checked against it (MOA_ERR_BAD_PARAMS when they differ): with constant inputs the
whole node folds at convert time instead (passes/fold.py). The DFT is the plain O(L * M) product of
that matrix with every line along the axis, not an FFT: the table holds L * M * components floats,
fine for audio frames of a few hundred points. STFT frames the signal (frame_step apart, frame_length
long, each point times the window when there is one) and takes the same product per frame.

The references are independent: torch's windows, torch.fft and torch.stft, and the mel matrix
written from the ONNX spec in torch."""
from __future__ import annotations

import math

import numpy as np
import onnx
from moa_edge.lazy import torch

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_comment_text, c_float_short

from .contract import EmittedUnit, OpCost, TensorType, operand_bytes

WINDOWS = ("HannWindow", "HammingWindow", "BlackmanWindow")
OPS = (*WINDOWS, "MelWeightMatrix", "DFT", "STFT")
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"HannWindow": 17, "HammingWindow": 17, "BlackmanWindow": 17, "MelWeightMatrix": 17, "DFT": 20,
                 "STFT": 17}
C_SOURCES: list[str] = []
C_LOCALS = frozenset({"table", "weight", "o", "f", "t", "r", "co", "k", "ci", "sum", "n", "step"})

# a0, a1, a2 of each window (ONNX's HammingWindow takes 25/46 and 21/46, not 0.54 and 0.46).
_COEFFICIENTS = {"HannWindow": (0.5, 0.5, 0.0), "HammingWindow": (25 / 46, 21 / 46, 0.0),
                 "BlackmanWindow": (0.42, 0.5, 0.08)}
_MAX_TABLE = 1 << 22  # floats: a larger DFT matrix is refused rather than emitted


# ---- scalars and shapes -----------------------------------------------------------------

def _scalar(graph, name) -> int | float | None:
    value = graph.constant(name) if name else None
    return None if value is None else np.asarray(value).reshape(-1)[0].item()


def _constant(node, graph, index: int, what: str):
    """Input `index` as a constant scalar, None when absent; refused when it arrives at run time."""
    if len(node.inputs) <= index or not node.inputs[index]:
        return None
    value = _scalar(graph, node.inputs[index])
    if value is None:
        raise MoaEdgeError(f"{node.op} node {node.name!r}: {what} ({node.inputs[index]!r}) arrives at run time; "
                           f"moa-edge needs it constant")
    return value


def _output_dtype(node) -> str:
    record = dtypes.from_onnx(node.attrs.get("output_datatype", onnx.TensorProto.FLOAT))
    if record is None or record.name != "float32":
        raise MoaEdgeError(f"{node.op} node {node.name!r}: output_datatype "
                           f"{record.name if record else node.attrs.get('output_datatype')} is not supported "
                           f"(float32 only)")
    return record.name


def _dft_geometry(node, graph) -> dict:
    """DFT's axis, input points M, transform length n, output points L and components in and out."""
    shape = tuple(graph.tensors[node.inputs[0]].shape)
    rank = len(shape)
    if rank < 2 or shape[-1] not in (1, 2):
        raise MoaEdgeError(f"DFT node {node.name!r}: input {list(shape)} must end in an axis of 1 (real) or "
                           f"2 (complex) components")
    opset = graph.opsets.get("", graph.opsets.get("ai.onnx", 17))
    axis = _constant(node, graph, 2, "axis")
    if axis is None:
        axis = -2 if opset >= 20 else node.attrs.get("axis", 1)
    if not -rank <= axis < rank or axis % rank == rank - 1:
        raise MoaEdgeError(f"DFT node {node.name!r}: axis {axis} must be a signal axis of the rank-{rank} input, "
                           f"not its last (components)")
    axis %= rank
    inverse, onesided = bool(node.attrs.get("inverse", 0)), bool(node.attrs.get("onesided", 0))
    points = shape[axis]
    length = _constant(node, graph, 1, "dft_length")
    if length is None:
        length = 2 * (points - 1) if inverse and onesided else points
    if length < 1:
        raise MoaEdgeError(f"DFT node {node.name!r}: dft_length {length} must be positive")
    out_points = length // 2 + 1 if onesided and not inverse else length
    return {"shape": shape, "axis": axis, "points": points, "length": int(length), "out_points": out_points,
            "inverse": inverse, "onesided": onesided, "c_in": shape[-1], "c_out": 1 if inverse and onesided else 2}


def _stft_geometry(node, graph) -> dict:
    """STFT's frame step (None: read at run time), frame length, frames, bins and components. A
    run-time frame_length is the window's length or, with no window, the even length the recorded
    output's bins give (2 (bins - 1) onesided): the C checks it. With a run-time frame_step the
    frames are the recorded output's (None when there is none)."""
    shape = tuple(graph.tensors[node.inputs[0]].shape)
    if len(shape) != 3 or shape[-1] not in (1, 2):
        raise MoaEdgeError(f"STFT node {node.name!r}: signal {list(shape)} must be [batch, length, 1 or 2]")
    onesided = bool(node.attrs.get("onesided", 1))
    has_window = len(node.inputs) > 2 and bool(node.inputs[2])
    window = graph.tensors[node.inputs[2]].shape if has_window else None
    has_length = len(node.inputs) > 3 and bool(node.inputs[3])
    length = _scalar(graph, node.inputs[3]) if has_length else None
    if window is not None and (len(window) != 1 or (length is not None and window[0] != length)):
        raise MoaEdgeError(f"STFT node {node.name!r}: window {list(window)} must be one axis of frame_length "
                           f"{length}")
    recorded = graph.tensors.get(node.outputs[0])
    recorded = tuple(recorded.shape) if recorded is not None and recorded.shape is not None else None
    if length is None and window is not None:
        length = window[0]
    elif length is None and has_length and recorded is not None:
        length = 2 * (recorded[2] - 1) if onesided else recorded[2]
    if length is None:
        raise MoaEdgeError(f"STFT node {node.name!r}: the frame length is unknown (no window, no constant "
                           f"frame_length, no recorded output shape)")
    step = _scalar(graph, node.inputs[1])
    if not 0 < length <= shape[1] or (step is not None and step < 1):
        raise MoaEdgeError(f"STFT node {node.name!r}: frame_length {length} and frame_step {step} must be positive, "
                           f"the frame no longer than the signal ({shape[1]})")
    frames = 1 + (shape[1] - length) // step if step is not None else recorded[1] if recorded else None
    return {"shape": shape, "step": None if step is None else int(step), "length": int(length), "frames": frames,
            "bins": length // 2 + 1 if onesided else length, "onesided": onesided, "c_in": shape[-1],
            "window": node.inputs[2] if has_window else None,
            "length_at_run_time": has_length and _scalar(graph, node.inputs[3]) is None}


# ---- the shape and dtype rule -----------------------------------------------------------

def infer(node, graph) -> list[TensorType]:
    """Windows: [size]; MelWeightMatrix: [dft_length // 2 + 1, num_mel_bins] (shape None where a size
    arrives at run time: the converted output's, checked at run time); DFT: the input with the axis
    of the output's points and 2 components (1 for an irfft); STFT: [batch, frames, bins, 2] (shape
    None where frame_step, or DFT's axis or dft_length, arrive at run time)."""
    if node.op in WINDOWS:
        size = _scalar(graph, node.inputs[0])
        return [TensorType(None if size is None else (int(size),), _output_dtype(node))]
    if node.op == "MelWeightMatrix":
        bins, length = (_scalar(graph, n) for n in node.inputs[:2])
        shape = None if None in (bins, length) else (int(length) // 2 + 1, int(bins))
        return [TensorType(shape, _output_dtype(node))]
    dtype = graph.tensors[node.inputs[0]].dtype
    if node.op == "DFT":
        if any(_scalar(graph, name) is None for name in node.inputs[1:3] if name):
            return [TensorType(None, dtype)]  # dft_length or axis at run time: refused when emitted
        g = _dft_geometry(node, graph)
        shape = list(g["shape"])
        shape[g["axis"]], shape[-1] = g["out_points"], g["c_out"]
        return [TensorType(tuple(shape), dtype)]
    g = _stft_geometry(node, graph)
    shape = None if g["step"] is None else (g["shape"][0], g["frames"], g["bins"], 2)
    return [TensorType(shape, dtype)]


def op_cost(node, graph) -> OpCost:
    """The transforms: a multiply and an add per matrix entry and line; the tables: a copy."""
    moved = operand_bytes(node, graph)
    if node.op not in ("DFT", "STFT"):
        return moved
    out = graph.tensors[node.outputs[0]]
    if node.op == "DFT":
        g = _dft_geometry(node, graph)
        per_output = g["points"] * g["c_in"]
    else:
        g = _stft_geometry(node, graph)
        per_output = g["length"] * g["c_in"]
    return OpCost(2 * out.size * per_output, moved.weight_bytes, moved.activation_bytes)


# ---- the float64 references ---------------------------------------------------------------

def evaluate(node, inputs, graph) -> list[torch.Tensor]:
    if node.op in WINDOWS:
        return [_window_reference(node, int(inputs[0].reshape(-1)[0]))]
    if node.op == "MelWeightMatrix":
        return [_mel_reference(*(inputs[k].reshape(-1)[0].item() for k in range(5)))]
    if node.op == "DFT":
        return [_dft_reference(node, inputs, graph)]
    return [_stft_reference(node, inputs, graph)]


def _window_reference(node, size: int) -> torch.Tensor:
    periodic = bool(node.attrs.get("periodic", 1))
    make = {"HannWindow": torch.hann_window, "BlackmanWindow": torch.blackman_window}.get(node.op)
    if make is not None:
        return make(size, periodic=periodic, dtype=torch.float64)
    return torch.hamming_window(size, periodic=periodic, alpha=25 / 46, beta=21 / 46, dtype=torch.float64)


def _mel_reference(bins, dft_length, sample_rate, lower_hertz, upper_hertz) -> torch.Tensor:
    """The ONNX spec: num_mel_bins + 2 points in mel from the lower edge, (upper - lower) / (num_mel_bins
    + 2) apart (so the last falls short of the upper edge, as ONNX's cases have it), each taken to the
    spectrogram bin floor((dft_length + 1) * hertz / sample_rate); filter m rises linearly from point m
    to point m + 1 (1 at the centre) and falls to point m + 2."""
    bins, dft_length = int(bins), int(dft_length)
    def mel(hertz):
        return 2595 * math.log10(1 + hertz / 700)
    step = (mel(upper_hertz) - mel(lower_hertz)) / (bins + 2)
    points = mel(lower_hertz) + step * torch.arange(bins + 2, dtype=torch.float64)
    hertz = 700 * (10 ** (points / 2595) - 1)
    edge = torch.floor((dft_length + 1) * hertz / sample_rate).long().tolist()
    weights = torch.zeros(dft_length // 2 + 1, bins, dtype=torch.float64)
    for m in range(bins):
        left, centre, right = edge[m], edge[m + 1], edge[m + 2]
        if centre == left:
            weights[centre, m] = 1
        for j in range(left, centre + 1) if centre > left else ():
            weights[j, m] = (j - left) / (centre - left)
        for j in range(centre, right):
            weights[j, m] = (right - j) / (right - centre)
    return weights


def _complex(x: torch.Tensor) -> torch.Tensor:
    return torch.complex(x[..., 0], x[..., 1]) if x.shape[-1] == 2 else x[..., 0].to(torch.complex128)


def _dft_reference(node, inputs, graph) -> torch.Tensor:
    g = _dft_geometry(node, graph)
    signal, axis, n = _complex(inputs[0]), g["axis"], g["length"]
    if g["inverse"] and g["onesided"]:
        return torch.fft.irfft(signal, n=n, dim=axis).unsqueeze(-1)
    spectrum = (torch.fft.ifft if g["inverse"] else torch.fft.fft)(signal, n=n, dim=axis)
    spectrum = spectrum.narrow(axis, 0, g["out_points"])
    return torch.stack([spectrum.real, spectrum.imag], -1)


def _stft_reference(node, inputs, graph) -> torch.Tensor:
    """From the run-time scalars: frame_step, and frame_length (else the window's length, else the
    converted one)."""
    g = _stft_geometry(node, graph)
    window = inputs[2] if g["window"] else None
    given = len(inputs) > 3 and inputs[3] is not None
    length = int(inputs[3].reshape(-1)[0]) if given else g["length"]
    frames = torch.stft(_complex(inputs[0]), n_fft=length, hop_length=int(inputs[1].reshape(-1)[0]),
                        window=window, center=False, onesided=False, return_complex=True)  # [batch, bins, frames]
    frames = frames[:, :length // 2 + 1 if g["onesided"] else length].transpose(1, 2)
    return torch.stack([frames.real, frames.imag], -1)


# ---- the tables --------------------------------------------------------------------------

def window_table(op: str, size: int, periodic: bool) -> np.ndarray:
    a0, a1, a2 = _COEFFICIENTS[op]
    period = size if periodic else size - 1
    angle = 2 * np.pi * np.arange(size) / max(period, 1)
    return a0 - a1 * np.cos(angle) + a2 * np.cos(2 * angle)


def mel_table(node, values: list) -> np.ndarray:
    """onnx's reference evaluation of the node on these five values."""
    from onnx.reference import ReferenceEvaluator
    names = [f"i{k}" for k in range(5)]
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("MelWeightMatrix", names, ["y"], **node.attrs)], "mel", [],
        [onnx.helper.make_empty_tensor_value_info("y")],
        initializer=[onnx.numpy_helper.from_array(np.asarray(v), n) for n, v in zip(names, values)]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    return ReferenceEvaluator(model).run(None, {})[0]


def dft_matrix(points: int, c_in: int, length: int, inverse: bool, onesided: bool) -> np.ndarray:
    """W[t, co, k, ci]: output point t, component co (real, imaginary) of the transform of the unit
    impulse at input point k, component ci, by numpy's FFT of length `length` (the transform is
    linear over the reals, so these columns are all of it)."""
    impulses = np.eye(points)[:, None, :] * np.array([1, 1j])[None, :c_in, None]  # [k, ci, points]
    if inverse and onesided:
        response = np.fft.irfft(impulses, n=length, axis=-1)[..., None]
    else:
        spectrum = (np.fft.ifft if inverse else np.fft.fft)(impulses, n=length, axis=-1)
        if onesided:
            spectrum = spectrum[..., :length // 2 + 1]
        response = np.stack([spectrum.real, spectrum.imag], -1)
    return response.transpose(2, 3, 0, 1)  # [t, co, k, ci]


# ---- the C emission ----------------------------------------------------------------------

def _c_table(name: str, values: np.ndarray, indent: str = "        ") -> list[str]:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size > _MAX_TABLE:
        raise MoaEdgeError(f"a table of {values.size} floats is over the {_MAX_TABLE} moa-edge emits")
    literals = [c_float_short(v) for v in values]
    rows = [", ".join(literals[k:k + 8]) for k in range(0, len(literals), 8)]
    return ([f"{indent}static const float {name}[{len(literals)}] = {{"]
            + [f"{indent}    {row}," for row in rows[:-1]] + [f"{indent}    {rows[-1]}", f"{indent}}};"])


def _check_scalar(node, ctx, index: int, value: int) -> list[str]:
    """The run-time scalar input `index` must be the value the table was made for."""
    name = node.inputs[index]
    if ctx.graph.constant(name) is not None:
        return []
    return [f"        if ((int64_t){ctx.where[name]}[0] != {value}) {{ return MOA_ERR_BAD_PARAMS; }}"]


def _copy(out: str, count: int) -> list[str]:
    return ["        ptrdiff_t n;",
            f"        for (n = 0; n < {count}; n++) {{ {out}[n] = table[n]; }}"]


def emit(node, ctx) -> EmittedUnit:
    graph = ctx.graph
    out = graph.tensors[node.outputs[0]]
    dtypes.require_dtypes(node, graph, names=[out.name])
    if node.op in WINDOWS:
        size, periodic = out.shape[0], bool(node.attrs.get("periodic", 1))
        lines = [f"    {{ /* {c_comment_text(node.name)}: {node.op}, {size} points, "
                 f"{'periodic' if periodic else 'symmetric'}, tabled at convert time */",
                 *_check_scalar(node, ctx, 0, size),
                 *_c_table("table", window_table(node.op, size, periodic)), *_copy(ctx.where[out.name], size), "    }"]
    elif node.op == "MelWeightMatrix":
        lines = _emit_mel(node, ctx)
    elif node.op == "DFT":
        lines = _emit_dft(node, ctx)
    else:
        lines = _emit_stft(node, ctx)
    return EmittedUnit("\n".join(lines) + "\n")


def _emit_mel(node, ctx) -> list[str]:
    graph = ctx.graph
    out = graph.tensors[node.outputs[0]]
    rows, bins = out.shape
    what = ("num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz")
    values = [np.asarray(graph.constant(name)) if graph.constant(name) is not None else None for name in node.inputs]
    for k in range(1, 5):
        if values[k] is None:
            raise MoaEdgeError(f"MelWeightMatrix node {node.name!r}: {what[k]} ({node.inputs[k]!r}) arrives at "
                               f"run time; moa-edge needs it constant (the matrix is made at convert time)")
    values[0] = np.asarray(bins, dtype=values[1].dtype) if values[0] is None else values[0]
    table = mel_table(node, values)
    if table.shape != (rows, bins):
        raise MoaEdgeError(f"MelWeightMatrix node {node.name!r}: the inputs give {list(table.shape)}; the model "
                           f"records {[rows, bins]}")
    return [f"    {{ /* {c_comment_text(node.name)}: MelWeightMatrix, {rows} bins x {bins} mel bands, "
            f"tabled at convert time */", *_check_scalar(node, ctx, 0, bins),
            *_c_table("table", table), *_copy(ctx.where[out.name], out.size), "    }"]


def _emit_product(x: str, out: str, window: str | None, counts: dict, strides: dict) -> list[str]:
    """out[o, f, t, r, co] = sum over k, ci of weight[t, co, k, ci] * window[k] * x[source], the source at
    o, f, k, r, ci times their strides; the output contiguous."""
    o, f, t, r, co = (counts[a] for a in ("outer", "frames", "out_points", "inner", "c_out"))
    k, ci = counts["points"], counts["c_in"]
    source = " + ".join(v if strides[v] == 1 else f"{v} * {strides[v]}" for v in ("o", "f", "k", "r")
                        if strides[v]) + " + ci"
    term = f"weight[((t * {co} + co) * {k} + k) * {ci} + ci] * {x}[{source}]"
    if window:
        term = f"weight[((t * {co} + co) * {k} + k) * {ci} + ci] * ({window}[k] * {x}[{source}])"
    return ["        ptrdiff_t o, f, t, r, co, k, ci;",
            f"        for (o = 0; o < {o}; o++) {{",
            f"            for (f = 0; f < {f}; f++) {{",
            f"                for (t = 0; t < {t}; t++) {{",
            f"                    for (r = 0; r < {r}; r++) {{",
            f"                        for (co = 0; co < {co}; co++) {{",
            "                            float sum = 0.0f;",
            f"                            for (k = 0; k < {k}; k++) {{",
            f"                                for (ci = 0; ci < {ci}; ci++) {{",
            f"                                    sum += {term};",
            "                                }",
            "                            }",
            f"                            {out}[(((o * {f} + f) * {t} + t) * {r} + r) * {co} + co] = sum;",
            "                        }", "                    }", "                }", "            }", "        }"]


def _emit_dft(node, ctx) -> list[str]:
    graph = ctx.graph
    g = _dft_geometry(node, graph)
    dtypes.require_dtypes(node, graph, names=[node.inputs[0]])
    shape, axis = g["shape"], g["axis"]
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1:-1])
    weight = dft_matrix(g["points"], g["c_in"], g["length"], g["inverse"], g["onesided"])
    counts = {"outer": outer, "frames": 1, "out_points": g["out_points"], "inner": inner, "c_out": g["c_out"],
              "points": g["points"], "c_in": g["c_in"]}
    strides = {"o": g["points"] * inner * g["c_in"], "f": 0, "k": inner * g["c_in"], "r": g["c_in"]}
    kind = "irfft" if g["inverse"] and g["onesided"] else ("inverse " if g["inverse"] else "") + (
        "onesided DFT" if g["onesided"] else "DFT")
    return [f"    {{ /* {c_comment_text(node.name)}: {kind} of length {g['length']} along axis {axis}, "
            f"{g['points']} points in, {g['out_points']} out: the O(n^2) product with the tabled transform */",
            *_c_table("weight", weight),
            *_emit_product(ctx.where[node.inputs[0]], ctx.where[node.outputs[0]], None, counts, strides), "    }"]


def _emit_stft(node, ctx) -> list[str]:
    graph = ctx.graph
    g = _stft_geometry(node, graph)
    dtypes.require_dtypes(node, graph, names=[node.inputs[0]] + ([g["window"]] if g["window"] else []))
    batch, samples, c_in = g["shape"]
    frames, length = graph.tensors[node.outputs[0]].shape[1], g["length"]
    weight = dft_matrix(length, c_in, length, False, g["onesided"])
    counts = {"outer": batch, "frames": frames, "out_points": g["bins"], "inner": 1, "c_out": 2,
              "points": length, "c_in": c_in}
    checks = _check_scalar(node, ctx, 3, length) if g["length_at_run_time"] else []
    if g["step"] is None:  # read at run time: it must give the converted frame count
        checks += [f"        const ptrdiff_t step = (ptrdiff_t){ctx.where[node.inputs[1]]}[0];",
                   f"        if (step < 1 || 1 + ({samples} - {length}) / step != {frames}) "
                   "{ return MOA_ERR_BAD_PARAMS; }"]
    step = "step" if g["step"] is None else g["step"]
    strides = {"o": samples * c_in, "f": step if c_in == 1 else f"{step} * {c_in}", "k": c_in, "r": 0}
    window = ctx.where[g["window"]] if g["window"] else None
    return [f"    {{ /* {c_comment_text(node.name)}: STFT, {frames} frames of {length} points "
            f"{step} apart{', windowed' if window else ''}, {g['bins']} bins each: the O(n^2) product with "
            f"the tabled DFT */",
            *checks, *_c_table("weight", weight),
            *_emit_product(ctx.where[node.inputs[0]], ctx.where[node.outputs[0]], window, counts, strides), "    }"]
