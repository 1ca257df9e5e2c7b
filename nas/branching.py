"""``python -m nas.branching``: branched multi-task architecture search (BMTAS, seed 004) on the engine.

The backbone becomes a supergraph (:class:`Supergraph`): a shared stem, then every searchable layer
as K non-sharing copies (:class:`nas.supergraph.MixedOp`), then one head per task. Each routing
unit (a group of requisites, or one requisite) draws a Gumbel-softmax mixture over the copies of every
layer from its architecture logits ``alpha`` (L, U, K), initialised to zero. The search runs on the
training engine (:mod:`icao_mtl.training`), with no loop of its own:

1. warm-up (``W`` epochs): unit u trains only copy u (mixtures fixed to ``e_u``), one optimiser step
   per unit and batch, on the weight split (80% of the training split);
2. search (``E - W`` epochs), each epoch: reset the architecture optimiser; one pass over the
   architecture split (20%) updating ``alpha`` from ``sum_u (L_u + lambda * L_R)`` (L_R: the expected
   cost of :class:`nas.partitions.ResourceLoss`, exact over set partitions; the pairwise surrogate for
   many units); reset the weight optimiser and the batch-norm statistics; one pass over the weight
   split, one step per unit. The temperature goes linearly from 5.0 to 0.1 (spec §3.3).

Then every unit takes the argmax copy of each layer; the meet of those choices gives the branch tree
(:func:`nas.partitions.branch_groups`), and :func:`build_branched` builds it as a plain Keras model
(registered layers, ``.keras`` with ``safe_mode=True``), retrained from the backbone's initial weights
with the learning rate of an op shared by n units divided by n, and evaluated like any run.

Examples::

    python -m nas.branching --lambda 0.5                                   # synthetic set, small CNN
    python -m nas.branching --lambda 0 0.1 0.5 2 --baselines --out runs/bmtas_sweep   # Pareto sweep
    python -m nas.branching --backbone mobilenet_v2 --weights imagenet --granularity coarse \\
        --data /path/to/icao --mapping fvc.json --lambda 0.05
    python -m nas.branching --resume --out runs/bmtas_sweep                # after an interruption

Outputs (``--out``): ``lut.json`` (measured MAdds per layer), and per lambda ``lambda_<L>/``:
``trace.json`` / ``trace.png`` (temperature, losses, expected cost, routing probabilities per
epoch), ``structure.json`` and ``tree.png`` (the branch structure), ``search/`` (checkpoints) and
``branched/`` (the retrained model's run directory: model.keras, metrics, tables, curves). With
several lambdas or ``--baselines``: ``pareto.json`` and ``pareto.png`` (test EER against MAdds, with
the Shared and Single networks).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from icao_mtl import io as aio
from icao_mtl.errors import ConfigError, ResumeError, command

from .blocks import Layout, layout, load_application_weights, madds_table, pretrained_application, takes_training
from .partitions import (MAX_EXACT_UNITS, ResourceLoss, branch_groups, discretize, gumbel_softmax,
                         pairwise_sharing_cost, temperature)
from .supergraph import MixedOp

COSTS = ("auto", "chain", "meet", "pairwise")


# ---------------------------------------------------------------------------------------------
# the supergraph

class Supergraph(keras.Model):
    """Shared stem -> L mixed layers of K copies -> global average pooling -> one head per task.

    Args:
        spec: the backbone cut (:func:`nas.blocks.layout`).
        tasks: task ids (output names).
        units: the routing units, a list of task tuples covering ``tasks``.
        copies: K, candidate copies per layer (BMTAS: K = number of units).
        image_size: input side in pixels.
        weights: "none", "imagenet" or a weights file of the backbone; every copy of a layer starts from
            the same weights (also when random: copy 0's are copied into the others).
        seed: seed of the Gumbel noise.

    ``model(images)`` routes every unit along its argmax copies (the discretised network);
    :meth:`forward_unit` is one unit's forward with a mixture matrix (L, K).
    """

    def __init__(self, spec: Layout, tasks, units, copies: int, image_size: int, *, weights: str = "none",
                 seed: int = 0, **kwargs):
        super().__init__(name=kwargs.pop("name", "bmtas_supergraph"), **kwargs)
        from icao_mtl.backbones import Preprocess

        self.spec, self.tasks, self.units = spec, tuple(tasks), [tuple(u) for u in units]
        self.n_layers, self.n_units, self.copies = len(spec.layers), len(self.units), int(copies)
        self.image_size, self.seed = int(image_size), int(seed)
        self.preprocess = Preprocess(spec.preprocess, name="preprocess")
        self.stem = [s.make(True, f"stem_{i}") for i, s in enumerate(spec.stem)]
        self.mixed = [MixedOp(s.make(False, s.name), self.copies, name=f"mixed_{s.name}") for s in spec.layers]
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.heads = [keras.layers.Dense(2, activation="softmax", dtype="float32", name=t) for t in self.tasks]
        self.alpha = self.add_weight(shape=(self.n_layers, self.n_units, self.copies), initializer="zeros",
                                     name="alpha", trainable=True)
        self.temperature = self.add_weight(shape=(), initializer=keras.initializers.Constant(5.0), name="temperature",
                                           trainable=False)
        self.noise_step = self.add_weight(shape=(), initializer="zeros", name="noise_step", trainable=False)
        self._head_of = {t: h for t, h in zip(self.tasks, self.heads)}
        self(np.zeros((1, self.image_size, self.image_size, 3), np.float32))
        app = pretrained_application(spec.backbone, weights, self.image_size)
        if app is not None:
            for layer, s in zip(self.stem, spec.stem):
                load_application_weights(layer, s.sources, app)
            for op, s in zip(self.mixed, spec.layers):
                load_application_weights(op.ops[0], s.sources, app)
        for op in self.mixed:  # identical copies: the warm-up breaks the symmetry
            for other in op.ops[1:]:
                for dst, src in zip(other.weights, op.ops[0].weights):
                    dst.assign(src)

    def weight_variables(self) -> list:
        """Every trainable variable but ``alpha`` (the operation weights)."""
        return [v for v in self.trainable_variables if v.path != self.alpha.path]

    def _stem(self, images, training=None):
        x = self.preprocess(images)
        for layer in self.stem:
            x = layer(x, training=training) if takes_training(layer) else layer(x)
        return x

    def features(self, images, mixtures, training=None):
        """Pooled features (batch, channels) of one route; ``mixtures`` (L, K)."""
        x = self._stem(images, training=training)
        for l, op in enumerate(self.mixed):
            x = op(x, mixtures[l], training=training)
        return self.pool(x)

    def forward_route(self, images, unit: int, route, training=None) -> dict:
        """Like :meth:`forward_unit` with one-hot mixtures of the copies ``route`` (L Python ints), computing
        only those copies (K times cheaper; the warm-up's shortcut)."""
        x = self._stem(images, training=training)
        for op, index in zip(self.mixed, route):
            x = op.single(x, index, training=training)
        f = self.pool(x)
        return {t: self._head_of[t](f) for t in self.units[unit]}

    def forward_unit(self, images, unit: int, mixtures, training=None) -> dict:
        """{task: (batch, 2) probabilities} for the tasks of ``unit`` along ``mixtures`` (L, K)."""
        f = self.features(images, mixtures, training=training)
        return {t: self._head_of[t](f) for t in self.units[unit]}

    def forward_config(self, images, config, training=None) -> dict:
        """All tasks, each unit along the copies of ``config`` (L, U) op indices."""
        import tensorflow as tf

        config = tf.convert_to_tensor(config, tf.int32)
        out = {}
        for u in range(self.n_units):
            out.update(self.forward_unit(images, u, tf.one_hot(config[:, u], self.copies), training=training))
        return {t: out[t] for t in self.tasks}

    def call(self, images, training=None):
        import tensorflow as tf

        return self.forward_config(images, tf.argmax(self.alpha, axis=-1, output_type=tf.int32), training=training)

    def sample(self, unit: int):
        """A Gumbel-softmax mixture (L, K) for ``unit`` at the current temperature; one noise draw per
        call, shared by the batch (stateless from the seed and a counter kept with the weights, so a
        resumed search draws the same noise)."""
        import tensorflow as tf

        step = self.noise_step.assign_add(1.0)
        seed = tf.stack([tf.constant(self.seed, tf.int32), tf.cast(step, tf.int32)])
        return gumbel_softmax(self.alpha[:, unit, :], self.temperature, seed=seed)

    def probabilities(self) -> np.ndarray:
        """softmax(alpha), (L, U, K)."""
        a = np.asarray(self.alpha.numpy(), np.float64)
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# the search on the engine

def make_units(tasks, groups: dict, mode: str) -> tuple[list, list]:
    """``(unit names, unit task tuples)``: "groups" routes the dataset's requisite groups (the four
    groups of Handcrafted 3 on ICAO data), "tasks" routes every task on its own."""
    if mode == "tasks":
        return list(tasks), [(t,) for t in tasks]
    if mode != "groups":
        raise ConfigError(f"Unknown --units {mode!r}. Fix: --units groups or tasks.")
    names, units, placed = [], [], set()
    for name, members in groups.items():
        members = tuple(t for t in tasks if t in members)
        if members:
            names.append(name)
            units.append(members)
            placed.update(members)
    rest = tuple(t for t in tasks if t not in placed)
    if rest:
        names.append("other")
        units.append(rest)
    return names, units


def resource_cost(kind: str, n_units: int, copies: int, layer_costs):
    """The function alpha -> expected cost used by the search (costs normalised by the caller)."""
    if kind in ("chain", "meet"):
        return ResourceLoss(n_units, copies, layer_costs, semantics=kind)
    return lambda alpha: pairwise_sharing_cost(alpha, layer_costs)


def _unit_losses(model: Supergraph):
    """Per unit: (masked loss over its tasks, indices of its tasks among all tasks)."""
    from icao_mtl.losses import MaskedMultiTaskLoss

    return [(MaskedMultiTaskLoss(unit), [model.tasks.index(t) for t in unit]) for unit in model.units]


def _scatter_logs(logs, index, n_tasks):
    import tensorflow as tf

    idx = tf.constant(index, tf.int32)[:, None]
    return {k: tf.scatter_nd(idx, logs[k], [n_tasks]) for k in ("ce", "n", "correct")}


def search_phases(model: Supergraph, *, epochs: int, warmup: int, lam: float, cost, weight_decay: float = 1e-4,
                  arch_weight_decay: float = 5e-5):
    """The warm-up and search :class:`~icao_mtl.training.Phase` s (data streams "weights" and "arch",
    variable groups "weights" and "arch").

    Args:
        epochs: E, all epochs (warm-up included).
        warmup: W, warm-up epochs.
        lam: lambda, the weight of the resource term (normalised costs: full sharing costs 1).
        cost: alpha -> expected cost (e.g. :class:`~nas.partitions.ResourceLoss`).
        weight_decay, arch_weight_decay: coupled L2 (PyTorch style, as the reference): ``wd * w`` is
            added to every gradient, of every variable of the group at every step.
    """
    import tensorflow as tf

    from icao_mtl.training import Pass, Phase, Schedule, reset_batchnorm, reset_optimizer

    per_unit = _unit_losses(model)
    n_tasks = len(model.tasks)

    def l2(variables, wd):
        return 0.5 * wd * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables]) if wd else 0.0

    def unit_loss(u, mixtures=None):
        """Unit u's weight step: along Gumbel ``mixtures``, or (None) the warm-up's copy u only."""
        loss_fn, index = per_unit[u]

        def fn(m, x, y, ctx):
            if mixtures is None:
                outputs = m.forward_route(x, u, [u % m.copies] * m.n_layers, training=True)
            else:
                outputs = m.forward_unit(x, u, mixtures(u), training=True)
            loss, logs = loss_fn({t: y[t] for t in m.units[u]}, outputs)
            return loss + l2(m.weight_variables(), weight_decay), _scatter_logs(logs, index, n_tasks)

        return fn

    def arch_loss(m, x, y, ctx):
        resource = tf.cast(cost(m.alpha), tf.float32)
        total, logs = 0.0, None
        for u, (loss_fn, index) in enumerate(per_unit):
            outputs = m.forward_unit(x, u, m.sample(u), training=True)
            loss, unit_logs = loss_fn({t: y[t] for t in m.units[u]}, outputs)
            # a unit without any label in the batch is skipped, resource term included (as the reference)
            present = tf.cast(tf.reduce_sum(unit_logs["n"]) > 0, tf.float32)
            total = total + loss + lam * resource * present
            scattered = _scatter_logs(unit_logs, index, n_tasks)
            logs = scattered if logs is None else {k: logs[k] + scattered[k] for k in logs}
        return total + l2([m.alpha], arch_weight_decay), logs

    def begin_arch(engine):
        reset_optimizer(engine.optimizers["arch"])

    def end_arch(engine):
        reset_optimizer(engine.optimizers["weights"])
        reset_batchnorm(engine.model)

    phases = []
    if warmup:
        phases.append(Phase("warmup", warmup, passes=[Pass("weights", ("weights",), losses=[
            unit_loss(u) for u in range(model.n_units)])],
            validate=False, select_best=False))
    if epochs > warmup:
        search_loss = [unit_loss(u, lambda u: tf.stop_gradient(model.sample(u))) for u in range(model.n_units)]
        phases.append(Phase(
            "search", epochs - warmup,
            passes=[Pass("arch", ("arch",), losses=[arch_loss], on_begin=begin_arch, on_end=end_arch),
                    Pass("weights", ("weights",), losses=search_loss)],
            schedules=[Schedule(model.temperature, lambda e, s: temperature(warmup + e + 1, epochs, warmup))],
            validate=False, select_best=False))
    return phases


