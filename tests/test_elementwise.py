"""Element-wise corner cases the backend node tests do not reach: integers past float32's
24-bit mantissa, tensors named like the generated code's locals, types the runtime lacks."""
import numpy as np
import onnx
from onnx import TensorProto as T, helper, numpy_helper
import onnxruntime as ort
import pytest

from conftest import BOARDS, require_board
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.runner import run
from moa_edge.pipeline import convert


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run_against_onnxruntime(model, feeds, board_name, tmp_path):
    board = require_board(board_name)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    report = convert(path, tmp_path / "p")
    got, _ = run(build(tmp_path / "p", board), board, report["io"], feeds)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    for out, expected in zip(model.graph.output, want):
        np.testing.assert_array_equal(got[out.name], expected, err_msg=out.name)


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
def test_integers_do_not_round_through_float(board_name, tmp_path):
    """int64 Pow, Clip and Abs on values past 2^24 (float32 would round them)."""
    big = 2 ** 30 + 1
    i64 = lambda n, s: helper.make_tensor_value_info(n, T.INT64, s)  # noqa: E731
    nodes = [helper.make_node("Pow", ["x", "e"], ["pow"]), helper.make_node("Clip", ["x", "lo"], ["clip"]),
             helper.make_node("Abs", ["neg"], ["abs"])]
    model = _model(nodes, [i64("x", [4]), i64("e", [4]), i64("neg", [4])],
                   [i64("pow", [4]), i64("clip", [4]), i64("abs", [4])],
                   [numpy_helper.from_array(np.array(0, np.int64), "lo")])
    feeds = {"x": np.array([3, 5, 7, big], np.int64), "e": np.array([20, 13, 11, 1], np.int64),
             "neg": np.array([-big, 4, -(2 ** 40) - 3, 0], np.int64)}
    _run_against_onnxruntime(model, feeds, board_name, tmp_path)


@pytest.mark.board
def test_tensors_named_like_the_generated_locals(tmp_path):
    """Inputs `a`, `b` and an output `i0` are renamed in C, not shadowed by the loop's locals."""
    f = lambda n: helper.make_tensor_value_info(n, T.FLOAT, [2, 3])  # noqa: E731
    model = _model([helper.make_node("Add", ["b", "a"], ["i0"])], [f("a"), f("b")], [f("i0")])
    feeds = {"a": np.ones((2, 3), np.float32), "b": np.full((2, 3), 3.0, np.float32)}
    _run_against_onnxruntime(model, feeds, "host", tmp_path)


