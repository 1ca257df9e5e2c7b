"""The BMTAS supergraph (spec branching_bmtas.md §2.1, §8.6): its searchable layer and the model.

:class:`MixedOp` holds K copies of one layer (built from one Keras layer config, each with its own
weights) and returns their weighted sum, ``sum_i m_i op_i(x)``, for a mixture vector ``m`` of shape
(K,) given at call time: a Gumbel-softmax sample during the search, the one-hot ``e_t`` during task
t's warm-up (only copy t then receives gradients), a one-hot of the chosen op once discretised. It is
a registered layer (no Lambda), so a supergraph saves as ``.keras`` and loads with ``safe_mode=True``.

:class:`Supergraph` is the model: a shared stem, every searchable layer as a :class:`MixedOp` of K
copies, one head per task, and the architecture logits ``alpha`` (L, U, K) of the routing units.
"""

from __future__ import annotations

import keras
import numpy as np

from ..common.blocks import Layout, load_application_weights, pretrained_application
from ..common.madds import takes_training
from .partitions import gumbel_softmax


@keras.saving.register_keras_serializable(package="icao_mtl")
class MixedOp(keras.layers.Layer):
    """K copies of a layer; ``call(x, mixture)`` -> ``sum_i mixture[i] * copy_i(x)``.

    Args:
        layer: the Keras layer to copy (its config is used; its weights are not shared), or its
            serialised form (``keras.layers.serialize``).
        copies: K.
    """

    def __init__(self, layer, copies: int, **kwargs):
        super().__init__(**kwargs)
        spec = layer if isinstance(layer, dict) else keras.layers.serialize(layer)
        self.layer_spec = spec
        self.copies = int(copies)
        self.ops = []
        for i in range(self.copies):
            config = {**spec, "config": {**spec["config"], "name": f"{self.name}_copy_{i}"}}
            self.ops.append(keras.layers.deserialize(config))

    def build(self, input_shape):
        for op in self.ops:
            op.build(input_shape)
        self.built = True

    def call(self, inputs, mixture, training=None):
        mixture = keras.ops.cast(mixture, self.compute_dtype)
        out = None
        for i, op in enumerate(self.ops):
            y = op(inputs, training=training) if takes_training(op) else op(inputs)
            y = mixture[i] * y
            out = y if out is None else out + y
        return out

    def single(self, inputs, index: int, training=None):
        """Copy ``index`` alone: the forward of a one-hot mixture without the K - 1 zero-weighted copies
        (the warm-up's shortcut; the other copies then get no gradient, which the engine makes zero)."""
        op = self.ops[int(index)]
        return op(inputs, training=training) if takes_training(op) else op(inputs)

    def compute_output_shape(self, input_shape):
        return self.ops[0].compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "layer": self.layer_spec, "copies": self.copies}


