"""MTL-NAS (spec mtl_nas.md §8.6): the edge table, the fusion op and its initialisation, the gradient
facts of the first step, the entropy, the gates, the schedules, discretisation and pruning; end-to-end
runs on real digits and the synthetic faces."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas.mtl_nas.edges import (Edge, binary_entropy, concrete_gates, connectivity, edge_table, edges_per_direction,
                               entropy_loss, entropy_weight, hard_gates, temperature)
from nas.mtl_nas.network import NddrFusion, NetSpec, Supernet, build_net, identity_kernel, transplant
from nas.mtl_nas.search import WEIGHT_GROUPS, groups, phases
from icao_mtl.training import StepContext

UNITS = [("a", ["t1", "t2"]), ("b", ["t3"])]


def _images(n=4, size=16, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32))


def _tiny(init=(1.0, 0.0), units=UNITS, seed=0):
    keras.utils.set_random_seed(seed)
    return Supernet(NetSpec(image_size=16, stage_config=[2, 2], channels=[4, 8], init=init), units)


# 1. connectivity ----------------------------------------------------------------------------------

def test_the_vgg16_and_mobilenet_v2_edge_tables_of_the_spec():
    vgg = connectivity([2, 2, 3, 3, 3], limit=3)
    assert vgg == {0: [0], 1: [0, 1], 2: [2], 3: [2, 3], 4: [4], 5: [4, 5], 6: [4, 5, 6], 7: [7], 8: [7, 8],
                   9: [7, 8, 9], 10: [10], 11: [10, 11], 12: [10, 11, 12]}
    assert edges_per_direction([2, 2, 3, 3, 3]) == 24 and len(edge_table(2, [2, 2, 3, 3, 3])) == 48
    mbv2 = connectivity([1, 2, 3, 4, 3, 3, 1], limit=3)
    assert [len(s) for s in mbv2.values()] == [1, 1, 2, 1, 2, 3, 1, 2, 3, 3, 1, 2, 3, 1, 2, 3, 1]
    assert edges_per_direction([1, 2, 3, 4, 3, 3, 1]) == 32 and 6 not in mbv2[9]
    assert edges_per_direction([1, 2, 3, 4, 3, 3, 1, 1]) == 33
    # T units: T (T - 1) directions; the small setting of §8.5 has 6 edges per direction
    assert edges_per_direction([2, 2]) == 6 and len(edge_table(4, [2, 2])) == 4 * 3 * 6


# 2-3. the fusion op ---------------------------------------------------------------------------------

def test_the_identity_style_kernel_of_the_spec_example():
    np.testing.assert_allclose(identity_kernel(2, 2, (0.9, 0.1)),
                               [[.9, 0], [0, .9], [.05, 0], [0, .05], [.05, 0], [0, .05]], atol=1e-7)
    layer = NddrFusion(2, 2, gate_indices=[0, 1], init=(0.9, 0.1))
    layer([tf.zeros((1, 3, 3, 2))] * 3 + [tf.ones((1, 2))])
    np.testing.assert_allclose(layer.kernel.numpy(), identity_kernel(2, 2, (0.9, 0.1)))


def test_with_init_1_0_the_fusion_ignores_the_sources_and_their_gates():
    rng = np.random.default_rng(1)
    own, s1, s2 = (tf.constant(rng.normal(size=(2, 5, 5, 3)).astype(np.float32)) for _ in range(3))
    layer = NddrFusion(3, 2, gate_indices=[0, 1], init=(1.0, 0.0))
    expected = np.maximum(own.numpy() / math.sqrt(1 + 1e-3), 0)  # ReLU(BN(own)) with fresh statistics
    for gates in ([0.0, 0.0], [1.0, 1.0], [0.3, 0.9]):
        out = layer([own, s1, s2, tf.constant([gates] * 2)], training=False)
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


# 4. the first architecture step -------------------------------------------------------------------------

def _ctx(step=0, steps=20):
    return StepContext(True, "search", tf.constant(step, tf.int64), tf.constant(0, tf.int64),
                       tf.constant(0, tf.int64), tf.constant(step, tf.int64), tf.constant(steps, tf.int64),
                       tf.constant([3, step], tf.int32))


def _search_losses(model, tasks):
    search = [p for p in phases(model, tasks, pretrain=1, search=1) if p.name == "search"][0]
    arch, weight = search.passes[0].steps
    return arch.losses[0], weight.losses[0]


def test_the_first_architecture_step_leaves_the_logits_unchanged_and_a_weight_step_unlocks_them():
    model = _tiny()
    tasks = ["t1", "t2", "t3"]
    x = _images()
    y = {t: tf.constant([0, 1, 1, 0]) for t in tasks}
    arch_loss, weight_loss = _search_losses(model, tasks)
    with tf.GradientTape() as tape:
        loss, _ = arch_loss(model, x, y, _ctx(0))
    grad = tape.gradient(loss["arch"], model.logits)
    assert np.all(grad.numpy() == 0.0)  # source columns 0, dH/da = 0 at 0, lambda_H(0) = 0, decay of 0 is 0
    adam = keras.optimizers.Adam(1e-3, beta_1=0.5)
    adam.apply_gradients([(grad, model.logits)])
    assert np.all(model.logits.numpy() == 0.0)
    # one weight step (SGD with the fusion ops' x100) moves the source columns off zero ...
    fusion = model.parts()["fusion"]
    with tf.GradientTape() as tape:
        wl, _ = weight_loss(model, x, y, _ctx(1))
    grads = tape.gradient(wl["fusion"], fusion)
    keras.optimizers.SGD(0.1).apply_gradients(zip(grads, fusion))
    with tf.GradientTape() as tape:
        loss, _ = arch_loss(model, x, y, _ctx(2))
    assert np.abs(tape.gradient(loss["arch"], model.logits).numpy()).max() > 0  # ... and the next one moves alpha


# 5-7. entropy and gates ----------------------------------------------------------------------------------

def test_entropy_values_gradients_and_the_loss_over_directions():
    h = binary_entropy([0.0, 2.0, -2.0, 4.0, 1.0]).numpy()
    np.testing.assert_allclose(h, [math.log(2), 0.365334, 0.365334, 0.090095, 0.582203], atol=1e-6)
    table = [Edge(0, 1, 0, 0)] * 3 + [Edge(1, 0, 0, 0)]
    assert float(entropy_loss(tf.constant([0.0, 2.0, -2.0, 4.0]), table)) == pytest.approx(0.282350, abs=1e-6)
    a = tf.Variable([1.0, 2.0, 0.0, -1.5])
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(binary_entropy(a))
    np.testing.assert_allclose(tape.gradient(total, a).numpy()[:3], [-0.196612, -0.209987, 0.0], atol=1e-6)
    opt = keras.optimizers.SGD(0.5)
    for _ in range(50):  # minimising L_H alone polarises: away from 0, sign kept, exact zeros fixed
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(binary_entropy(a))
        opt.apply_gradients([(tape.gradient(total, a), a)])
    v = a.numpy()
    assert v[0] > 1 and v[1] > 2 and v[2] == 0.0 and v[3] < -1.5


@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_concrete_gates_are_above_one_half_with_probability_sigmoid_alpha(tau):
    logits = tf.constant([-1.5, 0.0, 0.7, 2.0])
    # 25,000 independent draws of each of the 4 edges (one call: every element has its own uniform)
    draws = concrete_gates(tf.tile(logits[None], [25000, 1]), tau, tf.constant([3, 11], tf.int32))
    share = np.mean(draws.numpy() > 0.5, axis=0)
    np.testing.assert_allclose(share, tf.sigmoid(logits).numpy(), atol=0.01)
    if tau == 0.1:
        cold = concrete_gates(tf.zeros([20000]), 1e-4, tf.constant([1, 2], tf.int32)).numpy()
        assert np.mean((cold < 0.01) | (cold > 0.99)) > 0.99


def test_concrete_probability_within_0_005_over_100000_draws():
    draws = concrete_gates(tf.fill([100000], 0.8), 1.0, tf.constant([5, 6], tf.int32)).numpy()
    assert np.mean(draws > 0.5) == pytest.approx(1 / (1 + math.exp(-0.8)), abs=0.005)


# 8-9. schedules ------------------------------------------------------------------------------------------

def test_temperature_and_entropy_weight_schedules():
    n = 20001
    for s, tau in ((0, 1.0), (5000, 0.5625), (10000, 0.25), (15000, 0.0625)):
        assert temperature(s, n) == pytest.approx(tau, abs=2e-4)
        assert float(temperature(tf.constant(s), tf.constant(n))) == pytest.approx(tau, abs=2e-4)
    assert temperature(20000, n) < 1e-7
    assert entropy_weight(0, 100) == 0 and entropy_weight(1, 100) == 10 and entropy_weight(99, 100) == 10
    assert float(entropy_weight(tf.constant(0), tf.constant(100))) == 0
    assert float(entropy_weight(tf.constant(1), tf.constant(100))) == 10
    assert entropy_weight(50, 100, period=(0.0, 1.0)) == pytest.approx(5.0)
    assert float(entropy_weight(tf.constant(50), tf.constant(100), period=(0.0, 1.0))) == pytest.approx(5.0)


def test_weight_learning_rates_are_the_poly_schedule_times_the_multipliers_and_the_arch_rate_is_constant():
    model = _tiny()
    made = groups(model, rounds=100, weight_lr=1e-3, arch_lr=1e-3)
    for name, mult in WEIGHT_GROUPS.items():
        schedule = made[name].optimizer()._learning_rate  # the optimiser's LearningRateSchedule
        for s in (0, 30, 99):
            assert float(schedule(s)) == pytest.approx(1e-3 * mult * (1 - s / 100) ** 0.9, rel=1e-5)
    arch = made["arch"].optimizer()
    assert float(arch.learning_rate) == pytest.approx(1e-3) and arch.beta_1 == 0.5
    assert made["arch"].collect(model) == [model.logits]
    owned = [id(v) for g in WEIGHT_GROUPS for v in made[g].collect(model)]
    assert len(owned) == len(set(owned)) == len(model.network_variables())  # disjoint, and every weight


# 10-11. discretisation and pruning ----------------------------------------------------------------------------

def _perturbed(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.network_variables():
        v.assign(v.numpy() + rng.normal(0, 0.1, v.shape).astype(np.float32))
    model.logits.assign(rng.normal(0, 1, model.logits.shape).astype(np.float32))


def test_evaluation_gates_are_the_threshold_and_the_pruned_network_computes_the_gated_supernet(tmp_path):
    model = _tiny()
    x = _images(6)
    model(x)
    _perturbed(model)
    logits = model.logits.numpy()
    np.testing.assert_array_equal(hard_gates(logits).numpy(), (logits > 0).astype(np.float32))
    keep = logits > 0
    assert 0 < keep.sum() < len(keep)
    gated = model.forward(x, keep.astype(np.float32), training=False)
    called = model(x, training=False)
    final = build_net(model.spec, model.units, keep=keep, name="final")
    transplant(model.net, final, keep)
    assert final.count_params() < model.net.count_params()
    pruned = final(x, training=False)
    for t in gated:
        np.testing.assert_allclose(called[t].numpy(), gated[t].numpy(), atol=1e-6)
        np.testing.assert_allclose(pruned[t].numpy(), gated[t].numpy(), atol=1e-5)
    final.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    for t, v in loaded(x).items():
        np.testing.assert_allclose(v.numpy(), pruned[t].numpy(), atol=1e-6)


def test_with_every_edge_off_the_units_are_independent_networks():
    model = _tiny()
    x = _images()
    model(x)
    _perturbed(model)
    model.logits.assign(tf.fill(model.logits.shape, -5.0))
    before = model(x, training=False)
    for layer in model.net.layers:  # perturb unit a's backbone
        if layer.name.startswith("a_stage"):
            for v in layer.weights:
                v.assign(v + 0.5)
    after = model(x, training=False)
    np.testing.assert_allclose(after["t3"].numpy(), before["t3"].numpy(), atol=1e-7)
    assert np.abs(after["t1"].numpy() - before["t1"].numpy()).max() > 1e-4


def test_units_from_groups_or_chunks_and_errors():
    from icao_mtl.errors import ConfigError
    from nas.mtl_nas import make_units

    assert make_units(["a", "b", "c"], {"g": ["a", "c"], "h": ["b"]}) == [("g", ["a", "c"]), ("h", ["b"])]
    assert make_units(list("abcdef"), {"all": list("abcdef")}) == [
        ("unit0", ["a", "b"]), ("unit1", ["c", "d"]), ("unit2", ["e"]), ("unit3", ["f"])]
    assert make_units(list("abcd"), {}, "2") == [("unit0", ["a", "b"]), ("unit1", ["c", "d"])]
    with pytest.raises(ConfigError, match="2 to 2 units"):
        make_units(["a", "b"], {}, "3")


def test_command_errors_name_the_option(capsys, tmp_path):
    from nas.mtl_nas import main

    assert main(["--backbone", "resnet50_v2", "--out", str(tmp_path / "x")]) == 2
    assert "small_cnn, vgg16 and mobilenet_v2" in capsys.readouterr().err
    assert main(["--weights", "imagenet", "--out", str(tmp_path / "x")]) == 2
    assert "only the vgg16 and mobilenet_v2" in capsys.readouterr().err
    assert main(["--units", "one", "--out", str(tmp_path / "x")]) == 2
    assert "--units 'one'" in capsys.readouterr().err
    assert main(["--img-size", "30", "--out", str(tmp_path / "x")]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert main(["--resume", "--out", str(tmp_path / "nothing")]) == 2
    assert "Nothing to resume" in capsys.readouterr().err


# end to end -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, data_root):
    import os

    from nas.mtl_nas import MtlNasConfig, run

    old = os.environ.get("ICAO_MTL_DATA")
    os.environ["ICAO_MTL_DATA"] = str(data_root)
    try:
        out = tmp_path_factory.mktemp("mtl_nas") / "digits"
        cfg = MtlNasConfig(data="digits", pretrain_epochs=2, search_epochs=3, out=str(out), verbose=0)
        return run(cfg), out
    finally:
        if old is None:
            os.environ.pop("ICAO_MTL_DATA", None)
        else:
            os.environ["ICAO_MTL_DATA"] = old


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_mtl_nas.py
def test_digits_end_to_end_beats_chance_with_decided_gates(digits_run):
    result, out = digits_run
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test["eer_mean"] < 0.1 and test["accuracy_mean"] > 0.9
    edges = json.loads((out / "edges.json").read_text())
    assert edges["edges"] == 4 * 3 * 9  # 4 units, 3 partners each, 9 edges per direction (stages [2, 2, 2])
    assert edges["kept"] == sum(r["kept"] for r in edges["rows"]) == result.params["kept_edges"]
    assert edges["undecided"] < 0.2  # MinEntropy decides the gates: no retraining needed
    assert all(r["kept"] == (r["logit"] > 0) for r in edges["rows"])
    params = json.loads((out / "params.json").read_text())
    assert params["plain"]["params"] < params["no_edges"]["params"] <= params["final"]["params"] \
        <= params["all_edges"]["params"]
    assert params["plain"]["params_relative_to_plain"] == 1.0
    history = json.loads((out / "history.json").read_text())["mtl_nas"]
    assert [h["phase"] for h in history] == ["pretrain"] * 2 + ["search"] * 3
    assert all("entropy" in h and "weight_half_temperature" in h for h in history[2:])
    for f in ("model.keras", "split.csv", "table.md", "det.png", "far_frr.png", "curves.png", "trace.png",
              "edges.png", "units.json", "status.json"):
        assert (out / f).is_file(), f
    import icao_mtl

    model = icao_mtl.load_model(out / "model.keras")
    assert sorted(model.output_names) == sorted(f"n_{d}" for d in range(10))


def test_synthetic_faces_end_to_end_beats_chance_on_held_out_images(tmp_path):
    """The 23 requisites in their 4 groups, one branch each (a small network at 32 px)."""
    from icao_mtl.requisites import IMAGE_LEVEL
    from icao_mtl.synth import SynthConfig, generate
    from nas.mtl_nas import MtlNasConfig, run

    data = generate(tmp_path / "faces", SynthConfig(n=800, size=64, seed=7), progress=False, workers=2)
    result = run(MtlNasConfig(data=str(data), img_size=32, stages=[1, 1, 1], channels=[8, 16, 32], pretrain_epochs=4,
                              search_epochs=3, pretrain_lr=3e-3, out=str(tmp_path / "run"), verbose=0))
    assert [u for u, _ in result.units] == ["g0", "g1", "g2", "g3"]
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert len(test["per_requisite"]) == 23
    image_level = [test["per_requisite"][t]["eer"] for t in IMAGE_LEVEL]
    assert np.mean(image_level) < 0.35 and test["per_requisite"]["washed_out"]["eer"] < 0.15


@pytest.mark.slow
def test_min_entropy_decides_the_gates_and_without_it_they_stay_undecided(tmp_path, data_root, monkeypatch):
    """Spec §8.6 item 12: the share of gates with sigmoid in (0.05, 0.95) after the search is small
    with MinEntropy and clearly larger without it."""
    from nas.mtl_nas import MtlNasConfig, run

    monkeypatch.setenv("ICAO_MTL_DATA", str(data_root))
    shares = {}
    for weight in (10.0, 0.0):
        result = run(MtlNasConfig(data="digits", pretrain_epochs=1, search_epochs=3, entropy_weight=weight,
                                  out=str(tmp_path / f"h{weight:g}"), verbose=0))
        shares[weight] = result.edges["undecided"]
    assert shares[10.0] < 0.2 and shares[0.0] > shares[10.0] + 0.3


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_mtl_nas.py
def test_evaluate_analyze_check_and_export_work_on_its_run_directory(digits_run, data_root, tmp_path, monkeypatch):
    from _run_dir_commands import exercise_run_dir_commands

    monkeypatch.setenv("ICAO_MTL_DATA", str(data_root))
    photo = next((data_root / "digits" / "images").glob("*"))
    exercise_run_dir_commands(digits_run[1], photo, "n_3", tmp_path)


def test_vgg16_branches_are_the_13_convolutions_loaded_from_a_weights_file(tmp_path):
    """Spec §8.2: stages block1_conv1 ... block5_conv3, 24 edges per direction, every unit's
    convolutions loaded from the file (here a randomly initialised VGG16 saved offline)."""
    from icao_mtl.backbones import build_backbone, save_backbone_weights
    from nas.mtl_nas.network import load_pretrained

    keras.utils.set_random_seed(0)
    _, vgg = build_backbone("vgg16", keras.Input((32, 32, 3)), weights="none")
    path = tmp_path / "vgg16.weights.h5"
    save_backbone_weights(vgg, path)
    units = [("a", ["t1"]), ("b", ["t2"])]
    model = Supernet(NetSpec(backbone="vgg16", image_size=32), units)
    assert len(model.table) == 48 and model.spec.stages == 13
    load_pretrained(model.net, units, "vgg16", str(path), 32)
    source = vgg.get_layer("block4_conv2").get_weights()
    for unit in ("a", "b"):
        for mine, theirs in zip(model.net.get_layer(f"{unit}_block4_conv2").get_weights(), source):
            np.testing.assert_array_equal(mine, theirs)
    out = model(_images(2, 32))
    assert set(out) == {"t1", "t2"} and out["t1"].shape == (2, 2)


def test_mobilenet_v2_branches_are_its_17_blocks_with_linear_fusion_ops(tmp_path):
    """Spec §8.3: the 17 inverted-residual blocks as stages, blocks [1, 2, 3, 4, 3, 3, 1] (32 edges per
    direction, 9 <- 6 absent), weights from a file into every unit, fusion without ReLU so the linear
    bottleneck outputs (and the residual paths that carry them) are not clipped."""
    from icao_mtl.backbones import build_backbone, save_backbone_weights
    from nas.mtl_nas.network import load_pretrained

    keras.utils.set_random_seed(0)
    _, app = build_backbone("mobilenet_v2", keras.Input((32, 32, 3)), weights="none")
    path = tmp_path / "mbv2.weights.h5"
    save_backbone_weights(app, path)
    units = [("a", ["t1"]), ("b", ["t2"])]
    model = Supernet(NetSpec(backbone="mobilenet_v2", image_size=32), units)
    assert len(model.table) == 64 and model.spec.stages == 17
    assert not any(e.stage == 9 and e.from_stage == 6 for e in model.table)
    load_pretrained(model.net, units, "mobilenet_v2", str(path), 32)
    for unit in ("a", "b"):
        block = model.net.get_layer(f"{unit}_block_5")
        np.testing.assert_array_equal(block.project.kernel.numpy(), app.get_layer("block_5_project").kernel.numpy())
        np.testing.assert_array_equal(model.net.get_layer(f"{unit}_stem").conv.kernel.numpy(),
                                      app.get_layer("Conv1").kernel.numpy())
    fusions = [l for l in model.net.layers if isinstance(l, NddrFusion)]
    assert len(fusions) == 34 and not any(l.relu for l in fusions)
    negative = NddrFusion(2, 0, init=(1.0, 0.0), relu=False)
    assert float(tf.reduce_min(negative([-tf.ones((1, 2, 2, 2))], training=False))) < 0  # not clipped
    out = model(_images(2, 32))
    assert set(out) == {"t1", "t2"} and out["t1"].shape == (2, 2)
