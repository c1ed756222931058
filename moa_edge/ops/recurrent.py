"""RNN, GRU and LSTM (fp32): one moa_recurrent_f32 call per node (c_runtime/src/recurrent.c),
which steps each batch row of each direction through time in the node's scratch.

Supported: directions forward, reverse and bidirectional; the spec's activation functions with
their alpha and beta; clip; GRU's linear_before_reset; LSTM's input_forget and peepholes (P);
initial_h and initial_c; layout 0 and 1; any of the outputs Y, Y_h and Y_c. sequence_lens is
accepted only as a constant in which every sequence has the full length."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moa_edge.errors import MoaEdgeError
from moa_edge.ir import attribute_text, dtypes
from moa_edge.ir.c_syntax import c_comment_text, c_float_short
from moa_edge.lazy import torch

from .contract import EmittedUnit, OpCost, TensorType, check_status, operand_bytes

OPS = ("RNN", "GRU", "LSTM")
# The ONNX versions implemented: op -> the newest since_version checked (passes/versions.py).
ONNX_VERSIONS = {"RNN": 22, "GRU": 22, "LSTM": 22}
C_SOURCES = ["recurrent.c"]
DECLARATIONS = ['#include "moa/recurrent.h"\n']

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}  # gate order: RNN i; GRU z r h; LSTM i o f c
DEFAULT_ACTIVATIONS = {"RNN": ("Tanh",), "GRU": ("Sigmoid", "Tanh"), "LSTM": ("Sigmoid", "Tanh", "Tanh")}
# The spec's activation functions: name -> (C kind, default alpha, default beta). A parameter the
# function does not take is None; one it takes without a default (Affine, ScaledTanh) is "required".
ACTIVATIONS = {
    "relu": ("MOA_ACTIVATION_RELU", None, None),
    "tanh": ("MOA_ACTIVATION_TANH", None, None),
    "sigmoid": ("MOA_ACTIVATION_SIGMOID", None, None),
    "affine": ("MOA_ACTIVATION_AFFINE", "required", "required"),
    "leakyrelu": ("MOA_ACTIVATION_LEAKY_RELU", 0.01, None),
    "thresholdedrelu": ("MOA_ACTIVATION_THRESHOLDED_RELU", 1.0, None),
    "scaledtanh": ("MOA_ACTIVATION_SCALED_TANH", "required", "required"),
    "hardsigmoid": ("MOA_ACTIVATION_HARD_SIGMOID", 0.2, 0.5),
    "elu": ("MOA_ACTIVATION_ELU", 1.0, None),
    "softsign": ("MOA_ACTIVATION_SOFTSIGN", None, None),
    "softplus": ("MOA_ACTIVATION_SOFTPLUS", None, None),
}
# Inputs by position: X W R B sequence_lens initial_h initial_c P (the last two LSTM's).
SEQUENCE_LENS = 4


@dataclass(frozen=True)
class Activation:
    name: str  # lower case, a key of ACTIVATIONS
    alpha: float = 0.0
    beta: float = 0.0


@dataclass(frozen=True)
class Spec:
    """A node's attributes and sizes, checked."""
    cell: str
    steps: int
    batch: int
    input_size: int
    hidden: int
    directions: int
    reverse: bool                 # one direction, stepping from the last input to the first
    layout: int
    clip: float | None
    linear_before_reset: bool
    input_forget: bool


def _refuse(node, feature: str):
    raise MoaEdgeError(f"{node.op} node {node.name!r}: {feature} is not supported")


def _input(node, k: int) -> str:
    return node.inputs[k] if len(node.inputs) > k else ""


