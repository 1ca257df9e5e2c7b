"""A fast, grouped form of the NAS child's head, for training trials on cached features.

The NAS child gives every task of group g its own stack of ``n_g`` dense layers of 64 units and a
two-unit softmax (:func:`icao_mtl.architectures.nas_head`): 23 separate small branches, so a training
step is a long chain of tiny matrix products and its graph takes seconds to trace. Here the branches
of one group are computed together by :class:`TaskDense`, which holds one kernel per task in a
(tasks, inputs, units) tensor and applies them with one ``einsum``: the same network, with the same
parameters per task, in a few operations. :func:`copy_grouped_to_full` and :func:`copy_full_to_grouped`
move the weights between the two forms, so the selected child is saved as the package's ordinary NAS
model.
"""

from __future__ import annotations

import math

import keras


@keras.saving.register_keras_serializable(package="icao_mtl")
class TaskDense(keras.layers.Layer):
    """``tasks`` independent dense layers applied at once.

    Input (batch, d) is shared by every task; input (batch, tasks, d) gives each task its own.
    Output (batch, tasks, units). Each task's kernel is initialised like a Glorot-uniform Dense kernel.
    """

    def __init__(self, tasks: int, units: int, activation=None, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if tasks < 1 or units < 1:
            raise ValueError(f"tasks and units must be positive. Received: tasks={tasks}, units={units}")
        self.tasks, self.units, self.seed = int(tasks), int(units), seed
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        d = int(input_shape[-1])
        limit = math.sqrt(6.0 / (d + self.units))
        self.kernel = self.add_weight(name="kernel", shape=(self.tasks, d, self.units),
                                      initializer=keras.initializers.RandomUniform(-limit, limit, seed=self.seed))
        self.bias = self.add_weight(name="bias", shape=(self.tasks, self.units), initializer="zeros")

    def call(self, x):
        if len(x.shape) == 2:
            y = keras.ops.einsum("bd,tdu->btu", x, self.kernel)
        else:
            y = keras.ops.einsum("btd,tdu->btu", x, self.kernel)
        return self.activation(y + self.bias)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.tasks, self.units)

    def get_config(self):
        return {**super().get_config(), "tasks": self.tasks, "units": self.units, "seed": self.seed,
                "activation": keras.activations.serialize(self.activation)}


@keras.saving.register_keras_serializable(package="icao_mtl")
class TaskSlice(keras.layers.Layer):
    """Output ``index`` of a (batch, tasks, units) tensor: (batch, units)."""

    def __init__(self, index: int, **kwargs):
        super().__init__(**kwargs)
        self.index = int(index)

    def call(self, x):
        return x[:, self.index, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return {**super().get_config(), "index": self.index}


def _grouped(tasks, groups) -> dict:
    from icao_mtl.architectures import _groups_for

    return _groups_for(tuple(tasks), groups)


def grouped_head(config, dim: int, tasks, groups, seed: int = 0) -> keras.Model:
    """The NAS head over a pooled feature vector of shape (1, 1, dim), grouped: outputs {task: (batch, 2)}."""
    grouped = _grouped(tasks, groups)
    depths = tuple(int(n) for n in config)
    if len(depths) != len(grouped) or min(depths) < 1:
        from icao_mtl.errors import ConfigError

        raise ConfigError(f"config {list(depths)} must give one depth >= 1 for each of the {len(grouped)} groups.")
    inputs = keras.Input((1, 1, dim), name="features")
    x = keras.layers.Reshape((dim,), name="flat")(inputs)
    outputs = {}
    for g, (name, members) in enumerate(grouped.items()):
        h = x
        for j in range(depths[g]):
            h = TaskDense(len(members), 64, "relu", seed=seed * 1000 + 10 * g + j, name=f"{name}_dense_{j + 1}")(h)
        logits = TaskDense(len(members), 2, "softmax", seed=seed * 1000 + 10 * g + 9, name=f"{name}_out")(h)
        for i, t in enumerate(members):
            outputs[t] = TaskSlice(i, name=t)(logits)
    return keras.Model(inputs, {t: outputs[t] for t in tasks}, name="nas_head_grouped")


def _pairs(config, tasks, groups):
    """(grouped layer name, task index, full-model layer name) for every dense layer."""
    for g, (name, members) in enumerate(_grouped(tasks, groups).items()):
        for i, t in enumerate(members):
            for j in range(int(config[g])):
                yield f"{name}_dense_{j + 1}", i, f"head_{t}_dense_{j + 1}"
            yield f"{name}_out", i, t


def copy_grouped_to_full(head: keras.Model, full: keras.Model, config, tasks, groups) -> None:
    """Put a grouped head's weights into the per-task layers of the full NAS model."""
    for grouped_name, i, full_name in _pairs(config, tasks, groups):
        layer = head.get_layer(grouped_name)
        full.get_layer(full_name).set_weights([layer.kernel.numpy()[i], layer.bias.numpy()[i]])


def copy_full_to_grouped(full: keras.Model, head: keras.Model, config, tasks, groups) -> None:
    """The reverse: a full NAS model's per-task weights into a grouped head."""
    kernels: dict = {}
    for grouped_name, i, full_name in _pairs(config, tasks, groups):
        layer = head.get_layer(grouped_name)
        k, b = kernels.setdefault(grouped_name, [layer.kernel.numpy().copy(), layer.bias.numpy().copy()])
        src = full.get_layer(full_name)
        k[i], b[i] = src.kernel.numpy(), src.bias.numpy()
    for name, (k, b) in kernels.items():
        head.get_layer(name).set_weights([k, b])


def parameters(config, dim: int, tasks, groups) -> int:
    """Trainable parameters of the head (equal in both forms)."""
    n = 0
    for g, members in enumerate(_grouped(tasks, groups).values()):
        width = dim
        for _ in range(int(config[g])):
            n += len(members) * (width * 64 + 64)
            width = 64
        n += len(members) * (width * 2 + 2)
    return n


__all__ = ["TaskDense", "TaskSlice", "copy_full_to_grouped", "copy_grouped_to_full", "grouped_head", "parameters"]
