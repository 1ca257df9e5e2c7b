"""The BMTAS search on the engine (spec branching_bmtas.md §3): routing units, the resource term, the
warm-up and search phases, their variable groups, and the per-epoch trace.

1. warm-up (``W`` epochs): unit u trains only copy u (mixtures fixed to ``e_u``), one optimiser step
   per unit and batch, on the weight split (80% of the training split);
2. search (``E - W`` epochs), each epoch: reset the architecture optimiser; one pass over the
   architecture split (20%) updating ``alpha`` from ``sum_u (L_u + lambda * L_R)`` (L_R: the expected
   cost of :class:`~nas.bmtas.partitions.ResourceLoss`, exact over set partitions; the pairwise
   surrogate for many units); reset the weight optimiser and the batch-norm statistics; one pass over
   the weight split, one step per unit. The temperature goes linearly from 5.0 to 0.1 (spec §3.3).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from icao_mtl import io as aio
from icao_mtl.errors import ConfigError

from .partitions import ResourceLoss, discretize, pairwise_sharing_cost, temperature
from .supergraph import Supergraph


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
        cost: alpha -> expected cost (e.g. :class:`~nas.bmtas.partitions.ResourceLoss`).
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
        # every unit's forward in one call: the stem and the first layer's copies computed once
        unit_outputs = m.forward_units(x, [m.sample(u) for u in range(m.n_units)], training=True)
        for u, (loss_fn, index) in enumerate(per_unit):
            outputs = unit_outputs[u]
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
