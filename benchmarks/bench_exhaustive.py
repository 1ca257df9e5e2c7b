"""The branch-depth space ranked exhaustively, and every search controller measured against it.

1. **Population speed**: the same 25 children (m = 1) trained one at a time (P = 1) and 25 at a time
   (P = 25), seconds per child, and their validation EERs (equal: a population trains each child as
   alone).
2. **Ground truth**: ``--controller exhaustive`` twice (child seeds 0 and 1): all 625 configurations
   of the paper's space (m = 1), ``--population`` at a time, ranked on validation mean EER; seconds,
   and the seed spread of the ranking itself (Spearman correlation of the two runs, rank of each
   run's best in the other, overlap of their top 5%).
3. **Controllers**: RANDOM, REINFORCE, REFERENCE (the paper code's controller), keras-tuner's
   RandomSearch and BayesianOptimization, N trials each (real children, m = 1), over several seeds:
   the rank among the 625 (by the mean EER of the two exhaustive runs) of the configuration each
   search selects, its regret (its true EER minus the best true EER, points), the trials it took to
   first propose a top-5% configuration, and the search's seconds.

    python benchmarks/bench_exhaustive.py [--population 125] [--trials 50] [--seeds 5]

Writes results/bench_exhaustive.json and results/bench_exhaustive.png (true EER against rank, and
each controller's selections on it).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, write


def _population_speed(splits, features, space, n: int = 25) -> dict:
    from nas.depth.population import PopulationTrainer

    rng = np.random.default_rng(0)
    children = [(space.at(int(i)), 100 + k) for k, i in enumerate(rng.choice(space.size, n, replace=False))]
    alone = PopulationTrainer(features, splits, population=1, seed=0)
    alone.assign(0, *children[0])
    alone.train(1)  # traced here, not timed
    t = time.perf_counter()
    eer_alone = []
    for config, seed in children:
        alone.assign(0, config, seed)
        alone.train(1)
        eer_alone.append(alone.score()[0]["eer_mean"])
    t_alone = (time.perf_counter() - t) / n
    together = PopulationTrainer(features, splits, population=n, seed=0)
    together.assign_many(dict(enumerate(children)))
    together.train(1)  # traced here
    together.assign_many(dict(enumerate(children)))
    t = time.perf_counter()
    together.train(1)
    eer_together = [s["eer_mean"] for s in together.score()]
    t_together = (time.perf_counter() - t) / n
    return {"children": n, "seconds_per_child_P1": t_alone, f"seconds_per_child_P{n}": t_together,
            "speedup": t_alone / t_together,
            "max_abs_difference_val_eer": float(np.max(np.abs(np.array(eer_alone) - np.array(eer_together))))}


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--population", type=int, default=125)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--name", default="bench_exhaustive", help="name of the JSON and PNG in results/")
    args = parser.parse_args()
    import keras_tuner

    from icao_mtl import data
    from nas.depth import search as S
    from nas.depth.space import BranchDepthSpace

    work = Path(os.environ.get("ICAO_MTL_BENCH_DIR") or tempfile.mkdtemp())
    data.resolve(None)
    # the frozen backbone of bench_search.py: the small CNN pretrained 8 epochs, 4 cached views
    pre = S.SearchConfig(trials=1, final_epochs=0, verbose=1, out=str(work / "prepare"), cache_dir=str(work / "cache"))
    (work / "prepare").mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    _, splits, weights, features = S._prepare(pre, work / "prepare", 1)
    prepare_seconds = time.perf_counter() - t
    space = BranchDepthSpace(tuple(splits.train.groups), tuple(range(1, 6)))
    results = {"prepare_seconds": prepare_seconds, "train_images": len(splits.train), "val_images": len(splits.val),
               "feature_dim": features.dim}

    results["population_speed"] = _population_speed(splits, features, space)
    print(results["population_speed"])

    rankings = []
    for seed in (0, 1):
        cfg = S.SearchConfig(controller="exhaustive", population=args.population, final_epochs=0, seed=seed,
                             verbose=0, pretrain_epochs=0)
        recs, seconds = S.search_with(S.make_oracle(cfg, space), cfg, space, splits, features, work / f"exhaustive_{seed}")
        eer = np.full(space.size, np.nan)
        for r in recs:
            if r["metrics"]:
                eer[space.index(tuple(r["config"]))] = r["metrics"]["val_eer_mean"]
        rankings.append({"seed": seed, "seconds": seconds, "trained": int(np.isfinite(eer).sum()), "eer": eer})
        print(f"exhaustive seed {seed}: {seconds:.1f} s, {rankings[-1]['trained']} configurations")
    e0, e1 = rankings[0]["eer"], rankings[1]["eer"]
    true = (e0 + e1) / 2
    order = np.argsort(true)
    rank_of = np.empty(space.size, int)
    rank_of[order] = np.arange(1, space.size + 1)
    top = max(1, math.floor(0.05 * space.size))
    r0, r1 = np.argsort(np.argsort(e0)) + 1, np.argsort(np.argsort(e1)) + 1
    results["exhaustive"] = {
        "population": args.population, "seconds": [r["seconds"] for r in rankings],
        "seconds_per_child": [r["seconds"] / space.size for r in rankings],
        "spearman_seed0_seed1": _spearman(e0, e1),
        "best_seed0": {"config": list(space.at(int(np.argmin(e0)))), "val_eer": float(np.min(e0)),
                       "rank_in_seed1": int(r1[np.argmin(e0)])},
        "best_seed1": {"config": list(space.at(int(np.argmin(e1)))), "val_eer": float(np.min(e1)),
                       "rank_in_seed0": int(r0[np.argmin(e1)])},
        "top5pct_overlap": len(set(np.argsort(e0)[:top]) & set(np.argsort(e1)[:top])) / top,
        "mean_abs_seed_difference_points": float(100 * np.mean(np.abs(e0 - e1))),
        "true_best": {"config": list(space.at(int(order[0]))), "val_eer": float(true[order[0]])},
        "true_worst": {"config": list(space.at(int(order[-1]))), "val_eer": float(true[order[-1]])},
        "true_eer_spread_points": float(100 * (true[order[-1]] - true[order[0]])),
        "top5pct_threshold_eer": float(true[order[top - 1]]),
        "ranking": [{"rank": int(i + 1), "config": list(space.at(int(j))), "val_eer_seed0": float(e0[j]),
                     "val_eer_seed1": float(e1[j])} for i, j in enumerate(order)],
    }
    print({k: v for k, v in results["exhaustive"].items() if k != "ranking"})

    objective = keras_tuner.Objective("val_eer_mean", "min")
    makers = {
        "random": lambda c: S.make_oracle(c, space),
        "reinforce": lambda c: S.make_oracle(c, space),
        "reference": lambda c: S.make_oracle(c, space),
        "kt_random": lambda c: keras_tuner.oracles.RandomSearchOracle(objective, c.trials, seed=c.seed + 1,
                                                                      hyperparameters=space.hyperparameters()),
        "kt_bayesian": lambda c: keras_tuner.oracles.BayesianOptimizationOracle(
            objective, c.trials, seed=c.seed + 1, hyperparameters=space.hyperparameters()),
    }
    runs = []
    for name, make in makers.items():
        for seed in range(args.seeds):
            cfg = S.SearchConfig(controller=name if name in ("random", "reinforce", "reference") else "random",
                                 trials=args.trials, final_epochs=0, seed=seed, verbose=0, pretrain_epochs=0)
            recs, seconds = S.search_with(make(cfg), cfg, space, splits, features, work / f"{name}_{seed}")
            done = [r for r in recs if r["metrics"]]
            chosen = min(done, key=lambda r: r["metrics"]["val_eer_mean"])
            idx = space.index(tuple(chosen["config"]))
            first_top = next((i + 1 for i, r in enumerate(recs) if rank_of[space.index(tuple(r["config"]))] <= top),
                             None)
            runs.append({"controller": name, "seed": seed, "trials": len(recs), "seconds": seconds,
                         "distinct_configs": len({tuple(r["config"]) for r in recs}),
                         "selected_config": chosen["config"], "selected_val_eer_in_search": chosen["metrics"]["val_eer_mean"],
                         "selected_true_rank": int(rank_of[idx]),
                         "regret_points": float(100 * (true[idx] - true[order[0]])),
                         "trials_to_top5pct": first_top,
                         "best_true_rank_proposed": int(min(rank_of[space.index(tuple(r["config"]))] for r in recs))})
            print(runs[-1])
    results["controllers"] = runs
    summary = {}
    for name in makers:
        rs = [r for r in runs if r["controller"] == name]
        reached = [r["trials_to_top5pct"] for r in rs if r["trials_to_top5pct"] is not None]
        summary[name] = {"median_selected_rank": float(np.median([r["selected_true_rank"] for r in rs])),
                         "mean_regret_points": float(np.mean([r["regret_points"] for r in rs])),
                         "reached_top5pct": f"{len(reached)}/{len(rs)}",
                         "median_trials_to_top5pct": float(np.median(reached)) if reached else None,
                         "median_search_seconds": float(np.median([r["seconds"] for r in rs]))}
    results["summary"] = summary
    for k, v in summary.items():
        print(k, v)
    _plot(true, order, runs, RESULTS / f"{args.name}.png", space)
    write(args.name, {"trials": args.trials, "seeds": args.seeds, **results})


def _plot(true, order, runs, path, space):
    from icao_mtl.reports import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(np.arange(1, len(order) + 1), 100 * true[order], color="0.3", lw=1, label="all 625 (mean of 2 seeds)")
    for k, name in enumerate(sorted({r["controller"] for r in runs})):
        rs = [r for r in runs if r["controller"] == name]
        ax.plot([r["selected_true_rank"] for r in rs], [100 * true[space.index(tuple(r["selected_config"]))] for r in rs],
                "o", ms=6, alpha=0.7, label=f"{name}: selected")
    ax.set_xscale("log")
    ax.set_xlabel("true rank of the configuration (1 = best)")
    ax.set_ylabel("validation EER, mean over requisites (%)")
    ax.set_title("The branch-depth space ranked exhaustively; what each controller selected")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
