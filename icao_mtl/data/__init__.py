"""The dataset layer: reading and validating datasets, splits, and tf.data pipelines.

Typical use::

    from icao_mtl import data
    ds = data.load("synthetic")            # or a path, "digits", "lfw"
    splits = data.split_dataset(ds, seed=0)
    print(ds.report.summary()); print(splits.report.summary())
    train = data.ImagePipeline(splits.train, image_size=128, batch_size=32,
                               augment=data.augment_config("reference"))
    for images, labels in train.train(epoch=0): ...

TensorFlow is imported only when a pipeline is built.
"""

from __future__ import annotations

import os
from pathlib import Path

from .manifest import (IMAGE_EXTENSIONS, LANDMARK_COLUMNS, LANDMARK_POINTS, POSE_AXES, SPLIT_NAMES, ColumnMapping, DatasetError, LabeledDataset, ReadReport,
                       read_dataset)
from .pipeline import AUGMENT_PRESETS, LANDMARK_KEY, LANDMARK_MAPS_KEY, POSE_KEY, SEVERITY_KEY, AugmentConfig, ImagePipeline, SplitView, augment_config
from .splits import DEFAULT_FRACTIONS, SplitReport, Splits, split_dataset, stratified_split, with_extra_training

__all__ = ["AUGMENT_PRESETS", "AugmentConfig", "ColumnMapping", "DEFAULT_FRACTIONS", "DatasetError",
           "IMAGE_EXTENSIONS", "ImagePipeline", "LANDMARK_COLUMNS", "LANDMARK_KEY", "LANDMARK_MAPS_KEY", "LANDMARK_POINTS", "LabeledDataset", "NAMED_SETS", "POSE_AXES", "POSE_KEY", "ReadReport",
           "SPLIT_NAMES",
           "SEVERITY_KEY", "SplitReport", "SplitView", "Splits", "augment_config", "load", "read_dataset", "resolve", "split_dataset",
           "with_extra_training",
           "stratified_split"]

#: Names ``--data`` accepts besides a path.
NAMED_SETS = ("synthetic", "digits", "lfw", "lfw_framed")


def resolve(data: str | os.PathLike | None = None, root: str | os.PathLike | None = None, *,
            synth_n: int = 6000, synth_size: int = 224, seed: int = 0, progress: bool = True) -> Path:
    """The directory of a dataset, materialising a named one on first use.

    Args:
        data: a dataset directory, or one of :data:`NAMED_SETS` (default ``"synthetic"``).
        root: where named sets live (default: ``$ICAO_MTL_DATA`` or ``./data``).
        synth_n, synth_size, seed: parameters of the synthetic set.
    """
    from ..synth import SynthConfig, default_data_root, ensure_dataset

    root = Path(root or default_data_root())
    name = "synthetic" if data is None else str(data)
    if name == "synthetic":
        return ensure_dataset(SynthConfig(n=synth_n, size=synth_size, seed=seed), root, progress=progress)
    if name == "digits":
        from .tasksets import build_digits

        return build_digits(root / "digits")
    if name == "lfw":
        from .tasksets import build_lfw

        return build_lfw(root / "lfw_defects")
    if name == "lfw_framed":
        from .tasksets import build_lfw, build_lfw_framed

        return build_lfw_framed(root / "lfw_framed", build_lfw(root / "lfw_defects"), progress=progress)
    path = Path(data)
    if not path.is_dir():
        raise DatasetError(f"--data {data!r} is neither a dataset directory nor one of {NAMED_SETS}. Fix: pass "
                           "the directory that holds images/ and labels.csv (see data/README.md).")
    return path


def load(data: str | os.PathLike | None = None, root=None, *, tasks=None, mapping: ColumnMapping | None = None,
         check_images: str = "decode", **resolve_kwargs) -> LabeledDataset:
    """:func:`resolve` then :func:`read_dataset`."""
    return read_dataset(resolve(data, root, **resolve_kwargs), tasks=tasks, mapping=mapping, check_images=check_images)
