"""The layering of the library: dependencies point one way, no package reaches into another's
underscore modules, the shared layer says what it is, and no Triton function takes more than 24
parameters (Triton's launcher cost grows with the argument count)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("hadamard_kernels", "fp8_quant", "attention")
SHARED = ("runtime", "interpreter_fixes", "triton_helpers", "signs")
LIBRARY = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_and_skip_private_modules(path):
    own = path.relative_to(ROOT).parts[0]
    below = {"attention": {"fp8_quant", "hadamard_kernels"}, "fp8_quant": {"hadamard_kernels"},
             "hadamard_kernels": set()}[own]
    for mod in _imports(path):
        top = mod.split(".")[0]
        if top not in PACKAGES or top == own:
            continue
        assert top in below, f"{path.name} imports {mod}: {own} may only import {sorted(below) or 'nothing'}"
        assert not any(part.startswith("_") for part in mod.split(".")[1:]), \
            f"{path.name} imports {mod}, a private module of another package"


@pytest.mark.parametrize("name", SHARED)
def test_shared_layer_says_what_it_is(name):
    doc = ast.get_docstring(ast.parse((ROOT / "hadamard_kernels" / f"{name}.py").read_text()))
    assert doc.splitlines()[0].startswith("The library's shared layer"), doc.splitlines()[0]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_triton_functions_take_at_most_24_parameters(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in node.decorator_list):
            n = len(node.args.args) + len(node.args.kwonlyargs)
            assert n <= 24, f"{path.name}:{node.lineno} {node.name} takes {n} parameters"


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 520, f"{path.relative_to(ROOT)} has {lines} lines (keep library modules near 500)"


def test_star_import_exports_functions_not_submodules():
    ns = {}
    exec("from hadamard_kernels import *", ns)
    import types
    assert callable(ns["hadamard_transform"]) and not isinstance(ns["hadamard_transform"], types.ModuleType)
    assert "matrices" not in ns and "hadamard" not in ns


def _readme_layout_paths():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout"):text.index("## Tests")]
    paths = []
    for line in table.splitlines():
        if line.startswith("| `"):
            cell = line.split("|")[1]
            names = [c.strip().strip("`") for c in cell.split(",")]
            folder = names[0].rsplit("/", 1)[0] if "/" in names[0] else ""
            paths += [n if "/" in n else f"{folder}/{n}" for n in names]
    return paths


def test_readme_layout_matches_the_tree():
    listed = _readme_layout_paths()
    for p in listed:
        if not any(c in p for c in "<*"):
            assert (ROOT / p).exists(), f"README layout lists {p}, which does not exist"
    modules = [p.relative_to(ROOT).as_posix() for p in LIBRARY] + \
        [p.relative_to(ROOT).as_posix() for p in (ROOT / "benchmarks").glob("*.py") if p.name != "__init__.py"]
    for m in modules:
        if m.startswith("benchmarks/bench_"):
            continue  # listed as benchmarks/bench_<suite>.py
        assert m in listed, f"{m} is not in the README layout table"
