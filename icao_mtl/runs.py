"""Run directories: train a configuration end to end, evaluate it, and load it back.

A run directory holds everything needed to reproduce, resume and inspect a run::

    config.json        the TrainConfig
    split.csv          which image is in which split
    model.keras        the selected model (STL: models/<requisite>.keras)
    history.json       per-epoch logs (STL: one history per requisite)
    metrics.json       {"val": ..., "test": ...}: per-requisite EER, threshold, accuracy, counts,
                       and eer_mean / eer_std / eer_median / accuracy_mean (fractions, null if undefined)
    table.md, table.csv  the per-requisite test table (the paper's Table 1)
    scores_val.csv, scores_test.csv   P(compliant) per image and requisite
    curves.png, far_frr.png, det.png  training curves, FAR/FRR against threshold, DET curves
    checkpoints/       last.npz (resume), best.npz (model selection)
    tensorboard/       TensorBoard logs
    status.json        running / finished / failed, with the error

Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import io as aio
from .config import GEOMETRY_DEFAULTS, TrainConfig
from .errors import CollapsedModelError, ConfigError, NonFiniteLossError, ResumeError


def runs_root() -> Path:
    """Where run directories go by default: ``$ICAO_MTL_RUNS`` if set, else ``./runs``."""
    return Path(os.environ.get("ICAO_MTL_RUNS") or Path.cwd() / "runs")


# ---------------------------------------------------------------------------------------------
# data

def prepare_data(cfg: TrainConfig, *, verbose: int = 1, training: bool = True):
    """Read, validate and split the dataset of ``cfg``. Returns ``(dataset, splits)``.

    With ``training`` (the default), the training splits of ``cfg``'s more synthetic sets
    (:meth:`~icao_mtl.config.TrainConfig.resolved_synth_extra`; rendered on first use) and of its
    ``extra_train`` sets join the training split; without it (scoring a run) they are not read."""
    from . import data
    from .data import ColumnMapping

    mapping = ColumnMapping.from_json(cfg.mapping) if cfg.mapping else None
    ds = data.load(cfg.data, tasks=cfg.tasks, mapping=mapping, check_images=cfg.check_images,
                   synth_n=cfg.synth_n, synth_size=cfg.synth_size, progress=verbose > 0)
    splits = data.split_dataset(ds, fractions=tuple(cfg.split), seed=cfg.split_seed)
    if verbose:
        print(ds.report.summary())
        print(splits.report.summary())
    if not training:
        return ds, splits
    for name, load_kwargs in cfg.extra_training_sets():
        extra = data.load(name, check_images=cfg.check_images, progress=verbose > 0, **load_kwargs)
        label = f"synthetic set of seed {load_kwargs['seed']}" if "seed" in load_kwargs else f"--extra-train {name}"
        before = splits.report.extra_train
        splits = data.with_extra_training(splits, extra, fractions=tuple(cfg.split), seed=cfg.split_seed)
        if verbose:
            print(f"{label}: {splits.report.extra_train - before} of its training images added "
                  f"(train split now {len(splits.train)})")
    return ds, splits


def check_severities(cfg: TrainConfig, splits) -> None:
    """Refuse ``--severity-weight`` on a training split without usable severities, before any training."""
    if not cfg.severity_weight:
        return
    from .losses import severity_targets

    train = splits.train
    if train.severities is None or not np.isfinite(severity_targets(train)).any():
        raise ConfigError(f"--severity-weight {cfg.severity_weight} regresses each requisite's severity, but the "
                          f"training data ({train.root}) has no usable severities.csv (the continuous severity "
                          "behind each label, with thresholds in meta.json or labels on both sides). Fix: drop "
                          "--severity-weight (or set it to 0), or add severities.csv (see data/README.md).")


def check_pose(cfg: TrainConfig, splits) -> None:
    """Refuse ``--pose-weight`` without the ``rotation`` task or on a training split without a known
    pose, before any training."""
    if not cfg.pose_weight:
        return
    from .architectures import POSE_ANCHOR

    train = splits.train
    if POSE_ANCHOR not in train.tasks:
        raise ConfigError(f"--pose-weight {cfg.pose_weight} regresses the head's pose from the {POSE_ANCHOR!r} "
                          f"head, but {POSE_ANCHOR!r} is not among the tasks ({', '.join(train.tasks)}). Fix: add "
                          f"{POSE_ANCHOR} to --tasks, or set --pose-weight 0.")
    if train.pose is None or not np.isfinite(train.pose).any():
        raise ConfigError(f"--pose-weight {cfg.pose_weight} regresses the head's roll, yaw and pitch, but the "
                          f"training data ({train.root}) has no pose.csv (image,roll,yaw,pitch in degrees). Fix: "
                          "set --pose-weight 0; for a synthetic set, run `python -m icao_mtl.synth` "
                          "with its --out, --n, --size and --seed again (it adds pose.csv without re-rendering).")


def check_landmarks(cfg: TrainConfig, splits) -> None:
    """Refuse ``--landmark-weight`` on a training split without known landmarks, before any training."""
    if not cfg.landmark_weight:
        return
    train = splits.train
    if train.landmarks is None or not np.isfinite(train.landmarks).any():
        raise ConfigError(f"--landmark-weight {cfg.landmark_weight} locates the eyes, nose, mouth and the face's "
                          f"outline, but the training data ({train.root}) has no landmarks.csv (image,left_eye_x,"
                          "left_eye_y,...). Fix: set --landmark-weight 0; for a synthetic set, run `python -m "
                          "icao_mtl.synth` with its --out, --n, --size and --seed again (it adds landmarks.csv "
                          "without re-rendering).")


def make_pipelines(cfg: TrainConfig, splits) -> dict:
    from .data import ImagePipeline
    from .losses import severity_targets

    size = cfg.model_config().resolved_size()
    common = dict(image_size=size, batch_size=cfg.batch_size, cache=cfg.cache, interpolation=cfg.interpolation,
                  seed=cfg.seed)
    graded = severity_targets(splits.train) if cfg.severity_weight else None
    pose = splits.train.pose if cfg.pose_weight else None
    marks = splits.train.landmarks if cfg.landmark_weight else None
    return {"train": ImagePipeline(splits.train, augment=cfg.augment_config(), severity_targets=graded,
                                   pose_targets=pose, landmark_targets=marks, warp=cfg.warp, **common),
            "val": ImagePipeline(splits.val, **common), "test": ImagePipeline(splits.test, **common)}


# ---------------------------------------------------------------------------------------------
# run directory

def default_run_dir(cfg: TrainConfig) -> Path:
    return runs_root() / f"{cfg.approach}_{cfg.backbone}_{cfg.fingerprint()}_{time.strftime('%Y%m%d-%H%M%S')}"


def latest_run_dir(cfg: TrainConfig) -> Path | None:
    """The most recent run directory of this configuration under ``runs/`` (for ``--resume`` without
    ``--out``)."""
    if not runs_root().is_dir():
        return None
    from .training import resolve_precision

    # a run of another --mixed-precision mode that computes alike here (auto and bfloat16 on this CPU) is
    # the same configuration: check_resumable compares the policies
    policy = resolve_precision(cfg.mixed_precision)
    modes = [m for m in ("auto", "none", "bfloat16", "float16") if resolve_precision(m) == policy]
    found = sorted((p for fingerprint in {replace(cfg, mixed_precision=m).fingerprint() for m in modes}
                    for p in runs_root().glob(f"{cfg.approach}_{cfg.backbone}_{fingerprint}_*")),
                   key=lambda p: p.name.rsplit("_", 1)[-1])
    return found[-1] if found else None


def check_resumable(run_dir: Path, cfg: TrainConfig) -> None:
    """Raise :class:`ResumeError` unless ``run_dir`` was written by this configuration."""
    from .training import resolve_precision

    path = run_dir / "config.json"
    if not path.is_file():
        raise ResumeError(f"{run_dir} holds no config.json: it is not a run directory. Fix: pass the --out of the run "
                          "to continue, or drop --resume to start a new run.")
    old = TrainConfig.from_json(path).with_defaults().to_dict()
    new = cfg.with_defaults().to_dict()
    for name in GEOMETRY_DEFAULTS:  # left to the default: decided from the same data as the run did
        if new.get(name) is None:
            new[name] = old.get(name)
    for d in (old, new):  # "auto" and what it resolves to build the same model
        d["geometry_trunk"] = TrainConfig.from_dict(d).resolved_geometry_trunk()
    # a resume computes in the dtype policy the run started with (status.json records it): --mixed-precision
    # auto may resolve to another on another machine, and another mode may give the same
    old["mixed_precision"] = _started_policy(run_dir) or _policy_before_record(old["mixed_precision"])
    new["mixed_precision"] = resolve_precision(new["mixed_precision"])
    diff = sorted(k for k in new if k not in TrainConfig.VOLATILE and old.get(k) != new.get(k))
    if diff:
        details = "; ".join(f"{k}: {old.get(k)!r} in the run, {new.get(k)!r} now" for k in diff[:6])
        fix = "resume with the same options (or only --resume --out DIR)"
        if "mixed_precision" in diff:
            fix = (f"--mixed-precision {_MODE_OF_POLICY.get(old['mixed_precision'], 'none')} (the run's dtype policy "
                   "on this machine)" + ("" if diff == ["mixed_precision"] else " and the run's other options"))
        raise ResumeError(f"{run_dir} was written by another configuration ({details}). Fix: {fix}, or train into a "
                          "new --out directory.")


_MODE_OF_POLICY = {"float32": "none", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def _policy_before_record(mode: str) -> str:
    """The policy of a run whose ``status.json`` does not say (an interrupted or failed run written
    before 2026-12-07): "auto" then meant mixed float16 on a GPU and mixed bfloat16 on every CPU."""
    from .training import resolve_precision

    if mode == "auto":
        import tensorflow as tf

        return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    return resolve_precision(mode)


def _started_policy(run_dir: Path) -> str | None:
    """The dtype policy ``status.json`` says the run started under (None where it says none)."""
    try:
        return aio.read_json(run_dir / "status.json").get("policy")
    except (OSError, ValueError, AttributeError):
        return None


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds a run (finished, or interrupted with checkpoints to resume)."""
    run_dir = Path(run_dir)
    return ((run_dir / "status.json").is_file() or (run_dir / "metrics.json").is_file()
            or (run_dir / "checkpoints").is_dir() or any((run_dir / "models").glob("*/checkpoints")))