def search_groups(model: Supergraph, *, lr: float = 1e-3, arch_lr: float = 1e-2) -> dict:
    """The variable groups of the search: "weights" (Adam, lr 1e-3) and "arch" (alpha; Adam, lr 1e-2),
    with PyTorch's Adam epsilon (1e-8) as the reference."""
    from icao_mtl.training import VariableGroup

    return {"weights": VariableGroup("weights", lambda: keras.optimizers.Adam(lr, epsilon=1e-8),
                                     lambda m: m.weight_variables()),
            "arch": VariableGroup("arch", lambda: keras.optimizers.Adam(arch_lr, epsilon=1e-8), lambda m: [m.alpha])}


class TraceWriter(keras.callbacks.Callback):
    """Writes ``trace.json`` after every epoch: phase, temperature, losses, expected cost (normalised
    and in MAdds), the routing probabilities softmax(alpha) (L, U, K) and the current argmax routes."""

    def __init__(self, model: Supergraph, path: Path, cost, layer_madds, normaliser: float):
        super().__init__()
        self.supergraph, self.path, self.cost = model, Path(path), cost
        self.layer_madds, self.normaliser = list(layer_madds), normaliser
        self.entries = aio.read_json(self.path) if self.path.is_file() else []

    def on_epoch_end(self, epoch, logs=None):
        logs = self.model.engine.history[-1]  # the engine's entry: with the phase and every pass's logs
        m = self.supergraph
        expected = float(self.cost(m.alpha))
        search = logs.get("phase") == "search"
        entry = {"epoch": int(logs.get("epoch", epoch + 1)), "phase": logs.get("phase"),
                 "temperature": float(m.temperature.numpy()) if search else None,
                 "weights_loss": logs.get("weights_loss" if search else "loss"),
                 "arch_loss": logs.get("loss") if search else None,
                 "expected_cost": expected, "expected_encoder_madds": expected * self.normaliser,
                 "probabilities": np.round(m.probabilities(), 5).tolist(),
                 "config": discretize(m.alpha.numpy()).tolist(), "seconds": logs.get("seconds")}
        self.entries = [e for e in self.entries if e["epoch"] < entry["epoch"]] + [entry]
        aio.write_json(self.path, self.entries)


