"""Every notebook under notebooks/ runs top to bottom (on CPU under the interpreter, small sizes)."""

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (extra 'notebooks')")
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (extra 'notebooks')")


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


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"
