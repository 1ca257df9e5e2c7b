"""MTL-NAS's cost, side by side in one run. Writes results/bench_mtl_nas.json.

1. A search round on the engine (one architecture step, sigmoid gates, MinEntropy; then one weight
   step, binary-concrete gates, four SGD groups) against a training step of the plain multi-branch
   network (the same units with no fusion op, Adam), a batch of 32 each, in the digits setting (4
   units, 32 px) and the synthetic faces' (the 4 requisite groups, 23 tasks, 64 px).
2. With ``--run DIR`` (a finished ``python -m nas.mtl_nas`` run): its final network's parameters,
   MAdds and CPU latency against the network with every edge and the plain one (its params.json).
3. With ``--arch-lr-ablation``: short digits searches (2 + 3 epochs, seed 0) at architecture
   learning rates 1e-3 (the released configs), 1e-2 and 0.1 (the default here): the share of undecided
   gates at the end, the kept edges and the test EER of the thresholded network.

    python benchmarks/bench_mtl_nas.py [--run runs/mtl_nas_digits] [--steps 8] [--arch-lr-ablation]
"""

from __future__ import annotations

import argparse
import os
import time

from _common import write


def _step_times(model, tasks, phase, steps: int, image_size: int, batch: int = 32, groups=None) -> list:
    """Seconds of every engine step of one epoch of ``phase`` (the first steps trace)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from icao_mtl.training import Engine

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch * steps, image_size, image_size, 3)).astype("float32")
    y = {t: rng.integers(0, 2, len(x)).astype("int32") for t in tasks}
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache()
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, b, logs=None):
            times.append(time.perf_counter() - self.t)

    engine = Engine(model, tasks, groups=groups, monitor="loss", verbose=0, tensorboard=False,
                    optimizer=None if groups else (lambda: keras.optimizers.Adam(1e-3)))
    streams = {name: (lambda e: data) for name in ("train", "arch_half", "weight_half")}
    engine.fit([phase], streams, callbacks=[Timer()])
    return times


def _row(name, units, image_size, steps):
    import keras
    import numpy as np

    from icao_mtl.training import Phase
    from nas.mtl_nas.network import NetSpec, Supernet, build_net
    from nas.mtl_nas.search import groups, phases

    spec = NetSpec(image_size=image_size)
    tasks = [t for _, ts in units for t in ts]
    keras.utils.set_random_seed(0)
    supernet = Supernet(spec, units)
    search = phases(supernet, tasks, pretrain=0, search=1)[0]
    t = _step_times(supernet, tasks, search, steps, image_size, groups=groups(supernet, rounds=steps))
    rounds = [a + b for a, b in zip(t[0::2], t[1::2])][2:]  # the first rounds trace
    keras.utils.set_random_seed(0)
    plain = build_net(spec, units, fusion=False, name="plain")
    p = _step_times(plain, tasks, Phase("train", 1), steps, image_size)[2:]
    result = {"setting": name, "units": len(units), "tasks": len(tasks), "edges": len(supernet.table),
              "image_size": image_size, "batch": 32, "search_round_seconds": float(np.median(rounds)),
              "plain_step_seconds": float(np.median(p)), "ratio": float(np.median(rounds) / np.median(p))}
    print(result)
    return result


def _ablation() -> list:
    import tempfile
    from pathlib import Path

    from nas.mtl_nas import MtlNasConfig, run

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lr in (1e-3, 1e-2, 0.1):
            result = run(MtlNasConfig(data="digits", pretrain_epochs=2, search_epochs=3, arch_lr=lr,
                                      out=str(Path(tmp) / f"lr{lr:g}"), verbose=0))
            test = result.runs[0].metrics["test"]
            rows.append({"arch_lr": lr, "undecided": result.edges["undecided"], "kept": result.edges["kept"],
                         "edges": result.edges["edges"], "test_eer_mean": test["eer_mean"],
                         "test_accuracy_mean": test["accuracy_mean"]})
            print(rows[-1])
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--run", default=None, help="a finished python -m nas.mtl_nas run directory")
    parser.add_argument("--arch-lr-ablation", action="store_true")
    args = parser.parse_args()
    from icao_mtl.data.tasksets import DIGIT_GROUPS
    from icao_mtl.requisites import GROUPS

    results = {"search_round": [
        _row("digits (4 units, 10 tasks)", [(g, list(m)) for g, m in DIGIT_GROUPS.items()], 32, args.steps),
        _row("faces (4 requisite groups, 23 tasks)", [(g, list(m)) for g, m in GROUPS.items()], 64, args.steps)]}
    if args.run:
        import json
        from pathlib import Path

        params = json.loads((Path(args.run) / "params.json").read_text())
        results["final_network"] = {"run": str(args.run), **params}
        print(results["final_network"])
    if args.arch_lr_ablation:
        results["arch_lr_ablation"] = {"setting": "digits, 4 units, 2 pretraining + 3 search epochs, seed 0",
                                       "rows": _ablation()}
    write("bench_mtl_nas", results)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
