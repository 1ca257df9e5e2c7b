"""The notebooks of the search methods run end to end with small settings."""

import pytest

from _notebooks import run_notebook


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_notebooks_methods.py
def test_branching_search(tmp_path, monkeypatch):
    nb = run_notebook("04_branching_search.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "| Shared | 1 1 1 1 |" in text and "| Single | 4 4 4 4 |" in text and "copies per layer:" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # tree, trace, Pareto plot
    assert (tmp_path / "runs" / "notebook_04" / "pareto.png").is_file()


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_notebooks_methods.py
def test_dag_network(tmp_path, monkeypatch):
    nb = run_notebook("05_dag_network.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) + o.get("text", "") for o in outputs)
    assert "| task | read-in | read-out |" in text and "| final |" in text and "edges kept by some task" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # the trace and three sub-networks


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_notebooks_methods.py
def test_mtl_nas(tmp_path, monkeypatch):
    nb = run_notebook("07_mtl_nas.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) + o.get("text", "") for o in outputs)
    assert "| final |" in text and "edges kept" in text and "| pretrain |" in text and "| search |" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # the trace and the edges
    assert (tmp_path / "runs" / "notebook_07" / "edges.json").is_file()


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_notebooks_methods.py
def test_virtualnet(tmp_path, monkeypatch):
    nb = run_notebook("06_virtualnet.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) + o.get("text", "") for o in outputs)
    assert "| 1 | 0.5 |" in text and "| pretrain |" in text and "| search |" in text and "at level 1: counts" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # the trace, the cost curves, the structures
    assert (tmp_path / "runs" / "notebook_06" / "level3" / "model.keras").is_file()
