"""Auto-VirtualNet (spec virtualnet.md §8.5): nesting, the cost of a configuration against the built
sub-network, masked = sliced, skip, the regulariser, the agent's output and sampling, one weight set,
epsilon-greedy, the policy-gradient sign; end-to-end runs on real digits and the synthetic faces; the
export of a (task, level) model."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from icao_mtl.training import StepContext
from nas.virtualnet.blocks import (ModuleShape, block_ranks, channel_mask, cost_fractions, default_rhos, majority,
                                   module_cost, nest_levels, regulariser)
from nas.virtualnet.network import NestedResidual, NetSpec, VirtualNet, build_sliced
from nas.virtualnet.search import log_prob, phases, sample_counts, used_fraction

SAME = ModuleShape(32, 32, 32, 1, 8)
DOWN = ModuleShape(16, 32, 32, 2, 16)


def _tiny(tasks=("a", "b", "c"), levels=3, seed=0, **spec):
    keras.utils.set_random_seed(seed)
    return VirtualNet(NetSpec(image_size=16, stem=8, widths=[8, 16], groups=4, agent_size=16, **spec), list(tasks),
                      levels)


def _images(n=6, size=16, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32))


# 1. nesting ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["cyclic", "random", "identity"])
def test_the_channels_of_a_count_are_a_subset_of_those_of_every_larger_count(order):
    ranks = block_ranks(5, 3, 4, order, seed=3)
    for t in range(5):
        for j in range(3):
            assert sorted(ranks[t, j]) == [0, 1, 2, 3]  # a permutation of the blocks
            masks = [channel_mask(ranks[t, j], c, 32, 4) for c in range(5)]
            assert [int(m.sum()) for m in masks] == [0, 8, 16, 24, 32]
            for lo in range(5):
                for hi in range(lo, 5):
                    assert not (masks[lo] & ~masks[hi]).any()
    if order == "cyclic":  # task t starts at block t mod g: the first block of every task differs for t < g
        assert [int(np.argmin(ranks[t, 0])) for t in range(5)] == [0, 1, 2, 3, 0]
    if order == "identity":
        assert (ranks == np.arange(4)).all()


def test_strict_nesting_makes_the_levels_counts_non_decreasing_and_majority_counts():
    counts = np.array([[[2, 0, 3], [1, 4, 0], [0, 1, 4]]])  # (k=1, levels=3, m=3)
    nested = nest_levels(counts)
    assert nested.tolist() == [[[2, 0, 3], [2, 4, 3], [2, 4, 4]]]
    assert (np.diff(nested, axis=1) >= 0).all()
    votes = np.array([[1, 2], [1, 3], [2, 3], [2, 0]])  # ties go to the smaller count
    assert majority(votes, 4).tolist() == [1, 3]


# 2. cost = built size ----------------------------------------------------------------------------------

def test_the_cost_of_a_count_is_the_spec_reference_and_the_built_modules_parameters():
    assert [module_cost(c, SAME, 4) for c in range(5)] == [0, 4688, 9312, 13936, 18560]
    assert [module_cost(c, DOWN, 4) for c in range(5)] == [0, 3536, 7008, 10480, 13952]
    assert module_cost(4, SAME, 4, bn_stats=True) == 18688 and module_cost(4, DOWN, 4, bn_stats=True) == 14080
    for shape in (SAME, DOWN):
        for c in range(1, 5):
            layer = NestedResidual(shape.cin, c * shape.cmid // 4, shape.cout, shape.stride)
            layer.build((None, shape.size, shape.size, shape.cin))
            trainable = sum(int(np.prod(v.shape)) for v in layer.trainable_variables)
            assert trainable == module_cost(c, shape, 4)
            assert layer.count_params() == module_cost(c, shape, 4, bn_stats=True)


def test_a_task_model_has_the_parameters_its_counts_cost():
    from nas.virtualnet import task_cost

    net = _tiny()
    for counts in ([0, 0, 0, 0], [1, 2, 3, 4], [4, 4, 4, 4], [0, 3, 0, 1]):
        model = build_sliced(net, {"b": np.array(counts)})
        assert model.count_params() == task_cost(net, counts)["params"], counts


# 3-4. masked forward = sliced network; skip ---------------------------------------------------------------

@pytest.mark.parametrize("training", [False, True])
def test_the_masked_network_equals_the_sliced_network(training):
    net = _tiny(order="random")
    x = _images(8)
    rng = np.random.default_rng(0)
    for _ in range(3):
        counts = {t: rng.integers(0, 5, size=4) for t in net.task_ids}
        sliced = build_sliced(net, counts)
        # in training mode a batch's rows share one configuration (batch norm's statistics are per batch)
        out = sliced(x, training=training)
        for i, t in enumerate(net.task_ids):
            z = net.forward(x, tf.constant(np.tile(counts[t], (8, 1)), tf.int32), tf.fill([8], i), training=training)
            np.testing.assert_allclose(out[t][:, 1].numpy(), tf.sigmoid(z).numpy(), rtol=1e-4, atol=1e-5)


def test_tasks_with_the_same_channels_share_one_path_and_others_do_not():
    net = _tiny(tasks=("a", "b", "c", "d", "e"))  # cyclic: task 4 has task 0's block order
    same = build_sliced(net, {t: np.array([2, 1, 3, 0]) for t in net.task_ids})
    paths = {layer.name.split("_")[0] for layer in same.layers if layer.name.startswith("path")}
    assert len(paths) == 4
    full = build_sliced(net, {t: np.array([4, 4, 4, 4]) for t in net.task_ids})
    assert {layer.name.split("_")[0] for layer in full.layers if layer.name.startswith("path")} == {"path0"}


def test_a_skipped_module_is_its_shortcut_whatever_its_weights():
    layer = NestedResidual(8, 16, 16, 2)
    x = tf.nn.relu(tf.constant(np.random.default_rng(1).normal(size=(3, 9, 9, 8)).astype(np.float32)))
    layer(x)
    expected = tf.pad(x[:, ::2, ::2, :], [[0, 0], [0, 0], [0, 0], [0, 8]])
    for scale in (1.0, 100.0):
        layer.set_weights([w * scale for w in layer.get_weights()])
        out = layer(x, channels=tf.zeros((3, 16)), gate=tf.zeros((3,)), training=True)
        np.testing.assert_array_equal(out.numpy(), tf.nn.relu(expected).numpy())


# 5. the regulariser ------------------------------------------------------------------------------------

def test_the_regulariser_of_the_spec_example_and_its_extremes():
    fractions = cost_fractions([SAME, DOWN], 4)
    assert regulariser([0, 0], fractions, 0.7) == 0.0
    assert regulariser([4, 4], fractions, 0.7) == pytest.approx(0.7)
    assert regulariser([2, 1], fractions, 1.0) == pytest.approx(0.14257, abs=1e-5)
    used = used_fraction(tf.constant([[2, 1], [0, 0], [4, 4]]), fractions).numpy()
    np.testing.assert_allclose(used, [0.37758, 0.0, 1.0], atol=1e-5)
    assert default_rhos(3) == pytest.approx([0.5, 0.1, 0.02])


# 6-8. the agent, one weight set, epsilon-greedy ------------------------------------------------------------

def test_the_agent_gives_one_distribution_per_image_task_level_and_module():
    net = _tiny()
    logits = net.agent(_images(5))
    assert logits.shape == (5, 3, 3, 4, 5)
    np.testing.assert_allclose(tf.reduce_sum(tf.nn.softmax(logits), -1).numpy(), 1.0, rtol=1e-6)
    counts = sample_counts(tf.reshape(logits, (-1, 4, 5)), 0.0, tf.constant([1, 2])).numpy()
    assert counts.min() >= 0 and counts.max() <= 4
    one_hot = np.eye(5, dtype=int)[counts]  # M: exactly one 1 per column (module)
    assert (one_hot.sum(-1) == 1).all()
    blocks = np.arange(4) < counts[..., None]  # its expansion to blocks has c_j ones
    assert (blocks.sum(-1) == counts).all()


def test_switching_configurations_creates_no_variable():
    net = _tiny()
    before = [(v.path, tuple(v.shape)) for v in net.variables]
    x = _images(4)
    for c in ([0, 0, 0, 0], [4, 4, 4, 4], [1, 3, 0, 2]):
        net.forward(x, tf.constant([c] * 4), tf.constant([0, 1, 2, 0]), training=True)
    net(x)
    assert [(v.path, tuple(v.shape)) for v in net.variables] == before


def test_epsilon_one_draws_uniform_counts_and_epsilon_zero_follows_the_policy():
    logits = tf.constant(np.log([[[0.7, 0.1, 0.1, 0.05, 0.05]]] * 20000, ).astype(np.float32))  # (rows, 1, 5)
    uniform = np.bincount(sample_counts(logits, 1.0, tf.constant([3, 4])).numpy().ravel(), minlength=5) / 20000
    np.testing.assert_allclose(uniform, 0.2, atol=0.015)
    policy = np.bincount(sample_counts(logits, 0.0, tf.constant([3, 4])).numpy().ravel(), minlength=5) / 20000
    np.testing.assert_allclose(policy, [0.7, 0.1, 0.1, 0.05, 0.05], atol=0.015)
    c = tf.constant([[0], [2]])
    np.testing.assert_allclose(log_prob(logits[:2], c).numpy(), np.log([0.7, 0.1]), rtol=1e-5)


# 9. the policy gradient ------------------------------------------------------------------------------------

class _ToyBackbone:
    """A stand-in for the backbone: the logit is +8 (right, label 1) when a row's counts equal
    ``target`` and -8 otherwise; so the cheapest cost is the target structure's."""

    def __init__(self, net, target):
        self.net, self.target = net, tf.constant(target, tf.int64)
        self.agent, self.spec = net.agent, net.spec
        self.baseline, self.baseline_weight = net.baseline, net.baseline_weight

    def forward(self, x, counts, task, training=None):
        hit = tf.reduce_all(tf.equal(tf.cast(counts, tf.int64), self.target), axis=-1)
        return tf.where(hit, 8.0, -8.0)


