"""float16 and bfloat16 models (issue 14), computed in float32 (passes/half.py): the model's half
inputs and outputs stay halves at the C API, converted by moa/half.h.

- The conversions against numpy (float16) and ml_dtypes (bfloat16), on the host under ASan/UBSan and
  on the emulated boards: every half widened, and narrowing at every half, every midpoint between
  two halves (the ties) and a float32 ulp either side, at the overflow and subnormal edges, and on
  random bit patterns; NaN stays NaN with its sign. The same for the float16-weight panel kernels
  of every ISA variant (convert --weights fp16) on every half.
- A transformer block exported by torch.onnx from `.half()` and `.bfloat16()`: within one ulp (of the
  half, at each value) of onnxruntime on the file's float32 twin (every half initializer, input and
  output made float32: the same values, exactly; the file has no Cast) rounded once, which is what
  computing in float32 promises; and within two ulps of max |y| of onnxruntime on the float16 file
  and of the ONNX reference evaluator on the file (they compute op by op in the half type;
  onnxruntime has no bfloat16 kernels for these ops).
- A Cast to a half in the middle of a float32 graph rounds there, as onnxruntime does.
- onnx's own Cast cases to and from float16 and bfloat16 (stamped opset 28, run at 25: Cast is the
  same op), exactly.
"""
import subprocess
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.backend.test.loader import load_model_tests
from onnx.reference import ReferenceEvaluator
import onnxruntime as ort
import pytest
import torch

from backend_cases import arrays
from conftest import BOARDS, SANITIZE, require_board
from halves import BFLOAT16, float32_twin, ulp
from moa_edge import C_RUNTIME_DIR
from moa_edge.harness.build import build
from moa_edge.harness.runner import run
from moa_edge.pipeline import convert
from moa_edge.target import load_board
from test_matmul import GEMM_SOURCES, GEMM_VARIANTS

HALVES = {"float16": (np.dtype(np.float16), torch.float16), "bfloat16": (BFLOAT16, torch.bfloat16)}

HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "moa/half.h"

/* stdin: n float32 bit patterns. stdout: their float16 bits, their bfloat16 bits (n each), then the
 * float32 bits of every float16 and of every bfloat16 pattern 0..65535. */
