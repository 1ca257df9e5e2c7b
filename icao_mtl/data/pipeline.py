"""tf.data pipelines: parallel decode, resize, cache, shuffle, augmentation, batching, prefetch.

An :class:`ImagePipeline` serves one split. Images are decoded and resized once, cached as uint8
(in memory or in a file) and then, for training, shuffled and augmented anew each epoch (one affine
warp per image, by OpenCV on the uint8 images: :func:`apply_affine_uint8`). Augmentation draws its
parameters with stateless random ops seeded by ``(seed, epoch, image)``, so
epoch ``e`` sees the same images in the same order with the same augmentations whether or not the
run was interrupted and resumed before it. Validation and test pipelines never augment.

Elements are ``(images, labels)``: ``images`` float32 of shape (batch, H, W, 3) with values in
[0, 255] (backbone preprocessing lives inside the models, or in the optional ``preprocess`` hook),
``labels`` a dict task id -> int32 of shape (batch,) with values in {1, 0, -1}; a pipeline given
``severity_targets`` adds :data:`SEVERITY_KEY` -> float32 (batch, n_tasks) (NaN: unknown), one given
``pose_targets`` :data:`POSE_KEY` -> float32 (batch, 3), the head's roll, yaw and pitch in degrees *as
the augmented image shows it*: a horizontal flip negates roll and yaw, a rotation by the augmentation
turns the roll with the image; one given ``landmark_targets`` :data:`LANDMARK_KEY` -> float32 (batch,
2 * points), ``x_1 .. x_P, y_1 .. y_P`` in fractions of the side, where the augmented image shows them
(a flip also swaps left and right points).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from .manifest import LabeledDataset

#: The labels' key of the graded (severity) targets, beside the task ids; never a task id.
SEVERITY_KEY = "_severity"
#: The labels' key of the head-pose targets (roll, yaw, pitch in degrees); never a task id.
POSE_KEY = "_pose"
#: The labels' key of the landmark targets (x's then y's, fractions of the side); never a task id.
LANDMARK_KEY = "_landmarks"
#: The key of a model's landmark heat-map logits (an output only; the labels hold the points).
LANDMARK_MAPS_KEY = "_landmark_maps"


@dataclass(frozen=True)
class AugmentConfig:
    """Random training augmentations, with the semantics of Keras' ``ImageDataGenerator`` (which the
    paper's code used): one affine transform per image about its centre.

    Attributes:
        horizontal_flip: flip left-right with probability 0.5.
        rotation: maximum rotation in degrees (uniform in [-rotation, rotation]).
        zoom: zoom range; x and y factors drawn independently from U[1 - zoom, 1 + zoom]
            (factors > 1 zoom out).
        shear: maximum shear angle in degrees.
        width_shift: maximum horizontal shift, fraction of the width.
        height_shift: maximum vertical shift, fraction of the height.
        intensity: maximum relative brightness change (multiply by U[1 - i, 1 + i]). Off by default:
            it changes what the ``light`` requisite measures.
        fill_mode: how pixels outside the image are filled: "nearest", "reflect", "wrap" or "constant".
    """

    horizontal_flip: bool = True
    rotation: float = 0.0
    zoom: float = 0.15
    shear: float = 0.15
    width_shift: float = 0.1
    height_shift: float = 0.1
    intensity: float = 0.0
    fill_mode: str = "nearest"

    def validate(self) -> "AugmentConfig":
        for name in ("rotation", "zoom", "shear", "width_shift", "height_shift", "intensity"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0 or not math.isfinite(v):
                raise ValueError(f"Augmentation {name} must be a non-negative number. Received: {name}={v!r}")
        if self.zoom >= 1 or self.intensity >= 1:
            raise ValueError(f"zoom and intensity must be below 1. Received: zoom={self.zoom}, "
                             f"intensity={self.intensity}")
        if self.fill_mode not in ("nearest", "reflect", "wrap", "constant"):
            raise ValueError(f"fill_mode must be nearest, reflect, wrap or constant. Received: {self.fill_mode!r}")
        return self

    @property
    def is_identity(self) -> bool:
        return not self.horizontal_flip and not any(
            (self.rotation, self.zoom, self.shear, self.width_shift, self.height_shift, self.intensity))

    def to_dict(self) -> dict:
        return asdict(self)


#: Named augmentation settings. ``reference``: the paper's code after the rotation finding (flip, zoom
#: 0.15, shifts 0.1, shear 0.15 degrees); ``paper``: as first described (with rotations of 20 degrees
#: and shifts of 0.2); ``no_rotation``: ``paper`` without rotation (Handcrafted 2, Experiment IV);
#: ``none``: no augmentation.
AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "reference": AugmentConfig(),
    "paper": AugmentConfig(rotation=20.0, width_shift=0.2, height_shift=0.2),
    "no_rotation": AugmentConfig(rotation=0.0, width_shift=0.2, height_shift=0.2),
    "none": AugmentConfig(horizontal_flip=False, rotation=0.0, zoom=0.0, shear=0.0, width_shift=0.0,
                          height_shift=0.0),
}


def augment_config(preset: str = "reference", **overrides) -> AugmentConfig:
    """A preset from :data:`AUGMENT_PRESETS` with some fields replaced."""
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"Unknown augmentation preset {preset!r}; choose one of {sorted(AUGMENT_PRESETS)}.")
    return replace(AUGMENT_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}).validate()


def _affine_params(cfg: AugmentConfig, seed, height: int, width: int):
    """The 8 projective parameters (output pixel -> input pixel), the brightness factor and the turn
    (flip sign, rotation in degrees; shape (2,)) of one image, from a stateless seed of shape (2,)."""
    import tensorflow as tf

    u = tf.random.stateless_uniform([8], seed=seed, minval=-1.0, maxval=1.0)
    flip = tf.where(u[0] > 0, -1.0, 1.0) if cfg.horizontal_flip else tf.constant(1.0)
    theta = u[1] * cfg.rotation * (math.pi / 180)
    shear = u[2] * cfg.shear * (math.pi / 180)
    zx = 1.0 + u[3] * cfg.zoom
    zy = 1.0 + u[4] * cfg.zoom
    tx = u[5] * cfg.width_shift * width
    ty = u[6] * cfg.height_shift * height
    gain = 1.0 + u[7] * cfg.intensity
    c, s = tf.cos(theta), tf.sin(theta)
    # M = rotation @ shear @ zoom @ flip maps an output offset from the centre to an input offset.
    m00 = c * zx * flip
    m01 = (-s * tf.cos(shear) - c * tf.sin(shear)) * zy
    m10 = s * zx * flip
    m11 = (c * tf.cos(shear) - s * tf.sin(shear)) * zy
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    params = tf.stack([m00, m01, cx + tx - m00 * cx - m01 * cy,
                       m10, m11, cy + ty - m10 * cx - m11 * cy, 0.0, 0.0])
    return params, gain, tf.stack([flip, u[1] * cfg.rotation])


def move_landmarks(points, params, turn, size: int, mirror=None):
    """Where an augmented image shows its landmarks: ``points`` float32 (B, P, 2) ``(x, y)`` fractions of
    the side in the source images, ``params`` (B, 8) the warps (output pixel -> input pixel, pixel-index
    coordinates), ``turn`` (B, 2) their flip signs. Returns (B, P, 2) in the output images, point j
    replaced by point ``mirror[j]`` where the image was flipped (the left eye stays the image-left one;
    default :data:`~icao_mtl.data.manifest.LANDMARK_MIRROR` for its P points, else pairs (0, 1), (2, 3), ...)."""
    import tensorflow as tf

    from .manifest import LANDMARK_MIRROR

    src = points * size - 0.5
    a00, a01, t0, a10, a11, t1 = (params[:, k][:, None] for k in range(6))
    dx, dy = src[..., 0] - t0, src[..., 1] - t1
    det = a00 * a11 - a01 * a10
    x = (a11 * dx - a01 * dy) / det
    y = (-a10 * dx + a00 * dy) / det
    out = tf.stack([x, y], -1) / size + 0.5 / size
    n = int(points.shape[1])
    if mirror is None:
        mirror = LANDMARK_MIRROR if n == len(LANDMARK_MIRROR) else [j ^ 1 if (j ^ 1) < n else j for j in range(n)]
    swapped = tf.gather(out, list(mirror), axis=1)
    return tf.where((turn[:, 0] < 0)[:, None, None], swapped, out)


def turn_pose(pose, turn):
    """The pose an augmented image shows: ``pose`` float32 (B, 3) roll, yaw, pitch in degrees of the
    source images, ``turn`` (B, 2) flip sign and rotation in degrees from :func:`_affine_params`.

    The warp maps an output offset ``o`` to the input offset ``R(theta) F o``, so the output shows the
    source turned by ``-theta`` and then mirrored: roll becomes ``flip * (roll - theta)``, yaw
    ``flip * yaw``; pitch does not change. (Zoom and shear, a few percent, distort the angles
    slightly; they are left out.)"""
    import tensorflow as tf

    flip, theta = turn[:, 0:1], turn[:, 1:2]
    return tf.concat([flip * (pose[:, 0:1] - theta), flip * pose[:, 1:2], pose[:, 2:3]], axis=1)


def apply_affine(images, params, fill_mode: str = "nearest", interpolation: str = "bilinear"):
    """Warp a batch: images float32 (B, H, W, C), params float32 (B, 8) mapping output to input pixels."""
    import tensorflow as tf

    shape = tf.shape(images)[1:3]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=params, output_shape=shape, fill_value=0.0,
        interpolation=interpolation.upper(), fill_mode=fill_mode.upper())


#: OpenCV's border modes for the fill modes whose pixels equal TensorFlow's warp's (within 0.5, a test).
#: "wrap" is left out: TensorFlow's wraps with a period of one pixel less than OpenCV's, so a pipeline
#: with ``fill_mode="wrap"`` warps with TensorFlow.
_CV_BORDERS = {"nearest": "BORDER_REPLICATE", "constant": "BORDER_CONSTANT", "reflect": "BORDER_REFLECT"}
#: How :class:`ImagePipeline` warps its augmented batches (its ``warp`` argument).
WARPS = ("opencv", "tensorflow")
#: The warp of a pipeline (and of a run, a search's cached features) that names none.
DEFAULT_WARP = "opencv"


def _warp_arrays(images: np.ndarray, params: np.ndarray, fill_mode) -> np.ndarray:
    import cv2

    mode = fill_mode.decode() if isinstance(fill_mode, bytes) else str(fill_mode)
    out = np.empty_like(images)
    height, width = images.shape[1:3]
    for i in range(len(images)):
        cv2.warpAffine(images[i], np.ascontiguousarray(params[i, :6].reshape(2, 3)), (width, height), dst=out[i],
                       flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=getattr(cv2, _CV_BORDERS[mode]),
                       borderValue=0)
    return out


def apply_affine_uint8(images, params, fill_mode: str = "nearest"):
    """Warp a uint8 batch with OpenCV: images uint8 (B, H, W, C), params float32 (B, 8) mapping output
    to input pixels (affine: the last two are 0, as :func:`_affine_params` draws them), fill_mode
    "nearest", "constant" or "reflect". Returns uint8
    (B, H, W, C), bilinear as :func:`apply_affine`, rounded to integers: within 0.5 of it with OpenCV 5
    (a test; OpenCV 4 placed its samples to 1/32 pixel, up to 6 grey levels off on sharp edges, hence
    the package's requirement of OpenCV >= 5).

    Why: TensorFlow's warp interpolates in float32 at about 25 ms per batch of 32 at 224 px on the two
    cores the training step needs; OpenCV's fixed-point warp takes about 6 ms on one
    (``benchmarks/bench_augment.py``)."""
    import tensorflow as tf

    if fill_mode not in _CV_BORDERS:
        raise ValueError(f"fill_mode must be one of {sorted(_CV_BORDERS)} for the OpenCV warp. Received: {fill_mode!r}")
    out = tf.numpy_function(lambda a, p: _warp_arrays(a, p, fill_mode), [images, params], tf.uint8, stateful=False)
    out.set_shape(images.shape)
    return out


class ImagePipeline:
    """tf.data pipelines over one split of a :class:`LabeledDataset`.

    Args:
        ds: the images and labels.
        image_size: side of the square model input, in pixels.
        batch_size: images per batch.
        augment: training augmentation (None or an identity config: none).
        preprocess: optional function applied to float32 images in [0, 255] after augmentation
            (the backbone's ``preprocess_input``); default none, because models carry it.
        cache: True (memory), a file path prefix, or False.
        interpolation: resize method, "bilinear" (anti-aliased; default) or "nearest" (the
            reference code's choice).
        seed: seed of shuffling and augmentation.
        num_parallel_calls: parallelism of decoding (default: tf.data.AUTOTUNE).
        severity_targets: optional float array of shape (n, n_tasks), a graded target per row and task
            (e.g. :func:`icao_mtl.losses.severity_targets`; NaN where unknown), served under
            :data:`SEVERITY_KEY` with the labels.
        pose_targets: optional float array of shape (n, 3), the head's roll, yaw and pitch in degrees
            per row (``LabeledDataset.pose``; NaN where unknown), served under :data:`POSE_KEY`, turned
            as each augmented image is (:func:`turn_pose`).
        landmark_targets: optional float array of shape (n, 2 * P), ``x, y`` pairs of P points in
            fractions of the side per row (``LabeledDataset.landmarks``; NaN where unknown), served under
            :data:`LANDMARK_KEY` as ``x_1 .. x_P, y_1 .. y_P`` where each augmented image shows them
            (:func:`move_landmarks`).
        warp: how augmented images are warped: "opencv" (default; :func:`apply_affine_uint8`, on uint8
            images; a ``fill_mode="wrap"`` augmentation warps with TensorFlow) or "tensorflow"
            (:func:`apply_affine`, in float32; about four times the CPU time).
    """

    def __init__(self, ds: LabeledDataset, image_size: int, batch_size: int = 32, *,
                 augment: AugmentConfig | None = None, preprocess=None, cache=True,
                 interpolation: str = "bilinear", seed: int = 0, num_parallel_calls=None, severity_targets=None,
                 pose_targets=None, landmark_targets=None, warp: str = DEFAULT_WARP):
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an integer of at least 8 pixels. Received: {image_size!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer. Received: {batch_size!r}")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"interpolation must be 'bilinear' or 'nearest'. Received: {interpolation!r}")
        if len(ds) == 0:
            raise ValueError("Cannot build a pipeline over an empty split.")
        if warp not in WARPS:
            raise ValueError(f"warp must be one of {WARPS}. Received: {warp!r}")
        self.ds = ds
        self.image_size = image_size
        self.batch_size = batch_size
        self.augment = None if augment is None or augment.is_identity else augment.validate()
        self.preprocess = preprocess
        self.cache = cache
        self.interpolation = interpolation
        self.seed = int(seed)
        self.num_parallel_calls = num_parallel_calls
        self.warp = warp
        if severity_targets is not None:
            severity_targets = np.asarray(severity_targets, np.float32)
            if severity_targets.shape != (len(ds), len(ds.tasks)):
                raise ValueError(f"severity_targets must have shape {(len(ds), len(ds.tasks))} (rows, tasks). "
                                 f"Received: {severity_targets.shape}")
        self.severity_targets = severity_targets
        if pose_targets is not None:
            pose_targets = np.asarray(pose_targets, np.float32)
            if pose_targets.shape != (len(ds), 3):
                raise ValueError(f"pose_targets must have shape {(len(ds), 3)} (rows, roll/yaw/pitch). Received: "
                                 f"{pose_targets.shape}")
        self.pose_targets = pose_targets
        if landmark_targets is not None:
            landmark_targets = np.asarray(landmark_targets, np.float32)
            if landmark_targets.ndim != 2 or landmark_targets.shape[0] != len(ds) or landmark_targets.shape[1] % 2:
                raise ValueError(f"landmark_targets must have shape ({len(ds)}, 2 * points) (rows, x/y pairs). "
                                 f"Received: {landmark_targets.shape}")
        self.landmark_targets = landmark_targets
        self._base = None

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def steps(self) -> int:
        """Batches per pass over the split (the last batch may be smaller)."""
        return math.ceil(len(self.ds) / self.batch_size)

    @property
    def tasks(self) -> tuple:
        return self.ds.tasks

    def labels(self) -> dict[str, np.ndarray]:
        """Task id -> int array of shape (n,), in the order of :meth:`eval`."""
        return {t: self.ds.labels[:, j].astype(np.int32) for j, t in enumerate(self.ds.tasks)}

    def _decode(self, path):
        import tensorflow as tf

        raw = tf.io.read_file(path)
        img = tf.io.decode_image(raw, channels=3, dtype=tf.uint8, expand_animations=False)
        size = [self.image_size, self.image_size]
        if self.interpolation == "nearest":
            img = tf.image.resize(img, size, method="nearest")
        else:
            img = tf.image.resize(img, size, method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)

    def base(self):
        """(index, uint8 image) for every row, decoded, resized and cached once."""
        import tensorflow as tf

        if self._base is None:
            par = self.num_parallel_calls or tf.data.AUTOTUNE
            paths = tf.constant(self.ds.paths)
            base = tf.data.Dataset.range(len(self.ds)).map(
                lambda i: (tf.cast(i, tf.int32), self._decode(tf.gather(paths, i))), num_parallel_calls=par,
                deterministic=True)
            if self.cache:
                base = base.cache("" if self.cache is True else str(self.cache))
            self._base = base
        return self._base

    def _with_labels(self, ds):
        import tensorflow as tf

        table = tf.constant(self.ds.labels.astype(np.int32))
        graded = None if self.severity_targets is None else tf.constant(self.severity_targets)
        pose = None if self.pose_targets is None else tf.constant(self.pose_targets)
        marks = None if self.landmark_targets is None else tf.constant(
            self.landmark_targets.reshape(len(self.ds), -1, 2))
        tasks, size = self.ds.tasks, self.image_size

        def attach(idx, images, warp=None):
            rows = tf.gather(table, idx)
            labels = {t: rows[:, j] for j, t in enumerate(tasks)}
            if graded is not None:
                labels[SEVERITY_KEY] = tf.gather(graded, idx)
            params, turn = (None, None) if warp is None else (warp[:, :8], warp[:, 8:])
            if pose is not None:
                labels[POSE_KEY] = tf.gather(pose, idx) if turn is None else turn_pose(tf.gather(pose, idx), turn)
            if marks is not None:
                points = tf.gather(marks, idx)
                if params is not None:
                    points = move_landmarks(points, params, turn, size)
                labels[LANDMARK_KEY] = tf.concat([points[..., 0], points[..., 1]], axis=1)
            return images, labels

        return ds.map(attach, num_parallel_calls=tf.data.AUTOTUNE)

    def _finish(self, ds):
        import tensorflow as tf

        if self.preprocess is not None:
            fn = self.preprocess
            ds = ds.map(lambda x, y: (fn(x), y), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def train(self, epoch: int = 0, *, shuffle: bool = True, drop_remainder: bool = False, rows=None):
        """The training pass of ``epoch``: shuffled and augmented deterministically from
        ``(seed, epoch)``. ``rows``: only these rows of the split (indices; e.g. a part of a
        :class:`SplitView`), each augmented as it would be in the whole split's pass.

        The shuffle is tf.data's, whose seed is combined with TensorFlow's global seed: the order is the
        same for the same ``(seed, epoch)`` and global seed (every command sets it from its ``--seed``
        before any pass)."""
        import tensorflow as tf

        ds = self.base()
        n = len(self.ds)
        if rows is not None:
            member = np.zeros(n, bool)
            member[np.asarray(rows, np.int64)] = True
            member_t = tf.constant(member)
            ds = ds.filter(lambda idx, img: tf.gather(member_t, idx))
            n = int(member.sum())
        if shuffle:
            ds = ds.shuffle(max(n, 1), seed=self.seed * 100003 + int(epoch), reshuffle_each_iteration=False)
        aug = self.augment
        seed_hi = self.seed * 1000 + int(epoch)
        h = w = self.image_size

        if aug is not None:
            def params(idx, img):
                p, g, turn = _affine_params(aug, tf.stack([seed_hi, idx]), h, w)
                return idx, img, p, g, turn

            ds = ds.map(params, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(self.batch_size, drop_remainder=drop_remainder)
        if aug is not None:
            def warp(idx, img, p, g, turn):
                if self.warp == "opencv" and aug.fill_mode in _CV_BORDERS:
                    x = tf.cast(apply_affine_uint8(img, p, aug.fill_mode), tf.float32)
                else:
                    x = apply_affine(tf.cast(img, tf.float32), p, aug.fill_mode)
                if aug.intensity > 0:
                    x = tf.clip_by_value(x * g[:, None, None, None], 0.0, 255.0)
                return idx, x, tf.concat([p, turn], axis=1)

            ds = ds.map(warp, num_parallel_calls=tf.data.AUTOTUNE)
        else:
            ds = ds.map(lambda idx, img: (idx, tf.cast(img, tf.float32)), num_parallel_calls=tf.data.AUTOTUNE)
        return self._finish(self._with_labels(ds))

    def eval(self):
        """The whole split in file order, no augmentation."""
        import tensorflow as tf

        ds = self.base().batch(self.batch_size)
        ds = ds.map(lambda idx, img: (idx, tf.cast(img, tf.float32)), num_parallel_calls=tf.data.AUTOTUNE)
        return self._finish(self._with_labels(ds))

    def images(self) -> np.ndarray:
        """All images of the split as uint8 (n, H, W, 3), in file order (for analysis and plots)."""
        return np.concatenate([b.numpy() for _, b in self.base().batch(256)], 0)


class SplitView:
    """Complementary parts of one training source, redrawn every epoch: e.g. MTL-NAS's 50/50 split of
    the training set into a weight half and an architecture half.

    The partition of epoch ``e`` is a permutation drawn from ``(seed, e)``: the same after a resume,
    different from one epoch to the next. Each part serves the engine as a data stream
    (:meth:`part`), reading the source's cached images (nothing is decoded twice).

    Args:
        source: an :class:`ImagePipeline` (or any source with ``__len__``, ``batch_size`` and
            ``train(epoch, rows=...)``, such as the feature pipelines of ``nas``).
        fractions: the parts' shares of the rows (default two halves), summing to 1.
        seed: seed of the partitions.
    """

    def __init__(self, source, fractions=(0.5, 0.5), seed: int = 0):
        fractions = tuple(float(f) for f in fractions)
        if len(fractions) < 2 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"SplitView fractions must be two or more positive shares summing to 1. Received: "
                             f"{fractions}")
        self.source, self.fractions, self.seed = source, fractions, int(seed)
        n = len(source)
        cuts = np.round(np.cumsum(fractions)[:-1] * n).astype(int)
        self.sizes = np.diff(np.r_[0, cuts, n]).tolist()
        if min(self.sizes) < 1:
            raise ValueError(f"A part of the split would be empty ({self.sizes} rows of {n}). Fix: use more data or "
                             "other fractions.")

    def rows(self, epoch: int) -> list[np.ndarray]:
        """The rows of every part in ``epoch`` (sorted indices into the source)."""
        order = np.random.default_rng([self.seed, 7919, int(epoch)]).permutation(len(self.source))
        bounds = np.cumsum([0, *self.sizes])
        return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def part(self, k: int) -> "SplitPart":
        if not 0 <= k < len(self.sizes):
            raise ValueError(f"SplitView has parts 0..{len(self.sizes) - 1}. Received: {k}")
        return SplitPart(self, k)


class SplitPart:
    """One part of a :class:`SplitView`, as a data stream: ``train(epoch)`` and ``steps``."""

    def __init__(self, view: SplitView, k: int):
        self.view, self.k = view, k

    def __len__(self) -> int:
        return self.view.sizes[self.k]

    @property
    def steps(self) -> int:
        return math.ceil(len(self) / self.view.source.batch_size)

    def train(self, epoch: int = 0):
        return self.view.source.train(epoch, rows=self.view.rows(epoch)[self.k])

    def eval(self):
        raise ValueError("A SplitView part is a training stream; evaluate on the validation split instead.")
