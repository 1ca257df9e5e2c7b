"""BMTAS groupings and resource-aware loss: the properties of spec branching_bmtas.md §8.8 (1-9, 10, 12)."""

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas.bmtas import partitions as P

# the worked example of spec §4.8: alpha = log p, costs (1, 2)
EXAMPLE_P = np.array([[[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]],
                      [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.3, 0.6]]])
EXAMPLE_GRADIENT = np.array([[[-0.043248, 0.029400, 0.013848], [-0.120280, 0.107872, 0.012408],
                              [-0.125920, -0.051776, 0.177696]],
                             [[-0.042112, 0.029128, 0.012984], [-0.073176, 0.059232, 0.013944],
                              [0.008484, -0.017028, 0.008544]]])


def test_partition_counts_are_bell_numbers_with_top_first_and_bottom_last():
    assert [len(P.set_partitions(t)) for t in range(1, 6)] == [1, 2, 5, 15, 52]
    g = P.set_partitions(3)
    assert g[0] == ((0, 1, 2),) and g[-1] == ((0,), (1,), (2,))


def test_refinement_is_a_partial_order_and_the_ancestors_of_the_spec():
    g = P.set_partitions(4)
    top = g[0]
    for a, b, c in itertools.product(g, repeat=3):
        assert P.refines(a, a)
        if P.refines(a, b) and P.refines(b, a):
            assert a == b
        if P.refines(a, b) and P.refines(b, c):
            assert P.refines(a, c)
    for k in g[:-1]:
        anc = P.ancestors(k, g)
        assert top in anc and k in anc
    assert len(P.ancestors(((0, 1), (2,), (3,)), g)) == 5


def test_per_layer_grouping_probabilities_match_enumeration_and_assignment_counts():
    rng = np.random.default_rng(0)
    alpha = rng.normal(size=(2, 3, 3))
    loss = P.ResourceLoss(3, 3, [1.0, 1.0])
    q = loss.per_layer_grouping(alpha).numpy()
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-6)
    p = np.exp(alpha) / np.exp(alpha).sum(-1, keepdims=True)
    counts = {}
    for layer in range(2):
        expected = dict.fromkeys(loss.groupings, 0.0)
        for o in itertools.product(range(3), repeat=3):
            k = P.partition_of(o)
            expected[k] += np.prod([p[layer, t, o[t]] for t in range(3)])
            counts[k] = counts.get(k, 0) + (layer == 0)
        np.testing.assert_allclose(q[layer], [expected[k] for k in loss.groupings], atol=1e-6)
    for k, n in counts.items():  # K! / (K - b)! assignments induce a grouping of b parts
        assert n == math.factorial(3) // math.factorial(3 - len(k))


def test_the_worked_example_loss_probabilities_and_gradient():
    loss = P.ResourceLoss(3, 3, [1.0, 2.0])
    alpha = tf.Variable(np.log(EXAMPLE_P), dtype=tf.float32)
    with tf.GradientTape() as tape:
        value = loss(alpha)
    assert float(value) == pytest.approx(7.66296, abs=1e-5)
    probs = loss.probabilities(alpha).numpy()
    g = loss.groupings
    by = {k: i for i, k in enumerate(g)}
    assert probs[1, by[((0, 1, 2),)]] == pytest.approx(0.00594, abs=1e-6)
    assert probs[1, by[((0, 1), (2,))]] == pytest.approx(0.18232, abs=1e-6)
    assert probs[1, by[((0,), (1, 2))]] == pytest.approx(0.03456, abs=1e-6)
    assert probs[1, by[((0, 2), (1,))]] == pytest.approx(0.02976, abs=1e-6)
    assert probs[1, -1] == pytest.approx(0.74742, abs=1e-6)
    np.testing.assert_allclose(loss.expected_copies(alpha).numpy(), [2.18, 2.74148], atol=1e-5)
    np.testing.assert_allclose(tape.gradient(value, alpha).numpy(), EXAMPLE_GRADIENT, atol=2e-5)
    assert P.brute_force_cost(np.log(EXAMPLE_P), [1.0, 2.0], "meet") == pytest.approx(7.57848, abs=1e-5)
    assert float(P.ResourceLoss(3, 3, [1.0, 2.0], "meet")(np.log(EXAMPLE_P))) == pytest.approx(7.57848, abs=1e-5)


