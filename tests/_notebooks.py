"""Run a notebook of ``notebooks/`` with small settings (``ICAO_MTL_NOTEBOOK_SMALL=1``) in a temporary
directory: the helper of ``test_notebooks.py`` and ``test_notebooks_methods.py`` (two modules, so that
the test workers share them)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(name: str, tmp_path, monkeypatch, timeout: int = 600):
    monkeypatch.setenv("ICAO_MTL_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("ICAO_MTL_DATA", str(tmp_path / "data"))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb
