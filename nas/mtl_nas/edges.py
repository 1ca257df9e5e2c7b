"""The search space of MTL-NAS (spec mtl_nas.md §2.2, §3, §4.2, §8.1): the allowed fusion edges, the
gate modes, the temperature and MinEntropy schedules. Pure NumPy / TensorFlow, no Keras layers.

Units are the task networks (one backbone branch per task group). An edge ``(t, u, i, j)`` feeds the
pre-fusion output of stage ``j`` of unit ``u`` into the fusion op after stage ``i`` of unit ``t``
(``u != t``): allowed when ``j <= i``, both stages lie in the same block (same resolution and
channels) and ``i - j < limit``. The flat order of the edges (and of the logits) is by target unit,
then target stage, then source unit, then source stage: the order in which a fusion op concatenates
its sources.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf


class Edge(NamedTuple):
    target: int  # unit t
    source: int  # unit u
    stage: int  # i, the target stage
    from_stage: int  # j, the source stage


def blocks_of(stage_config) -> list[int]:
    """The block of every stage: ``[2, 2, 3]`` -> ``[0, 0, 1, 1, 2, 2, 2]``."""
    return [b for b, size in enumerate(stage_config) for _ in range(int(size))]


def connectivity(stage_config, limit: int = 3) -> dict[int, list[int]]:
    """Source stages of every target stage for one direction: ``{i: [j, ...]}`` (ascending j)."""
    block = blocks_of(stage_config)
    return {i: [j for j in range(i + 1) if block[j] == block[i] and i - j < limit] for i in range(len(block))}


def edges_per_direction(stage_config, limit: int = 3) -> int:
    return sum(len(s) for s in connectivity(stage_config, limit).values())


def edge_table(n_units: int, stage_config, limit: int = 3) -> list[Edge]:
    """Every candidate edge, in the flat order of the logits."""
    sources = connectivity(stage_config, limit)
    return [Edge(t, u, i, j) for t in range(n_units) for i in sorted(sources) for u in range(n_units) if u != t
            for j in sources[i]]


def fusion_inputs(table: list[Edge], target: int, stage: int) -> list[int]:
    """Indices (into the flat edge list) of the sources of the fusion op of unit ``target`` after
    ``stage``, in its concatenation order."""
    return [k for k, e in enumerate(table) if e.target == target and e.stage == stage]


# ---------------------------------------------------------------------------------------------
# schedules (spec §3.3, §4.2)

def poly(step, total, begin: float, end: float, power: float, period=(0.0, 1.0)):
    """The reference's ``poly`` helper: from ``begin`` to ``end`` between steps ``period[0] * total``
    and ``period[1] * total``, clamped outside; an empty period jumps to ``end`` after its step."""
    s0, s1 = period[0] * total, period[1] * total
    if s1 <= s0:
        return begin if step <= s0 else end
    progress = min(max((step - s0) / (s1 - s0), 0.0), 1.0)
    return end - (end - begin) * (1.0 - progress) ** power


def temperature(step, total):
    """tau(s) = (1 - s / N)^2 (tensors or numbers), at least 1e-8."""
    if isinstance(step, (int, float)) and isinstance(total, (int, float)):
        return max((1.0 - min(step / total, 1.0)) ** 2, 1e-8)
    progress = tf.minimum(tf.cast(step, tf.float32) / tf.cast(total, tf.float32), 1.0)
    return tf.maximum(tf.square(1.0 - progress), 1e-8)


def entropy_weight(step, total, weight: float = 10.0, period=(0.0, 0.0)):
    """lambda_H(s): with the released configs' period (0, 0), 0 at step 0 and ``weight`` after; with
    (0, 1), a linear ramp from 0 to ``weight`` over the search."""
    if isinstance(step, (int, float)) and isinstance(total, (int, float)):
        return poly(step, total, 0.0, weight, 1.0, period)
    s = tf.cast(step, tf.float32)
    s0, s1 = period[0] * tf.cast(total, tf.float32), period[1] * tf.cast(total, tf.float32)
    if period[1] <= period[0]:
        return tf.where(s <= s0, 0.0, weight)
    return weight * tf.clip_by_value((s - s0) / (s1 - s0), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# gates and entropy (spec §3.2, §4.2, §8.4)

def binary_entropy(logits):
    """H(sigmoid(a)) in nats, elementwise, as ``sigmoid_cross_entropy_with_logits(sigmoid(a), a)``
    (numerically safe at any logit)."""
    logits = tf.convert_to_tensor(logits, tf.float32)
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.sigmoid(logits), logits=logits)


def entropy_loss(logits, table: list[Edge]):
    """L_H: the mean over target units of the mean entropy of their incoming edges (the reference's
    mean over the two directions, for any number of units)."""
    h = binary_entropy(logits)
    targets = sorted({e.target for e in table})
    if not targets:
        return tf.constant(0.0)
    per_target = [tf.reduce_mean(tf.gather(h, [k for k, e in enumerate(table) if e.target == t])) for t in targets]
    return tf.add_n(per_target) / len(per_target)


def concrete_gates(logits, tau, seed):
    """Binary-concrete samples sigmoid((a + log u - log(1 - u)) / tau), u ~ U(0, 1) from a stateless
    ``seed``; one sample per edge, shared by the batch. P(g > 0.5) = sigmoid(a) for every tau."""
    logits = tf.convert_to_tensor(logits, tf.float32)
    u = tf.clip_by_value(tf.random.stateless_uniform(tf.shape(logits), seed), 1e-6, 1.0 - 1e-6)
    return tf.sigmoid((logits + tf.math.log(u) - tf.math.log(1.0 - u)) / tf.maximum(tf.cast(tau, tf.float32), 1e-8))


def hard_gates(logits):
    """1[a > 0]: the evaluation gates, and the edges the final network keeps."""
    return tf.cast(tf.convert_to_tensor(logits) > 0, tf.float32)


def kept(logits, table: list[Edge]) -> list[Edge]:
    return [e for e, a in zip(table, np.asarray(logits, np.float64)) if a > 0]
