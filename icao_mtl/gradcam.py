"""Grad-CAM and Grad-CAM++ for any task head of a multi-output model, batched.

Grad-CAM (Selvaraju et al., ICCV 2017): for a class score y and a convolutional feature map A with
channels k, the weights are the spatial means of dy/dA_k and the map is ReLU(sum_k w_k A_k), normalised
to [0, 1] per image and resized to the input. Grad-CAM++ (Chattopadhay et al., WACV 2018) weights the
positive gradients with the closed-form alphas of its paper (exponential score).

The paper's reference code took the softmax probability of the predicted class; the default here is
the class logit (the usual Grad-CAM), with ``score="probability"`` for the reference's choice.

Layers: the default is the backbone's last convolution. Handcrafted 3's group blocks (``head_<g>_conv_<i>``,
``head_<g>_pool``) work too: they see one row band of the pooled feature map reshaped to a strip of
(1, L/32, 32); each strip position holds 32 channels of one (row, column) of the band, so the strip's
map is folded back onto the band's rows and columns, placed in its rows of the pooled map, and
resized to the image.
"""

from __future__ import annotations

import math
import re
import weakref

import cv2
import numpy as np

from .errors import ConfigError

_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
TARGETS = ("predicted", "compliant", "non_compliant")
SCORES = ("logit", "probability")


def _output_layer(model, task):
    try:
        return model.get_layer(task)
    except ValueError:
        raise ConfigError(f"The model has no output {task!r}; its outputs are {list(model.output_names)}. Fix: pass "
                          "one of them as the requisite.") from None


def default_layer(model, task: str | None = None) -> str:
    """The backbone's last 2-D convolution (on ``task``'s path, for a branched network)."""
    from .backbones import last_conv_layer

    return last_conv_layer(model, model.output_names, task)


def _grad_model(model, task: str, layer: str):
    import keras

    try:
        conv = model.get_layer(layer).output
    except ValueError:
        raise ConfigError(f"The model has no layer {layer!r}. Fix: pass a layer name from model.summary(), e.g. "
                          f"{default_layer(model)!r}.") from None
    if len(conv.shape) != 4:
        raise ConfigError(f"Layer {layer!r} outputs shape {tuple(conv.shape)}; Grad-CAM needs a 4-D feature map. Fix: "
                          "choose a convolution or pooling layer.")
    out = _output_layer(model, task)
    return keras.Model(model.inputs, [conv, out.input]), out


def compute(model, images, task: str, *, layer: str | None = None, target="predicted", score: str = "logit",
            plus: bool = False, batch_size: int = 32, upsample: bool = True) -> np.ndarray:
    """Class activation maps of one task head.

    Args:
        model: a model of this package (raw RGB input in [0, 255]; dict of softmax outputs).
        images: array of shape (n, H, W, 3), values in [0, 255], at the model's input size.
        task: requisite id (output name).
        layer: convolutional layer name (default: the backbone's last convolution).
        target: "predicted" (each image's predicted class, as the reference), "compliant",
            "non_compliant", or an int class index (1 = compliant).
        score: "logit" (default) or "probability" (the softmax output, as the reference code).
        plus: Grad-CAM++ instead of Grad-CAM.
        batch_size: images per gradient computation.
        upsample: resize each map to the image (bilinear, pixel centres aligned); False keeps the
            layer's resolution (h, w), e.g. to compare with another implementation before its resizing.

    Returns:
        float32 array of shape (n, H, W) (or (n, h, w) without upsampling), each map in [0, 1]
        (all zeros where the map is empty).
    """
    import tensorflow as tf

    if score not in SCORES:
        raise ConfigError(f"score must be one of {SCORES}. Received: {score!r}")
    if isinstance(target, str) and target not in TARGETS:
        raise ConfigError(f"target must be one of {TARGETS} or a class index. Received: {target!r}")
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigError(f"images must have shape (n, H, W, 3). Received: {images.shape}")
    layer = layer or default_layer(model, task)
    maps, band = _map_function(model, task, layer, target, score, plus)

    h, w = images.shape[1:3]
    out = []
    for start in range(0, len(images), batch_size):
        cams = maps(tf.constant(images[start:start + batch_size])).numpy()
        for cam in cams:
            if band is not None:
                cam = _fold_band(cam, band)
            peak = cam.max()
            if peak > 0:
                cam = cam / peak
            if upsample:
                cam = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
            out.append(cam.astype(np.float32))
    return np.clip(np.stack(out), 0.0, 1.0) if out else np.zeros((0, h, w), np.float32)


