"""Two real-image task sets that ship inside installed packages, written in the dataset layout.

- **digits**: the 1,797 real 8x8 handwritten digits of ``sklearn.datasets.load_digits``, as ten
  one-vs-rest binary tasks ``n_0`` .. ``n_9`` (label 1: the image shows that digit). The reference code
  used MNIST the same way; its task groups are kept in ``meta.json``.
- **lfw**: the 100 real 25x25 grey face crops of ``skimage.data.lfw_subset``, each rendered in several
  variants with the synthetic renderer's image-level defects (``blurred``, ``pixelation``,
  ``washed_out``, ``light``, ``ink_mark``) at random severities, so real faces get exact labels. The
  split column keeps all variants of one face in one split, so no face is seen in training and test.

- **lfw_framed**: the same images as ``check`` shows them to a model (aligned on MTCNN's eyes to the
  synthetic portraits' framing, padded to a square, at 224 px), labels and split column unchanged:
  the set ``--extra-train lfw_framed`` adds to the training split, so that the image-level
  requisites are also learned on real faces (its val and test faces stay unseen).

They are written once into the data directory and then read like any dataset
(:func:`~icao_mtl.data.read_dataset`); nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from .. import io as aio
from ..requisites import IMAGE_LEVEL
from ..synth import defects
from ..synth.specs import SPECS

DIGIT_TASKS = tuple(f"n_{d}" for d in range(10))
#: Groups of the reference code's NAS model for MNIST.
DIGIT_GROUPS = {"g0": ("n_0",), "g1": ("n_1", "n_7", "n_4"), "g2": ("n_2", "n_3"), "g3": ("n_5", "n_6", "n_8", "n_9")}
LFW_VERSION = "1.0"
LFW_FRAMED_VERSION = "1.0"
DIGITS_VERSION = "1.0"


def _write_layout(out: Path, names, labels, tasks, images, meta, split=None) -> Path:
    """Write images and labels.csv / meta.json into a temporary directory, then rename it to ``out``."""
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    try:
        for name, img in zip(names, images):
            ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            (tmp / "images" / name).write_bytes(buf.tobytes())
        header = ["image", *tasks] + (["split"] if split is not None else [])
        lines = [",".join(header)]
        for i, name in enumerate(names):
            row = [name, *(str(int(v)) for v in labels[i])] + ([split[i]] if split is not None else [])
            lines.append(",".join(row))
        aio.write_text(tmp / "labels.csv", "\n".join(lines) + "\n")
        aio.write_json(tmp / "meta.json", meta)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _current(out: Path, meta: dict) -> bool:
    try:
        old = aio.read_json(out / "meta.json")
    except (FileNotFoundError, ValueError):
        return False
    return (out / "labels.csv").is_file() and all(old.get(k) == meta[k] for k in ("generator", "version", "params"))


def build_digits(out: str | os.PathLike, size: int = 32) -> Path:
    """Write the digits task set (1,797 images, ``size`` x ``size`` RGB) to ``out`` if not already there."""
    from sklearn.datasets import load_digits

    out = Path(out)
    meta = {"generator": "icao_mtl.digits", "version": DIGITS_VERSION, "params": {"size": size},
            "tasks": list(DIGIT_TASKS), "groups": {g: list(m) for g, m in DIGIT_GROUPS.items()},
            "source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)"}
    if _current(out, meta):
        return out
    data = load_digits()
    grey = (data.images / 16.0 * 255).astype(np.float32)
    images = [cv2.cvtColor(cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8),
                           cv2.COLOR_GRAY2RGB) for g in grey]
    labels = (data.target[:, None] == np.arange(10)[None, :]).astype(np.int8)
    names = [f"{i:05d}.png" for i in range(len(images))]
    meta["n"] = len(images)
    return _write_layout(out, names, labels, DIGIT_TASKS, images, meta)


def build_lfw(out: str | os.PathLike, size: int = 64, variants: int = 20, seed: int = 0,
              fractions=(0.75, 0.15, 0.10)) -> Path:
    """Write the LFW-defects task set to ``out`` if not already there.

    Each of the 100 real faces is upsampled (bicubic) to ``size`` and rendered ``variants`` times; in
    each variant every image-level defect is drawn with the synthetic set's severity distribution.
    Severities are in pixels of a 64x64 face crop (the face fills the crop, as the central 112 px do
    in a 224 px portrait) and scale with ``size``.
    """
    from skimage.data import lfw_subset

    out = Path(out)
    meta = {"generator": "icao_mtl.lfw", "version": LFW_VERSION,
            "params": {"size": size, "variants": variants, "seed": seed, "fractions": list(fractions)},
            "tasks": list(IMAGE_LEVEL), "groups": {"image": list(IMAGE_LEVEL)},
            "source": "skimage.data.lfw_subset (Labeled Faces in the Wild, first 100 = faces)"}
    if _current(out, meta):
        return out
    faces = lfw_subset()[:100]
    rng = np.random.default_rng(seed)
    face_split = np.empty(len(faces), object)
    order = rng.permutation(len(faces))
    cut1, cut2 = int(round(fractions[0] * len(faces))), int(round((fractions[0] + fractions[1]) * len(faces)))
    face_split[order[:cut1]], face_split[order[cut1:cut2]], face_split[order[cut2:]] = "train", "val", "test"
    scale = size / 64.0
    names, labels, images, split = [], [], [], []
    for f_i, face in enumerate(faces):
        base = cv2.resize((face * 255).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        base = cv2.cvtColor(np.clip(base, 0, 255), cv2.COLOR_GRAY2RGB)
        for v in range(variants):
            img = base.copy()
            sev = {t: SPECS[t].sample(rng) for t in IMAGE_LEVEL}
            img = defects.exposure(img, float(rng.choice([-1.0, 1.0])) * sev["light"])
            img = defects.washed_out(img, sev["washed_out"])
            img, _ = defects.ink_marks(img, sev["ink_mark"], rng, scale)
            motion = float(rng.uniform(0, 180)) if rng.random() < 0.4 else None
            img = defects.blur(img, sev["blurred"], scale, motion)
            img = defects.pixelate(img, sev["pixelation"], scale)
            images.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
            labels.append([0 if sev[t] > SPECS[t].threshold else 1 for t in IMAGE_LEVEL])
            names.append(f"{f_i:03d}_{v:02d}.png")
            split.append(face_split[f_i])
    meta["n"] = len(images)
    return _write_layout(out, names, np.array(labels, np.int8), IMAGE_LEVEL, images, meta, split)


def build_lfw_framed(out: str | os.PathLike, source: str | os.PathLike, size: int = 224,
                     align: str = "landmarks", progress: bool = True) -> Path:
    """Write the LFW-defects set ``source`` framed as :func:`icao_mtl.check.frame_face` frames a photo.

    Every image is aligned (``align``: MTCNN landmarks by default; an image without a detected face is
    kept as it is, padded to a square, as ``check`` scores it), resized to ``size`` (bicubic) and written
    with the source's labels and split column. ``meta.json`` counts the faces found. About 0.1 s an
    image on a CPU core (the detector), once.
    """
    import pandas as pd

    from ..check import frame_face, load_photo

    out, source = Path(out), Path(source)
    src_meta = aio.read_json(source / "meta.json")
    meta = {"generator": "icao_mtl.lfw_framed", "version": LFW_FRAMED_VERSION,
            "params": {"size": size, "align": align, "source_version": src_meta.get("version"),
                       "source_params": src_meta.get("params")},
            "tasks": src_meta["tasks"], "groups": src_meta["groups"], "source": f"{source.name} framed by check"}
    if _current(out, meta):
        return out
    table = pd.read_csv(source / "labels.csv")
    tasks = list(src_meta["tasks"])
    images, found = [], 0
    for i, name in enumerate(table["image"]):
        square, framing = frame_face(load_photo(source / "images" / name), align)
        found += framing.faces > 0
        interp = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_CUBIC
        images.append(np.clip(cv2.resize(square, (size, size), interpolation=interp), 0, 255).astype(np.uint8))
        if progress and (i + 1) % 250 == 0:
            print(f"lfw_framed: {i + 1}/{len(table)} framed ({found} faces found)", flush=True)
    meta.update(n=len(images), faces_found=int(found))
    return _write_layout(out, list(table["image"]), table[tasks].to_numpy(np.int8), tasks, images, meta,
                         list(table["split"]))