@pytest.mark.parametrize("to", [T.STRING])
def test_a_type_the_runtime_lacks_is_one_clear_error(to, tmp_path):
    f = lambda n: helper.make_tensor_value_info(n, T.FLOAT, [4])  # noqa: E731
    model = _model([helper.make_node("Cast", ["x"], ["d"], to=to, name="widen"),
                    helper.make_node("Cast", ["d"], ["y"], to=T.FLOAT)], [f("x")], [f("y")])
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(MoaEdgeError, match="node 'widen' \\(Cast\\) makes 'd'"):
        convert(tmp_path / "m.onnx", tmp_path / "p")
    assert not (tmp_path / "p").exists()


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
def test_integer_division_by_zero_does_not_trap(board_name, tmp_path):
    """int64 and int32 Div: C truncation where onnxruntime answers (checked against it), and
    the documented results where C would trap: x / 0 = 0 and INT_MIN / -1 = INT_MIN (numpy's
    results; onnxruntime stops on the first and itself traps on the second)."""
    board = require_board(board_name)
    nodes = [helper.make_node("Div", ["a", "b"], ["q"]), helper.make_node("Div", ["c", "d"], ["r"])]
    spec = lambda n, t: helper.make_tensor_value_info(n, t, [8])  # noqa: E731
    model = _model(nodes, [spec("a", T.INT64), spec("b", T.INT64), spec("c", T.INT32), spec("d", T.INT32)],
                   [spec("q", T.INT64), spec("r", T.INT32)])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    report = convert(path, tmp_path / "p")
    defined = np.array([False, False, False, False, True, True, True, True])
    feeds = {}
    for a, b, dtype in (("a", "b", np.int64), ("c", "d", np.int32)):
        low = np.iinfo(dtype).min
        feeds[a] = np.array([7, -7, 2 ** 20 + 3, low, 5, -5, 0, low], dtype)
        feeds[b] = np.array([2, 2, -3, 7, 0, 0, 0, -1], dtype)
    got, _ = run(build(tmp_path / "p", board), board, report["io"], feeds)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    safe = {k: np.where(defined, 1, v).astype(v.dtype) if k in "bd" else v for k, v in feeds.items()}
    want = {k: v[~defined] for k, v in zip(["q", "r"], session.run(None, safe))}
    with np.errstate(divide="ignore", over="ignore"):
        for out, a, b in (("q", "a", "b"), ("r", "c", "d")):
            np.testing.assert_array_equal(got[out][~defined], want[out], err_msg=out)
            np.testing.assert_array_equal(got[out][defined], feeds[a][defined] // feeds[b][defined], err_msg=out)


@pytest.mark.board
def test_neutral_operands_leave_the_other_operand(tmp_path):
    """x * 1 (keeping -0, inf and NaN), x OR False widened to a larger shape, True AND x:
    each is x (or x expanded), equal to onnxruntime bit for bit."""
    from moa_edge.pipeline import load_graph
    f = lambda n, s: helper.make_tensor_value_info(n, T.FLOAT, s)  # noqa: E731
    b = lambda n, s: helper.make_tensor_value_info(n, T.BOOL, s)  # noqa: E731
    nodes = [helper.make_node("Mul", ["x", "ones"], ["times_one"]), helper.make_node("Or", ["m", "none"], ["wide"]),
             helper.make_node("And", ["all", "m"], ["same"])]
    model = _model(nodes, [f("x", [2, 3]), b("m", [1, 3])], [f("times_one", [2, 3]), b("wide", [2, 2, 3]), b("same", [1, 3])],
                   [numpy_helper.from_array(np.ones(3, np.float32), "ones"),
                    numpy_helper.from_array(np.zeros((2, 2, 1), bool), "none"),
                    numpy_helper.from_array(np.ones((1, 3), bool), "all")])
    onnx.save(model, tmp_path / "n.onnx")
    assert not {"Mul", "Or", "And"} & {n.op for n in load_graph(tmp_path / "n.onnx").nodes}
    feeds = {"x": np.array([[-0.0, np.inf, np.nan], [1.5, -2.0, 3.0]], np.float32), "m": np.array([[True, False, True]])}
    _run_against_onnxruntime(model, feeds, "host", tmp_path)


def test_integer_arithmetic_wraps_and_float_to_integer_casts_saturate(tmp_path):
    """Add, Sub, Mul, Neg and Abs at each type's ends wrap as ONNX's reference evaluator computes
    them (C's signed overflow would be undefined); a Cast of NaN, inf or a value past an integer
    type's range gives 0 or the range's end instead of C's undefined conversion."""
    from onnx.reference import ReferenceEvaluator
    nodes, inputs, outputs, feeds = [], [], [], {}
    for elem, np_type in ((T.UINT32, np.uint32), (T.UINT64, np.uint64), (T.INT32, np.int32), (T.INT8, np.int8),
                          (T.INT64, np.int64)):
        n = T.DataType.Name(elem).lower()
        inputs += [helper.make_tensor_value_info(f"a_{n}", elem, [4]), helper.make_tensor_value_info(f"b_{n}", elem, [4])]
        for op in ("Abs", "Neg", "Add", "Sub", "Mul"):
            if op == "Neg" and n.startswith("uint"):
                continue
            nodes.append(helper.make_node(op, [f"a_{n}"] + ([f"b_{n}"] if op in ("Add", "Sub", "Mul") else []),
                                          [f"{op}_{n}"]))
            outputs.append(helper.make_tensor_value_info(f"{op}_{n}", elem, [4]))
        info = np.iinfo(np_type)
        feeds[f"a_{n}"] = np.array([info.max, info.min, 3, info.max // 2 + 1], np_type)
        feeds[f"b_{n}"] = np.array([info.max, 1, info.max, 7], np_type)
    inputs.append(helper.make_tensor_value_info("f", T.FLOAT, [4]))
    feeds["f"] = np.array([np.nan, np.inf, -1e30, 1e30], np.float32)
    for elem in (T.INT32, T.UINT8):
        name = f"cast_{T.DataType.Name(elem).lower()}"
        nodes.append(helper.make_node("Cast", ["f"], [name], to=elem))
        outputs.append(helper.make_tensor_value_info(name, elem, [4]))
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "m.onnx")
    board = require_board("host")
    io = convert(tmp_path / "m.onnx", tmp_path / "p")["io"]
    got, _ = run(build(tmp_path / "p", board), board, io, feeds)
    with np.errstate(over="ignore"):
        want = dict(zip([o.name for o in outputs], ReferenceEvaluator(model).run(None, feeds)))
    for name, value in want.items():
        if name.startswith("cast_"):  # numpy's own conversion of these is undefined too: the ends instead
            info = np.iinfo(value.dtype)
            value = np.array([0, info.max, info.min, info.max], value.dtype)
        assert np.array_equal(got[name], value), (name, got[name], value)
