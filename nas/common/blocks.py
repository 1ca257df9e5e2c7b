"""Searchable layers of the BMTAS backbones, their ImageNet weights and their measured MAdds.

A backbone is cut into a shared **stem** and a chain of **searchable layers** (spec
branching_bmtas.md §8.2-§8.3). Each searchable layer is one registered Keras layer (a block, or for
the coarse granularity a ``keras.Sequential`` of blocks), so the supergraph can hold K non-sharing
copies of it (:class:`nas.bmtas.supergraph.MixedOp`) and the branched network as many copies as groups,
both saving as ``.keras`` with ``safe_mode=True``.

- ``mobilenet_v2``: stem ``Conv1``; fine = the 17 inverted-residual blocks + ``Conv_1`` (18
  layers); coarse = the 7 bottleneck stages + ``Conv_1`` (8 layers).
- ``vgg16``: no stem; fine = the 13 convolutions (the block's max pooling attached to its last conv);
  coarse = the 5 conv blocks.
- ``small_cnn``: stem = block 0 (stride-2 conv); fine = blocks 1-4; coarse = blocks 1-2 and 3-4.

The supergraph makes the last batch norm of every candidate op non-affine (the paper: it equalises
the candidates' output scale); the branched network's are affine again. :func:`measure_madds` counts
the multiply-adds of a layer from the operations of its traced TensorFlow graph (convolutions,
depthwise convolutions, matrix products) at batch 1, which gives the look-up table of the resource
loss at the training resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np

from icao_mtl.errors import ConfigError

from .madds import measure_madds

_MBV2_BN = dict(momentum=0.999, epsilon=1e-3)  # keras.applications' MobileNetV2 values
# The other blocks keep Keras' BN momentum, 0.99, as the small CNN does: short runs need the faster moving
# averages (after 1,000 steps a momentum of 0.999 still holds a third of the initial statistics).


def _activation(name: str):
    if name == "relu6":
        return keras.layers.ReLU(max_value=6.0)
    if name == "relu":
        return keras.layers.ReLU()
    raise ValueError(f"Unknown activation {name!r}; use relu or relu6.")


@keras.saving.register_keras_serializable(package="icao_mtl")
class ConvBlock(keras.layers.Layer):
    """Conv -> [BatchNorm] -> activation -> [2x2 max pooling].

    Args:
        filters, kernel_size, strides: of the convolution ("same" padding).
        activation: "relu" or "relu6".
        batchnorm: whether a BN follows the convolution (VGG has none).
        affine: whether that BN has a scale and an offset (False in the supergraph).
        pool: append 2x2 max pooling (stride 2).
        use_bias: of the convolution (VGG: yes; with a BN: no).
        bn_momentum: of the BN's moving averages (Keras' 0.99; MobileNetV2's 0.999).
    """

    def __init__(self, filters: int, kernel_size: int = 3, strides: int = 1, activation: str = "relu",
                 batchnorm: bool = True, affine: bool = True, pool: bool = False, use_bias: bool | None = None,
                 bn_momentum: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        self.bn_momentum = float(bn_momentum)
        self.filters, self.kernel_size, self.strides = int(filters), int(kernel_size), int(strides)
        self.activation_name, self.batchnorm, self.affine, self.pool = activation, bool(batchnorm), bool(affine), bool(pool)
        self.use_bias = (not self.batchnorm) if use_bias is None else bool(use_bias)
        self.conv = keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides, padding="same",
                                        use_bias=self.use_bias, name="conv")
        self.bn = keras.layers.BatchNormalization(center=self.affine, scale=self.affine, name="bn",
                                                  momentum=self.bn_momentum, epsilon=1e-3) if self.batchnorm else None
        self.act = _activation(activation)
        self.pooling = keras.layers.MaxPooling2D(2, name="pool") if self.pool else None

    def build(self, input_shape):
        self.conv.build(input_shape)
        if self.bn is not None:
            self.bn.build(self.conv.compute_output_shape(input_shape))
        self.built = True

    def call(self, x, training=None):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x, training=training)
        x = self.act(x)
        return self.pooling(x) if self.pooling is not None else x

    def compute_output_shape(self, input_shape):
        shape = self.conv.compute_output_shape(input_shape)
        return self.pooling.compute_output_shape(shape) if self.pooling is not None else shape

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "activation": self.activation_name, "batchnorm": self.batchnorm,
                "affine": self.affine, "pool": self.pool, "use_bias": self.use_bias, "bn_momentum": self.bn_momentum}


@keras.saving.register_keras_serializable(package="icao_mtl")
class InvertedResidual(keras.layers.Layer):
    """MobileNetV2's inverted-residual block: [1x1 expand, BN, ReLU6] -> 3x3 depthwise, BN, ReLU6 ->
    1x1 project, BN (linear) -> + input when the shapes allow (stride 1, same channels).

    Args:
        in_channels, filters: input and output channels.
        expansion: hidden channels = expansion * in_channels (1: no expand conv, block 0).
        strides: of the depthwise convolution ("same" padding equals Keras' explicit stride-2 padding).
        affine: whether the projection BN has a scale and an offset (False in the supergraph).
    """

    def __init__(self, in_channels: int, filters: int, expansion: int = 6, strides: int = 1, affine: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.filters = int(in_channels), int(filters)
        self.expansion, self.strides, self.affine = int(expansion), int(strides), bool(affine)
        hidden = self.in_channels * self.expansion
        if self.expansion != 1:
            self.expand = keras.layers.Conv2D(hidden, 1, use_bias=False, name="expand")
            self.expand_bn = keras.layers.BatchNormalization(name="expand_BN", **_MBV2_BN)
            self.expand_act = _activation("relu6")
        else:
            self.expand = self.expand_bn = self.expand_act = None
        self.depthwise = keras.layers.DepthwiseConv2D(3, strides=self.strides, padding="same", use_bias=False,
                                                      name="depthwise")
        self.depthwise_bn = keras.layers.BatchNormalization(name="depthwise_BN", **_MBV2_BN)
        self.depthwise_act = _activation("relu6")
        self.project = keras.layers.Conv2D(self.filters, 1, use_bias=False, name="project")
        self.project_bn = keras.layers.BatchNormalization(center=self.affine, scale=self.affine, name="project_BN",
                                                          **_MBV2_BN)
        self.residual = self.strides == 1 and self.in_channels == self.filters

    def build(self, input_shape):
        shape = tuple(input_shape)
        if shape[-1] is not None and shape[-1] != self.in_channels:
            raise ValueError(f"{self.name} expects {self.in_channels} input channels, got shape {shape}.")
        if self.expand is not None:
            self.expand.build(shape)
            shape = self.expand.compute_output_shape(shape)
            self.expand_bn.build(shape)
        self.depthwise.build(shape)
        shape = self.depthwise.compute_output_shape(shape)
        self.depthwise_bn.build(shape)
        self.project.build(shape)
        self.project_bn.build(self.project.compute_output_shape(shape))
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        if self.expand is not None:
            x = self.expand_act(self.expand_bn(self.expand(x), training=training))
        x = self.depthwise_act(self.depthwise_bn(self.depthwise(x), training=training))
        x = self.project_bn(self.project(x), training=training)
        return inputs + x if self.residual else x

    def compute_output_shape(self, input_shape):
        shape = self.depthwise.compute_output_shape(tuple(input_shape))
        return (*shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels, "filters": self.filters,
                "expansion": self.expansion, "strides": self.strides, "affine": self.affine}


# ---------------------------------------------------------------------------------------------
# backbone layouts

@dataclass(frozen=True)
class LayerSpec:
    """One searchable layer (or stem layer): its name, how to make it and where its pretrained weights are.

    ``make(affine, name)`` returns a fresh layer; ``sources`` lists, for each block of the layer in
    order, the name prefix of that block's layers in the keras.applications model (None: no
    pretrained weights)."""

    name: str
    make: Callable
    sources: tuple = ()


@dataclass(frozen=True)
class Layout:
    """A backbone cut for BMTAS: preprocessing mode, stem layers and searchable layers."""

    backbone: str
    granularity: str
    preprocess: str
    stem: tuple
    layers: tuple

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.layers]


# MobileNetV2 (width 1.0): (expansion, out channels, stride) of blocks 0..16
_MBV2 = [(1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1), (6, 64, 2), (6, 64, 1), (6, 64, 1),
         (6, 64, 1), (6, 96, 1), (6, 96, 1), (6, 96, 1), (6, 160, 2), (6, 160, 1), (6, 160, 1), (6, 320, 1)]
_MBV2_STAGES = [[0], [1, 2], [3, 4, 5], [6, 7, 8, 9], [10, 11, 12], [13, 14, 15], [16]]
# VGG16 conv blocks: filters, number of convs
_VGG16 = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
_SMALL = (16, 32, 64, 128, 128)


def _mbv2_block(b: int, affine: bool, name: str):
    exp, out, stride = _MBV2[b]
    cin = 32 if b == 0 else _MBV2[b - 1][1]
    return InvertedResidual(cin, out, exp, stride, affine=affine, name=name)


def _mbv2_prefix(b: int) -> str:
    return "expanded_conv" if b == 0 else f"block_{b}"


def _sequence(blocks: list, name: str):
    return keras.Sequential(blocks, name=name)


def layout(backbone: str, granularity: str = "fine") -> Layout:
    """The BMTAS cut of ``backbone`` ("mobilenet_v2", "vgg16" or "small_cnn") at ``granularity``
    ("fine" or "coarse")."""
    if granularity not in ("fine", "coarse"):
        raise ConfigError(f"Unknown granularity {granularity!r}. Fix: --granularity fine or coarse.")
    if backbone == "mobilenet_v2":
        stem = (LayerSpec("stem", lambda affine, name: ConvBlock(32, 3, 2, "relu6", affine=True, bn_momentum=0.999, name=name),
                          ("Conv1",)),)
        conv1 = LayerSpec("Conv_1", lambda affine, name: ConvBlock(1280, 1, 1, "relu6", affine=affine, bn_momentum=0.999, name=name),
                          ("Conv_1",))
        if granularity == "fine":
            layers = [LayerSpec(f"block_{b}", lambda affine, name, b=b: _mbv2_block(b, affine, name),
                                (_mbv2_prefix(b),)) for b in range(17)]
        else:
            layers = [LayerSpec(f"stage_{i}", lambda affine, name, bs=bs: _sequence(
                [_mbv2_block(b, affine or b != bs[-1], f"{name}_block_{b}") for b in bs], name),
                tuple(_mbv2_prefix(b) for b in bs)) for i, bs in enumerate(_MBV2_STAGES)]
        return Layout(backbone, granularity, "tf", stem, tuple(layers) + (conv1,))
    if backbone == "vgg16":
        convs = [(b + 1, i + 1, f, i == n - 1) for b, (f, n) in enumerate(_VGG16) for i in range(n)]

        def vgg_conv(block, i, f, pool, name):
            return ConvBlock(f, 3, 1, "relu", batchnorm=False, pool=pool, name=name)

        if granularity == "fine":
            layers = [LayerSpec(f"block{b}_conv{i}", lambda affine, name, c=(b, i, f, p): vgg_conv(*c, name),
                                (f"block{b}_conv{i}",)) for b, i, f, p in convs]
        else:
            layers = [LayerSpec(f"block{b + 1}", lambda affine, name, b=b: _sequence(
                [vgg_conv(*c, f"{name}_conv{c[1]}") for c in convs if c[0] == b + 1], name),
                tuple(f"block{c[0]}_conv{c[1]}" for c in convs if c[0] == b + 1)) for b in range(5)]
        return Layout(backbone, granularity, "caffe", (), tuple(layers))
    if backbone == "small_cnn":
        def small(i, affine, name):
            return ConvBlock(_SMALL[i], 3, 1, "relu", affine=affine, pool=1 <= i <= 3, name=name)

        stem = (LayerSpec("stem", lambda affine, name: ConvBlock(_SMALL[0], 3, 2, "relu", name=name),
                          ("small_cnn_block0",)),)
        if granularity == "fine":
            layers = [LayerSpec(f"block{i}", lambda affine, name, i=i: small(i, affine, name), (f"small_cnn_block{i}",))
                      for i in range(1, 5)]
        else:
            layers = [LayerSpec(f"blocks{a}-{b}", lambda affine, name, a=a, b=b: _sequence(
                [small(i, affine or i != b, f"{name}_{i}") for i in range(a, b + 1)], name),
                tuple(f"small_cnn_block{i}" for i in range(a, b + 1))) for a, b in ((1, 2), (3, 4))]
        return Layout(backbone, granularity, "unit", stem, tuple(layers))
    raise ConfigError(f"BMTAS supports the backbones mobilenet_v2, vgg16 and small_cnn; received {backbone!r}. "
                      "Fix: --backbone one of those.")


# ---------------------------------------------------------------------------------------------
# pretrained weights

def _blocks(layer) -> list:
    return list(layer.layers) if isinstance(layer, keras.Sequential) else [layer]


def _copy_conv(dst, src) -> None:
    dst.kernel.assign(src.kernel)
    if getattr(dst, "bias", None) is not None and getattr(src, "bias", None) is not None:
        dst.bias.assign(src.bias)


def copy_batchnorm(dst, src) -> None:
    """Copy a BN's statistics, and its scale and offset where both layers have them."""
    for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
        d, s = getattr(dst, attr, None), getattr(src, attr, None)
        if d is not None and s is not None:
            d.assign(s)