def test_the_agents_update_raises_the_probability_of_the_structure_of_lowest_cost():
    net = _tiny(tasks=("a",), levels=1, agent_mode="task")
    toy = _ToyBackbone(net, [3, 1, 0, 2])
    fractions = cost_fractions(net.shapes, 4)
    agent_loss = phases(net, ["a"], pretrain=0, search=1, tasks_per_step=1, rhos=[0.0],
                        fractions=fractions, eps=(0.0, 0.0))[0].passes[1].steps[0].losses[0]
    optimizer = keras.optimizers.Adam(0.1)
    x, y = _images(16), {"a": tf.ones((16,), tf.int32)}

    def p_target():
        p = tf.nn.softmax(net.agent.table[0, 0]).numpy()
        return float(np.prod([p[j, c] for j, c in enumerate([3, 1, 0, 2])]))

    start = p_target()
    for step in range(150):
        ctx = StepContext(True, "search", tf.constant(step, tf.int64), 0, 0, tf.constant(step, tf.int64),
                          tf.constant(150, tf.int64), tf.constant([step, 7], tf.int32))
        with tf.GradientTape() as tape:
            loss, logs = agent_loss(toy, x, y, ctx)
        grads = tape.gradient(loss, net.agent_variables())
        optimizer.apply_gradients(zip(grads, net.agent_variables()))
    assert start == pytest.approx(1 / 5 ** 4, rel=1e-3)
    assert p_target() > 0.5  # from 0.0016
    # the baseline follows the cost: the structure is found, the mean cost is near 0
    assert float(net.baseline[0, 0] / net.baseline_weight[0, 0]) < 2.0


