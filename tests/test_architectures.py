import keras
import numpy as np
import pytest

from icao_mtl.architectures import ModelConfig, build_model, count_params
from icao_mtl.backbones import (BACKBONES, FusedBatchNormalization, Preprocess, backbone_layers, build_backbone,
                                last_conv_layer, save_backbone_weights, set_backbone_trainable)
from icao_mtl.errors import ConfigError
from icao_mtl.requisites import GROUPS, IDS


@pytest.mark.parametrize("approach, nas, trainable, total", [
    ("stl", None, 3_211_650, 17_926_338),
    ("hc1", None, 357_102, 15_071_790),
    ("hc2", None, 758_126, 15_472_814),
    ("hc3", None, 2_840_622, 17_555_310),
    ("nas", (2, 2, 2, 2), 853_806, None),
    ("nas", (5, 5, 5, 5), 1_140_846, None),
])
def test_vgg16_parameter_counts_match_the_paper_and_spec(approach, nas, trainable, total):
    tasks = ("mouth",) if approach == "stl" else IDS
    m = build_model(ModelConfig(approach, "vgg16", "none", nas_config=nas), tasks, GROUPS)
    set_backbone_trainable(m, tasks, "frozen")
    c = count_params(m)
    assert c["trainable"] == trainable
    if total:
        assert c["total"] == total


def test_nas_depth_formula_and_hc2_equivalence():
    base = count_params(build_model(ModelConfig("hc2", "small_cnn", "none"), IDS, GROUPS))["total"]
    nas1 = count_params(build_model(ModelConfig("nas", "small_cnn", "none", nas_config=(1, 1, 1, 1)), IDS, GROUPS))
    nas = count_params(build_model(ModelConfig("nas", "small_cnn", "none", nas_config=(3, 1, 2, 4)), IDS, GROUPS))
    assert nas1["total"] == base
    assert nas["total"] - base == 4160 * (7 * 2 + 2 * 0 + 8 * 1 + 6 * 3)


@pytest.mark.parametrize("approach", ["stl", "hc1", "hc2", "hc3", "nas"])
def test_models_save_and_load_with_safe_mode_and_outputs_are_named_by_task(approach, tmp_path):
    tasks = ("veil",) if approach == "stl" else IDS
    cfg = ModelConfig(approach, "small_cnn", "none", nas_config=(2, 1, 3, 2) if approach == "nas" else None)
    m = build_model(cfg, tasks, GROUPS)
    assert set(m.output_names) == set(tasks)
    assert not any(isinstance(l, keras.layers.Lambda) for l in m.layers)
    x = np.random.default_rng(0).uniform(0, 255, (2, 128, 128, 3)).astype("float32")
    y = m(x)
    assert set(y) == set(tasks) and all(tuple(v.shape) == (2, 2) for v in y.values())
    path = tmp_path / "m.keras"
    m.save(path)
    m2 = keras.saving.load_model(path, safe_mode=True)
    y2 = m2(x)
    for t in tasks:
        np.testing.assert_allclose(y[t], y2[t], atol=1e-6)


