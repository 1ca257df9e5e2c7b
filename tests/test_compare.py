"""The comparison of every method on the same data, split, budget and seeds (small budget), and the
commands that read run directories (evaluate, analyze, check, export) on every method's output."""

from __future__ import annotations

import json

import pytest

from icao_mtl import analyze, check, evaluate, export

# every method trained and compared (minutes): pytest -m slow tests/test_compare.py
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    import nas.bmtas.command as bmtas_command
    import nas.depth.search as depth_search
    from nas.compare import CompareConfig, run

    out = tmp_path_factory.mktemp("compare") / "cmp"
    data_root = tmp_path_factory.mktemp("compare_data")
    mp = pytest.MonkeyPatch()
    mp.setenv("ICAO_MTL_DATA", str(data_root))
    mp.setattr(bmtas_command, "COMPARE_LAMBDAS", (1.0,))  # one search instead of two, one controller: the
    mp.setattr(depth_search, "COMPARE_CONTROLLERS", ("reinforce",))  # cost of a test
    try:
        cfg = CompareConfig(methods=["stl", "hc2", "depth", "bmtas"], seeds=[0], epochs=2, search_epochs=2,
                            trials=2, pretrain_epochs=1, synth_n=160, synth_size=64, img_size=32,
                            stl_tasks=["hat", "blurred"], batch_size=16, latency_repeats=2, out=str(out), verbose=0)
        first = run(cfg)
        # a second seed for hc2 only: the finished rows are read back, not run again
        stamp = {p.name: p.stat().st_mtime_ns for p in (out / "rows").glob("*.json")}
        second = run(CompareConfig(**{**cfg.__dict__, "methods": ["stl", "hc2"], "seeds": [0, 1]}))
    finally:
        mp.undo()
    return out, first, second, stamp, data_root


def test_every_method_gets_a_row_with_the_same_figures(comparison):
    out, first, _, _, _ = comparison
    methods = {r["method"] for r in first["rows"]}  # the first call's rows
    assert methods == {"stl", "hc2", "depth-reinforce", "bmtas-λ=1", "bmtas-shared", "bmtas-single"}
    for r in first["rows"]:
        assert 0 <= r["test_eer_mean"] <= 1 and r["params"] > 0 and r["madds"] > 0, r
        assert r["latency_ms_batch1"] > 0 and r["latency_ms_batch32"] > 0
        assert r["train_seconds"] is not None and r["train_seconds"] > 0
    by = {r["method"]: r for r in first["rows"]}
    assert by["stl"]["n_tasks"] == 2 and by["hc2"]["n_tasks"] == 23
    assert by["bmtas-single"]["madds"] > by["bmtas-shared"]["madds"]  # four encoders against one
    assert by["depth-reinforce"]["search_seconds"] > 0
    for f in ("comparison.json", "comparison.md", "comparison.png"):
        assert (out / f).is_file()
    md = (out / "comparison.md").read_text()
    assert "| bmtas-shared |" in md and "STL: hat, blurred only" in md


def test_the_comparison_resumes_and_adds_seeds(comparison):
    out, first, second, stamp, _ = comparison
    assert {p.name: p.stat().st_mtime_ns for p in (out / "rows").glob("*_seed0.json")} == stamp
    seeds = {(r["method"], r["seed"]) for r in second["rows"]}
    assert ("hc2", 1) in seeds and ("stl", 1) in seeds and ("bmtas-shared", 1) not in seeds
    assert ("bmtas-shared", 0) in seeds  # the table covers every finished row, earlier calls' included
    hc2 = next(e for e in second["summary"] if e["method"] == "hc2")
    assert hc2["seeds"] == 2 and hc2["test_eer_mean_sd"] is not None
    with pytest.raises(Exception, match="other settings"):
        from nas.compare import CompareConfig, run

        run(CompareConfig(**{**json.loads((out / "compare.json").read_text()), "epochs": 3, "out": str(out)}))


def test_evaluate_analyze_check_and_export_work_on_every_methods_run_directory(comparison, tmp_path, monkeypatch):
    from pathlib import Path

    out, first, _, _, data_root = comparison
    monkeypatch.setenv("ICAO_MTL_DATA", str(data_root))
    seen = set()
    for r in first["rows"]:
        if r["family"] in seen:
            continue
        seen.add(r["family"])
        run_dir = Path(r["run_dir"])
        assert evaluate.main([str(run_dir), "--quiet", "--out", str(tmp_path / r["family"] / "eval")]) == 0, r
        assert analyze.main([str(run_dir), "--requisite", "hat", "--n", "2"]) == 0, r
        photo = next(_data_of(run_dir).glob("images/*"))
        assert check.main([str(run_dir), str(photo), "--json", str(tmp_path / f"{r['family']}.json")]) in (0, 1), r
        report = json.loads((tmp_path / f"{r['family']}.json").read_text())
        assert "hat" in json.dumps(report)
        assert export.main([str(run_dir), "--format", "savedmodel", "--out", str(tmp_path / r["family"] / "sm")]) == 0
    assert seen == {"stl", "hc2", "depth", "bmtas"}


def _data_of(run_dir):
    """The dataset directory a run trained on (the named synthetic set resolved as train did)."""
    from icao_mtl.config import TrainConfig
    from icao_mtl.data import resolve

    cfg = TrainConfig.from_json(run_dir / "config.json")
    return resolve(cfg.data, synth_n=cfg.synth_n, synth_size=cfg.synth_size, progress=False)