def test_uniform_logits_give_617_81_and_a_zero_gradient():
    loss = P.ResourceLoss(3, 3, [1.0, 2.0])
    alpha = tf.Variable(tf.zeros((2, 3, 3)))
    with tf.GradientTape() as tape:
        value = loss(alpha)
    assert float(value) == pytest.approx(617 / 81, abs=1e-5)
    np.testing.assert_allclose(loss.probabilities(alpha).numpy()[1], np.array([1, 6, 6, 6, 62]) / 81, atol=1e-6)
    assert np.abs(tape.gradient(value, alpha).numpy()).max() < 1e-6
    assert float(P.ResourceLoss(3, 3, [1.0, 2.0], "meet")(alpha)) == pytest.approx(605 / 81, abs=1e-5)


@pytest.mark.parametrize("units,layers", [(2, 2), (2, 3), (3, 2), (3, 3)])
def test_the_loss_equals_brute_force_under_the_chain_model_and_bounds_the_meet_cost(units, layers):
    rng = np.random.default_rng(units * 10 + layers)
    costs = rng.uniform(0.5, 2.0, layers)
    alpha = rng.normal(0, 1.0, (layers, units, units))
    chain = float(P.ResourceLoss(units, units, costs)(alpha))
    assert chain == pytest.approx(P.brute_force_cost(alpha, costs, "chain"), rel=1e-5)
    meet_exact = P.brute_force_cost(alpha, costs, "meet")
    assert float(P.ResourceLoss(units, units, costs, "meet")(alpha)) == pytest.approx(meet_exact, rel=1e-5)
    if units == 2:
        assert chain == pytest.approx(meet_exact, rel=1e-5)
    else:
        assert chain > meet_exact
    assert costs.sum() - 1e-5 <= chain <= units * costs.sum() + 1e-5


def test_the_limits_of_full_sharing_and_full_separation():
    loss = P.ResourceLoss(3, 3, [1.0, 2.0])
    shared = np.zeros((2, 3, 3))
    shared[:, :, 0] = 20
    separate = np.zeros((2, 3, 3))
    for t in range(3):
        separate[:, t, t] = 20
    assert float(loss(shared)) == pytest.approx(3.0, abs=1e-4)
    assert float(loss(separate)) == pytest.approx(9.0, abs=1e-4)


def _descend(loss, alpha, lr=0.05, steps=400):
    """Adam on the resource loss alone: ``alpha`` (a tf.Variable) updated in place."""
    opt = keras.optimizers.Adam(lr)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            value = loss(alpha)
        opt.apply_gradients([(tape.gradient(value, alpha), alpha)])

    for _ in range(steps):
        step()


@pytest.mark.parametrize("seed", range(5))
def test_minimising_the_resource_loss_alone_collapses_to_full_sharing(seed):
    costs = [1.0, 2.0, 0.5]
    loss = P.ResourceLoss(3, 3, costs)
    alpha = tf.Variable(tf.random.stateless_normal((3, 3, 3), (seed, 0), stddev=0.1))
    _descend(loss, alpha)
    assert float(loss(alpha)) == pytest.approx(3.5, abs=0.03)
    config = P.discretize(alpha.numpy())
    assert all(len(set(row)) == 1 for row in config)  # every unit on the same op, every layer


