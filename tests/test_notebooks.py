"""The notebooks of the data, the paper's models and the error analysis run end to end with small settings."""

import pytest

from _notebooks import run_notebook


def test_dataset_tour(tmp_path, monkeypatch):
    nb = run_notebook("00_dataset_tour.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5  # the figures were drawn
    assert (tmp_path / "data" / "synthetic_n200_s128_seed0" / "labels.csv").is_file()


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_notebooks.py
def test_stl_vs_mtl(tmp_path, monkeypatch):
    nb = run_notebook("01_stl_vs_mtl.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "| ICAO Rq. | STL | MTL 1 | MTL 2 | MTL 3 |" in text
    assert (tmp_path / "runs" / "notebook_01" / "hc3" / "metrics.json").is_file()


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_notebooks.py
def test_nas_random_vs_reinforce(tmp_path, monkeypatch):
    nb = run_notebook("02_nas_random_vs_reinforce.ipynb", tmp_path, monkeypatch)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "| 1 (random) | 1 | 4 |" in text and "| 2 (REINFORCE) | 1 | 4 |" in text
    assert "65 of 625 configurations are reachable" in text
    assert (tmp_path / "searches" / "notebook_02" / "reinforce" / "final" / "model.keras").is_file()


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_notebooks.py
def test_gradcam_error_analysis(tmp_path, monkeypatch):
    monkeypatch.delenv("ICAO_MTL_RUN", raising=False)
    nb = run_notebook("03_gradcam_error_analysis.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) + o.get("text", "") for o in outputs)
    assert "| Requisite | region | images |" in text and "requisite" in text and "threshold" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
    assert (tmp_path / "runs" / "notebook_03" / "analysis" / "region_mass.csv").is_file()
