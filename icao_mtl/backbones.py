"""Backbones: the keras.applications networks of the paper and a small CNN that trains on a CPU.

One place for input sizes, preprocessing, weights and freezing. Models take raw RGB images with
values in [0, 255]; the backbone's preprocessing is a registered layer inside the model, so a saved
model, an exported TFLite file and ``check`` all take plain photos.

Weights: ``"imagenet"`` (downloaded by Keras on first use; offline, an error says to pass a file or
``none``), a file path (the Keras-applications ``*_notop.h5`` files, or a ``.weights.h5`` saved with
:func:`save_backbone_weights`), or ``"none"`` (random initialisation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import keras

from .errors import ConfigError


@dataclass(frozen=True)
class BackboneSpec:
    """Static facts about one backbone.

    Attributes:
        name: registry name.
        default_size: input side the paper (or this package, for the small CNN) uses.
        min_size: smallest input side Keras accepts.
        preprocess: mode of :class:`Preprocess` ("caffe", "tf" or "unit").
        pretrained: whether ImageNet weights exist.

    The reference code's "fine-tuning" unfroze the backbone's last two layers (VGG16: block5_conv3 and
    block5_pool; MobileNetV2: Conv_1_bn and out_relu): ``set_backbone_trainable(model, "last:2")``.
    """

    name: str
    default_size: int
    min_size: int
    preprocess: str
    pretrained: bool = True


BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in (
    BackboneSpec("vgg16", 224, 32, "caffe"),
    BackboneSpec("vgg19", 224, 32, "caffe"),
    BackboneSpec("mobilenet_v2", 224, 32, "tf"),
    BackboneSpec("inception_v3", 299, 75, "tf"),
    BackboneSpec("resnet50_v2", 224, 32, "tf"),
    BackboneSpec("small_cnn", 128, 32, "unit", pretrained=False),
)}

#: Prefix of every layer a head builder adds (outputs are named by their task id instead), so the
#: backbone's layers can be told apart in any built or loaded model.
HEAD_PREFIX = "head_"

#: Channel means of the "caffe" preprocessing (BGR order), as in keras.applications.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="icao_mtl")
class Preprocess(keras.layers.Layer):
    """The backbone's input preprocessing as a layer (so saved models take raw RGB in [0, 255]).

    Args:
        mode: "caffe" (RGB to BGR, subtract the ImageNet channel means: VGG), "tf" (scale to [-1, 1]:
            MobileNetV2, InceptionV3, ResNet50V2), "torch" (scale to [0, 1] and standardise with the
            ImageNet statistics) or "unit" (scale to [0, 1]).
    """

    MODES = ("caffe", "tf", "torch", "unit")

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"Invalid value received for argument `mode`: expected one of {self.MODES}. "
                             f"Received: mode={mode!r}")
        self.mode = mode

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor([0.485, 0.456, 0.406], dtype=self.compute_dtype)
            std = keras.ops.convert_to_tensor([0.229, 0.224, 0.225], dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        x = keras.ops.flip(x, axis=-1)
        return x - keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``name``, with an error listing the choices."""
    if name not in BACKBONES:
        raise ConfigError(f"Unknown backbone {name!r}. Fix: choose one of {', '.join(BACKBONES)}.")
    return BACKBONES[name]


def check_image_size(name: str, size: int) -> int:
    """Validate an input side for a backbone (before any layer is built)."""
    s = spec(name)
    if not isinstance(size, int) or size < s.min_size:
        raise ConfigError(f"Image size {size!r} is too small for backbone {name!r}, which needs at least "
                          f"{s.min_size}x{s.min_size}. Fix: pass --img-size {s.default_size} (its default) or any "
                          f"size >= {s.min_size}.")
    return size


@keras.saving.register_keras_serializable(package="icao_mtl")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel where it applies.

    Keras 3 normalises in separate element-wise passes (the moments, then the normalisation, and
    their gradients), each reading the whole activation: on a CPU, for the small CNN's and the
    regions branches' wide maps of few channels, those passes cost about as much as the convolutions
    (a training step of the default model at batch 32: ``benchmarks/bench_batchnorm.py``). The fused
    kernel makes them one pass. Same weights, configuration and rule for the moving statistics
    (``moving = momentum * moving + (1 - momentum) * batch``, with the batch's biased variance), so a
    model saved with either layer loads into the other. Falls back to the Keras computation for what
    the kernel does not do: another backend, a channel axis other than the last of a 4-D input, a
    mask, batch renormalisation, synchronised statistics, float64 inputs.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4 and mask is None
                and keras.backend.standardize_dtype(inputs.dtype) != "float64"  # the kernel computes in float32
                and self.axis in (-1, 3) and not self.renorm and not getattr(self, "synchronized", False)
                and self.epsilon >= 1.001e-5)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = tf.cast(inputs, "float32")  # as Keras: statistics in float32 under mixed precision
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, "float32") if self.scale else tf.ones((channels,), "float32")
        beta = tf.cast(self.beta, "float32") if self.center else tf.zeros((channels,), "float32")
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=self.epsilon,
                                                                 is_training=True)
            # the kernel returns the unbiased (Bessel-corrected) variance; Keras averages the biased one
            count = tf.cast(tf.size(x, out_type=tf.int64) // channels, "float32")
            variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + tf.cast(mean, self.moving_mean.dtype)
                                    * (1.0 - momentum))
            self.moving_variance.assign(self.moving_variance * momentum
                                        + tf.cast(variance, self.moving_variance.dtype) * (1.0 - momentum))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, mean=tf.cast(self.moving_mean, "float32"),
                variance=tf.cast(self.moving_variance, "float32"), epsilon=self.epsilon, is_training=False)
        return tf.cast(y, self.compute_dtype)