def plot_trace(entries: list, unit_names, path) -> None:
    """Expected encoder MAdds, losses and temperature per epoch, and the routing probabilities of the
    final argmax copy per layer and unit."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. Jupyter's) is left alone

    from icao_mtl.reports import _save

    epochs = [e["epoch"] for e in entries]
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, [e["expected_encoder_madds"] / 1e6 for e in entries], marker="o")
    axes[0].set(xlabel="epoch", ylabel="expected encoder MAdds (M)", title="resource term")
    axes[1].plot(epochs, [e["weights_loss"] for e in entries], label="weight pass")
    axes[1].plot(epochs, [e["arch_loss"] if e["arch_loss"] is not None else math.nan for e in entries],
                 label="architecture pass")
    ax2 = axes[1].twinx()
    ax2.plot(epochs, [e["temperature"] if e["temperature"] is not None else math.nan for e in entries], "k--",
             label="temperature")
    ax2.set_ylabel("temperature")
    axes[1].set(xlabel="epoch", ylabel="loss", title="losses and temperature")
    axes[1].legend(loc="upper right")
    probs = np.asarray(entries[-1]["probabilities"])  # (L, U, K)
    axes[2].imshow(probs.max(-1).T, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axes[2].set(xlabel="layer", title="probability of the chosen copy (last epoch)")
    axes[2].set_yticks(range(len(unit_names)), unit_names)
    fig.tight_layout()
    _save(fig, path)


# ---------------------------------------------------------------------------------------------
# the branched network

def structure(config, layer_names, unit_names, units, lut: dict) -> dict:
    """The branch structure of ``config`` (L, U): the groups of units per layer (a tree), the copies per
    layer, and the MAdds (stem + sum_l c_l |G_l| + heads)."""
    groups = branch_groups(config)
    copies = [len(g) for g in groups]
    encoder = sum(lut["layers"][n] * c for n, c in zip(layer_names, copies))
    n_tasks = sum(len(u) for u in units)
    madds = {"stem": lut["stem"], "encoder": int(encoder), "heads": lut["head"] * n_tasks}
    madds["total"] = int(sum(madds.values()))
    return {"config": np.asarray(config).tolist(), "layers": list(layer_names), "unit_names": list(unit_names),
            "units": [list(u) for u in units], "groups": [[list(p) for p in g] for g in groups], "copies": copies,
            "madds": madds}


def branch_name(layer: str, group, unit_names) -> str:
    """Name of the copy of searchable layer ``layer`` shared by the units of ``group``."""
    return f"{layer}__{'_'.join(unit_names[u] for u in group)}"


def build_branched(spec: Layout, tasks, units, config, *, image_size: int, weights: str = "none",
                   unit_names=None) -> tuple[keras.Model, dict]:
    """The branched network of ``config`` (L, U op indices): the meet of the units' choices gives the
    groups of every layer; each group gets its own copy of the layer (affine batch norms), fed by its
    parent group's copy; each task's head (GAP -> Dense(2)) reads its unit's branch.

    Returns:
        ``(model, sharing)``: a functional model from raw images (batch, s, s, 3) in [0, 255] to
        {task: (batch, 2)}, and {layer name: number of units sharing it} (stem: all units).
    """
    from icao_mtl.backbones import HEAD_PREFIX, Preprocess

    config = np.asarray(config)
    n_units = len(units)
    if config.shape != (len(spec.layers), n_units):
        raise ConfigError(f"A branch configuration for {len(spec.layers)} layers and {n_units} units has shape "
                          f"({len(spec.layers)}, {n_units}); received {config.shape}.")
    unit_names = list(unit_names or [f"u{u}" for u in range(n_units)])
    app = pretrained_application(spec.backbone, weights, image_size)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess(spec.preprocess, name="preprocess")(inputs)
    sharing: dict[str, int] = {}
    for i, s in enumerate(spec.stem):
        layer = s.make(True, f"stem_{i}")
        x = layer(x)
        sharing[layer.name] = n_units
        if app is not None:
            load_application_weights(layer, s.sources, app)
    branches = {tuple(range(n_units)): x}
    for s, groups in zip(spec.layers, branch_groups(config)):
        new = {}
        for g in groups:
            parent = next(p for p in branches if set(g) <= set(p))
            layer = s.make(True, branch_name(s.name, g, unit_names))
            new[g] = layer(branches[parent])
            sharing[layer.name] = len(g)
            if app is not None:
                load_application_weights(layer, s.sources, app)
        branches = new
    outputs = {}
    for g, y in branches.items():
        f = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool_{'_'.join(unit_names[u] for u in g)}")(y)
        for u in g:
            for t in units[u]:
                outputs[t] = keras.layers.Dense(2, activation="softmax", dtype="float32", name=t)(f)
    model = keras.Model(inputs, {t: outputs[t] for t in tasks}, name="bmtas_branched")
    return model, sharing


def transplant(supergraph: Supergraph, branched: keras.Model, config, unit_names=None) -> None:
    """Copy the supergraph's weights into the branched network of ``config``: the copy of group g at
    layer l gets the supergraph's copy o_(l,t) for a unit t of g (all units of a meet group chose the
    same index); stem and heads are copied as they are. Non-affine batch norms count as scale 1,
    offset 0."""
    from .blocks import copy_layer_weights

    config = np.asarray(config)
    unit_names = list(unit_names or [f"u{u}" for u in range(supergraph.n_units)])
    for i, layer in enumerate(supergraph.stem):
        copy_layer_weights(branched.get_layer(f"stem_{i}"), layer)
    for l, (s, groups) in enumerate(zip(supergraph.spec.layers, branch_groups(config))):
        for g in groups:
            dst = branched.get_layer(branch_name(s.name, g, unit_names))
            copy_layer_weights(dst, supergraph.mixed[l].ops[int(config[l, g[0]])])
    for t, head in zip(supergraph.tasks, supergraph.heads):
        for dst, src in zip(branched.get_layer(t).weights, head.weights):
            dst.assign(src)


def lr_groups(model: keras.Model, sharing: dict, optimizer, division: bool) -> dict:
    """Variable groups of the retraining: one per sharing degree n, with the learning rate divided by n
    (``optimizer(lr_scale)`` makes an optimiser factory); with Adam dividing the gradient instead
    would change nothing, so each degree gets its own optimiser."""
    from icao_mtl.training import VariableGroup

    by_degree: dict[int, list[str]] = {}
    for layer in model.layers:
        if layer.trainable_weights:
            by_degree.setdefault(sharing.get(layer.name, 1) if division else 1, []).append(layer.name)
    return {f"shared_by_{n}": VariableGroup(
        f"shared_by_{n}", optimizer(1.0 / n),
        lambda m, names=frozenset(names): [v for l in m.layers if l.name in names for v in l.trainable_weights])
        for n, names in sorted(by_degree.items())}


# ---------------------------------------------------------------------------------------------
# the command

@dataclass
class BranchingConfig:
    """A BMTAS search (one or several lambdas), the retraining of its results, optional baselines."""

    data: str | None = None
    mapping: str | None = None
    synth_n: int = 6000
    synth_size: int = 224
    backbone: str = "small_cnn"
    granularity: str = "fine"
    weights: str = "none"
    img_size: int | None = None
    units: str = "groups"
    copies: int | None = None
    lambdas: list = field(default_factory=lambda: [0.5])
    cost: str = "auto"
    epochs: int = 20
    warmup: int | None = None
    arch_fraction: float = 0.2
    batch_size: int = 32
    lr: float = 1e-3
    arch_lr: float = 1e-2
    weight_decay: float = 1e-4
    arch_weight_decay: float = 5e-5
    retrain_epochs: int = 24
    retrain_lr: float = 2e-3
    lr_division: bool = True
    baselines: bool = False
    augment: str = "reference"
    seed: int = 0
    out: str | None = None
    verbose: int = 1

    def warmup_epochs(self) -> int:
        return self.warmup if self.warmup is not None else max(1, self.epochs // 20)

    def train_config(self, **changes):
        from icao_mtl.config import TrainConfig

        base = TrainConfig(data=self.data, mapping=self.mapping, synth_n=self.synth_n, synth_size=self.synth_size,
                           approach="hc2", backbone=self.backbone, weights=self.weights, img_size=self.img_size,
                           augment=self.augment, batch_size=self.batch_size, lr=self.retrain_lr, lr_schedule="cosine",
                           epochs=max(1, self.retrain_epochs), seed=self.seed, check_images="exists")
        return base.copy(**changes)

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
        if self.copies is not None and self.copies < 2:
            raise ConfigError(f"--copies must be >= 2. Received: {self.copies}.")
        self.train_config().validate()
        return self

    #: Fields that may change when a run is resumed: new lambdas, baselines and retraining settings
    #: (the searches do not depend on them; a finished retraining is never redone with other settings).
    RESUMABLE = ("out", "verbose", "lambdas", "baselines", "retrain_epochs", "retrain_lr", "lr_division")

    def identity(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.RESUMABLE}


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
    common = dict(image_size=size, batch_size=cfg.batch_size, seed=cfg.seed)
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
    history = engine.fit([Phase("train", cfg.retrain_epochs, passes=[Pass("train", tuple(groups))])],
                         {"train": pipes["train"]}, pipes["val"], resume=resume)
    result = finish_run_dir(run_dir, rcfg, {"model": model}, pipes, splits, {"bmtas": history}, verbose=cfg.verbose)
    return result.metrics, info


def plot_tree(info: dict, path, title: str = "") -> None:
    """The branch tree: one column per layer, one node per copy, edges from parent to child copies, the
    units written at the leaves."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. Jupyter's) is left alone

    from icao_mtl.reports import _save

    groups = [[tuple(p) for p in g] for g in info["groups"]]
    names = info["unit_names"]
    n_units = len(names)
    leaves = sorted(groups[-1], key=lambda g: min(g)) if groups else [tuple(range(n_units))]
    order = [u for g in leaves for u in sorted(g)]
    slot = {u: i for i, u in enumerate(order)}

    def ypos(g):
        return float(np.mean([slot[u] for u in g]))

    fig = Figure(figsize=(max(6, 0.55 * len(groups) + 3), max(3, 0.6 * n_units + 1.5)))
    ax = fig.subplots()
    root = (-1, tuple(range(n_units)))
    ax.scatter([-1], [ypos(root[1])], c="k", s=40, zorder=3)
    prev = [root[1]]
    for l, g_l in enumerate(groups):
        for g in g_l:
            parent = next(p for p in prev if set(g) <= set(p))
            ax.plot([l - 1, l], [ypos(parent), ypos(g)], c="tab:blue", lw=1.5 + 0.8 * len(g))
            ax.scatter([l], [ypos(g)], c="tab:blue", s=30, zorder=3)
        prev = g_l
    for g in prev:
        ax.text(len(groups) - 0.7, ypos(g), ", ".join(names[u] for u in sorted(g)), va="center", fontsize=9)
    ax.set_xticks(range(-1, len(groups)), ["stem", *info.get("layers", range(len(groups)))], rotation=60, fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-1.5, len(groups) + 2.5)
    madds = info.get("madds", {}).get("total")
    ax.set_title(title + (f"  ({madds / 1e6:.1f} M MAdds)" if madds else ""))
    fig.tight_layout()
    _save(fig, path)