def _activations(node, directions: int) -> tuple:
    """Each direction's activation functions, their alphas and betas consumed in order by the
    functions that take them (as onnxruntime reads the lists), defaults where the lists run out."""
    count = len(DEFAULT_ACTIVATIONS[node.op])
    names = [attribute_text(a) for a in node.attrs.get("activations", ())] or list(DEFAULT_ACTIVATIONS[node.op]) * directions
    if len(names) != count * directions:
        _refuse(node, f"activations {names} ({count} per direction are needed for {directions} direction(s))")
    alphas, betas = list(node.attrs.get("activation_alpha", ())), list(node.attrs.get("activation_beta", ()))
    chosen = []
    for name in names:
        if name.lower() not in ACTIVATIONS:
            _refuse(node, f"the activation function {name!r}")
        _, alpha, beta = ACTIVATIONS[name.lower()]
        values = []
        for default, given, what in ((alpha, alphas, "alpha"), (beta, betas, "beta")):
            if default is None:
                values.append(0.0)
            elif given:
                values.append(float(given.pop(0)))
            elif default == "required":
                _refuse(node, f"the activation function {name!r} without its {what}")
            else:
                values.append(float(default))
        chosen.append(Activation(name.lower(), *values))
    return tuple(tuple(chosen[d * count:(d + 1) * count]) for d in range(directions))


