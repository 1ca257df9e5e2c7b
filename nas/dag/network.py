"""The central network of the restricted-DAG method (spec dag_mtl.md §3.2 "A1", §8.1-§8.3) as a Keras
functional model of registered layers (``.keras`` with ``safe_mode=True``, no Lambda).

States ``v_1..v_N`` all have ``C`` channels; ``v_j`` is at ``size_j`` pixels (pairs of states per
resolution, halving: spec §8.1). Tasks are batched task-major: a tensor of a hidden state holds the
K tasks' rows one after the other, (K * B, h, w, C), because every task has its own hidden states.

- ``readin_j`` (:class:`ReadIn`): the image brought to ``v_j``'s resolution, Conv 3x3 -> BN -> ReLU;
  computed once per image (B rows) and then repeated for the K tasks (:class:`TaskTile`);
- ``edge_i_j`` (:class:`EdgeBlock`): Conv 3x3 (no bias) -> BN -> ReLU -> MaxPool(size_i / size_j), on the
  task-major state ``v_i``;
- ``mix_j`` (:class:`GateMix`): ``v_j^k = (g_in[k] R_j + sum_i g[k, ij] e_ij(v_i^k)) / In_j^k``, the
  gates of task k being sigmoid(logits) with the structural in-degree (warm-up, search) or binary
  masks with the active in-degree (fine-tuning, the final network), switched by a variable;
- ``readout`` (:class:`GateReadOut`): ``v_L^k = sum_i g_out[k, i] GAP(v_i^k)``;
- ``slice_<task>`` (:class:`TaskRows`) and the head ``<task>`` (Dense(2, softmax)).

The gate logits (alpha: read-ins, gamma: edges, beta: read-outs, zero-initialised) live in the mix and
read-out layers; :func:`gate_variables` collects them for their own optimiser. A network built with
``used`` (the union of the tasks' sub-networks) has only the layers some task uses: the fine-tuned,
smaller and faster model, whose forward equals the masked full network's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np
import tensorflow as tf

from icao_mtl.backbones import HEAD_PREFIX, Preprocess
from icao_mtl.errors import ConfigError

from .graph import edges

#: momentum of the batch norms (PyTorch's 0.1 = Keras' 0.9: spec §8.1; Keras' 0.99 adapts slowly on
#: short schedules)
BN_MOMENTUM = 0.9


#: the two readings of eqs. 3-4 (spec §3.2)
COMBINES = ("a1", "a2")

#: backbones whose feature map can be v_0, and their stride (input side / feature-map side)
BACKBONE_STRIDES = {"small_cnn": 16, "mobilenet_v2": 32, "vgg16": 32, "vgg19": 32, "resnet50_v2": 32}


@dataclass(frozen=True)
class DagSpec:
    """Shape of a central network.

    Attributes:
        n, m: hidden states and flow constant (edges i -> j with j - i <= m).
        width: channels of every hidden state.
        image_size: input side in pixels; ``channels``: input channels (3).
        combine: how a state combines its read-in and edges (spec §3.2): "a1" (the read-in is one of
            the incoming links of the in-degree normalisation, as Algorithm 1's matrix implies) or "a2"
            (the read-in added outside, the edges divided by their number).
        backbone: "none" (the read-ins see the image, the paper) or a backbone of
            :mod:`icao_mtl.backbones` whose feature map is v_0 (computed once for all tasks).
    """

    n: int = 8
    m: int = 3
    width: int = 32
    image_size: int = 64
    channels: int = 3
    combine: str = "a1"
    backbone: str = "none"

    def input_side(self) -> int:
        """Side of v_0: the image, or the backbone's feature map."""
        if self.backbone == "none":
            return self.image_size
        return self.image_size // BACKBONE_STRIDES[self.backbone]

    def sizes(self) -> list[int]:
        """Side of v_1..v_N: pairs of states per resolution, halving from image_size / 2 (spec §8.1),
        never below 2 pixels; on a backbone's feature map, from its side, never below 1."""
        if self.backbone == "none":
            return [max(2, self.image_size // 2 ** ((j + 1) // 2)) for j in range(1, self.n + 1)]
        return [max(1, self.input_side() // 2 ** ((j - 1) // 2)) for j in range(1, self.n + 1)]

    def validate(self) -> "DagSpec":
        if self.n < 1 or self.m < 1 or self.width < 1:
            raise ConfigError(f"The central network needs N >= 1, M >= 1 and a positive width. Received: N={self.n}, "
                              f"M={self.m}, width={self.width}.")
        if self.combine not in COMBINES:
            raise ConfigError(f"--combine {self.combine!r}: choose a1 (recommended) or a2.")
        if self.backbone != "none" and self.backbone not in BACKBONE_STRIDES:
            raise ConfigError(f"--backbone {self.backbone!r}: the central network reads the feature map of one of "
                              f"{', '.join(BACKBONE_STRIDES)}, or the image (none).")
        if self.image_size < 8 or self.input_side() < 1:
            raise ConfigError(f"--img-size {self.image_size} is too small for the central network. Fix: 32 or more "
                              "(on a backbone, at least its stride).")
        sizes = self.sizes()
        for i, j in edges(self.n, self.m) if self.n > 1 else []:
            # pooling by the integer ratio (valid padding) must land on the target's side: 7 -> 3 -> 1 works
            if sizes[i - 1] // (sizes[i - 1] // sizes[j - 1]) != sizes[j - 1]:
                raise ConfigError(f"State {i} ({sizes[i - 1]} px) cannot be pooled to state {j} ({sizes[j - 1]} px). "
                                  "Fix: use an image size that is a power of two (32, 64, 128).")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# the layers

@keras.saving.register_keras_serializable(package="icao_mtl")
class EdgeBlock(keras.layers.Layer):
    """``e_ij``: Conv 3x3 (no bias) -> BN -> ReLU -> MaxPool(``pool``) (conv at the source resolution,
    then pooling: the paper's order, spec §6)."""

    def __init__(self, filters: int, pool: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.pool = int(filters), int(pool)
        self.conv = keras.layers.Conv2D(self.filters, 3, padding="same", use_bias=False, name="conv")
        self.bn = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="bn")
        self.pooling = keras.layers.MaxPooling2D(self.pool, name="pool") if self.pool > 1 else None

    def build(self, input_shape):
        self.conv.build(input_shape)
        out = self.conv.compute_output_shape(input_shape)
        self.bn.build(out)

    def call(self, x, training=None):
        x = keras.ops.relu(self.bn(self.conv(x), training=training))
        return self.pooling(x) if self.pooling is not None else x

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, None if h is None else h // self.pool, None if w is None else w // self.pool, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "pool": self.pool}


@keras.saving.register_keras_serializable(package="icao_mtl")
class ReadIn(keras.layers.Layer):
    """``R_j``: the image average-pooled to ``v_j``'s resolution, then Conv 3x3 (no bias) -> BN -> ReLU."""

    def __init__(self, filters: int, pool: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.pool = int(filters), int(pool)
        self.pooling = keras.layers.AveragePooling2D(self.pool, name="pool") if self.pool > 1 else None
        self.conv = keras.layers.Conv2D(self.filters, 3, padding="same", use_bias=False, name="conv")
        self.bn = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="bn")

    def build(self, input_shape):
        b, h, w, c = input_shape
        shape = (b, None if h is None else h // self.pool, None if w is None else w // self.pool, c)
        self.conv.build(shape)
        self.bn.build(self.conv.compute_output_shape(shape))

    def call(self, x, training=None):
        if self.pooling is not None:
            x = self.pooling(x)
        return keras.ops.relu(self.bn(self.conv(x), training=training))

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, None if h is None else h // self.pool, None if w is None else w // self.pool, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "pool": self.pool}


@keras.saving.register_keras_serializable(package="icao_mtl")
class TaskTile(keras.layers.Layer):
    """(B, ...) -> (K * B, ...): the same tensor for each of the K tasks, task-major."""

    def __init__(self, tasks: int, **kwargs):
        super().__init__(**kwargs)
        self.tasks = int(tasks)

    def call(self, x):
        return tf.tile(x, [self.tasks] + [1] * (len(x.shape) - 1))

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "tasks": self.tasks}


def _per_row(gates, rows):
    """(K,) gates -> (K * B, 1, 1, 1) for a task-major tensor of ``rows`` = K * B rows."""
    k = tf.shape(gates)[0]
    return tf.reshape(tf.repeat(gates, rows // k), [-1, 1, 1, 1])


@keras.saving.register_keras_serializable(package="icao_mtl")
class GateMix(keras.layers.Layer):
    """``v_j`` of every task from its read-in and incoming edges (spec §3.2: A1, or A2 with
    ``combine="a2"``).

    Holds, for the K tasks, the logits ``alpha_j`` (K,) and ``gamma_{.j}`` (K, n_in) of the structural
    inputs of ``v_j`` (its read-in, then the edges from ``sources`` in order), the binary masks of the
    same shapes and the mode (``hard``: 0 sigmoid gates / structural in-degree, 1 masks / active
    in-degree). ``used`` (booleans per input) says which inputs the call receives: a pruned network
    leaves out those no task uses (their masks are 0 for every task).
    """

    def __init__(self, tasks: int, sources, used=None, combine: str = "a1", **kwargs):
        super().__init__(**kwargs)
        self.tasks, self.sources = int(tasks), [int(s) for s in sources]
        if combine not in ("a1", "a2"):
            raise ValueError(f"GateMix combine must be a1 or a2. Received: {combine!r}")
        self.combine = combine
        n_in = 1 + len(self.sources)
        self.used = [bool(u) for u in used] if used is not None else [True] * n_in
        if len(self.used) != n_in:
            raise ValueError(f"used needs {n_in} flags (read-in + {len(self.sources)} edges).")

    def build(self, input_shape):
        n_in = 1 + len(self.sources)
        self.logits = self.add_weight(shape=(self.tasks, n_in), initializer="zeros", name="logits", trainable=True)
        self.masks = self.add_weight(shape=(self.tasks, n_in), initializer="ones", name="masks", trainable=False)
        self.hard = self.add_weight(shape=(), initializer="zeros", name="hard", trainable=False)

    def gates(self):
        """(K, n_in) weights of the inputs and (K,) in-degrees, as the mode says (A2: of the edges
        alone)."""
        soft = tf.sigmoid(tf.cast(self.logits, tf.float32))
        hard = tf.cast(self.masks, tf.float32)
        on = tf.cast(self.hard, tf.float32) > 0.5
        weights = tf.where(on, hard, soft)
        counted = hard if self.combine == "a1" else hard[:, 1:]
        structural = tf.fill([self.tasks], float(len(self.sources) + (self.combine == "a1")))
        degree = tf.where(on, tf.reduce_sum(counted, axis=1), structural)
        return weights, degree

    def call(self, inputs):
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        weights, degree = self.gates()
        index = [i for i, u in enumerate(self.used) if u]
        if len(inputs) != len(index):
            raise ValueError(f"{self.name} expects {len(index)} inputs, got {len(inputs)}.")
        rows = tf.shape(inputs[0])[0]
        if self.combine == "a2":  # v = g_in R + (sum_i g_i e_i) / |P(j)|
            read_in, edges = 0.0, 0.0
            for x, i in zip(inputs, index):
                term = _per_row(weights[:, i], rows) * tf.cast(x, tf.float32)
                if i == 0:
                    read_in = read_in + term
                else:
                    edges = edges + term
            return read_in + tf.math.divide_no_nan(edges, _per_row(degree, rows))
        total = 0.0
        for x, i in zip(inputs, index):
            total = total + _per_row(weights[:, i], rows) * tf.cast(x, tf.float32)
        # a task whose state has no active input gets zeros (divide-no-nan, spec §3.2)
        return tf.math.divide_no_nan(total, _per_row(degree, rows))

    def compute_output_shape(self, input_shape):
        shapes = input_shape if isinstance(input_shape, list) else [input_shape]
        return shapes[0]

    def get_config(self):
        return {**super().get_config(), "tasks": self.tasks, "sources": self.sources, "used": self.used,
                "combine": self.combine}


@keras.saving.register_keras_serializable(package="icao_mtl")
class GateReadOut(keras.layers.Layer):
    """``v_L^k = sum_i g_out[k, i] GAP(v_i^k)`` (no normalisation, eq. 5), over the states in
    ``states``; holds the logits ``beta`` (K, N), the masks and the mode."""

    def __init__(self, tasks: int, n: int, states=None, **kwargs):
        super().__init__(**kwargs)
        self.tasks, self.n = int(tasks), int(n)
        self.states = [int(s) for s in states] if states is not None else list(range(1, self.n + 1))

    def build(self, input_shape):
        self.logits = self.add_weight(shape=(self.tasks, self.n), initializer="zeros", name="logits", trainable=True)
        self.masks = self.add_weight(shape=(self.tasks, self.n), initializer="ones", name="masks", trainable=False)
        self.hard = self.add_weight(shape=(), initializer="zeros", name="hard", trainable=False)

    def gates(self):
        on = tf.cast(self.hard, tf.float32) > 0.5
        return tf.where(on, tf.cast(self.masks, tf.float32), tf.sigmoid(tf.cast(self.logits, tf.float32)))

    def call(self, inputs):
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        weights = self.gates()
        rows = tf.shape(inputs[0])[0]
        total = 0.0
        for x, s in zip(inputs, self.states):
            pooled = tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2])
            total = total + tf.reshape(_per_row(weights[:, s - 1], rows), [-1, 1]) * pooled
        return total

    def compute_output_shape(self, input_shape):
        shapes = input_shape if isinstance(input_shape, list) else [input_shape]
        return (shapes[0][0], shapes[0][-1])

    def get_config(self):
        return {**super().get_config(), "tasks": self.tasks, "n": self.n, "states": self.states}


@keras.saving.register_keras_serializable(package="icao_mtl")
class TaskRows(keras.layers.Layer):
    """The rows of task ``index`` of a task-major tensor of K tasks: (K * B, ...) -> (B, ...)."""

    def __init__(self, index: int, tasks: int, **kwargs):
        super().__init__(**kwargs)
        self.index, self.tasks = int(index), int(tasks)

    def call(self, x):
        b = tf.shape(x)[0] // self.tasks
        return x[self.index * b:(self.index + 1) * b]

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "index": self.index, "tasks": self.tasks}


# ---------------------------------------------------------------------------------------------
# the network

def edge_name(i: int, j: int) -> str:
    # "head_" prefix: the task-major part of the network is per task (Grad-CAM then maps the read-ins,
    # which see each image once)
    return f"{HEAD_PREFIX}edge_{i}_{j}"


def readin_name(j: int) -> str:
    return f"readin_{j}"


def used_parts(subs: dict, spec: DagSpec) -> dict:
    """What the union of the tasks' sub-networks uses: ``{"edges": set, "read_ins": set, "read_outs": set,
    "states": set}`` (a state is computed when a used edge leaves it, or it is read out)."""
    used_edges = set().union(*(s.hidden for s in subs.values()))
    read_ins = {j for s in subs.values() for j, v in enumerate(s.read_in, 1) if v}
    read_outs = {j for s in subs.values() for j, v in enumerate(s.read_out, 1) if v}
    states = {i for i, _ in used_edges} | {j for _, j in used_edges} | read_ins | read_outs
    return {"edges": used_edges, "read_ins": read_ins, "read_outs": read_outs, "states": states}


def build_network(spec: DagSpec, tasks, *, subs: dict | None = None, name: str = "dag_network",
                  weights: str = "none", freeze_backbone: bool = False) -> keras.Model:
    """The central network over ``tasks``: every structural edge, or, with ``subs`` ({task: SubNetwork}),
    only what some task's sub-network uses (its masks set and the mode switched to binary masks).
    With ``spec.backbone``, v_0 is the backbone's feature map (``weights``: none, imagenet or a file;
    ``freeze_backbone``: its layers not trained, its batch norms in inference mode).

    Returns a functional model from raw images (batch, s, s, channels) in [0, 255] to {task: (batch, 2)}.
    """
    spec.validate()
    tasks = tuple(tasks)
    k, n = len(tasks), spec.n
    sizes = spec.sizes()
    all_edges = edges(n, spec.m) if n > 1 else []
    parts = used_parts(subs, spec) if subs is not None else None
    inputs = keras.Input((spec.image_size, spec.image_size, spec.channels), name="image")
    if spec.backbone == "none":
        x = Preprocess("unit", name="preprocess")(inputs)
    else:
        from icao_mtl.backbones import build_backbone

        x, backbone = build_backbone(spec.backbone, inputs, weights=weights)
        for layer in backbone.layers:
            layer.trainable = not freeze_backbone
    states = {}
    for j in range(1, n + 1):
        sources = [i for i, jj in all_edges if jj == j]
        if parts is not None and j not in parts["states"]:
            continue
        flags, feeds = [], []
        use_in = parts is None or j in parts["read_ins"]
        flags.append(use_in)
        if use_in:
            r = ReadIn(spec.width, spec.input_side() // sizes[j - 1], name=readin_name(j))(x)
            feeds.append(TaskTile(k, name=f"tile_{j}")(r))
        for i in sources:
            use = (parts is None or (i, j) in parts["edges"]) and i in states
            flags.append(use)
            if use:
                feeds.append(EdgeBlock(spec.width, sizes[i - 1] // sizes[j - 1], name=edge_name(i, j))(states[i]))
        if not feeds:  # no task feeds this state (it is only read out): it is zero
            continue
        states[j] = GateMix(k, sources, flags, combine=spec.combine, name=f"mix_{j}")(feeds)
    out_states = sorted(s for s in states if parts is None or s in parts["read_outs"])
    if not out_states:
        raise ConfigError("No task reads out any computed state: the sub-networks are empty.")
    v_l = GateReadOut(k, n, out_states, name="readout")([states[s] for s in out_states])
    outputs = {}
    for index, t in enumerate(tasks):
        rows = TaskRows(index, k, name=f"{HEAD_PREFIX}rows_{index}")(v_l)
        outputs[t] = keras.layers.Dense(2, activation="softmax", dtype="float32", name=t)(rows)
    model = keras.Model(inputs, outputs, name=name)
    if subs is not None:
        set_masks(model, subs, tasks, spec)
        set_hard(model, True)
    return model


def gate_layers(model) -> list:
    return [l for l in model.layers if isinstance(l, (GateMix, GateReadOut))]


def gate_variables(model) -> list:
    """The upper-level variables (alpha, gamma in the mix layers, beta in the read-out)."""
    return [l.logits for l in gate_layers(model)]


def network_variables(model) -> list:
    """Theta and the heads: every trainable variable but the gate logits."""
    gates = {id(v) for v in gate_variables(model)}
    return [v for v in model.trainable_variables if id(v) not in gates]


def set_hard(model, hard: bool) -> None:
    for l in gate_layers(model):
        l.hard.assign(1.0 if hard else 0.0)


def probabilities(model, spec: DagSpec, tasks) -> dict:
    """sigmoid of the gates per task: {task: (read_in (N,), read_out (N,), edges (|E|,))}."""
    n = spec.n
    all_edges = edges(n, spec.m) if n > 1 else []
    read_in = np.zeros((len(tasks), n))
    gamma = np.zeros((len(tasks), len(all_edges)))
    index = {e: c for c, e in enumerate(all_edges)}
    read_out = np.zeros((len(tasks), n))
    for l in gate_layers(model):
        values = 1.0 / (1.0 + np.exp(-np.asarray(l.logits.numpy(), np.float64)))
        if isinstance(l, GateReadOut):
            read_out = values
            continue
        j = int(l.name.split("_")[-1])
        read_in[:, j - 1] = values[:, 0]
        for c, i in enumerate(l.sources):
            gamma[:, index[(i, j)]] = values[:, 1 + c]
    return {t: (read_in[k], read_out[k], gamma[k]) for k, t in enumerate(tasks)}


def set_masks(model, subs: dict, tasks, spec: DagSpec) -> None:
    """Write the tasks' binary sub-networks into the mask variables."""
    for l in gate_layers(model):
        masks = np.zeros(tuple(l.masks.shape), np.float32)
        for k, t in enumerate(tasks):
            sub = subs[t]
            if isinstance(l, GateReadOut):
                masks[k] = sub.read_out
            else:
                j = int(l.name.split("_")[-1])
                masks[k, 0] = sub.read_in[j - 1]
                for c, i in enumerate(l.sources):
                    masks[k, 1 + c] = float((i, j) in sub.hidden)
        l.masks.assign(masks)


def transplant(src: keras.Model, dst: keras.Model) -> None:
    """Copy every layer's weights of ``dst`` from the layer of the same name in ``src`` (a pruned network
    from the full one: the kept layers have the same shapes)."""
    for layer in dst.layers:
        if not layer.weights:
            continue
        twin = src.get_layer(layer.name)
        for a, b in zip(layer.weights, twin.weights):
            a.assign(b)
