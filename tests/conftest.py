"""Shared fixtures: small synthetic datasets rendered once per test session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from icao_mtl.synth import SynthConfig, generate  # noqa: E402


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """240 portraits at 96x96 (seconds to render)."""
    return generate(tmp_path_factory.mktemp("synth") / "small", SynthConfig(n=240, size=96, seed=3), progress=False)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A private data root for named sets (digits, lfw)."""
    return tmp_path_factory.mktemp("data_root")


@pytest.fixture(scope="session")
def small_portraits(tmp_path_factory):
    """300 portraits at 64 px, their splits, and a random small-CNN weights file (no pretraining):
    ``(root, dataset dir, splits, weights path)``."""
    import keras

    from icao_mtl import data
    from icao_mtl.backbones import build_backbone, save_backbone_weights

    root = tmp_path_factory.mktemp("portraits64")
    ds_dir = generate(root / "data", SynthConfig(n=300, size=64, seed=4), progress=False)
    keras.utils.set_random_seed(0)
    _, bb = build_backbone("small_cnn", keras.Input((64, 64, 3)), weights="none")
    weights = root / "small.weights.h5"
    save_backbone_weights(bb, weights)
    return root, ds_dir, data.split_dataset(data.read_dataset(ds_dir), seed=0), str(weights)
