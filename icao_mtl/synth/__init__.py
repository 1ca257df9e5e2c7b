"""The synthetic ICAO portrait set: passport-style portraits with exact ground truth for all 23
requisites (no open ICAO compliance dataset exists).

Typical use::

    from icao_mtl.synth import SynthConfig, ensure_dataset
    path = ensure_dataset(SynthConfig(n=6000, size=224, seed=0))   # data/synthetic_n6000_s224_seed0

or ``python -m icao_mtl.synth --out DIR --n 6000 --size 224 --seed 0 --workers 2``. The table of what is
drawn for each requisite, with severities, thresholds and prevalence, is in README.md
("The synthetic dataset") and printed by ``python -m icao_mtl.synth --table``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .generate import (GENERATOR_VERSION, REGION_NAMES, REQUISITE_REGION, SynthConfig, generate, is_complete, read_regions,
                       region_mask, has_geometry, portrait_landmarks, write_geometry, LANDMARK_POINTS)
from .portrait import Portrait, render, sample_portrait
from .specs import SPECS, DefectSpec, markdown_table

__all__ = ["GENERATOR_VERSION", "REGION_NAMES", "REQUISITE_REGION", "read_regions", "region_mask", "SPECS", "DefectSpec", "Portrait", "SynthConfig", "default_data_root",
           "ensure_dataset", "generate", "is_complete", "markdown_table", "render", "sample_portrait",
           "write_geometry", "has_geometry", "portrait_landmarks", "LANDMARK_POINTS"]


def default_data_root() -> Path:
    """Where generated datasets live: ``$ICAO_MTL_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("ICAO_MTL_DATA") or Path.cwd() / "data")


def ensure_dataset(cfg: SynthConfig = SynthConfig(), root: str | os.PathLike | None = None, *,
                   workers: int | None = None, progress: bool = True) -> Path:
    """Return the directory of the synthetic dataset ``cfg``, rendering it first if it is missing.

    Args:
        cfg: dataset parameters.
        root: parent directory (default :func:`default_data_root`).
        workers: rendering processes (default: all cores).
        progress: show a progress bar while rendering.
    """
    out = Path(root or default_data_root()) / cfg.default_name()
    if is_complete(out, cfg) and has_geometry(out):
        return out
    # A set that an older version of this generator rendered under its default name is replaced
    # (the name is ours); anything else there is left alone and reported.
    return generate(out, cfg, workers=workers or max(1, os.cpu_count() or 1), progress=progress,
                    overwrite=_rendered_by_older_version(out))


def _rendered_by_older_version(out: Path) -> bool:
    import json

    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("generator") == "icao_mtl.synth" and meta.get("version") != GENERATOR_VERSION