def _pairs(block):
    """(sublayer, application suffix) of a block, in the naming of keras.applications."""
    if isinstance(block, InvertedResidual):
        out = []
        if block.expand is not None:
            out += [(block.expand, "_expand"), (block.expand_bn, "_expand_BN")]
        return out + [(block.depthwise, "_depthwise"), (block.depthwise_bn, "_depthwise_BN"),
                      (block.project, "_project"), (block.project_bn, "_project_BN")]
    return block


def load_application_weights(layer, sources, app: keras.Model) -> None:
    """Copy the weights of ``app`` (a keras.applications model, or the small CNN) into ``layer``,
    block by block (``sources``: the application's name prefix of each block). Non-affine BNs get only
    the statistics."""
    names = {l.name for l in app.layers}
    for block, prefix in zip(_blocks(layer), sources):
        if isinstance(block, InvertedResidual):
            for sub, suffix in _pairs(block):
                src = app.get_layer(prefix + suffix)
                copy_batchnorm(sub, src) if isinstance(sub, keras.layers.BatchNormalization) else _copy_conv(sub, src)
        else:  # ConvBlock: keras names "<prefix>" (VGG, Conv_1, Conv1) or "<prefix>_conv" (small CNN)
            conv = prefix if prefix in names else f"{prefix}_conv"
            _copy_conv(block.conv, app.get_layer(conv))
            if block.bn is not None:
                bn = next(n for n in (f"{prefix}_bn", f"{prefix}_BN", f"bn_{prefix}") if n in names)
                copy_batchnorm(block.bn, app.get_layer(bn))


