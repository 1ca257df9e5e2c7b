"""Helper for test_training.py: trains a tiny batch-norm-free model with the engine under a
tf.distribute strategy (or none) on fixed data and prints the final weights' checksum as JSON."""

import json
import os
import sys

mode = sys.argv[1]  # single | mirrored | multiworker
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from icao_mtl.training import Engine, Phase, is_chief, make_strategy  # noqa: E402

strategy = make_strategy({"single": "none", "mirrored": "mirrored", "multiworker": "multiworker"}[mode])
import keras  # noqa: E402
import numpy as np  # noqa: E402

tasks = ("a", "b")
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (32, 16, 16, 3)).astype("float32")
labels = {"a": (x[:, :, :, 0].mean((1, 2)) > 127).astype("int32"), "b": rng.integers(-1, 2, 32).astype("int32")}
labels["b"][:12] = -1  # uneven not-applicable labels across replicas exercise the global normalisation

keras.utils.set_random_seed(1)
with strategy.scope():
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed=3))(inp / 255.0)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = {t: keras.layers.Dense(2, activation="softmax", name=t,
                                 kernel_initializer=keras.initializers.GlorotUniform(seed=4 + i))(h)
           for i, t in enumerate(tasks)}
    model = keras.Model(inp, out)


def data(epoch):
    return tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)


engine = Engine(model, tasks, optimizer=lambda: keras.optimizers.SGD(0.5), strategy=strategy, monitor="loss",
                verbose=0)
history = engine.fit([Phase("train", 3)], {"train": data})
print(json.dumps({"chief": is_chief(strategy), "replicas": strategy.num_replicas_in_sync,
                  "checksum": float(sum(np.abs(w).sum() for w in model.get_weights())),
                  "loss": [h["loss"] for h in history]}))
