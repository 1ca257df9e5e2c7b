"""Many children of the branch-depth space in one reusable network, trained together.

A trial of the branch-depth search trains a small head (``n_g`` dense layers of 64 units per task of
group g, then a two-unit softmax) on cached backbone features. Building and tracing that head anew
for every trial costs more than training it. :class:`DepthPopulation` holds ``P`` heads of the
*largest* depth at once, along a child axis: every kernel is a (P, tasks, inputs, units) tensor, and a
depth mask per (child, group) tells which hidden layers a child uses (an unused layer passes its
input through and gets no gradient). A new child is put in a slot by assignment
(:meth:`PopulationTrainer.assign`), so one traced training step serves every configuration of the
space; and each child's loss depends on its own weights only, while Adam is element-wise, so a child
trained in a population follows the same trajectory as alone (tested against the grouped head of
:mod:`nas.depth.heads` trained by the engine).

:class:`PopulationTrainer` trains the population with the project's engine (one traced call per
epoch, :attr:`icao_mtl.training.Pass.steps_per_call`, the step compiled by XLA; the optimiser reused and reset,
:attr:`icao_mtl.training.VariableGroup.reuse`) and scores every child on the validation features once,
at the end.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from icao_mtl.errors import ConfigError

UNITS = 64


def _grouped(tasks, groups) -> dict:
    from icao_mtl.architectures import _groups_for

    return _groups_for(tuple(tasks), groups)


@keras.saving.register_keras_serializable(package="icao_mtl")
class DepthPopulation(keras.layers.Layer):
    """``population`` branch-depth heads of at most ``max_depth`` hidden layers, computed at once.

    Every task of every child is one branch; all of them are in the same tensors (the groups differ
    only by their depth, which the mask gives per (child, task, layer)), so a layer is one matrix
    product whatever the number of children, tasks and groups: few operations, which is what a step
    of a small head costs on a CPU.

    Input: pooled features (batch, 1, 1, dim) or (batch, dim). Output: probabilities (batch,
    population, tasks, 2).
    """

    def __init__(self, population: int, tasks: int, max_depth: int = 5, **kwargs):
        super().__init__(**kwargs)
        if population < 1 or max_depth < 1 or tasks < 1:
            raise ConfigError(f"population, tasks and max_depth must be positive. Received: {population}, {tasks}, "
                              f"{max_depth}")
        self.population, self.tasks, self.max_depth = int(population), int(tasks), int(max_depth)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        p, n, d = self.population, self.tasks, self.max_depth
        # The first kernel is stored (dim, P, tasks, units), the others (P, tasks, in, units): the
        # layouts the matrix products read without a transpose of the weights at every step.
        self.kernels = [self.add_weight(name="dense_1_kernel", shape=(dim, p, n, UNITS), initializer="zeros")]
        self.biases = [self.add_weight(name="dense_1_bias", shape=(p, n, UNITS), initializer="zeros")]
        for j in range(1, d):
            self.kernels.append(self.add_weight(name=f"dense_{j + 1}_kernel", shape=(p, n, UNITS, UNITS),
                                                initializer="zeros"))
            self.biases.append(self.add_weight(name=f"dense_{j + 1}_bias", shape=(p, n, UNITS), initializer="zeros"))
        self.kernels.append(self.add_weight(name="out_kernel", shape=(p, n, UNITS, 2), initializer="zeros"))
        self.biases.append(self.add_weight(name="out_bias", shape=(p, n, 2), initializer="zeros"))
        # mask[c, t, j] = 1 when task t of child c uses hidden layer j + 2
        self.mask = self.add_weight(name="mask", shape=(p, n, max(d - 1, 1)), initializer="zeros", trainable=False)

    def call(self, x):
        ops = keras.ops
        dim = x.shape[-1]
        x = ops.reshape(x, (-1, dim))
        pn = self.population * self.tasks
        ks, bs = self.kernels, self.biases
        # activations are kept as (children x tasks, batch, units): one batched product per layer
        h = ops.matmul(x, ops.reshape(ks[0], (dim, pn * UNITS))) + ops.reshape(bs[0], (-1,))
        h = ops.relu(ops.transpose(ops.reshape(h, (-1, pn, UNITS)), (1, 0, 2)))
        on = ops.reshape(self.mask, (pn, 1, -1)) > 0.5
        for j in range(1, self.max_depth):
            z = ops.matmul(h, ops.reshape(ks[j], (pn, UNITS, UNITS))) + ops.reshape(bs[j], (pn, 1, UNITS))
            h = ops.where(on[:, :, j - 1:j], ops.relu(z), h)  # an unused layer: its input, no gradient to it
        logits = ops.matmul(h, ops.reshape(ks[-1], (pn, UNITS, 2))) + ops.reshape(bs[-1], (pn, 1, 2))
        y = ops.reshape(ops.softmax(logits, axis=-1), (self.population, self.tasks, -1, 2))
        return ops.transpose(y, (2, 0, 1, 3))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.population, self.tasks, 2)

    def get_config(self):
        return {**super().get_config(), "population": self.population, "tasks": self.tasks,
                "max_depth": self.max_depth}


def population_loss(weights):
    """The engine loss of a population: the sum over children of each child's masked multi-task loss
    (:class:`icao_mtl.losses.MaskedMultiTaskLoss`, exactly), so each child's gradient is its own. Logs:
    the mean child loss, and per task the mean over children of the cross-entropy sums and correct
    decisions (for the engine's epoch accuracy)."""
    w = tf.constant(np.asarray(weights, np.float32))

    def loss(model, x, y, ctx):
        probs = tf.cast(model(x, training=ctx.training), tf.float32)  # (b, P, T, 2)
        labels = tf.stack([tf.cast(tf.reshape(y[t], [-1]), tf.int32) for t in model.tasks], axis=1)  # (b, T)
        mask = tf.cast(labels >= 0, tf.float32)
        safe = tf.maximum(labels, 0)
        eps = keras.backend.epsilon()
        pick = tf.one_hot(safe, 2)[:, None]  # (b, 1, T, 2): the label's probability, exactly
        p_true = tf.reduce_sum(tf.clip_by_value(probs, eps, 1.0 - eps) * pick, axis=-1)  # (b, P, T)
        ce_sum = tf.reduce_sum(-tf.math.log(p_true) * mask[:, None, :], axis=0)  # (P, T)
        n = tf.reduce_sum(mask, axis=0)
        total = tf.reduce_sum(w * ce_sum / tf.maximum(n, 1.0))
        hit = tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), safe[:, None, :]), tf.float32)
        correct = tf.reduce_sum(hit * mask[:, None, :], axis=0)
        p = tf.cast(tf.shape(probs)[1], tf.float32)
        return total, {"loss": total / p, "ce": tf.reduce_mean(ce_sum, 0), "n": n, "correct": tf.reduce_mean(correct, 0)}

    return loss