def pretrained_application(backbone: str, weights: str, image_size: int):
    """The keras.applications model (or small CNN) holding ``weights`` ("imagenet" or a file), or None
    for "none"."""
    if weights in (None, "none", "None"):
        return None
    from icao_mtl.backbones import build_backbone

    _, model = build_backbone(backbone, keras.Input((image_size, image_size, 3)), weights=weights)
    return model


def copy_layer_weights(dst, src) -> None:
    """Copy every weight of ``src`` into ``dst``, two layers of the same structure whose batch norms
    may differ in being affine (a missing scale counts as 1, a missing offset as 0)."""
    def leaves(layer):
        out = []
        for sub in layer._flatten_layers(include_self=False, recursive=True):
            if isinstance(sub, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense,
                                keras.layers.BatchNormalization)):
                out.append(sub)
        return out

    a, b = leaves(dst), leaves(src)
    if len(a) != len(b):
        raise ValueError(f"Layers {dst.name} and {src.name} differ in structure ({len(a)} vs {len(b)} weighted layers).")
    for d, s in zip(a, b):
        if isinstance(d, keras.layers.BatchNormalization):
            copy_batchnorm(d, s)
            if d.gamma is not None and s.gamma is None:
                d.gamma.assign(np.ones(d.gamma.shape, np.float32))
            if d.beta is not None and s.beta is None:
                d.beta.assign(np.zeros(d.beta.shape, np.float32))
        else:
            _copy_conv(d, s)