def spec(node, graph) -> Spec:
    """The node's attributes and sizes (what the shape rule needs); the weights' shapes checked."""
    tensors, attrs = graph.tensors, node.attrs
    x, w, r = (tensors[_input(node, k)] if _input(node, k) else None for k in range(3))
    if x is None or w is None or r is None:
        _refuse(node, "a node without X, W or R")
    if len(x.shape) != 3 or len(w.shape) != 3 or len(r.shape) != 3:
        _refuse(node, f"X {list(x.shape)}, W {list(w.shape)} and R {list(r.shape)} of other ranks than 3")
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        _refuse(node, f"layout {layout}")
    direction = attribute_text(attrs.get("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        _refuse(node, f"direction {direction!r}")
    directions = 2 if direction == "bidirectional" else 1
    hidden = int(attrs.get("hidden_size", r.shape[-1]))
    steps, batch = (x.shape[1], x.shape[0]) if layout else (x.shape[0], x.shape[1])
    gates = GATES[node.op]
    shapes = {"W": (w, (directions, gates * hidden, x.shape[2])), "R": (r, (directions, gates * hidden, hidden))}
    state = (batch, directions, hidden) if layout else (directions, batch, hidden)
    for k, what, want in ((3, "B", (directions, 2 * gates * hidden)), (5, "initial_h", state),
                          (6, "initial_c", state), (7, "P", (directions, 3 * hidden))):
        if _input(node, k):
            shapes[what] = (tensors[_input(node, k)], want)
    for what, (t, want) in shapes.items():
        if tuple(t.shape) != want:
            _refuse(node, f"{what} of shape {list(t.shape)} (hidden_size {hidden} and {direction} need {list(want)})")
    clip = attrs.get("clip")
    return Spec(node.op, steps, batch, x.shape[2], hidden, directions, direction == "reverse", layout,
                None if clip is None else float(clip), bool(attrs.get("linear_before_reset", 0)),
                bool(attrs.get("input_forget", 0)))


def _check(node, graph, s: Spec) -> tuple:
    """What the kernel does not do is refused: other types than float32, sequences shorter than X
    (or lengths known only at run time), other activation functions. Returns each direction's
    activations: (f,) RNN, (f, g) GRU, (f, g, h) LSTM."""
    names = [n for k, n in enumerate(node.inputs) if n and k != SEQUENCE_LENS] + [n for n in node.outputs if n]
    dtypes.require_dtypes(node, graph, names=names)
    lens = _input(node, SEQUENCE_LENS)
    if lens:
        given = graph.constant(lens)
        if given is None:
            _refuse(node, f"sequence_lens {lens!r} given at run time (only a constant of full-length sequences is)")
        if np.any(np.asarray(given) != s.steps):
            _refuse(node, f"sequences shorter than the {s.steps} steps of X "
                          f"(sequence_lens {np.asarray(given).tolist()})")
    return _activations(node, s.directions)


def infer(node, graph) -> list[TensorType]:
    s = spec(node, graph)
    y = (s.batch, s.steps, s.directions, s.hidden) if s.layout else (s.steps, s.directions, s.batch, s.hidden)
    state = (s.batch, s.directions, s.hidden) if s.layout else (s.directions, s.batch, s.hidden)
    dtype = graph.tensors[node.inputs[0]].dtype
    return [TensorType(y, dtype), TensorType(state, dtype), TensorType(state, dtype)][:len(node.outputs)]


def scratch_bytes(node, graph) -> int:
    """One batch row's hidden and cell state, its gates and one more hidden-sized vector."""
    s = spec(node, graph)
    return dtypes.COMPUTE_DTYPE.itemsize * (GATES[node.op] + 3) * s.hidden


def op_cost(node, graph) -> OpCost:
    """Two flops per weight and step (W against Xt, R against Ht-1), per batch row and direction."""
    s = spec(node, graph)
    moved = operand_bytes(node, graph)
    macs = s.directions * s.steps * s.batch * GATES[node.op] * s.hidden * (s.input_size + s.hidden)
    return OpCost(2 * macs, moved.weight_bytes, moved.activation_bytes)


# ---- the float64 reference, from the spec's equations ----

def _activate(a: Activation, x):
    F = torch.nn.functional
    return {
        "relu": lambda: torch.relu(x),
        "tanh": lambda: torch.tanh(x),
        "sigmoid": lambda: torch.sigmoid(x),
        "affine": lambda: a.alpha * x + a.beta,
        "leakyrelu": lambda: F.leaky_relu(x, a.alpha),
        "thresholdedrelu": lambda: torch.where(x >= a.alpha, x, torch.zeros_like(x)),
        "scaledtanh": lambda: a.alpha * torch.tanh(a.beta * x),
        "hardsigmoid": lambda: torch.clamp(a.alpha * x + a.beta, 0.0, 1.0),
        "elu": lambda: F.elu(x, a.alpha),
        "softsign": lambda: F.softsign(x),
        "softplus": lambda: F.softplus(x),
    }[a.name]()


def evaluate(node, inputs, graph) -> list:
    s = spec(node, graph)
    activations = _check(node, graph, s)
    x, w, r = inputs[:3]
    b, h0, c0, p = (inputs[k] if len(inputs) > k else None for k in (3, 5, 6, 7))
    if s.layout:  # to layout 0: X [S, N, I], states [D, N, H]
        x = x.transpose(0, 1)
        h0, c0 = (None if t is None else t.transpose(0, 1) for t in (h0, c0))
    zeros = torch.zeros(s.batch, s.hidden, dtype=torch.float64)

    def clip(v):
        return v if s.clip is None else torch.clamp(v, -s.clip, s.clip)

    ys, hs, cs = [], [], []
    for d in range(s.directions):
        f, g, h_act = (activations[d] + (None, None))[:3]
        wb, rb = (b[d].chunk(2) if b is not None else (torch.zeros(GATES[s.cell] * s.hidden, dtype=torch.float64),) * 2)
        W, R, Wb, Rb = w[d].chunk(GATES[s.cell]), r[d].chunk(GATES[s.cell]), wb.chunk(GATES[s.cell]), rb.chunk(GATES[s.cell])
        Pi, Po, Pf = p[d].chunk(3) if p is not None else (torch.zeros(s.hidden, dtype=torch.float64),) * 3
        H = h0[d] if h0 is not None else zeros
        C = c0[d] if c0 is not None else zeros
        out = [None] * s.steps
        backwards = d == 1 or s.reverse
        for t in (reversed(range(s.steps)) if backwards else range(s.steps)):
            X = x[t]
            if s.cell == "RNN":
                # Ht = f(Xt*(Wi^T) + Ht-1*(Ri^T) + Wbi + Rbi)
                H = _activate(f, clip(X @ W[0].T + H @ R[0].T + Wb[0] + Rb[0]))
            elif s.cell == "GRU":
                (Wz, Wr, Wh), (Rz, Rr, Rh), (Wbz, Wbr, Wbh), (Rbz, Rbr, Rbh) = W, R, Wb, Rb
                z = _activate(f, clip(X @ Wz.T + H @ Rz.T + Wbz + Rbz))
                r_ = _activate(f, clip(X @ Wr.T + H @ Rr.T + Wbr + Rbr))
                if s.linear_before_reset:
                    h = _activate(g, clip(X @ Wh.T + r_ * (H @ Rh.T + Rbh) + Wbh))
                else:
                    h = _activate(g, clip(X @ Wh.T + (r_ * H) @ Rh.T + Rbh + Wbh))
                H = (1 - z) * h + z * H
            else:
                (Wi, Wo, Wf, Wc), (Ri, Ro, Rf, Rc), (Wbi, Wbo, Wbf, Wbc), (Rbi, Rbo, Rbf, Rbc) = W, R, Wb, Rb
                i = _activate(f, clip(X @ Wi.T + H @ Ri.T + Pi * C + Wbi + Rbi))
                forget = 1 - i if s.input_forget else _activate(f, clip(X @ Wf.T + H @ Rf.T + Pf * C + Wbf + Rbf))
                c = _activate(g, clip(X @ Wc.T + H @ Rc.T + Wbc + Rbc))
                C = forget * C + i * c
                o = _activate(f, clip(X @ Wo.T + H @ Ro.T + Po * C + Wbo + Rbo))
                H = o * _activate(h_act, C)
            out[t] = H
        ys.append(torch.stack(out))
        hs.append(H)
        cs.append(C)
    y, y_h, y_c = torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)  # [S, D, N, H], [D, N, H]
    if s.layout:
        y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
    return [y, y_h, y_c][:len(node.outputs)]


# ---- the C call ----

def _c_activation(a: Activation | None) -> str:
    a = a or Activation("tanh")  # an activation the cell does not use
    return f"{{{ACTIVATIONS[a.name][0]}, {c_float_short(a.alpha)}, {c_float_short(a.beta)}}}"


def emit(node, ctx) -> EmittedUnit:
    s = spec(node, ctx.graph)
    activations = _check(node, ctx.graph, s)

    def each_direction(k: int) -> str:
        return "{" + ", ".join(_c_activation(acts[k] if k < len(acts) else None) for acts in activations) + "}"
    fields = [("cell", f"MOA_RECURRENT_{s.cell}"), ("steps", f"{s.steps}u"), ("batch", f"{s.batch}u"),
              ("input_size", f"{s.input_size}u"), ("hidden_size", f"{s.hidden}u"),
              ("directions", f"{s.directions}u"), ("reverse", str(int(s.reverse))), ("layout", str(s.layout)),
              ("clipped", str(int(s.clip is not None))), ("clip", c_float_short(s.clip or 0.0)),
              ("linear_before_reset", str(int(s.linear_before_reset))), ("input_forget", str(int(s.input_forget))),
              ("f", each_direction(0)), ("g", each_direction(1)), ("h", each_direction(2))]

    def at(name: str) -> str:
        return ctx.where[name] if name else "NULL"
    outputs = list(node.outputs) + [""] * (3 - len(node.outputs))
    buffers = [("x", at(node.inputs[0])), ("w", at(node.inputs[1])), ("r", at(node.inputs[2])),
               ("b", at(_input(node, 3))), ("initial_h", at(_input(node, 5))), ("initial_c", at(_input(node, 6))),
               ("p", at(_input(node, 7))), ("y", at(outputs[0])), ("y_h", at(outputs[1])), ("y_c", at(outputs[2]))]
    direction = "bidirectional" if s.directions == 2 else "reverse" if s.reverse else "forward"
    lines = [f"    {{ /* {c_comment_text(node.name)}: {node.op}, {direction}, {s.steps} steps, hidden {s.hidden} */",
             "        const moa_recurrent_params params = {",
             *[f"            .{name} = {value}," for name, value in fields],
             "        };",
             "        const moa_recurrent_tensors tensors = {",
             *[f"            .{name} = {value}," for name, value in buffers],
             "        };",
             check_status(f"moa_recurrent_f32(&params, &tensors, {ctx.scratch})", indent="        ").rstrip("\n"),
             "    }"]
    return EmittedUnit("\n".join(lines) + "\n", declarations=DECLARATIONS)
