"""The Auto-VirtualNet training on the engine (spec virtualnet.md §4.2-§4.3, §8.4).

Rows: a batch of B images becomes ``B x T`` rows (each image with ``T`` tasks drawn for the step,
``--tasks-per-step``; all tasks when T = k), each row with a cost level (one drawn per row in the
backbone steps, every level in the agent steps). A row's loss is its own task head's cross-entropy
through the row's configuration; unlabelled rows (label -1) count for nothing. Drawing the tasks
and the level per row is the unbiased cheap variant of eq. 7's sum over tasks and levels (§8.4).

1. **pretrain** (reading R7): the backbone and heads with random block dropping: every (row, module)
   is skipped with probability ``p_skip``, else uses a uniform count in 1..g, except the rows (a
   fraction ``p_full``) that use every block; SGD with Nesterov momentum 0.9 and weight decay.
2. **search**, every epoch two passes over the training split (the paper's alternating optimisation,
   one epoch each way):
   - *backbone*: configurations drawn from the frozen agent (epsilon-greedy), SGD on the backbone;
   - *agent*: backbone frozen (batch norm in inference mode, no gradient), configurations drawn with
     epsilon-greedy, per-row cost ``l = CE + R_i(c)`` (eq. 8, ``R_i = rho_i (mean_j p_j(c_j) / t_j)^2``),
     REINFORCE with a baseline (the bias-corrected running mean of each (task, level)'s cost):
     ``mean sg(l - baseline) log pi(c | x, t, i)``; Adam.
   Epsilon decays linearly from ``eps[0]`` to ``eps[1]`` over the search (reading R6).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

#: smoothing of the reward baseline's running mean
BASELINE_DECAY = 0.9


def groups(model, *, backbone_lr: float, agent_lr: float, steps: int, weight_decay: float = 5e-4,
           momentum: float = 0.9) -> dict:
    """``backbone`` (SGD, Nesterov momentum, cosine decay over the run's ``steps`` backbone steps) and
    ``agent`` (Adam)."""
    from icao_mtl.training import VariableGroup

    def sgd():
        schedule = keras.optimizers.schedules.CosineDecay(backbone_lr, max(int(steps), 1), alpha=0.01)
        return keras.optimizers.SGD(schedule, momentum=momentum, nesterov=True, weight_decay=weight_decay)

    return {"backbone": VariableGroup("backbone", sgd, lambda m: m.backbone_variables()),
            "agent": VariableGroup("agent", lambda: keras.optimizers.Adam(agent_lr), lambda m: m.agent_variables())}


def label_matrix(y, tasks):
    """(batch, k) int32 labels, -1 where a task does not apply."""
    return tf.stack([tf.cast(tf.reshape(y[t], [-1]), tf.int32) for t in tasks], axis=1)


def make_rows(batch, n_tasks: int, levels: int, tasks_per_step: int, seed, *, all_levels: bool):
    """``(image, task, level)`` index vectors of the rows of a batch: ``tasks_per_step`` tasks drawn
    without replacement for the step (the same for every image), one level drawn per row or every
    level (``all_levels``); image-major order."""
    chosen = tf.argsort(tf.random.stateless_uniform([n_tasks], seed))[:tasks_per_step]
    image = tf.repeat(tf.range(batch), tasks_per_step)
    task = tf.tile(tf.cast(chosen, tf.int32), [batch])
    if all_levels:
        image, task = tf.repeat(image, levels), tf.repeat(task, levels)
        level = tf.tile(tf.range(levels), [batch * tasks_per_step])
    else:
        level = tf.random.stateless_uniform(tf.shape(image), tf.random.experimental.stateless_fold_in(seed, 1),
                                            0, levels, tf.int32)
    return image, task, level


def sample_counts(logits, eps, seed):
    """Counts ``(rows, m)`` drawn from the per-module softmax of ``logits`` ``(rows, m, g + 1)``; with
    probability ``eps`` a (row, module)'s count is drawn uniformly from 0..g instead."""
    shape = tf.shape(logits)
    flat = tf.reshape(logits, [-1, shape[-1]])
    drawn = tf.random.stateless_categorical(flat, 1, tf.random.experimental.stateless_fold_in(seed, 11),
                                            dtype=tf.int32)[:, 0]
    uniform = tf.random.stateless_uniform(tf.shape(drawn), tf.random.experimental.stateless_fold_in(seed, 12),
                                          0, shape[-1], tf.int32)
    explore = tf.random.stateless_uniform(tf.shape(drawn), tf.random.experimental.stateless_fold_in(seed, 13)) < eps
    return tf.reshape(tf.where(explore, uniform, drawn), shape[:-1])


def log_prob(logits, counts):
    """``log pi(c)`` (rows,): the sum over modules of the log-softmax at the executed counts."""
    logp = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    return tf.reduce_sum(tf.gather(logp, tf.cast(counts, tf.int32), axis=-1, batch_dims=2), axis=-1)


def used_fraction(counts, fractions):
    """``mean_j p_j(c_j) / t_j`` (rows,) for counts ``(rows, m)``; ``fractions`` ``(m, g + 1)``."""
    m, n = fractions.shape
    table = tf.constant(np.asarray(fractions, np.float32).reshape(-1))
    index = tf.range(m)[None, :] * n + tf.cast(counts, tf.int32)  # module j at count c_j
    return tf.reduce_sum(tf.gather(table, index), axis=-1) / m


def random_counts(rows, modules: int, groups: int, p_skip: float, seed, p_full: float = 0.0):
    """Reading R7: each (row, module) skipped with probability ``p_skip``, else a count in 1..g; a row
    uses every block of every module with probability ``p_full`` (the largest network in every step,
    as nested and slimmable networks are trained: without it the random sub-networks learn several
    times slower here)."""
    skip = tf.random.stateless_uniform([rows, modules], tf.random.experimental.stateless_fold_in(seed, 21)) < p_skip
    count = tf.random.stateless_uniform([rows, modules], tf.random.experimental.stateless_fold_in(seed, 22),
                                        1, groups + 1, tf.int32)
    full = tf.random.stateless_uniform([rows, 1], tf.random.experimental.stateless_fold_in(seed, 23)) < p_full
    return tf.where(full, groups, tf.where(skip, tf.zeros_like(count), count))


def row_losses(z, label, task, n_tasks: int):
    """Per-row cross-entropy (rows,) of the logits ``z`` (0 where unlabelled), the valid mask and the
    engine's per-task sums ``ce``, ``n``, ``correct`` (k,)."""
    valid = tf.cast(label >= 0, tf.float32)
    target = tf.cast(tf.maximum(label, 0), tf.float32)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=tf.cast(z, tf.float32)) * valid
    correct = tf.cast(tf.equal(tf.cast(z > 0, tf.float32), target), tf.float32) * valid
    sums = {"ce": tf.math.unsorted_segment_sum(ce, task, n_tasks),
            "n": tf.math.unsorted_segment_sum(valid, task, n_tasks),
            "correct": tf.math.unsorted_segment_sum(correct, task, n_tasks)}
    return ce, valid, sums


