"""Export every ZOO model and print, one line each, which ops surround its attention blocks.

    .venv/bin/python tests/zoo_survey.py [name-substring ...]

Columns: name, export seconds, node count, attention blocks found as Softmax + Attention over the
expected count, whether onnxruntime loads and runs the model, then whole-graph counts of the op
types that occur in and around attention (zero counts left out). Failures are listed again at the end.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
import sys
import tempfile
import time

import onnx
import onnxruntime as ort

from zoo import ZOO, ZooModel

SURVEYED_OPS = ["Attention", "Softmax", "MatMul", "Gemm", "Mul", "Div", "Add", "Sqrt", "Transpose", "Reshape",
                "Unsqueeze", "Expand", "Concat", "Split", "Gather", "Slice", "Shape", "Cast", "Where", "IsNaN",
                "Trilu", "Equal", "And", "GatherND", "LayerNormalization", "RMSNormalization"]


def run_in_ort(path: Path, inputs) -> str:
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session.run(None, inputs)
    except Exception as error:  # report every load or run failure, whatever its type
        return f"FAIL {type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return "ok"


def survey(model: ZooModel, folder: Path) -> tuple[str, str | None]:
    """The report line for one model and, if anything failed, why."""
    path = folder / f"{model.name}.onnx"
    start = time.perf_counter()
    try:
        inputs = model.build(path)
    except Exception as error:
        reason = f"export FAIL {type(error).__name__}: {str(error).splitlines()[0][:160]}"
        return f"{model.name:32s} {reason}", reason
    seconds = time.perf_counter() - start
    ops = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    blocks = ops["Softmax"] + ops["Attention"]
    ort_status = run_in_ort(path, inputs)
    histogram = " ".join(f"{op}={ops[op]}" for op in SURVEYED_OPS if ops[op])
    line = (f"{model.name:32s} {seconds:4.1f}s nodes={sum(ops.values()):<4d} blocks={blocks}/{model.layers} "
            f"ort={ort_status} | {histogram}")
    if ort_status != "ok":
        return line, f"onnxruntime {ort_status}"
    if blocks != model.layers:
        return line, f"{blocks} Softmax/Attention nodes for {model.layers} attention blocks"
    return line, None


def main(filters: list[str]) -> int:
    models = [model for name, model in ZOO.items() if not filters or any(f in name for f in filters)]
    failures = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moa-zoo-") as folder:
        for model in models:
            line, failure = survey(model, Path(folder))
            print(line, flush=True)
            if failure:
                failures[model.name] = failure
    print(f"\n{len(models)} models in {time.perf_counter() - start:.0f}s, {len(failures)} failed")
    for name, reason in failures.items():
        print(f"  {name}: {reason}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
