"""The reusable population head of the branch-depth search (issue 17, items 1 and 2)."""

import keras
import numpy as np
import pytest

from icao_mtl import data
from icao_mtl.losses import MaskedMultiTaskLoss
from icao_mtl.training import Engine, Phase
from nas.depth import search as nas_search
from nas.depth.features import FeaturePipeline, load_or_build
from nas.depth.population import PopulationTrainer


@pytest.fixture(scope="module")
def cached(small_portraits, tmp_path_factory):
    """300 portraits at 64 px, their splits and their features under a random small CNN (2 views)."""
    _, _, splits, weights = small_portraits
    feats = load_or_build(tmp_path_factory.mktemp("population") / "cache", splits, backbone="small_cnn",
                          weights=weights, image_size=64, augment=data.augment_config("reference"), views=2, seed=0,
                          verbose=0)
    return splits, feats


def _alone(config, seed, feats, splits, epochs):
    """The child alone: its own grouped head (the network the final model copies), ``epochs`` epochs of
    the engine on the same batches, scored after the last."""
    tasks = splits.train.tasks
    head = nas_search.head_model(config, feats.dim, tasks, splits.train.groups, seed)
    engine = Engine(head, tasks, optimizer=lambda: keras.optimizers.Adam(1e-3), loss=MaskedMultiTaskLoss(tasks, 0.1),
                    monitor="loss", verbose=0)
    engine.fit([Phase("train", epochs, select_best=False)], {"train": FeaturePipeline(feats.train, splits.train, 32, 0)})
    return head, nas_search.score(engine, feats.val, splits.val)


def test_a_child_trained_in_a_population_trains_as_it_would_alone(cached):
    """Three children of different depths in one population (and one slot re-assigned after a first
    round): each one's weights and validation metrics equal those of the same child trained alone."""
    splits, feats = cached
    children = {0: ((1, 5, 2, 3), 11), 1: ((4, 1, 1, 2), 12), 2: ((2, 2, 5, 1), 13)}
    trainer = PopulationTrainer(feats, splits, population=3, max_depth=5, seed=0)
    trainer.assign_many({0: ((5, 5, 5, 5), 99), 1: children[1], 2: children[2]})
    trainer.train(1)  # a first round: slot 0 is then given another child, the optimiser starts fresh
    trainer.assign_many(children)
    trainer.train(2)
    scores = trainer.score()
    for slot, (config, seed) in children.items():
        head, alone = _alone(config, seed, feats, splits, epochs=2)
        for name, (kernel, bias) in trainer.child_weights(slot, config).items():
            layer = head.get_layer(name)
            np.testing.assert_allclose(kernel, layer.kernel.numpy(), atol=2e-5)
            np.testing.assert_allclose(bias, layer.bias.numpy(), atol=2e-5)
        assert scores[slot]["eer_mean"] == pytest.approx(alone["eer_mean"], abs=2e-3)
        assert scores[slot]["accuracy_mean"] == pytest.approx(alone["accuracy_mean"], abs=2e-3)


def test_a_population_learns_and_is_traced_once_for_every_configuration(cached):
    """Training a population lowers its loss; training the next configurations reuses the traced
    step (no retrace) and the optimiser, reset."""
    splits, feats = cached
    trainer = PopulationTrainer(feats, splits, population=2, seed=0)
    trainer.assign_many({0: ((1, 1, 1, 1), 1), 1: ((3, 2, 1, 4), 2)})
    history = trainer.train(4)
    assert history[-1]["loss"] < history[0]["loss"]
    step = trainer.engine._compiled.copy()
    opt = trainer.engine.optimizers["model"]
    trainer.assign_many({0: ((5, 4, 3, 2), 3), 1: ((2, 2, 2, 2), 4)})
    trainer.train(4)
    assert trainer.engine._compiled.keys() == step.keys() and trainer.engine.optimizers["model"] is opt
    fns = [v[0] for v in step.values()]
    assert all(f.experimental_get_tracing_count() == 1 for f in fns)
    with pytest.raises(Exception, match="outside 1..5"):
        trainer.assign(0, (6, 1, 1, 1), 0)
