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