# ---------------------------------------------------------------------------------------------
# the MAdds table of a layout

def layer_shapes(spec: Layout, image_size: int) -> list[tuple]:
    """The input shape (h, w, c) of each searchable layer, and the output shape of the last, at
    ``image_size``."""
    shape = (image_size, image_size, 3)
    for s in spec.stem:
        shape = tuple(s.make(True, "probe").compute_output_shape((1, *shape))[1:])
    shapes = [shape]
    for s in spec.layers:
        layer = s.make(True, "probe")
        layer.build((1, *shape))
        shape = tuple(layer.compute_output_shape((1, *shape))[1:])
        shapes.append(shape)
    return shapes


def madds_table(spec: Layout, image_size: int, n_heads: int = 1) -> dict:
    """The look-up table of the resource loss: measured MAdds of the stem, of one copy of each
    searchable layer and of one head (GAP -> Dense(2)), at ``image_size``, batch 1."""
    shapes = layer_shapes(spec, image_size)
    stem_shape = (image_size, image_size, 3)
    stem = 0
    for s in spec.stem:
        layer = s.make(True, "probe")
        stem += measure_madds(layer, stem_shape)
        stem_shape = tuple(layer.compute_output_shape((1, *stem_shape))[1:])
    layers = [measure_madds(s.make(True, f"probe_{i}"), shapes[i]) for i, s in enumerate(spec.layers)]
    head = measure_madds(keras.layers.Dense(2), (shapes[-1][-1],))
    return {"backbone": spec.backbone, "granularity": spec.granularity, "image_size": image_size,
            "stem": stem, "layers": dict(zip(spec.names, layers)), "head": head, "unit": "MAdds"}
