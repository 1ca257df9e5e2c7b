"""BMTAS costs, side by side in one run. Writes results/bench_branching.json.

1. Training step time on the engine (batch 32, small CNN at 128 px, the 23 requisites in the four
   requisite groups): one batch of the Shared network (all tasks, one forward) against one batch of
   the supergraph's warm-up (4 unit steps, one-hot routes), of its weight pass and of its architecture
   pass (4 unit forwards with Gumbel mixtures over K copies; a search epoch = the architecture pass over
   a quarter as many batches + the weight pass), for K = 4 (the method: K = units) and 2, at the
   training resolution and at half of it (the search's default, as the paper), against the Shared
   network's step at the training resolution.
2. The search's wall time on the default dataset, read from a finished ``python -m nas.bmtas`` run
   (``--search-run DIR``; its per-epoch seconds are in each ``lambda_*/trace.json``).
3. Inference cost of the retrained branched networks against Shared and Single (one trunk per unit):
   measured MAdds, parameters and latency (batch 32, ms per image, median of 5).

    python benchmarks/bench_branching.py [--search-run runs/bmtas_default]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import write

SIZE, BATCH, BATCHES = 128, 32, 12


def _data(tasks, n_batches, size=SIZE):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (n_batches * BATCH, size, size, 3)).astype("float32")
    y = {t: rng.integers(-1, 2, n_batches * BATCH).astype("int32") for t in tasks}
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache()


def _setup():
    from icao_mtl.requisites import GROUPS, IDS
    from nas.bmtas import make_units

    tasks = list(IDS)
    names, units = make_units(tasks, GROUPS, "groups")
    return tasks, names, units


def step_times() -> dict:
    import keras
    import numpy as np

    from icao_mtl.training import Engine, Phase, optimizer_factory
    from nas.common.blocks import layout
    from nas.bmtas import Supergraph, build_branched, resource_cost, search_groups, search_phases

    tasks, names, units = _setup()
    spec = layout("small_cnn", "fine")
    data = _data(tasks, BATCHES)
    out = {}
    keras.utils.set_random_seed(0)
    shared, _ = build_branched(spec, tasks, units, np.zeros((4, 4), int), image_size=SIZE, unit_names=names)
    engine = Engine(shared, tasks, optimizer=optimizer_factory("adam", 1e-3), monitor="loss", verbose=0,
                    tensorboard=False)
    hist = engine.fit([Phase("train", 3, validate=False)], {"train": data})
    out["shared_network_batch_s"] = min(h["seconds"] for h in hist[1:]) / BATCHES
    # the search at the training resolution (128 px), and at half of it (the default, as the paper)
    for k, size in ((4, SIZE), (2, SIZE), (4, SIZE // 2), (2, SIZE // 2)):
        keras.utils.set_random_seed(0)
        sg = Supergraph(spec, tasks, units, k, size)
        costs = np.ones(len(spec.layers), np.float32) / len(spec.layers)
        phases = search_phases(sg, epochs=5, warmup=2, lam=0.5, cost=resource_cost("chain", 4, k, costs))
        engine = Engine(sg, tasks, groups=search_groups(sg), monitor="loss", verbose=0, tensorboard=False)
        hist = engine.fit(phases, {"weights": _data(tasks, BATCHES, size), "arch": _data(tasks, BATCHES // 4, size)})
        warm = hist[1]["seconds"] / BATCHES
        search = min(h["seconds"] for h in hist[3:])  # arch pass (BATCHES/4 batches) + weight pass (BATCHES)
        out[f"supergraph_K{k}" + ("" if size == SIZE else f"_{size}px")] = {
                                   "image_size": size, "warmup_batch_s": warm, "search_epoch_s": search,
                                   "search_epoch_per_weight_batch_s": search / BATCHES,
                                   "vs_shared_per_weight_batch": search / BATCHES / out["shared_network_batch_s"]}
    return out


def search_wall_time(run: Path) -> dict:
    rows = {}
    for d in sorted(run.glob("lambda_*")):
        if not (d / "structure.json").is_file():
            continue
        info = json.loads((d / "structure.json").read_text())
        trace = json.loads((d / "trace.json").read_text())
        rows[d.name] = {"search_seconds": info.get("search_seconds"), "epochs": len(trace),
                        "epoch_seconds": [round(e["seconds"], 1) for e in trace], "copies": info["copies"],
                        "madds": info["madds"]["total"]}
    return {"run": str(run), "config": json.loads((run / "branching.json").read_text()), "lambdas": rows}


def inference_costs(structures: dict) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from nas.common.blocks import layout
    from nas.common.madds import measure_madds
    from nas.bmtas import build_branched
    from nas.bmtas.partitions import branch_groups

    tasks, names, units = _setup()
    spec = layout("small_cnn", "fine")
    x = np.random.default_rng(0).uniform(0, 255, (BATCH, SIZE, SIZE, 3)).astype("float32")
    out = {}
    for name, config in structures.items():
        keras.utils.set_random_seed(0)
        model, _ = build_branched(spec, tasks, units, config, image_size=SIZE, unit_names=names)
        fn = tf.function(lambda v: model(v, training=False))
        fn(x)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
        out[name] = {"copies": [len(g) for g in branch_groups(config)],
                     "madds": measure_madds(model, (SIZE, SIZE, 3)), "params": model.count_params(),
                     "ms_per_image": 1000 * float(np.median(times)) / BATCH}
    return out


def main() -> None:
    import numpy as np

    p = argparse.ArgumentParser()
    p.add_argument("--search-run", default=None, help="a finished python -m nas.bmtas run on the default set")
    args = p.parse_args()
    result = {"settings": {"backbone": "small_cnn", "image_size": SIZE, "batch": BATCH, "units": 4,
                           "tasks": 23}}
    result["step_times"] = step_times()
    print(json.dumps(result["step_times"], indent=1))
    structures = {"shared": np.zeros((4, 4), int), "single": np.tile(np.arange(4), (4, 1))}
    if args.search_run:
        run = Path(args.search_run)
        result["search"] = search_wall_time(run)
        for d in sorted(run.glob("lambda_*")):
            if (d / "structure.json").is_file():
                structures[d.name] = np.asarray(json.loads((d / "structure.json").read_text())["config"])
    result["inference"] = inference_costs(structures)
    print(json.dumps(result["inference"], indent=1))
    write("bench_branching", result)


if __name__ == "__main__":
    main()