@pytest.mark.parametrize("scale, center", [(True, True), (False, False)])
def test_fused_batch_normalization_equals_keras_in_outputs_gradients_and_moving_statistics(scale, center, tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(3.0, 2.0, (6, 7, 9, 5)).astype("float32"))
    weight = tf.constant(rng.normal(0.0, 1.0, (6, 7, 9, 5)).astype("float32"))
    layers = {"keras": keras.layers.BatchNormalization(momentum=0.9, scale=scale, center=center),
              "fused": FusedBatchNormalization(momentum=0.9, scale=scale, center=center)}
    results = {}
    for name, layer in layers.items():
        layer.build(x.shape)
        if scale:
            layer.gamma.assign(np.linspace(0.5, 1.5, 5).astype("float32"))
        if center:
            layer.beta.assign(np.linspace(-1.0, 1.0, 5).astype("float32"))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * weight)
        grads = tape.gradient(loss, [x] + layer.trainable_weights)
        layer(x * 2.0 + 1.0, training=True)  # a second update of the moving statistics
        results[name] = ([y, *grads, layer.moving_mean, layer.moving_variance], layer(x, training=False))
    for a, b in zip(results["keras"][0], results["fused"][0]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results["keras"][1], results["fused"][1], rtol=1e-4, atol=1e-4)
    # the moving statistics moved (the biased variance, Keras's rule), so the comparison is not vacuous
    assert not np.allclose(layers["fused"].moving_variance, 1.0)
    # same weights and configuration: a model saved with one layer loads the other's weights
    inputs = keras.Input((7, 9, 5))
    model = keras.Model(inputs, layers["fused"](inputs))
    model.save(tmp_path / "fused.keras")
    loaded = keras.saving.load_model(tmp_path / "fused.keras", safe_mode=True)
    assert isinstance(loaded.layers[-1], FusedBatchNormalization)
    np.testing.assert_allclose(loaded(x, training=False), results["fused"][1], rtol=1e-5, atol=1e-5)
    twin = keras.layers.BatchNormalization(momentum=0.9, scale=scale, center=center)
    twin.build(x.shape)
    twin.set_weights(layers["fused"].get_weights())
    np.testing.assert_allclose(twin(x, training=False), results["fused"][1], rtol=1e-4, atol=1e-4)