# end to end ------------------------------------------------------------------------------------------------

def _digits_run(tmp_path_factory, data_root, name, **options):
    from nas.virtualnet import VirtualNetConfig, run

    out = tmp_path_factory.mktemp(name) / "digits"
    mp = pytest.MonkeyPatch()
    mp.setenv("ICAO_MTL_DATA", str(data_root))
    try:
        return run(VirtualNetConfig(data="digits", out=str(out), verbose=0, **options)), out
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, data_root):
    return _digits_run(tmp_path_factory, data_root, "virtualnet", pretrain_epochs=4, search_epochs=2)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, data_root):
    """A small run on digits (narrow backbone, one epoch of each phase) for the commands and the export."""
    return _digits_run(tmp_path_factory, data_root, "virtualnet_small", widths=[8, 16], stem=8, modules_per_stage=1,
                       pretrain_epochs=1, search_epochs=1, per_sample=False)


@pytest.mark.slow  # about 3 minutes: pytest -m slow tests/test_virtualnet.py
def test_digits_every_level_beats_chance_and_dearer_levels_are_not_worse(digits_run):
    """Held-out test digits, one seed. Stated noise: a level may be up to 3 EER points worse than the
    next cheaper one (the static models are a majority vote of a per-sample policy)."""
    result, out = digits_run
    levels = json.loads((out / "levels.json").read_text())["levels"]
    eers = [lv["test_eer_mean"] for lv in levels]
    params = [np.mean([t["params"] for t in lv["tasks"].values()]) for lv in levels]
    assert all(e < 0.25 for e in eers), eers  # chance: 0.5
    assert all(b <= a + 0.03 for a, b in zip(eers, eers[1:])), eers
    assert params[0] < params[-1], params  # rho: the cheapest level uses fewer parameters
    for lv in levels:
        assert lv["per_sample"]["test_eer_mean"] < 0.25
    for i in (1, 2, 3):
        d = out / f"level{i}"
        for f in ("model.keras", "metrics.json", "table.md", "det.png", "status.json", "split.csv"):
            assert (d / f).is_file(), (d, f)
    for f in ("cost_curves.png", "structures.png", "trace.png", "configurations.json", "virtualnet.weights.h5"):
        assert (out / f).is_file(), f
    assert len(result.runs) == 3