@pytest.mark.parametrize("semantics", ["chain", "meet"])
def test_a_consistent_split_tree_is_a_local_minimum_of_the_resource_loss(semantics):
    """Why a large lambda need not end in full sharing: once the routes form a consistent tree (here
    units {0, 3} and {1, 2} apart from layer 1 on), no one unit's move at one layer lowers the cost
    (under the chain semantics it raises it: a layer that stops refining the one before is charged T
    copies), so descent on the resource loss alone stays there; only the task losses' noise moves it."""
    costs = [0.25] * 4
    loss = P.ResourceLoss(4, 4, costs, semantics=semantics)
    start = np.zeros((4, 4, 4), np.float32)
    start[0, :, 0] = 3.0
    start[1:, [0, 3], 0] = 3.0
    start[1:, [1, 2], 1] = 3.0
    alpha = tf.Variable(start)
    _descend(loss, alpha)
    config = P.discretize(alpha.numpy())
    assert config.tolist() == P.discretize(start).tolist()
    assert float(loss(alpha)) == pytest.approx(P.architecture_cost(config, costs), abs=0.01)  # 1 + 2 + 2 + 2 copies
    assert P.architecture_cost(config, costs) == pytest.approx(1.75)


def test_pairwise_surrogate_is_exact_at_the_extremes_and_a_lower_bound_of_the_meet_cost():
    costs = [1.0, 2.0]
    for units in (2, 3, 4):
        shared = np.zeros((2, units, units))
        shared[:, :, 0] = 25
        separate = np.zeros((2, units, units))
        for t in range(units):
            separate[:, t, t] = 25
        assert float(P.pairwise_sharing_cost(shared, costs)) == pytest.approx(3.0, abs=1e-3)
        assert float(P.pairwise_sharing_cost(separate, costs)) == pytest.approx(3.0 * units, abs=1e-3)
        rng = np.random.default_rng(units)
        for _ in range(3):
            alpha = rng.normal(0, 1.0, (2, units, units))
            exact = float(P.ResourceLoss(units, units, costs, "meet")(alpha))
            assert float(P.pairwise_sharing_cost(alpha, costs)) <= exact + 1e-5


def test_the_exact_loss_refuses_too_many_units_with_the_fix():
    from icao_mtl.errors import ConfigError

    with pytest.raises(ConfigError, match="pairwise"):
        P.ResourceLoss(23, 23, [1.0])


def test_gumbel_softmax_samples_temperatures_and_the_gumbel_max_property():
    alpha = tf.zeros((100_000, 3))
    for tau, mean_max in ((5.0, 0.41), (1.0, 0.65), (0.1, 0.95)):
        m = P.gumbel_softmax(alpha, tau, seed=(1, 2)).numpy()
        np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-5)
        assert m.max(1).mean() == pytest.approx(mean_max, abs=0.02)
    logits = tf.constant(np.log([[0.5, 0.3, 0.2]]), tf.float32) + tf.zeros((100_000, 3))
    picks = P.gumbel_softmax(logits, 1.0, seed=(3, 4)).numpy().argmax(1)
    np.testing.assert_allclose(np.bincount(picks, minlength=3) / 100_000, [0.5, 0.3, 0.2], atol=0.005)


def test_temperature_schedule_of_the_reference():
    values = {e: P.temperature(e, 160, 8) for e in (1, 9, 10, 84, 159, 160)}
    assert values[1] == values[9] == 5.0
    assert values[10] == pytest.approx(4.9675, abs=1e-4)
    assert values[84] == pytest.approx(2.5662, abs=1e-4)
    assert values[159] == pytest.approx(0.1325, abs=1e-4)
    assert values[160] == pytest.approx(0.1)


def test_branch_groups_of_the_builder_are_meets():
    groups = P.branch_groups([[0, 0, 0], [0, 0, 1], [0, 1, 1]])
    assert groups == [((0, 1, 2),), ((0, 1), (2,)), ((0,), (1,), (2,))]
    assert [len(g) for g in P.branch_groups([[0, 1, 1], [0, 0, 0]])] == [2, 2]
    assert P.architecture_cost([[0, 1, 1], [0, 0, 0]], [1.0, 2.0], "meet") == 6.0
    assert P.architecture_cost([[0, 1, 1], [0, 0, 0]], [1.0, 2.0], "chain") == 2.0 + 2.0 * 3
