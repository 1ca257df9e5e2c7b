"""STL versus MTL with the same budget (the paper's Table 1 at small scale). Marked slow: about half
an hour on 2 CPU cores. Run: pytest -m slow tests/test_slow_comparison.py -s

It trains, on the default synthetic set (6,000 portraits, the small CNN from scratch at 128 px, 10
epochs each): STL for five requisites (one network each), and Handcrafted 1, 2 and 3 for all 23;
then writes the comparison tables to $ICAO_MTL_SLOW_OUT (default: a temporary directory)."""

import os
from pathlib import Path

import pytest

from icao_mtl import io as aio
from icao_mtl.config import TrainConfig
from icao_mtl.reports import compare_table
from icao_mtl.runs import train

STL_SUBSET = ["mouth", "eyes_closed", "veil", "blurred", "background"]


@pytest.mark.slow
def test_stl_versus_handcrafted_with_the_same_budget(tmp_path):
    out = Path(os.environ.get("ICAO_MTL_SLOW_OUT") or tmp_path)
    base = TrainConfig(epochs=10, check_images="exists")
    runs = {}
    runs["STL"] = train(base.copy(approach="stl", tasks=STL_SUBSET, out=str(out / "stl")), verbose=2).metrics
    for name, approach in (("MTL 1", "hc1"), ("MTL 2", "hc2"), ("MTL 3", "hc3")):
        runs[name] = train(base.copy(approach=approach, out=str(out / approach)), verbose=2).metrics
    subset = {n: {"test": {**m["test"], "per_requisite": {t: m["test"]["per_requisite"][t] for t in STL_SUBSET}}}
              for n, m in runs.items()}
    import numpy as np

    for m in subset.values():  # summaries over the subset only, for a fair STL column
        e = np.array([v["eer"] for v in m["test"]["per_requisite"].values()])
        m["test"].update(eer_mean=float(e.mean()), eer_std=float(e.std(ddof=1)), eer_median=float(np.median(e)))
    md_subset, csv_subset = compare_table(subset)
    md_all, csv_all = compare_table({n: m for n, m in runs.items() if n != "STL"})
    aio.write_text(out / "comparison_stl_subset.md", md_subset)
    aio.write_text(out / "comparison_stl_subset.csv", csv_subset)
    aio.write_text(out / "comparison_mtl.md", md_all)
    aio.write_text(out / "comparison_mtl.csv", csv_all)
    print(md_subset)
    print(md_all)
    for m in runs.values():
        assert m["test"]["eer_mean"] < 0.5  # every approach learned something