def write_split(run_dir: Path, splits) -> None:
    """``split.csv``: which image is in which split (read by analyze)."""
    aio.write_text(run_dir / "split.csv", _csv(["image", "split"], [(n, s) for s in ("train", "val", "test")
                                                                    for n in splits[s].names]))


def write_status(run_dir: Path, state: str, **extra) -> None:
    """``status.json``: running / finished / failed / interrupted, the time, and what else is given
    (the error, a collapse, the dtype policy), and whether TensorFlow's oneDNN kernels compute
    (``onednn``, where TensorFlow is loaded: the same run elsewhere sums in another order)."""
    compute = {}
    if "tensorflow" in sys.modules:
        from .training import onednn_kernels_on

        compute["onednn"] = onednn_kernels_on()
    aio.write_json(run_dir / "status.json",
                   {"state": state, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **compute, **extra})


def start_run_dir(run_dir: Path, config: dict, splits, **status) -> None:
    """The files a run directory holds from its start, so that a killed run can be resumed and
    inspected: ``config.json``, ``split.csv`` and ``status.json`` ("running")."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    aio.write_json(run_dir / "config.json", config)
    write_split(run_dir, splits)
    write_status(run_dir, "running", **status)


def finish_run_dir(run_dir: Path, cfg: TrainConfig, models: dict, pipes: dict, splits, histories: dict, *,
                   verbose: int = 1, **status) -> "RunResult":
    """The files of a finished run, the same for every method: the model(s) (``model.keras``, or for one
    model per task ``models/<task>.keras``), ``history.json``, then :func:`evaluate_run`'s metrics,
    scores, tables and plots, and ``status.json`` ("finished")."""
    run_dir = Path(run_dir)
    for name, model in models.items():
        save_model(model, run_dir / "model.keras" if name == "model" else run_dir / "models" / f"{name}.keras")
    aio.write_json(run_dir / "history.json", histories)
    result = evaluate_run(run_dir, cfg, models, pipes, splits, histories=histories, verbose=verbose)
    write_status(run_dir, "finished", **status)
    return result


def _csv(header, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _write_scores(path: Path, names, scores: dict, labels: dict) -> None:
    """One row per image: its name, P(compliant) per task, then the labels (``label_<task>``)."""
    tasks = list(scores)
    rows = [[n, *(f"{float(scores[t][i]):.6f}" for t in tasks), *(int(labels[t][i]) for t in tasks)]
            for i, n in enumerate(names)]
    aio.write_text(path, _csv(["image", *tasks, *(f"label_{t}" for t in tasks)], rows))


def read_scores(path) -> tuple[list, dict, dict]:
    """``(image names, {task: scores}, {task: labels})`` from a ``scores_<split>.csv``."""
    import pandas as pd

    if not Path(path).is_file():
        raise ConfigError(f"{path} not found. Fix: evaluate the run first (python -m icao_mtl.evaluate RUN_DIR).")
    df = pd.read_csv(path)
    tasks = [c for c in df.columns if c != "image" and not c.startswith("label_")]
    labels = {t: df[f"label_{t}"].to_numpy(np.int8) for t in tasks if f"label_{t}" in df.columns}
    return df["image"].tolist(), {t: df[t].to_numpy(np.float64) for t in tasks}, labels


# ---------------------------------------------------------------------------------------------
# training

@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    table: str
    histories: dict


def train(cfg: TrainConfig, *, resume: bool = False, verbose: int = 1) -> RunResult:
    """Train ``cfg`` end to end and write its run directory.

    Args:
        cfg: the configuration (validated here).
        resume: continue the run in ``cfg.out`` (or the latest run of this configuration) from its last
            checkpoint; the result equals an uninterrupted run's within floating-point tolerance.
        verbose: 0 quiet, 1 progress bars, 2 one line per epoch.

    The run's dtype policy (``cfg.mixed_precision``) holds while it trains; Keras' global policy is
    given back afterwards, so that models built later in the same process (a notebook, a search) are
    not built mixed unawares. The saved models keep the policy they trained under (:func:`load_models`).
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    try:
        return _train(cfg, resume=resume, verbose=verbose)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _train(cfg: TrainConfig, *, resume: bool, verbose: int) -> RunResult:
    import keras

    from .architectures import (POSE_ANCHOR, build_model, landmark_grid, task_outputs, with_landmark_outputs,
                                with_pose_outputs, with_severity_outputs)
    from .backbones import set_backbone_trainable
    from .losses import GradedMultiTaskLoss, MaskedMultiTaskLoss
    from .training import (Engine, finetune_phases, is_chief, make_strategy, optimizer_factory, set_precision,
                           standard_phases)

    cfg = cfg.validate().with_defaults()  # config.json says what trained; the fingerprint follows it
    if cfg.finetune_epochs and not cfg.frozen_backbone():
        raise ConfigError("Fine-tuning phases unfreeze a frozen backbone, but this backbone trains from scratch "
                          "(--weights none). Fix: drop --finetune-epochs, or use pretrained weights.")
    strategy = make_strategy(cfg.strategy)  # first TensorFlow work, as multi-worker runs require
    chief = is_chief(strategy)  # in a multi-worker run only the chief writes the run directory
    if resume:
        run_dir = Path(cfg.out) if cfg.out else latest_run_dir(cfg)
        if run_dir is None or not run_dir.exists():
            raise ResumeError(f"Nothing to resume: no run directory {'at ' + str(cfg.out) if cfg.out else 'of this configuration under runs/'}. "
                              "Fix: pass --out with the run to continue (--resume --out DIR alone resumes it with "
                              "its own options, e.g. a run trained in float32 before mixed precision became the "
                              "default), or drop --resume.")
        check_resumable(run_dir, cfg)
    else:
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
        if chief and holds_run(run_dir):
            raise ConfigError(f"{run_dir} already holds a run. Fix: pass --resume to continue it, or choose another "
                              "--out.")
    policy = set_precision(cfg.mixed_precision)
    keras.utils.set_random_seed(cfg.seed)
    ds, splits = prepare_data(cfg, verbose=verbose)
    cfg = cfg.with_geometry(splits.train)
    check_severities(cfg, splits)
    check_pose(cfg, splits)
    check_landmarks(cfg, splits)
    task_weights = cfg.loss_weights(ds.tasks)  # before any epoch: a task_weights id it does not train is an error
    pipes = make_pipelines(cfg, splits)
    if chief:
        start_run_dir(run_dir, cfg.to_dict(), splits, policy=policy)
    if verbose:
        print(f"Run directory: {run_dir}" + ("" if chief else " (this worker writes nothing)"))

    tasks = ds.tasks
    steps = pipes["train"].steps
    total_epochs = cfg.epochs + cfg.finetune_epochs
    opt = optimizer_factory(cfg.optimizer, cfg.lr, schedule=cfg.lr_schedule, epochs=total_epochs, steps_per_epoch=steps,
                            **({"weight_decay": cfg.weight_decay} if cfg.weight_decay else {}))  # decided above
    model_sets = [(t, (t,)) for t in tasks] if cfg.approach == "stl" else [(None, tasks)]
    models, histories, collapses = {}, {}, {}
    try:
        for name, model_tasks in model_sets:
            sub = run_dir / "models" / name if name else run_dir
            with strategy.scope():
                model = build_model(cfg.model_config(), model_tasks, ds.groups)
                if cfg.severity_weight:
                    model = with_severity_outputs(model, model_tasks)
                if cfg.pose_weight and POSE_ANCHOR in model_tasks:  # STL: the rotation model only
                    model = with_pose_outputs(model)
                if cfg.landmark_weight:
                    model = with_landmark_outputs(model)
            if cfg.frozen_backbone():
                set_backbone_trainable(model, model_tasks, "frozen")
            if cfg.finetune_epochs:
                phases = finetune_phases(cfg.finetune_epochs, cfg.epochs, model_tasks, cfg.finetune_unfreeze)
            else:
                phases = standard_phases(cfg.epochs)
            weight = {t: w for t, w in task_weights.items() if t in model_tasks}
            if cfg.severity_weight or cfg.pose_weight or cfg.landmark_weight:
                loss = GradedMultiTaskLoss(model_tasks, weight, severity_weight=cfg.severity_weight,
                                           pose_weight=cfg.pose_weight, landmark_weight=cfg.landmark_weight,
                                           landmark_grid=landmark_grid(model) if cfg.landmark_weight else None)
            else:
                loss = MaskedMultiTaskLoss(model_tasks, weight)
            engine = Engine(model, model_tasks, optimizer=opt, loss=loss,
                            run_dir=sub, strategy=strategy, monitor=cfg.monitor, patience=cfg.patience, verbose=verbose,
                            eer_method=cfg.eer_method, seed=cfg.seed)
            if verbose and name:
                print(f"STL model for {name!r}")
            data_streams = {"train": _TaskView(pipes["train"], model_tasks)}
            histories[name or cfg.approach] = engine.fit(phases, data_streams, _TaskView(pipes["val"], model_tasks),
                                                        resume=resume)
            if engine.collapse is not None:
                collapses[name or cfg.approach] = engine.collapse
            models[name or "model"] = task_outputs(model, model_tasks)  # the graded outputs only train
    except (NonFiniteLossError, CollapsedModelError) as exc:
        if chief:
            write_status(run_dir, "failed", error=str(exc), reason=type(exc).__name__, policy=policy)
        raise
    except BaseException as exc:  # a kill or an error: say so in the run directory, keep the checkpoints
        if chief:
            write_status(run_dir, "interrupted", error=f"{type(exc).__name__}: {exc}", policy=policy)
        raise
    if not chief:
        return RunResult(run_dir, {}, "", histories)
    extra = {"collapse": collapses} if collapses else {}
    return finish_run_dir(run_dir, cfg, models, pipes, splits, histories, verbose=verbose, policy=policy, **extra)


