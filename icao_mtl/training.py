"""The training engine: one loop for every model of the package (STL, Handcrafted, NAS children and
the architecture-search variants).

A method gives the engine its model, its loss terms, its **variable groups** (each with its own
optimiser) and a schedule of **phases**. A phase runs for some epochs; each epoch is a sequence of
**passes**; a pass walks one named data stream and, per batch, computes one or more losses and
updates some variable groups from their gradients. With that:

- plain training is one phase of one pass ("train" data, the "model" group);
- the paper's Experiment III is a phase with the backbone unfrozen, then one with it frozen
  (:func:`finetune_phases`);
- a differentiable search alternates an architecture pass (20% of the training data, the
  architecture variables) with a weight pass (80%, the network weights), with hooks that reset
  optimiser state or batch-norm statistics around them and per-step schedules such as a Gumbel
  temperature (:class:`Schedule`).

The engine gives every method the same ``tf.function`` steps, mixed precision, ``tf.distribute``
(MirroredStrategy; MultiWorkerMirroredStrategy through ``TF_CONFIG``), progress bars, TensorBoard
logs, Keras callbacks (``EarlyStopping`` and friends work unchanged), a checkpoint every epoch with
exact resume, model selection on a validation metric, and a stop with a clear error on a NaN loss
(keeping the last good checkpoint). Methods never write their own loop of epochs and batches.

Example::

    engine = Engine(model, tasks, optimizer=adam_factory, run_dir="runs/x")
    history = engine.fit([Phase("train", epochs=10)], data={"train": train_pipeline}, validation=val_pipeline)
    scores = engine.predict(test_pipeline)        # {task: P(compliant), shape (n,)}
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from . import io as aio
from .errors import ConfigError, NonFiniteLossError, ResumeError
from .losses import MaskedMultiTaskLoss

MONITORS = {"val_accuracy": "max", "val_loss": "min", "val_eer": "min", "loss": "min", "accuracy": "max"}


# ---------------------------------------------------------------------------------------------
# what a method gives the engine

@dataclass
class VariableGroup:
    """Variables updated together by one optimiser.

    Attributes:
        name: group name, referred to by passes.
        optimizer: a factory returning a fresh optimiser; called at the start of every phase that
            updates the group (a phase may change which variables are trainable).
        variables: function of the model returning the variables (default: all trainable ones).
    """

    name: str
    optimizer: Callable[[], keras.optimizers.Optimizer]
    variables: Callable[[keras.Model], list] | None = None

    def collect(self, model) -> list:
        return list(self.variables(model) if self.variables else model.trainable_variables)


@dataclass
class Pass:
    """One walk over a data stream within an epoch.

    Attributes:
        data: name of the data stream (a key of ``fit(data=...)``).
        groups: variable groups updated from the gradient of each loss.
        losses: loss functions ``fn(model, x, y, training) -> (loss, logs)``; each makes its own
            forward, backward and update, in order, for every batch (e.g. one per task, as BMTAS's
            weight phase). Default: the engine's masked multi-task loss.
        training: the ``training`` flag of the forward pass (batch-norm and dropout behaviour).
        on_begin, on_end: hooks ``fn(engine)`` before and after the pass (e.g. reset an optimiser).
        max_steps: stop the pass after this many batches (default: the whole stream).
    """

    data: str = "train"
    groups: tuple = ("model",)
    losses: Sequence[Callable] | None = None
    training: bool = True
    on_begin: Callable | None = None
    on_end: Callable | None = None
    max_steps: int | None = None


@dataclass
class Schedule:
    """A value assigned to a variable before every step (``per_step``) or every epoch.

    ``fn(epoch, step)`` gets the epoch within the phase (0-based) and the step within the epoch's
    pass (0 at the epoch start), e.g. a Gumbel-softmax temperature annealed linearly."""

    variable: tf.Variable
    fn: Callable[[int, int], float]
    per_step: bool = False


@dataclass
class Phase:
    """A named stage of training.

    Attributes:
        name: e.g. "warmup", "search", "finetune", "train".
        epochs: number of epochs.
        passes: the passes of each epoch, in order.
        setup: ``fn(engine)`` run when the phase starts, and again when a run resumes inside it
            (e.g. freeze or unfreeze the backbone).
        schedules: variables set from the epoch and step.
        validate: evaluate on the validation data at the end of each epoch.
        select_best: whether this phase's epochs compete for the best model.
    """

    name: str
    epochs: int
    passes: Sequence[Pass] = (Pass(),)
    setup: Callable | None = None
    schedules: Sequence[Schedule] = ()
    validate: bool = True
    select_best: bool = True


# ---------------------------------------------------------------------------------------------
# helpers

def make_strategy(name: str = "none"):
    """A tf.distribute strategy: "none" (default device), "mirrored" (all local devices) or
    "multiworker" (MultiWorkerMirroredStrategy configured by the TF_CONFIG environment variable).
    Create it before any other TensorFlow work, as TensorFlow requires for multi-worker runs."""
    if name in (None, "none"):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy multiworker needs the TF_CONFIG environment variable (the cluster and this "
                              "worker's task). Fix: set TF_CONFIG on every worker, e.g. "
                              '{"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, '
                              '"task": {"type": "worker", "index": 0}}.')
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"Unknown strategy {name!r}. Fix: use none, mirrored or multiworker.")


def is_chief(strategy=None) -> bool:
    """True on the worker that writes outputs (always, except on the other workers of a multi-worker run)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def set_precision(mode: str | None) -> str:
    """Set Keras' global dtype policy: "none" (float32), "float16", "bfloat16" or "auto" (float16 on
    a GPU, bfloat16 otherwise). Call before building models. Returns the policy name."""
    if mode in (None, "none", "float32"):
        policy = "float32"
    elif mode == "auto":
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    elif mode in ("float16", "bfloat16"):
        policy = f"mixed_{mode}"
    else:
        raise ConfigError(f"Unknown mixed precision mode {mode!r}. Fix: use none, auto, float16 or bfloat16.")
    keras.mixed_precision.set_global_policy(policy)
    return policy


