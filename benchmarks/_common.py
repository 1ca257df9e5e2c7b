"""Helpers shared by the benchmark scripts: machine description and JSON output."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from icao_mtl import io as aio  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import psutil

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "date": time.strftime("%Y-%m-%d")}
    try:
        import cv2

        info["opencv"] = cv2.__version__
    except ImportError:
        pass
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    return info


def write(name: str, payload: dict) -> Path:
    path = RESULTS / f"{name}.json"
    aio.write_json(path, {"machine": machine(), **payload})
    print(f"wrote {path}")
    return path


def step_timing_parser():
    """The options every side-by-side step benchmark takes: ``--steps`` per timed round, ``--rounds``
    and the input ``--size`` in pixels."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    return parser


def default_model(size: int = 224, **config):
    """The default run's model (regions with its geometry branch, landmark and pose outputs), built
    from the seed 0 under Keras' current dtype policy; ``config`` changes :class:`TrainConfig` fields."""
    import keras

    from icao_mtl.architectures import build_model, with_landmark_outputs, with_pose_outputs
    from icao_mtl.config import GEOMETRY_DEFAULTS, TrainConfig
    from icao_mtl.requisites import GROUPS, IDS

    keras.utils.set_random_seed(0)
    cfg = TrainConfig(img_size=size, **{**GEOMETRY_DEFAULTS, **config}).model_config()
    return with_pose_outputs(with_landmark_outputs(build_model(cfg, IDS, GROUPS)))


def mean_square_loss(outputs):
    """A loss that reaches every output of a model (a dict or a list of tensors): the sum of their mean
    squares, in float32. What a step costs does not depend on which loss it descends."""
    import tensorflow as tf

    return tf.add_n([tf.reduce_mean(tf.square(tf.cast(o, "float32"))) for o in tf.nest.flatten(outputs)])


def time_training_steps(models: dict, x, loss_of, steps: int, rounds: int, ratio_name: str = "ratio_median") -> dict:
    """Side-by-side training steps (forward, ``loss_of(outputs)``, backward, Adam) of each of ``models``
    (name -> Keras model) on the fixed batch ``x``, rounds interleaved (a, b, a, b, ...) so that a
    machine's drift reaches every way alike. Returns, per name, the median milliseconds per step and
    every round's, and, with two models, the median (under ``ratio_name``) and range of the per-round
    ratios first / second."""
    import keras
    import numpy as np
    import tensorflow as tf

    steps_of = {}
    for name, m in models.items():
        optimizer = keras.optimizers.Adam(1e-3)

        def step(model=m, optimizer=optimizer):
            with tf.GradientTape() as tape:
                loss = loss_of(model(x, training=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
            return loss

        steps_of[name] = tf.function(step)
        for _ in range(3):  # trace and warm up
            steps_of[name]()
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, step in steps_of.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - start) / steps * 1000)
    out = {name: {"ms_per_step_median": round(float(np.median(t)), 1), "ms_per_step_rounds": [round(v, 1) for v in t]}
           for name, t in times.items()}
    if len(models) == 2:
        first, second = times.values()
        ratios = [a / b for a, b in zip(first, second)]
        out[ratio_name] = round(float(np.median(ratios)), 3)
        out["ratio_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    return out