#: The dtype of a network's input stage whatever the global policy: the raw image's pooling, cropping
#: and scaling, and, for the small CNN and the regions branches, the first convolution block (a
#: pretrained backbone's first convolution follows the policy). bfloat16 keeps 8 significant bits: the
#: integers 0-255 are exact, but the 2x average pooling's quarter levels are not, and after scaling to
#: [0, 1] its steps near white are half a grey level; the first block's features, differences of
#: neighbourhoods scaled by batch normalisation, lose nothing that matters in bfloat16. Those layers
#: are about 3% of the default model's multiply-adds, and with 3 input channels the first convolution
#: is faster in float32 on a CPU (``benchmarks/bench_precision.py``).
INPUT_STAGE_DTYPE = "float32"


def conv_bn_relu(x, filters: int, name: str, strides: int = 1, dtype=None):
    """A 3x3 convolution (no bias), batch normalisation (:class:`FusedBatchNormalization`) and ReLU,
    named ``<name>_conv/_bn/_relu``; ``dtype`` (e.g. "float32") overrides the global dtype policy for
    the three layers."""
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv",
                            dtype=dtype)(x)
    x = FusedBatchNormalization(name=f"{name}_bn", dtype=dtype)(x)
    return keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)(x)


def _small_cnn(x, widths=(16, 32, 64, 128, 128)):
    """Five 3x3 conv-BN-ReLU blocks: a stride-2 stem, then three with max pooling, then one without.
    For a 128 px input the output is 8x8x128 (the stride of 16 keeps the grouped models' row bands)."""
    for i, w in enumerate(widths):
        x = conv_bn_relu(x, w, f"small_cnn_block{i}", strides=2 if i == 0 else 1,
                         dtype=INPUT_STAGE_DTYPE if i == 0 else None)
        if 1 <= i <= 3:
            x = keras.layers.MaxPooling2D(name=f"small_cnn_block{i}_pool")(x)
    return x


def _application(name: str):
    apps = keras.applications
    return {"vgg16": apps.VGG16, "vgg19": apps.VGG19, "mobilenet_v2": apps.MobileNetV2,
            "inception_v3": apps.InceptionV3, "resnet50_v2": apps.ResNet50V2}[name]


