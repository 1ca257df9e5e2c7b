"""``python -m nas.bmtas``: branched multi-task architecture search (BMTAS, seed 004) on the engine.

The backbone becomes a supergraph (:class:`~nas.bmtas.supergraph.Supergraph`): a shared stem, then
every searchable layer as K non-sharing copies (:class:`~nas.bmtas.supergraph.MixedOp`), then one head
per task. Each routing
unit (a group of requisites, or one requisite) draws a Gumbel-softmax mixture over the copies of every
layer from its architecture logits ``alpha`` (L, U, K), initialised to zero. The search runs on the
training engine (:mod:`icao_mtl.training`), with no loop of its own (:mod:`nas.bmtas.search`: a
warm-up, then per epoch an architecture pass and a weight pass).

Then every unit takes the argmax copy of each layer; the meet of those choices gives the branch tree
(:func:`nas.bmtas.partitions.branch_groups`), and :func:`~nas.bmtas.builder.build_branched` builds it as a plain Keras model
(registered layers, ``.keras`` with ``safe_mode=True``), retrained from the backbone's initial weights
with the learning rate of an op shared by n units divided by n, and evaluated like any run.

Examples::

    python -m nas.bmtas --lambda 0.5                                   # synthetic set, small CNN
    python -m nas.bmtas --lambda 0 0.1 0.5 2 --baselines --out runs/bmtas_sweep   # Pareto sweep
    python -m nas.bmtas --backbone mobilenet_v2 --weights imagenet --granularity coarse \\
        --data /path/to/icao --mapping fvc.json --lambda 0.05
    python -m nas.bmtas --resume --out runs/bmtas_sweep                # after an interruption

Outputs (``--out``): ``lut.json`` (measured MAdds per layer), and per lambda ``lambda_<L>/``:
``trace.json`` / ``trace.png`` (temperature, losses, expected cost, routing probabilities per
epoch), ``structure.json`` and ``tree.png`` (the branch structure), ``search/`` (checkpoints) and
``branched/`` (the retrained model's run directory: model.keras, metrics, tables, curves). With
several lambdas or ``--baselines``: ``pareto.json`` and ``pareto.png`` (test EER against MAdds, with
the Shared and Single networks).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from icao_mtl import io as aio
from icao_mtl.errors import ConfigError, ResumeError, command

from ..common import cli
from ..common.blocks import layout, madds_table
from ..common.cli import CommonConfig, option
from ..common.method import MethodResult, MethodRun
from .builder import build_branched, lr_groups, structure
from .partitions import MAX_EXACT_UNITS, discretize
from .report import pareto_table, plot_pareto, plot_trace, plot_tree
from .search import TraceWriter, make_units, resource_cost, search_groups, search_phases
from .supergraph import Supergraph

COSTS = ("auto", "chain", "meet", "pairwise")


@dataclass
class BranchingConfig(CommonConfig):
    """A BMTAS search (one or several lambdas), the retraining of its results, optional baselines (the
    options shared by every method's command are those of :class:`~nas.common.cli.CommonConfig`)."""

    granularity: str = option("fine", "fine (one searchable layer per block) or coarse")
    units: str = option("groups", "groups (the requisite groups) or tasks (every task its own unit)")
    copies: int | None = option(None, "K, copies per layer (default: the number of units, at most 4 beyond 5 units)")
    lambdas: list[float] = option([0.5], "weight(s) of the resource loss; several values make a Pareto sweep",
                                  flag="--lambda")
    cost: str = option("auto", "auto, chain (the reference), meet, or pairwise")
    epochs: int = option(20, "search epochs, warm-up included")
    warmup: int | None = option(None, "warm-up epochs (default max(1, epochs // 20))")
    arch_fraction: float = option(0.2, "share of the training split for the architecture steps")
    lr: float = option(1e-3, "the weights' Adam learning rate during the search")
    arch_lr: float = option(1e-2, "the architecture logits' Adam learning rate")
    weight_decay: float = option(1e-4, "coupled L2 of the weights during the search")
    arch_weight_decay: float = option(5e-5, "coupled L2 of the architecture logits")
    retrain_epochs: int = option(24, "retraining of the found networks (0: search only)")
    retrain_lr: float = option(2e-3, "retraining learning rate (cosine)")
    lr_division: bool = option(True, "divide the learning rate of an op shared by n units by n (--no-lr-division: "
                               "the reference code's choice)")
    baselines: bool = option(False, "also train the Shared and Single networks")
    augment: str = option("reference", "augmentation preset")
    search_size: int | None = option(None, "image size of the search (default: half the training resolution, at "
                                           "least 32 px, as the paper; the retraining and the MAdds table use the "
                                           "training resolution)")

    def resolved_search_size(self) -> int:
        """The search's image size: ``--search-size``, or half the training size (at least 32 px; the
        paper searches at half resolution, and the routing it finds holds at full resolution)."""
        if self.search_size is not None:
            return int(self.search_size)
        return max(32, self.train_config().model_config().resolved_size() // 2)

    def warmup_epochs(self) -> int:
        return self.warmup if self.warmup is not None else max(1, self.epochs // 20)

    def train_config(self, **changes):
        return super().train_config(**{"approach": "hc2", "augment": self.augment, "lr": self.retrain_lr,
                                       "lr_schedule": "cosine", "epochs": max(1, self.retrain_epochs), **changes})

    def validate(self) -> "BranchingConfig":
        layout(self.backbone, self.granularity)
        if self.units not in ("groups", "tasks"):
            raise ConfigError(f"Unknown --units {self.units!r}. Fix: --units groups or tasks.")
        if self.cost not in COSTS:
            raise ConfigError(f"Unknown --cost {self.cost!r}. Fix: one of {', '.join(COSTS)}.")
        if not self.lambdas or any(not isinstance(v, (int, float)) or not v >= 0 for v in self.lambdas):
            raise ConfigError(f"--lambda needs values >= 0. Received: {self.lambdas!r}.")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer. Received: {v!r}.")
        if self.retrain_epochs < 0:
            raise ConfigError(f"--retrain-epochs must be >= 0 (0: search only). Received: {self.retrain_epochs}.")
        if not 0 <= self.warmup_epochs() < self.epochs:
            raise ConfigError(f"--warmup ({self.warmup_epochs()}) must be below --epochs ({self.epochs}), so that some "
                              "epochs search.")
        if not 0 < self.arch_fraction < 1:
            raise ConfigError(f"--arch-fraction must be in (0, 1). Received: {self.arch_fraction}.")
        if self.search_size is not None and (not isinstance(self.search_size, int) or self.search_size < 16):
            raise ConfigError(f"--search-size must be an image size of at least 16 px. Received: {self.search_size!r}.")
        if self.copies is not None and self.copies < 2:
            raise ConfigError(f"--copies must be >= 2. Received: {self.copies}.")
        self.train_config().validate()
        return self

    #: Fields that may change when a run is resumed: new lambdas, baselines and retraining settings
    #: (the searches do not depend on them; a finished retraining is never redone with other settings).
    VOLATILE = ("out", "verbose", "lambdas", "baselines", "retrain_epochs", "retrain_lr", "lr_division")


def _lambda_dir(out: Path, lam: float) -> Path:
    return out / f"lambda_{lam:g}"


def _data(cfg: BranchingConfig, verbose: int):
    from icao_mtl.data import ImagePipeline
    from icao_mtl.runs import make_pipelines, prepare_data

    tcfg = cfg.train_config()
    ds, splits = prepare_data(tcfg, verbose=verbose)
    size = tcfg.model_config().resolved_size()
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(splits.train))
    n_arch = max(1, int(round(cfg.arch_fraction * len(order))))
    common = dict(image_size=cfg.resolved_search_size(), batch_size=cfg.batch_size, seed=cfg.seed)
    streams = {"weights": ImagePipeline(splits.train.subset(np.sort(order[n_arch:])), augment=tcfg.augment_config(),
                                        **common),
               "arch": ImagePipeline(splits.train.subset(np.sort(order[:n_arch])), augment=tcfg.augment_config(),
                                     **common)}
    return tcfg, ds, splits, streams, make_pipelines(tcfg, splits), size


def _retrain(cfg: BranchingConfig, tcfg, spec, tasks, units, unit_names, config, size, splits, pipes, run_dir: Path,
             resume: bool, info: dict):
    """Build, retrain and evaluate the branched network of ``config`` into ``run_dir``."""
    from icao_mtl.architectures import count_params
    from icao_mtl.losses import MaskedMultiTaskLoss
    from icao_mtl.runs import finish_run_dir, start_run_dir
    from icao_mtl.training import Engine, Pass, Phase, optimizer_factory

    if (run_dir / "config.json").is_file():
        done = aio.read_json(run_dir / "config.json")
        if done.get("epochs") != tcfg.epochs or done.get("lr") != tcfg.lr:
            raise ResumeError(f"{run_dir} was retrained with {done.get('epochs')} epochs at lr {done.get('lr')}, not "
                              f"{tcfg.epochs} at {tcfg.lr}. Fix: resume with those --retrain-epochs / --retrain-lr, or "
                              "delete that directory to retrain it.")
        if (run_dir / "metrics.json").is_file():
            return aio.read_json(run_dir / "metrics.json"), aio.read_json(run_dir / "structure.json")
    keras.utils.set_random_seed(cfg.seed)
    model, sharing = build_branched(spec, tasks, units, config, image_size=size, weights=cfg.weights,
                                    unit_names=unit_names)
    steps = pipes["train"].steps

    def optimizer(scale):
        return optimizer_factory("adam", cfg.retrain_lr * scale, schedule="cosine", epochs=cfg.retrain_epochs,
                                 steps_per_epoch=steps)

    groups = lr_groups(model, sharing, optimizer, cfg.lr_division)
    rcfg = tcfg.copy(approach="bmtas", out=str(run_dir))
    start_run_dir(run_dir, rcfg.to_dict(), splits)
    info = {**info, "params": count_params(model), "sharing": sharing}
    aio.write_json(run_dir / "structure.json", info)
    engine = Engine(model, tasks, groups=groups, loss=MaskedMultiTaskLoss(tasks), run_dir=run_dir,
                    monitor="val_accuracy", verbose=1 if cfg.verbose else 0, seed=cfg.seed)
    started = time.perf_counter()
    history = engine.fit([Phase("train", cfg.retrain_epochs, passes=[Pass("train", tuple(groups))])],
                         {"train": pipes["train"]}, pipes["val"], resume=resume)
    info["train_seconds"] = time.perf_counter() - started
    aio.write_json(run_dir / "structure.json", info)
    result = finish_run_dir(run_dir, rcfg, {"model": model}, pipes, splits, {"bmtas": history}, verbose=cfg.verbose)
    return result.metrics, info


@dataclass
class BranchingResult(MethodResult):
    """The networks of a BMTAS run (``runs``: one per lambda and baseline that was retrained), the Pareto
    rows and the branch structures."""

    rows: list = field(default_factory=list)
    structures: dict = field(default_factory=dict)


def run(cfg: BranchingConfig, *, resume: bool = False) -> BranchingResult:
    """Search every lambda of ``cfg``, retrain and evaluate the results (and the baselines); see the
    module docstring for the outputs. ``status.json`` of the output directory says whether the run is
    running, finished or was interrupted (``--resume`` continues it)."""
    from icao_mtl.runs import write_status

    cfg.validate()
    if not cfg.out:
        cfg = BranchingConfig(**{**asdict(cfg), "out": str(Path("runs") / f"bmtas_{cfg.backbone}_"
                                                            f"{time.strftime('%Y%m%d-%H%M%S')}")})
    try:
        result = _run(cfg, resume)
    except BaseException as exc:
        if (Path(cfg.out) / "branching.json").is_file():
            write_status(Path(cfg.out), "interrupted", error=f"{type(exc).__name__}: {exc}")
        raise
    write_status(result.out, "finished", networks=[r["name"] for r in result.rows])
    return result


def _run(cfg: BranchingConfig, resume: bool) -> BranchingResult:
    from icao_mtl.runs import write_status
    from icao_mtl.training import Engine

    out = Path(cfg.out)
    record = out / "branching.json"
    cli.check_resume(out, record, cfg.identity(), resume, what="a BMTAS run", on_resume=" (new lambdas are added)")
    verbose = cfg.verbose
    tcfg, ds, splits, streams, pipes, size = _data(cfg, verbose)
    tasks = splits.train.tasks
    unit_names, units = make_units(tasks, splits.train.groups, cfg.units)
    n_units = len(units)
    copies = cfg.copies or (n_units if n_units <= 5 else 4)
    kind = cfg.cost if cfg.cost != "auto" else ("chain" if n_units <= 5 else "pairwise")
    if kind in ("chain", "meet") and n_units > MAX_EXACT_UNITS:
        raise ConfigError(f"The exact resource loss ({kind}) is infeasible for {n_units} routing units. Fix: --units "
                          "groups, or --cost pairwise (the surrogate).")
    out.mkdir(parents=True, exist_ok=True)
    aio.write_json(record, {**cfg.identity(), "requested": {k: getattr(cfg, k) for k in (
        "lambdas", "baselines", "retrain_epochs", "retrain_lr", "lr_division")}})
    write_status(out, "running")
    spec = layout(cfg.backbone, cfg.granularity)
    lut_path = out / "lut.json"
    if lut_path.is_file():
        lut = aio.read_json(lut_path)
    else:
        lut = madds_table(spec, size)
        aio.write_json(lut_path, lut)
    layer_madds = np.array([lut["layers"][n] for n in spec.names], np.float64)
    normaliser = float(layer_madds.sum())
    costs = (layer_madds / normaliser).astype(np.float32)
    cost = resource_cost(kind, n_units, copies, costs)
    if verbose:
        print(f"BMTAS on {cfg.backbone} ({cfg.granularity}, {len(spec.layers)} searchable layers, {copies} copies each), "
              f"{n_units} routing units: {', '.join(f'{n} ({len(u)} tasks)' for n, u in zip(unit_names, units))}; "
              f"resource loss: {kind}; encoder {normaliser / 1e6:.1f} M MAdds per copy at {size} px; search at "
              f"{cfg.resolved_search_size()} px.")
    rows, structures = [], {}
    for lam in cfg.lambdas:
        lam_dir = _lambda_dir(out, lam)
        lam_dir.mkdir(parents=True, exist_ok=True)
        struct_path = lam_dir / "structure.json"
        if struct_path.is_file():
            info = aio.read_json(struct_path)
            config = np.asarray(info["config"])
        else:
            keras.utils.set_random_seed(cfg.seed)
            model = Supergraph(spec, tasks, units, copies, cfg.resolved_search_size(), weights=cfg.weights,
                               seed=cfg.seed)
            engine = Engine(model, tasks, groups=search_groups(model, lr=cfg.lr, arch_lr=cfg.arch_lr),
                            run_dir=lam_dir / "search", monitor="loss", verbose=1 if verbose else 0, seed=cfg.seed)
            trace = TraceWriter(model, lam_dir / "trace.json", cost, layer_madds, normaliser)
            if verbose:
                print(f"lambda = {lam:g}: warm-up {cfg.warmup_epochs()} epochs, search {cfg.epochs - cfg.warmup_epochs()} "
                      f"epochs ({streams['weights'].steps} weight and {streams['arch'].steps} architecture batches "
                      "per epoch)")
            start = time.perf_counter()
            engine.fit(search_phases(model, epochs=cfg.epochs, warmup=cfg.warmup_epochs(), lam=lam, cost=cost,
                                     weight_decay=cfg.weight_decay, arch_weight_decay=cfg.arch_weight_decay),
                       streams, resume=resume, callbacks=[trace])
            config = discretize(model.alpha.numpy())
            info = structure(config, spec.names, unit_names, units, lut)
            info.update(**{"lambda": lam, "cost": kind, "expected_cost": float(cost(model.alpha)),
                           "probabilities": np.round(model.probabilities(), 5).tolist(),
                           "search_seconds": time.perf_counter() - start})
            plot_trace(trace.entries, unit_names, lam_dir / "trace.png")
            aio.write_json(struct_path, info)
            del model, engine
        plot_tree(info, lam_dir / "tree.png", title=f"BMTAS, lambda = {lam:g}")
        if verbose:
            print(f"lambda = {lam:g}: copies per layer {info['copies']}, {info['madds']['total'] / 1e6:.1f} M MAdds")
        structures[f"lambda_{lam:g}"] = info
        rows.append(_row(cfg, tcfg, spec, tasks, units, unit_names, config, size, splits, pipes,
                         lam_dir / "branched", resume, info, name=f"lambda_{lam:g}", label=f"λ={lam:g}"))
    if cfg.baselines:
        for name, config in (("shared", np.zeros((len(spec.layers), n_units), np.int64)),
                             ("single", np.tile(np.arange(n_units), (len(spec.layers), 1)))):
            info = structure(config, spec.names, unit_names, units, lut)
            base_dir = out / f"baseline_{name}"
            base_dir.mkdir(parents=True, exist_ok=True)
            aio.write_json(base_dir / "structure.json", info)
            structures[f"baseline_{name}"] = info
            rows.append(_row(cfg, tcfg, spec, tasks, units, unit_names, config, size, splits, pipes,
                             base_dir / "branched", resume, info, name=f"baseline_{name}", label=name.capitalize()))
    if any(r["test_eer_mean"] is not None for r in rows):
        aio.write_json(out / "pareto.json", rows)
        plot_pareto(rows, out / "pareto.png")
        if verbose:
            print(pareto_table(rows))
    runs = [MethodRun(r["name"], Path(r["run_dir"]), search_seconds=structures[r["name"]].get("search_seconds"),
                      train_seconds=r["train_seconds"], details={"copies": r["copies"], "madds": r["madds"],
                                                                 "structure": structures[r["name"]]})
            for r in rows if r.get("run_dir")]
    return BranchingResult("bmtas", out, runs, rows, structures)


def _row(cfg, tcfg, spec, tasks, units, unit_names, config, size, splits, pipes, run_dir, resume, info, *, name, label):
    row = {"name": name, "label": label, "copies": info["copies"], "madds": info["madds"]["total"],
           "encoder_madds": info["madds"]["encoder"], "test_eer_mean": None, "val_eer_mean": None, "params": None,
           "run_dir": None, "train_seconds": None}
    if cfg.retrain_epochs == 0:
        return row
    metrics, full = _retrain(cfg, tcfg, spec, tasks, units, unit_names, config, size, splits, pipes, run_dir,
                             resume and (run_dir / "checkpoints").is_dir(), info)
    row.update(test_eer_mean=metrics["test"]["eer_mean"], val_eer_mean=metrics["val"]["eer_mean"],
               params=full["params"]["total"], run_dir=str(run_dir), train_seconds=full.get("train_seconds"))
    return row


#: The lambdas of BMTAS's rows in ``python -m nas.compare`` (normalised costs: full sharing costs 1).
COMPARE_LAMBDAS = (0.1, 1.0)


def compare(budget, base: dict, out: Path, seed: int) -> list[tuple[str, MethodRun]]:
    """The rows of ``python -m nas.compare``: searches of ``budget.search_epochs`` at the lambdas of
    :data:`COMPARE_LAMBDAS`, each found network and the Shared and Single baselines retrained
    ``budget.epochs``; ``base``: the shared options (data, backbone, image size, batch size)."""
    cfg = BranchingConfig(**base, lambdas=list(COMPARE_LAMBDAS), baselines=True, epochs=budget.search_epochs,
                          retrain_epochs=budget.epochs, seed=seed, out=str(out), verbose=0)
    result = run(cfg, resume=(Path(out) / "branching.json").is_file())
    return [(f"bmtas-{r.name.replace('baseline_', '')}".replace("lambda_", "λ="), r) for r in result.runs]


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser(BranchingConfig, prog="python -m nas.bmtas", doc=__doc__)


@command
def main(argv: list[str] | None = None) -> int:
    cfg, resume = cli.parse(BranchingConfig, build_parser(), argv, record="branching.json")
    run(cfg, resume=resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
