"""Whole transformer models, as users export them, become one C program each and run on the
host and the emulated boards within tolerance of the PyTorch float64 executor; the
original file run by onnxruntime checks the import and the rewrites (issue 5, item 3)."""
import numpy as np
import pytest

from conftest import BOARDS, require_board
from moa_edge.pipeline import load_graph, validate
from moa_edge.plan.arena import shared_storage
from zoo import ZOO

# Zoo entries of each family and exporter; every HF zoo export (24) validates on the host.
WHOLE_MODELS = ["bert_eager_torchscript17", "bert_sdpa_dynamo18", "bert_sdpa_dynamo23", "gpt2_sdpa_dynamo18",
                "gpt2_eager_dynamo23", "llama_sdpa_dynamo23", "vit_eager_dynamo23",
                "encoder_layer_dynamo18", "vit_sdpa_dynamo18", "distilbert_sdpa_dynamo18", "whisper_encoder_sdpa_dynamo23"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    cache = {}

    def get(name):
        if name not in cache:
            path = folder / f"{name}.onnx"
            inputs = ZOO[name].build(path)
            np.savez(folder / f"{name}.npz", **inputs)
            cache[name] = (path, folder / f"{name}.npz")
        return cache[name]
    return get


@pytest.mark.board
@pytest.mark.parametrize("name", WHOLE_MODELS)
def test_whole_model_on_every_board(name, exported):
    boards = [require_board(b) for b in BOARDS]
    path, inputs = exported(name)
    report = validate(path, boards, inputs_path=inputs)
    assert report["importer_check"]["ok"], report["importer_check"]
    for board, result in report["boards"].items():
        assert result["ok"], (board, result)
    assert report["ok"]


def test_attention_output_takes_the_storage_of_q(exported):
    """BERT's attention output has Q's layout and Q dies there, so the arena writes it over Q
    (as FlashAttention writes O over Q); test_whole_model_on_every_board checks the results."""
    path, _ = exported("bert_sdpa_dynamo18")
    graph = load_graph(path)
    storage = shared_storage(graph)
    blocks = [n for n in graph.nodes if n.op == "MoaAttention"]
    assert blocks and all(storage.get(n.outputs[0]) == n.inputs[0] for n in blocks)


# The attention forms issue 17 fuses: one K/V head broadcast in the MatMuls (Falcon's multi-query),
# scores reshaped to 4-D for the mask and back around the Softmax (XGLM).
FUSED_FORMS = ["falcon_eager_dynamo18", "xglm_eager_torchscript17"]


@pytest.mark.parametrize("name", FUSED_FORMS)
def test_multi_query_and_reshaped_score_forms_are_fused_and_validate(name, exported):
    path, inputs = exported(name)
    ops = [n.op for n in load_graph(path, {k: v.shape for k, v in np.load(inputs).items()}).nodes]
    assert ops.count("MoaAttention") == 2 and "Softmax" not in ops, sorted(set(ops))
    report = validate(path, [require_board("host")], inputs_path=inputs)
    assert report["importer_check"]["ok"] and report["ok"], report