def epsilon(ctx, eps):
    progress = tf.cast(ctx.phase_step, tf.float32) / tf.cast(tf.maximum(ctx.phase_steps, 1), tf.float32)
    return eps[0] + (eps[1] - eps[0]) * tf.clip_by_value(progress, 0.0, 1.0)


def phases(model, tasks, *, pretrain: int, search: int, tasks_per_step: int, rhos, fractions: np.ndarray,
           p_skip: float = 0.1, p_full: float = 0.5, eps=(0.2, 0.01)):
    """The engine's phases (one stream, "train")."""
    from icao_mtl.training import Pass, Phase, Step

    tasks = tuple(tasks)
    k, levels = len(tasks), len(rhos)
    modules, g = model.spec.modules, model.spec.groups
    t_step = min(int(tasks_per_step), k)
    rho = tf.constant(list(rhos), tf.float32)
    eps = (float(eps[0]), float(eps[1]))

    def rows_of(x, y, ctx, all_levels):
        image, task, level = make_rows(tf.shape(x)[0], k, levels, t_step, ctx.seed, all_levels=all_levels)
        label = tf.gather_nd(label_matrix(y, tasks), tf.stack([image, task], 1))
        return image, task, level, label, tf.gather(x, image)

    def finish(z, label, task):
        ce, valid, sums = row_losses(z, label, task, k)
        loss = tf.reduce_sum(ce) / tf.maximum(tf.reduce_sum(valid), 1.0)
        return loss, sums

    def pretrain_loss(m, x, y, ctx):
        _, task, _, label, xr = rows_of(x, y, ctx, False)
        counts = random_counts(tf.shape(xr)[0], modules, g, p_skip, ctx.seed, p_full)
        loss, sums = finish(m.forward(xr, counts, task, training=True), label, task)
        return loss, {**sums, "loss": loss}

    def agent_rows(m, x, image, task, level, training):
        logits = m.agent(x, training=training)  # (B, k, levels, m, g + 1)
        return tf.gather_nd(tf.cast(logits, tf.float32), tf.stack([image, task, level], 1))

    def backbone_loss(m, x, y, ctx):
        image, task, level, label, xr = rows_of(x, y, ctx, False)
        e = epsilon(ctx, eps)
        counts = sample_counts(tf.stop_gradient(agent_rows(m, x, image, task, level, False)), e, ctx.seed)
        loss, sums = finish(m.forward(xr, counts, task, training=True), label, task)
        return loss, {**sums, "loss": loss, "epsilon": e}

    def agent_loss(m, x, y, ctx):
        image, task, level, label, xr = rows_of(x, y, ctx, True)
        e = epsilon(ctx, eps)
        logits = agent_rows(m, x, image, task, level, True)
        counts = tf.stop_gradient(sample_counts(logits, e, ctx.seed))
        z = tf.stop_gradient(m.forward(xr, counts, task, training=False))
        ce, valid, _ = row_losses(z, label, task, k)
        used = used_fraction(counts, fractions)
        cost = ce + tf.gather(rho, level) * used * used
        # the baseline: each (task, level)'s running mean before this batch (this batch's mean the first time)
        segment = task * levels + level
        seg_n = tf.math.unsorted_segment_sum(valid, segment, k * levels)
        seg_mean = tf.math.unsorted_segment_sum(cost * valid, segment, k * levels) / tf.maximum(seg_n, 1.0)
        mean = tf.reshape(m.baseline, [-1])
        weight = tf.reshape(m.baseline_weight, [-1])
        previous = tf.where(weight > 0, mean / tf.maximum(weight, 1e-12), seg_mean)
        advantage = tf.stop_gradient(cost - tf.gather(previous, segment))
        n_valid = tf.maximum(tf.reduce_sum(valid), 1.0)
        loss = tf.reduce_sum(valid * advantage * log_prob(logits, counts)) / n_valid
        present = seg_n > 0
        m.baseline.assign(tf.reshape(tf.where(present, BASELINE_DECAY * mean + (1 - BASELINE_DECAY) * seg_mean, mean),
                                     m.baseline.shape))
        m.baseline_weight.assign(tf.reshape(tf.where(present, BASELINE_DECAY * weight + (1 - BASELINE_DECAY), weight),
                                            m.baseline_weight.shape))
        logs = {"loss": loss, "cost": tf.reduce_sum(cost * valid) / n_valid, "epsilon": e}
        for i in range(levels):
            at = tf.cast(tf.equal(level, i), tf.float32)
            logs[f"used_level{i + 1}"] = tf.reduce_sum(used * at) / tf.maximum(tf.reduce_sum(at), 1.0)
        return loss, logs

    out = []
    if pretrain:
        out.append(Phase("pretrain", pretrain, passes=[Pass("train", ("backbone",), [pretrain_loss])],
                         select_best=False))
    if search:
        out.append(Phase("search", search,
                         passes=[Pass(steps=[Step("train", ("backbone",), [backbone_loss])]),
                                 Pass(steps=[Step("train", ("agent",), [agent_loss], name="agent")])],
                         select_best=False))
    return out