def test_the_exported_task_model_gives_the_level_models_scores(small_run, tmp_path):
    import icao_mtl
    from nas.virtualnet.export import main

    _, out = small_run
    level = icao_mtl.load_model(out / "level1" / "model.keras")
    task = level.output_names[3]
    assert main(["--run", str(out), "--task", task, "--level", "1", "--out", str(tmp_path / "t.keras")]) == 0
    alone = keras.saving.load_model(tmp_path / "t.keras", safe_mode=True)
    x = _images(5, size=32)
    np.testing.assert_allclose(alone(x)[task].numpy(), level(x)[task].numpy(), rtol=1e-5, atol=1e-6)
    assert alone.count_params() < level.count_params()
    assert main(["--run", str(out), "--task", "nope", "--level", "1", "--out", str(tmp_path / "u.keras")]) == 2


def test_evaluate_analyze_check_and_export_work_on_a_level_directory(small_run, data_root, tmp_path, monkeypatch):
    from _run_dir_commands import exercise_run_dir_commands

    monkeypatch.setenv("ICAO_MTL_DATA", str(data_root))
    photo = next((data_root / "digits" / "images").glob("*"))
    exercise_run_dir_commands(small_run[1] / "level2", photo, "n_3", tmp_path)
    for f in ("cost_curves.png", "structures.png", "trace.png", "configurations.json", "levels.json"):
        assert (small_run[1] / f).is_file(), f


def test_the_options_are_checked_before_any_work(tmp_path):
    from icao_mtl.errors import ConfigError
    from nas.virtualnet import VirtualNetConfig

    with pytest.raises(ConfigError, match="--rhos needs 3"):
        VirtualNetConfig(rhos=[0.1, 0.2]).validate()
    with pytest.raises(ConfigError, match="not split into building blocks"):
        VirtualNetConfig(backbone="vgg16").validate()
    with pytest.raises(ConfigError, match="split into --groups 3"):
        VirtualNetConfig(groups=3).validate()


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_virtualnet.py
def test_synthetic_faces_end_to_end_beats_chance_on_held_out_images(tmp_path, monkeypatch):
    from icao_mtl.synth import SynthConfig, generate
    from nas.virtualnet import VirtualNetConfig, run

    data = generate(tmp_path / "faces", SynthConfig(n=240, size=64, seed=2), progress=False)
    cfg = VirtualNetConfig(data=str(data), img_size=32, pretrain_epochs=3, search_epochs=1, tasks_per_step=23,
                           per_sample=False, out=str(tmp_path / "run"), verbose=0)
    result = run(cfg)
    levels = json.loads((tmp_path / "run" / "levels.json").read_text())["levels"]
    assert all(lv["test_eer_mean"] < 0.45 for lv in levels), [lv["test_eer_mean"] for lv in levels]
    assert "per_sample" not in levels[0] and len(result.runs) == 3
