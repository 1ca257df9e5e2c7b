"""The training engine: one loop for every model of the package (STL, Handcrafted, NAS children and
the architecture-search methods).

A method gives the engine its model, its **variable groups** (each with its own optimiser), its loss
functions and a schedule of **phases**. Nothing else loops over epochs or batches.

- A :class:`Phase` runs for some epochs (warm-up, search, fine-tune, train, ...). Its ``setup`` runs
  when it begins (freeze a backbone, rewind to a snapshot, set masks); its ``on_end`` when it ends
  (take a snapshot). It may stop early on its own patience.
- Each epoch of a phase is a sequence of :class:`Pass` es. A pass interleaves one or more
  :class:`Step` kinds batch by batch, ``A, B, A, B, ...``: e.g. one weight step on stream "w" then
  one architecture step on stream "a". It ends when a stream that restarts with every pass is
  exhausted, or after ``max_steps`` rounds; streams marked ``continuing`` go on across passes and
  epochs, restarting with a new shuffle only when they run out.
- A step takes one batch of its stream and runs its loss functions in order; each makes its own
  forward, backward and update. A loss function returns one loss (that updates all the step's
  groups) or ``{group: loss}`` (each group updated from its own loss, from one forward). Every
  scalar it returns in its logs (a reward, an entropy, an expected cost, a temperature) is averaged
  over the epoch and reaches the progress bar, ``history`` and TensorBoard.
- Loss functions see a :class:`StepContext`: the training flag, the phase, the global step, the
  epoch, the step within the phase and the phase's total, and a per-step seed for stateless
  sampling (a Gumbel draw, a Bernoulli mask, an epsilon-greedy choice).

The engine owns, for every method: one traced function per step kind and phase (the dataset iterator
goes into the graph, as in ``keras.Model.fit``), mixed precision, ``tf.distribute``
(MirroredStrategy; MultiWorkerMirroredStrategy through ``TF_CONFIG``), progress bars, TensorBoard
scalars, Keras callbacks, a checkpoint after every epoch with exact resume, model selection on a
validation metric, early stopping, and a stop with a clear error on a NaN loss or a collapsed model.

**Exact resume.** A checkpoint (``run_dir/checkpoints/last.npz``, written atomically after every
epoch) holds every variable of the model (seed-generator states included, so dropout continues its
random stream), every optimiser's slots, the registered stateful parts (:meth:`Engine.register`: a
policy network, a reward baseline, a NumPy or TensorFlow random generator, any object with
``get_state`` / ``set_state``), the named snapshots (:meth:`Engine.snapshot`), the positions of the
continuing streams, the history, the best epoch and the early-stopping counter. Data sources are
functions of an epoch index (:class:`~icao_mtl.data.ImagePipeline` shuffles and augments from
``(seed, epoch)``), so a run killed at any point and resumed computes what the uninterrupted run
computes. A kill in the middle of an epoch redoes that epoch from its start.

**Non-finite steps.** A step whose loss or gradients are NaN or infinite makes no update at all (no
optimiser slot moves, ``iterations`` does not advance), every later step of the run is skipped, and
:class:`~icao_mtl.errors.NonFiniteLossError` names the step; the last good checkpoint stays on disk.

Example::

    engine = Engine(model, tasks, optimizer=optimizer_factory("adam", 1e-3), run_dir="runs/x")
    history = engine.fit([Phase("train", epochs=10)], data={"train": train_pipeline}, validation=val_pipeline)
    scores = engine.predict(test_pipeline)        # {task: P(compliant), shape (n,)}

A search with its own optimiser for the architecture variables, one weight step then one
architecture step per round on the two halves of a split redrawn every epoch::

    halves = SplitView(train_pipeline, fraction=0.5, seed=0)
    groups = {"weights": VariableGroup("weights", adam, lambda m: m.weight_variables()),
              "arch": VariableGroup("arch", adam, lambda m: m.arch_variables())}
    search = Phase("search", 20, passes=[Pass(steps=[Step("w", ("weights",), [weight_loss]),
                                                      Step("a", ("arch",), [arch_loss])])])
    engine = Engine(model, tasks, groups=groups, run_dir="runs/s", monitor="loss")
    engine.fit([Phase("warmup", 5, on_end=lambda e: e.snapshot("warmup")), search],
               {"w": halves.part(0), "a": halves.part(1)})
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
from typing import Any, Callable, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

from . import io as aio
from .errors import CollapsedModelError, ConfigError, NonFiniteLossError, ResumeError
from .losses import MaskedMultiTaskLoss

MONITORS = {"val_accuracy": "max", "val_loss": "min", "val_eer": "min", "loss": "min", "accuracy": "max"}

#: Version of the checkpoint layout; a checkpoint of another version is refused with a clear error.
CHECKPOINT_FORMAT = 2

#: Log names that are sums over replicas (the loss is normalised by the global batch); every other
#: scalar a loss returns is a per-replica statistic and is averaged over replicas.
_SUMMED_LOGS = ("loss", "ce", "n", "correct", "nonfinite", "severity_loss", "pose_loss", "landmark_loss", "landmark_map_loss")

#: Validation scores whose range (max - min) is below this on every task: the model says the same
#: thing for every image.
COLLAPSE_RANGE = 1e-6


# ---------------------------------------------------------------------------------------------
# what a method gives the engine

@dataclass
class VariableGroup:
    """Variables updated together by one optimiser.

    Attributes:
        name: group name, referred to by steps.
        optimizer: a factory returning a fresh optimiser; called at the start of every phase that
            updates the group (a phase may change which variables are trainable). A learning-rate
            schedule continues over the run: a phase's new optimiser starts the schedule where the
            group's previous phase left it (unless the phase says ``restart_schedules``).
        variables: function of the model returning the variables (default: all trainable ones). It
            may return variables that are not the model's (a policy network's, registered with
            :meth:`Engine.register` so that they are checkpointed).
        reuse: keep the group's optimiser across phases and ``fit`` calls while the variables are the
            same: at a phase's start it is reset (slots and iteration count zeroed: the state of a
            fresh one) instead of made anew, so the traced steps are reused, not traced again. For
            training many models in turn by assignment (a search's children); needs a constant
            learning rate (a schedule would restart, not continue).
    """

    name: str
    optimizer: Callable[[], keras.optimizers.Optimizer]
    variables: Callable[[keras.Model], list] | None = None
    reuse: bool = False

    def collect(self, model) -> list:
        return list(self.variables(model) if self.variables else model.trainable_variables)


class StepContext(NamedTuple):
    """What a loss function knows about the step it is part of (tensors are int64 scalars).

    Attributes:
        training: the ``training`` flag of the step (batch-norm and dropout behaviour).
        phase: the phase's name.
        step: global step: optimisation steps of the run before this one (all kinds).
        epoch: global epoch (0-based) of the running epoch.
        phase_epoch: epoch within the phase (0-based).
        phase_step: steps of this phase before this one.
        phase_steps: the steps the whole phase makes (-1 when a stream does not know its length);
            ``phase_step / phase_steps`` is the progress of an annealing schedule.
        seed: int32 (2,) stateless seed unique to this step (``tf.random.stateless_*``).
    """

    training: bool
    phase: str
    step: Any
    epoch: Any
    phase_epoch: Any
    phase_step: Any
    phase_steps: Any
    seed: Any

    def seed_for(self, index: int):
        """Another stateless seed of this step, for the ``index``-th independent draw."""
        return tf.random.experimental.stateless_fold_in(self.seed, index)


@dataclass
class Step:
    """One kind of optimisation step: a batch of a data stream, then its loss functions in order.

    Attributes:
        data: name of the data stream (a key of ``fit(data=...)``).
        groups: variable groups updated by the step's losses.
        losses: loss functions ``fn(model, x, y, ctx) -> (loss, logs)`` (``ctx``: a
            :class:`StepContext`). ``loss`` is a scalar (it updates every group of ``groups``) or a dict
            ``{group: scalar}`` (each group from its own loss, all from the one forward; ``logs["loss"]``,
            if given, is what is logged as the loss, else the first group's). ``logs`` may hold the
            per-task vectors ``ce``, ``n``, ``correct`` (for the accuracy) and any scalars. Each function
            makes its own forward, backward and update, in order (e.g. one per task, as BMTAS's weight
            step). Default: the engine's masked multi-task loss.
        training: the ``training`` flag of the forward pass.
        name: prefix of this step's logs (default: ``data``); the first step of a phase's first pass
            logs without prefix ("loss", "accuracy").
        continuing: the stream goes on across passes and epochs (restarting, reshuffled, only when it
            runs out) instead of restarting with every pass; a pass does not end because of it.
    """

    data: str = "train"
    groups: tuple = ("model",)
    losses: Sequence[Callable] | None = None
    training: bool = True
    name: str | None = None
    continuing: bool = False

    @property
    def label(self) -> str:
        return self.name or self.data


@dataclass
class Pass:
    """A stretch of an epoch: its steps interleaved batch by batch (``A, B, A, B, ...``).

    Either ``steps`` or, for the common case of one step kind, the shorthand fields ``data``,
    ``groups``, ``losses``, ``training`` (those of a :class:`Step`).

    Attributes:
        on_begin, on_end: hooks ``fn(engine)`` before and after the pass (e.g. reset an optimiser).
        max_steps: stop after this many rounds (default: when a non-continuing stream ends; needed
            when every stream is continuing).
        steps_per_call: run up to this many steps in one traced call (a loop inside the graph, as
            ``steps_per_execution`` in ``keras.Model.compile``): one host round trip per call instead
            of per step, for small models whose steps take about a millisecond. Only for a pass of
            one step kind on a stream that is not continuing, without per-step schedules or batch
            callbacks, on one replica; the progress bar and the logs advance per call.
        jit_compile: compile each step (forward, losses, backward, the optimisers' updates) with XLA.
            For small models whose step is many small operations: XLA fuses them (the branch-depth
            search's population head: 4.2-5.0 ms a step without, 1.9-2.2 ms with, on 2 CPU cores),
            where a convolutional network's CPU step got slower. One replica only; results agree
            with the uncompiled step to float rounding, not bit for bit.
    """

    data: str = "train"
    groups: tuple = ("model",)
    losses: Sequence[Callable] | None = None
    training: bool = True
    on_begin: Callable | None = None
    on_end: Callable | None = None
    max_steps: int | None = None
    steps: Sequence[Step] = ()
    steps_per_call: int = 1
    jit_compile: bool = False

    def __post_init__(self):
        if not self.steps:
            self.steps = (Step(self.data, tuple(self.groups), self.losses, self.training),)
        self.steps = tuple(self.steps)


@dataclass
class Schedule:
    """A value assigned to a variable before every step (``per_step``) or every epoch.

    ``fn(epoch, step)`` gets the epoch within the phase (0-based) and the step within the epoch's
    pass (0 at the epoch start), e.g. a Gumbel-softmax temperature annealed linearly. (A loss
    function can also compute such a value in the graph from its :class:`StepContext`.)"""

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
        setup: ``fn(engine)`` run when the phase begins (freeze or unfreeze the backbone, rewind to a
            snapshot, set masks). When a run resumes inside the phase it runs again, then the
            checkpoint's values are restored over its changes (its structural effects, such as
            trainable flags, stay); when a run resumes at the phase's start it runs after the restore,
            as in an uninterrupted run.
        on_end: ``fn(engine)`` run after the phase's last epoch (or its early stop), before the
            checkpoint of that epoch is written (e.g. :meth:`Engine.snapshot`).
        schedules: variables set from the epoch and step.
        validate: evaluate on the validation data at the end of each epoch.
        select_best: this phase's epochs compete for the best model and count for its patience.
        patience: stop the phase after this many epochs in a row without improvement of the
            monitored value (default: the engine's ``patience``); the next phase then begins.
        restart_schedules: the groups' learning-rate schedules start again at this phase's start.
    """

    name: str
    epochs: int
    passes: Sequence[Pass] = (Pass(),)
    setup: Callable | None = None
    on_end: Callable | None = None
    schedules: Sequence[Schedule] = ()
    validate: bool = True
    select_best: bool = True
    patience: int | None = None
    restart_schedules: bool = False


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


def native_bfloat16_cpu(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU computes bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, from
    ``/proc/cpuinfo``) with TensorFlow's oneDNN kernels on: there mixed bfloat16 convolutions run
    faster than float32 ones (the default model's training step 1.37x, ``benchmarks/bench_precision.py``);
    elsewhere bfloat16 is emulated and slower."""
    if not _onednn_variable(default="1"):
        return False
    try:
        flags = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def onednn_kernels_on() -> bool:
    """Whether TensorFlow computes with its oneDNN kernels in this process: ``TF_ENABLE_ONEDNN_OPTS``
    as it was when TensorFlow was imported (``import icao_mtl`` sets it to 1 where it is unset; on an
    AVX2 CPU the default model's training step is about 1.75 times as fast, ``benchmarks/bench_onednn.py``).
    Two runs that differ in it compute the same model with another order of sums."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow without this probe: the variable as it is now
        return _onednn_variable(default="0")
    return bool(_pywrap_util_port.IsMklEnabled())


def _onednn_variable(default: str) -> bool:
    """``TF_ENABLE_ONEDNN_OPTS`` read as TensorFlow reads it (0 / false: off), ``default`` where unset."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", default).strip() not in ("0", "false", "False")


def resolve_precision(mode: str | None) -> str:
    """The Keras dtype policy that ``--mixed-precision mode`` gives on this machine: "none" (or
    "float32") float32; "float16" / "bfloat16" mixed_float16 / mixed_bfloat16; "auto" (the default) mixed
    bfloat16 on a CPU that computes bfloat16 natively (:func:`native_bfloat16_cpu`) and on a GPU of
    compute capability 8.0 or more, mixed_float16 on an older GPU, float32 elsewhere. Variables and
    the outputs stay float32 under every policy, and so does a network's input stage
    (:data:`~icao_mtl.backbones.INPUT_STAGE_DTYPE`)."""
    if mode in (None, "none", "float32"):
        return "float32"
    if mode == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:  # bfloat16 (no loss scaling) from compute capability 8.0 (Ampere) on, float16 before
            capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0)
            return "mixed_bfloat16" if tuple(capability) >= (8, 0) else "mixed_float16"
        return "mixed_bfloat16" if native_bfloat16_cpu() else "float32"
    if mode in ("float16", "bfloat16"):
        return f"mixed_{mode}"
    raise ConfigError(f"Unknown mixed precision mode {mode!r}. Fix: use none, auto, float16 or bfloat16.")


def set_precision(mode: str | None) -> str:
    """Set Keras' global dtype policy to :func:`resolve_precision` (``mode``). Call before building
    models. Returns the policy name."""
    policy = resolve_precision(mode)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def optimizer_factory(name: str = "adam", lr: float = 1e-3, *, schedule: str = "constant", epochs: int = 1,
                      steps_per_epoch: int = 1, **kwargs) -> Callable[[], keras.optimizers.Optimizer]:
    """A factory of fresh optimisers.

    Args:
        name: "adam", "adamax", "adamw", "sgd", "sgd_nesterov" (SGD with Nesterov momentum, 0.9 unless
            ``momentum`` is given), "rmsprop", "adagrad" or "adadelta".
        lr: initial learning rate.
        schedule: "constant"; "reference" (the paper code's Adam ``decay=lr/epochs``, which Keras 2
            applied per iteration as ``lr / (1 + decay * t)`` and Keras 3 silently ignores: here an
            ``InverseTimeDecay``); or "cosine" (cosine decay to 0 over ``epochs * steps_per_epoch``
            steps of the run; the engine continues it across phases).
        **kwargs: passed to the optimiser (e.g. ``weight_decay``, ``clipnorm``, ``epsilon``). A
            ``weight_decay`` is Keras' decoupled one (every step, ``w -= lr * weight_decay * w``), on the
            kernels only: biases and batch normalisation's scales and offsets are left out.
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
    if name == "sgd_nesterov":
        kwargs = {"momentum": 0.9, **kwargs, "nesterov": True}
    cls = keras.optimizers.SGD if name == "sgd_nesterov" else classes[name]
    try:  # a keyword the optimiser does not take fails here, not in the first epoch
        cls(lr, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Optimizer {name!r} does not accept {sorted(kwargs)}: {exc}") from exc

    def make():
        if schedule == "reference":
            rate = keras.optimizers.schedules.InverseTimeDecay(lr, decay_steps=1, decay_rate=lr / max(epochs, 1))
        elif schedule == "cosine":
            rate = keras.optimizers.schedules.CosineDecay(lr, max(1, epochs * steps_per_epoch))
        else:
            rate = lr
        optimizer = cls(rate, **kwargs)
        if kwargs.get("weight_decay"):
            # shrinking a bias or a normalisation's scale does not regularise what the kernels learn
            optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        return optimizer

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


class ContinuedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule(step + offset)``: a learning-rate schedule that a new optimiser continues from the
    step where the previous phase's optimiser of the same group stopped."""

    def __init__(self, schedule, offset: int):
        self.schedule, self.offset = schedule, int(offset)

    def __call__(self, step):
        return self.schedule(step + self.offset)

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "offset": self.offset}


def _dataset(source, epoch: int, training: bool):
    """The dataset of a source: a pipeline's ``train(epoch)`` or ``eval()``, a function of the epoch,
    or a dataset as it is; without tf.data's autotuning (:data:`_PIPELINE_OPTIONS`)."""
    if training and hasattr(source, "train"):
        ds = source.train(epoch)
    elif not training and hasattr(source, "eval"):
        ds = source.eval()
    elif callable(source) and not isinstance(source, tf.data.Dataset):
        ds = source(epoch)
    else:
        ds = source
    return ds.with_options(_pipeline_options()) if isinstance(ds, tf.data.Dataset) else ds


def _pipeline_options() -> tf.data.Options:
    """tf.data options of every dataset the engine iterates: autotuning off. Deleting an iterator waits
    for the autotuning thread's next wake-up, which on a busy CPU came up to 4.6 s after the last batch
    (2 cores: 1 epoch in 2 of Handcrafted 2 at 128 px padded from 7 s to 10.3 s, and 41 s epochs instead
    of 31 s in the default run; ``Model.fit`` pays it too). Without it, parallel maps use one thread per
    core and the pipeline's throughput was the same (1,630-1,730 images/s at 128 px, 540-675 at 224 px,
    augmented, both ways)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def _steps(source) -> int | None:
    steps = getattr(source, "steps", None)
    return int(steps) if steps is not None else None


def _gradients(tape, loss, variables) -> list:
    """d loss / d variables, zeros for the variables the loss does not reach (TensorFlow's
    ``UnconnectedGradients.ZERO`` fails on Keras 3 variables, whose dtype is a string)."""
    grads = tape.gradient(loss, variables)
    return [tf.zeros(v.shape, v.dtype) if g is None else g for g, v in zip(grads, variables)]


def _call(fn, *args):
    """``fn(*args)``; an error of this package raised while ``fn`` was traced (AutoGraph wraps it in a
    ``StagingError``) is raised as itself, with its message and fix."""
    try:
        return fn(*args)
    except tf.errors.OutOfRangeError:
        raise
    except Exception as exc:
        from .errors import IcaoMtlError

        inner = exc.__context__
        while inner is not None and not isinstance(inner, IcaoMtlError):
            inner = inner.__context__
        if inner is not None and not isinstance(exc, IcaoMtlError):
            raise inner from None
        raise


def _overrides(callback, name: str) -> bool:
    return getattr(type(callback), name, None) is not getattr(keras.callbacks.Callback, name)


# ---------------------------------------------------------------------------------------------
# stateful parts

def _part_arrays(part) -> tuple[dict, Any]:
    """(arrays, JSON state) of a registered part."""
    if isinstance(part, np.random.Generator):
        return {}, part.bit_generator.state
    if isinstance(part, tf.random.Generator):
        return {"state": part.state.numpy()}, part.algorithm
    variables = _part_variables(part)
    if variables is not None:
        return {str(i): np.asarray(v.numpy()) for i, v in enumerate(variables)}, None
    state = part.get_state()
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    return arrays, {k: v for k, v in state.items() if k not in arrays}


def _part_variables(part):
    if isinstance(part, (keras.layers.Layer, keras.Model)):
        return list(part.variables)
    if isinstance(part, (tf.Variable, keras.Variable)):
        return [part]
    if isinstance(part, (list, tuple)) and all(isinstance(v, (tf.Variable, keras.Variable)) for v in part):
        return list(part)
    return None


def _restore_part(name: str, part, arrays: dict, meta) -> None:
    if isinstance(part, np.random.Generator):
        part.bit_generator.state = meta
        return
    if isinstance(part, tf.random.Generator):
        part.reset(arrays["state"])
        return
    variables = _part_variables(part)
    if variables is not None:
        if len(arrays) != len(variables):
            raise ResumeError(f"The checkpoint's state of {name!r} holds {len(arrays)} arrays, the part has "
                              f"{len(variables)} variables. Fix: resume with the same configuration.")
        for i, v in enumerate(variables):
            v.assign(arrays[str(i)])
        return
    part.set_state({**(meta or {}), **arrays})


# ---------------------------------------------------------------------------------------------
# the engine

class Engine:
    """Trains and evaluates one model.

    Args:
        model: a Keras model whose outputs are a dict {task: (batch, 2) probabilities}.
        tasks: the task ids.
        optimizer: shortcut for ``groups={"model": VariableGroup("model", optimizer)}``.
        groups: the variable groups (their names are used by steps).
        loss: the multi-task loss (default :class:`MaskedMultiTaskLoss` with weight 1).
        run_dir: where checkpoints and TensorBoard logs go (None: nothing written).
        strategy: a tf.distribute strategy (build the model inside its scope).
        monitor: "val_accuracy" (the paper's model selection), "val_loss" (the reference code's),
            "val_eer" (mean validation EER) or "loss"/"accuracy" (training values, no validation).
        patience: stop a phase after this many epochs in a row without improvement of ``monitor``
            (as ``keras.callbacks.EarlyStopping(patience=...)``; None: never).
        verbose: 0 silent, 1 progress bars, 2 one line per epoch.
        tensorboard: write TensorBoard scalars under ``run_dir/tensorboard``.
        eer_method: the EER definition of ``val_eer`` ("fvc" or "roc").
        seed: the run's seed, the base of every step's :attr:`StepContext.seed`.
        parts: stateful parts to checkpoint with the weights (see :meth:`register`).
    """

    def __init__(self, model: keras.Model, tasks, *, optimizer: Callable | None = None,
                 groups: dict[str, VariableGroup] | None = None, loss: MaskedMultiTaskLoss | None = None,
                 run_dir: str | os.PathLike | None = None, strategy=None, monitor: str = "val_accuracy",
                 patience: int | None = None, verbose: int = 1, tensorboard: bool = True, eer_method: str = "fvc",
                 seed: int = 0, parts: dict | None = None):
        if groups is None:
            if optimizer is None:
                raise ConfigError("Engine needs an optimizer factory or variable groups.")
            groups = {"model": VariableGroup("model", optimizer)}
        if monitor not in MONITORS:
            raise ConfigError(f"Unknown monitor {monitor!r}. Fix: use one of {', '.join(MONITORS)}.")
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ConfigError(f"patience must be a positive integer (or None). Received: {patience!r}.")
        if eer_method not in ("fvc", "roc"):
            raise ConfigError(f"eer_method must be fvc or roc. Received: {eer_method!r}.")
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
        self.eer_method = eer_method
        self.seed = int(seed)
        self.parts: dict[str, Any] = {}
        for name, part in (parts or {}).items():
            self.register(name, part)
        self.optimizers: dict[str, keras.optimizers.Optimizer] = {}
        self.history: list[dict] = []
        self.best: dict | None = None
        self.phase: Phase | None = None
        self.phase_epoch = 0  # epochs done in the running phase
        self.epoch = 0  # completed epochs of the run
        self.global_step = 0  # optimisation steps of the run
        self.collapse: dict | None = None  # set when the validation scores became constant
        self._snapshots: dict[str, dict] = {}
        self._cursors: dict[str, list] = {}  # continuing stream -> [cycle, position]
        self._group_steps: dict[str, int] = {}  # optimiser steps per group in finished phases
        self._best_weights: list | None = None
        self._writer = None
        self._eval_fn = None
        self._compiled: dict = {}  # (step id, phase, optimiser ids, many) -> (function, layout, step)
        self._kept_optimizers: dict = {}  # reused group -> (ids of its variables, optimiser)
        self._phase_step = 0  # steps of the running phase
        self._patience = {"best": None, "wait": 0}  # the running phase's best value and epochs since
        self._collapsed_epochs = 0
        self._callbacks = keras.callbacks.CallbackList([])
        self._batch_callbacks = False
        # engine-side state the traced steps read and update (not checkpointed: reset by every fit)
        self._counters = tf.Variable(tf.zeros([5], tf.int64), trainable=False, name="engine_counters")
        self._halted = tf.Variable(False, trainable=False, name="engine_halted")
        self._bad_step = tf.Variable(tf.constant(-1, tf.int64), trainable=False, name="engine_bad_step")

    # ----- stateful parts and snapshots -------------------------------------------------------
    def register(self, name: str, part) -> None:
        """Checkpoint ``part`` with the weights and restore it on resume.

        ``part`` is a Keras layer or model (its variables), a variable or list of variables, a
        ``np.random.Generator`` or ``tf.random.Generator``, or any object with ``get_state() -> dict``
        (NumPy arrays and JSON values) and ``set_state(dict)``."""
        ok = (_part_variables(part) is not None or isinstance(part, (np.random.Generator, tf.random.Generator))
              or (callable(getattr(part, "get_state", None)) and callable(getattr(part, "set_state", None))))
        if not ok:
            raise ConfigError(f"Stateful part {name!r} ({type(part).__name__}) cannot be checkpointed. Fix: give it "
                              "get_state() and set_state(state), or register its variables.")
        self.parts[name] = part

    def _variables(self) -> list:
        return list(self.model.variables)

    def snapshot(self, name: str, variables=None) -> None:
        """Keep the current values of ``variables`` (default: every variable of the model) under
        ``name``; the snapshot is saved with the checkpoints, so :meth:`rewind` works after a resume."""
        all_vars = self._variables()
        index = {id(v): i for i, v in enumerate(all_vars)}
        chosen = all_vars if variables is None else list(variables)
        missing = [v.path for v in chosen if id(v) not in index]
        if missing:
            raise ConfigError(f"Snapshot {name!r}: {missing[:3]} are not variables of the model.")
        self._snapshots[name] = {"index": [index[id(v)] for v in chosen],
                                 "values": [np.array(v.numpy()) for v in chosen], "epoch": self.epoch}

    def rewind(self, name: str, variables=None) -> None:
        """Assign the values of snapshot ``name`` back (to ``variables`` only, if given: e.g. the network
        weights but not the architecture gates)."""
        if name not in self._snapshots:
            raise ConfigError(f"No snapshot named {name!r} (taken: {sorted(self._snapshots) or 'none'}). Fix: take it "
                              "with engine.snapshot(name) in an earlier phase (e.g. its on_end).")
        snap = self._snapshots[name]
        all_vars = self._variables()
        keep = None if variables is None else {id(v) for v in variables}
        for i, value in zip(snap["index"], snap["values"]):
            if keep is None or id(all_vars[i]) in keep:
                all_vars[i].assign(value)

    @property
    def snapshots(self) -> list[str]:
        return sorted(self._snapshots)

    # ----- checkpoints -----------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

    def _fingerprint(self, phases) -> str:
        # shapes and dtypes, not paths: Keras numbers auto-named layers and seed generators per process
        shapes = [(tuple(v.shape), str(v.dtype)) for v in self._variables()]
        plan = [(p.name, p.epochs, [[(s.label, s.data, tuple(s.groups), s.continuing) for s in ps.steps]
                                    for ps in p.passes]) for p in phases]
        return hashlib.sha256(json.dumps([shapes, plan, list(self.tasks), sorted(self.parts)],
                                         default=str).encode()).hexdigest()[:16]

    def _save(self, name: str, state: dict, *, full: bool) -> None:
        """Write ``checkpoints/<name>.npz`` atomically: the model's variables and ``state``; with ``full``
        also the optimisers, the stateful parts and the snapshots."""
        if not (self.checkpoint_dir and self.chief):
            return
        arrays = {f"w{i}": np.asarray(v.numpy()) for i, v in enumerate(self._variables())}
        state = {**state, "format": CHECKPOINT_FORMAT}
        if full:
            for g, opt in self.optimizers.items():
                for i, v in enumerate(opt.variables):
                    arrays[f"o:{g}:{i}"] = np.asarray(v.numpy())
            meta = {}
            for pname, part in self.parts.items():
                part_arrays, meta[pname] = _part_arrays(part)
                for k, a in part_arrays.items():
                    arrays[f"p:{pname}:{k}"] = np.asarray(a)
            state["parts"] = meta
            state["snapshots"] = {}
            for sname, snap in self._snapshots.items():
                state["snapshots"][sname] = {"index": snap["index"], "epoch": snap["epoch"]}
                for j, value in enumerate(snap["values"]):
                    arrays[f"s:{sname}:{j}"] = value
        arrays["state"] = np.frombuffer(aio.to_json(state, indent=None).encode(), dtype=np.uint8)
        buf = _io.BytesIO()
        np.savez(buf, **arrays)
        aio.write_bytes(self.checkpoint_dir / f"{name}.npz", buf.getvalue())

    def _load(self, name: str):
        path = self.checkpoint_dir / f"{name}.npz"
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in f.files}
            state = json.loads(arrays.pop("state").tobytes().decode())
        except (OSError, ValueError, KeyError) as exc:
            raise ResumeError(f"The checkpoint {path} cannot be read ({exc}). Fix: delete it to restart that run, or "
                              "restore it from a backup.") from exc
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ResumeError(f"The checkpoint {path} was written by another version of the engine (format "
                              f"{state.get('format', 1)}, this one reads {CHECKPOINT_FORMAT}). Fix: train into a new "
                              "--out directory.")
        return arrays, state

    def _restore_weights(self, arrays) -> None:
        variables = self._variables()
        n = sum(1 for k in arrays if k.startswith("w"))
        if n != len(variables):
            raise ResumeError(f"The checkpoint holds {n} variable arrays but the model has {len(variables)}. Fix: "
                              "resume with the configuration that wrote it, or start a new run directory.")
        for i, v in enumerate(variables):
            v.assign(arrays[f"w{i}"])

    def _restore_optimizers(self, arrays) -> None:
        for g, opt in self.optimizers.items():
            saved = sorted((int(k.split(":")[2]), k) for k in arrays if k.startswith(f"o:{g}:"))
            if len(saved) != len(opt.variables):
                raise ResumeError(f"The checkpoint's optimizer state for group {g!r} does not match ({len(saved)} vs "
                                  f"{len(opt.variables)} variables). Fix: resume with the same configuration.")
            for (i, k), v in zip(saved, opt.variables):
                v.assign(arrays[k])

    def _restore_state(self, arrays, state) -> None:
        """The model's variables and the stateful parts (the optimisers are restored once their phase
        has built them; the snapshots by :meth:`_restore_snapshots`, before any setup may rewind)."""
        self._restore_weights(arrays)
        meta = state.get("parts", {})
        if set(meta) != set(self.parts):
            raise ResumeError(f"The checkpoint's stateful parts {sorted(meta)} differ from this run's "
                              f"{sorted(self.parts)}. Fix: resume with the same configuration.")
        for pname, part in self.parts.items():
            prefix = f"p:{pname}:"
            _restore_part(pname, part, {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)},
                          meta[pname])

    def _restore_snapshots(self, arrays, state) -> None:
        self._snapshots = {}
        for sname, snap in state.get("snapshots", {}).items():
            self._snapshots[sname] = {"index": snap["index"], "epoch": snap["epoch"],
                                      "values": [arrays[f"s:{sname}:{j}"] for j in range(len(snap["index"]))]}

    def _state(self, fingerprint: str, phase_index: int, phase_epoch: int, stopped: bool) -> dict:
        return {"fingerprint": fingerprint, "history": self.history, "best": self.best, "epoch": self.epoch,
                "global_step": self.global_step, "phase_index": phase_index, "phase_epoch": phase_epoch,
                "patience": self._patience, "stopped": stopped, "cursors": self._cursors,
                "group_steps": self._group_steps,
                "phase_step": self._phase_step,
                "collapse": self.collapse, "collapsed_epochs": self._collapsed_epochs}

    # ----- phases ----------------------------------------------------------------------------
    def _begin_phase(self, phase: Phase, *, setup: bool = True) -> None:
        self.phase = phase
        if setup and phase.setup:
            phase.setup(self)
        used = {g for p in phase.passes for s in p.steps for g in s.groups}
        unknown = used - set(self.groups)
        if unknown:
            raise ConfigError(f"Phase {phase.name!r} updates unknown variable groups {sorted(unknown)}; known: "
                              f"{sorted(self.groups)}.")
        self.optimizers = {}
        with self.strategy.scope():
            for g in sorted(used):
                group = self.groups[g]
                if group.reuse:
                    variables = group.collect(self.model)
                    kept = self._kept_optimizers.get(g)
                    if kept is not None and kept[0] == tuple(id(v) for v in variables):
                        reset_optimizer(kept[1])
                        self.optimizers[g] = kept[1]
                        continue
                opt = group.optimizer()
                inner = getattr(opt, "inner_optimizer", opt)
                rate = getattr(inner, "_learning_rate", None)
                if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) and not phase.restart_schedules:
                    inner._learning_rate = ContinuedSchedule(rate, self._group_steps.get(g, 0))
                if keras.mixed_precision.global_policy().name == "mixed_float16" and not isinstance(
                        opt, keras.optimizers.LossScaleOptimizer):
                    opt = keras.optimizers.LossScaleOptimizer(opt)
                variables = self.groups[g].collect(self.model)
                if not variables:
                    raise ConfigError(f"Variable group {g!r} has no trainable variables in phase {phase.name!r}.")
                if group.reuse and isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
                    raise ConfigError(f"Variable group {g!r} reuses its optimiser, which needs a constant learning "
                                      "rate (a schedule would restart with every phase). Fix: give a constant rate, "
                                      "or reuse=False.")
                opt.build(variables)
                self.optimizers[g] = opt
                if group.reuse:
                    self._kept_optimizers[g] = (tuple(id(v) for v in variables), opt)
        # traced steps of optimisers no longer in use are dropped (those of reused ones stay valid)
        current = {id(o) for o in self.optimizers.values()}
        self._compiled = {k: v for k, v in self._compiled.items() if set(k[2]) <= current}

    def _end_phase(self, phase: Phase) -> None:
        for g, opt in self.optimizers.items():
            self._group_steps[g] = self._group_steps.get(g, 0) + int(np.asarray(getattr(opt, "inner_optimizer", opt).iterations.numpy()))
        if phase.on_end:
            phase.on_end(self)

    # ----- the traced step ---------------------------------------------------------------------
    def task_loss(self, model, x, y, ctx: StepContext):
        """The default loss: the engine's masked multi-task loss, plus the model's own losses."""
        outputs = model(x, training=ctx.training)
        loss, logs = self.loss(y, outputs)
        if model.losses:
            loss = loss + tf.add_n([tf.cast(l, tf.float32) for l in model.losses])
        return loss, logs

    def _compile(self, step: Step, many: bool = False, jit: bool = False):
        """One tf.function per step kind and phase: ``fn(iterator) -> packed logs`` (one transfer); with
        ``many``, ``fn(iterator, limit)`` runs up to ``limit`` steps in a graph loop and returns their
        summed logs, the number of steps made last; with ``jit``, the step itself is compiled by XLA."""
        groups = tuple(step.groups)
        key = (id(step), self.phase.name, tuple(id(self.optimizers[g]) for g in groups), many, jit)
        cached = self._compiled.get(key)
        if cached is not None and cached[2] is step:
            return cached[:2]
        model, strategy = self.model, self.strategy
        var_lists = {g: self.groups[g].collect(model) for g in groups}
        opts = {g: self.optimizers[g] for g in groups}
        losses = list(step.losses) if step.losses else [self.task_loss]
        scaled = {g: isinstance(o, keras.optimizers.LossScaleOptimizer) for g, o in opts.items()}
        training, phase_name, seed = step.training, self.phase.name, self.seed
        counters, halted, bad_step = self._counters, self._halted, self._bad_step

        def apply_if(ok, grads_by_group):
            def apply():
                for g in grads_by_group:
                    opts[g].apply(grads_by_group[g], var_lists[g])

            replica = tf.distribute.get_replica_context()
            if replica is None or replica.num_replicas_in_sync == 1 or \
                    tf.__internal__.distribute.strategy_supports_no_merge_call():
                tf.cond(ok, apply, lambda: None)
                return

            # A cond in a replica context cannot hold the optimisers' merge_call: decide in the
            # cross-replica context (as keras' LossScaleOptimizer does), every replica agreeing on ok.
            def merge(distribution, ok_per_replica, grads):
                ok0 = distribution.experimental_local_results(ok_per_replica)[0]

                def apply_all():
                    def per_replica(g_by):
                        for g in g_by:
                            opts[g].apply(g_by[g], var_lists[g])
                    distribution.extended.call_for_each_replica(per_replica, args=(grads,))

                tf.cond(ok0, apply_all, lambda: None)

            replica.merge_call(merge, args=(ok, grads_by_group))

        def body(x, y, ctx_values, was_halted):
            # Every op of the step waits for the batch: when the iterator is exhausted, nothing stateful
            # (a seed generator, a noise counter, a batch-norm average) may run without data.
            with tf.control_dependencies(tf.nest.flatten((x, y))):
                return step_body(x, y, ctx_values, was_halted)

        if jit:  # the iterator stays outside: XLA compiles the step, the graph loop feeds it
            body = tf.function(body, jit_compile=True, reduce_retracing=True)

        def step_body(x, y, ctx_values, was_halted):
            ctx = StepContext(training, phase_name, ctx_values[0], ctx_values[1], ctx_values[2], ctx_values[3],
                              ctx_values[4], tf.stack([tf.constant(seed, tf.int32), tf.cast(ctx_values[0], tf.int32)]))
            replica = tf.distribute.get_replica_context()
            total: dict = {}
            for fn in losses:
                with tf.GradientTape(persistent=True) as tape:
                    loss, logs = fn(model, x, y, ctx)
                    per_group = loss if isinstance(loss, dict) else {g: loss for g in groups}
                    extra = set(per_group) - set(groups)
                    if extra:
                        raise ConfigError(f"A loss of step {step.label!r} returned losses for groups {sorted(extra)} "
                                          f"that the step does not update ({list(groups)}).")
                    targets = {g: opts[g].scale_loss(l) if scaled[g] else l for g, l in per_group.items()}
                grads = {g: _gradients(tape, targets[g], var_lists[g]) for g in per_group}
                del tape
                finite = tf.reduce_all([tf.math.is_finite(tf.cast(l, tf.float32)) for l in per_group.values()])
                unscaled = [g for g in per_group if not scaled[g]]  # a loss-scale optimizer handles overflow itself
                if unscaled:
                    norm = tf.linalg.global_norm([t for g in unscaled for t in grads[g]])
                    finite = tf.logical_and(finite, tf.math.is_finite(norm))
                bad = 1.0 - tf.cast(finite, tf.float32)
                if replica is not None and replica.num_replicas_in_sync > 1:
                    bad = tf.minimum(replica.all_reduce(tf.distribute.ReduceOp.SUM, bad), 1.0)
                ok = tf.logical_and(bad < 0.5, tf.logical_not(was_halted))
                apply_if(ok, grads)
                logs = dict(logs)
                shown = logs.pop("loss", per_group[groups[0]] if groups[0] in per_group else next(iter(per_group.values())))
                logs["loss"] = tf.reshape(tf.cast(shown, tf.float32), [])
                logs["nonfinite"] = bad
                for k, v in logs.items():
                    v = tf.cast(v, tf.float32)
                    if v.shape.rank == 0 or k in ("ce", "n", "correct"):
                        total[k] = total.get(k, 0.0) + v
            return total

        layout: list = []  # (log name, size), the order of the packed vector, fixed when traced

        def run(iterator):
            return one(*next(iterator))

        def one(x, y):
            ctx_values = counters.read_value()
            was_halted = halted.read_value()
            per_replica = strategy.run(body, args=(x, y, ctx_values, was_halted))
            reduced = {}
            for k, v in per_replica.items():
                if strategy.num_replicas_in_sync > 1:
                    op = tf.distribute.ReduceOp.SUM if k in _SUMMED_LOGS else tf.distribute.ReduceOp.MEAN
                    v = strategy.reduce(op, v, axis=None)
                reduced[k] = tf.reshape(v, [-1])
            layout[:] = [(k, int(reduced[k].shape[0])) for k in sorted(reduced)]
            # one tensor, so the host reads every log of the step in a single transfer
            packed = tf.concat([reduced[k] for k, _ in layout], axis=0)
            with tf.control_dependencies([packed]):
                now_bad = tf.logical_and(reduced["nonfinite"][0] > 0, tf.logical_not(was_halted))
                bad_step.assign(tf.where(now_bad, ctx_values[0], bad_step))
                halted.assign(tf.logical_or(was_halted, now_bad))
                counters.assign_add(tf.constant([1, 0, 0, 1, 0], tf.int64))
            return packed

        def run_many(iterator, limit):
            first = run(iterator)  # no batch at all: OutOfRangeError, as one step

            def more(i, acc, going):
                return tf.logical_and(going, i < limit)

            def loop_body(i, acc, going):
                optional = iterator.get_next_as_optional()
                has = optional.has_value()
                acc = tf.cond(has, lambda: acc + one(*optional.get_value()), lambda: acc)
                return i + tf.cast(has, tf.int64), acc, has

            n, total, _ = tf.while_loop(more, loop_body, (tf.constant(1, tf.int64), first, tf.constant(True)))
            return tf.concat([total, tf.cast(tf.reshape(n, [1]), tf.float32)], axis=0)

        fn = tf.function(run_many if many else run, reduce_retracing=True)
        self._compiled[key] = (fn, layout, step)
        return fn, layout

    # ----- the loop --------------------------------------------------------------------------
    def fit(self, phases: Sequence[Phase], data: dict, validation=None, *, resume: bool = False,
            callbacks: Sequence[keras.callbacks.Callback] = ()) -> list[dict]:
        """Run the phases.

        Args:
            phases: the schedule.
            data: stream name -> source: an :class:`~icao_mtl.data.ImagePipeline` (its ``train(epoch)``
                is used), a :class:`~icao_mtl.data.SplitView` part, a function ``epoch -> tf.data.Dataset``,
                or a dataset. Elements are ``(inputs, {task: labels})``.
            validation: source of validation data (its ``eval()``), or None.
            resume: continue from ``run_dir/checkpoints/last.npz`` if it exists (see the module docstring).
            callbacks: Keras callbacks. ``on_epoch_end`` gets the epoch's logs; ``self.model.optimizer`` is
                the optimiser of the first group of the running phase (for ``ReduceLROnPlateau``); setting
                ``model.stop_training`` ends the schedule.

        Returns:
            The history: one dict of logs per epoch.

        Raises:
            NonFiniteLossError: the loss became NaN or infinite (the last good checkpoint is kept).
            CollapsedModelError: the validation scores became the same for every image before any
                epoch gave a usable model.
            ResumeError: the checkpoint does not belong to this configuration.
        """
        phases = list(phases)
        self._check_plan(phases, data)
        if self.monitor.startswith("val_") and validation is None:
            raise ConfigError(f"monitor={self.monitor!r} needs validation data. Fix: pass validation=..., or monitor "
                              "'loss'.")
        fingerprint = self._fingerprint(phases)
        self.history, self.best, self.epoch, self.global_step, self.collapse = [], None, 0, 0, None
        self._snapshots, self._cursors, self._group_steps, self._best_weights = {}, {}, {}, None
        self._collapsed_epochs, self._phase_step = 0, 0
        self._halted.assign(False)
        self._bad_step.assign(-1)
        position = (0, 0, False)  # phase index, epochs done in it, stopped
        resumed = None
        if resume and self.checkpoint_dir and (self.checkpoint_dir / "last.npz").is_file():
            resumed = self._load("last")
            position = self._resume_from(*resumed, phases, fingerprint)
        start_phase, start_epoch, stopped = position
        self._callbacks = keras.callbacks.CallbackList(list(callbacks), model=_CallbackModel(self), add_history=False,
                                                       add_progbar=False)
        self._batch_callbacks = any(_overrides(c, name) for c in callbacks for name in (
            "on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end"))
        if self._batch_callbacks and any(ps.steps_per_call > 1 for p in phases for ps in p.passes):
            raise ConfigError("A callback acts on every batch, but a pass runs several steps per call "
                              "(steps_per_call > 1). Fix: steps_per_call=1, or a callback without batch hooks.")
        self.model.stop_training = False
        if self.tensorboard:
            self._writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard"))
        self._callbacks.on_train_begin()
        try:
            if resumed is not None and (stopped or start_phase >= len(phases)):
                self._restore_snapshots(*resumed)
                self._restore_state(*resumed)  # the schedule had finished: its last state (then the best below)
            for pi in range(start_phase, 0 if stopped else len(phases)):
                phase = phases[pi]
                first = start_epoch if pi == start_phase else 0
                if resumed is not None and pi == start_phase:
                    self._restore_snapshots(*resumed)
                    if first == 0:  # at the phase's start: the state, then the setup over it (as uninterrupted)
                        self._restore_state(*resumed)
                        self._begin_phase(phase)
                    else:  # inside the phase: the setup's structure (trainable flags), then the checkpoint's values
                        self._begin_phase(phase)
                        self._restore_state(*resumed)
                        self._restore_optimizers(resumed[0])
                else:
                    self._phase_step, self._patience = 0, {"best": None, "wait": 0}
                    self._begin_phase(phase)
                stopped = self._run_phase(pi, phase, first, data, validation, fingerprint)
                if stopped:
                    break
        finally:
            self._callbacks.on_train_end()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        if self._best_weights is not None:
            for v, w in zip(self._variables(), self._best_weights):
                v.assign(w)
        if self.collapse is not None and self.collapse.get("fatal"):
            raise CollapsedModelError(self.collapse["message"])
        return self.history

    def _resume_from(self, arrays, state, phases, fingerprint) -> tuple:
        """Load the run's bookkeeping from a checkpoint; returns the position to continue from."""
        if state.get("fingerprint") != fingerprint:
            raise ResumeError(f"The checkpoint in {self.checkpoint_dir} was written by another model or schedule. "
                              "Fix: resume with the same configuration, or use a new --out directory.")
        self.history, self.best = state["history"], state["best"]
        self.epoch, self.global_step, self._phase_step = state["epoch"], state["global_step"], state["phase_step"]
        self._cursors, self._group_steps = state["cursors"], state["group_steps"]
        self.collapse, self._collapsed_epochs = state["collapse"], state["collapsed_epochs"]
        pi, pe, stopped, self._patience = (state["phase_index"], state["phase_epoch"], state["stopped"],
                                           state["patience"])
        if pe >= phases[pi].epochs:  # the phase had ended: the next one starts
            pi, pe, self._phase_step, self._patience = pi + 1, 0, 0, {"best": None, "wait": 0}
        if self.best is not None and (self.checkpoint_dir / "best.npz").is_file():
            best_arrays, _ = self._load("best")
            self._best_weights = [best_arrays[f"w{i}"] for i in range(len(self._variables()))]
        if self.verbose:
            where = f"phase {phases[pi].name!r}" if pi < len(phases) and not stopped else "the schedule had ended"
            print(f"Resuming after epoch {self.epoch} ({where}).")
        return pi, pe, stopped

    def _run_phase(self, pi: int, phase: Phase, first: int, data: dict, validation, fingerprint) -> bool:
        """The epochs of one phase from ``first``; returns whether the whole schedule stops.

        Model selection compares an epoch with the best of the run; the patience, as Keras'
        ``EarlyStopping`` within one ``fit``, with the best of this phase (so the first epoch of a phase
        never counts against it)."""
        patience = phase.patience if phase.patience is not None else self.patience
        phase_steps = self._phase_steps(phase, data)
        for e in range(first, phase.epochs):
            self.phase_epoch = e
            self._counters.assign([self.global_step, self.epoch, e, self._phase_step, phase_steps])
            logs = self._run_epoch(phase, e, data, validation)
            collapsed = logs.get("val_score_range") is not None and logs["val_score_range"] < COLLAPSE_RANGE
            if phase.select_best and not collapsed:  # a collapsed model is never the best
                if self._is_improvement(logs, self.best["value"] if self.best else None):
                    self.best = {"epoch": self.epoch, "value": float(logs[self.monitor]), "phase": phase.name}
                    self._best_weights = [np.array(v.numpy()) for v in self._variables()]
                    self._save("best", {"epoch": self.epoch}, full=False)
            if phase.select_best:
                if not collapsed and self._is_improvement(logs, self._patience["best"]):
                    self._patience = {"best": float(logs[self.monitor]), "wait": 0}
                else:
                    self._patience["wait"] += 1
            done = e + 1 == phase.epochs
            if patience is not None and phase.select_best and self._patience["wait"] >= patience and not done:
                if self.verbose:
                    print(f"Early stop of phase {phase.name!r}: {self.monitor} did not improve for {patience} epochs.")
                done = True
            stop = self._check_collapse(phase, logs, collapsed)
            if done or stop:
                self._end_phase(phase)
            # Keras' callbacks get numbers only (TensorBoard casts every value) and the epoch as their argument
            # (ModelCheckpoint formats both); the whole entry is self.model.engine.history[-1]
            self._callbacks.on_epoch_end(self.epoch - 1, {k: v for k, v in logs.items() if k != "epoch" and isinstance(
                v, (int, float)) and v is not None})
            stop = stop or bool(self.model.stop_training)
            self._save("last", self._state(fingerprint, pi, phase.epochs if done else e + 1, stop), full=True)
            if done or stop:
                return stop
        return False

    def _check_plan(self, phases, data) -> None:
        if not phases:
            raise ConfigError("fit() needs at least one phase.")
        for p in phases:
            if not isinstance(p.epochs, int) or p.epochs < 1:
                raise ConfigError(f"Phase {p.name!r} needs a positive number of epochs. Received: {p.epochs!r}.")
            missing = {s.data for ps in p.passes for s in ps.steps} - set(data)
            if missing:
                raise ConfigError(f"Phase {p.name!r} reads data streams {sorted(missing)} that fit() did not get; "
                                  f"given: {sorted(data)}.")
            for ps in p.passes:
                k = ps.steps_per_call
                if not isinstance(k, int) or k < 1:
                    raise ConfigError(f"steps_per_call of a pass of phase {p.name!r} must be a positive integer. "
                                      f"Received: {k!r}.")
                if k > 1:
                    why = ("it has several step kinds" if len(ps.steps) > 1 else
                           "its stream is continuing" if ps.steps[0].continuing else
                           "the phase has per-step schedules" if any(sc.per_step for sc in p.schedules) else
                           "the strategy has several replicas" if self.strategy.num_replicas_in_sync > 1 else None)
                    if why:
                        raise ConfigError(f"A pass of phase {p.name!r} asks for steps_per_call={k}, but {why}. Fix: "
                                          "steps_per_call=1 for that pass.")
                if ps.jit_compile and self.strategy.num_replicas_in_sync > 1:
                    raise ConfigError(f"A pass of phase {p.name!r} asks for jit_compile, but the strategy has "
                                      f"{self.strategy.num_replicas_in_sync} replicas. Fix: jit_compile=False for "
                                      "that pass, or train on one device.")
                if ps.max_steps is None and all(s.continuing for s in ps.steps):
                    raise ConfigError(f"A pass of phase {p.name!r} has only continuing streams and no max_steps: it "
                                      "would never end. Fix: give max_steps, or make one stream restart with the pass.")

    def _is_improvement(self, logs, reference: float | None) -> bool:
        """Whether the monitored value of ``logs`` is better than ``reference`` (None: anything is)."""
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(value):
            return False
        if reference is None:
            return True
        return value > reference if self.mode == "max" else value < reference

    def _check_collapse(self, phase: Phase, logs: dict, constant: bool) -> bool:
        """A collapsed model says the same thing for every image (validation scores of one value on every
        task) and has stopped moving (the same validation loss as the epoch before): the weights have
        run to saturated values. After two such epochs in a row, stop: fatal when no earlier epoch was a
        usable model. Returns whether to stop."""
        previous = self.history[-2] if len(self.history) >= 2 else None
        still = (previous is not None and previous.get("val_score_range") is not None
                 and previous["val_score_range"] < COLLAPSE_RANGE
                 and abs(logs["val_loss"] - previous["val_loss"]) <= 1e-6 * max(1.0, abs(previous["val_loss"])))
        if not (constant and still):
            self._collapsed_epochs = 1 if constant else 0
            return False
        self._collapsed_epochs += 1
        losses = ", ".join(f"{h['loss']:.4f}" for h in self.history[-3:] if isinstance(h.get("loss"), float))
        healthy = self.best is not None
        message = (f"The model collapsed: after epoch {self.epoch} (phase {phase.name!r}) its validation scores are the "
                   f"same for every image on every task (range below {COLLAPSE_RANGE:g}) and its validation loss has "
                   f"stopped at {logs['val_loss']:.4f} for {self._collapsed_epochs} epochs (training loss over the "
                   f"last epochs: {losses}): the weights ran to saturated values. Fix: lower the learning rate "
                   "(e.g. --lr 1e-3), check the labels, or disable mixed precision.")
        if healthy:
            message += f" Training stopped; the best epoch before the collapse ({self.best['epoch']}) is kept."
        self.collapse = {"epoch": self.epoch, "phase": phase.name, "message": message, "fatal": not healthy,
                         "best_epoch": self.best["epoch"] if healthy else None}
        if self.verbose or healthy:
            print(message)
        return True

    def _run_epoch(self, phase: Phase, e: int, data: dict, validation) -> dict:
        self._callbacks.on_epoch_begin(self.epoch)
        for s in phase.schedules:
            s.variable.assign(s.fn(e, 0))
        logs: dict = {"epoch": self.epoch + 1, "phase": phase.name}
        start = time.perf_counter()
        first_label = phase.passes[0].steps[0].label
        sums: dict[str, tuple] = {}
        for pas in phase.passes:
            if pas.on_begin:
                pas.on_begin(self)
            self._run_pass(phase, e, pas, data, sums, first_label)
            if pas.on_end:
                pas.on_end(self)
        for label, (total, n) in sums.items():
            logs.update(self._epoch_logs(total, n[0], "" if label == first_label else f"{label}_"))
        logs["seconds"] = time.perf_counter() - start
        logs["lr"] = self._current_lr()
        if phase.validate and validation is not None:
            result = self.evaluate(validation, scores=True, summary=True)
            logs.update({f"val_{k}": v for k, v in result.items() if k in ("loss", "accuracy", "eer")})
            logs["val_score_range"] = result["score_range"]
        self.epoch += 1
        self.history.append(logs)
        if self.verbose == 2 or (self.verbose == 1 and phase.validate and validation is not None):
            shown = ", ".join(f"{k} {v:.4f}" for k, v in logs.items()
                              if isinstance(v, float) and k not in ("seconds", "val_score_range"))
            print(f"epoch {logs['epoch']} [{phase.name}] {shown} ({logs['seconds']:.1f} s)")
        if self._writer is not None:
            with self._writer.as_default():
                for k, v in logs.items():
                    if isinstance(v, (int, float)) and k != "epoch" and math.isfinite(v):
                        tf.summary.scalar(k, v, step=self.epoch)
        return logs

    def _iterator(self, name: str, source, continuing: bool):
        """A fresh iterator over a stream: this epoch's, or a continuing stream's from its cursor."""
        if not continuing:
            return iter(self.strategy.experimental_distribute_dataset(_dataset(source, self.epoch, True)))
        cycle, position = self._cursors.setdefault(name, [0, 0])
        ds = _dataset(source, cycle, True)
        if position:
            ds = ds.skip(position)
        return iter(self.strategy.experimental_distribute_dataset(ds))

    def _pass_length(self, pas: Pass, data: dict) -> int | None:
        """Steps the pass makes, when its streams know their lengths (None otherwise)."""
        kinds = [s.data for s in pas.steps]
        limits = [] if pas.max_steps is None else [pas.max_steps * len(kinds)]
        for name in {s.data for s in pas.steps if not s.continuing}:
            n = _steps(data[name])
            if n is None:
                return None if pas.max_steps is None else limits[0]
            uses = kinds.count(name)
            rounds, rest = divmod(n, uses)
            # the partial round ends just before the stream's (rest + 1)-th use in it
            partial = [i for i, k in enumerate(kinds) if k == name][rest] if rest < uses else len(kinds)
            limits.append(rounds * len(kinds) + (partial if rest < uses else 0))
        return min(limits) if limits else None

    def _phase_steps(self, phase: Phase, data: dict) -> int:
        lengths = [self._pass_length(p, data) for p in phase.passes]
        return -1 if any(n is None for n in lengths) else sum(lengths) * phase.epochs

    def _run_pass(self, phase: Phase, e: int, pas: Pass, data: dict, sums: dict, first_label: str) -> None:
        iterators = {s.data: self._iterator(s.data, data[s.data], s.continuing) for s in pas.steps}
        lengths = {name: _steps(data[name]) for name in iterators}
        consumed = dict.fromkeys(iterators, 0)
        total = self._pass_length(pas, data)
        bar = keras.utils.Progbar(total, verbose=1, unit_name="step") if self.verbose == 1 else None
        if pas.steps_per_call > 1:
            self._run_pass_calls(phase, pas, data, sums, first_label, iterators, total, bar)
            return
        compiled = [self._compile(s, jit=pas.jit_compile) for s in pas.steps]
        per_step = [s for s in phase.schedules if s.per_step]
        pending: list = []
        done = 0  # steps of this pass
        while total is None or done < total:
            s, (fn, layout) = pas.steps[done % len(pas.steps)], compiled[done % len(pas.steps)]
            if pas.max_steps is not None and done // len(pas.steps) >= pas.max_steps:
                break
            if s.continuing and lengths[s.data] is not None and self._cursors[s.data][1] >= lengths[s.data]:
                iterators[s.data] = self._restart(s.data, data[s.data])
            for sch in per_step:
                sch.variable.assign(sch.fn(e, done))
            if self._batch_callbacks:
                self._callbacks.on_train_batch_begin(consumed[s.data])
            try:
                out = _call(fn, iterators[s.data])
            except tf.errors.OutOfRangeError:
                if not s.continuing:
                    break  # this pass's stream ended
                iterators[s.data] = self._restart(s.data, data[s.data])
                try:
                    out = _call(fn, iterators[s.data])
                except tf.errors.OutOfRangeError:
                    raise ConfigError(f"Data stream {s.data!r} gives no batch. Fix: give it at least one.") from None
            consumed[s.data] += 1
            if s.continuing:
                self._cursors[s.data][1] += 1
            pending.append((s, consumed[s.data], out, layout))
            done += 1
            self.global_step += 1
            self._phase_step += 1
            if bar is not None or self._batch_callbacks or len(pending) >= 32:
                self._drain(pending, phase, sums, bar, done, first_label)
        self._drain(pending, phase, sums, bar, done, first_label)
        for name, iterator in iterators.items():
            if lengths[name] is not None and consumed[name] >= lengths[name] and not self._continuing(pas, name):
                # Let the pipeline see its end: dropping an iterator with a request still in flight waits
                # for its cancellation (seen: up to 1.2 s a pass, with augmentation on 2 cores).
                iterator.get_next_as_optional()

    def _run_pass_calls(self, phase, pas, data, sums, first_label, iterators, total, bar) -> None:
        """A pass of one step kind, ``steps_per_call`` steps per traced call."""
        step = pas.steps[0]
        fn, layout = self._compile(step, many=True, jit=pas.jit_compile)
        iterator = iterators[step.data]
        length = _steps(data[step.data])
        limit = pas.steps_per_call
        done = 0
        while total is None or done < total:
            want = limit if total is None else min(limit, total - done)
            try:
                out = _call(fn, iterator, tf.constant(want, tf.int64))
            except tf.errors.OutOfRangeError:
                break
            made = int(out[-1].numpy())
            done += made
            self.global_step += made
            self._phase_step += made
            self._drain([(step, done, out[:-1], layout, made)], phase, sums, bar, done, first_label)
            if made < want:  # the stream ended
                break
        if length is not None and done >= length:
            iterator.get_next_as_optional()  # let the pipeline see its end (see _run_pass)

    @staticmethod
    def _continuing(pas: Pass, name: str) -> bool:
        return any(s.continuing for s in pas.steps if s.data == name)

    def _restart(self, name: str, source):
        """A continuing stream ran out: its next cycle (a new shuffle) from the start."""
        self._cursors[name] = [self._cursors[name][0] + 1, 0]
        return self._iterator(name, source, True)

    def _drain(self, pending: list, phase: Phase, sums: dict, bar, done: int, first_label: str) -> None:
        """Read the pending steps' logs (one transfer each); stop at the first non-finite step."""
        for s, index, out, layout, *made in pending:
            values = out.numpy().astype(np.float64)
            logs, i = {}, 0
            for k, size in layout:
                logs[k] = values[i] if k not in ("ce", "n", "correct") else values[i:i + size]
                i += size
            if logs["nonfinite"] > 0 or not math.isfinite(logs["loss"]):
                self._raise_nonfinite(phase, s, index, logs["loss"])
            total, n = sums.setdefault(s.label, ({}, [0]))
            for k, v in logs.items():
                total[k] = total[k] + v if k in total else v
            n[0] += made[0] if made else 1  # a call of several steps gives their sums
            if self._batch_callbacks:
                self._callbacks.on_train_batch_end(index - 1, {k: float(v) for k, v in logs.items() if np.ndim(v) == 0})
        if pending and bar is not None:
            shown = []
            for label, (total, n) in sums.items():
                prefix = "" if label == first_label else f"{label}_"
                shown += [(prefix + k, float(v) / n[0]) for k, v in total.items() if np.ndim(v) == 0 and k != "nonfinite"]
            bar.stateful_metrics.update(k for k, _ in shown)  # running means already: shown as they are
            bar.update(done, values=shown)
        pending.clear()

    def _raise_nonfinite(self, phase: Phase, step: Step, index: int, loss) -> None:
        bad = int(self._bad_step.numpy())
        where = (f"phase {phase.name!r}, epoch {self.epoch + 1}, pass {step.label!r}, step {index} "
                 f"(global step {bad + 1})")
        kept = (f"the last good checkpoint (epoch {self.epoch}) is kept in {self.checkpoint_dir}"
                if self.checkpoint_dir and self.epoch else "no checkpoint was written yet")
        raise NonFiniteLossError(f"The training loss or its gradients became NaN or infinite (loss {loss}) at {where}; "
                                 f"that step and every later one made no update, and {kept}. Fix: lower the learning "
                                 "rate, check the images and labels, or disable mixed precision.")

    def _epoch_logs(self, sums: dict, n_steps: int, prefix: str) -> dict:
        logs = {}
        for k, v in sums.items():
            if k not in ("ce", "n", "correct", "nonfinite") and np.ndim(v) == 0:
                logs[f"{prefix}{k}"] = float(v) / max(n_steps, 1)
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
    def _eval_step(self):
        if self._eval_fn is None:
            model, loss, tasks = self.model, self.loss, self.tasks

            def step(iterator):
                x, y = next(iterator)
                outputs = model(x, training=False)
                _, logs = loss(y, outputs)
                scores = tf.stack([tf.cast(outputs[t][:, 1], tf.float32) for t in tasks], axis=1)
                labels = tf.stack([tf.cast(tf.reshape(y[t], [-1]), tf.int32) for t in tasks], axis=1)
                # scores and labels (batch, tasks) and the per-task sums (3, tasks): three transfers per batch
                return scores, labels, tf.stack([logs["ce"], logs["n"], logs["correct"]])

            self._eval_fn = tf.function(step, reduce_retracing=True)
        return self._eval_fn

    def evaluate(self, source, *, scores: bool = True, summary: bool = False) -> dict:
        """Loss, accuracy and scores on a data source (no augmentation, no weight changes).

        Returns:
            ``{"loss", "accuracy", "eer", "score_range", "per_task": {task: {"loss", "accuracy", "n"}},
            "scores": {task: (n,) P(compliant)}, "labels": {task: (n,)}}``; "eer" (with ``summary``) is the
            mean EER (``eer_method``) over tasks where it is defined (NaN if none); "score_range" the
            largest range (max - min) of a task's scores (0 when the model says the same for every image).
        """
        from .metrics import evaluate_tasks

        ds = _dataset(source, 0, False)
        step = self._eval_step()
        totals = np.zeros((3, len(self.tasks)))
        out_scores, out_labels = [], []
        iterator = iter(ds)
        n_batches = _steps(source)
        b = 0
        while n_batches is None or b < n_batches:
            try:
                s, l, sums = step(iterator)
            except tf.errors.OutOfRangeError:
                break
            b += 1
            totals += sums.numpy()
            if scores:
                out_scores.append(s.numpy())
                out_labels.append(l.numpy())
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
            result["score_range"] = float(np.max(s_all.max(0) - s_all.min(0))) if len(s_all) else math.nan
            if summary:
                m = evaluate_tasks(result["labels"], result["scores"], method=self.eer_method)
                eers = [v.eer.eer for v in m.values() if v.eer.defined]
                result["eer"] = float(np.mean(eers)) if eers else math.nan
        return result

    def predict(self, source) -> dict[str, np.ndarray]:
        """P(compliant) per task for every image of ``source`` (in its order): {task: (n,)}."""
        return self.evaluate(source, scores=True)["scores"]


class _CallbackModel:
    """What Keras callbacks see as ``self.model``: the engine's model, with ``optimizer`` the running
    phase's first optimiser (``ReduceLROnPlateau``, ``TensorBoard``) and ``engine`` the engine (its
    phase, its history with the full logs); attribute writes (``stop_training``) reach the model. The
    model itself never holds an optimiser, so saving it writes none."""

    def __init__(self, engine: Engine):
        object.__setattr__(self, "engine", engine)

    @property
    def optimizer(self):
        opts = self.engine.optimizers
        return next(iter(opts.values())) if opts else None

    def __getattr__(self, name):
        return getattr(self.engine.model, name)

    def __setattr__(self, name, value):
        setattr(self.engine.model, name, value)


# ---------------------------------------------------------------------------------------------
# phase recipes of the paper

def standard_phases(epochs: int) -> list[Phase]:
    """Plain training: one phase, the whole model's trainable variables."""
    return [Phase("train", epochs)]


def finetune_phases(finetune_epochs: int, epochs: int, tasks, unfreeze: str = "all") -> list[Phase]:
    """The paper's Experiment III: train with the backbone unfrozen (``unfreeze``: "all" as the paper
    says, or "last:2", the two last layers, as its code did) for ``finetune_epochs``, then freeze it
    again and train the heads for ``epochs``. Each phase gets a fresh optimiser; a learning-rate
    schedule continues across the two."""
    from .backbones import set_backbone_trainable

    def open_(engine):
        set_backbone_trainable(engine.model, tasks, unfreeze)

    def close(engine):
        set_backbone_trainable(engine.model, tasks, "frozen")

    return [Phase("finetune", finetune_epochs, setup=open_), Phase("train", epochs, setup=close)]
