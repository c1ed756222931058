"""The package's layers import one way: a module may import from its own layer and the ones
below it, never from a layer above (README, Layout). Checked on the source, so an import
inside a function counts the same as one at the top of a file."""
import ast
from pathlib import Path

import pytest

from moa_edge import PROJECT_ROOT

# Lowest first. Peers share a layer: harness runs builds that energy measures, and energy's
# sampler is built and run by the harness.
LAYERS = (
    ("errors", "lazy"),
    ("ir",),
    ("target",),
    ("moa",),
    ("ops",),
    ("passes", "converters"),
    ("plan",),
    ("codegen",),
    ("harness", "energy"),
    ("pipeline",),
    ("cli",),
)
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str | None:
    """The layer-defining part of a dotted module name inside the package, or None outside it."""
    names = module.split(".")
    if names[0] != "moa_edge":
        return None
    return names[1] if len(names) > 1 else ""  # "" is the package root (paths and version only)


def _sources():
    for path in sorted((PROJECT_ROOT / "moa_edge").rglob("*.py")):
        rel = path.relative_to(PROJECT_ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield path, ".".join(parts)
    for path in sorted((PROJECT_ROOT / "converters").glob("*.py")):
        yield path, "moa_edge.converters" + ("" if path.stem == "__init__" else "." + path.stem)


def _imports(path: Path, module: str, is_package: bool):
    """Every module name an import statement of the file names, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            yield node.lineno, name
            for alias in node.names:  # `from moa_edge import codegen` names a layer too
                yield node.lineno, f"{name}.{alias.name}"


def test_every_package_part_has_a_layer():
    parts = {_part(module) for _, module in _sources()} - {""}
    assert parts <= set(LAYER_OF), f"give these a layer in LAYERS and README: {sorted(parts - set(LAYER_OF))}"


@pytest.mark.parametrize("path,module", list(_sources()), ids=lambda x: str(x).rpartition("/")[2])
def test_no_import_from_a_higher_layer(path, module):
    own = LAYER_OF.get(_part(module), -1)
    upward = []
    for line, name in _imports(path, module, path.stem == "__init__"):
        part = _part(name)
        if part and part in LAYER_OF and LAYER_OF[part] > own:
            upward.append(f"{path.relative_to(PROJECT_ROOT)}:{line} imports {name} (layer {part} is above {_part(module)})")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("path,module", [(p, m) for p, m in _sources() if not m.endswith(".cli")],
                         ids=lambda x: str(x).rpartition("/")[2])
def test_no_import_inside_a_function(path, module):
    """Imports of the package sit at the top of each module: a function-level one is how an
    import cycle gets dodged. (cli.py may defer a verb's imports: `moa-edge boards` should not
    wait for torch.)"""
    lazy = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.level or (inner.module or "").startswith("moa_edge")):
                    lazy.append(f"{path.relative_to(PROJECT_ROOT)}:{inner.lineno} imports {inner.module} inside {node.name}()")
                elif isinstance(inner, ast.Import) and any(a.name.startswith("moa_edge") for a in inner.names):
                    lazy.append(f"{path.relative_to(PROJECT_ROOT)}:{inner.lineno} imports inside {node.name}()")
    assert not lazy, "\n".join(lazy)


def test_the_check_sees_an_upward_import(tmp_path):
    """The test above can fail: a module of ops that imports codegen is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from moa_edge.codegen.project import emit_project\n")
    found = [name for _, name in _imports(bad, "moa_edge.ops.bad", False)]
    assert any(LAYER_OF[_part(n)] > LAYER_OF["ops"] for n in found if _part(n) in LAYER_OF)
