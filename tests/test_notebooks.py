"""The notebooks under notebooks/: each runs top to bottom (on CPU under the interpreter, small sizes),
and each is committed executed, with its outputs.

A notebook checks the claims its text makes about its own numbers with ``assert`` cells, so running it
here is also what keeps its text and its numbers in agreement. The committed outputs are a CPU run
(``make notebooks`` or ``nbclient``): every code cell executed once, in order, with no error, and no
path of the machine that ran them.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (extra 'notebooks')")
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (extra 'notebooks')")

# what an output must not contain: absolute paths of the machine that ran the notebook
MACHINE_PATH = re.compile(r"(/home/|/root/|/tmp/|/work/|/Users/|[A-Z]:\\)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    from jupyter_client.kernelspec import NoSuchKernel

    nb = nbformat.read(path, as_version=4)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel installed")


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return "".join(output.get("text", ""))
    data = output.get("data", {})
    return "".join(data.get("text/plain", "")) + "".join(output.get("traceback", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_with_its_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code, f"{path.name} has no code cell"
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), \
        f"{path.name}: code cells not executed once, top to bottom (execution counts {counts})"
    assert any(c.outputs for c in code), f"{path.name} is committed without outputs"
    for i, c in enumerate(code):
        for out in c.outputs:
            assert out.get("output_type") != "error", f"{path.name}: code cell {i + 1} ends in {out.get('ename')}"
            assert not MACHINE_PATH.search(_text(out)), \
                f"{path.name}: code cell {i + 1}'s output names a path of the machine that ran it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_switches_the_interpreter_on_before_importing_the_library(path):
    nb = nbformat.read(path, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    first_import = min(source.find(f"import {p}") if f"import {p}" in source else len(source)
                       for p in ("hadamard_kernels", "fp8_quant", "attention"))
    first_from = min(source.find(f"from {p}") if f"from {p}" in source else len(source)
                     for p in ("hadamard_kernels", "fp8_quant", "attention"))
    switch = source.find("TRITON_INTERPRET")
    assert 0 <= switch < min(first_import, first_from), f"{path.name} imports the library before the switch"


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"
