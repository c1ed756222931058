"""Every attention block of real exporter output is found and rewritten exactly (issue 4, item 6).

For each zoo model (torch 2.13 dynamo at opsets 18 and 23, TorchScript at 17; SDPA,
nn.MultiheadAttention, nn.TransformerEncoderLayer, BERT, GPT-2, Llama with GQA, ViT, DistilBERT and
the Whisper encoder (dynamo only); BERT
fused by onnxruntime's transformer optimizer into com.microsoft Attention or MultiHeadAttention):
one MoaAttention per layer, no Softmax left, and the rewritten graph's outputs equal
onnxruntime's on the original file."""
import numpy as np
import onnxruntime as ort
import pytest

from moa_edge.harness.reference import run_reference
from moa_edge.pipeline import load_graph
from zoo import ZOO


@pytest.mark.parametrize("entry", sorted(ZOO), ids=str)
def test_every_block_detected_and_equal_to_onnxruntime(entry, tmp_path):
    model = ZOO[entry]
    path = tmp_path / f"{entry}.onnx"
    inputs = model.build(path)
    graph = load_graph(path, {name: value.shape for name, value in inputs.items()}, strict=False)
    ops = [n.op for n in graph.nodes]
    assert ops.count("MoaAttention") == model.layers, sorted(set(ops))
    assert "Softmax" not in ops and not [op for op in ops if op.endswith("Attention") and op != "MoaAttention"]
    ours = run_reference(graph, inputs)
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)
    for (name, got), want in zip(ours.items(), theirs):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5, err_msg=name)
