"""``python -m nas.depth``: the paper's branch-depth NAS (seed 000, section 3.4.3, Table 2).

Each trial trains the NAS child (``n_g`` dense layers of 64 units per task of group g, over a frozen
backbone) for ``--child-epochs`` epochs with the training engine, on cached backbone features, and
scores it on the validation split (mean EER over requisites, the reference code's selection
criterion). Every trial is written to disk as soon as it ends (``trials/<id>.json``: configuration,
metrics, seconds). After ``--trials`` trials the best configuration is retrained for
``--final-epochs`` (the paper: 50) from the images, with fresh augmentation every epoch (``--final-from
features`` retrains on the cached views instead), and evaluated on the test split, into ``final/``, a
run directory like ``python -m icao_mtl.train`` writes. ``table2.md`` gives the row of the paper's Table 2 (EER mean,
sd and median) and ``best_so_far.png`` the best validation EER against trials.

Examples::

    python -m nas.depth --controller reinforce --trials 50 --child-epochs 1
    python -m nas.depth --controller random --trials 50 --child-epochs 5 --backbone mobilenet_v2 \\
        --weights imagenet --data /path/to/fvc_icao --mapping fvc.json
    python -m nas.depth --resume --out searches/my_search     # continue after an interruption
    python -m nas.depth --summarize searches/a searches/b     # one Table 2 from several searches

Without ImageNet weights (offline), the backbone is first trained for ``--pretrain-epochs`` with
Handcrafted-2 heads on the training split, then frozen. Distributed search uses keras-tuner's own
mode: start the chief with ``KERASTUNER_TUNER_ID=chief`` and workers with ``KERASTUNER_TUNER_ID=tuner1``,
``tuner2``, ..., all with ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` of the chief and
the same command line (see README.md, "Distributed search").
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from icao_mtl import io as aio
from icao_mtl.errors import CollapsedModelError, ConfigError, IcaoMtlError, NonFiniteLossError, command
from icao_mtl.runs import write_status

from ..common import cli
from ..common.cli import CommonConfig, option
from ..common.method import MethodResult, MethodRun
from .space import BranchDepthSpace

@dataclass
class SearchConfig(CommonConfig):
    """A branch-depth search (the options shared by every method's command are those of
    :class:`~nas.common.cli.CommonConfig`)."""

    controller: str = option("reinforce", "random, reinforce, reference (the paper code's controller) or "
                                          "exhaustive (every configuration once: the ground-truth ranking; "
                                          "--trials is then the size of the space)")
    trials: int = option(50, "N, trials")
    child_epochs: int = option(1, "m, epochs per child")
    population: int = option(1, "P, children trained together in one network (the same result as one at a time, "
                                 "faster per child): random and exhaustive take P configurations at a time; "
                                 "reinforce samples P per policy update (batch REINFORCE)")
    final_epochs: int = option(50, "retraining of the best configuration (0: search only)")
    final_from: str = option("images", "the retraining's data: images (fresh augmentation every epoch, the frozen "
                                       "backbone run on every image, as the paper) or features (the cached views: "
                                       "faster, the views repeat)")
    alpha: float = option(1.0, "MobileNetV2 width multiplier")
    pretrain_epochs: int = option(8, "with --weights none: epochs to train the backbone before freezing it")
    max_depth: int = option(5, "depths 1..max per group")
    views: int = option(4, "augmented views per training image in the feature cache")
    augment: str = option("reference", "augmentation preset of the cached views")
    lr: float = option(1e-3, "children's Adam learning rate")
    reward: str = option("accuracy", "accuracy (the paper) or eer (1 - mean EER)")
    controller_lr: float = option(0.1, "REINFORCE's learning rate (per unit of normalised advantage)")
    baseline_decay: float = option(0.8, "REINFORCE's reward baseline decay")
    entropy_weight: float = option(0.05, "REINFORCE's entropy bonus")
    normalize: bool = option(True, "REINFORCE: divide advantages by their running RMS, so steps do not depend on "
                                   "the reward scale (with --no-normalize, --controller-lr 1 --entropy-weight 0.01 "
                                   "suit rewards about 5 points apart)")
    cache_dir: str | None = option(None, "feature cache (default: OUT/feature_cache)")

    def validate(self) -> "SearchConfig":
        from .controllers import CONTROLLERS, REWARDS

        if self.controller not in CONTROLLERS:
            raise ConfigError(f"Unknown controller {self.controller!r}. Fix: --controller one of {', '.join(CONTROLLERS)}.")
        if not isinstance(self.final_epochs, int) or self.final_epochs < 0:
            raise ConfigError(f"--final-epochs must be >= 0 (0: no retraining). Received: {self.final_epochs!r}.")
        for name in ("trials", "child_epochs", "views", "batch_size", "max_depth", "population"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer. Received: {v!r}.")
        if self.final_from not in ("images", "features"):
            raise ConfigError(f"--final-from must be images or features. Received: {self.final_from!r}.")
        if self.reward not in REWARDS:
            raise ConfigError(f"--reward must be one of {REWARDS}. Received: {self.reward!r}.")
        if self.pretrain_epochs < 0:
            raise ConfigError(f"--pretrain-epochs must be >= 0. Received: {self.pretrain_epochs}.")
        self.train_config().validate()
        return self

    def train_config(self, **changes):
        return super().train_config(alpha=self.alpha, augment=self.augment, lr=self.lr, lr_schedule="constant",
                                    **changes)


@dataclass
class SearchResult(MethodResult):
    """The search's result: its trials, the best configuration, and the retrained network (``runs``:
    the ``final/`` run directory)."""

    best_config: tuple | None = None
    trials: list = field(default_factory=list)
    test_metrics: dict | None = None
    stop_reason: str | None = None


# ---------------------------------------------------------------------------------------------------
# building and training a child

def head_model(config: tuple, dim: int, tasks, groups, seed: int = 0):
    """The NAS child's head over a pooled feature vector (input (1, 1, dim)), in the grouped form of
    :mod:`nas.depth.heads` (the same network as the per-task layers of the full model, much faster to build and
    train); :func:`nas.depth.heads.copy_grouped_to_full` moves its weights into the full model."""
    from .heads import grouped_head

    return grouped_head(tuple(config), dim, tuple(tasks), groups, seed)


def train_head(model, features, splits, *, epochs: int, lr: float, batch_size: int, seed: int, monitor="val_accuracy",
               run_dir=None, verbose: int = 0, resume: bool = False):
    """Train a head on cached features with the engine; returns (engine, history)."""
    import keras

    from icao_mtl.losses import MaskedMultiTaskLoss
    from icao_mtl.training import Engine, Phase

    from .features import FeaturePipeline

    tasks = splits.train.tasks
    train = FeaturePipeline(features.train, splits.train, batch_size, seed)
    val = FeaturePipeline(features.val, splits.val, 256, seed)
    engine = Engine(model, tasks, optimizer=lambda: keras.optimizers.Adam(lr), loss=MaskedMultiTaskLoss(tasks, 0.1),
                    monitor=monitor, verbose=verbose, run_dir=run_dir, seed=seed)
    history = engine.fit([Phase("train", epochs)], {"train": train}, val, resume=resume)
    return engine, history


def score(engine, features_split, ds) -> dict:
    """Validation metrics of a trained head: mean / sd / median EER, mean accuracy, per task."""
    from icao_mtl.metrics import evaluate_tasks, summarize

    from .features import FeaturePipeline

    scores = engine.predict(FeaturePipeline(features_split, ds, 256))
    labels = {t: ds.labels[:, j] for j, t in enumerate(ds.tasks)}
    return summarize(evaluate_tasks(labels, scores))


# ---------------------------------------------------------------------------------------------------
# the tuner

def _tuner_class():
    import keras_tuner
    from keras_tuner.src.distribute import utils as dist_utils
    from keras_tuner.src.engine.base_tuner import BaseTuner

    class ChildTuner(BaseTuner):
        """Trains the proposed configurations on the cached features (keras-tuner's Tuner side), up to
        ``--population`` at a time in one :class:`~nas.depth.population.PopulationTrainer`: the oracle
        is asked for P trials (tuner ids ``<id>-0`` ... ``<id>-P-1`` when P > 1), they train together,
        and each is reported and ended as keras-tuner's own loop does."""

        def __init__(self, oracle, context, **kwargs):
            super().__init__(oracle, **kwargs)
            self.context = context

        def search(self, *fit_args, **fit_kwargs):
            if dist_utils.is_chief_oracle():
                return super().search(*fit_args, **fit_kwargs)  # the chief serves the oracle
            self.on_search_begin()
            size = self.context.cfg.population
            stopped = False
            while not stopped:
                trials = []
                for i in range(size):
                    self.pre_create_trial()
                    trial = self.oracle.create_trial(self.tuner_id if size == 1 else f"{self.tuner_id}-{i}")
                    if trial.status == keras_tuner.engine.trial.TrialStatus.STOPPED:
                        stopped = True
                        break
                    if trial.status == keras_tuner.engine.trial.TrialStatus.RUNNING:
                        trials.append(trial)
                if not trials:
                    continue  # IDLE: the oracle is waiting; ask again (or stop)
                for trial in trials:
                    self.on_trial_begin(trial)
                self.run_population(trials)
                for trial in trials:
                    self.on_trial_end(trial)
            self.on_search_end()

        def run_population(self, trials):
            ctx = self.context
            configs = [ctx.space.from_values(t.hyperparameters.values) for t in trials]
            trainer = ctx.trainer()
            start = time.perf_counter()
            trainer.assign_many({i: (c, ctx.cfg.seed + int(t.trial_id)) for i, (c, t) in enumerate(zip(configs, trials))})
            try:
                trainer.train(ctx.cfg.child_epochs)
                summaries = trainer.score(range(len(trials)))
                failure = None
            except (NonFiniteLossError, CollapsedModelError) as exc:
                summaries, failure = [None] * len(trials), f"diverged: {exc}"
            seconds = (time.perf_counter() - start) / len(trials)
            for trial, config, m in zip(trials, configs, summaries):
                why = failure or (None if m["eer_mean"] is not None and math.isfinite(m["eer_mean"])
                                  else "no EER defined on validation (no requisite has both classes)")
                if why:
                    ctx.record(trial.trial_id, config, None, seconds, why)
                    trial.status = keras_tuner.engine.trial.TrialStatus.FAILED
                    trial.message = why
                    continue
                metrics = {"val_eer_mean": m["eer_mean"], "val_eer_median": m["eer_median"],
                           "val_eer_std": m["eer_std"] or 0.0, "val_accuracy": m["accuracy_mean"]}
                ctx.record(trial.trial_id, config, metrics, seconds, None)
                self.oracle.update_trial(trial.trial_id, metrics)
                trial.status = keras_tuner.engine.trial.TrialStatus.COMPLETED

        def run_trial(self, trial, *args, **kwargs):
            self.run_population([trial])
            if trial.status != keras_tuner.engine.trial.TrialStatus.COMPLETED:
                raise keras_tuner.errors.FailedTrialError(trial.message)
            return self.oracle.get_trial(trial.trial_id).metrics.get_last_value("val_eer_mean")

        def save_model(self, trial_id, model, step=0):
            """Children are cheap to retrain: only the final model is saved."""

    return ChildTuner


class _Context:
    def __init__(self, cfg, space, splits, features, out):
        self.cfg, self.space, self.splits, self.features, self.out = cfg, space, splits, features, Path(out)
        self._trainer = None

    def trainer(self):
        """The population network every trial trains in (built once: no rebuild, no retrace per trial)."""
        if self._trainer is None:
            from .population import PopulationTrainer

            self._trainer = PopulationTrainer(self.features, self.splits, population=self.cfg.population,
                                              max_depth=max(max(c) for c in self.space.depths), lr=self.cfg.lr,
                                              batch_size=self.cfg.batch_size, seed=self.cfg.seed)
        return self._trainer

    def record(self, trial_id, config, metrics, seconds, failure):
        aio.write_json(self.out / "trials" / f"{trial_id}.json", {
            "trial_id": trial_id, "config": list(config), "groups": list(self.space.groups), "metrics": metrics,
            "seconds": seconds, "failure": failure, "tuner_id": os.environ.get("KERASTUNER_TUNER_ID", "tuner0"),
            "pid": os.getpid()})
        if self.cfg.verbose and metrics is not None and failure is None:
            print(f"trial {trial_id}: depths {list(config)}  val EER mean {100 * metrics['val_eer_mean']:.2f}%  "
                  f"val accuracy {100 * metrics['val_accuracy']:.2f}%  ({seconds:.1f} s)")
        elif self.cfg.verbose:
            print(f"trial {trial_id}: depths {list(config)} failed: {failure}")


def search_with(oracle, cfg: SearchConfig, space: BranchDepthSpace, splits, features, out) -> tuple[list, float]:
    """Run any keras-tuner oracle over ``space.hyperparameters()`` (one of :data:`CONTROLLERS` from
    :func:`make_oracle`, or keras-tuner's own RandomSearch / BayesianOptimization) with the search's
    tuner on cached ``features``: trials trained as ``cfg`` says, written to ``out/trials``.

    Returns:
        The trial records (:func:`_trial_records`, in trial order) and the search's seconds.
    """
    oracle.verbose = 0
    tuner = _tuner_class()(oracle, _Context(cfg, space, splits, features, out), directory=str(out),
                           project_name="tuner", overwrite=True)
    start = time.perf_counter()
    tuner.search(verbose=0)
    return _trial_records(Path(out)), time.perf_counter() - start


def make_oracle(cfg: SearchConfig, space: BranchDepthSpace):
    from .controllers import CONTROLLERS

    kwargs = dict(max_trials=cfg.trials, seed=cfg.seed, reward=cfg.reward, max_consecutive_failed_trials=cfg.trials)
    if cfg.controller == "reinforce":
        kwargs.update(learning_rate=cfg.controller_lr, baseline_decay=cfg.baseline_decay,
                      entropy_weight=cfg.entropy_weight, updates=cfg.child_epochs, normalize=cfg.normalize,
                      batch=cfg.population)
    elif cfg.controller == "reference":
        kwargs.update(updates=cfg.child_epochs)
    return CONTROLLERS[cfg.controller](space, **kwargs)


# ---------------------------------------------------------------------------------------------------
# the whole search

def _is_worker() -> bool:
    tid = os.environ.get("KERASTUNER_TUNER_ID")
    return "KERASTUNER_ORACLE_IP" in os.environ and tid is not None and "chief" not in tid


def _is_chief() -> bool:
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" in os.environ.get("KERASTUNER_TUNER_ID", "")


def _prepare(cfg: SearchConfig, out: Path, verbose: int):
    """Data, splits, the frozen backbone's weights (pretrained here if needed) and the feature cache."""
    from icao_mtl.backbones import backbone_layers, save_backbone_weights
    from icao_mtl.runs import load_models, prepare_data
    from icao_mtl.runs import train as train_run

    from .features import load_or_build

    tcfg = cfg.train_config()
    ds, splits = prepare_data(tcfg, verbose=verbose)
    weights = cfg.weights
    if weights in (None, "none"):
        # A backbone without pretrained weights is made once, saved, and every later use (the feature
        # cache, its key, the final model) reads that file: the key hashes the very weights used.
        path = out / "backbone.weights.h5"
        if not path.is_file():
            import keras

            from icao_mtl.backbones import build_backbone

            if cfg.pretrain_epochs:
                pre = out / "pretrain"
                if verbose:
                    print(f"Pretraining the {cfg.backbone} backbone for {cfg.pretrain_epochs} epochs (Handcrafted 2 "
                          "heads, training split) before freezing it")
                if not (pre / "model.keras").is_file():
                    train_run(tcfg.copy(approach="hc2", epochs=cfg.pretrain_epochs, out=str(pre)),
                              resume=(pre / "status.json").is_file(), verbose=2 if verbose else 0)
                model = load_models(pre)["model"]
                last = backbone_layers(model, ds.tasks)[-1]
                save_backbone_weights(keras.Model(model.input, last.output), path)
            else:  # a random backbone, from the run's seed
                keras.utils.set_random_seed(cfg.seed)
                size = tcfg.model_config().resolved_size()
                _, backbone = build_backbone(cfg.backbone, keras.Input((size, size, 3)), weights="none",
                                             alpha=cfg.alpha)
                save_backbone_weights(backbone, path)
        weights = str(path)
    size = tcfg.model_config().resolved_size()
    features = load_or_build(cfg.cache_dir or out / "feature_cache", splits, backbone=cfg.backbone, weights=weights,
                             image_size=size, alpha=cfg.alpha, augment=tcfg.augment_config(), views=cfg.views,
                             seed=cfg.seed, verbose=verbose)
    return ds, splits, weights, features


def run_search(cfg: SearchConfig, *, resume: bool = False) -> SearchResult:
    """Run (or resume) a search and its final retraining. See the module docstring."""
    import keras

    cfg.validate()
    # tf.data combines its shuffles' seeds with the global one: set here, as every command does, so a
    # resumed search (its pretraining, which sets it too, skipped) trains on the same batch orders
    keras.utils.set_random_seed(cfg.seed)
    out = Path(cfg.out) if cfg.out else Path(os.environ.get("ICAO_MTL_RUNS") or "searches") / \
        f"{cfg.controller}_m{cfg.child_epochs}_N{cfg.trials}_{time.strftime('%Y%m%d-%H%M%S')}"
    chief_or_single = not _is_worker()
    record = out / "search.json"
    if chief_or_single:
        cli.check_resume(out, record, cfg.identity(), resume, what="a search", continue_without_resume=_is_chief())
        out.mkdir(parents=True, exist_ok=True)
        aio.write_json(record, cfg.identity())
    space = BranchDepthSpace.paper(max_depth=cfg.max_depth)
    verbose = cfg.verbose
    if _is_worker():
        # the chief prepares the backbone and the features; workers wait for them
        marker = out / "prepared.json"
        deadline = time.time() + 3600
        while not marker.is_file():
            if time.time() > deadline:
                raise IcaoMtlError(f"Waited an hour for the chief to prepare {out}. Fix: start the chief first.")
            time.sleep(1.0)
        cfg_w = SearchConfig(**{**asdict(cfg), "weights": aio.read_json(marker)["weights"], "pretrain_epochs": 0})
        ds, splits, weights, features = _prepare(cfg_w, out, 0)
    else:
        ds, splits, weights, features = _prepare(cfg, out, verbose)
        aio.write_json(out / "prepared.json", {"weights": weights, "features": str(features.path)})
    if chief_or_single:
        write_status(out, "running", stage="search")
    groups = {g: m for g, m in splits.train.groups.items()}
    space = BranchDepthSpace(tuple(groups), tuple(range(1, cfg.max_depth + 1)))
    oracle = make_oracle(cfg, space)
    oracle.verbose = 0
    tuner = _tuner_class()(oracle, _Context(cfg, space, splits, features, out), directory=str(out),
                           project_name="tuner", overwrite=False)
    start = time.perf_counter()
    try:
        tuner.search(verbose=0)
        if _is_worker():
            return SearchResult("depth", out)
        result = _finish(cfg, out, space, splits, weights, features, oracle, time.perf_counter() - start)
    except BaseException as exc:  # a kill or an error: said in the directory; --resume continues
        if chief_or_single:
            write_status(out, "interrupted", error=f"{type(exc).__name__}: {exc}")
        raise
    write_status(out, "finished", best_config=list(result.best_config), stop_reason=result.stop_reason)
    return result


def _trial_records(out: Path) -> list:
    recs = [aio.read_json(p) for p in sorted((out / "trials").glob("*.json"))] if (out / "trials").is_dir() else []
    return sorted(recs, key=lambda r: int(r["trial_id"]))


def _finish(cfg, out, space, splits, weights, features, oracle, seconds):
    """Retrain the best configuration, evaluate on test, write the table and the plot."""
    import keras

    from icao_mtl.architectures import build_model
    from icao_mtl.runs import finish_run_dir, make_pipelines, start_run_dir
    from icao_mtl.runs import train as train_run

    from .heads import copy_grouped_to_full

    records = [r for r in _trial_records(out) if r["metrics"] and not r["failure"]]
    stop_reason = getattr(oracle, "stop_reason", None)
    if not records:
        raise IcaoMtlError(f"No trial of {out} finished (see trials/*.json for the failures).")
    best = min(records, key=lambda r: (r["metrics"]["val_eer_mean"], int(r["trial_id"])))
    best_config = tuple(best["config"])
    curve = [r["metrics"]["val_eer_mean"] if r["metrics"] else math.nan for r in _trial_records(out)]
    plot_best_so_far({cfg.controller: curve}, out / "best_so_far.png")
    write_ranking(records, space, out / "ranking.csv")
    row = {"controller": cfg.controller, "m": cfg.child_epochs, "N": cfg.trials, "trials_run": len(records),
           "best_config": list(best_config), "best_val_eer_mean": best["metrics"]["val_eer_mean"],
           "eer_mean": None, "eer_std": None, "eer_median": None, "search_seconds": seconds, "stop_reason": stop_reason}
    if cfg.final_epochs == 0:  # search only
        aio.write_json(out / "result.json", row)
        if cfg.verbose:
            print(f"Best configuration {list(best_config)} (validation EER {100 * row['best_val_eer_mean']:.2f}%); "
                  "no retraining (--final-epochs 0).")
        return SearchResult("depth", out, [], best_config, records, None, stop_reason)
    if cfg.verbose:
        print(f"Best configuration {list(best_config)} (trial {best['trial_id']}, validation EER "
              f"{100 * best['metrics']['val_eer_mean']:.2f}%); retraining for {cfg.final_epochs} epochs")
    final = out / "final"
    # the best epoch is chosen as the trials were ranked, on the validation mean EER (accuracy, the
    # paper's monitor, picks the all-negative first epoch on one-vs-rest tasks such as the digits)
    tcfg = cfg.train_config(approach="nas", nas_config=list(best_config), weights=weights, freeze_backbone=True,
                            epochs=cfg.final_epochs, out=str(final), monitor="val_eer")
    started = time.perf_counter()
    if cfg.final_from == "images":
        # an ordinary training run of the NAS model (frozen backbone, the same splits): fresh augmentation
        # every epoch, best epoch on validation, resumed exactly as any run
        result = train_run(tcfg, resume=(final / "status.json").is_file(), verbose=2 if cfg.verbose else 0)
        train_seconds = time.perf_counter() - started
    else:
        start_run_dir(final, tcfg.to_dict(), splits)
        keras.utils.set_random_seed(cfg.seed)
        head = head_model(best_config, features.dim, splits.train.tasks, splits.train.groups)
        engine, history = train_head(head, features, splits, epochs=cfg.final_epochs, lr=cfg.lr,
                                     batch_size=cfg.batch_size, seed=cfg.seed, run_dir=final / "head", monitor="val_eer",
                                     verbose=2 if cfg.verbose else 0, resume=True)
        full = build_model(tcfg.model_config(), splits.train.tasks, splits.train.groups)
        copy_grouped_to_full(head, full, best_config, splits.train.tasks, splits.train.groups)
        full.trainable = False
        train_seconds = time.perf_counter() - started
        result = finish_run_dir(final, tcfg, {"model": full}, make_pipelines(tcfg, splits), splits, {"nas": history},
                                verbose=cfg.verbose)
    test = result.metrics["test"]
    row.update(eer_mean=test["eer_mean"], eer_std=test["eer_std"], eer_median=test["eer_median"],
               train_seconds=train_seconds)
    aio.write_json(out / "result.json", row)
    md, csv_text = table2([row])
    aio.write_text(out / "table2.md", md)
    aio.write_text(out / "table2.csv", csv_text)
    if cfg.verbose:
        print(md)
        if stop_reason:
            print(f"The search stopped early: {stop_reason}.")
    final_run = MethodRun("final", final, search_seconds=seconds, train_seconds=train_seconds,
                          details={"config": list(best_config), "controller": cfg.controller})
    return SearchResult("depth", out, [final_run], best_config, records, test, stop_reason)


#: The controllers of the branch-depth rows in ``python -m nas.compare``.
COMPARE_CONTROLLERS = ("random", "reinforce")


def compare(budget, base: dict, out: Path, seed: int) -> list[tuple[str, MethodRun]]:
    """The rows of ``python -m nas.compare``: a search of ``budget.trials`` children (one epoch each)
    per controller of :data:`COMPARE_CONTROLLERS`, the best child retrained ``budget.epochs``;
    ``base``: the shared options (data, backbone, image size, batch size)."""
    rows = []
    for controller in COMPARE_CONTROLLERS:
        where = Path(out) / controller
        cfg = SearchConfig(**base, controller=controller, trials=budget.trials, child_epochs=1,
                           final_epochs=budget.epochs, pretrain_epochs=budget.pretrain_epochs, seed=seed,
                           out=str(where), verbose=0)
        result = run_search(cfg, resume=(where / "search.json").is_file())
        rows += [(f"depth-{controller}", run) for run in result.runs]
    return rows


def write_ranking(records: list, space: BranchDepthSpace, path) -> None:
    """``ranking.csv``: the finished trials from best to worst validation mean EER (rank 1 = best; for
    ``--controller exhaustive``, the ranking of the whole space)."""
    ranked = sorted(records, key=lambda r: (r["metrics"]["val_eer_mean"], int(r["trial_id"])))
    lines = ["rank," + ",".join(space.groups) + ",val_eer_mean,val_eer_median,val_accuracy,trial_id"]
    for i, r in enumerate(ranked, 1):
        m = r["metrics"]
        lines.append(",".join([str(i), *map(str, r["config"]), f"{m['val_eer_mean']:.6f}",
                               f"{m['val_eer_median']:.6f}", f"{m['val_accuracy']:.6f}", str(r["trial_id"])]))
    aio.write_text(path, "\n".join(lines) + "\n")


def table2(rows: list[dict]) -> tuple[str, str]:
    """The paper's Table 2: controller, m, N, test EER mean / sd / median (percent)."""
    label = {"random": "1 (random)", "reinforce": "2 (REINFORCE)", "reference": "2' (reference code)"}
    head = ["Ap.", "m", "N", "EER Mean", "EER sd.", "EER Md", "best depths", "trials run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    csv_lines = [",".join(head)]
    for r in rows:
        vals = [label.get(r["controller"], r["controller"]), str(r["m"]), str(r["N"]),
                *(f"{100 * r[k]:.2f}" if r[k] is not None else "n/a" for k in ("eer_mean", "eer_std", "eer_median")),
                "(" + ", ".join(map(str, r["best_config"])) + ")", str(r["trials_run"])]
        lines.append("| " + " | ".join(vals) + " |")
        csv_lines.append(",".join(v.replace(",", ";") for v in vals))
    return "\n".join(lines) + "\n", "\n".join(csv_lines) + "\n"


def plot_best_so_far(curves: dict[str, list], path, ax=None):
    """Best validation EER so far against the trial number, one line per search."""
    from icao_mtl.reports import _plt, _save

    plt = _plt()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in curves.items():
        v = np.array(values, float)
        best = np.fmin.accumulate(np.where(np.isnan(v), np.inf, v))
        best[np.isinf(best)] = np.nan
        ax.plot(np.arange(1, len(v) + 1), 100 * best, label=name)
        ax.plot(np.arange(1, len(v) + 1), 100 * v, ".", alpha=0.3, color=ax.lines[-1].get_color())
    ax.set_xlabel("trial")
    ax.set_ylabel("validation EER, mean over requisites (%)")
    ax.set_title("Best so far (line) and each trial (dots)")
    ax.grid(alpha=0.3)
    ax.legend()
    if fig is not None:
        return _save(fig, path)
    return None


def summarize(dirs) -> str:
    rows = []
    for d in dirs:
        p = Path(d) / "result.json"
        if not p.is_file():
            raise ConfigError(f"{d} has no result.json. Fix: pass directories of finished searches.")
        rows.append(aio.read_json(p))
    return table2(rows)[0]


def build_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser(SearchConfig, prog="python -m nas.depth", doc=__doc__)
    parser.add_argument("--summarize", nargs="+", metavar="DIR",
                        help="print one Table 2 from finished searches and exit")
    return parser


@command
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    if given.get("summarize"):
        print(summarize(given["summarize"]))
        return 0
    cfg, resume = cli.parse(SearchConfig, parser, argv, record="search.json", ignore=("summarize",))
    run_search(cfg, resume=resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