def _map_function(model, task, layer, target, score, plus):
    """The traced map function of one (model, task, layer, options), cached per model so that a loop of
    calls (a photo at a time) traces once."""
    import tensorflow as tf

    per_model = _FUNCTIONS.setdefault(model, {})
    key = (task, layer, target, score, plus)
    if key in per_model:
        return per_model[key]
    grad_model, out_layer = _grad_model(model, task, layer)
    kernel, bias = out_layer.kernel, out_layer.bias
    band = _band_geometry(model, layer)

    @tf.function(reduce_retracing=True)
    def maps(x):
        with tf.GradientTape() as tape:
            conv, pre = grad_model(x, training=False)
            logits = tf.matmul(tf.cast(pre, tf.float32), tf.cast(kernel, tf.float32)) + tf.cast(bias, tf.float32)
            if isinstance(target, str):
                cls = {"predicted": tf.argmax(logits, axis=-1, output_type=tf.int32),
                       "compliant": tf.ones(tf.shape(logits)[:1], tf.int32),
                       "non_compliant": tf.zeros(tf.shape(logits)[:1], tf.int32)}[target]
            else:
                cls = tf.fill(tf.shape(logits)[:1], int(target))
            chosen = tf.nn.softmax(logits) if score == "probability" else logits
            y = tf.gather(chosen, cls, axis=1, batch_dims=1)
        # the gradient with respect to the layer's own tensor (a mixed model's is bfloat16 or float16; a cast
        # tensor is not on the tape's path), then both in float32
        grads = tf.cast(tape.gradient(y, conv), tf.float32)
        conv = tf.cast(conv, tf.float32)
        if plus:
            # Grad-CAM++ with an exponential score Y = exp(y): the exp(y) factors of its derivatives cancel
            # in the closed-form alphas; exp(y) only scales the map, which is normalised anyway.
            g2, g3 = grads ** 2, grads ** 3
            sum_a = tf.reduce_sum(conv, axis=(1, 2), keepdims=True)
            denom = 2.0 * g2 + sum_a * g3
            alpha = g2 / tf.where(g2 == 0.0, tf.ones_like(denom), denom)
            # As the authors' code (and tf-keras-vis): alphas normalised to sum 1 over positions per channel.
            norm = tf.reduce_sum(alpha, axis=(1, 2), keepdims=True)
            alpha = alpha / tf.where(norm == 0.0, tf.ones_like(norm), norm)
            weights = tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2))
        else:
            weights = tf.reduce_mean(grads, axis=(1, 2))
        cam = tf.nn.relu(tf.einsum("bhwk,bk->bhw", conv, weights))
        return cam

    per_model[key] = (maps, band)
    return maps, band


def _band_geometry(model, layer: str):
    """For a layer inside Handcrafted 3's group block: (top, rows, pooled rows, pooled cols, channels)."""
    m = re.match(r"head_(.+)_(conv_\d+|pool)$", layer)
    if not m or m.group(2) == "" or f"head_{m.group(1)}_band" not in [l.name for l in model.layers]:
        return None
    crop = model.get_layer(f"head_{m.group(1)}_band")
    (top, bottom), _ = crop.cropping
    pooled = model.get_layer("head_shared_pool").output.shape
    rows = int(pooled[1]) - top - bottom
    return top, rows, int(pooled[1]), int(pooled[2]), int(pooled[3])


def _fold_band(cam: np.ndarray, band) -> np.ndarray:
    """Map a strip (1, S) of a group block back to the pooled feature map (rows, cols)."""
    top, rows, p_rows, p_cols, channels = band
    strip = cam.reshape(-1)
    positions = rows * p_cols
    # The strip may have been pooled: stretch it back over the band's flattened (position, channel chunk) axis.
    full = cv2.resize(strip[None, :].astype(np.float32), (positions * channels // 32, 1),
                      interpolation=cv2.INTER_NEAREST)[0]
    per_position = full.reshape(positions, channels // 32).sum(axis=1)
    out = np.zeros((p_rows, p_cols), np.float32)
    out[top:top + rows] = per_position.reshape(rows, p_cols)
    return out


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """The heatmap drawn over the image with a colour map (uint8 RGB of the image's shape)."""
    import matplotlib

    image = np.asarray(image)
    if image.shape[:2] != heatmap.shape:
        heatmap = cv2.resize(heatmap.astype(np.float32), (image.shape[1], image.shape[0]))
    colours = matplotlib.colormaps[cmap](np.clip(heatmap, 0, 1))[..., :3] * 255
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * colours, 0, 255).astype(np.uint8)


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's total mass inside a boolean mask of the same shape (NaN for an empty map)."""
    total = float(heatmap.sum())
    return float(heatmap[mask].sum() / total) if total > 0 else math.nan
