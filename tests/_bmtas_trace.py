"""A tiny BMTAS search on fixed arrays, as a record of what the search computes.

``python tests/_bmtas_trace.py OUT.json`` writes the per-epoch trace (losses, temperature, alpha) of
the search; ``tests/data/bmtas_trace_reference.json`` was written with the engine as it was before the
step-plan rewrite (commit af66f94), and ``test_nas_branching`` checks that today's search still
computes the same numbers.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def arrays(n: int, size: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    tasks = ("a", "b", "c", "d")
    y = {"a": (x[..., 0].mean((1, 2)) > 127).astype("int32"), "b": (x[..., 1].mean((1, 2)) > 127).astype("int32"),
         "c": (x[:, : size // 2].mean((1, 2, 3)) > 127).astype("int32"), "d": rng.integers(-1, 2, n).astype("int32")}
    return tasks, x, y


def search_trace(epochs: int = 4, warmup: int = 1, lam: float = 0.5) -> list[dict]:
    import keras
    import numpy as np
    import tensorflow as tf

    from nas.common.blocks import layout
    from nas.bmtas import Supergraph, resource_cost, search_groups, search_phases
    from icao_mtl.training import Engine

    tasks, x, y = arrays(48, 32, 0)
    units = [("a", "b"), ("c",), ("d",)]
    spec = layout("small_cnn", "fine")
    keras.utils.set_random_seed(0)
    model = Supergraph(spec, tasks, units, 3, 32, seed=0)
    costs = np.array([1.0, 2.0, 3.0, 4.0], np.float32) / 10.0
    cost = resource_cost("chain", len(units), 3, costs)
    n_arch = 16

    def stream(lo, hi):
        def make(epoch):
            return tf.data.Dataset.from_tensor_slices((x[lo:hi], {t: v[lo:hi] for t, v in y.items()})).batch(8)
        return make

    engine = Engine(model, tasks, groups=search_groups(model, lr=1e-3, arch_lr=0.05), monitor="loss", verbose=0)
    trace = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            engine = getattr(self.model, "engine", None)  # the engine's whole entry (the phase included)
            logs = engine.history[-1] if engine is not None else logs
            trace.append({"epoch": int(logs["epoch"]), "phase": logs["phase"],
                          "loss": float(logs["loss"]), "weights_loss": logs.get("weights_loss"),
                          "temperature": float(model.temperature.numpy()),
                          "alpha": np.asarray(model.alpha.numpy(), np.float64).round(7).tolist()})

    engine.fit(search_phases(model, epochs=epochs, warmup=warmup, lam=lam, cost=cost),
               {"weights": stream(n_arch, len(x)), "arch": stream(0, n_arch)}, callbacks=[Record()])
    return trace


if __name__ == "__main__":
    with open(sys.argv[1], "w") as fh:
        json.dump(search_trace(), fh, indent=1)