class _TaskView:
    """A pipeline seen by a model that only has some of the tasks (STL): labels of other tasks are dropped."""

    def __init__(self, pipe, tasks):
        self.pipe, self.tasks = pipe, tuple(tasks)
        self.steps = pipe.steps

    def _select(self, ds):
        import tensorflow as tf

        from .data import LANDMARK_KEY, POSE_KEY, SEVERITY_KEY

        if set(self.tasks) == set(self.pipe.tasks):
            return ds
        columns = [self.pipe.tasks.index(t) for t in self.tasks]

        def select(x, y):
            kept = {t: y[t] for t in self.tasks}
            if SEVERITY_KEY in y:
                kept[SEVERITY_KEY] = tf.gather(y[SEVERITY_KEY], columns, axis=1)
            for key in (POSE_KEY, LANDMARK_KEY):
                if key in y:
                    kept[key] = y[key]
            return x, kept

        return ds.map(select)

    def train(self, epoch):
        return self._select(self.pipe.train(epoch))

    def eval(self):
        return self._select(self.pipe.eval())


def save_model(model, path: Path) -> None:
    """Save a model as ``.keras`` atomically."""
    with aio.atomic_path(path) as tmp:
        model.save(tmp)


class _MirroredView:
    """A pipeline's evaluation batches with every image mirrored left-right (test-time flip
    averaging). The labels pass unchanged: only the scores of this view are read."""

    def __init__(self, source):
        self.source, self.steps = source, source.steps

    def eval(self):
        import tensorflow as tf

        return self.source.eval().map(lambda x, y: (tf.reverse(x, axis=[2]), y))


