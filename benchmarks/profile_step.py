"""Where a training step's time goes: the engine's step, ``Model.fit``'s step and a bare step (forward,
masked loss, backward, Adam; nothing else) on one fixed batch repeated from memory, so that the input
pipeline is out of the picture. Rounds interleave the three ways (bare, engine, fit, bare, ...);
prints and writes ``results/profile_step.json`` with the median milliseconds per step of each way and
their spread over the rounds.

    python benchmarks/profile_step.py [--steps 40] [--rounds 5] [--size 128] [--approach hc2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _common import write


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--approach", default="hc2")
    parser.add_argument("--steps-per-call", type=int, default=1, help="the engine's steps per traced call")
    parser.add_argument("--precision", default="none", help="the engine's --mixed-precision: none, bfloat16, ...")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from icao_mtl.training import set_precision

    set_precision(args.precision)

    from icao_mtl.architectures import ModelConfig, build_model
    from icao_mtl.losses import MaskedMultiTaskLoss
    from icao_mtl.requisites import GROUPS, IDS
    from icao_mtl.training import Engine, Pass, Phase, VariableGroup

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, args.size, args.size, 3)).astype(np.float32)
    y = {t: rng.integers(0, 2, 32).astype(np.int32) for t in IDS}

    def dataset(n):
        return tf.data.Dataset.from_tensors((x, y)).repeat(n).prefetch(2)

    def model():
        keras.utils.set_random_seed(0)
        return build_model(ModelConfig(args.approach, "small_cnn", "none", image_size=args.size), IDS, GROUPS)

    # bare: what any custom loop must do
    bare_model, bare_opt = model(), keras.optimizers.Adam(1e-3)
    loss_fn = MaskedMultiTaskLoss(IDS, 0.1)

    @tf.function
    def bare_step(xb, yb):
        with tf.GradientTape() as tape:
            loss, _ = loss_fn(yb, bare_model(xb, training=True))
        grads = tape.gradient(loss, bare_model.trainable_variables)
        bare_opt.apply(grads, bare_model.trainable_variables)
        return loss

    def bare_round(n):
        it = iter(dataset(n))
        bare_step(*next(it)).numpy()
        start = time.perf_counter()
        for xb, yb in it:
            out = bare_step(xb, yb)
        out.numpy()
        return (time.perf_counter() - start) / (n - 1)

    # reuse: one optimiser kept across the rounds' fit calls, so that no round traces again
    group = VariableGroup("model", lambda: keras.optimizers.Adam(1e-3), reuse=True)
    engine = Engine(model(), IDS, groups={"model": group}, loss=MaskedMultiTaskLoss(IDS, 0.1), monitor="loss",
                    verbose=0, tensorboard=False)
    phase = Phase("train", 1, passes=[Pass(steps_per_call=args.steps_per_call)])

    def engine_round(n):
        engine.fit([phase], {"train": lambda epoch: dataset(n)})
        return engine.history[-1]["seconds"] / n

    fit_model = model()
    fit_model.compile(keras.optimizers.Adam(1e-3), loss={t: "sparse_categorical_crossentropy" for t in IDS},
                      loss_weights={t: 0.1 for t in IDS})

    def fit_round(n):
        fit_model.fit(dataset(1), epochs=1, verbose=0)
        start = time.perf_counter()
        fit_model.fit(dataset(n), epochs=1, verbose=0)
        return (time.perf_counter() - start) / n

    ways = {"bare": bare_round, "engine": engine_round, "fit": fit_round}
    times = {k: [] for k in ways}
    for r in range(args.rounds + 1):
        for name, fn in ways.items():
            t = fn(args.steps)
            if r:  # round 0 traces
                times[name].append(t * 1000)
    result = {k: {"median_ms": float(np.median(v)), "min_ms": float(np.min(v)), "max_ms": float(np.max(v))}
              for k, v in times.items()}
    result["engine_over_fit_step_time"] = result["engine"]["median_ms"] / result["fit"]["median_ms"]
    result["setup"] = {"approach": args.approach, "size": args.size, "batch": 32, "steps": args.steps,
                       "rounds": args.rounds, "steps_per_call": args.steps_per_call, "precision": args.precision,
                       "threads": os.cpu_count()}
    for k, v in result.items():
        print(k, v)
    write("profile_step", result)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