int main(void)
{
    uint32_t bits;
    uint16_t half;
    uint32_t h;
    while (fread(&bits, sizeof bits, 1, stdin) == 1) {
        const float f = moa_f32_from_bits(bits);
        half = moa_f32_to_f16(f);
        fwrite(&half, sizeof half, 1, stdout);
        half = moa_f32_to_bf16(f);
        fwrite(&half, sizeof half, 1, stdout);
    }
    for (h = 0; h < 65536; h++) {
        bits = moa_f32_bits(moa_f16_to_f32((uint16_t)h));
        fwrite(&bits, sizeof bits, 1, stdout);
    }
    for (h = 0; h < 65536; h++) {
        bits = moa_f32_bits(moa_bf16_to_f32((uint16_t)h));
        fwrite(&bits, sizeof bits, 1, stdout);
    }
    return 0;
}
"""


def _narrowing_inputs() -> np.ndarray:
    """float32 values where rounding to a half can go wrong: each half, each midpoint between
    neighbouring halves (exact in float32) and the float32 values either side of it, the edges
    (65504, 65520, 2^-14, 2^-24, 2^-25), infinities, NaNs with payloads, random bit patterns."""
    values = []
    for dtype in (np.float16, BFLOAT16):
        every = np.arange(65536, dtype=np.uint16).view(dtype).astype(np.float32)
        finite = np.unique(every[np.isfinite(every)])  # ascending
        middle = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)
        values += [every, middle, np.nextafter(middle, np.float32(np.inf)), np.nextafter(middle, np.float32(-np.inf))]
    edges = np.array([65504, 65519.996, 65520, 65536, 2.0 ** -14, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26], np.float32)
    values += [edges, -edges, np.nextafter(edges, np.float32(0)), np.nextafter(edges, np.float32(np.inf))]
    nans = np.array([0x7F800001, 0x7FC00000, 0xFFC00123, 0x7FFFFFFF, 0x7F802000, 0x7F800000, 0xFF800000], np.uint32)
    random = np.random.default_rng(0).integers(0, 2 ** 32, 200_000, dtype=np.uint32)
    values += [nans.view(np.float32), random.view(np.float32)]
    return np.concatenate(values)


def _same(got: np.ndarray, want: np.ndarray, what: str, nan_sign: bool = True) -> None:
    """Bit for bit, except that a NaN need only be a NaN of the same sign (of any sign without
    nan_sign: a RISC-V conversion gives the canonical NaN, +0x7fc00000)."""
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    nan = np.isnan(want64)
    assert np.array_equal(np.isnan(got64), nan), what
    assert np.array_equal(np.signbit(got64)[~nan], np.signbit(want64)[~nan]), what
    assert not nan_sign or np.array_equal(np.signbit(got64)[nan], np.signbit(want64)[nan]), what
    bits = {2: np.uint16, 4: np.uint32}[got.dtype.itemsize]
    wrong = np.flatnonzero((got.view(bits) != want.view(bits)) & ~nan)
    assert wrong.size == 0, f"{what}: {wrong.size} differ, first {got[wrong[:4]]} against {want[wrong[:4]]}"


@pytest.mark.board
@pytest.mark.parametrize("board_name", BOARDS)
def test_conversions_match_numpy(board_name, tmp_path):
    board = require_board(board_name)
    (tmp_path / "main.c").write_text(HARNESS)
    exe = tmp_path / "half_main"
    extra = SANITIZE if board_name == "host" else []
    subprocess.run([board.compiler(), *board.toolchain.get("cflags", []), *extra, "-std=c99", "-Wall", "-Wextra",
                    "-Werror", f"-I{C_RUNTIME_DIR / 'include'}", str(tmp_path / "main.c"),
                    *board.toolchain.get("ldflags", []), "-o", str(exe)], check=True)
    floats = _narrowing_inputs()
    out = subprocess.run([*board.runner(), str(exe)], input=floats.tobytes(), capture_output=True, check=True).stdout
    narrowed = np.frombuffer(out[:4 * floats.size], np.uint16).reshape(-1, 2)
    widened = np.frombuffer(out[4 * floats.size:], np.uint32).view(np.float32)
    assert widened.size == 2 * 65536
    with np.errstate(over="ignore"):
        _same(narrowed[:, 0].copy().view(np.float16), floats.astype(np.float16), "float32 -> float16")
        _same(narrowed[:, 1].copy().view(BFLOAT16), floats.astype(BFLOAT16), "float32 -> bfloat16")
    every = np.arange(65536, dtype=np.uint16)
    _same(widened[:65536], every.view(np.float16).astype(np.float32), "float16 -> float32")
    _same(widened[65536:], every.view(BFLOAT16).astype(np.float32), "bfloat16 -> float32")


PANEL_HARNESS = r"""
#include <stdint.h>
#include <stdio.h>

#include "moa/isa.h"
#include "moa/qgemm_panel.h"

/* Every float16 bit pattern as a panel of 4096 rows of 16, widened by the build's
 * moa_qw_dequant_f16 variant. stdout: the 65536 floats; stderr: the variant. */
static uint16_t halves[65536];
static float widened[65536];

