"""The one way in and out of every search method.

Each method package (``nas.depth``, ``nas.bmtas``, ...) exposes ``run(config) -> MethodResult``,
where ``config`` is its dataclass (a :class:`~nas.common.cli.CommonConfig`). Every trained network of
the result lives in a run directory with the files ``python -m icao_mtl.train`` writes
(``config.json``, ``split.csv``, ``model.keras``, ``metrics.json``, ``table.md`` / ``.csv``, the
score files, ``curves.png``, ``far_frr.png``, ``det.png``, ``status.json``), so ``evaluate``,
``analyze``, ``check`` and ``export`` work on any of them; the method's own outputs (trace, structure,
trials) sit beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from icao_mtl import io as aio


@dataclass
class MethodRun:
    """One network a method trained.

    Attributes:
        name: e.g. "lambda_0.5", "baseline_shared", "final".
        run_dir: its run directory.
        search_seconds, train_seconds: wall time of the search that found it and of its training.
        details: what the method knows of it (the configuration, the structure, parameters, MAdds).
    """

    name: str
    run_dir: Path
    search_seconds: float | None = None
    train_seconds: float | None = None
    details: dict = field(default_factory=dict)

    @property
    def metrics(self) -> dict:
        """The run directory's ``metrics.json`` (validation and test)."""
        return aio.read_json(Path(self.run_dir) / "metrics.json")


@dataclass
class MethodResult:
    """What ``run(config)`` of a method returns: its output directory and the networks it trained."""

    method: str
    out: Path
    runs: list[MethodRun] = field(default_factory=list)


@dataclass(frozen=True)
class Budget:
    """The compute every method gets in a comparison (``python -m nas.compare``).

    Attributes:
        epochs: training epochs of every network that is compared (a Handcrafted model, each STL model,
            the network a search found).
        search_epochs: epochs of a differentiable search, warm-up included (BMTAS, DAG, MTL-NAS).
        trials: trials of a sampling search (the branch-depth NAS).
        pretrain_epochs: epochs of backbone training before a frozen-backbone search, when there are no
            pretrained weights (the branch-depth NAS offline).
    """

    epochs: int = 10
    search_epochs: int = 8
    trials: int = 16
    pretrain_epochs: int = 4


def prepare(cfg, verbose: int = 1) -> tuple:
    """``(train config, dataset, splits, pipelines)`` of a method's configuration (a
    :class:`~nas.common.cli.CommonConfig`): the data, split and pipelines every method shares with
    ``python -m icao_mtl.train``."""
    from icao_mtl.runs import make_pipelines, prepare_data

    tcfg = cfg.train_config()
    ds, splits = prepare_data(tcfg, verbose=verbose)
    return tcfg, ds, splits, make_pipelines(tcfg, splits)


def budget_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"