def predict_scores(models: dict, pipe, tasks, *, mirror: bool = False) -> dict[str, np.ndarray]:
    """P(compliant) for every image of ``pipe`` (in order), per task, from one model or one per task:
    {task: (n,)}. With ``mirror``, each image's score is the mean of its own and its mirror image's
    (``--tta flip``)."""
    from .training import Engine

    scores = {}
    for name, model in models.items():
        model_tasks = tuple(model.output_names)
        engine = Engine(model, model_tasks, optimizer=lambda: None, verbose=0)
        view = _TaskView(pipe, model_tasks)
        found = engine.predict(view)
        if mirror:
            mirrored = engine.predict(_MirroredView(view))
            found = {t: (found[t] + mirrored[t]) / 2 for t in found}
        scores.update(found)
    return {t: scores[t] for t in tasks}


def evaluate_run(run_dir: Path, cfg: TrainConfig, models: dict, pipes: dict, splits, *, histories: dict | None = None,
                 verbose: int = 1, splits_to_do=("val", "test")) -> RunResult:
    """Score the models on validation and test, write metrics, scores, tables and plots."""
    from .metrics import evaluate_tasks, summarize
    from .reports import plot_curves, plot_det, plot_far_frr, requisite_table

    tasks = splits.train.tasks
    metrics, per_split = {}, {}
    tta = cfg.resolved_tta()
    for split in splits_to_do:
        scores = predict_scores(models, pipes[split], tasks, mirror=tta == "flip")
        labels = {t: splits[split].labels[:, j] for j, t in enumerate(tasks)}
        metrics[split] = summarize(evaluate_tasks(labels, scores, method=cfg.eer_method, bootstrap=cfg.bootstrap,
                                                  seed=cfg.seed))
        per_split[split] = (labels, scores)
        _write_scores(run_dir / f"scores_{split}.csv", splits[split].names, scores, labels)
    metrics["eer_method"] = cfg.eer_method
    metrics["tta"] = tta  # check scores photos as these thresholds were found
    aio.write_json(run_dir / "metrics.json", metrics)
    last = "test" if "test" in metrics else splits_to_do[-1]
    md, csv_text = requisite_table(metrics[last], title=f"{cfg.approach.upper()} on {cfg.backbone}, {last} split")
    aio.write_text(run_dir / "table.md", md)
    aio.write_text(run_dir / "table.csv", csv_text)
    labels, scores = per_split[last]
    plot_far_frr(labels, scores, run_dir / "far_frr.png")
    plot_det(labels, scores, run_dir / "det.png")
    if histories:
        plot_curves(histories, run_dir / "curves.png")
    if verbose:
        print(md)
        m = metrics[last]
        if m["eer_mean"] is not None:
            print(f"{last} EER: mean {100 * m['eer_mean']:.2f}%, median {100 * m['eer_median']:.2f}% "
                  f"over {m['n_defined']} requisites. Results in {run_dir}")
    return RunResult(run_dir, metrics, md, histories or {})


def load_models(run_dir: str | os.PathLike) -> dict:
    """The models of a run: {"model": model} or, for STL, {task: model}. Loaded with ``safe_mode=True``
    (:func:`icao_mtl.load_model`)."""
    from . import load_model

    run_dir = Path(run_dir)
    single = run_dir / "model.keras"
    if single.is_file():
        return {"model": load_model(single)}
    stl = sorted((run_dir / "models").glob("*.keras")) if (run_dir / "models").is_dir() else []
    if stl:
        return {p.stem: load_model(p) for p in stl}
    raise ConfigError(f"{run_dir} holds no model (model.keras or models/*.keras). Fix: pass the directory of a "
                      "finished training run (python -m icao_mtl.train writes one).")


def load_run(run_dir: str | os.PathLike) -> tuple[TrainConfig, dict]:
    """``(config, models)`` of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"Run directory {run_dir} not found. Fix: pass the --out of a training run.")
    cfg = TrainConfig.from_json(run_dir / "config.json")
    return cfg, load_models(run_dir)
