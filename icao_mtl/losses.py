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


class MaskedMultiTaskLoss:
    """Weighted sum of masked per-task cross-entropies, computed for all tasks at once.

    Args:
        tasks: task ids (output names).
        weights: one weight for every task (float) or a dict task -> weight (missing tasks: 1.0).
            The reference code weighted every output by 0.1.

    Calling it with ``(labels, outputs)`` (dicts keyed by task id) returns ``(loss, logs)`` where
    ``logs`` holds vectors over ``tasks`` (in that order): ``ce`` (summed cross-entropy), ``n``
    (labelled examples) and ``correct`` (decided correctly at the argmax), for exact epoch averages.
    The tasks are stacked into one (batch, tasks, 2) tensor, so the cost of the loss does not grow
    with the number of outputs' operations.
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
        self._w = [self.weights[t] for t in self.tasks]

    def stack(self, labels: dict, outputs: dict):
        """(labels (batch, tasks) int32, probabilities (batch, tasks, 2) float32)."""
        missing = [t for t in self.tasks if t not in outputs or t not in labels]
        if missing:
            raise KeyError(f"Tasks {missing} have no output or no labels; outputs: {list(outputs)}, "
                           f"labels: {list(labels)}.")
        y = tf.stack([tf.cast(tf.reshape(labels[t], [-1]), tf.int32) for t in self.tasks], axis=1)
        p = tf.stack([tf.cast(outputs[t], tf.float32) for t in self.tasks], axis=1)
        return y, p

    def __call__(self, labels: dict, outputs: dict):
        y, p = self.stack(labels, outputs)
        valid = y >= 0
        mask = tf.cast(valid, tf.float32)
        safe = tf.maximum(y, 0)
        eps = keras.backend.epsilon()
        p_true = tf.gather(tf.clip_by_value(p, eps, 1.0 - eps), safe, axis=2, batch_dims=2)
        ce = -tf.math.log(p_true)
        ce_sum = tf.reduce_sum(ce * mask, axis=0)
        n = tf.reduce_sum(mask, axis=0)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(p, axis=-1, output_type=tf.int32), safe), tf.float32) * mask,
                                axis=0)
        loss = tf.reduce_sum(tf.constant(self._w, tf.float32) * ce_sum / tf.maximum(_global_sum(n), 1.0))
        return loss, {"ce": ce_sum, "n": n, "correct": correct}


def _column_means_summed(values, mask):
    """``values`` (batch, k) averaged per column over the rows where ``mask`` (batch, k) is 1, in the
    global batch under ``tf.distribute``, then summed over the k columns."""
    return tf.reduce_sum(tf.reduce_sum(values * mask, axis=0) / tf.maximum(_global_sum(tf.reduce_sum(mask, axis=0)),
                                                                           1.0))


def _masked_huber(pred, target, delta: float):
    """Huber loss of ``pred`` against ``target`` (both (batch, k)), averaged per column over the known
    (finite) targets of the global batch and summed over the k columns."""
    target = tf.cast(target, tf.float32)
    known = tf.math.is_finite(target)
    err = tf.abs(tf.cast(pred, tf.float32) - tf.where(known, target, 0.0))
    quad = tf.minimum(err, delta)
    return _column_means_summed(0.5 * quad * quad + delta * (err - quad), tf.cast(known, tf.float32))


class GradedMultiTaskLoss(MaskedMultiTaskLoss):
    """:class:`MaskedMultiTaskLoss` plus regressions of graded targets: each task's severity, the head's
    pose, face landmarks.

    A label says on which side of its threshold an image's defect lies; the severity says how far.
    Where a dataset knows it (the synthetic set's ``severities.csv``), regressing it from the same
    hidden layer as the label's head gives every image a target that varies within each class: an
    image with a 3° head roll and one with 7° are both compliant, but no longer the same target. The
    pose (``pose.csv``: roll, yaw, pitch in degrees) goes further for ``rotation``, whose label is a
    threshold on the largest of three signed angles: each angle is a target of its own.

    The model's outputs hold, beside the tasks' probabilities, :data:`~icao_mtl.data.SEVERITY_KEY` ->
    (batch, tasks) predictions (:func:`icao_mtl.architectures.with_severity_outputs`) and/or
    :data:`~icao_mtl.data.POSE_KEY` -> (batch, 3) in units of ``pose_scale`` degrees
    (:func:`~icao_mtl.architectures.with_pose_outputs`); the labels hold the same keys with the targets
    (:func:`severity_targets`; the pose in degrees; NaN: unknown, no loss). Each term is the Huber loss
    per column, averaged over the batch's known targets (global batch under ``tf.distribute``) and
    summed over columns, as the cross-entropies are.

    Args:
        tasks, weights: as :class:`MaskedMultiTaskLoss`.
        severity_weight: factor of the severity term in the optimised loss.
        delta: the Huber loss's delta, in units of the targets (standard deviations; ``pose_scale``).
        pose_weight: factor of the pose term (0: none).
        pose_scale: degrees per unit of the pose output (10: the 8-degree threshold is 0.8).
        landmark_weight: factor of the landmark terms (0: none): the Huber loss of the points'
            coordinates (:data:`~icao_mtl.data.LANDMARK_KEY`, fractions of the side) in units of
            ``landmark_scale`` of the side (0.01: 2.2 px at 224 px), per coordinate, summed; and, given
            ``landmark_grid`` and the maps' logits (:data:`~icao_mtl.data.LANDMARK_MAPS_KEY`), the
            cross-entropy of each map's softmax against a Gaussian of one cell's width around its
            point, summed over the points.
        landmark_grid: ``(x, y)`` cell centres of the maps in fractions of the side
            (:func:`icao_mtl.architectures.landmark_grid`).

    Returns, from a call: ``(ce + severity_weight * severity + pose_weight * pose + landmark_weight *
    landmarks, logs)``; ``logs["loss"]`` is the classification loss alone (what the progress line,
    history and ``val_loss`` compare), ``logs["severity_loss"]``, ``logs["pose_loss"]`` and
    ``logs["landmark_loss"]`` the terms present.
    Without graded targets in the labels (validation) it is the classification loss.
    """

    def __init__(self, tasks, weights: float | dict = 1.0, severity_weight: float = 1.0, delta: float = 1.0,
                 pose_weight: float = 0.0, pose_scale: float = 10.0, landmark_weight: float = 0.0,
                 landmark_scale: float = 0.01, landmark_grid=None):
        super().__init__(tasks, weights)
        self.severity_weight = float(severity_weight)
        self.delta = float(delta)
        self.pose_weight = float(pose_weight)
        self.pose_scale = float(pose_scale)
        self.landmark_weight = float(landmark_weight)
        self.landmark_scale = float(landmark_scale)
        self.landmark_grid = None if landmark_grid is None else tuple(
            tf.constant(g, tf.float32) for g in landmark_grid)

    def __call__(self, labels: dict, outputs: dict):
        from .data.pipeline import LANDMARK_KEY, LANDMARK_MAPS_KEY, POSE_KEY, SEVERITY_KEY

        loss, logs = super().__call__(labels, outputs)
        total = loss
        if SEVERITY_KEY in labels and SEVERITY_KEY in outputs:
            severity = _masked_huber(outputs[SEVERITY_KEY], labels[SEVERITY_KEY], self.delta)
            total += self.severity_weight * severity
            logs = {**logs, "severity_loss": severity}
        if self.pose_weight and POSE_KEY in labels and POSE_KEY in outputs:
            pose = _masked_huber(outputs[POSE_KEY], tf.cast(labels[POSE_KEY], tf.float32) / self.pose_scale,
                                 self.delta)
            total += self.pose_weight * pose
            logs = {**logs, "pose_loss": pose}
        if self.landmark_weight and LANDMARK_KEY in labels and LANDMARK_KEY in outputs:
            marks = _masked_huber(tf.cast(outputs[LANDMARK_KEY], tf.float32) / self.landmark_scale,
                                  tf.cast(labels[LANDMARK_KEY], tf.float32) / self.landmark_scale, self.delta)
            total += self.landmark_weight * marks
            logs = {**logs, "landmark_loss": marks}
            if self.landmark_grid is not None and LANDMARK_MAPS_KEY in outputs:
                heat = self._heat_map_loss(outputs[LANDMARK_MAPS_KEY], labels[LANDMARK_KEY])
                total += self.landmark_weight * heat
                logs = {**logs, "landmark_map_loss": heat}
        if total is loss:
            return loss, logs
        return total, {**logs, "loss": loss}

    def _heat_map_loss(self, logits, target):
        """Cross-entropy of each map's softmax (logits (B, H, W, P)) against a Gaussian of one cell's
        width around its point (target (B, 2P): x's then y's, fractions of the side), averaged over the
        known points of the global batch and summed over the points."""
        xs, ys = self.landmark_grid
        logits = tf.cast(logits, tf.float32)
        b, h, w, p = (tf.shape(logits)[k] for k in range(4))
        target = tf.cast(target, tf.float32)
        count = target.shape[-1] // 2
        tx, ty = target[:, :count], target[:, count:]
        known = tf.math.is_finite(tx) & tf.math.is_finite(ty)
        tx, ty = tf.where(known, tx, 0.0), tf.where(known, ty, 0.0)
        sigma = xs[1] - xs[0]
        gx = tf.exp(-tf.square(xs[None, None, :] - tx[..., None]) / (2 * sigma * sigma))  # (B, P, W)
        gy = tf.exp(-tf.square(ys[None, None, :] - ty[..., None]) / (2 * sigma * sigma))  # (B, P, H)
        dist = gy[..., :, None] * gx[..., None, :]  # (B, P, H, W)
        dist = tf.reshape(dist, [b, p, h * w])
        dist = dist / tf.maximum(tf.reduce_sum(dist, -1, keepdims=True), 1e-12)
        logp = tf.nn.log_softmax(tf.reshape(tf.transpose(logits, [0, 3, 1, 2]), [b, p, h * w]), axis=-1)
        ce = -tf.reduce_sum(dist * logp, axis=-1)  # (B, P)
        return _column_means_summed(ce, tf.cast(known, tf.float32))


def severity_targets(ds, reference=None, clip: float = 4.0):
    """Graded targets for :class:`GradedMultiTaskLoss`: ``(severity - threshold) / scale`` per task.

    Args:
        ds: a :class:`~icao_mtl.data.LabeledDataset` with severities.
        reference: the dataset whose thresholds and scales are used (the training split, so that
            every split is scaled alike); default ``ds``.
        clip: targets are clipped to ``[-clip, clip]``.

    Returns:
        float32 (len(ds), n_tasks): 0 at the task's threshold, positive on the non-compliant side,
        in units of the reference's standard deviation of that task's severity; NaN where the
        severity or the threshold is unknown, or where the reference's severities do not vary.
    """
    import warnings

    import numpy as np

    reference = reference if reference is not None else ds
    if ds.severities is None or reference.severities is None:
        raise ValueError("severity_targets needs datasets with severities (severities.csv).")
    thresholds = reference.thresholds()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a task without any severity: NaN, said in the docstring
        scale = np.nanstd(reference.severities, axis=0)
        scale = np.where(scale > 0, scale, np.nan)
        z = (ds.severities - thresholds[None, :]) / scale[None, :]
    return np.clip(z, -clip, clip).astype(np.float32)
