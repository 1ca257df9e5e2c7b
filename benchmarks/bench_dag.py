"""The restricted-DAG network's cost, side by side in one run. Writes results/bench_dag.json.

1. A search step (every edge, sigmoid gates, the K tasks batched task-major, weights and gates
   updated from one forward) against a step of the same central network for one task: the tasks'
   hidden states make the search about K times as costly; this measures by how much.
2. With ``--run DIR`` (a finished ``python -m nas.dag`` run): its final network's parameters, MAdds and
   CPU latency against the searched network, the shared bottom and K single-task networks (its
   params.json).

    python benchmarks/bench_dag.py [--run runs/dag_digits] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import time

from _common import write


def _step_time(spec, tasks, steps: int, batch: int = 32) -> float:
    """Median seconds of an engine search step (one batch) of the central network over ``tasks``."""
    import keras
    import numpy as np
    import tensorflow as tf

    from icao_mtl.training import Engine, Phase

    from nas.dag.network import build_network
    from nas.dag.search import groups, phases

    keras.utils.set_random_seed(0)
    model = build_network(spec, tasks)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch * (steps + 1), spec.image_size, spec.image_size, 3)).astype("float32")
    y = {t: rng.integers(0, 2, len(x)).astype("int32") for t in tasks}
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache()
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, b, logs=None):
            times.append(time.perf_counter() - self.t)

    search = phases(model, spec, tasks, warmup=1, search=1, finetune=1, lambda_sq=0.05, kappa=1.0)[1]
    engine = Engine(model, tasks, groups=groups(model), monitor="loss", verbose=0, tensorboard=False)
    engine.fit([Phase("search", 1, passes=search.passes)], {"train": lambda e: data}, callbacks=[Timer()])
    return float(np.median(times[1:]))  # the first step traces


def _row(name, spec, n_tasks, steps):
    from nas.dag.graph import n_edges

    tasks = tuple(f"t{k}" for k in range(n_tasks))
    many = _step_time(spec, tasks, steps)
    one = _step_time(spec, tasks[:1], steps)
    result = {"setting": name, "tasks": n_tasks, "N": spec.n, "M": spec.m, "edges": n_edges(spec.n, spec.m),
              "width": spec.width, "image_size": spec.image_size, "batch": 32,
              "search_step_seconds": many, "single_task_step_seconds": one, "ratio": many / one}
    print(result)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--run", default=None, help="a finished python -m nas.dag run directory")
    args = parser.parse_args()
    from nas.dag.network import DagSpec

    results = {"search_step": [
        _row("digits (spec §8.1)", DagSpec(n=6, m=3, width=16, image_size=32), 10, args.steps),
        _row("faces (spec §8.1)", DagSpec(n=8, m=3, width=32, image_size=64), 23, args.steps)]}
    if args.run:
        import json
        from pathlib import Path

        params = json.loads((Path(args.run) / "params.json").read_text())
        results["final_network"] = {"run": str(args.run), **params}
        print(results["final_network"])
    write("bench_dag", results)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
