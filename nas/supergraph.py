"""The searchable layer of the BMTAS supergraph (spec branching_bmtas.md §2.1, §8.6).

:class:`MixedOp` holds K copies of one layer (built from one Keras layer config, each with its own
weights) and returns their weighted sum, ``sum_i m_i op_i(x)``, for a mixture vector ``m`` of shape
(K,) given at call time: a Gumbel-softmax sample during the search, the one-hot ``e_t`` during task
t's warm-up (only copy t then receives gradients), a one-hot of the chosen op once discretised. It is
a registered layer (no Lambda), so a supergraph saves as ``.keras`` and loads with ``safe_mode=True``.
"""

from __future__ import annotations

import keras

from .blocks import takes_training


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
