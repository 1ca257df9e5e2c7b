"""The paper's Table 2 measured: RANDOM and REINFORCE, N = 50 trials, m in {1, 5} child epochs, the
best child retrained 50 epochs, on the default synthetic set, for several seeds.

Every search is an ordinary ``python -m nas.depth`` run (:func:`nas.depth.search.run_search`) on one
prepared backbone (the small CNN pretrained 8 epochs, then frozen, as ``nas.depth`` does offline) and
one feature cache, shared by all of them; each search's directory is kept under the work directory,
so an interrupted benchmark continues where it stopped (the searches resume). The equivalent
command of one row::

    python -m nas.depth --controller reinforce --trials 50 --child-epochs 5 --final-epochs 50 --seed 1 \\
        --weights WORK/prepare/backbone.weights.h5 --pretrain-epochs 0 --cache-dir WORK/cache

    python benchmarks/bench_table2.py [--seeds 0 1] [--final-from images|features] [--m 1 5]

Writes results/bench_table2.json (every row, and per (controller, m) the mean and spread over seeds)
and prints the table in the paper's layout.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import write


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--m", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--final-epochs", type=int, default=50)
    parser.add_argument("--final-from", default="images", choices=("images", "features"))
    parser.add_argument("--controllers", nargs="+", default=["random", "reinforce"])
    args = parser.parse_args()
    from icao_mtl import data
    from icao_mtl import io as aio
    from nas.depth import search as S

    work = Path(os.environ.get("ICAO_MTL_BENCH_DIR") or tempfile.mkdtemp())
    data.resolve(None)
    prepare = work / "prepare"
    prepare.mkdir(parents=True, exist_ok=True)
    pre = S.SearchConfig(trials=1, final_epochs=0, verbose=1, out=str(prepare), cache_dir=str(work / "cache"))
    S._prepare(pre, prepare, 1)  # once (a no-op when bench_exhaustive.py or bench_search.py prepared it)
    weights = str(prepare / "backbone.weights.h5")
    rows = []
    for m in args.m:
        for controller in args.controllers:
            for seed in args.seeds:
                out = work / "table2" / f"{controller}_m{m}_s{seed}_{args.final_from}"
                cfg = S.SearchConfig(controller=controller, trials=args.trials, child_epochs=m,
                                     final_epochs=args.final_epochs, final_from=args.final_from, seed=seed,
                                     weights=weights, pretrain_epochs=0, cache_dir=str(work / "cache"),
                                     out=str(out), verbose=0)
                t = time.perf_counter()
                S.run_search(cfg, resume=(out / "search.json").is_file())
                row = aio.read_json(out / "result.json")
                row.update(seed=seed, wall_seconds=time.perf_counter() - t, final_from=args.final_from)
                rows.append(row)
                print({k: row[k] for k in ("controller", "m", "seed", "best_config", "best_val_eer_mean",
                                           "eer_mean", "eer_median", "search_seconds", "wall_seconds")}, flush=True)
    md, _ = S.table2(rows)
    print(md)
    summary = {}
    for m in args.m:
        for controller in args.controllers:
            rs = [r for r in rows if r["m"] == m and r["controller"] == controller]
            summary[f"{controller}_m{m}"] = {
                k: {"mean": float(np.mean([r[k] for r in rs])), "min": float(np.min([r[k] for r in rs])),
                    "max": float(np.max([r[k] for r in rs]))}
                for k in ("eer_mean", "eer_std", "eer_median", "best_val_eer_mean", "search_seconds")}
    write("bench_table2", {"trials": args.trials, "final_epochs": args.final_epochs, "final_from": args.final_from,
                           "seeds": args.seeds, "rows": rows, "summary": summary, "table_md": md})


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
