"""The MTL-NAS search on the engine (spec mtl_nas.md §3-§5, §8.4).

1. **pretrain** (our adaptation of the reference's start from trained single-task networks): every
   gate at 0, so the units are independent networks, trained on the whole training split (Adam);
2. **search**: each round one *architecture step* on the next batch of the architecture half
   (deterministic gates sigmoid(a); task loss + lambda_H(s) * MinEntropy + coupled L2 1e-3 on a;
   Adam beta_1 0.5) then one *weight step* on the next batch of the weight half (binary-concrete
   gates at temperature (1 - s/N)^2; task loss + coupled L2 2.5e-4; SGD momentum 0.9 with the poly
   learning rate (1 - s/N)^0.9, x10 on the heads' kernels, x20 on their biases, x100 on the fusion
   ops). The two halves are a 50/50 split of the training split redrawn every epoch
   (:class:`~icao_mtl.data.SplitView`). Batch norm in training mode in both steps;
3. optionally **retrain** the discretised network (gates 1[a > 0]); the authors evaluate the
   searched network directly, which is the default.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from icao_mtl.losses import MaskedMultiTaskLoss

from .edges import concrete_gates, entropy_loss, entropy_weight, hard_gates, temperature

#: the weight step's groups and their learning-rate multipliers (the reference's lr_mult)
WEIGHT_GROUPS = {"backbone": 1.0, "head_kernel": 10.0, "head_bias": 20.0, "fusion": 100.0}


def _l2(variables):
    return 0.5 * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])


def groups(model, *, rounds: int, pretrain_lr: float = 1e-3, weight_lr: float = 1e-3, arch_lr: float = 1e-2,
           momentum: float = 0.9) -> dict:
    """``pretrain`` (Adam on the network), the four weight groups (SGD with the poly schedule over the
    search's ``rounds`` weight steps, times their multipliers) and ``arch`` (the logits; Adam)."""
    from icao_mtl.training import VariableGroup

    def sgd(mult):
        def make():
            schedule = keras.optimizers.schedules.PolynomialDecay(weight_lr * mult, max(int(rounds), 1), 0.0,
                                                                 power=0.9)
            return keras.optimizers.SGD(schedule, momentum=momentum)
        return make

    out = {"pretrain": VariableGroup("pretrain", lambda: keras.optimizers.Adam(pretrain_lr),
                                     lambda m: m.network_variables()),
           "arch": VariableGroup("arch", lambda: keras.optimizers.Adam(arch_lr, beta_1=0.5, beta_2=0.999,
                                                                       epsilon=1e-8), lambda m: [m.logits])}
    for name, mult in WEIGHT_GROUPS.items():
        out[name] = VariableGroup(name, sgd(mult), lambda m, name=name: m.parts()[name])
    return out


def phases(model, tasks, *, pretrain: int, search: int, retrain: int = 0, entropy: float = 10.0,
           entropy_period=(0.0, 0.0), weight_decay: float = 2.5e-4, arch_decay: float = 1e-3):
    """The engine's phases (streams: "train", "weight_half", "arch_half")."""
    from icao_mtl.training import Pass, Phase, Step

    task_loss = MaskedMultiTaskLoss(tasks)
    table = model.table
    weight_groups = tuple(WEIGHT_GROUPS)
    period = tuple(float(p) for p in entropy_period)

    def rounds(ctx):
        # both step kinds count in phase_step: round s is steps 2s (architecture) and 2s + 1 (weights)
        return ctx.phase_step // 2, tf.maximum(ctx.phase_steps // 2, 1)

    def pretrain_loss(m, x, y, ctx):
        return task_loss(y, m.forward(x, tf.zeros([len(table)]), training=ctx.training))

    def arch_loss(m, x, y, ctx):
        s, n = rounds(ctx)
        loss, logs = task_loss(y, m.forward(x, tf.sigmoid(m.logits), training=True))
        h = entropy_loss(m.logits, table)
        lam = entropy_weight(s, n, entropy, period)
        p = tf.sigmoid(m.logits)
        undecided = tf.reduce_mean(tf.cast((p > 0.05) & (p < 0.95), tf.float32))
        total = loss + lam * h + arch_decay * _l2([m.logits])
        return {"arch": total}, {**logs, "loss": loss, "entropy": h, "entropy_weight": lam,
                                 "undecided": undecided, "kept_edges": tf.reduce_sum(hard_gates(m.logits)),
                                 "mean_gate": tf.reduce_mean(p)}

    def weight_loss(m, x, y, ctx):
        s, n = rounds(ctx)
        tau = temperature(s, n)
        gates = tf.stop_gradient(concrete_gates(m.logits, tau, ctx.seed))
        loss, logs = task_loss(y, m.forward(x, gates, training=True))
        total = loss + weight_decay * _l2(m.network_variables())
        return {g: total for g in weight_groups}, {**logs, "loss": loss, "temperature": tau}

    def retrain_loss(m, x, y, ctx):
        return task_loss(y, m(x, training=ctx.training))

    out = []
    if pretrain:
        out.append(Phase("pretrain", pretrain, passes=[Pass("train", ("pretrain",), [pretrain_loss])],
                         select_best=False))
    out.append(Phase("search", search, passes=[Pass(steps=[Step("arch_half", ("arch",), [arch_loss]),
                                                           Step("weight_half", weight_groups, [weight_loss])])],
                     select_best=False))
    if retrain:
        out.append(Phase("retrain", retrain, passes=[Pass("train", ("pretrain",), [retrain_loss])]))
    return out