class PopulationTrainer:
    """Trains up to ``population`` children of a branch-depth space at a time on cached features.

    Args:
        features: :class:`~nas.depth.features.CachedFeatures` (train views, val).
        splits: the dataset's splits (labels, tasks, groups).
        population: children trained together (P); fewer may be given to :meth:`train`.
        max_depth: the deepest branch of the space.
        lr, batch_size, seed: as a trial of the search (Adam, the feature pipeline's order).
        loss_weight: the weight of every task's cross-entropy (the search's 0.1).
    """

    def __init__(self, features, splits, *, population: int = 1, max_depth: int = 5, lr: float = 1e-3,
                 batch_size: int = 32, seed: int = 0, loss_weight: float = 0.1):
        from icao_mtl.training import Engine, Pass, Phase, VariableGroup

        from .features import FeaturePipeline

        self.features, self.splits = features, splits
        self.tasks = tuple(splits.train.tasks)
        self.grouped = _grouped(self.tasks, splits.train.groups)
        # the tasks of each group, as indices into ``tasks`` (the output's order)
        self.members = [np.array([self.tasks.index(t) for t in m]) for m in self.grouped.values()]
        self.population, self.max_depth, self.seed = int(population), int(max_depth), int(seed)
        inputs = keras.Input((1, 1, features.dim), name="features")
        self.layer = DepthPopulation(population, len(self.tasks), max_depth, name="population")
        self.model = keras.Model(inputs, self.layer(inputs), name="depth_population")
        self.model.tasks = self.tasks
        self.train_pipe = FeaturePipeline(features.train, splits.train, batch_size, seed)
        groups = {"model": VariableGroup("model", lambda: keras.optimizers.Adam(lr), reuse=True)}
        self.engine = Engine(self.model, self.tasks, groups=groups, monitor="loss", verbose=0, tensorboard=False,
                             seed=seed)
        # XLA fuses the step's many small products and updates: 2.2x faster on 2 CPU cores
        self._pass = Pass(losses=[population_loss([loss_weight] * len(self.tasks))],
                          steps_per_call=self.train_pipe.steps, jit_compile=True)
        self._phases: dict[int, list] = {}
        self._Phase = Phase
        self._predict = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def assign(self, slot: int, config, seed: int) -> None:
        """Put a fresh child of ``config`` (depth per group), initialised from ``seed``, in ``slot``."""
        self.assign_many({slot: (config, seed)})

    def assign_many(self, children: dict) -> None:
        """``{slot: (config, seed)}``: every given slot re-initialised, one assignment per variable."""
        layer = self.layer
        kernels = [np.array(v.numpy()) for v in layer.kernels]
        biases = [np.array(v.numpy()) for v in layer.biases]
        mask = np.array(layer.mask.numpy())
        for slot, (config, seed) in children.items():
            for g, idx in enumerate(self.members):
                depth = int(config[g])
                if not 1 <= depth <= self.max_depth:
                    raise ConfigError(f"Depth {depth} of group {g} is outside 1..{self.max_depth}.")
                arrays = _group_init(self.features.dim, len(idx), g, seed, self.max_depth)
                kernels[0][:, slot, idx] = np.transpose(arrays[0], (1, 0, 2))
                for j in range(self.max_depth + 1):
                    if j:
                        kernels[j][slot, idx] = arrays[2 * j]
                    biases[j][slot, idx] = arrays[2 * j + 1]
                mask[slot, idx] = [1.0 if j + 2 <= depth else 0.0 for j in range(mask.shape[2])]
        for v, value in zip((*layer.kernels, *layer.biases), (*kernels, *biases)):
            v.assign(value)
        layer.mask.assign(mask)

    def train(self, epochs: int) -> list[dict]:
        """Train every slot for ``epochs`` epochs from its current weights (a fresh optimiser state);
        returns the engine's history (mean child loss and accuracy per epoch)."""
        phases = self._phases.setdefault(int(epochs), [self._Phase("train", int(epochs), passes=[self._pass],
                                                                   validate=False)])
        return self.engine.fit(phases, {"train": self.train_pipe})

    def predict(self, features: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """P(compliant) of every child: (n, P, tasks)."""
        out = []
        for i in range(0, len(features), batch_size):
            x = tf.constant(features[i:i + batch_size][:, None, None, :])
            out.append(self._predict(x).numpy()[..., 1])
        return np.concatenate(out, 0) if out else np.zeros((0, self.population, len(self.tasks)), np.float32)

    def score(self, slots=None) -> list[dict]:
        """Validation metrics of the children in ``slots`` (default all): per child the summary of
        :func:`icao_mtl.metrics.summarize` (mean / sd / median EER, mean accuracy, per requisite)."""
        from icao_mtl.metrics import evaluate_tasks, summarize

        ds = self.splits.val
        probs = self.predict(self.features.val)
        labels = {t: ds.labels[:, j] for j, t in enumerate(self.tasks)}
        slots = range(self.population) if slots is None else slots
        return [summarize(evaluate_tasks(labels, {t: probs[:, c, j] for j, t in enumerate(self.tasks)}))
                for c in slots]

    def set_child_weights(self, slot: int, config, weights: dict) -> None:
        """Put a child's weights (the layout of :meth:`child_weights`, e.g. from a grouped head copied
        from a full NAS model) in ``slot``, with the depth mask of ``config``."""
        layer = self.layer
        kernels = [np.array(v.numpy()) for v in layer.kernels]
        biases = [np.array(v.numpy()) for v in layer.biases]
        mask = np.array(layer.mask.numpy())
        for g, (name, idx) in enumerate(zip(self.grouped, self.members)):
            depth = int(config[g])
            names = [f"{name}_dense_{j + 1}" for j in range(depth)]
            for j, layer_name in [*enumerate(names), (self.max_depth, f"{name}_out")]:
                kernel, bias = weights[layer_name]
                if j == 0:
                    kernels[0][:, slot, idx] = np.transpose(kernel, (1, 0, 2))
                else:
                    kernels[j][slot, idx] = kernel
                biases[j][slot, idx] = bias
            mask[slot, idx] = [1.0 if j + 2 <= depth else 0.0 for j in range(mask.shape[2])]
        for v, value in zip((*layer.kernels, *layer.biases), (*kernels, *biases)):
            v.assign(value)
        layer.mask.assign(mask)

    def child_weights(self, slot: int, config) -> dict:
        """The weights of the child in ``slot`` in the layout of :func:`nas.depth.heads.grouped_head`:
        ``{layer name: [kernel (tasks, in, units), bias (tasks, units)]}``."""
        ks = [v.numpy() for v in self.layer.kernels]
        bs = [v.numpy() for v in self.layer.biases]
        out = {}
        for g, (name, idx) in enumerate(zip(self.grouped, self.members)):
            for j in range(int(config[g])):
                kernel = np.transpose(ks[0][:, slot, idx], (1, 0, 2)) if j == 0 else ks[j][slot, idx]
                out[f"{name}_dense_{j + 1}"] = [kernel, bs[j][slot, idx]]
            out[f"{name}_out"] = [ks[-1][slot, idx], bs[-1][slot, idx]]
        return out


def _group_init(dim: int, n: int, g: int, seed: int, max_depth: int) -> list:
    """Group ``g``'s initial [kernel, bias] of each of ``max_depth`` hidden layers and of the output, for a
    child from ``seed``: the values :func:`nas.depth.heads.grouped_head` draws for that seed (Glorot-uniform
    per task, zero biases); layers the child does not use get their seed's draw too (they never change)."""
    arrays = []
    for j in range(max_depth):
        width = dim if j == 0 else UNITS
        limit = math.sqrt(6.0 / (width + UNITS))
        init = keras.initializers.RandomUniform(-limit, limit, seed=seed * 1000 + 10 * g + j)
        arrays += [np.asarray(init((n, width, UNITS))), np.zeros((n, UNITS), np.float32)]
    limit = math.sqrt(6.0 / (UNITS + 2))
    init = keras.initializers.RandomUniform(-limit, limit, seed=seed * 1000 + 10 * g + 9)
    return arrays + [np.asarray(init((n, UNITS, 2))), np.zeros((n, 2), np.float32)]


__all__ = ["DepthPopulation", "PopulationTrainer", "population_loss"]
