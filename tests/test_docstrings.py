"""Every public name carries a docstring with an example, and the examples run.

Public names: each package's ``__all__`` and the public functions and classes of ``attention/wrapper.py``.
Data constants (``DEFAULT_SIGN_VECTOR``) cannot carry a docstring of their own and are listed in ``CONSTANTS``.
An example block is a ``>>>`` line (or an ``Example::`` section). The ``>>>`` examples assume ``import torch``
and ``from <package> import *``; they run on CPU tensors, so they run here under the interpreter (CI) and are
skipped on a CUDA machine, where the kernel tests cover the same calls. Examples that need a GPU say
``# doctest: +SKIP``. The README's "Use it from Python" blocks run too, each in a fresh process as a user
would run them (on a GPU as well).
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import json
import os
import pathlib
import re
import subprocess
import sys
import warnings

import pytest
import torch

from tests.conftest import HAS_CUDA

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("hadamard_kernels", "fp8_quant", "attention")
CONSTANTS = {"hadamard_kernels": {"DEFAULT_SIGN_VECTOR"}}  # data, documented by a comment where defined
EXAMPLE = re.compile(r"^\s*(>>> |Example::|Examples::)", re.MULTILINE)


def _public_objects():
    """(package, id, object) for every public callable, each object once (first package that exports it)."""
    seen, out = set(), []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for name in pkg.__all__:
            if name in CONSTANTS.get(pkg_name, ()):
                continue
            obj = getattr(pkg, name)
            if id(obj) not in seen:
                seen.add(id(obj))
                out.append((pkg_name, f"{pkg_name}.{name}", obj))
    wrapper = importlib.import_module("attention.wrapper")
    for name, obj in vars(wrapper).items():
        if (not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                and obj.__module__ == wrapper.__name__ and id(obj) not in seen):
            seen.add(id(obj))
            out.append(("attention", f"attention.wrapper.{name}", obj))
    return out


OBJECTS = _public_objects()


def _own_doc(obj) -> str:
    """The object's own docstring: a class's from its own ``__dict__`` (not str's, Enum's or NamedTuple's
    generated one, which names only the fields)."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__") or ""
        if doc.startswith(f"{obj.__name__}(") and doc.endswith(")"):  # NamedTuple's generated docstring
            return ""
        return doc
    return obj.__doc__ or ""


def test_constants_are_data_and_exported():
    for pkg_name, names in CONSTANTS.items():
        pkg = importlib.import_module(pkg_name)
        for name in names:
            assert name in pkg.__all__, f"{pkg_name}.{name} is listed as a constant but not exported"
            obj = getattr(pkg, name)
            assert not callable(obj), f"{pkg_name}.{name} is callable: it needs a docstring with an example"


def test_every_package_exports_something():
    assert len(OBJECTS) >= 25, [o[1] for o in OBJECTS]


@pytest.mark.parametrize("pkg,name,obj", OBJECTS, ids=[o[1] for o in OBJECTS])
def test_public_name_has_docstring_with_example(pkg, name, obj):
    doc = _own_doc(obj)
    assert doc.strip(), f"{name} has no docstring of its own"
    assert EXAMPLE.search(doc), f"{name}'s docstring has no example (a '>>>' block or 'Example::')"


def _globs(pkg_name: str) -> dict:
    pkg = importlib.import_module(pkg_name)
    return {"torch": torch, **{n: getattr(pkg, n) for n in pkg.__all__}}


@pytest.mark.skipif(HAS_CUDA, reason="the examples use CPU tensors: they run under the interpreter (CI)")
@pytest.mark.parametrize("pkg,name,obj", OBJECTS, ids=[o[1] for o in OBJECTS])
def test_docstring_examples_run(pkg, name, obj):
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs=_globs(pkg))
    tests = [t for t in tests if t.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # e.g. the wrapper's one fallback warning
        for t in tests:
            runner.run(t, out=lambda s: print(s, end=""))
    assert runner.failures == 0, f"{runner.failures} example(s) of {name} failed (output above)"


def test_doctest_runner_notices_a_wrong_example():
    # the check above can fail: an example whose output differs from the docstring's is a failure
    test = doctest.DocTestParser().get_doctest(">>> 1 + 1\n3\n", {}, "wrong", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=lambda s: None)
    assert runner.failures == 1


def _readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use it from Python"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_readme_has_a_preamble_and_one_example_per_package():
    blocks = _readme_blocks()
    assert "TRITON_INTERPRET" in blocks[0], "the first block switches the interpreter on"
    for pkg in PACKAGES:
        assert any(f"from {pkg} import" in b for b in blocks[1:]), f"no README example imports {pkg}"


_DRIVER = """
import json, sys
blocks = json.load(open(sys.argv[1]))
for i, block in enumerate(blocks[1:], 1):
    exec(compile(blocks[0] + "\\n" + block, f"README example {i}", "exec"), {"__name__": "__main__"})
    print(f"== README example {i} ran", flush=True)
"""


def test_readme_examples_run(tmp_path):
    # one fresh process (as a user would run them: no TRITON_INTERPRET set, the library on PYTHONPATH),
    # each example in a fresh namespace after the preamble, so each must import what it uses
    blocks = _readme_blocks()
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    (tmp_path / "driver.py").write_text(_DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the preamble must switch it on
    env["PYTHONPATH"] = str(ROOT)
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run([sys.executable, "driver.py", "blocks.json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    ran = proc.stdout.count("== README example")
    assert proc.returncode == 0 and ran == len(blocks) - 1, \
        f"README example {ran + 1} failed:\n{blocks[min(ran + 1, len(blocks) - 1)]}\n{proc.stdout}\n{proc.stderr}"