def test_fused_batch_normalization_in_a_traced_step_and_frozen_equals_keras():
    import tensorflow as tf

    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(1.0, 3.0, (4, 5, 6, 3)).astype("float32"))
    results = {}
    for name, cls in (("keras", keras.layers.BatchNormalization), ("fused", FusedBatchNormalization)):
        layer = cls()
        layer.build(x.shape)

        def step(inputs, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                y = layer(inputs, training=True)
                loss = tf.reduce_sum(y * tf.cos(inputs))
            return y, tape.gradient(loss, inputs)

        traced = [t.numpy() for t in tf.function(step)(x)] + [layer.moving_variance.numpy()]
        layer.trainable = False  # frozen: inference statistics even with training=True, nothing updated
        frozen = [t.numpy() for t in tf.function(step)(x)] + [layer.moving_variance.numpy()]
        results[name] = traced + frozen
    for a, b in zip(results["keras"], results["fused"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(results["fused"][2], results["fused"][5])  # frozen: moving statistics kept


def test_fused_batch_normalization_falls_back_to_keras_for_what_the_kernel_does_not_do():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, (4, 6, 3)).astype("float32")  # 3-D: not the fused kernel's layout
    a, b = keras.layers.BatchNormalization(axis=1), FusedBatchNormalization(axis=1)
    np.testing.assert_allclose(a(x, training=True), b(x, training=True), rtol=1e-5, atol=1e-5)
    x4 = rng.normal(0.0, 1.0, (4, 3, 5, 6)).astype("float32")  # channels first: Keras's computation
    a, b = keras.layers.BatchNormalization(axis=1), FusedBatchNormalization(axis=1)
    np.testing.assert_allclose(a(x4, training=True), b(x4, training=True), rtol=1e-5, atol=1e-5)
    # float64: Keras computes in float64, the kernel in float32; tiny variations of a large value show it
    x64 = (1e4 + rng.normal(0.0, 1e-3, (4, 3, 5, 6))).astype("float64")
    a, b = keras.layers.BatchNormalization(dtype="float64"), FusedBatchNormalization(dtype="float64")
    np.testing.assert_allclose(a(x64, training=True), b(x64, training=True), rtol=1e-9, atol=1e-9)


def test_hc3_gives_each_group_one_row_band():
    m = build_model(ModelConfig("hc3", "vgg16", "none"), IDS, GROUPS)
    pool = m.get_layer("head_shared_pool").output
    assert tuple(pool.shape[1:]) == (4, 4, 256)  # 7x7x512 -> 4x4x256
    for g in GROUPS:
        assert tuple(m.get_layer(f"head_{g}_band").output.shape[1:]) == (1, 4, 256)
        assert tuple(m.get_layer(f"head_{g}_reshape").output.shape[1:]) == (1, 32, 32)
    assert tuple(m.get_layer("head_mouth_flatten").output.shape[1:]) == (512,)
    # g1 (mouth, veil) has 4 convolutions and 2 dense layers per task; g0 has 3 and 3
    assert m.get_layer("head_g1_conv_4") and m.get_layer("head_mouth_dense_2")
    with pytest.raises(ValueError):
        m.get_layer("head_g0_conv_4")


def test_preprocess_modes_match_keras_applications():
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(Preprocess("caffe")(x), keras.applications.vgg16.preprocess_input(x.copy()), atol=1e-4)
    np.testing.assert_allclose(Preprocess("tf")(x), keras.applications.mobilenet_v2.preprocess_input(x.copy()), atol=1e-5)
    with pytest.raises(ValueError, match="Received: mode='bgr'"):
        Preprocess("bgr")


def test_freeze_unfreeze_and_last_conv():
    m = build_model(ModelConfig("hc2", "vgg16", "none"), IDS, GROUPS)
    names = [l.name for l in backbone_layers(m, IDS)]
    assert names[0] == "block1_conv1" and names[-1] == "block5_pool"
    assert set_backbone_trainable(m, IDS, "last:2") == 2
    assert [l.name for l in backbone_layers(m, IDS) if l.trainable] == ["block5_conv3", "block5_pool"]
    assert set_backbone_trainable(m, IDS, "frozen") == 0
    assert last_conv_layer(m, IDS) == "block5_conv3"
    mb = build_model(ModelConfig("hc2", "mobilenet_v2", "none"), IDS, GROUPS)
    assert last_conv_layer(mb, IDS) == "Conv_1"


@pytest.mark.parametrize("cfg, match", [
    (ModelConfig("hc4"), "Unknown approach 'hc4'"),
    (ModelConfig("hc2", "vgg17"), "Unknown backbone 'vgg17'"),
    (ModelConfig("hc2", "inception_v3", image_size=64), "at least 75x75"),
    (ModelConfig("nas", nas_config=None), "--nas-config"),
    (ModelConfig("nas", nas_config=(1, 2)), "one depth >= 1 for each of the 4 task groups"),
    (ModelConfig("hc3", "small_cnn", image_size=32), "larger --img-size"),
    (ModelConfig("hc2", "small_cnn", "imagenet"), "no ImageNet weights"),
    (ModelConfig("hc2", "vgg16", "missing.weights.h5"), "not found"),
])
def test_configuration_errors_name_the_option_and_the_fix(cfg, match):
    with pytest.raises(ConfigError, match=match) as err:
        build_model(cfg, IDS, GROUPS)
    assert "Fix:" in str(err.value)


def test_weights_file_round_trip_and_mismatch(tmp_path):
    inputs = keras.Input((64, 64, 3))
    _, bb = build_backbone("small_cnn", inputs, weights="none")
    path = tmp_path / "small.weights.h5"
    save_backbone_weights(bb, path)
    m = build_model(ModelConfig("hc2", "small_cnn", str(path), image_size=64), IDS, GROUPS)
    np.testing.assert_array_equal(m.get_layer("small_cnn_block2_conv").kernel.numpy(),
                                  bb.get_layer("small_cnn_block2_conv").kernel.numpy())
    with pytest.raises(ConfigError, match="does not fit backbone 'vgg16'") as err:
        build_model(ModelConfig("hc2", "vgg16", str(path)), IDS, GROUPS)
    assert "Fix:" in str(err.value)


def test_offline_imagenet_download_gives_a_clear_error(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2] Name or service "
                        "not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ConfigError, match="--weights PATH") as err:
        build_model(ModelConfig("hc2", "mobilenet_v2", "imagenet"), IDS, GROUPS)
    assert "--weights none" in str(err.value)


def test_every_backbone_builds_at_its_default_size():
    for name, s in BACKBONES.items():
        inputs = keras.Input((s.default_size, s.default_size, 3))
        features, _ = build_backbone(name, inputs, weights="none")
        assert len(features.shape) == 4, name
