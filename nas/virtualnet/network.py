"""The Auto-VirtualNet networks in Keras (spec virtualnet.md §8.1-§8.2): the modularised backbone with
exact channel-group masking, the search agent, and the sliced sub-networks of chosen configurations.

- :class:`NestedResidual` (registered): conv 3x3 (stride s) -> BN -> ReLU -> *channel mask* -> conv 3x3
  -> BN, times a *gate*, plus the parameter-free shortcut (subsampling, zero-padded channels: ResNet
  "option A"), then ReLU. Masking after BN1 + ReLU equals deleting those conv1 filters and the
  matching conv2 input slices, in training and inference mode; gate 0 (count 0) leaves the shortcut.
- :class:`Shortcut` (registered): the shortcut alone (a skipped module of a sliced network).
- :class:`SearchAgent` (registered): the image at ``agent_size`` px -> conv 3x3 (8) -> three basic
  residual blocks (8, 16 stride 2, 32 stride 2) -> global pooling -> one dense layer giving the logits
  ``(batch, tasks, levels, modules, groups + 1)`` (reading R3, task-conditioned: every image carries
  every task's labels here); ``mode="task"`` is the per-task ablation (free logits, no image input).
- :class:`VirtualNet`: stem (never split) -> ``m`` nested modules -> global pooling -> one logit per
  task (fully connected layers are never split); the agent; the policy-gradient baseline. Its
  ``forward(x, counts, task)`` runs rows (an image, a task, a configuration); calling it runs the full
  network (every block) for every task.
- :func:`build_sliced`: a plain functional network of chosen per-task counts, with only the used
  channels (a module of count 0 is its shortcut); tasks that share a configuration share one path.
  Its scores equal the masked network's; it saves as ``.keras`` with ``safe_mode=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from icao_mtl.backbones import Preprocess
from icao_mtl.errors import ConfigError

from .blocks import ModuleShape, block_ranks

#: Keras momentum of the batch norms: the moving statistics must settle within the few hundred
#: steps of a CPU run (Keras' 0.99 leaves 40% of the initial statistics after 90 steps)
BN_MOMENTUM = 0.9


@dataclass
class NetSpec:
    """The modularised backbone and the agent.

    Attributes:
        image_size: input side in pixels.
        stem: channels of the stem convolution (never split, always on).
        widths: channels of the stages; each stage has ``modules_per_stage`` residual modules, the
            first of every stage after the first with stride 2.
        groups: g = b, channel groups (building blocks) per module.
        agent_size: side of the agent's input image.
        agent_widths: channels of the agent's three residual blocks.
        agent_mode: "sample" (the paper: the agent sees the image) or "task" (free logits per task).
        order: the tasks' block orders (:data:`~nas.virtualnet.blocks.ORDERS`).
        order_seed: seed of the "random" order.
    """

    image_size: int = 32
    stem: int = 16
    widths: list = field(default_factory=lambda: [16, 32, 64])
    modules_per_stage: int = 2
    groups: int = 4
    agent_size: int = 32
    agent_widths: list = field(default_factory=lambda: [8, 16, 32])
    agent_mode: str = "sample"
    order: str = "cyclic"
    order_seed: int = 0

    def validate(self) -> "NetSpec":
        if self.groups < 1:
            raise ConfigError(f"--groups must be >= 1. Received: {self.groups}.")
        bad = [w for w in [self.stem, *self.widths] if w % self.groups]
        if bad:
            raise ConfigError(f"Every width must split into --groups {self.groups} equal groups; {bad} do not. Fix: "
                              f"widths that are multiples of {self.groups}.")
        if self.modules_per_stage < 1 or not self.widths:
            raise ConfigError("Give at least one stage with at least one module (--widths, --modules-per-stage).")
        if self.image_size < 2 ** len(self.widths):
            raise ConfigError(f"--img-size {self.image_size} is too small for {len(self.widths)} stages. Fix: at least "
                              f"{2 ** len(self.widths)} px.")
        if self.agent_mode not in ("sample", "task"):
            raise ConfigError(f"--agent {self.agent_mode!r}: give sample (the paper) or task (free logits per task).")
        if len(self.agent_widths) != 3:
            raise ConfigError(f"The agent has three residual blocks; --agent-widths takes 3 numbers. Received: "
                              f"{self.agent_widths}.")
        return self

    def shapes(self) -> list[ModuleShape]:
        """The ``m`` configurable modules, in order."""
        out, cin, size = [], self.stem, self.image_size
        for si, width in enumerate(self.widths):
            for mi in range(self.modules_per_stage):
                stride = 2 if (si > 0 and mi == 0) else 1
                shape = ModuleShape(cin, width, width, stride, size)
                out.append(shape)
                cin, size = width, shape.out_size
        return out

    @property
    def modules(self) -> int:
        return len(self.widths) * self.modules_per_stage

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.__dict__.items()}


def _shortcut(x, stride: int, cout: int):
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    cin = x.shape[-1]
    if cout > cin:
        x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, cout - cin]])
    return x


@keras.saving.register_keras_serializable(package="icao_mtl")
class Shortcut(keras.layers.Layer):
    """ResNet's parameter-free "option A" shortcut: subsample by ``stride``, zero-pad to ``cout``
    channels. (batch, h, w, cin) -> (batch, ceil(h / stride), ceil(w / stride), cout)."""

    def __init__(self, stride: int = 1, cout: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.stride, self.cout = int(stride), int(cout)

    def call(self, x):
        return _shortcut(x, self.stride, self.cout)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        up = (lambda v: None if v is None else -(-v // self.stride))
        return (b, up(h), up(w), self.cout)

    def get_config(self):
        return {**super().get_config(), "stride": self.stride, "cout": self.cout}


@keras.saving.register_keras_serializable(package="icao_mtl")
class NestedResidual(keras.layers.Layer):
    """A residual module whose internal channels are split into building blocks.

    Called on ``x`` (rows, h, w, cin), optionally with ``channels`` (rows, cmid) in {0, 1} (the used
    internal channels of every row) and ``gate`` (rows,) in {0, 1} (whether the branch is on);
    returns (rows, h / stride, w / stride, cout). Without them every block is used.

    Args:
        cin, cmid, cout: channels in, inside and out.
        stride: of the first convolution and the shortcut.
    """

    def __init__(self, cin: int = 16, cmid: int = 16, cout: int = 16, stride: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.cin, self.cmid, self.cout, self.stride = int(cin), int(cmid), int(cout), int(stride)
        self.conv1 = keras.layers.Conv2D(self.cmid, 3, strides=self.stride, padding="same", use_bias=False,
                                         name="conv1")
        self.bn1 = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="bn1")
        self.conv2 = keras.layers.Conv2D(self.cout, 3, padding="same", use_bias=False, name="conv2")
        self.bn2 = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="bn2")

    def build(self, input_shape):
        self.conv1.build(input_shape)
        inner = self.conv1.compute_output_shape(input_shape)
        self.bn1.build(inner)
        self.conv2.build(inner)
        self.bn2.build(self.conv2.compute_output_shape(inner))

    def call(self, x, channels=None, gate=None, training=None):
        h = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        if channels is not None:
            h = h * tf.cast(channels, h.dtype)[:, None, None, :]
        h = self.bn2(self.conv2(h), training=training)
        if gate is not None:
            h = h * tf.cast(gate, h.dtype)[:, None, None, None]
        return tf.nn.relu(_shortcut(x, self.stride, self.cout) + h)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        up = (lambda v: None if v is None else -(-v // self.stride))
        return (b, up(h), up(w), self.cout)

    def get_config(self):
        return {**super().get_config(), "cin": self.cin, "cmid": self.cmid, "cout": self.cout, "stride": self.stride}


class _BasicBlock(keras.layers.Layer):
    """The agent's conventional residual block: conv 3x3 (stride) -> BN -> ReLU -> conv 3x3 -> BN, plus
    the identity or a 1x1 projection, then ReLU."""

    def __init__(self, cout: int, stride: int, project: bool, **kwargs):
        super().__init__(**kwargs)
        self.c1 = keras.layers.Conv2D(cout, 3, strides=stride, padding="same", use_bias=False, name="c1")
        self.b1 = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="b1")
        self.c2 = keras.layers.Conv2D(cout, 3, padding="same", use_bias=False, name="c2")
        self.b2 = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="b2")
        self.proj = keras.layers.Conv2D(cout, 1, strides=stride, use_bias=False, name="proj") if project else None
        self.pb = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="pb") if project else None

    def call(self, x, training=None):
        h = tf.nn.relu(self.b1(self.c1(x), training=training))
        h = self.b2(self.c2(h), training=training)
        s = self.pb(self.proj(x), training=training) if self.proj is not None else x
        return tf.nn.relu(h + s)


class SearchAgent(keras.layers.Layer):
    """The search agent: ``(batch, s, s, 3)`` raw RGB -> logits ``(batch, tasks, levels, modules,
    groups + 1)``; row ``c`` of a module's softmax is the probability of using its first ``c`` blocks
    (0: skip). ``mode="task"``: free logits per (task, level, module), the same for every image."""

    def __init__(self, n_tasks: int, levels: int, modules: int, groups: int, *, size: int = 32,
                 widths=(8, 16, 32), mode: str = "sample", **kwargs):
        super().__init__(**kwargs)
        self.shape_ = (int(n_tasks), int(levels), int(modules), int(groups) + 1)
        self.size, self.mode = int(size), mode
        if mode == "task":
            self.table = self.add_weight(shape=self.shape_, initializer="zeros", name="logits")
            return
        self.resize = keras.layers.Resizing(self.size, self.size, interpolation="bilinear", name="resize")
        self.pre = Preprocess("tf", name="preprocess")
        self.stem = keras.layers.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem")
        self.stem_bn = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")
        self.blocks = [_BasicBlock(widths[0], 1, False, name="block1"), _BasicBlock(widths[1], 2, True, name="block2"),
                       _BasicBlock(widths[2], 2, True, name="block3")]
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        # small initial logits: the first policy is near uniform over the counts
        self.dense = keras.layers.Dense(int(np.prod(self.shape_)), name="logits",
                                        kernel_initializer=keras.initializers.RandomNormal(stddev=1e-3))

    def call(self, x, training=None):
        batch = tf.shape(x)[0]
        if self.mode == "task":
            return tf.broadcast_to(self.table[None], tf.concat([[batch], self.shape_], 0))
        h = self.pre(self.resize(tf.cast(x, tf.float32)))
        h = tf.nn.relu(self.stem_bn(self.stem(h), training=training))
        for block in self.blocks:
            h = block(h, training=training)
        return tf.reshape(self.dense(self.pool(h)), tf.concat([[batch], self.shape_], 0))


class VirtualNet(keras.Model):
    """The modularised multi-task backbone, its heads, the search agent and the reward baseline.

    Args:
        spec: the :class:`NetSpec`.
        tasks: the task ids (head ``t`` is column ``t`` of the one dense layer).
        levels: n_h, the cost levels.
    """

    def __init__(self, spec: NetSpec, tasks, levels: int, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec.validate()
        self.task_ids = tuple(tasks)
        self.levels = int(levels)
        self.shapes = spec.shapes()
        k, m, g = len(self.task_ids), spec.modules, spec.groups
        self.ranks = block_ranks(k, m, g, spec.order, spec.order_seed)
        self.pre = Preprocess("tf", name="preprocess")
        self.stem_conv = keras.layers.Conv2D(spec.stem, 3, padding="same", use_bias=False, name="stem_conv")
        self.stem_bn = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")
        self.blocks = [NestedResidual(s.cin, s.cmid, s.cout, s.stride, name=f"module{j}")
                       for j, s in enumerate(self.shapes)]
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.head = keras.layers.Dense(k, name="heads")
        self.agent = SearchAgent(k, levels, m, g, size=spec.agent_size, widths=spec.agent_widths,
                                 mode=spec.agent_mode, name="agent")
        # the running mean of each (task, level)'s cost and its weight (bias-corrected EMA), checkpointed
        # with the model's variables
        self.baseline = self.add_weight(shape=(k, self.levels), initializer="zeros", trainable=False,
                                        name="baseline")
        self.baseline_weight = self.add_weight(shape=(k, self.levels), initializer="zeros", trainable=False,
                                               name="baseline_weight")
        self._ranks = tf.constant(self.ranks)
        self._gid = [tf.constant(np.arange(s.cmid) // (s.cmid // g), tf.int32) for s in self.shapes]
        self.build_all(spec.image_size)
        self.built = True

    def build_all(self, size: int) -> None:
        x = tf.zeros((1, size, size, 3))
        self.forward(x, tf.zeros((1, self.spec.modules), tf.int32), tf.zeros((1,), tf.int32))
        self.agent(x)

    def trunk(self, x, counts=None, task=None, training=None):
        """Pooled features (rows, C) of the rows ``x`` (rows, s, s, 3) with ``counts`` (rows, m) int and
        ``task`` (rows,) int (None: every block)."""
        h = tf.nn.relu(self.stem_bn(self.stem_conv(self.pre(x)), training=training))
        for j, block in enumerate(self.blocks):
            if counts is None:
                h = block(h, training=training)
                continue
            c = tf.cast(counts[:, j], tf.int32)
            rank = tf.gather(tf.gather(self._ranks[:, j, :], task), self._gid[j], axis=1)  # (rows, cmid)
            h = block(h, channels=rank < c[:, None], gate=c > 0, training=training)
        return self.pool(h)

    def forward(self, x, counts, task, training=None):
        """The logit (rows,) of each row's own task head."""
        logits = self.head(self.trunk(x, counts, task, training=training))
        return tf.gather(logits, tf.cast(task, tf.int32), axis=1, batch_dims=1)

    def call(self, x, training=None):
        z = tf.cast(self.head(self.trunk(x, training=training)), tf.float32)
        p = tf.sigmoid(z)
        return {t: tf.stack([1.0 - p[:, i], p[:, i]], axis=1) for i, t in enumerate(self.task_ids)}

    def backbone_variables(self) -> list:
        """Stem, modules and heads (the SGD group)."""
        return [v for layer in (self.stem_conv, self.stem_bn, *self.blocks, self.head)
                for v in layer.trainable_variables]

    def agent_variables(self) -> list:
        return list(self.agent.trainable_variables)

    def backbone_params(self) -> int:
        """Parameters of the one shared backbone with its heads (moving statistics included)."""
        return int(sum(layer.count_params() for layer in (self.stem_conv, self.stem_bn, *self.blocks, self.head)))


