"""The searchable MixedOp layer of the BMTAS supergraph."""

import keras
import numpy as np
import tensorflow as tf

from nas.bmtas.supergraph import MixedOp


def _model(copies=3):
    x = keras.Input((8, 8, 4))
    m = keras.Input((copies,), batch_size=1)
    mixed = MixedOp(keras.layers.Conv2D(5, 3, padding="same", activation="relu"), copies, name="mixed")
    y = mixed(x, m[0])
    return keras.Model([x, m], y), mixed


def test_one_hot_mixture_selects_one_copy_and_soft_mixture_is_the_weighted_sum():
    keras.utils.set_random_seed(0)
    model, mixed = _model()
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    outs = [mixed.ops[i](x).numpy() for i in range(3)]
    assert not np.allclose(outs[0], outs[1])  # the copies have their own weights
    for i in range(3):
        np.testing.assert_allclose(model([x, np.eye(3, dtype="float32")[i:i + 1]]).numpy(), outs[i], atol=1e-6)
    w = np.array([[0.2, 0.5, 0.3]], "float32")
    np.testing.assert_allclose(model([x, w]).numpy(), sum(w[0, i] * outs[i] for i in range(3)), atol=1e-5)


def test_warm_up_trains_only_the_tasks_copy():
    """Spec §8.8 item 10: with the mixture e_t, gradients of the copies other than t are zero."""
    keras.utils.set_random_seed(1)
    model, mixed = _model()
    x = tf.random.normal((2, 8, 8, 4))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model([x, tf.one_hot([1], 3)]) ** 2)
    grads = tape.gradient(loss, [op.kernel for op in mixed.ops])
    assert float(tf.reduce_max(tf.abs(grads[1]))) > 0
    assert float(tf.reduce_max(tf.abs(grads[0]))) == 0 and float(tf.reduce_max(tf.abs(grads[2]))) == 0


def test_saves_and_loads_in_safe_mode(tmp_path):
    keras.utils.set_random_seed(2)
    model, _ = _model()
    x = np.random.default_rng(1).normal(size=(1, 8, 8, 4)).astype("float32")
    w = np.array([[0.1, 0.6, 0.3]], "float32")
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(again([x, w]).numpy(), model([x, w]).numpy(), atol=1e-6)
