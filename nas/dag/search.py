"""The three stages of the restricted-DAG method on the engine (spec dag_mtl.md §4):

1. **warm-up**: every gate frozen at sigmoid(0) = 0.5 (the logits are in no optimiser), the network
   weights and heads trained on the task loss; at its end the weights are snapshotted (``warmup``);
2. **search**: one forward per batch, two losses from it: the task loss updates the weights (Adam), the
   task loss + ``lambda_sq`` * squeeze loss updates the gate logits (their own Adam); at its end the
   flow-based reduction (Algorithm 1, :func:`nas.dag.graph.reduce_task`) turns each task's gates into a
   binary sub-network, written into the mask variables;
3. **fine-tuning**: the weights rewound to the warm-up snapshot, the gates replaced by the binary masks
   (no sigmoid, active in-degrees), the weights trained on the task loss; model selection on validation.
"""

from __future__ import annotations

from collections import deque

import keras
import numpy as np
import tensorflow as tf

from icao_mtl.losses import MaskedMultiTaskLoss

from .graph import SubNetwork, edges, reduce_task
from .network import DagSpec, GateMix, gate_layers, gate_variables, network_variables, probabilities, set_hard, \
    set_masks


def squeeze_loss(model, kappa: float):
    """``sum_k max(sum_e sigmoid(gamma_ke) - kappa, 0)`` over the structural edges (eq. 9)."""
    soft = [tf.sigmoid(tf.cast(l.logits[:, 1:], tf.float32)) for l in gate_layers(model)
            if isinstance(l, GateMix) and l.sources]
    if not soft:
        return tf.constant(0.0), tf.constant(0.0)
    per_task = tf.add_n([tf.reduce_sum(s, axis=1) for s in soft])
    return tf.reduce_sum(tf.nn.relu(per_task - kappa)), tf.reduce_mean(per_task)


def on_paths(sub: SubNetwork) -> SubNetwork:
    """The links of ``sub`` that lie on some path from the input to the read-out (Algorithm 1 may keep
    a link into a dead end, spec §5.3; it changes nothing of the output, or adds a constant from a state
    that nothing feeds): the sub-network the fine-tuned model computes."""
    n = sub.n
    adj = sub.adjacency()
    def reach(start, matrix):
        seen, todo = {start}, deque([start])
        while todo:
            u = todo.popleft()
            for v in np.flatnonzero(matrix[u]):
                if int(v) not in seen:
                    seen.add(int(v))
                    todo.append(int(v))
        return seen
    forward, backward = reach(0, adj), reach(n + 1, adj.T)
    keep = forward & backward
    return SubNetwork(n, tuple(int(v and s in keep) for s, v in enumerate(sub.read_in, 1)),
                      tuple(int(v and s in keep) for s, v in enumerate(sub.read_out, 1)),
                      frozenset(e for e in sub.hidden if e[0] in keep and e[1] in keep))


def reduce_all(model, spec: DagSpec, tasks) -> dict:
    """Algorithm 1 for every task, from the current gates: ``{task: (raw, on_paths)}``."""
    out = {}
    for t, (a, b, g) in probabilities(model, spec, tasks).items():
        raw = reduce_task(a, b, g, spec.n, spec.m)
        out[t] = (raw, on_paths(raw))
    return out


def masks_of(model, spec: DagSpec, tasks) -> dict:
    """The binary sub-networks held in the mask variables: {task: SubNetwork}."""
    all_edges = set(edges(spec.n, spec.m)) if spec.n > 1 else set()
    read_in = np.zeros((len(tasks), spec.n), int)
    read_out = np.zeros((len(tasks), spec.n), int)
    hidden = [set() for _ in tasks]
    for l in gate_layers(model):
        m = np.asarray(l.masks.numpy()) > 0.5
        if not isinstance(l, GateMix):
            read_out = m.astype(int)
            continue
        j = int(l.name.split("_")[-1])
        read_in[:, j - 1] = m[:, 0]
        for c, i in enumerate(l.sources):
            for k in np.flatnonzero(m[:, 1 + c]):
                hidden[k].add((i, j))
    return {t: SubNetwork(spec.n, tuple(read_in[k]), tuple(read_out[k]), frozenset(hidden[k] & all_edges))
            for k, t in enumerate(tasks)}


def groups(model, *, lr: float = 1e-3, arch_lr: float = 1e-2) -> dict:
    """"weights" (Theta and heads; Adam) and "arch" (the gate logits; Adam) (spec §4.3, §8.2)."""
    from icao_mtl.training import VariableGroup

    return {"weights": VariableGroup("weights", lambda: keras.optimizers.Adam(lr), network_variables),
            "arch": VariableGroup("arch", lambda: keras.optimizers.Adam(arch_lr), gate_variables)}


def phases(model, spec: DagSpec, tasks, *, warmup: int, search: int, finetune: int, lambda_sq: float,
           kappa: float, on_reduced=None):
    """The engine's :class:`~icao_mtl.training.Phase` s of the three stages (data stream "train")."""
    from icao_mtl.training import Pass, Phase

    task_loss = MaskedMultiTaskLoss(tasks)
    rewound = [v for v in model.variables if not any(v is g for l in gate_layers(model)
                                                     for g in (l.logits, l.masks, l.hard))]

    def search_loss(m, x, y, ctx):
        loss, logs = task_loss(y, m(x, training=ctx.training))
        sq, active = squeeze_loss(m, kappa)
        return {"weights": loss, "arch": loss + lambda_sq * sq}, {**logs, "loss": loss, "squeeze": sq,
                                                                  "soft_edges": active}

    def end_warmup(engine):
        engine.snapshot("warmup", rewound)

    def end_search(engine):
        reduced = reduce_all(engine.model, spec, tasks)
        set_masks(engine.model, {t: used for t, (_, used) in reduced.items()}, tasks, spec)
        if on_reduced:
            on_reduced(reduced)

    def begin_finetune(engine):
        engine.rewind("warmup")
        set_hard(engine.model, True)

    return [Phase("warmup", warmup, passes=[Pass("train", ("weights",))], on_end=end_warmup, validate=False,
                  select_best=False),
            Phase("search", search, passes=[Pass("train", ("weights", "arch"), losses=[search_loss])],
                  on_end=end_search, validate=False, select_best=False),
            Phase("finetune", finetune, passes=[Pass("train", ("weights",))], setup=begin_finetune)]