def optimizer_factory(name: str = "adam", lr: float = 1e-3, *, schedule: str = "constant", epochs: int = 1,
                      steps_per_epoch: int = 1, **kwargs) -> Callable[[], keras.optimizers.Optimizer]:
    """A factory of fresh optimisers.

    Args:
        name: "adam", "adamax", "adamw", "sgd", "sgd_nesterov", "rmsprop", "adagrad" or "adadelta".
        lr: initial learning rate.
        schedule: "constant"; "reference" (the paper code's Adam ``decay=lr/epochs``, which Keras 2
            applied per iteration as ``lr / (1 + decay * t)`` and Keras 3 silently ignores: here an
            ``InverseTimeDecay``); or "cosine" (cosine decay to 0 over ``epochs * steps_per_epoch``).
    """
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"The learning rate must be positive. Received: lr={lr!r}. Fix: e.g. --lr 1e-3.")
    if schedule not in ("constant", "reference", "cosine"):
        raise ConfigError(f"Unknown learning-rate schedule {schedule!r}. Fix: use constant, reference or cosine.")
    classes = {"adam": keras.optimizers.Adam, "adamax": keras.optimizers.Adamax, "adamw": keras.optimizers.AdamW,
               "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop, "adagrad": keras.optimizers.Adagrad,
               "adadelta": keras.optimizers.Adadelta}
    if name not in classes and name != "sgd_nesterov":
        raise ConfigError(f"Unknown optimizer {name!r}. Fix: choose one of {', '.join([*classes, 'sgd_nesterov'])}.")

    def make():
        if schedule == "reference":
            rate = keras.optimizers.schedules.InverseTimeDecay(lr, decay_steps=1, decay_rate=lr / max(epochs, 1))
        elif schedule == "cosine":
            rate = keras.optimizers.schedules.CosineDecay(lr, max(1, epochs * steps_per_epoch))
        else:
            rate = lr
        if name == "sgd_nesterov":
            return keras.optimizers.SGD(rate, momentum=kwargs.get("momentum", 0.9), nesterov=True)
        return classes[name](rate, **kwargs)

    return make


