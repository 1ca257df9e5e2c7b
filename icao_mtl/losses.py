"""The multi-task loss: a weighted sum of per-task cross-entropies where not-applicable labels (-1)
contribute nothing.

Each task's cross-entropy is averaged over the examples of the batch whose label is 0 or 1, so a
task with many not-applicable labels keeps the same scale as the others; a task with no labelled
example in a batch adds 0. The paper's reference code replaced -1 by a third class index that its
two-unit heads cannot represent (spec section 3.3); masking is the deliberate fix.

Under ``tf.distribute`` the averages are taken over the *global* batch: each replica divides its
sum by the count all-reduced over replicas, so summing the replicas' losses (which is what gradient
aggregation does) gives exactly the single-device loss.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _global_sum(x):
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def masked_task_terms(label, prob):
    """Per-task sums for one batch.

    Args:
        label: int tensor of shape (batch,), values in {1, 0, -1}.
        prob: float tensor of shape (batch, 2), softmax probabilities (column 1 = compliant).

    Returns:
        ``(ce_sum, n_valid, n_correct)``: float32 scalars: the summed cross-entropy, the number of
        labelled examples and the number decided correctly at the argmax.
    """
    label = tf.cast(tf.reshape(label, [-1]), tf.int32)
    prob = tf.cast(prob, tf.float32)
    valid = label >= 0
    mask = tf.cast(valid, tf.float32)
    safe = tf.maximum(label, 0)
    ce = keras.losses.sparse_categorical_crossentropy(safe, prob)
    correct = tf.cast(tf.equal(tf.cast(tf.argmax(prob, axis=-1), tf.int32), safe), tf.float32) * mask
    return tf.reduce_sum(ce * mask), tf.reduce_sum(mask), tf.reduce_sum(correct)


class MaskedMultiTaskLoss:
    """Weighted sum of masked per-task cross-entropies.

    Args:
        tasks: task ids (output names).
        weights: one weight for every task (float) or a dict task -> weight (missing tasks: 1.0).
            The reference code weighted every output by 0.1.

    Calling it with ``(labels, outputs)`` (dicts keyed by task id) returns ``(loss, logs)`` where
    ``logs`` holds, per task, ``ce/<task>``, ``n/<task>`` and ``correct/<task>`` sums, for exact
    epoch averages.
    """

    def __init__(self, tasks, weights: float | dict = 1.0):
        self.tasks = tuple(tasks)
        if isinstance(weights, dict):
            unknown = set(weights) - set(self.tasks)
            if unknown:
                raise ValueError(f"Loss weights given for unknown tasks {sorted(unknown)}; tasks are {self.tasks}.")
            self.weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}
        else:
            self.weights = {t: float(weights) for t in self.tasks}

    def __call__(self, labels: dict, outputs: dict):
        missing = [t for t in self.tasks if t not in outputs or t not in labels]
        if missing:
            raise KeyError(f"Tasks {missing} have no output or no labels; outputs: {list(outputs)}, "
                           f"labels: {list(labels)}.")
        loss = tf.constant(0.0)
        logs = {}
        for t in self.tasks:
            ce, n, correct = masked_task_terms(labels[t], outputs[t])
            loss += self.weights[t] * ce / tf.maximum(_global_sum(n), 1.0)
            logs[f"ce/{t}"], logs[f"n/{t}"], logs[f"correct/{t}"] = ce, n, correct
        return loss, logs
