"""RNN, GRU and LSTM (ops/recurrent.py, c_runtime/src/recurrent.c) against onnxruntime: torch's
LSTM and GRU (2 layers, bidirectional, batch_first) exported to ONNX, and single nodes with the
attributes the backend node cases leave out (clip, input_forget, linear_before_reset, peepholes,
the spec's other activations, layout 1, some outputs left out), converted, built and run on the
host, and the torch reference too. onnxruntime does not run layout 1: a batchwise node is checked
against its layout-0 twin on the transposed input. A varying sequence_lens is refused."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort
import pytest

from conftest import require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.reference import run_reference
from moa_edge.harness.runner import check_inputs, run
from moa_edge.pipeline import convert, load_graph

S, N, I, H = 5, 2, 3, 4  # steps, batch, input and hidden size of the single-node cases
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
# name, op, attributes, optional inputs (B always), outputs kept (of Y, Y_h, Y_c)
NODES = [
    ("lstm_clip_peepholes_reverse_batchwise", "LSTM", {"clip": 0.5, "direction": "reverse", "layout": 1},
     ("initial_h", "initial_c", "P"), ("Y", "Y_h", "Y_c")),
    ("lstm_input_forget_bidirectional", "LSTM", {"input_forget": 1, "direction": "bidirectional"}, ("P",),
     ("Y", "", "Y_c")),
    ("lstm_activations_full_sequence_lens", "LSTM",
     {"activations": ["HardSigmoid", "Elu", "Softsign"], "activation_alpha": [0.3, 0.9], "activation_beta": [0.4]},
     ("sequence_lens",), ("", "Y_h")),
    ("gru_linear_before_reset_clip_bidirectional_batchwise", "GRU",
     {"linear_before_reset": 1, "clip": 0.7, "direction": "bidirectional", "layout": 1}, ("initial_h",), ("Y", "Y_h")),
    ("gru_activations_reverse", "GRU", {"activations": ["HardSigmoid", "ScaledTanh"], "direction": "reverse",
                                        "activation_alpha": [0.3, 0.9], "activation_beta": [0.4, 1.5]}, (), ("Y",)),
    ("rnn_relu_leaky_relu_bidirectional", "RNN", {"activations": ["Relu", "LeakyRelu"], "activation_alpha": [0.3],
                                                  "direction": "bidirectional"}, ("initial_h",), ("Y", "Y_h")),
    ("rnn_affine", "RNN", {"activations": ["Affine"], "activation_alpha": [0.3], "activation_beta": [0.4]}, (),
     ("Y", "Y_h")),
    ("rnn_softplus", "RNN", {"activations": ["Softplus"]}, (), ("Y", "Y_h")),
]


def _attribute_models(rng) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    """Every node of NODES in one model (batchwise ones read X_batchwise), and its twin for
    onnxruntime: layout 0 throughout, batchwise outputs transposed back by Transpose nodes."""
    x = rng.standard_normal((S, N, I)).astype(np.float32)
    feeds = {"X": x, "X_batchwise": x.transpose(1, 0, 2).copy()}
    ours, twin, inits, outputs = [], [], [], []
    for name, op, attrs, optional, kept in NODES:
        dirs, gates, batchwise = 2 if attrs.get("direction") == "bidirectional" else 1, GATES[op], attrs.get("layout")
        values = {"W": rng.standard_normal((dirs, gates * H, I)), "R": rng.standard_normal((dirs, gates * H, H)),
                  "B": rng.standard_normal((dirs, 2 * gates * H)),
                  "initial_h": rng.standard_normal((dirs, N, H)), "initial_c": rng.standard_normal((dirs, N, H)),
                  "P": rng.standard_normal((dirs, 3 * H)), "sequence_lens": np.full(N, S, np.int32)}
        inputs = ["W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
        inputs = [k if k in ("W", "R", "B") or k in optional else "" for k in inputs]
        while not inputs[-1]:
            inputs.pop()
        for k in filter(None, inputs):
            value = values[k].astype(np.int32 if k == "sequence_lens" else np.float32)
            inits.append(numpy_helper.from_array(value, f"{name}_{k}"))
            if batchwise and k.startswith("initial_"):  # ours reads [N, D, H]
                inits.append(numpy_helper.from_array(value.transpose(1, 0, 2).copy(), f"{name}_{k}_batchwise"))
        names = [f"{name}_{k}" if k else "" for k in inputs]
        ours_inputs = [f"{n}_batchwise" if batchwise and "initial_" in n else n for n in names]
        outs = [f"{name}_{k}" if k else "" for k in kept]
        twin_outs = [f"{o}_twin" if o and batchwise else o for o in outs]
        ours.append(helper.make_node(op, ["X_batchwise" if batchwise else "X", *ours_inputs], outs, name=name,
                                     hidden_size=H, **attrs))
        twin.append(helper.make_node(op, ["X", *names], twin_outs, name=name, hidden_size=H,
                                     **{**attrs, "layout": 0}))
        for out, twin_out in zip(outs, twin_outs):
            if out and batchwise:  # Y [S, D, N, H] -> [N, S, D, H]; Y_h, Y_c [D, N, H] -> [N, D, H]
                twin.append(helper.make_node("Transpose", [twin_out], [out], perm=[2, 0, 1, 3] if out.endswith("_Y")
                                             else [1, 0, 2]))
        outputs += [o for o in outs if o]

    def model(nodes, inputs):
        graph = helper.make_graph(nodes, "recurrent", [helper.make_tensor_value_info(k, TensorProto.FLOAT, feeds[k].shape)
                                                       for k in inputs],
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                                  initializer=[t for t in inits if any(t.name in n.input for n in nodes)])
        return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]),
                                                 strict_mode=True)
    return model(ours, ["X", "X_batchwise"]), model(twin, ["X"]), feeds


def _onnxruntime(path, feeds) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip([o.name for o in session.get_outputs()],
                    session.run(None, {k: v for k, v in feeds.items() if k in wanted})))


def _host_outputs(path, folder, feeds) -> dict:
    board = require_board("host")
    report = convert(path, folder)
    outputs, _ = run(build(folder, board), board, report["io"], check_inputs(report["io"], feeds, path.name))
    return outputs


def _assert_close(got: dict, want: dict):
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_torch_lstm_and_gru_match_onnxruntime_on_the_host(tmp_path):
    """torch.nn.LSTM into torch.nn.GRU, each 2 layers, bidirectional, batch_first, as torch's
    exporter writes them (one ONNX node per layer, directions reshaped between them)."""
    torch = pytest.importorskip("torch")

    class KeywordSpotter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(10, 16, num_layers=2, bidirectional=True, batch_first=True)
            self.gru = torch.nn.GRU(32, 8, num_layers=2, bidirectional=True, batch_first=True)

        def forward(self, x):
            y, (h, c) = self.lstm(x)
            z, g = self.gru(y)
            return z, g, h, c
    torch.manual_seed(0)
    x = torch.randn(2, 7, 10)
    path = tmp_path / "spotter.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(KeywordSpotter().eval(), (x,), str(path), dynamo=False, input_names=["x"],
                          output_names=["z", "g", "h", "c"])
    assert [n.op_type for n in onnx.load(path).graph.node if n.op_type in ("LSTM", "GRU")] == ["LSTM"] * 2 + ["GRU"] * 2
    feeds = {"x": x.numpy()}
    want = _onnxruntime(path, feeds)
    _assert_close(_host_outputs(path, tmp_path / "project", feeds), want)
    _assert_close({k: v.astype(np.float32) for k, v in run_reference(load_graph(path), feeds).items()}, want)


def test_the_attributes_match_onnxruntime_on_the_host(tmp_path):
    ours, twin, feeds = _attribute_models(np.random.default_rng(0))
    onnx.save(ours, tmp_path / "ours.onnx")
    onnx.save(twin, tmp_path / "twin.onnx")
    want = _onnxruntime(tmp_path / "twin.onnx", feeds)
    graph = load_graph(tmp_path / "ours.onnx")
    assert sorted(n.op for n in graph.nodes) == sorted(op for _, op, *_ in NODES)
    _assert_close({k: v.astype(np.float32) for k, v in run_reference(graph, feeds).items()}, want)
    _assert_close(_host_outputs(tmp_path / "ours.onnx", tmp_path / "project", feeds), want)


def _lstm_with_sequence_lens(lens: np.ndarray | None) -> onnx.ModelProto:
    """One LSTM whose sequence_lens is the constant `lens`, or a graph input when None."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 4 * H, k)).astype(np.float32), name)
             for name, k in (("W", I), ("R", H))]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, (S, N, I))]
    if lens is None:
        inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, (N,)))
    else:
        inits.append(numpy_helper.from_array(lens.astype(np.int32), "lens"))
    node = helper.make_node("LSTM", ["X", "W", "R", "", "lens"], ["Y"], name="lstm", hidden_size=H)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializer=inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]))


@pytest.mark.parametrize("lens, message", [(np.array([S, S - 2]), "sequences shorter than the 5 steps of X"),
                                           (None, "sequence_lens 'lens' given at run time")])
def test_a_varying_sequence_lens_is_refused(lens, message, tmp_path):
    onnx.save(_lstm_with_sequence_lens(lens), tmp_path / "m.onnx")
    with pytest.raises(MoaEdgeError, match=f"LSTM node 'lstm': {message}.* is not supported"):
        convert(tmp_path / "m.onnx", tmp_path / "project")