def reset_optimizer(optimizer: keras.optimizers.Optimizer) -> None:
    """Zero an optimiser's slots and iteration count, keeping its learning rate (a fresh state, as a
    new PyTorch optimiser has, without retracing the step function)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    keep = {id(v) for v in (getattr(inner, "_learning_rate", None),) if isinstance(v, (tf.Variable, keras.Variable))}
    for v in inner.variables:
        if id(v) in keep or "learning_rate" in v.path:
            continue
        v.assign(tf.zeros(v.shape, v.dtype))


def reset_batchnorm(model: keras.Model, layers=None) -> None:
    """Reset moving means to 0 and moving variances to 1 (of ``layers``, default every BN layer)."""
    for layer in layers or [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]:
        layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
        layer.moving_variance.assign(tf.ones_like(layer.moving_variance))


def _dataset(source, epoch: int, training: bool):
    if hasattr(source, "train") and hasattr(source, "eval"):
        return source.train(epoch) if training else source.eval()
    if callable(source):
        return source(epoch)
    return source


def _steps(source) -> int | None:
    return getattr(source, "steps", None)


# ---------------------------------------------------------------------------------------------
# the engine

class Engine:
    """Trains and evaluates one model.

    Args:
        model: a Keras model whose outputs are a dict {task: (batch, 2) probabilities}.
        tasks: the task ids.
        optimizer: shortcut for ``groups={"model": VariableGroup("model", optimizer)}``.
        groups: the variable groups (their names are used by passes).
        loss: the multi-task loss (default :class:`MaskedMultiTaskLoss` with weight 1).
        run_dir: where checkpoints and TensorBoard logs go (None: nothing written).
        strategy: a tf.distribute strategy (build the model inside its scope).
        monitor: "val_accuracy" (the paper's model selection), "val_loss" (the reference code's),
            "val_eer" (mean validation EER) or "loss"/"accuracy" (training values, no validation).
        patience: stop after this many epochs without improvement of ``monitor`` (None: never).
        verbose: 0 silent, 1 progress bars, 2 one line per epoch.
        tensorboard: write TensorBoard scalars under ``run_dir/tensorboard``.
    """

    def __init__(self, model: keras.Model, tasks, *, optimizer: Callable | None = None,
                 groups: dict[str, VariableGroup] | None = None, loss: MaskedMultiTaskLoss | None = None,
                 run_dir: str | os.PathLike | None = None, strategy=None, monitor: str = "val_accuracy",
                 patience: int | None = None, verbose: int = 1, tensorboard: bool = True):
        if groups is None:
            if optimizer is None:
                raise ConfigError("Engine needs an optimizer factory or variable groups.")
            groups = {"model": VariableGroup("model", optimizer)}
        if monitor not in MONITORS:
            raise ConfigError(f"Unknown monitor {monitor!r}. Fix: use one of {', '.join(MONITORS)}.")
        self.model = model
        self.tasks = tuple(tasks)
        self.groups = dict(groups)
        self.loss = loss or MaskedMultiTaskLoss(self.tasks)
        self.run_dir = Path(run_dir) if run_dir else None
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = is_chief(self.strategy)
        self.monitor, self.mode = monitor, MONITORS[monitor]
        self.patience = patience
        self.verbose = verbose
        self.tensorboard = tensorboard and self.run_dir is not None and self.chief
        self.optimizers: dict[str, keras.optimizers.Optimizer] = {}
        self.history: list[dict] = []
        self.best: dict | None = None
        self.phase: Phase | None = None
        self.epoch = 0  # global epoch counter (completed epochs)
        self.global_step = 0
        self._best_weights: list | None = None
        self._writer = None
        self._eval_fn = None

    # ----- checkpoints -----------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

    def _fingerprint(self, phases) -> str:
        shapes = [(v.path, tuple(v.shape)) for v in self.model.weights]
        plan = [(p.name, p.epochs, len(p.passes)) for p in phases]
        return hashlib.sha256(json.dumps([shapes, plan, list(self.tasks)], default=str).encode()).hexdigest()[:16]

    def _save(self, name: str, state: dict, optimizers: bool) -> None:
        if not (self.checkpoint_dir and self.chief):
            return
        arrays = {f"w{i}": np.asarray(v.numpy()) for i, v in enumerate(self.model.weights)}
        if optimizers:
            for g, opt in self.optimizers.items():
                for i, v in enumerate(opt.variables):
                    arrays[f"o:{g}:{i}"] = np.asarray(v.numpy())
        arrays["state"] = np.frombuffer(json.dumps(state, default=str).encode(), dtype=np.uint8)
        buf = _io.BytesIO()
        np.savez(buf, **arrays)
        aio.write_bytes(self.checkpoint_dir / f"{name}.npz", buf.getvalue())

    def _load(self, name: str):
        path = self.checkpoint_dir / f"{name}.npz"
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        state = json.loads(arrays.pop("state").tobytes().decode())
        return arrays, state

    def _restore_weights(self, arrays) -> None:
        weights = self.model.weights
        n = sum(1 for k in arrays if k.startswith("w"))
        if n != len(weights):
            raise ResumeError(f"The checkpoint holds {n} weight arrays but the model has {len(weights)}. Fix: resume "
                              "with the configuration that wrote it, or start a new run directory.")
        for i, v in enumerate(weights):
            v.assign(arrays[f"w{i}"])

    def _restore_optimizers(self, arrays) -> None:
        for g, opt in self.optimizers.items():
            saved = sorted((int(k.split(":")[2]), k) for k in arrays if k.startswith(f"o:{g}:"))
            if len(saved) != len(opt.variables):
                raise ResumeError(f"The checkpoint's optimizer state for group {g!r} does not match ({len(saved)} vs "
                                  f"{len(opt.variables)} variables). Fix: resume with the same configuration.")
            for (i, k), v in zip(saved, opt.variables):
                v.assign(arrays[k])

    # ----- phases ----------------------------------------------------------------------------
    def _start_phase(self, phase: Phase) -> None:
        self.phase = phase
        if phase.setup:
            phase.setup(self)
        used = {g for p in phase.passes for g in p.groups}
        unknown = used - set(self.groups)
        if unknown:
            raise ConfigError(f"Phase {phase.name!r} updates unknown variable groups {sorted(unknown)}; known: "
                              f"{sorted(self.groups)}.")
        self.optimizers = {}
        with self.strategy.scope():
            for g in sorted(used):
                opt = self.groups[g].optimizer()
                if keras.mixed_precision.global_policy().name == "mixed_float16" and not isinstance(
                        opt, keras.optimizers.LossScaleOptimizer):
                    opt = keras.optimizers.LossScaleOptimizer(opt)
                variables = self.groups[g].collect(self.model)
                if not variables:
                    raise ConfigError(f"Variable group {g!r} has no trainable variables in phase {phase.name!r}.")
                opt.build(variables)
                self.optimizers[g] = opt
        self._steps = {}

    def _step_fn(self, pas: Pass, key: int, element_spec=None):
        if key in self._steps:
            return self._steps[key]
        model, strategy = self.model, self.strategy
        groups = list(pas.groups)
        var_lists = [self.groups[g].collect(model) for g in groups]
        opts = [self.optimizers[g] for g in groups]
        losses = list(pas.losses) if pas.losses else [self._task_loss]
        scale = isinstance(opts[0], keras.optimizers.LossScaleOptimizer)
        if scale and len(groups) > 1:
            raise ConfigError("float16 loss scaling supports one variable group per pass. Fix: use --mixed-precision "
                              "bfloat16, or update the groups in separate passes.")
        training = pas.training

        def body(x, y):
            total = {}
            for fn in losses:
                with tf.GradientTape() as tape:
                    loss, logs = fn(model, x, y, training)
                    scaled = opts[0].scale_loss(loss) if scale else loss
                flat = [v for vs in var_lists for v in vs]
                grads = tape.gradient(scaled, flat, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                # A NaN can hide in the gradients while the (clipped) loss stays finite; never apply it.
                finite = tf.math.is_finite(tf.cast(loss, tf.float32))
                if not scale:  # a loss-scale optimizer skips non-finite steps itself
                    finite = tf.logical_and(finite, tf.math.is_finite(tf.linalg.global_norm(grads)))

                # Discard a non-finite step's gradients (zeros; the run stops right after it). A tf.cond
                # around the update would skip it entirely, but costs seconds of tracing per model and
                # cannot hold the cross-replica gradient reduction.
                grads = [tf.where(finite, g, tf.zeros_like(g)) for g in grads]
                i = 0
                for opt, vs in zip(opts, var_lists):
                    opt.apply(grads[i:i + len(vs)], vs)
                    i += len(vs)
                logs = dict(logs)
                logs["loss"] = tf.reshape(loss, [])
                logs["nonfinite"] = 1.0 - tf.cast(finite, tf.float32)
                for k, v in logs.items():
                    total[k] = total.get(k, 0.0) + tf.cast(v, tf.float32)
            return total

        layout: list = []  # (log name, size) in the order of the packed vector, fixed when the step is traced

        def step_impl(x, y):
            per_replica = strategy.run(body, args=(x, y))
            reduced = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}
            flat = {k: tf.reshape(v, [-1]) for k, v in reduced.items()}
            layout[:] = [(k, int(flat[k].shape[0])) for k in sorted(flat)]
            # One tensor, so the host reads every log of the step in a single transfer.
            return tf.concat([flat[k] for k, _ in layout], axis=0)

        # The dataset's element spec has a free batch dimension: one trace serves full and last batches.
        step = tf.function(step_impl, input_signature=list(element_spec) if element_spec is not None else None,
                           reduce_retracing=element_spec is None)

        def run(x, y):
            values = step(x, y).numpy().astype(np.float64)
            out, i = {}, 0
            for k, size in layout:
                out[k] = float(values[i]) if size == 1 and k in ("loss", "nonfinite") else values[i:i + size]
                i += size
            return out

        self._steps[key] = run
        return run

    def _task_loss(self, model, x, y, training):
        outputs = model(x, training=training)
        loss, logs = self.loss(y, outputs)
        if model.losses:
            loss = loss + tf.add_n([tf.cast(l, tf.float32) for l in model.losses])
        return loss, logs

    # ----- the loop --------------------------------------------------------------------------
    def fit(self, phases: Sequence[Phase], data: dict, validation=None, *, resume: bool = False,
            callbacks: Sequence[keras.callbacks.Callback] = ()) -> list[dict]:
        """Run the phases.

        Args:
            phases: the schedule.
            data: stream name -> source: an :class:`~icao_mtl.data.ImagePipeline` (its ``train(epoch)``
                is used), a function ``epoch -> tf.data.Dataset``, or a dataset. Elements are
                ``(images, {task: labels})``.
            validation: source of validation data (its ``eval()``), or None.
            resume: continue from ``run_dir/checkpoints/last.npz`` if it exists.
            callbacks: Keras callbacks (``on_epoch_end`` gets the epoch's logs; setting
                ``model.stop_training`` stops).

        Returns:
            The history: one dict of logs per epoch.

        Raises:
            NonFiniteLossError: the loss became NaN or infinite (the last good checkpoint is kept).
            ResumeError: the checkpoint does not belong to this configuration.
        """
        phases = list(phases)
        for p in phases:
            missing = {ps.data for ps in p.passes} - set(data)
            if missing:
                raise ConfigError(f"Phase {p.name!r} reads data streams {sorted(missing)} that fit() did not get; "
                                  f"given: {sorted(data)}.")
        if self.monitor.startswith("val_") and validation is None:
            raise ConfigError(f"monitor={self.monitor!r} needs validation data. Fix: pass validation=..., or monitor "
                              "'loss'.")
        fingerprint = self._fingerprint(phases)
        start_phase, start_epoch = 0, 0
        resumed = None
        if resume and self.checkpoint_dir and (self.checkpoint_dir / "last.npz").is_file():
            arrays, state = self._load("last")
            if state.get("fingerprint") != fingerprint:
                raise ResumeError(f"The checkpoint in {self.checkpoint_dir} was written by another model or schedule. "
                                  "Fix: resume with the same configuration, or use a new --out directory.")
            self.history, self.best = state["history"], state["best"]
            self.epoch, self.global_step = state["epoch"], state["global_step"]
            start_phase, start_epoch = state["phase_index"], state["phase_epoch"]
            if start_epoch >= phases[start_phase].epochs:
                start_phase, start_epoch = start_phase + 1, 0
            resumed = (arrays, state)
            if self.best is not None and (self.checkpoint_dir / "best.npz").is_file():
                best_arrays, _ = self._load("best")
                self._best_weights = [best_arrays[f"w{i}"] for i in range(len(self.model.weights))]
            if self.verbose:
                print(f"Resuming after epoch {self.epoch} (phase {phases[min(start_phase, len(phases) - 1)].name}).")
        cb = keras.callbacks.CallbackList(list(callbacks), model=self.model, add_history=False, add_progbar=False)
        self.model.stop_training = False
        if self.tensorboard:
            self._writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard"))
        cb.on_train_begin()
        wait = 0 if self.best is None else self.epoch - self.best["epoch"]
        try:
            for pi in range(start_phase, len(phases)):
                phase = phases[pi]
                self._start_phase(phase)
                first = start_epoch if pi == start_phase else 0
                if resumed is not None:
                    self._restore_weights(resumed[0])
                    if resumed[1]["phase_index"] == pi and first > 0:
                        self._restore_optimizers(resumed[0])
                    resumed = None
                for e in range(first, phase.epochs):
                    logs = self._run_epoch(phase, e, data, validation, cb)
                    improved = phase.select_best and self._is_improvement(logs)
                    if improved:
                        self.best = {"epoch": self.epoch, "value": float(logs[self.monitor]), "phase": phase.name}
                        self._best_weights = [v.numpy() for v in self.model.weights]
                        self._save("best", {"epoch": self.epoch}, optimizers=False)
                        wait = 0
                    else:
                        wait += 1
                    self._save("last", {"fingerprint": fingerprint, "history": self.history, "best": self.best,
                                        "epoch": self.epoch, "global_step": self.global_step, "phase_index": pi,
                                        "phase_epoch": e + 1}, optimizers=True)
                    if self.patience is not None and wait > self.patience:
                        if self.verbose:
                            print(f"Early stop: {self.monitor} did not improve for {self.patience} epochs.")
                        self.model.stop_training = True
                    if self.model.stop_training:
                        break
                if self.model.stop_training:
                    break
        finally:
            cb.on_train_end()
            if self._writer is not None:
                self._writer.close()
        if self._best_weights is not None:
            for v, w in zip(self.model.weights, self._best_weights):
                v.assign(w)
        return self.history

    def _is_improvement(self, logs) -> bool:
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best["value"] if self.mode == "max" else value < self.best["value"]

    def _run_epoch(self, phase: Phase, e: int, data: dict, validation, cb) -> dict:
        cb.on_epoch_begin(self.epoch)
        for s in phase.schedules:
            s.variable.assign(s.fn(e, 0))
        logs: dict = {"epoch": self.epoch + 1, "phase": phase.name}
        start = time.perf_counter()
        for k, pas in enumerate(phase.passes):
            if pas.on_begin:
                pas.on_begin(self)
            source = data[pas.data]
            ds = _dataset(source, self.epoch, True)
            dist = self.strategy.experimental_distribute_dataset(ds)
            step = self._step_fn(pas, k, dist.element_spec)
            total = _steps(source) if pas.max_steps is None else min(pas.max_steps, _steps(source) or pas.max_steps)
            bar = keras.utils.Progbar(total, verbose=1 if self.verbose == 1 else 0,
                                      stateful_metrics=["loss"], unit_name="step")
            sums: dict = {}
            n_steps = 0
            for i, (x, y) in enumerate(dist):
                if pas.max_steps is not None and i >= pas.max_steps:
                    break
                for s in phase.schedules:
                    if s.per_step:
                        s.variable.assign(s.fn(e, i))
                out = step(x, y)
                loss = out["loss"]
                if not math.isfinite(loss) or out.get("nonfinite", 0.0) > 0:
                    where = (f"phase {phase.name!r}, epoch {self.epoch + 1}, pass {pas.data!r}, step {i + 1} "
                             f"(global step {self.global_step + 1})")
                    kept = (f"the last good checkpoint (epoch {self.epoch}) is kept in {self.checkpoint_dir}"
                            if self.checkpoint_dir and self.epoch else "no checkpoint was written yet")
                    raise NonFiniteLossError(f"The training loss or its gradients became NaN or infinite (loss {loss}) "
                                             f"at {where}; the step's gradients were discarded and {kept}. Fix: lower the "
                                             "learning rate, check the images and labels, or disable mixed precision.")
                for kk, v in out.items():
                    sums[kk] = sums[kk] + v if kk in sums else v
                n_steps += 1
                self.global_step += 1
                bar.update(i + 1, values=[("loss", sums["loss"] / n_steps)])
                cb.on_train_batch_end(i, {"loss": loss})
            if pas.on_end:
                pas.on_end(self)
            prefix = "" if k == 0 else f"{pas.data}_"
            logs.update(self._epoch_logs(sums, n_steps, prefix))
        logs["seconds"] = time.perf_counter() - start
        logs["lr"] = self._current_lr()
        if phase.validate and validation is not None:
            logs.update({f"val_{k}": v for k, v in self.evaluate(validation, scores=True, summary=True).items()
                         if k in ("loss", "accuracy", "eer")})
        self.epoch += 1
        self.history.append(logs)
        if self.verbose == 2 or (self.verbose == 1 and phase.validate and validation is not None):
            shown = ", ".join(f"{k} {v:.4f}" for k, v in logs.items() if isinstance(v, float) and k != "seconds")
            print(f"epoch {logs['epoch']} [{phase.name}] {shown} ({logs['seconds']:.1f} s)")
        if self._writer is not None:
            with self._writer.as_default():
                for k, v in logs.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        tf.summary.scalar(k, v, step=self.epoch)
        cb.on_epoch_end(self.epoch - 1, logs)
        return logs

    def _epoch_logs(self, sums: dict, n_steps: int, prefix: str) -> dict:
        logs = {f"{prefix}loss": sums.get("loss", math.nan) / max(n_steps, 1)}
        if "n" in sums and "correct" in sums:
            n = np.asarray(sums["n"])
            if (n > 0).any():
                logs[f"{prefix}accuracy"] = float(np.mean(np.asarray(sums["correct"])[n > 0] / n[n > 0]))
        return logs

    def _current_lr(self) -> float | None:
        for opt in self.optimizers.values():
            inner = getattr(opt, "inner_optimizer", opt)
            lr = inner.learning_rate
            try:
                return float(lr(inner.iterations) if callable(lr) else lr)
            except TypeError:
                return float(keras.ops.convert_to_numpy(lr))
        return None

    # ----- evaluation ------------------------------------------------------------------------
    def _eval_step(self, element_spec):
        key = str(element_spec)
        if self._eval_fn is None or self._eval_fn[0] != key:
            model, loss = self.model, self.loss

            def step(x, y):
                outputs = model(x, training=False)
                _, logs = loss(y, outputs)
                scores = tf.stack([tf.cast(outputs[t][:, 1], tf.float32) for t in self.tasks], axis=1)
                # scores (batch, tasks) and the per-task sums (3, tasks): two transfers per batch
                return scores, tf.stack([logs["ce"], logs["n"], logs["correct"]])

            self._eval_fn = (key, tf.function(step, input_signature=list(element_spec)))
        return self._eval_fn[1]

    def evaluate(self, source, *, scores: bool = True, summary: bool = False) -> dict:
        """Loss, accuracy and scores on a data source (no augmentation, no weight changes).

        Returns:
            ``{"loss", "accuracy", "eer", "per_task": {task: {"loss", "accuracy", "n"}},
            "scores": {task: (n,) P(compliant)}, "labels": {task: (n,)}}``; "eer" is the mean
            FVC EER over tasks where it is defined (NaN if none).
        """
        from .metrics import evaluate_tasks

        ds = _dataset(source, 0, False)
        step = self._eval_step(ds.element_spec)
        totals = np.zeros((3, len(self.tasks)))
        out_scores, out_labels = [], []
        for x, y in ds:
            s, logs = step(x, y)
            totals += logs.numpy()
            if scores:
                out_scores.append(s.numpy())
                out_labels.append(np.stack([np.asarray(y[t]).reshape(-1) for t in self.tasks], axis=1))
        per_task = {}
        for j, t in enumerate(self.tasks):
            ce, n, correct = totals[:, j]
            per_task[t] = {"loss": ce / n if n else math.nan, "accuracy": correct / n if n else math.nan, "n": int(n)}
        loss = float(sum(self.loss.weights[t] * v["loss"] for t, v in per_task.items() if v["n"]))
        accs = [v["accuracy"] for v in per_task.values() if v["n"]]
        result = {"loss": loss, "accuracy": float(np.mean(accs)) if accs else math.nan, "per_task": per_task}
        if scores:
            s_all = np.concatenate(out_scores) if out_scores else np.zeros((0, len(self.tasks)), np.float32)
            l_all = np.concatenate(out_labels) if out_labels else np.zeros((0, len(self.tasks)), np.int32)
            result["scores"] = {t: s_all[:, j] for j, t in enumerate(self.tasks)}
            result["labels"] = {t: l_all[:, j] for j, t in enumerate(self.tasks)}
            if summary:
                m = evaluate_tasks(result["labels"], result["scores"])
                eers = [v.eer.eer for v in m.values() if v.eer.defined]
                result["eer"] = float(np.mean(eers)) if eers else math.nan
        return result

    def predict(self, source) -> dict[str, np.ndarray]:
        """P(compliant) per task for every image of ``source`` (in its order): {task: (n,)}."""
        return self.evaluate(source, scores=True)["scores"]


# ---------------------------------------------------------------------------------------------
# phase recipes of the paper

def standard_phases(epochs: int) -> list[Phase]:
    """Plain training: one phase, the whole model's trainable variables."""
    return [Phase("train", epochs)]


def finetune_phases(finetune_epochs: int, epochs: int, tasks, unfreeze: str = "all") -> list[Phase]:
    """The paper's Experiment III: train with the backbone unfrozen (``unfreeze``: "all" as the paper
    says, or "last:2", the two last layers, as its code did) for ``finetune_epochs``, then freeze it
    again and train the heads for ``epochs``. Each phase gets a fresh optimiser."""
    from .backbones import set_backbone_trainable

    def open_(engine):
        set_backbone_trainable(engine.model, tasks, unfreeze)

    def close(engine):
        set_backbone_trainable(engine.model, tasks, "frozen")

    return [Phase("finetune", finetune_epochs, setup=open_), Phase("train", epochs, setup=close)]