class Supergraph(keras.Model):
    """Shared stem -> L mixed layers of K copies -> global average pooling -> one head per task.

    Args:
        spec: the backbone cut (:func:`nas.common.blocks.layout`).
        tasks: task ids (output names).
        units: the routing units, a list of task tuples covering ``tasks``.
        copies: K, candidate copies per layer (BMTAS: K = number of units).
        image_size: input side in pixels.
        weights: "none", "imagenet" or a weights file of the backbone; every copy of a layer starts from
            the same weights (also when random: copy 0's are copied into the others).
        seed: seed of the Gumbel noise.

    ``model(images)`` routes every unit along its argmax copies (the discretised network);
    :meth:`forward_unit` is one unit's forward with a mixture matrix (L, K).
    """

    def __init__(self, spec: Layout, tasks, units, copies: int, image_size: int, *, weights: str = "none",
                 seed: int = 0, **kwargs):
        super().__init__(name=kwargs.pop("name", "bmtas_supergraph"), **kwargs)
        from icao_mtl.backbones import Preprocess

        self.spec, self.tasks, self.units = spec, tuple(tasks), [tuple(u) for u in units]
        self.n_layers, self.n_units, self.copies = len(spec.layers), len(self.units), int(copies)
        self.image_size, self.seed = int(image_size), int(seed)
        self.preprocess = Preprocess(spec.preprocess, name="preprocess")
        self.stem = [s.make(True, f"stem_{i}") for i, s in enumerate(spec.stem)]
        self.mixed = [MixedOp(s.make(False, s.name), self.copies, name=f"mixed_{s.name}") for s in spec.layers]
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.heads = [keras.layers.Dense(2, activation="softmax", dtype="float32", name=t) for t in self.tasks]
        self.alpha = self.add_weight(shape=(self.n_layers, self.n_units, self.copies), initializer="zeros",
                                     name="alpha", trainable=True)
        self.temperature = self.add_weight(shape=(), initializer=keras.initializers.Constant(5.0), name="temperature",
                                           trainable=False)
        self.noise_step = self.add_weight(shape=(), initializer="zeros", name="noise_step", trainable=False)
        self._head_of = {t: h for t, h in zip(self.tasks, self.heads)}
        self(np.zeros((1, self.image_size, self.image_size, 3), np.float32))
        app = pretrained_application(spec.backbone, weights, self.image_size)
        if app is not None:
            for layer, s in zip(self.stem, spec.stem):
                load_application_weights(layer, s.sources, app)
            for op, s in zip(self.mixed, spec.layers):
                load_application_weights(op.ops[0], s.sources, app)
        for op in self.mixed:  # identical copies: the warm-up breaks the symmetry
            for other in op.ops[1:]:
                for dst, src in zip(other.weights, op.ops[0].weights):
                    dst.assign(src)

    def weight_variables(self) -> list:
        """Every trainable variable but ``alpha`` (the operation weights)."""
        return [v for v in self.trainable_variables if v.path != self.alpha.path]

    def _stem(self, images, training=None):
        x = self.preprocess(images)
        for layer in self.stem:
            x = layer(x, training=training) if takes_training(layer) else layer(x)
        return x

    def features(self, images, mixtures, training=None):
        """Pooled features (batch, channels) of one route; ``mixtures`` (L, K)."""
        x = self._stem(images, training=training)
        for l, op in enumerate(self.mixed):
            x = op(x, mixtures[l], training=training)
        return self.pool(x)

    def forward_route(self, images, unit: int, route, training=None) -> dict:
        """Like :meth:`forward_unit` with one-hot mixtures of the copies ``route`` (L Python ints), computing
        only those copies (K times cheaper; the warm-up's shortcut)."""
        x = self._stem(images, training=training)
        for op, index in zip(self.mixed, route):
            x = op.single(x, index, training=training)
        f = self.pool(x)
        return {t: self._head_of[t](f) for t in self.units[unit]}

    def forward_unit(self, images, unit: int, mixtures, training=None) -> dict:
        """{task: (batch, 2) probabilities} for the tasks of ``unit`` along ``mixtures`` (L, K)."""
        f = self.features(images, mixtures, training=training)
        return {t: self._head_of[t](f) for t in self.units[unit]}

    def forward_units(self, images, mixtures, training=None) -> list[dict]:
        """:meth:`forward_unit` of every unit at once, ``mixtures`` a list of U (L, K) matrices: what all
        units share is computed once, the stem and the K copies of the first searchable layer (they
        read the same input), each unit then mixing those copies with its own weights. The outputs
        and their gradients with respect to the mixtures are those of U separate forwards (batch-norm
        statistics are updated once instead of U times)."""
        x = self._stem(images, training=training)
        first = self.mixed[0]
        copies = [first.single(x, i, training=training) for i in range(self.copies)]
        out = []
        for u, mixture in enumerate(mixtures):
            m0 = keras.ops.cast(mixture[0], first.compute_dtype)
            h = None
            for i, y in enumerate(copies):  # the order of MixedOp.call's sum
                y = m0[i] * y
                h = y if h is None else h + y
            for l, op in enumerate(self.mixed[1:], start=1):
                h = op(h, mixture[l], training=training)
            f = self.pool(h)
            out.append({t: self._head_of[t](f) for t in self.units[u]})
        return out

    def forward_config(self, images, config, training=None) -> dict:
        """All tasks, each unit along the copies of ``config`` (L, U) op indices."""
        import tensorflow as tf

        config = tf.convert_to_tensor(config, tf.int32)
        out = {}
        for u in range(self.n_units):
            out.update(self.forward_unit(images, u, tf.one_hot(config[:, u], self.copies), training=training))
        return {t: out[t] for t in self.tasks}

    def call(self, images, training=None):
        import tensorflow as tf

        return self.forward_config(images, tf.argmax(self.alpha, axis=-1, output_type=tf.int32), training=training)

    def sample(self, unit: int):
        """A Gumbel-softmax mixture (L, K) for ``unit`` at the current temperature; one noise draw per
        call, shared by the batch (stateless from the seed and a counter kept with the weights, so a
        resumed search draws the same noise)."""
        import tensorflow as tf

        step = self.noise_step.assign_add(1.0)
        seed = tf.stack([tf.constant(self.seed, tf.int32), tf.cast(step, tf.int32)])
        return gumbel_softmax(self.alpha[:, unit, :], self.temperature, seed=seed)

    def probabilities(self) -> np.ndarray:
        """softmax(alpha), (L, U, K)."""
        a = np.asarray(self.alpha.numpy(), np.float64)
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
