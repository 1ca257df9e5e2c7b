"""REINFORCE at real reward scales: the branch-depth controllers on synthetic bandits.

A bandit over the paper's 625 configurations (four groups, depths 1..5) with a known best
``(4, 2, 5, 1)``: the reward (a validation accuracy) falls by ``gap`` for each depth step away from the
best (L1 distance), ``reward = 0.9 - gap * |config - best|_1``, optionally with Gaussian evaluation noise
of standard deviation ``gap / 2`` (two trainings of one child differ about that much). No model is trained:
the controllers are driven through keras-tuner's Oracle interface exactly as a Tuner drives them
(``create_trial`` / ``update_trial`` / ``end_trial``).

Compared, over the same seeds and budget: RANDOM, REINFORCE with its default normalised advantage, and
REINFORCE on the raw advantage with the former defaults (learning rate 1, entropy bonus 0.01). Reported
per (gap, noise, controller): seeds that proposed the best within the budget, the trials it took (median
over those), the final probability of the best under the policy, and the regret (best reward minus the
best true reward among the proposals, in points).

    python benchmarks/bench_controllers.py            # gaps 0.5, 2 and 10 points, 8 seeds, 80 trials
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import write

BEST = (4, 2, 5, 1)


def bandit(gap: float, noise: float, seed: int):
    rng = np.random.default_rng(1000 + seed)

    def true_reward(config):
        return 0.9 - gap * sum(abs(a - b) for a, b in zip(config, BEST))

    def measured(config):
        return true_reward(config) + (noise * rng.normal() if noise else 0.0)

    return true_reward, measured


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gaps", type=float, nargs="+", default=[0.5, 2.0, 10.0], help="points per depth step")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--budget", type=int, default=80)
    args = parser.parse_args()

    from nas.depth.controllers import RandomOracle, ReinforceOracle, drive_with_rewards
    from nas.depth.space import BranchDepthSpace

    space = BranchDepthSpace.paper()
    controllers = {
        "random": lambda s: RandomOracle(space, max_trials=args.budget, seed=s),
        "reinforce": lambda s: ReinforceOracle(space, max_trials=args.budget, seed=s),
        "reinforce_raw": lambda s: ReinforceOracle(space, max_trials=args.budget, seed=s, normalize=False,
                                                   learning_rate=1.0, entropy_weight=0.01),
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for gap_points in args.gaps:
            for noisy in (False, True):
                gap = gap_points / 100
                for name, make in controllers.items():
                    t0 = time.perf_counter()
                    per_seed = []
                    for s in range(args.seeds):
                        true_reward, measured = bandit(gap, gap / 2 if noisy else 0.0, s)
                        oracle = make(s)
                        project = Path(tmp) / f"{name}{gap}{noisy}{s}"
                        proposed = drive_with_rewards(oracle, measured, args.budget, project)
                        found = proposed.index(BEST) + 1 if BEST in proposed else None
                        p_best = oracle.probability_of(BEST) if name != "random" else None
                        regret = 100 * (true_reward(BEST) - max(true_reward(c) for c in proposed))
                        per_seed.append({"seed": s, "trials_to_best": found, "p_best": p_best, "regret_points": regret,
                                         "trials_run": len(proposed)})
                    found = [r["trials_to_best"] for r in per_seed if r["trials_to_best"] is not None]
                    median_found = statistics.median(found) if found else None
                    row = {"gap_points": gap_points, "noise_points": gap_points / 2 if noisy else 0.0,
                           "controller": name, "seeds": args.seeds, "budget": args.budget,
                           "found_best": len(found), "median_trials_to_best": median_found,
                           "mean_regret_points": statistics.fmean(r["regret_points"] for r in per_seed),
                           "seconds": time.perf_counter() - t0, "per_seed": per_seed}
                    if name != "random":
                        ps = [r["p_best"] for r in per_seed]
                        row.update(mean_p_best=statistics.fmean(ps), seeds_p_best_over_half=sum(p >= 0.5 for p in ps))
                    results.append(row)
                    print(f"gap {gap_points:>4} pt  noise {row['noise_points']:>4} pt  {name:<14} found "
                          f"{len(found)}/{args.seeds}  median trials {row['median_trials_to_best']}  "
                          f"P(best) {row.get('mean_p_best', float('nan')):.3f}  regret "
                          f"{row['mean_regret_points']:.2f} pt  ({row['seconds']:.0f} s)", flush=True)
    write("bench_controllers", {"best": list(BEST), "space": "paper (4 groups, depths 1..5, 625 configurations)",
                                "reward": "0.9 - gap * L1 distance to the best (+ N(0, (gap/2)^2) when noisy)",
                                "results": results})


if __name__ == "__main__":
    main()
