"""``python -m nas.mtl_nas``: MTL-NAS (seed 001; spec mtl_nas.md), searched NDDR feature fusion
between task networks, on the engine.

Each unit (a task group: the data's groups, or ``--units K`` contiguous chunks of the tasks) has its
own backbone branch; after every stage of every unit an NDDR fusion op (concatenation, 1x1 conv, batch
norm, ReLU; identity-style initialisation (1, 0)) takes the unit's own feature and the gated features
of the other units' stages in the same block (j <= i, i - j < 3). One logit per edge; the search
alternates an architecture step (sigmoid gates, MinEntropy) and a weight step (binary-concrete gates,
temperature (1 - s/N)^2) batch by batch on a 50/50 split of the training split redrawn every epoch
(:mod:`nas.mtl_nas.search`). An edge is kept iff its logit is positive; the final network has only the
kept edges (their rows of the fusion kernels; the rest removed) and is evaluated without retraining,
as the authors do (``--retrain-epochs`` to retrain it).

Examples::

    python -m nas.mtl_nas --data digits                     # the 4 digit groups as units, 32 px
    python -m nas.mtl_nas                                   # the synthetic faces, the 4 requisite groups, 64 px
    python -m nas.mtl_nas --data lfw --units 3 --out runs/mtl_nas_lfw
    python -m nas.mtl_nas --backbone vgg16 --weights imagenet --img-size 224     # the paper's backbone
    python -m nas.mtl_nas --backbone mobilenet_v2 --weights imagenet            # fusion ops without ReLU
    python -m nas.mtl_nas --resume --out runs/mtl_nas_lfw   # after an interruption (kill -9 included)

Outputs (``--out``): the run-directory files of ``python -m icao_mtl.train`` for the final network
(``model.keras``, ``metrics.json``, tables, scores, curves, DET and FAR/FRR plots, ``status.json``),
``mtl_nas.json`` (the options), ``units.json``, ``edges.json`` / ``edges.png`` (every edge's logit,
probability and whether it is kept; a drawing of the kept edges), ``trace.png`` (losses, validation
accuracy, entropy and undecided gates per epoch; the numbers are in ``history.json``) and
``params.json`` (parameters, MAdds and CPU latency of the final network, the network with every edge,
the units with no edge and the plain multi-branch network without fusion ops).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from icao_mtl import io as aio
from icao_mtl.errors import ConfigError

from ..common import cli
from ..common.cli import CommonConfig, option
from ..common.method import MethodResult, MethodRun, prepare
from .network import NetSpec, Supernet, build_net, load_pretrained, transplant
from .report import plot_trace, write_edges
from .search import groups, phases


@dataclass
class MtlNasConfig(CommonConfig):
    """An MTL-NAS run (the options every method's command shares are those of
    :class:`~nas.common.cli.CommonConfig`)."""

    units: str = option("groups", "groups: the data's task groups (when it has 2 or more; else 4 units); or a "
                                  "number K of units, the tasks dealt in order into K contiguous chunks")
    stages: list[int] = option([2, 2, 2], "small_cnn: stages per block (one 2x2 pooling between blocks)")
    channels: list[int] = option([16, 32, 64], "small_cnn: channels per block")
    limit: int = option(3, "depth limit of the edges: i - j < limit")
    init: list[float] = option([1.0, 0.0], "(w_self, w_other) of the fusion kernels (the MTL-NAS configs: 1 0)")
    pretrain_epochs: int = option(3, "units trained alone first (every gate 0), as the paper starts from trained "
                                     "single-task networks")
    search_epochs: int = option(6, "epochs of the search (one architecture and one weight step per round)")
    retrain_epochs: int = option(0, "retrain the final network (0: evaluate it as searched, as the authors)")
    pretrain_lr: float = option(1e-3, "Adam learning rate of the pretraining and the retraining")
    weight_lr: float = option(1e-3, "SGD base learning rate of the weight step (poly 0.9; x10 heads' kernels, x20 "
                                    "biases, x100 fusion ops)")
    arch_lr: float = option(0.1, "Adam learning rate of the logits (the released configs: 1e-3 over 20,000 rounds; "
                                 "0.1 is their ablation's 100x, for the few hundred rounds of a CPU run)")
    entropy_weight: float = option(10.0, "lambda_H, the MinEntropy weight (0: no MinEntropy)")
    entropy_ramp: bool = option(False, "ramp lambda_H linearly over the search (period (0, 1)) instead of the "
                                       "released configs' constant from the first round")
    augment: str = option("auto", "augmentation preset; auto: none for digits, reference otherwise")

    def resolved(self) -> dict:
        named = self.data if self.data in ("digits", "lfw") else None
        default = 224 if self.backbone in ("vgg16", "mobilenet_v2") else (32 if named else 64)
        return {"img_size": self.img_size or default,
                "augment": ("none" if self.data == "digits" else "reference") if self.augment == "auto"
                else self.augment}

    def train_config(self, **changes):
        r = self.resolved()
        # the data side of the run (the backbone field is the branches', built here)
        return super().train_config(**{"backbone": "small_cnn", "weights": "none", "img_size": r["img_size"],
                                       "augment": r["augment"], "approach": "hc2",
                                       "epochs": self.pretrain_epochs + self.search_epochs + self.retrain_epochs,
                                       "lr": self.pretrain_lr, **changes})

    def spec(self) -> NetSpec:
        return NetSpec(backbone=self.backbone, image_size=self.resolved()["img_size"], stage_config=list(self.stages),
                       channels=list(self.channels), limit=self.limit, init=tuple(self.init))

    def validate(self) -> "MtlNasConfig":
        for name in ("pretrain_epochs", "retrain_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 0. Received: {v!r}.")
        if not isinstance(self.search_epochs, int) or self.search_epochs < 1:
            raise ConfigError(f"--search-epochs must be a positive integer. Received: {self.search_epochs!r}.")
        if self.units != "groups" and not (self.units.isdigit() and int(self.units) >= 2):
            raise ConfigError(f"--units {self.units!r}: give 'groups' or a number of units >= 2.")
        if len(self.init) != 2:
            raise ConfigError(f"--init takes two numbers, w_self and w_other. Received: {self.init}.")
        if self.backbone == "small_cnn" and self.weights not in ("none", None):
            raise ConfigError(f"--weights {self.weights!r} with --backbone small_cnn: only the vgg16 and mobilenet_v2 "
                              "branches load weights. Fix: --weights none, or --backbone vgg16 / mobilenet_v2.")
        for name in ("weight_lr", "arch_lr", "pretrain_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0. Received: {getattr(self, name)}.")
        if self.entropy_weight < 0:
            raise ConfigError(f"--entropy-weight must be >= 0. Received: {self.entropy_weight}.")
        self.spec().validate()
        self.train_config().validate()
        return self


@dataclass
class MtlNasResult(MethodResult):
    """The final network (``runs[0]``), its units, the kept edges and the parameter accounting."""

    units: list = field(default_factory=list)
    edges: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


def make_units(tasks, groups_: dict, units: str = "groups") -> list:
    """``[(unit name, [tasks])]``: the data's groups (when 2 or more), else ``min(4, tasks)`` units, or
    ``units`` contiguous chunks of the tasks."""
    tasks = list(tasks)
    if units == "groups":
        found = [(g, [t for t in m if t in tasks]) for g, m in groups_.items()]
        found = [(g, m) for g, m in found if m]
        if len(found) >= 2:
            return [(re.sub(r"\W", "_", g), m) for g, m in found]
        k = min(4, len(tasks))
    else:
        k = int(units)
    if not 2 <= k <= len(tasks):
        raise ConfigError(f"MTL-NAS needs 2 to {len(tasks)} units for {len(tasks)} tasks (fusion is between units). "
                          f"Received: {k}. Fix: --units 2..{len(tasks)}.")
    return [(f"unit{i}", [str(t) for t in chunk]) for i, chunk in enumerate(np.array_split(np.array(tasks), k))]


def accounting(final, supernet: Supernet, spec: NetSpec, units: list) -> dict:
    """Parameters, MAdds and CPU latency (ms per image, batch 32) of the final network, the network
    with every edge, the units with no edge (each fusion op on its own feature only) and the plain
    multi-branch network (no fusion op)."""
    from ..common.madds import latency_ms, model_madds

    alone = build_net(spec, units, keep=np.zeros(len(supernet.table), bool), name="mtl_nas_no_edges")
    everything = build_net(spec, units, keep=np.ones(len(supernet.table), bool), name="mtl_nas_all_edges")
    plain = build_net(spec, units, fusion=False, name="mtl_nas_plain")
    rows = {}
    for name, model in (("final", final), ("all_edges", everything), ("no_edges", alone), ("plain", plain)):
        rows[name] = {"params": int(model.count_params()), "madds": model_madds(model),
                      "latency_ms_batch32": latency_ms(model, spec.image_size)}
    base = rows["plain"]["params"]
    for r in rows.values():
        r["params_relative_to_plain"] = r["params"] / base
    return rows


def run(cfg: MtlNasConfig, *, resume: bool = False) -> MtlNasResult:
    """Pretraining, the search, the discretised final network's run directory and the edges; see the
    module docstring for the outputs."""
    from icao_mtl.data import SplitView
    from icao_mtl.runs import finish_run_dir, holds_run, start_run_dir, write_status
    from icao_mtl.training import Engine

    cfg.validate()
    out = Path(cfg.out) if cfg.out else Path("runs") / f"mtl_nas_{cfg.backbone}_{time.strftime('%Y%m%d-%H%M%S')}"
    record = out / "mtl_nas.json"
    if cli.check_resume(out, record, cfg.identity(), resume, what="an MTL-NAS run") is None and holds_run(out):
        raise ConfigError(f"{out} already holds a run. Fix: choose another --out.")
    verbose = cfg.verbose
    tcfg, ds, splits, pipes = prepare(cfg, verbose)
    tasks = splits.train.tasks
    units = make_units(tasks, ds.groups, cfg.units)
    spec = cfg.spec()
    rcfg = tcfg.copy(approach="mtl_nas", out=str(out))
    out.mkdir(parents=True, exist_ok=True)
    aio.write_json(record, cfg.identity())
    aio.write_json(out / "units.json", {u: t for u, t in units})
    start_run_dir(out, rcfg.to_dict(), splits, stage="search")
    try:
        keras.utils.set_random_seed(cfg.seed)
        supernet = Supernet(spec, units)
        if spec.backbone != "small_cnn" and cfg.weights not in ("none", None):
            load_pretrained(supernet.net, units, spec.backbone, cfg.weights, spec.image_size)
        halves = SplitView(pipes["train"], (0.5, 0.5), seed=cfg.seed)
        weight_half, arch_half = halves.part(0), halves.part(1)
        rounds = min(weight_half.steps, arch_half.steps) * cfg.search_epochs
        if verbose:
            print(f"MTL-NAS: {len(units)} units ({', '.join(f'{u}: {len(t)} tasks' for u, t in units)}) on "
                  f"{spec.backbone} at {spec.image_size} px; {len(supernet.table)} candidate edges; search of "
                  f"{rounds} rounds on halves of {len(weight_half)} / {len(arch_half)} images.")
        engine = Engine(supernet, tasks, groups=groups(supernet, rounds=rounds, pretrain_lr=cfg.pretrain_lr,
                                                       weight_lr=cfg.weight_lr, arch_lr=cfg.arch_lr),
                        run_dir=out, monitor="val_accuracy", verbose=1 if verbose else 0, seed=cfg.seed)
        started = time.perf_counter()
        history = engine.fit(phases(supernet, tasks, pretrain=cfg.pretrain_epochs, search=cfg.search_epochs,
                                    retrain=cfg.retrain_epochs, entropy=cfg.entropy_weight,
                                    entropy_period=(0.0, 1.0) if cfg.entropy_ramp else (0.0, 0.0)),
                             {"train": pipes["train"], "weight_half": weight_half, "arch_half": arch_half},
                             pipes["val"], resume=resume)
        seconds = time.perf_counter() - started
        plot_trace(history, out / "trace.png")
        logits = supernet.logits.numpy()
        keep = logits > 0
        edges = write_edges(out, supernet.table, logits, units, spec.stages)
        final = build_net(spec, units, keep=keep, name="mtl_nas_final")
        transplant(supernet.net, final, keep)
        params = accounting(final, supernet, spec, units)
        params["edges"], params["kept_edges"] = len(supernet.table), int(keep.sum())
        aio.write_json(out / "params.json", params)
        finish_run_dir(out, rcfg, {"model": final}, pipes, splits, {"mtl_nas": history}, verbose=verbose,
                       kept_edges=int(keep.sum()), edges=len(supernet.table))
    except BaseException as exc:
        write_status(out, "interrupted", error=f"{type(exc).__name__}: {exc}")
        raise
    if verbose:
        print(f"Final network: {edges['kept']} of {edges['edges']} fusion edges kept ({edges['undecided']:.0%} of the "
              f"gates undecided, sigmoid in (0.05, 0.95)); {params['final']['params']:,} parameters, "
              f"{params['final']['latency_ms_batch32']:.3f} ms per image (all edges: "
              f"{params['all_edges']['latency_ms_batch32']:.3f}).")
    run_ = MethodRun("final", out, search_seconds=seconds, train_seconds=None,
                     details={"edges": {k: v for k, v in edges.items() if k != "rows"}, "params": params})
    return MtlNasResult("mtl_nas", out, [run_], units, edges, params)


def compare(budget, base: dict, out: Path, seed: int) -> list[tuple[str, MethodRun]]:
    """The row of ``python -m nas.compare``: pretraining and search share ``budget.search_epochs`` (1 : 2),
    and the final network is retrained ``budget.epochs`` (as every compared network is trained for
    the budget's epochs); ``base``: the shared options (the image at most 64 px: one branch per unit)."""
    pretrain = max(1, round(budget.search_epochs / 3))
    size = min(base.get("img_size") or 64, 64)
    cfg = MtlNasConfig(**{**base, "backbone": "small_cnn", "weights": "none", "img_size": size},
                       pretrain_epochs=pretrain, search_epochs=max(1, budget.search_epochs - pretrain),
                       retrain_epochs=budget.epochs, seed=seed, out=str(out), verbose=0)
    result = run(cfg, resume=(Path(out) / "mtl_nas.json").is_file())
    return [("mtl_nas", r) for r in result.runs]


build_parser, main = cli.method_main(MtlNasConfig, run, prog="python -m nas.mtl_nas", doc=__doc__, record="mtl_nas.json")


if __name__ == "__main__":
    sys.exit(main())
