"""The notebooks run end to end with small settings."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(name: str, tmp_path, monkeypatch, timeout: int = 600):
    monkeypatch.setenv("ICAO_MTL_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("ICAO_MTL_DATA", str(tmp_path / "data"))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def test_dataset_tour(tmp_path, monkeypatch):
    nb = run_notebook("00_dataset_tour.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5  # the figures were drawn
    assert (tmp_path / "data" / "synthetic_n200_s128_seed0" / "labels.csv").is_file()


def test_stl_vs_mtl(tmp_path, monkeypatch):
    nb = run_notebook("01_stl_vs_mtl.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "| ICAO Rq. | STL | MTL 1 | MTL 2 | MTL 3 |" in text
    assert (tmp_path / "runs" / "notebook_01" / "hc3" / "metrics.json").is_file()


def test_nas_random_vs_reinforce(tmp_path, monkeypatch):
    nb = run_notebook("02_nas_random_vs_reinforce.ipynb", tmp_path, monkeypatch)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "| 1 (random) | 1 | 4 |" in text and "| 2 (REINFORCE) | 1 | 4 |" in text
    assert "65 of 625 configurations are reachable" in text
    assert (tmp_path / "searches" / "notebook_02" / "reinforce" / "final" / "model.keras").is_file()


def test_gradcam_error_analysis(tmp_path, monkeypatch):
    monkeypatch.delenv("ICAO_MTL_RUN", raising=False)
    nb = run_notebook("03_gradcam_error_analysis.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) + o.get("text", "") for o in outputs)
    assert "| Requisite | region | images |" in text and "requisite" in text and "threshold" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
    assert (tmp_path / "runs" / "notebook_03" / "analysis" / "region_mass.csv").is_file()


def test_branching_search(tmp_path, monkeypatch):
    nb = run_notebook("04_branching_search.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "| Shared | 1 1 1 1 |" in text and "| Single | 4 4 4 4 |" in text and "copies per layer:" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # tree, trace, Pareto plot
    assert (tmp_path / "runs" / "notebook_04" / "pareto.png").is_file()


def test_dag_network(tmp_path, monkeypatch):
    nb = run_notebook("05_dag_network.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) + o.get("text", "") for o in outputs)
    assert "| task | read-in | read-out |" in text and "| final |" in text and "edges kept by some task" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # the trace and three sub-networks


def test_mtl_nas(tmp_path, monkeypatch):
    nb = run_notebook("07_mtl_nas.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) + o.get("text", "") for o in outputs)
    assert "| final |" in text and "edges kept" in text and "| pretrain |" in text and "| search |" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # the trace and the edges
    assert (tmp_path / "runs" / "notebook_07" / "edges.json").is_file()


def test_virtualnet(tmp_path, monkeypatch):
    nb = run_notebook("06_virtualnet.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) + o.get("text", "") for o in outputs)
    assert "| 1 | 0.5 |" in text and "| pretrain |" in text and "| search |" in text and "at level 1: counts" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # the trace, the cost curves, the structures
    assert (tmp_path / "runs" / "notebook_06" / "level3" / "model.keras").is_file()