def build_backbone(name: str, inputs, *, weights: str = "imagenet", alpha: float = 1.0, downsample: int = 1):
    """Build a backbone on the raw-image tensor ``inputs`` (values in [0, 255]).

    Args:
        name: a key of :data:`BACKBONES`.
        inputs: a ``keras.Input`` of shape (size, size, 3).
        weights: "imagenet", "none" or the path of a weights file.
        alpha: width multiplier (MobileNetV2 only).
        downsample: average-pool the image by this factor before the backbone reads it.

    Returns:
        ``(features, backbone)``: the feature-map tensor of shape (None, h, w, c), and a functional
        model from ``inputs`` to it (sharing the layers) for loading and saving its weights.

    Raises:
        ConfigError: unknown backbone, weights that cannot be loaded or downloaded.
    """
    s = spec(name)
    size = int(inputs.shape[1])
    check_image_size(name, size)
    weights = "none" if weights in (None, "none", "None") else weights
    is_file = weights not in ("imagenet", "none")
    if is_file and not Path(weights).is_file():
        raise ConfigError(f"Weights file {weights} not found. Fix: pass an existing file, --weights imagenet, or "
                          "--weights none.")
    if weights == "imagenet" and not s.pretrained:
        raise ConfigError(f"Backbone {name!r} has no ImageNet weights (it trains from scratch). Fix: pass "
                          "--weights none, or a weights file saved from this backbone.")
    if name != "mobilenet_v2" and alpha != 1.0:
        raise ConfigError(f"alpha (the width multiplier) only applies to mobilenet_v2. Received alpha={alpha} for "
                          f"{name!r}. Fix: leave --alpha at 1.0.")
    x = inputs
    if downsample > 1:
        x = keras.layers.AveragePooling2D(downsample, name="downsample", dtype=INPUT_STAGE_DTYPE)(x)
        check_image_size(name, size // downsample)
    x = Preprocess(s.preprocess, name="preprocess", dtype=INPUT_STAGE_DTYPE)(x)
    if name == "small_cnn":
        features = _small_cnn(x)
        backbone = keras.Model(inputs, features, name="small_cnn")
    else:
        kwargs = {"include_top": False, "weights": "imagenet" if weights == "imagenet" else None, "input_tensor": x}
        if name == "mobilenet_v2":
            kwargs["alpha"] = alpha
        try:
            backbone = _application(name)(**kwargs)
        except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception on a failed download
            if weights == "imagenet" and ("fetch" in str(exc).lower() or isinstance(exc, OSError)):
                raise ConfigError(
                    f"Could not download the ImageNet weights of {name} ({exc}). Fix: pass --weights PATH with a "
                    f"weights file for {name} (e.g. Keras' *_notop.h5 copied from a machine with internet, in "
                    "~/.keras/models), or --weights none to train from random initialisation.") from exc
            raise
        features = backbone.output
    if is_file:
        load_backbone_weights(backbone, weights, name)
    return features, backbone


def load_backbone_weights(backbone: keras.Model, path: str | os.PathLike, name: str) -> None:
    """Load a weights file into a backbone, with an error naming the mismatch."""
    try:
        backbone.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - h5py/Keras raise several types for a wrong file
        raise ConfigError(f"The weights file {path} does not fit backbone {name!r} ({type(exc).__name__}: "
                          f"{str(exc)[:300]}). Fix: pass weights saved from {name!r} at the same width, or "
                          "--weights none.") from exc


def save_backbone_weights(backbone: keras.Model, path: str | os.PathLike) -> None:
    """Save a backbone's weights (path must end in ``.weights.h5``)."""
    from .io import atomic_path

    if not str(path).endswith(".weights.h5"):
        raise ValueError(f"Backbone weights are saved as '.weights.h5'. Received: {path}")
    with atomic_path(path) as tmp:
        backbone.save_weights(str(tmp))


def backbone_layers(model: keras.Model, tasks) -> list:
    """The backbone's layers of a model built by :mod:`icao_mtl.architectures`, in graph order:
    everything but the input, the preprocessing, the ``head_*`` layers and the task outputs."""
    tasks = set(tasks)
    return [l for l in model.layers if not isinstance(l, (keras.layers.InputLayer, Preprocess))
            and not l.name.startswith(HEAD_PREFIX) and l.name not in tasks]


def _is_conv(layer) -> bool:
    """A 2-D convolution (depthwise excluded, as Keras 3 no longer makes them Conv2D subclasses), or a
    block holding one (the blocks of the BMTAS branched networks)."""
    def plain(l):
        return isinstance(l, keras.layers.Conv2D) and not isinstance(l, keras.layers.DepthwiseConv2D)

    return plain(layer) or any(plain(l) for l in layer._flatten_layers(include_self=False, recursive=True))


def _ancestors(model: keras.Model, name: str) -> set:
    """Names of the layers the output of layer ``name`` depends on (itself included)."""
    seen, stack = set(), [model.get_layer(name)]
    while stack:
        layer = stack.pop()
        if layer.name in seen:
            continue
        seen.add(layer.name)
        for node in layer._inbound_nodes:
            stack.extend(parent.operation for parent in node.parent_nodes)
    return seen


def last_conv_layer(model: keras.Model, tasks, task: str | None = None) -> str:
    """Name of the backbone's last 2-D convolution (the default Grad-CAM layer); with ``task``, the last
    one on that task's path (a branched network has one last convolution per branch), or, for a head that
    reads no backbone layer or only an inner one (which later backbone convolutions read too), the last
    convolution of the branch it reads."""
    backbone = backbone_layers(model, tasks)
    layers = backbone
    if task is not None and task in {l.name for l in model.layers}:
        path = _ancestors(model, task)
        layers = [l for l in backbone if l.name in path]
        convs = [l for l in layers if _is_conv(l)]
        if not convs or any(convs[-1].name in _ancestors(model, l.name) for l in backbone
                            if _is_conv(l) and l.name not in path):
            # a head that reads a branch of its own (the regions model's rotation reads the geometry
            # branch, which may start from the small CNN's second block)
            layers = [l for l in model.layers if l.name in path]
    convs = [l.name for l in layers if _is_conv(l)]
    if not convs:
        raise ConfigError(f"Model {model.name!r} has no convolution in its backbone.")
    return convs[-1]


def set_backbone_trainable(model: keras.Model, tasks, mode: str) -> int:
    """Freeze or unfreeze the backbone layers of ``model``.

    Args:
        model: a model built by :mod:`icao_mtl.architectures`.
        tasks: its task ids (to tell outputs from backbone layers).
        mode: "frozen" (the whole backbone), "all" (all trainable), or "last:K" (only the last K
            layers trainable: the reference code's "fine-tuning" is "last:2").

    Returns:
        The number of backbone layers left trainable.
    """
    names = [l.name for l in backbone_layers(model, tasks)]
    if mode == "frozen":
        open_ = set()
    elif mode == "all":
        open_ = set(names)
    elif mode.startswith("last:") and mode[5:].isdigit():
        k = int(mode[5:])
        open_ = set(names[-k:]) if k else set()
    else:
        raise ConfigError(f"Unknown backbone mode {mode!r}. Fix: use 'frozen', 'all' or 'last:K'.")
    for n in names:
        model.get_layer(n).trainable = n in open_
    return len(open_)