def greedy_counts(model, source) -> np.ndarray:
    """Reading R8: the argmax count of every (image, task, level, module) for the images of ``source``
    (a pipeline, in its order): ``(n, k, levels, m)`` int."""
    from icao_mtl.training import _dataset

    @tf.function(reduce_retracing=True)
    def step(x):
        return tf.argmax(model.agent(x, training=False), axis=-1, output_type=tf.int32)

    out = [step(x).numpy() for x, _ in _dataset(source, 0, False)]
    return np.concatenate(out) if out else np.zeros((0, len(model.task_ids), model.levels, model.spec.modules), int)


def per_sample_scores(model, source, counts: np.ndarray, level: int) -> dict[str, np.ndarray]:
    """P(compliant) ``{task: (n,)}`` of every image of ``source`` through its own configuration
    ``counts[image, task, level]`` (the paper's per-sample models)."""
    from icao_mtl.training import _dataset

    k, size, m = len(model.task_ids), model.spec.image_size, model.spec.modules

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32),
                                  tf.TensorSpec((None, k, m), tf.int32)])
    def step(x, c):
        b = tf.shape(x)[0]
        image = tf.repeat(tf.range(b), k)
        task = tf.tile(tf.range(k), [b])
        z = model.forward(tf.gather(x, image), tf.reshape(c, [b * k, -1]), task, training=False)
        return tf.reshape(tf.sigmoid(z), [b, k])

    scores, start = [], 0
    for x, _ in _dataset(source, 0, False):
        b = int(x.shape[0])
        scores.append(step(tf.cast(x, tf.float32), tf.constant(counts[start:start + b, :, level], tf.int32)).numpy())
        start += b
    s = np.concatenate(scores) if scores else np.zeros((0, k), np.float32)
    return {t: s[:, i] for i, t in enumerate(model.task_ids)}
