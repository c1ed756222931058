"""Running one of onnx's own backend node tests through convert -> generated C -> host run,
shared by the files that check an op family against them.

Cases that need something the converter cannot do are listed by each file in a NOT_YET
dict (name pattern -> the missing feature): they must be refused with one clear error and
are reported as xfail, so a file fails the day one of them starts to pass."""
import re

import numpy as np
import onnx
from onnx import numpy_helper
import pytest

from conftest import require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.runner import run
from moa_edge.ir import dtypes
from moa_edge.pipeline import convert


def not_yet(name: str, missing: dict[str, str]) -> str | None:
    return next((why for pattern, why in missing.items() if re.search(pattern, name)), None)


def arrays(values) -> list:
    """A data set's tensors as arrays (onnx's loader leaves bfloat16 ones as TensorProto)."""
    return [numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for v in values]


def with_constant_inputs(case, positions) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The case's model with the node inputs at `positions` (axes, pads, starts and ends,
    split sizes, ratios: parameters a real export holds as constants, but the backend models
    pass as graph inputs) turned into initializers holding the test's own values; and the
    remaining feeds."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    (inputs, _), = case.data_sets
    feeds = {vi.name: x for vi, x in zip(case.model.graph.input, arrays(inputs))}
    node = model.graph.node[0]
    for k in positions:
        name = node.input[k] if k < len(node.input) else ""
        if name in feeds:
            model.graph.initializer.append(numpy_helper.from_array(feeds.pop(name), name))
    kept = [vi for vi in model.graph.input if vi.name in feeds]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model, feeds


# Two units in the last place of a half, relative (at most): a case computed in the half type rounds
# its intermediates (scores, softmax weights) to it, the runtime computes in float32 and rounds once.
HALF_ULPS = {"float16": 2.0 ** -9, "bfloat16": 2.0 ** -6}


def run_case(name: str, model: onnx.ModelProto, feeds: dict, expected: list, tmp_path, missing: dict[str, str],
             rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Convert, build and run `model` on the host; compare each output with `expected`
    (floats within rtol/atol, halves within two units in their last place too, everything else exactly)."""
    board = require_board("host")
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    reason = not_yet(name, missing)
    try:
        report = convert(path, tmp_path / "project")
    except MoaEdgeError as exc:
        if reason:
            message = str(exc).splitlines()[0]
            assert "support" in message, message  # names the feature or type it cannot do
            pytest.xfail(f"not yet: {reason} ({message})")
        raise
    assert reason is None, f"{name} now converts: remove it from NOT_YET ({reason})"
    outputs, _ = run(build(tmp_path / "project", board), board, report["io"], feeds)
    for vi, want in zip(model.graph.output, expected):
        got, record = outputs[vi.name], dtypes.from_numpy(np.asarray(want).dtype)
        if record is not None and record.is_float:
            np.testing.assert_allclose(got.astype(np.float64), np.asarray(want, np.float64),
                                       rtol=max(rtol, HALF_ULPS.get(record.name, 0.0)), atol=atol,
                                       err_msg=f"{name}: {vi.name}")
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{name}: {vi.name}")


def run_backend_case(name: str, case, tmp_path, missing: dict[str, str], rtol: float = 1e-5,
                     atol: float = 1e-6) -> None:
    """One backend case as onnx ships it: its own inputs, its own expected outputs."""
    (inputs, expected), = case.data_sets
    feeds = {vi.name: x for vi, x in zip(case.model.graph.input, arrays(inputs))}
    run_case(name, case.model, feeds, arrays(expected), tmp_path, missing, rtol=max(case.rtol, rtol),
             atol=max(case.atol, atol))