def plot_pareto(rows: list[dict], path) -> None:
    """Test mean EER against MAdds for every searched and baseline network (the paper's Figure 2)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. Jupyter's) is left alone

    from icao_mtl.reports import _save

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for r in rows:
        if r["test_eer_mean"] is None:
            continue
        base = r["name"].startswith("baseline")
        ax.scatter(r["madds"] / 1e6, 100 * r["test_eer_mean"], marker="s" if base else "o",
                   c="tab:red" if base else "tab:blue", s=50, zorder=3)
        ax.annotate(r["label"], (r["madds"] / 1e6, 100 * r["test_eer_mean"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set(xlabel="MAdds (M)", ylabel="test mean EER (%)", title="BMTAS: error against cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


@dataclass
class BranchingResult:
    out: Path
    rows: list
    structures: dict


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
    if record.is_file():
        old = aio.read_json(record)
        if not resume:
            raise ConfigError(f"{out} already holds a BMTAS run. Fix: pass --resume to continue it (new lambdas are "
                              "added), or choose another --out.")
        diff = sorted(k for k, v in cfg.identity().items() if old.get(k) != v)
        if diff:
            raise ResumeError(f"{out} holds a run with other options ({', '.join(f'{k}: {old.get(k)!r} there, {cfg.identity()[k]!r} now' for k in diff[:5])}). "
                              "Fix: resume with the same options, or choose another --out.")
    elif resume:
        raise ResumeError(f"Nothing to resume in {out} (no branching.json). Fix: pass the --out of an earlier run, or "
                          "drop --resume.")
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
              f"resource loss: {kind}; encoder {normaliser / 1e6:.1f} M MAdds per copy at {size} px.")
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
            model = Supergraph(spec, tasks, units, copies, size, weights=cfg.weights, seed=cfg.seed)
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
    return BranchingResult(out, rows, structures)


def _row(cfg, tcfg, spec, tasks, units, unit_names, config, size, splits, pipes, run_dir, resume, info, *, name, label):
    row = {"name": name, "label": label, "copies": info["copies"], "madds": info["madds"]["total"],
           "encoder_madds": info["madds"]["encoder"], "test_eer_mean": None, "val_eer_mean": None, "params": None}
    if cfg.retrain_epochs == 0:
        return row
    metrics, full = _retrain(cfg, tcfg, spec, tasks, units, unit_names, config, size, splits, pipes, run_dir,
                             resume and (run_dir / "checkpoints").is_dir(), info)
    row.update(test_eer_mean=metrics["test"]["eer_mean"], val_eer_mean=metrics["val"]["eer_mean"],
               params=full["params"]["total"])
    return row


def pareto_table(rows: list[dict]) -> str:
    lines = ["| network | copies per layer | MAdds (M) | parameters | val EER (%) | test EER (%) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        pct = [f"{100 * v:.2f}" if v is not None else "-" for v in (r["val_eer_mean"], r["test_eer_mean"])]
        lines.append(f"| {r['label']} | {' '.join(map(str, r['copies']))} | {r['madds'] / 1e6:.1f} | "
                     f"{r['params'] if r['params'] is not None else '-'} | {pct[0]} | {pct[1]} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nas.branching", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    d = BranchingConfig()
    p.add_argument("--data", default=None, help="dataset directory, or synthetic (default) / digits / lfw")
    p.add_argument("--mapping", default=None)
    p.add_argument("--backbone", default=d.backbone, help="small_cnn (default), mobilenet_v2 or vgg16")
    p.add_argument("--granularity", default=d.granularity, help="fine (default: one layer per block) or coarse")
    p.add_argument("--weights", default=d.weights, help="none (default), imagenet or a weights file")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--units", default=d.units, help="groups (default: the requisite groups) or tasks")
    p.add_argument("--copies", type=int, default=None, help="K, copies per layer (default: the number of units, "
                   "at most 4 beyond 5 units)")
    p.add_argument("--lambda", dest="lambdas", type=float, nargs="+", default=d.lambdas,
                   help="weight(s) of the resource loss; several values make a Pareto sweep (default 0.5)")
    p.add_argument("--cost", default=d.cost, help="auto (default), chain (the reference), meet, or pairwise")
    p.add_argument("--epochs", type=int, default=d.epochs, help="search epochs, warm-up included (default 20)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up epochs (default max(1, epochs // 20))")
    p.add_argument("--arch-fraction", type=float, default=d.arch_fraction)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="weights' Adam learning rate during the search")
    p.add_argument("--arch-lr", type=float, default=d.arch_lr)
    p.add_argument("--retrain-epochs", type=int, default=d.retrain_epochs, help="0: search only (default 24)")
    p.add_argument("--retrain-lr", type=float, default=d.retrain_lr)
    p.add_argument("--no-lr-division", action="store_true",
                   help="do not divide the learning rate of shared ops (the reference code's choice)")
    p.add_argument("--baselines", action="store_true", help="also train the Shared and Single networks")
    p.add_argument("--augment", default=d.augment)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--synth-n", type=int, default=d.synth_n)
    p.add_argument("--synth-size", type=int, default=d.synth_size)
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def _given(argv) -> set:
    """The destinations of the options written on the command line (not left at their defaults)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


