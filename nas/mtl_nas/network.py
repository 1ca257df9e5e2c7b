"""The MTL-NAS supernet in Keras (spec mtl_nas.md §2, §8.2, §8.4): one backbone branch per unit (a
task group), an NDDR fusion op after every stage of every unit, one gated input per candidate edge.

Layers (registered, no ``Lambda``; the final network saves as ``.keras`` with ``safe_mode=True``):

- ``<unit>_stage<i>``: stage ``i`` of the unit's backbone (a 2x2 max pooling first when the stage
  opens a block, then conv 3x3 -> BN -> ReLU for the small CNN; VGG16's ``blockB_convC`` with its ReLU);
- ``<unit>_fuse<i>`` (:class:`NddrFusion`): ``[x_own, g_1 x_1, ..., g_m x_m]`` concatenated on the
  channels -> 1x1 conv without bias -> BN -> ReLU; the sources are the other units' pre-fusion stage
  outputs of the edge table (:mod:`nas.mtl_nas.edges`); its output feeds the unit's next stage;
- ``<unit>_gap`` and one ``Dense(2, softmax)`` head per task of the unit, named by the task.

:func:`build_net` makes the searchable network (inputs ``image`` (batch, s, s, 3) in [0, 255] and
``gates`` (batch, E), every row the same gate vector) or, given ``keep``, the final network with only
the kept edges (input ``image`` alone; a removed edge's kernel rows are deleted, so the concatenation
and the convolution shrink). :class:`Supernet` holds the searchable network and the E edge logits;
calling it runs the network with the evaluation gates 1[logit > 0].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from icao_mtl.backbones import Preprocess
from icao_mtl.errors import ConfigError

from ..common.blocks import ConvBlock
from .edges import Edge, blocks_of, edge_table, fusion_inputs, hard_gates

#: Keras momentum of the fusion ops' batch norms: the reference's PyTorch momentum 0.05
FUSION_BN_MOMENTUM = 0.95

#: Keras momentum of the small CNN branches' batch norms: their moving statistics must settle within
#: the few hundred steps of a CPU run (Keras' 0.99 leaves 40% of the initial statistics after 90 steps)
BRANCH_BN_MOMENTUM = 0.9

#: VGG16's 13 convolutions by block (keras.applications names) and their channels
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

#: MobileNetV2's 17 inverted-residual blocks grouped by output channels and resolution (spec §8.3)
MOBILENET_V2_BLOCKS = ((16, 1), (24, 2), (32, 3), (64, 4), (96, 3), (160, 3), (320, 1))

#: the backbones a unit can have, and their total stride
BRANCH_STRIDES = {"small_cnn": None, "vgg16": 16, "mobilenet_v2": 32}


def identity_kernel(channels: int, n_sources: int, init=(1.0, 0.0), m: int | None = None) -> np.ndarray:
    """The 1x1 kernel ``[w_self I; w_other / m I; ...]`` in Keras layout (in, out): shape
    ``((1 + n_sources) * C, C)``; ``m`` (default ``n_sources``) divides the source blocks."""
    w_self, w_other = init
    m = n_sources if m is None else m
    blocks = [w_self * np.eye(channels)] + [(w_other / max(m, 1)) * np.eye(channels)] * n_sources
    return np.concatenate(blocks, axis=0).astype(np.float32)


@keras.saving.register_keras_serializable(package="icao_mtl")
class NddrFusion(keras.layers.Layer):
    """NDDR-style fusion of a unit's own feature with gated features of the other units.

    Called on ``[own, source_1, ..., source_m]`` (all (batch, h, w, C)), and, when ``gate_indices``
    is given, a last element ``gates`` (batch, E) from which the sources' gates are gathered.

    Args:
        channels: C.
        n_sources: m.
        gate_indices: the sources' positions in the gate vector (None: ungated, every source at 1).
        init: (w_self, w_other) of the identity-style initialisation; None: Keras' default
            (Glorot uniform) instead.
        init_m: the m of ``w_other / m`` (default ``n_sources``; the final network keeps the
            searched network's).
        relu: apply the ReLU (the reference; without, for linear-bottleneck backbones).
    """

    def __init__(self, channels: int, n_sources: int, gate_indices=None, init=(1.0, 0.0), init_m: int | None = None,
                 relu: bool = True, bn_momentum: float = FUSION_BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.n_sources = int(channels), int(n_sources)
        self.gate_indices = None if gate_indices is None else [int(k) for k in gate_indices]
        if self.gate_indices is not None and len(self.gate_indices) != self.n_sources:
            raise ValueError(f"NddrFusion: {len(self.gate_indices)} gate indices for {self.n_sources} sources.")
        self.init = None if init is None else (float(init[0]), float(init[1]))
        self.init_m = None if init_m is None else int(init_m)
        self.relu, self.bn_momentum = bool(relu), float(bn_momentum)
        self.bn = keras.layers.BatchNormalization(momentum=self.bn_momentum, epsilon=1e-3, name="bn")

    def build(self, input_shape):
        width = (1 + self.n_sources) * self.channels
        self.kernel = self.add_weight(name="kernel", shape=(width, self.channels), initializer="glorot_uniform")
        if self.init is not None:
            self.kernel.assign(identity_kernel(self.channels, self.n_sources, self.init, self.init_m))
        own = input_shape[0]
        self.bn.build((*own[:-1], self.channels))

    def call(self, inputs, training=None):
        inputs = list(inputs)
        own = inputs[0]
        sources = inputs[1:1 + self.n_sources]
        if self.gate_indices is not None and self.n_sources:
            gates = tf.gather(tf.cast(inputs[-1], own.dtype), self.gate_indices, axis=1)  # (batch, m)
            sources = [s * gates[:, k, None, None, None] for k, s in enumerate(sources)]
        x = keras.ops.concatenate([own, *sources], axis=-1) if sources else own
        x = keras.ops.matmul(x, keras.ops.cast(self.kernel, x.dtype))
        x = self.bn(x, training=training)
        return keras.ops.relu(x) if self.relu else x

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:-1], self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "n_sources": self.n_sources,
                "gate_indices": self.gate_indices, "init": self.init, "init_m": self.init_m, "relu": self.relu,
                "bn_momentum": self.bn_momentum}


@dataclass
class NetSpec:
    """The task networks' shape.

    Attributes:
        backbone: "small_cnn" (``stage_config`` blocks of conv 3x3 -> BN -> ReLU with ``channels``),
            "vgg16" (keras.applications' 13 convolutions, blocks [2, 2, 3, 3, 3]) or "mobilenet_v2"
            (its stem, then the 17 inverted-residual blocks as stages, blocks [1, 2, 3, 4, 3, 3, 1]; the
            fusion ops without ReLU, since the block outputs are linear bottlenecks, spec §8.3).
        image_size: input side in pixels.
        stage_config: stages per block (small CNN).
        channels: channels per block (small CNN).
        limit: the depth limit of the edges (i - j < limit).
        init: the fusion ops' (w_self, w_other); None for Glorot.
        relu: the fusion ops' ReLU.
    """

    backbone: str = "small_cnn"
    image_size: int = 64
    stage_config: list = field(default_factory=lambda: [2, 2, 2])
    channels: list = field(default_factory=lambda: [16, 32, 64])
    limit: int = 3
    init: tuple | None = (1.0, 0.0)
    relu: bool = True

    def __post_init__(self):
        if self.backbone in ("vgg16", "mobilenet_v2"):
            blocks = VGG16_BLOCKS if self.backbone == "vgg16" else MOBILENET_V2_BLOCKS
            self.stage_config = [n for _, n in blocks]
            self.channels = [c for c, _ in blocks]
        if self.backbone == "mobilenet_v2":
            self.relu = False
        self.stage_config = [int(n) for n in self.stage_config]
        self.channels = [int(c) for c in self.channels]

    def validate(self) -> "NetSpec":
        if self.backbone not in BRANCH_STRIDES:
            raise ConfigError(f"--backbone {self.backbone!r}: MTL-NAS maps small_cnn, vgg16 and mobilenet_v2 into "
                              "stages. Fix: --backbone one of those.")
        if len(self.stage_config) != len(self.channels) or min(self.stage_config, default=0) < 1:
            raise ConfigError(f"--stages {self.stage_config} and --channels {self.channels} must have one positive "
                              "entry per block each. Fix: e.g. --stages 2 2 2 --channels 16 32 64.")
        stride = BRANCH_STRIDES[self.backbone] or 2 ** (len(self.stage_config) - 1)
        if self.image_size % stride:
            raise ConfigError(f"--img-size {self.image_size} is not divisible by {stride} (the branches' total "
                              f"downsampling). Fix: use a multiple of {stride}.")
        if self.limit < 1:
            raise ConfigError(f"--limit must be >= 1. Received: {self.limit}.")
        return self

    @property
    def stages(self) -> int:
        return sum(self.stage_config)

    def stage_channels(self) -> list[int]:
        return [self.channels[b] for b in blocks_of(self.stage_config)]

    def table(self, n_units: int) -> list[Edge]:
        return edge_table(n_units, self.stage_config, self.limit)


def _stage(spec: NetSpec, unit: str, i: int):
    """The layers of stage ``i`` of one unit's backbone (pooling first when the stage opens a block)."""
    block = blocks_of(spec.stage_config)
    if spec.backbone == "mobilenet_v2":  # block 0 follows the stem; the stride-2 blocks downsample
        from ..common.blocks import _mbv2_block

        return ([ConvBlock(32, 3, 2, "relu6", bn_momentum=0.999, name=f"{unit}_stem")] if i == 0 else []) + \
            [_mbv2_block(i, True, f"{unit}_block_{i}")]
    layers = []
    if i > 0 and block[i] != block[i - 1]:
        layers.append(keras.layers.MaxPooling2D(2, name=f"{unit}_pool{i}"))
    c = spec.channels[block[i]]
    if spec.backbone == "vgg16":
        b, first = block[i], block.index(block[i])
        layers.append(keras.layers.Conv2D(c, 3, padding="same", activation="relu",
                                          name=f"{unit}_block{b + 1}_conv{i - first + 1}"))
    else:
        layers.append(ConvBlock(c, 3, bn_momentum=BRANCH_BN_MOMENTUM, name=f"{unit}_stage{i}"))
    return layers


def build_net(spec: NetSpec, units: list, *, keep=None, fusion: bool = True, name: str = "mtl_nas"):
    """The searchable network (``keep`` None) or the final network with the kept edges only.

    Args:
        units: ``[(unit name, [tasks])]``.
        keep: boolean per edge of ``spec.table(len(units))``.
        fusion: False: no fusion op at all (the plain multi-branch network, for comparisons).
    Returns:
        a functional model ``{"image", "gates"} -> {task: (batch, 2)}`` (searchable) or ``image ->
        {task: (batch, 2)}`` (final)."""
    table = spec.table(len(units))
    if not fusion:
        keep = np.zeros(len(table), bool)
    gated = keep is None
    image = keras.Input((spec.image_size, spec.image_size, 3), name="image")
    gates = keras.Input((len(table),), name="gates") if gated else None
    mode = {"vgg16": "caffe", "mobilenet_v2": "tf"}.get(spec.backbone, "unit")
    x = Preprocess(mode, name="preprocess")(image)
    current = [x] * len(units)
    pre = [[None] * spec.stages for _ in units]
    widths = spec.stage_channels()
    for i in range(spec.stages):
        for t, (uname, _) in enumerate(units):
            h = current[t]
            for layer in _stage(spec, uname, i):
                h = layer(h)
            pre[t][i] = h
        for t, (uname, _) in enumerate(units):
            if not fusion:
                current[t] = pre[t][i]
                continue
            full = fusion_inputs(table, t, i)
            idx = full if gated else [k for k in full if keep[k]]
            sources = [pre[table[k].source][table[k].from_stage] for k in idx]
            fusion = NddrFusion(widths[i], len(idx), gate_indices=idx if gated else None, init=spec.init,
                                init_m=len(full), relu=spec.relu, name=f"{uname}_fuse{i}")
            current[t] = fusion([pre[t][i], *sources, gates] if gated else [pre[t][i], *sources])
    outputs = {}
    for t, (uname, tasks) in enumerate(units):
        f = keras.layers.GlobalAveragePooling2D(name=f"{uname}_gap")(current[t])
        for task in tasks:
            outputs[task] = keras.layers.Dense(2, activation="softmax", dtype="float32", name=task)(f)
    inputs = {"image": image, "gates": gates} if gated else image
    return keras.Model(inputs, outputs, name=name)


class Supernet(keras.Model):
    """The searchable network and its edge logits (initialised to 0: every gate at sigmoid(0) = 0.5).

    ``supernet(x)`` runs with the evaluation gates 1[logit > 0] (what the engine validates and
    predicts); :meth:`forward` with any gate vector (E,)."""

    def __init__(self, spec: NetSpec, units: list, **kwargs):
        super().__init__(name=kwargs.pop("name", "mtl_nas_supernet"), **kwargs)
        self.spec, self.units = spec, [(u, list(t)) for u, t in units]
        self.table = spec.table(len(units))
        self.net = build_net(spec, self.units)
        self.logits = self.add_weight(name="edge_logits", shape=(len(self.table),), initializer="zeros")

    def forward(self, x, gates, training=None):
        x, gates = tf.convert_to_tensor(x), tf.cast(gates, tf.float32)
        rows = tf.broadcast_to(gates[None], (tf.shape(x)[0], len(self.table)))
        return self.net({"image": x, "gates": rows}, training=training)

    def call(self, x, training=None):
        return self.forward(x, hard_gates(self.logits), training=training)

    # the variable groups of the search (spec §5): backbone x1, heads' kernels x10, biases x20, fusion x100
    def parts(self) -> dict:
        out = {"backbone": [], "head_kernel": [], "head_bias": [], "fusion": []}
        for layer in self.net.layers:
            if isinstance(layer, NddrFusion):
                out["fusion"] += layer.trainable_variables
            elif isinstance(layer, keras.layers.Dense):
                out["head_kernel"].append(layer.kernel)
                out["head_bias"].append(layer.bias)
            else:
                out["backbone"] += layer.trainable_variables
        return out

    def network_variables(self) -> list:
        return list(self.net.trainable_variables)


def load_pretrained(net: keras.Model, units: list, backbone: str, weights: str, image_size: int) -> None:
    """Every unit's branch from keras.applications' VGG16 or MobileNetV2 (``imagenet`` or a weights
    file): VGG16's 13 convolutions; MobileNetV2's stem and 17 blocks."""
    from ..common.blocks import _mbv2_prefix, load_application_weights, pretrained_application

    app = pretrained_application(backbone, weights, image_size)
    for uname, _ in units:
        if backbone == "vgg16":
            for layer in app.layers:
                if isinstance(layer, keras.layers.Conv2D):
                    net.get_layer(f"{uname}_{layer.name}").set_weights(layer.get_weights())
            continue
        load_application_weights(net.get_layer(f"{uname}_stem"), ("Conv1",), app)
        for b in range(17):
            load_application_weights(net.get_layer(f"{uname}_block_{b}"), (_mbv2_prefix(b),), app)


def transplant(net: keras.Model, final: keras.Model, keep) -> None:
    """Copy the searchable network's weights into the final network: every layer by name; a fusion
    op's kernel loses the rows of its removed sources."""
    keep = np.asarray(keep, bool)
    for layer in final.layers:
        if not layer.weights:
            continue
        src = net.get_layer(layer.name)
        if isinstance(layer, NddrFusion):
            c = layer.channels
            kernel = src.kernel.numpy()
            blocks = [kernel[:c]] + [kernel[c * (1 + p): c * (2 + p)] for p, k in enumerate(src.gate_indices)
                                     if keep[k]]
            layer.kernel.assign(np.concatenate(blocks, axis=0))
            layer.bn.set_weights(src.bn.get_weights())
        else:
            layer.set_weights(src.get_weights())