def used_channels(net: VirtualNet, task_index: int, counts) -> list[np.ndarray]:
    """Per module, the indices of the internal channels the counts ``(m,)`` use for a task."""
    g = net.spec.groups
    out = []
    for j, s in enumerate(net.shapes):
        gid = np.arange(s.cmid) // (s.cmid // g)
        out.append(np.flatnonzero(net.ranks[task_index, j][gid] < int(counts[j])))
    return out


def _copy_bn(dst, src, index=None) -> None:
    weights = src.get_weights()
    dst.set_weights([w if index is None else w[index] for w in weights])


def build_sliced(net: VirtualNet, counts: dict, *, name: str = "virtualnet") -> keras.Model:
    """The plain network of per-task counts ``{task: (m,) ints}``: input "image" (s, s, 3) raw RGB,
    outputs ``{task: (batch, 2)}`` (softmax over [-z/2, z/2] of the task's logit z, i.e. sigmoid(z)),
    with the weights of ``net``. Tasks with the same used channels in every module share one path."""
    tasks = [t for t in net.task_ids if t in counts]
    missing = sorted(set(counts) - set(net.task_ids))
    if missing:
        raise ConfigError(f"Tasks {missing} are not tasks of this network ({', '.join(net.task_ids)}).")
    size = net.spec.image_size
    inputs = keras.Input((size, size, 3), name="image")
    pre = Preprocess("tf", name="preprocess")
    stem_conv = keras.layers.Conv2D(net.spec.stem, 3, padding="same", use_bias=False, name="stem_conv")
    stem_bn = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")
    stem = keras.layers.ReLU(name="stem_relu")(stem_bn(stem_conv(pre(inputs))))
    paths: dict[tuple, list] = {}
    for t in tasks:
        used = used_channels(net, net.task_ids.index(t), counts[t])
        paths.setdefault(tuple(tuple(u.tolist()) for u in used), []).append(t)
    outputs, copies = {}, []
    for p, (used, members) in enumerate(paths.items()):
        h = stem
        for j, (s, channels) in enumerate(zip(net.shapes, used)):
            if not channels:
                h = Shortcut(s.stride, s.cout, name=f"path{p}_module{j}_skip")(h)
                continue
            layer = NestedResidual(s.cin, len(channels), s.cout, s.stride, name=f"path{p}_module{j}")
            h = layer(h)
            copies.append((layer, net.blocks[j], np.array(channels)))
        feature = keras.layers.GlobalAveragePooling2D(name=f"path{p}_pool")(h)
        for t in members:
            outputs[t] = keras.layers.Dense(2, activation="softmax", name=t, dtype="float32")(feature)
    model = keras.Model(inputs, {t: outputs[t] for t in tasks}, name=name)
    stem_conv.set_weights(net.stem_conv.get_weights())
    _copy_bn(stem_bn, net.stem_bn)
    for layer, source, channels in copies:
        layer.conv1.set_weights([source.conv1.kernel.numpy()[..., channels]])
        _copy_bn(layer.bn1, source.bn1, channels)
        layer.conv2.set_weights([source.conv2.kernel.numpy()[:, :, channels, :]])
        _copy_bn(layer.bn2, source.bn2)
    kernel, bias = net.head.get_weights()
    for t in tasks:
        i = net.task_ids.index(t)
        w, b = kernel[:, i:i + 1], bias[i:i + 1]
        model.get_layer(t).set_weights([np.concatenate([-w / 2, w / 2], 1), np.concatenate([-b / 2, b / 2])])
    return model

