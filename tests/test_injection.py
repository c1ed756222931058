"""A model file is untrusted: no name in it may inject code into the generated C, assembly or
report, nor stop the project from building (issue 18, item 1)."""
from pathlib import Path
import re
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import pytest

from conftest import require_board
from models import Case, export
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.report import write_report
from moa_edge.ir.c_syntax import c_comment_text, c_identifier, c_string_literal, check_prefix
from moa_edge.pipeline import convert, validate
from moa_edge.target import symbol_lister

ATTACK = ('x */ int system(const char *); __attribute__((constructor)) static void pwn(void){system("touch PWNED");}'
          ' /*')  # at file scope (model.h): runs before main
NODE_ATTACK = 'n */ { int system(const char *); system("touch PWNED"); } /*'  # in the run function's body
ASM_ATTACK = "w */\n.global evil\nevil:\n/*"
HOSTILE_PIECES = ["*/ __attribute__", "system(", ".global evil", "evil:"]

# Input, output, node and intermediate names: comment closers, line comments, newlines, directives,
# quotes, backslashes, NUL, non-ASCII, a trigraph, matplotlib's $math$, HTML, 10 kB, C keywords and
# names equal after sanitising (a-b, a_b, A_B all spell MODEL_INPUT_A_B).
INPUTS = [ATTACK, "int", "a-b", "a_b", "A_B"]
OUTPUTS = ["return", 'y\n#define float int */ // "quoted" \\ back\\\nslash']
NODE_NAMES = [NODE_ATTACK, "n1 */ int evil_node; /*", "n2 // line\n#include <stdio.h>", "n3 ??/\n??=", "n4 \x00 nul",
              "n5 é 漢字 $\\frac$ <script>alert(1)</script>", "n6 " + "*/" * 5000, "n7 main"]
MIDDLE = ["t1 */ /*", "t2\n#error injected", "t3 ??/", "t4 \x00", "t5 " + "z" * 10000, "t6 '\"'"]
WEIGHT = ASM_ATTACK