int main(void)
{
    uint32_t h;
    for (h = 0; h < 65536; h++) {
        halves[h] = (uint16_t)h;
    }
    moa_qw_dequant_f16(4096, halves, NULL, NULL, 0, 0, 0, 4096, widened);
    fprintf(stderr, "isa=%s\n", MOA_ISA_NAME);
    return fwrite(widened, sizeof *widened, 65536, stdout) == 65536 ? 0 : 2;
}
"""


@pytest.mark.board
@pytest.mark.parametrize("variant", list(GEMM_VARIANTS))
def test_every_panel_kernel_widens_every_half_exactly(variant, tmp_path):
    """The float16-weight panels of each ISA (F16C, vcvt, RVV's integer lanes, the reference) give
    numpy's float32 of every half: subnormals, infinities and NaN (any payload) included."""
    board_name, extra, vlen, isa = GEMM_VARIANTS[variant]
    board = require_board(board_name)
    (tmp_path / "main.c").write_text(PANEL_HARNESS)
    exe = tmp_path / "panel_main"
    subprocess.run([board.compiler(), *board.toolchain.get("cflags", []), *extra, "-std=c99", "-Wall", "-Wextra",
                    "-Werror", f"-I{C_RUNTIME_DIR / 'include'}", str(tmp_path / "main.c"), *map(str, GEMM_SOURCES),
                    *board.toolchain.get("ldflags", []), "-o", str(exe)], check=True)
    runner = [part.replace("vlen=128", vlen) for part in board.runner()] if vlen else board.runner()
    proc = subprocess.run([*runner, str(exe)], capture_output=True, check=True)
    if isa is not None:
        assert f"isa={isa}" in proc.stderr.decode()
    every = np.arange(65536, dtype=np.uint16).view(np.float16)
    hardware_conversion = "zvfh" in load_board(board_name).extensions  # vfwcvt: canonical NaNs
    _same(np.frombuffer(proc.stdout, np.float32).copy(), every.astype(np.float32), f"moa_qw_dequant_f16 on {variant}",
          nan_sign=not hardware_conversion)


# --- a transformer block exported from .half() and .bfloat16() ---------------------------------

class Block(torch.nn.Module):
    """Pre-norm attention and a GELU MLP, as a small transformer layer."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.qkv, self.out = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.fc1, self.fc2 = torch.nn.Linear(dim, 4 * dim), torch.nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        heads = lambda t: t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        a = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        x = x + self.out(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


def _export(module, x, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=True, opset_version=18, input_names=["x"],
                          output_names=["y"], verbose=False)


@pytest.fixture(scope="module")
def block_files(tmp_path_factory):
    """half type -> (the half file, its float32 twin, the input x as halves)."""
    folder = tmp_path_factory.mktemp("half_block")
    torch.manual_seed(0)
    state = Block().state_dict()
    files = {}
    for name, (numpy_type, torch_type) in HALVES.items():
        half = Block().eval()
        half.load_state_dict(state)
        half = half.to(torch_type)
        x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 8, 32)).astype(np.float32)).to(torch_type)
        _export(half, x, folder / f"{name}.onnx")
        onnx.save(float32_twin(onnx.load(folder / f"{name}.onnx")), folder / f"{name}_twin.onnx")
        files[name] = (folder / f"{name}.onnx", folder / f"{name}_twin.onnx", x.float().numpy().astype(numpy_type))
    return files


@pytest.mark.board
@pytest.mark.parametrize("half", list(HALVES))
@pytest.mark.parametrize("board_name", BOARDS)
def test_half_transformer_block(block_files, half, board_name, tmp_path):
    board = require_board(board_name)
    path, twin_path, x = block_files[half]
    report = convert(path, tmp_path / "project", board=board)
    assert [e["dtype"] for e in report["io"]] == [half, half]  # the API takes and gives halves
    y = run(build(tmp_path / "project", board), board, report["io"], {"x": x})[0]["y"]
    assert y.dtype == x.dtype
    y64 = y.astype(np.float64)

    session = ort.InferenceSession(str(twin_path), providers=["CPUExecutionProvider"])
    twin = session.run(None, {"x": x.astype(np.float32)})[0]
    rounded = twin.astype(x.dtype).astype(np.float64)
    assert np.all(np.abs(y64 - rounded) <= ulp(rounded, x.dtype)), np.abs(y64 - rounded).max()

    step = ulp(np.abs(twin).max(), x.dtype)  # one ulp of max |y|
    references = {"ONNX reference evaluator": ReferenceEvaluator(str(path)).run(None, {"x": x})[0]}
    if half == "float16":
        references["onnxruntime"] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]
    for who, want in references.items():
        error = np.abs(y64 - want.astype(np.float64)).max()
        assert error <= 2 * step, f"{who}: {error / step} ulps of max |y|"


def test_a_half_model_keeps_its_weights_in_float16_with_weights_fp16(block_files, tmp_path):
    """--weights fp16 stores a float16 model's matrices as the file has them (exactly: they are
    halves): two bytes a weight, and the same outputs as the float32-weight build."""
    from moa_edge.passes.quantize import parse_weights
    board = require_board("host")
    path, twin_path, x = block_files["float16"]
    report = convert(path, tmp_path / "project", weights=parse_weights("fp16"))
    by_type = report["memory"]["weights_bytes_by_type"]
    matrices = sum(numpy_helper.to_array(i).size for i in onnx.load(path).graph.initializer if len(i.dims) == 2)
    assert 2 * matrices <= by_type["float16"] < 1.2 * 2 * matrices and by_type["float32"] < 0.1 * by_type["float16"]
    y = run(build(tmp_path / "project", board), board, report["io"], {"x": x})[0]["y"].astype(np.float64)
    twin = ort.InferenceSession(str(twin_path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.astype(np.float32)})[0]
    rounded = twin.astype(x.dtype).astype(np.float64)
    assert np.all(np.abs(y - rounded) <= ulp(rounded, x.dtype)), np.abs(y - rounded).max()


# --- a Cast to a half inside a float32 graph ---------------------------------------------------

@pytest.mark.board
@pytest.mark.parametrize("half", list(HALVES))
@pytest.mark.parametrize("board_name", BOARDS)
def test_a_cast_to_a_half_inside_the_graph_rounds(half, board_name, tmp_path):
    """y = Cast(Cast(x * w, to half), to float) + x: onnxruntime rounds x * w there, and so must we
    (the values are not halves, so a dropped rounding is off by up to half an ulp of the half)."""
    board = require_board(board_name)
    to = helper.np_dtype_to_tensor_dtype(HALVES[half][0])
    nodes = [helper.make_node("Mul", ["x", "w"], ["xw"], name="scale"),
             helper.make_node("Cast", ["xw"], ["xw_half"], name="to_half", to=to),
             helper.make_node("Cast", ["xw_half"], ["xw_rounded"], name="to_float", to=TensorProto.FLOAT),
             helper.make_node("Add", ["xw_rounded", "x"], ["y"], name="residual")]
    rng = np.random.default_rng(2)
    graph = helper.make_graph(nodes, "rounding", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (4, 37))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (4, 37))],
                              [numpy_helper.from_array(rng.standard_normal(37).astype(np.float32), "w")])
    path = tmp_path / "rounding.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = rng.standard_normal((4, 37)).astype(np.float32)
    x[0, :6] = [np.inf, -np.inf, np.nan, 1e6, 3e-6, -0.0]  # past the largest float16, its subnormals
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    report = convert(path, tmp_path / "project", board=board)
    got = run(build(tmp_path / "project", board), board, report["io"], {"x": x})[0]["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    unrounded = x * numpy_helper.to_array(graph.initializer[0]) + x
    assert not np.allclose(want[1:], unrounded[1:], rtol=1e-6, atol=0)  # the rounding shows


def test_a_half_output_read_inside_the_graph(tmp_path):
    """h = Cast(x, to float16) is an output and read by an Add: the Cast writes h, the Add reads it
    widened; z = h + c rounds once from float32, as the ONNX reference evaluator's numpy float16 Add
    does: bit for bit (onnxruntime's float16 Add is not correctly rounded: -129 + 1.635 gives
    -127.3125, not -127.375)."""
    board = require_board("host")
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Cast", ["x"], ["h"], name="to_half", to=TensorProto.FLOAT16),
             helper.make_node("Add", ["h", "c"], ["z"], name="shift")]
    graph = helper.make_graph(nodes, "read", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (3, 21))],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT16, (3, 21)),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT16, (3, 21))],
                              [numpy_helper.from_array(rng.standard_normal(21).astype(np.float16), "c")])
    path = tmp_path / "read.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = (rng.standard_normal((3, 21)) * 100).astype(np.float32)
    want = ReferenceEvaluator(str(path)).run(None, {"x": x})
    report = convert(path, tmp_path / "project", board=board)
    got = run(build(tmp_path / "project", board), board, report["io"], {"x": x})[0]
    _same(got["h"], want[0], "h")
    _same(got["z"], want[1], "z")


def test_a_float_and_a_half_in_one_type_are_refused_by_node(tmp_path):
    """Attention(Q, K float32, V float16): ONNX's schema names V's type apart (T2), but its function
    body multiplies the float32 weights by V, which onnxruntime refuses; so do we, by name
    (computing both in float32 would hide the mistake)."""
    from moa_edge.errors import MoaEdgeError
    from moa_edge.pipeline import load_graph
    shape = (1, 2, 4, 8)
    graph = helper.make_graph([helper.make_node("Attention", ["q", "k", "v"], ["y"], name="mixed")], "mixed",
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, shape),
                               helper.make_tensor_value_info("k", TensorProto.FLOAT, shape),
                               helper.make_tensor_value_info("v", TensorProto.FLOAT16, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    path = tmp_path / "mixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), path)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.Fail):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(MoaEdgeError, match=r"node 'mixed' \(Attention\): its type T1 is bound to float16 and float32"):
        load_graph(path)


# --- onnx's Cast cases --------------------------------------------------------------------------

CAST_CASES = {c.name: c for c in load_model_tests(kind="node")
              if c.name in ("test_cast_FLOAT_to_FLOAT16", "test_cast_FLOAT16_to_FLOAT",
                            "test_cast_FLOAT_to_BFLOAT16", "test_cast_BFLOAT16_to_FLOAT")}


@pytest.mark.board
@pytest.mark.parametrize("name", sorted(CAST_CASES))
def test_onnx_cast_cases_at_opset_25(name, tmp_path):
    assert len(CAST_CASES) == 4
    case = CAST_CASES[name]
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    model.opset_import[0].version = 25
    path = tmp_path / "cast.onnx"
    onnx.save(model, path)
    (inputs, expected), = case.data_sets
    board = require_board("host")
    report = convert(path, tmp_path / "project")
    feeds = {vi.name: x for vi, x in zip(model.graph.input, arrays(inputs))}
    (got,) = run(build(tmp_path / "project", board), board, report["io"], feeds)[0].values()
    (want,) = arrays(expected)
    assert got.dtype == want.dtype
    _same(got, want, name)



@pytest.mark.board
def test_validate_holds_a_half_output_to_its_own_ulps(block_files):
    """`validate` against PyTorch float64 (which rounds the output once too) and the ONNX reference
    evaluator (which rounds every op): both within two bfloat16 ulps of max |y|."""
    from moa_edge.pipeline import validate
    path, _, x = block_files["bfloat16"]
    result = validate(path, [require_board("host")])
    assert result["ok"] and result["importer_check"]["ok"], result
    assert result["boards"]["host"]["max_ulp"] <= 1, result["boards"]["host"]


# --- a float16 decoder, built for generation --------------------------------------------------

@pytest.mark.board
@pytest.mark.parametrize("board_name", ["host", "k230"])
def test_half_decoder_generates_as_transformers(board_name, tmp_path_factory):
    """The tiny Llama `.half()`, exported with its cache (float16 past and logits): the build keeps
    the cache and the logits in float32 (its sampler reads them) and gives the greedy tokens of
    transformers' own generate on the half model and on its float32 twin (the same weights); the
    logits are within 1e-2 of the twin's in float64, relative to max |logit| (the file rounds to
    float16 where the half model does: the norms' outputs, the rotary tables; 3.1e-3 measured, and
    5.4e-3 for torch's half model itself)."""
    import decoders
    from moa_edge.harness.generation import generate_ids, generation_info
    board = require_board(board_name)
    folder = tmp_path_factory.mktemp("half_decoder")
    model = decoders.build_model("llama").half()
    decoders.smollm2_export.export_with_cache(model, folder / "llama16.onnx", "torchscript", 17)
    convert(folder / "llama16.onnx", folder / "project", board=board, max_context=40, prefill_chunk=4)
    binary, info = build(folder / "project", board), generation_info(folder / "project")
    twin = decoders.build_model("llama")
    twin.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    prompt = [int(t) for t in np.random.default_rng(1).integers(0, info["vocab"], 9)]
    want = decoders.reference_generate(twin, prompt, 12)
    assert decoders.reference_generate(model, prompt, 12) == want
    assert generate_ids(binary, board, info, prompt, 12)["tokens"] == want
    forced = generate_ids(binary, board, info, prompt, 12, forced_ids=want)["logits"]
    expected = decoders.reference_logits(twin, prompt + want)[len(prompt) - 1:len(prompt) - 1 + 12]
    assert np.abs(forced - expected).max() < 1e-2 * np.abs(expected).max()