@command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    record = Path(args.out) / "branching.json" if args.out else None
    if args.resume and record is not None and record.is_file():
        # --resume --out DIR continues with the run's own options; options given again must match them
        given = _given(argv if argv is not None else sys.argv[1:])
        old = aio.read_json(record)
        requested = old.pop("requested", {})
        if "lr_division" in requested:
            requested["no_lr_division"] = not requested.pop("lr_division")
        for key, value in {**old, **requested}.items():
            if key not in given and hasattr(args, key):
                setattr(args, key, value)
    cfg = BranchingConfig(
        data=args.data, mapping=args.mapping, synth_n=args.synth_n, synth_size=args.synth_size,
        backbone=args.backbone, granularity=args.granularity, weights=args.weights, img_size=args.img_size,
        units=args.units, copies=args.copies, lambdas=list(args.lambdas), cost=args.cost, epochs=args.epochs,
        warmup=args.warmup, arch_fraction=args.arch_fraction, batch_size=args.batch_size, lr=args.lr,
        arch_lr=args.arch_lr, retrain_epochs=args.retrain_epochs, retrain_lr=args.retrain_lr,
        lr_division=not args.no_lr_division, baselines=args.baselines, augment=args.augment, seed=args.seed,
        out=args.out, verbose=0 if args.quiet else 1)
    run(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