def hostile_model(path: Path) -> None:
    """y_k = softmax(((((x1 + x2) * x3) - x4) + x5) @ W) and relu of the sum before: every name hostile."""
    shape = [2, 4]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in INPUTS]
    outs = [helper.make_tensor_value_info(OUTPUTS[0], TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info(OUTPUTS[1], TensorProto.FLOAT, shape)]
    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), WEIGHT)
    nodes = [helper.make_node("Add", [INPUTS[0], INPUTS[1]], [MIDDLE[0]], name=NODE_NAMES[0]),
             helper.make_node("Mul", [MIDDLE[0], INPUTS[2]], [MIDDLE[1]], name=NODE_NAMES[1]),
             helper.make_node("Sub", [MIDDLE[1], INPUTS[3]], [MIDDLE[2]], name=NODE_NAMES[2]),
             helper.make_node("Add", [MIDDLE[2], INPUTS[4]], [MIDDLE[3]], name=NODE_NAMES[3]),
             helper.make_node("MatMul", [MIDDLE[3], WEIGHT], [MIDDLE[4]], name=NODE_NAMES[4]),
             helper.make_node("Softmax", [MIDDLE[4]], [OUTPUTS[0]], name=NODE_NAMES[5], axis=-1),
             helper.make_node("Relu", [MIDDLE[3]], [MIDDLE[5]], name=NODE_NAMES[6]),
             helper.make_node("Identity", [MIDDLE[5]], [OUTPUTS[1]], name=NODE_NAMES[7])]
    graph = helper.make_graph(nodes, "g */ evil", ins, outs, [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    hostile_model(tmp / "m.onnx")
    return tmp / "m.onnx"


def _code(text: str) -> str:
    """C (or .S) text without its /* */ comments and string literals, lexed left to right."""
    return re.sub(r'/\*.*?\*/|"(?:[^"\\\n]|\\.)*"', " ", text, flags=re.S)


def test_comment_text_cannot_end_or_nest_a_comment_nor_splice_lines():
    for s in [ATTACK, "*/", "/*", "*//", "/*/", "a*", "??/", "???/", "a\\", "x\ny", "\x00", "é", "//"]:
        t = c_comment_text(s)
        assert t.isascii() and t.isprintable()
        assert "*/" not in t and "/*" not in t and "??" not in t and "\\" not in t and "\n" not in t
    assert c_comment_text("attn/Softmax") == "attn/Softmax"
    assert len(c_comment_text("x" * 10000)) <= 100


def test_string_literal_escapes_everything_but_plain_text():
    assert c_string_literal("x") == '"x"'
    assert c_string_literal('a"b\\c\nd??/') == '"a\\"b\\\\c\\012d\\?\\?/"'
    assert c_string_literal("é") == '"\\303\\251"'


def test_identifiers_avoid_keywords_reserved_and_case_collisions():
    taken, upper = set(), set()
    names = [c_identifier(n, taken, ("moa_", "model_"), upper)
             for n in ["int", "return", "main", "__x", "_X", "moa_run", "model_w_a", "expf", "a-b", "a_b", "A_B", "x"]]
    assert names[-1] == "x"
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", n) for n in names)
    assert not {"int", "return", "main", "__x", "_X", "moa_run", "model_w_a", "expf"} & set(names)
    assert len({n.upper() for n in names}) == len(names)


@pytest.mark.parametrize("prefix", ["moa", "MOA", "moa_x", "int", "return", "main", "_x", "__x", "a-b", "", "1x"])
def test_bad_prefixes_are_refused(prefix):
    with pytest.raises(MoaEdgeError, match="--prefix"):
        check_prefix(prefix)


def test_convert_refuses_prefix_moa_before_any_work(hostile, tmp_path):
    with pytest.raises(MoaEdgeError, match="moa_"):
        convert(hostile, tmp_path / "p", prefix="moa")
    assert not (tmp_path / "p").exists()


def test_hostile_names_build_strict_run_correctly_and_inject_nothing(hostile, tmp_path, monkeypatch):
    board = require_board("host")
    monkeypatch.chdir(tmp_path)  # where the attack's `touch PWNED` would land
    result = validate(hostile, [board])
    assert result["boards"]["host"]["ok"] is True, result
    assert result["ok"] is True, result
    assert not (tmp_path / "PWNED").exists()

    project = tmp_path / "p"
    report = convert(hostile, project, prefix="net")
    c_names = [e["c_name"] for e in report["io"]]
    assert len({n.upper() for n in c_names}) == len(c_names)
    assert "int" not in c_names and "return" not in c_names
    assert max(map(len, c_names)) <= 64
    binary = build(project, board)  # -std=c99 -Wall -Wextra -Werror
    subprocess.run([binary], capture_output=True)  # usage error; no constructor may run first
    assert not (tmp_path / "PWNED").exists()

    nm = symbol_lister(board)
    for obj in (project / "build" / "host" / "obj" / "weights.o", binary):
        symbols = subprocess.run([nm, str(obj)], capture_output=True, text=True, check=True).stdout
        assert not re.search(r"\bevil\b|\bpwn\b|evil_node", symbols), symbols

    model_strings = INPUTS + OUTPUTS + NODE_NAMES + MIDDLE + [WEIGHT]
    for path in project.rglob("*"):
        if path.suffix not in (".c", ".h", ".S") and path.name != "SConstruct" or "build" in path.parts:
            continue
        text = path.read_text()
        assert text.isascii(), path
        code = _code(text)
        for piece in HOSTILE_PIECES:  # not in the code, only sanitised in comments or escaped in strings
            assert piece not in code, (path, piece)
        for name in model_strings:  # (a name a comment may hold as it is, like "n7 main", may appear)
            if c_comment_text(name) != name:
                assert name not in text, (path, name)


def test_exact_names_survive_in_the_name_macros(hostile, tmp_path):
    """model.h spells each input and output's exact name, bytes and all, as a C string."""
    board = require_board("host")
    project = tmp_path / "p"
    report = convert(hostile, project)
    src = tmp_path / "names.c"
    macros = [f"MODEL_{e['kind'].upper()}_{e['c_name'].upper()}_NAME" for e in report["io"]]
    src.write_text('#include <stdio.h>\n#include "model.h"\nint main(void)\n{\n'
                   + "".join(f"    fwrite({m}, 1, sizeof {m}, stdout);\n" for m in macros) + "    return 0;\n}\n")
    exe = tmp_path / "names"
    subprocess.run([board.compiler(), "-std=c99", "-Wall", "-Wextra", "-Werror", "-I", str(project),
                    "-I", str(project / "runtime" / "include"), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([exe], capture_output=True, check=True).stdout
    assert out.split(b"\0")[:-1] == [e["name"].encode() for e in report["io"]]


def test_report_of_hostile_names_escapes_them(hostile, tmp_path):
    project = tmp_path / "p"
    convert(hostile, project)
    written = write_report(project)
    page = Path(written["html"]).read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page


def _rename_everything(model: onnx.ModelProto, spell) -> None:
    """Every tensor and node of the model renamed spell(kind, k) in place, consistently."""
    g = model.graph
    names = {}
    for value in [*g.input, *g.output, *g.value_info, *g.initializer]:
        names.setdefault(value.name, spell("tensor", len(names)))
    for node in g.node:
        for n in [*node.input, *node.output]:
            if n:
                names.setdefault(n, spell("tensor", len(names)))
    for value in [*g.input, *g.output, *g.value_info, *g.initializer]:
        value.name = names[value.name]
    for k, node in enumerate(g.node):
        node.input[:] = [names[n] if n else n for n in node.input]
        node.output[:] = [names[n] if n else n for n in node.output]
        node.name = spell("node", k)


def test_hostile_names_through_a_fused_attention_block(tmp_path, monkeypatch):
    """The attention path (an MoaAttention kernel with its own comment, absorbed nodes, a constant
    mask in weights.S) with every name an attack; validates on the host, runs nothing foreign."""
    board = require_board("host")
    monkeypatch.chdir(tmp_path)
    export(Case("hostile", "sdpa18", q_len=4, kv_len=6, head_dim=8, mask="const_float"), tmp_path / "a.onnx")
    model = onnx.load(str(tmp_path / "a.onnx"))
    _rename_everything(model, lambda kind, k: f"{kind}{k} */ int pwn{k}; /* \n.global evil{k}\nevil{k}: ??/ é\x00 \"")
    onnx.save(model, str(tmp_path / "h.onnx"))
    result = validate(tmp_path / "h.onnx", [board])
    assert result["ok"] is True, result
    project = tmp_path / "p"
    report = convert(tmp_path / "h.onnx", project)
    assert report["attention_blocks"], "the renamed graph must still fuse into an attention block"
    binary = build(project, board)
    symbols = subprocess.run([symbol_lister(board), str(binary)], capture_output=True, text=True, check=True).stdout
    assert not re.search(r"\bevil\d|\bpwn\d", symbols)
    for path in [*project.glob("*.[chS]")]:
        assert not re.search(r"\bint pwn\d|\.global evil|^evil", _code(path.read_text()), re.M), path


def test_project_path_with_quotes_dollar_and_backticks_builds(hostile, tmp_path, monkeypatch):
    board = require_board("host")
    monkeypatch.chdir(tmp_path)
    project = tmp_path / "o $HOME \"q\" 's' `touch PWNED` é"
    convert(hostile, project)
    assert build(project, board).is_file()
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("where", ["input", "node", "initializer"])
def test_the_classic_attack_alone_runs_nothing_and_adds_no_symbol(where, tmp_path, monkeypatch):
    """Each attack alone, in a model that would otherwise build: without the escaping the runner
    would touch PWNED (input, node) or export `evil` (initializer)."""
    board = require_board("host")
    monkeypatch.chdir(tmp_path)
    pwned = tmp_path / "PWNED"
    x = ATTACK.replace("touch PWNED", f"touch {pwned}") if where == "input" else "x"
    weight = ASM_ATTACK if where == "initializer" else "w"
    node = NODE_ATTACK.replace("touch PWNED", f"touch {pwned}") if where == "node" else "add"
    nodes = [helper.make_node("Add", [x, weight], ["s"], name=node),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(x, TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(np.arange(-3, 3, dtype=np.float32).reshape(2, 3), weight)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "m.onnx"))
    result = validate(tmp_path / "m.onnx", [board])
    assert not pwned.exists()
    assert result["ok"] is True, result
    convert(tmp_path / "m.onnx", tmp_path / "p")
    build(tmp_path / "p", board)
    obj = tmp_path / "p" / "build" / "host" / "obj" / "weights.o"
    symbols = subprocess.run([symbol_lister(board), str(obj)], capture_output=True, text=True, check=True).stdout
    assert not re.search(r"\bevil\b", symbols), symbols


@pytest.mark.parametrize("prefix", ["moa", "int"])
def test_cli_refuses_a_colliding_prefix_in_one_line(prefix, hostile, tmp_path):
    r = subprocess.run([sys.executable, "-m", "moa_edge.cli", "convert", str(hostile), "-o", str(tmp_path / "p"),
                        "--prefix", prefix], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "--prefix" in r.stderr and not (tmp_path / "p").exists()
