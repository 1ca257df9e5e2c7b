"""The configuration of a training run: a dataclass that round-trips through JSON.

Command line -> :class:`TrainConfig` -> :meth:`TrainConfig.validate` (once, before any long work) ->
library calls. A run directory's ``config.json`` is enough to rerun or resume it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import ConfigError

APPROACHES = ("stl", "hc1", "hc2", "hc3", "nas", "regions")

#: The paper's reported experiments (spec section 6.4), as option sets for ``--preset``. They need
#: ImageNet weights (or ``--weights PATH``) to mean what the paper meant.
PAPER_PRESETS: dict[str, dict] = {
    # STL: frozen VGG16, Adamax 1e-3, batch 64, 10 epochs (the reference's batch script)
    "stl": dict(approach="stl", backbone="vgg16", weights="imagenet", epochs=10, batch_size=64, optimizer="adamax",
                lr=1e-3, lr_schedule="constant", augment="reference", interpolation="nearest"),
    # Handcrafted 1, Experiment III: fine-tune the base 10 epochs, freeze it again, train 200
    "hc1_exp3": dict(approach="hc1", backbone="vgg16", weights="imagenet", finetune_epochs=10, epochs=200,
                     optimizer="adam", lr=1e-3, lr_schedule="reference", augment="paper", interpolation="nearest"),
    # Handcrafted 2, Experiment IV: no rotation, 50 epochs
    "hc2_exp4": dict(approach="hc2", backbone="vgg16", weights="imagenet", epochs=50, optimizer="adam", lr=1e-3,
                     lr_schedule="reference", augment="no_rotation", interpolation="nearest"),
    # Handcrafted 3, Experiment III: 200 epochs
    "hc3_exp3": dict(approach="hc3", backbone="vgg16", weights="imagenet", epochs=200, optimizer="adam", lr=1e-3,
                     lr_schedule="reference", augment="reference", interpolation="nearest"),
    # NAS: the best configuration retrained 50 epochs on MobileNetV2 (give --nas-config)
    "nas_final": dict(approach="nas", backbone="mobilenet_v2", weights="imagenet", epochs=50, optimizer="adam",
                      lr=1e-3, lr_schedule="reference", augment="reference", interpolation="nearest"),
}


#: The ``regions`` approach's defaults where ``--augment reference`` leaves --shift / --zoom unset.
REGIONS_AUGMENT = {"shift": 0.04, "zoom": 0.05}
#: What ``--landmark-weight`` and ``--pose-weight`` become when not given, for the regions approach on
#: training data with landmarks.csv and pose.csv (:meth:`TrainConfig.with_geometry`): the geometry
#: branch's heat maps and points (summed over 7 points) and its signed pose (summed over 3 angles, in
#: tens of degrees). These weigh it against rotation's cross-entropy (with the small CNN the branch's
#: first two layers are the small CNN's: ``geometry_trunk``).
GEOMETRY_DEFAULTS = {"landmark_weight": 0.15, "pose_weight": 0.5}
#: What a run written before a field existed did instead of the field's default: TensorFlow's warp
#: (before 2026-12-07's OpenCV warp), a geometry branch with its own first layers.
BEFORE_FIELD = {"warp": "tensorflow", "geometry_trunk": "own", "tta": "none", "weight_decay": 0.0, "synth_extra": 0,
                "task_weights": {}}
#: Fields added since run directories are named by the configuration's fingerprint, each at the value
#: that runs written before it had: at that value the field stays out of the fingerprint, so those
#: runs keep theirs (and ``--resume`` without ``--out`` still finds them).
FINGERPRINT_SINCE = {"weight_decay": 0.0, "synth_extra": 0, "task_weights": {}}
#: Test-time augmentation choices (``TrainConfig.tta``): "flip" averages each image's scores with its
#: mirror image's, "none" scores it once, "auto" is "flip" where the training augmentation flipped.
TTA_MODES = ("auto", "flip", "none")
#: What ``weight_decay=None``, ``synth_extra=None`` and ``task_weights=None`` (the defaults since
#: 2026-12-08) give the regions approach trained from scratch, where they were measured (README, "Twice
#: the portraits" and "Hair over the eyes"): a decoupled decay of 0.1, the training split of one more
#: synthetic set (seed 1) beside the synthetic set's (these two on the synthetic set only), and hair over
#: the eyes' cross-entropy weighted 4 times the others'. Every other approach, pretrained weights and
#: other data keep 0, 0 and none (the papers' settings).
REGIONS_DEFAULTS = {"weight_decay": 0.1, "synth_extra": 1, "task_weights": {"hair_eyes": 4.0}}


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults give the package's default run: the
    ``regions`` approach (the whole photo at half resolution, the eye band at full resolution and the
    geometry branch, one head per requisite) on the small CNN trained from scratch on the 224 px
    synthetic set with the training split of a second one beside it (``synth_extra``: 9,000 training
    portraits), 12 epochs, decoupled weight decay 0.1 (:data:`REGIONS_DEFAULTS`), milder shifts and zoom
    than the reference augmentation (:data:`REGIONS_AUGMENT`), hair over the eyes' loss weighted 4x,
    mixed bfloat16 where the hardware
    computes it natively, each evaluated image scored with its mirror image (``tta``); data generation
    included, 16 minutes on 2 cores of an AMD EPYC with AVX2 only (float32, TensorFlow's oneDNN kernels;
    README)."""

    # data
    data: str | None = None  # a dataset directory, or synthetic / digits / lfw (default: synthetic)
    mapping: str | None = None  # column mapping JSON for other exports
    tasks: list | None = None  # subset of the dataset's tasks
    extra_train: str | None = None  # datasets (comma-separated) whose train splits join the training split
    # the training splits of this many more synthetic sets (seeds 1, 2, ..., rendered on first use) join the
    # training split; None (the default since 2026-12-08): REGIONS_DEFAULTS's 1 for the regions approach
    # on the synthetic set, 0 otherwise (resolved_synth_extra)
    synth_extra: int | None = None
    synth_n: int = 6000
    synth_size: int = 224
    split: list = field(default_factory=lambda: [0.75, 0.15, 0.10])
    split_seed: int = 0  # the split's own seed: --seed changes the training, not which images are tested
    check_images: str = "decode"
    # model
    approach: str = "regions"
    backbone: str = "small_cnn"
    weights: str = "none"
    img_size: int | None = None
    alpha: float = 1.0
    dropout: float = 0.3
    nas_config: list | None = None
    eye_layout: bool = True  # regions: keep the eye band's layout beside its pooled features
    keypoints: int = 0  # regions: learnt keypoints (soft arg-max) per branch, 0: none
    # regions: the geometry branch reads the small CNN's second block ("shared"; what "auto" gives the
    # small CNN since 2026-12-07) or has its own first layers ("own"; runs from before resume with it)
    geometry_trunk: str = "auto"
    freeze_backbone: bool | None = None  # default: frozen with pretrained weights, trained from scratch otherwise
    # training
    epochs: int = 12  # 24 before 2026-12-08, on half the training portraits (the same number of steps)
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    # decoupled weight decay of the kernels (w -= lr * weight_decay * w each step); None (the default since
    # 2026-12-08): REGIONS_DEFAULTS's 0.1 for the regions approach trained from scratch, 0 otherwise
    weight_decay: float | None = None
    loss_weight: float = 0.1
    # requisite -> factor of its cross-entropy (times loss_weight), 1 for the others; None (the default since
    # 2026-12-08): REGIONS_DEFAULTS's hair_eyes 4 for the regions approach from scratch on the synthetic
    # set, none otherwise (resolved_task_weights)
    task_weights: dict | None = None
    severity_weight: float = 0.0  # > 0: also regress each requisite's severity (datasets with severities.csv)
    # > 0: also regress the head's roll, yaw and pitch (datasets with pose.csv); None: GEOMETRY_DEFAULTS
    pose_weight: float | None = None
    # > 0, regions: locate face points, the rotation head reads the pose they show (datasets with
    # landmarks.csv); None: GEOMETRY_DEFAULTS
    landmark_weight: float | None = None
    augment: str = "reference"
    flip: bool | None = None
    rotation: float | None = None
    zoom: float | None = None
    shear: float | None = None
    shift: float | None = None
    intensity: float | None = None
    finetune_epochs: int = 0
    finetune_unfreeze: str = "all"
    monitor: str = "val_accuracy"
    patience: int | None = None
    interpolation: str = "bilinear"
    # how augmented images are warped: opencv (uint8, the default since 2026-12-07) or tensorflow (float32)
    warp: str = "opencv"  # = data.pipeline.DEFAULT_WARP (not imported here: the config stays light)
    cache: bool = True
    # evaluation
    eer_method: str = "fvc"
    bootstrap: int = 0
    # scores of every image averaged with its mirror image's (evaluate, check): "auto" (the default since
    # 2026-12-07) where the training augmentation flipped, so the model learnt both as the same case;
    # runs written before scored each image once
    tta: str = "auto"
    # system
    seed: int = 0
    strategy: str = "none"
    # "auto" (the default since 2026-12-07): mixed bfloat16 where the hardware computes it natively
    # (training.resolve_precision), float32 elsewhere; runs written before trained in float32
    mixed_precision: str = "auto"
    out: str | None = None

    #: Fields that do not change what is trained (ignored when checking a resume).
    VOLATILE = ("out", "strategy", "check_images", "tta")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        if "split_seed" not in d and "seed" in d:  # written before the split had its own seed: it used --seed
            d = {**d, "split_seed": d["seed"]}
        missing = names - set(d)
        if missing and missing <= set(BEFORE_FIELD):  # a run's whole configuration, written before these
            d = {**d, **{k: BEFORE_FIELD[k] for k in missing}}  # fields: it trained (and resumes) that way
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"Unknown configuration keys {unknown}. Fix: remove them; valid keys are "
                              f"{', '.join(sorted(names))}.")
        return cls(**d)

    @classmethod
    def from_json(cls, path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Configuration file {path} not found. Fix: pass an existing JSON file to --config.")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Configuration file {path} is not valid JSON ({exc}). Fix: correct it.") from exc

    def to_dict(self) -> dict:
        return asdict(self)

    def copy(self, **changes) -> "TrainConfig":
        """A copy through the JSON form (so the serialisation path runs on every copy)."""
        d = json.loads(json.dumps(self.to_dict()))
        d.update(changes)
        return TrainConfig.from_dict(d)

    def extra_sets(self) -> list[str]:
        """The datasets of ``extra_train``, in order (it may name several, comma-separated)."""
        return [name.strip() for name in (self.extra_train or "").split(",") if name.strip()]

    def extra_training_sets(self) -> list[tuple[str, dict]]:
        """What joins the training split, in order: ``(dataset, keyword arguments of data.load)`` for
        each more synthetic set (:meth:`resolved_synth_extra`, seeds 1, 2, ...), then each of
        ``extra_train``."""
        more = [("synthetic", {"synth_n": self.synth_n, "synth_size": self.synth_size, "seed": seed,
                               **({"tasks": self.tasks} if self.tasks else {})})
                for seed in range(1, self.resolved_synth_extra() + 1)]
        return more + [(name, {}) for name in self.extra_sets()]

    def loss_weights(self, tasks) -> dict:
        """Each of ``tasks``' cross-entropy weight: ``loss_weight`` (1 for ``stl``, one model per task)
        times its ``task_weights`` factor (1 where none is given). Raises :class:`ConfigError` when
        ``task_weights`` names a task that is not trained."""
        base = 1.0 if self.approach == "stl" else float(self.loss_weight)
        factors = self.resolved_task_weights()
        unknown = sorted(set(factors) - set(tasks))
        if unknown:
            raise ConfigError(f"task_weights names {unknown}, which this run does not train. Fix: use ids among "
                              f"{', '.join(tasks)}.")
        return {t: base * float(factors.get(t, 1.0)) for t in tasks}

    def fingerprint(self) -> str:
        """Hash of what is trained (volatile fields excluded)."""
        d = {k: v for k, v in self.to_dict().items()
             if k not in self.VOLATILE and not (k in FINGERPRINT_SINCE and v == FINGERPRINT_SINCE[k])}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

    def with_geometry(self, train) -> "TrainConfig":
        """This configuration with ``landmark_weight`` and ``pose_weight`` decided where they are None
        (the default): :data:`GEOMETRY_DEFAULTS` for the regions approach when ``train`` (the training
        split) has ``rotation``, landmarks.csv and pose.csv, as every synthetic set has; 0 otherwise (a
        dataset without them trains as before, nothing to refuse). Given values are kept."""
        known = (self.approach == "regions" and "rotation" in train.tasks
                 and train.landmarks is not None and np.isfinite(train.landmarks).any()
                 and train.pose is not None and np.isfinite(train.pose).any())
        chosen = {name: (GEOMETRY_DEFAULTS[name] if known else 0.0)
                  for name in GEOMETRY_DEFAULTS if getattr(self, name) is None}
        return replace(self, **chosen) if chosen else self

    def resolved_geometry_trunk(self) -> str:
        """What the model's geometry branch starts from: "shared" or "own", or "none" where no branch is
        built (another approach, or ``--landmark-weight 0``): what a resume compares, so that runs
        written before the option resume where it changes nothing.

        Raises:
            ConfigError: see :func:`~icao_mtl.architectures.resolve_geometry_trunk`.
        """
        if self.approach != "regions" or self.landmark_weight == 0:
            return "none"
        from .architectures import resolve_geometry_trunk

        return resolve_geometry_trunk(self.geometry_trunk, self.backbone, self.model_config().resolved_size(),
                                      pretrained=self.weights not in (None, "none"))

    def _regions_from_scratch(self) -> bool:
        return self.approach == "regions" and self.weights in (None, "none")

    def resolved_weight_decay(self) -> float:
        """The decoupled weight decay this run trains with: ``weight_decay``, or where it is None
        :data:`REGIONS_DEFAULTS`'s for the regions approach trained from scratch and 0 otherwise."""
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return REGIONS_DEFAULTS["weight_decay"] if self._regions_from_scratch() else 0.0

    def resolved_synth_extra(self) -> int:
        """How many more synthetic sets lend their training splits: ``synth_extra``, or where it is
        None :data:`REGIONS_DEFAULTS`'s for the regions approach trained from scratch on the synthetic
        set (``data`` None or "synthetic") and 0 otherwise (another dataset trains on itself)."""
        if self.synth_extra is not None:
            return int(self.synth_extra)
        on_synthetic = self.data in (None, "synthetic")
        return REGIONS_DEFAULTS["synth_extra"] if on_synthetic and self._regions_from_scratch() else 0

    def resolved_task_weights(self) -> dict:
        """The factors of some requisites' cross-entropies: ``task_weights``, or where it is None
        :data:`REGIONS_DEFAULTS`'s (hair over the eyes 4, among the trained tasks) for the regions
        approach trained from scratch on the synthetic set, and none otherwise."""
        if self.task_weights is not None:
            return {k: float(v) for k, v in self.task_weights.items()}
        if self.data in (None, "synthetic") and self._regions_from_scratch():
            return {k: v for k, v in REGIONS_DEFAULTS["task_weights"].items() if not self.tasks or k in self.tasks}
        return {}

    def with_defaults(self) -> "TrainConfig":
        """This configuration with ``weight_decay``, ``synth_extra`` and ``task_weights`` decided where
        they are None, what a run directory's config.json records (so it says what trained) and a
        resume compares."""
        return replace(self, weight_decay=self.resolved_weight_decay(), synth_extra=self.resolved_synth_extra(),
                       task_weights=self.resolved_task_weights())

    def resolved_tta(self) -> str:
        """"flip" or "none": what ``tta`` means for this run ("auto": "flip" when the training
        augmentation mirrors images, as the reference augmentation does; every ICAO requisite is
        mirror-symmetric: a mirrored photo keeps its labels)."""
        if self.tta != "auto":
            return self.tta
        return "flip" if self.augment_config().horizontal_flip else "none"

    def frozen_backbone(self) -> bool:
        if self.freeze_backbone is not None:
            return self.freeze_backbone
        return self.weights not in (None, "none")

    def model_config(self):
        from .architectures import ModelConfig
        from .data.manifest import LANDMARK_POINTS

        return ModelConfig(approach=self.approach, backbone=self.backbone, weights=self.weights,
                           image_size=self.img_size, alpha=self.alpha, dropout=self.dropout,
                           nas_config=tuple(self.nas_config) if self.nas_config else None, seed=self.seed,
                           extra={"eye_layout": self.eye_layout, "keypoints": self.keypoints,
                                  "landmarks": len(LANDMARK_POINTS) if self.landmark_weight else 0,
                                  "geometry_trunk": self.geometry_trunk}
                           if self.approach == "regions" else {})

    def augment_config(self):
        from .data import augment_config

        shift, zoom = self.shift, self.zoom
        if self.approach == "regions" and self.augment == "reference":
            # the eye band is cropped at fixed rows: the reference shifts (22 px at 224) move eyes out of it
            shift = REGIONS_AUGMENT["shift"] if shift is None else shift
            zoom = REGIONS_AUGMENT["zoom"] if zoom is None else zoom
        return augment_config(self.augment, horizontal_flip=self.flip, rotation=self.rotation, zoom=zoom,
                              shear=self.shear, width_shift=shift, height_shift=shift, intensity=self.intensity)

    def validate(self) -> "TrainConfig":
        """Check every option that can be checked without data or TensorFlow work."""
        from .data.pipeline import AUGMENT_PRESETS
        from .training import MONITORS

        if self.approach not in APPROACHES:
            raise ConfigError(f"Unknown approach {self.approach!r}. Fix: --approach one of {', '.join(APPROACHES)}.")
        self.model_config().validate()
        if self.weights not in (None, "none", "imagenet") and not Path(self.weights).is_file():
            raise ConfigError(f"Weights file {self.weights} not found. Fix: pass an existing file, --weights imagenet "
                              "or --weights none.")
        if not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise ConfigError(f"split_seed must be a non-negative integer. Received: {self.split_seed!r}.")
        for name in ("epochs", "batch_size", "synth_n", "synth_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer. Received: {name}={v!r}.")
        if not isinstance(self.finetune_epochs, int) or self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs must be >= 0. Received: {self.finetune_epochs!r}.")
        if self.finetune_epochs and self.finetune_unfreeze != "all" and not (
                self.finetune_unfreeze.startswith("last:") and self.finetune_unfreeze[5:].isdigit()):
            raise ConfigError(f"finetune_unfreeze must be 'all' or 'last:K'. Received: {self.finetune_unfreeze!r}.")
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) <= 0:
            raise ConfigError(f"split must be three positive fractions summing to 1. Received: {self.split}.")
        if self.augment not in AUGMENT_PRESETS:
            raise ConfigError(f"Unknown augmentation preset {self.augment!r}. Fix: one of {', '.join(AUGMENT_PRESETS)}.")
        self.augment_config()
        if self.monitor not in MONITORS or not self.monitor.startswith("val_"):
            raise ConfigError(f"monitor must be val_accuracy (the paper), val_loss (the reference code) or val_eer. "
                              f"Received: {self.monitor!r}.")
        from .data.pipeline import WARPS

        if self.warp not in WARPS:
            raise ConfigError(f"warp must be one of {', '.join(WARPS)}. Received: {self.warp!r}.")
        self.resolved_geometry_trunk()
        if self.weight_decay is not None and (isinstance(self.weight_decay, bool)
                                              or not isinstance(self.weight_decay, (int, float))
                                              or not self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be a number >= 0 (0: none). Received: {self.weight_decay!r}.")
        if self.synth_extra is not None and (isinstance(self.synth_extra, bool) or not isinstance(self.synth_extra, int)
                                             or self.synth_extra < 0):
            raise ConfigError(f"synth_extra must be an integer >= 0 (0: the training split of --data alone). "
                              f"Received: {self.synth_extra!r}.")
        if self.task_weights is not None and (
                not isinstance(self.task_weights, dict)
                or not all(isinstance(k, str) and not isinstance(v, bool) and isinstance(v, (int, float)) and v >= 0
                           for k, v in self.task_weights.items())):
            raise ConfigError(f"task_weights must map requisite ids to numbers >= 0, e.g. {{\"hair_eyes\": 4}}. "
                              f"Received: {self.task_weights!r}.")
        if self.tta not in TTA_MODES:
            raise ConfigError(f"tta must be one of {', '.join(TTA_MODES)}. Received: {self.tta!r}.")
        if self.eer_method not in ("fvc", "roc"):
            raise ConfigError(f"eer_method must be fvc or roc. Received: {self.eer_method!r}.")
        if not isinstance(self.keypoints, int) or self.keypoints < 0:
            raise ConfigError(f"keypoints must be an integer >= 0 (0: none). Received: {self.keypoints!r}.")
        if self.keypoints and self.approach != "regions":
            raise ConfigError(f"--keypoints belongs to the regions approach, not {self.approach!r}. Fix: add "
                              "--approach regions, or drop --keypoints.")
        if not isinstance(self.severity_weight, (int, float)) or not self.severity_weight >= 0:
            raise ConfigError(f"severity_weight must be a number >= 0 (0: no severity regression). Received: "
                              f"{self.severity_weight!r}.")
        if self.landmark_weight is not None and (not isinstance(self.landmark_weight, (int, float))
                                                 or not self.landmark_weight >= 0):
            raise ConfigError(f"landmark_weight must be a number >= 0 (0: no landmarks). Received: "
                              f"{self.landmark_weight!r}.")
        if self.landmark_weight and self.approach != "regions":
            raise ConfigError(f"--landmark-weight locates face points in the regions approach's geometry branch; "
                              f"{self.approach!r} has none. Fix: add --approach regions, or drop --landmark-weight.")
        if self.pose_weight is not None and (not isinstance(self.pose_weight, (int, float))
                                             or not self.pose_weight >= 0):
            raise ConfigError(f"pose_weight must be a number >= 0 (0: no pose regression). Received: "
                              f"{self.pose_weight!r}.")
        if self.approach == "nas":
            if not self.nas_config or not all(isinstance(n, int) and n >= 1 for n in self.nas_config):
                raise ConfigError(f"--nas-config must be positive integers, one per task group, e.g. 2,1,3,2. "
                                  f"Received: {self.nas_config!r}.")
        if self.mapping and not Path(self.mapping).is_file():
            raise ConfigError(f"Column mapping file {self.mapping} not found. Fix: pass an existing JSON file.")
        return self
