"""The frozen-backbone feature cache of the branch-depth search.

The backbone is frozen in every trial, and the NAS child begins with global average pooling, so the
pooled backbone features of every image can be computed once and every trial's head trained on them:
a trial then costs a small dense network's training instead of a backbone pass per image and epoch.
Training images get ``views`` augmented views (view ``v`` is what the image pipeline produces in
epoch ``v``); epoch ``e`` of a trial trains on view ``e mod views``, in the same order the image
pipeline would use, so the cached and the uncached paths see the same data.

The cache is a single ``.npz`` per key, written atomically, keyed by the dataset's content, the
backbone, its weights (a file's content hash), the image size, the width multiplier, the augmentation,
the number of views and the seed: change any of them and another file is built; a file whose stored key
does not match is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from icao_mtl import io as aio
from icao_mtl.data import ImagePipeline, LabeledDataset, Splits
from icao_mtl.data.pipeline import DEFAULT_WARP


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class FeatureKey:
    """Everything the cached features depend on."""

    dataset: str
    backbone: str
    weights: str
    image_size: int
    alpha: float
    augment: str
    views: int
    seed: int
    interpolation: str
    warp: str  # how the augmented views were warped (files cached before the OpenCV warp are rebuilt)

    @classmethod
    def make(cls, splits: Splits, backbone: str, weights: str, image_size: int, alpha: float, augment, views: int,
             seed: int, interpolation: str = "bilinear", warp: str = DEFAULT_WARP) -> "FeatureKey":
        parts = [splits[s].fingerprint() + ":" + ",".join(splits[s].names[:3]) + f":{len(splits[s])}"
                 for s in ("train", "val", "test")]
        dataset = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
        w = weights if weights in ("none", "imagenet", None) else f"file:{_file_digest(weights)}"
        aug = json.dumps(augment.to_dict() if augment is not None else None, sort_keys=True)
        return cls(dataset, backbone, str(w), int(image_size), float(alpha), aug, int(views), int(seed), interpolation,
                   warp if augment is not None else "none")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CachedFeatures:
    """Pooled backbone features: ``train`` (views, n_train, d), ``val`` (n_val, d), ``test`` (n_test, d)."""

    key: FeatureKey
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    path: Path | None = None
    built: bool = False

    @property
    def dim(self) -> int:
        return int(self.train.shape[-1])


def _pooled_model(backbone: str, weights: str, image_size: int, alpha: float):
    import keras

    from icao_mtl.backbones import build_backbone

    inputs = keras.Input((image_size, image_size, 3))
    features, _ = build_backbone(backbone, inputs, weights=weights, alpha=alpha)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    model = keras.Model(inputs, pooled)
    model.trainable = False
    return model


def _extract(model, ds) -> np.ndarray:
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def f(x):
        return model(x, training=False)

    return np.concatenate([f(x).numpy() for x, _ in ds], 0).astype(np.float32)


def load_or_build(cache_dir: str | os.PathLike, splits: Splits, *, backbone: str, weights: str, image_size: int,
                  alpha: float = 1.0, augment=None, views: int = 4, seed: int = 0, batch_size: int = 64,
                  interpolation: str = "bilinear", verbose: int = 1) -> CachedFeatures:
    """Return the cached features of ``splits`` for a frozen backbone, computing them if needed.

    Args:
        cache_dir: where cache files live.
        splits: the dataset's train / val / test splits.
        backbone, weights, image_size, alpha: the frozen backbone.
        augment: the training augmentation (:class:`~icao_mtl.data.AugmentConfig`) of the views.
        views: augmented views per training image (>= 1). With no augmentation every view is the same
            image, so one is computed.
        seed: seed of shuffling and augmentation (as the image pipeline uses it).
    """
    if not isinstance(views, int) or views < 1:
        raise ValueError(f"views must be a positive integer. Received: {views!r}")
    if augment is None or augment.is_identity:
        augment, views = None, 1
    key = FeatureKey.make(splits, backbone, weights, image_size, alpha, augment, views, seed, interpolation)
    path = Path(cache_dir) / f"{backbone}_{image_size}_{key.digest()}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                stored = json.loads(f["key"].tobytes())
                if stored == asdict(key):
                    return CachedFeatures(key, f["train"], f["val"], f["test"], path)
        except (OSError, ValueError, KeyError):
            pass  # unreadable or another key: rebuilt below
    model = _pooled_model(backbone, weights, image_size, alpha)
    common = dict(image_size=image_size, batch_size=batch_size, seed=seed, interpolation=interpolation, cache=False)
    train = ImagePipeline(splits.train, augment=augment, **common)
    views_arr = []
    for v in range(views):
        if verbose:
            print(f"caching {backbone} features: training view {v + 1}/{views} ({len(splits.train)} images)")
        # unshuffled, so rows follow the split's order; view v = epoch v's augmentation
        views_arr.append(_extract(model, train.train(v, shuffle=False)))
    if verbose:
        print(f"caching {backbone} features: validation and test ({len(splits.val) + len(splits.test)} images)")
    val = _extract(model, ImagePipeline(splits.val, **common).eval())
    test = _extract(model, ImagePipeline(splits.test, **common).eval())
    cached = CachedFeatures(key, np.stack(views_arr), val, test, path, built=True)
    buf = _io.BytesIO()
    np.savez(buf, train=cached.train, val=val, test=test,
             key=np.frombuffer(json.dumps(asdict(key)).encode(), dtype=np.uint8))
    aio.write_bytes(path, buf.getvalue())
    return cached


class FeaturePipeline:
    """The :class:`~icao_mtl.data.ImagePipeline` interface over cached features, for the engine.

    Elements are ``(features of shape (batch, 1, 1, d), {task: labels})``: the head's global
    average pooling over a 1x1 map returns the cached vector unchanged, so the same head builder serves
    both paths.
    """

    def __init__(self, features: np.ndarray, ds: LabeledDataset, batch_size: int = 32, seed: int = 0):
        self.features = features if features.ndim == 3 else features[None]
        if self.features.shape[1] != len(ds):
            raise ValueError(f"{self.features.shape[1]} feature rows for {len(ds)} images.")
        self.ds, self.batch_size, self.seed = ds, batch_size, int(seed)

    def __len__(self):
        return len(self.ds)

    @property
    def steps(self) -> int:
        return math.ceil(len(self.ds) / self.batch_size)

    @property
    def tasks(self):
        return self.ds.tasks

    def order(self, shuffle: bool, epoch: int, rows=None) -> np.ndarray:
        """The rows of one pass, in order: ``rows`` (default all) sorted, and with ``shuffle`` in the
        permutation :meth:`ImagePipeline.train(epoch) <icao_mtl.data.ImagePipeline.train>` uses for the
        same seed (the same tf.data shuffle, run once over the indices)."""
        import tensorflow as tf

        idx = np.arange(len(self.ds), dtype=np.int64) if rows is None else np.sort(np.asarray(rows, np.int64))
        if not shuffle or len(idx) == 0:
            return idx
        ds = tf.data.Dataset.from_tensor_slices(idx).shuffle(max(len(idx), 1), seed=self.seed * 100003 + int(epoch),
                                                             reshuffle_each_iteration=False)
        return next(iter(ds.batch(len(idx)))).numpy()

    def _dataset(self, view: int, shuffle: bool, epoch: int, rows=None):
        import tensorflow as tf

        # Batches are cut in NumPy and the dataset only slices them: no per-element work in tf.data,
        # which cost ~10 ms a batch here, more than a small head's whole step.
        order = self.order(shuffle, epoch, rows)
        x = self.features[view][order][:, None, None, :]
        y = self.ds.labels[order].astype(np.int32)
        tasks, bs = self.ds.tasks, self.batch_size
        full = len(order) // bs * bs

        def part(xs, ys, batched):
            labels = {t: ys[..., j] for j, t in enumerate(tasks)}
            return tf.data.Dataset.from_tensor_slices((xs, labels)) if batched else \
                tf.data.Dataset.from_tensors((xs, labels))

        parts = []
        if full:
            parts.append(part(x[:full].reshape(-1, bs, *x.shape[1:]), y[:full].reshape(-1, bs, y.shape[1]), True))
        if full < len(order):
            parts.append(part(x[full:], y[full:], False))
        if not parts:  # no row: an empty dataset of the right structure
            return part(x.reshape(0, bs, *x.shape[1:]), y.reshape(0, bs, y.shape[1]), True)
        ds = parts[0]
        for extra in parts[1:]:
            ds = ds.concatenate(extra)
        return ds.prefetch(2)

    def train(self, epoch: int = 0, rows=None):
        return self._dataset(int(epoch) % len(self.features), True, epoch, rows)

    def eval(self):
        return self._dataset(0, False, 0)
