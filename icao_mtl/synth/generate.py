"""Writing a synthetic dataset to disk in the layout every reader of this package expects.

``DATASET/images/000000.png ...``, ``labels.csv`` (``image`` + the 23 requisite ids, values 1 / 0 / -1),
``severities.csv`` (the continuous severity behind each label, empty where not applicable),
``regions.csv`` (boxes of the face regions, fractions of the image side), ``pose.csv`` (the head's
roll, yaw and pitch in degrees), ``landmarks.csv`` (eye centres, the face's outline at their
height, nose tip, mouth centre, chin), ``meta.json`` and ``contact_sheet.png``. The dataset is assembled in a temporary directory and renamed into place at
the end, so an interrupted generation never leaves a half dataset where a complete one is expected.
Image ``i`` depends only on ``(seed, i, size)``: the output is byte-identical for any number of workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import io
import math
import multiprocessing
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .. import io as aio
from ..data.manifest import LANDMARK_COLUMNS, LANDMARK_POINTS
from ..errors import IcaoMtlError
from ..requisites import GROUPS, IDS, LABEL_CODES
from .portrait import render, sample_portrait
from .specs import SPECS

class DatasetExistsError(IcaoMtlError, FileExistsError):
    """The output directory holds something other than the requested dataset."""


GENERATOR_VERSION = "1.1"  # 1.1: regions.csv: lower half of the head (and the veil); shoulders, shadow, strands
REGION_NAMES = ("face", "eyes", "mouth", "lower_face", "head_top", "person", "shoulders", "head_shadow", "strands",
                "close", "ink")
#: Where each requisite's defect is drawn (for the Grad-CAM region check). "background" is the image
#: outside the face, head-top and shoulders boxes; "image" means the whole photo (no region to check).
REQUISITE_REGION = {
    "l_away": "eyes", "eyes_closed": "eyes", "red_eyes": "eyes", "hair_eyes": "strands", "dark_glasses": "eyes",
    "frames_heavy": "eyes", "frame_eyes": "eyes", "flash_lenses": "eyes", "mouth": "mouth", "veil": "lower_face",
    "rotation": "face", "reflection": "face", "sh_face": "face", "skin_tone": "face", "hat": "head_top",
    "background": "background", "sh_head": "head_shadow", "close": "close", "ink_mark": "ink",
    "light": "image", "washed_out": "image", "blurred": "image", "pixelation": "image",
}
FORMATS = ("png", "jpg")


def region_mask(boxes: dict, region: str, height: int, width: int) -> np.ndarray | None:
    """Boolean mask (height, width) of a region, from boxes ``{name: (x0, y0, x1, y1)}`` in fractions of
    the image side (a ``regions.csv`` row); None where the region was not drawn."""
    def box(name):
        b = boxes.get(name)
        if b is None or any(v is None or not np.isfinite(v) for v in b):
            return None
        x0, y0, x1, y1 = (float(v) for v in b)
        m = np.zeros((height, width), bool)
        r0, c0 = max(0, int(np.floor(y0 * height))), max(0, int(np.floor(x0 * width)))
        m[r0:max(int(np.ceil(y1 * height)), r0 + 1), c0:max(int(np.ceil(x1 * width)), c0 + 1)] = True
        return m

    if region == "background":
        parts = [box(n) for n in ("face", "head_top", "shoulders")]
        if any(p is None for p in parts):
            return None
        return ~(parts[0] | parts[1] | parts[2])
    return box(region)


def read_regions(path) -> dict:
    """``{image name: {region: (x0, y0, x1, y1) or None}}`` from a ``regions.csv``."""
    import pandas as pd

    df = pd.read_csv(path)
    out = {}
    for row in df.to_dict("records"):
        out[row["image"]] = {r: tuple(row.get(f"{r}_{c}") for c in ("x0", "y0", "x1", "y1")) for r in REGION_NAMES}
    return out


@dataclass(frozen=True)
class SynthConfig:
    """Parameters that fully determine a synthetic dataset."""

    n: int = 6000
    size: int = 224
    seed: int = 0
    format: str = "png"

    def validate(self) -> "SynthConfig":
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be a positive number of images. Received: n={self.n!r}")
        if not isinstance(self.size, int) or not 32 <= self.size <= 1024:
            raise ValueError(f"size must be an image side between 32 and 1024 pixels. Received: size={self.size!r}")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}. Received: format={self.format!r}")
        return self

    def default_name(self) -> str:
        return f"synthetic_n{self.n}_s{self.size}_seed{self.seed}" + ("" if self.format == "png" else "_jpg")


def image_name(index: int, fmt: str = "png") -> str:
    return f"{index:06d}.{fmt}"


def _render_chunk(args) -> list[tuple]:
    """Render and write images ``indices`` (runs in a worker process)."""
    images_dir, indices, cfg = args
    cv2.setNumThreads(1)
    rows = []
    for i in indices:
        p = sample_portrait(cfg.seed, i, cfg.size)
        encoded: dict = {}
        img, regions = render(p, encoded)
        if cfg.format == "jpg":
            data = encoded["jpg"]
        else:
            ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
            data = buf.tobytes()
        with open(os.path.join(images_dir, image_name(i, cfg.format)), "wb") as fh:
            fh.write(data)
        rows.append((i, p.labels, p.severity, regions))
    return rows


def _fmt(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(float(x), ".6g")


def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _meta_matches(meta: dict, cfg: SynthConfig) -> bool:
    return (meta.get("generator") == "icao_mtl.synth" and meta.get("version") == GENERATOR_VERSION
            and meta.get("n") == cfg.n and meta.get("size") == cfg.size and meta.get("seed") == cfg.seed
            and meta.get("format", "png") == cfg.format)


def is_complete(out: str | os.PathLike, cfg: SynthConfig) -> bool:
    """True if ``out`` already holds the dataset ``cfg`` describes."""
    out = Path(out)
    meta_path = out / "meta.json"
    if not (meta_path.is_file() and (out / "labels.csv").is_file()):
        return False
    try:
        return _meta_matches(aio.read_json(meta_path), cfg)
    except ValueError:
        return False


def generate(out: str | os.PathLike, cfg: SynthConfig = SynthConfig(), *, workers: int = 1, overwrite: bool = False,
             progress: bool = True, contact_sheet: bool = True) -> Path:
    """Render the synthetic dataset ``cfg`` into the directory ``out``.

    Args:
        out: dataset directory (created; its parent must be writable).
        cfg: what to render (number of images, side, seed, file format).
        workers: number of processes (1: in this process).
        overwrite: replace an existing, different dataset at ``out``.
        progress: show a progress bar.
        contact_sheet: also write ``contact_sheet.png``.

    Returns:
        The dataset directory. If it already holds exactly this dataset, nothing is rendered.

    Raises:
        FileExistsError: ``out`` holds something else and ``overwrite`` is False.
    """
    cfg.validate()
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer. Received: workers={workers!r}")
    out = Path(out)
    if is_complete(out, cfg):
        if not has_geometry(out):  # rendered before pose.csv / landmarks.csv existed: the images are the same
            write_geometry(out, cfg)
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DatasetExistsError(
            f"{out} exists and does not hold the dataset n={cfg.n}, size={cfg.size}, seed={cfg.seed}, "
            f"format={cfg.format}. Choose another --out, or pass --overwrite to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    try:
        rows = _render_all(tmp / "images", cfg, workers, progress)
        _write_tables(tmp, cfg, rows)
        write_geometry(tmp, cfg)
        if contact_sheet:
            write_contact_sheet(tmp, rows, cfg)
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, trash)
            shutil.rmtree(trash)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _pool_context():
    """fork (fast, and no re-import of the caller's script) unless TensorFlow is loaded in this
    process: its threads do not survive a fork, so then spawn."""
    if "tensorflow" in sys.modules or "fork" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("fork")


def _render_all(images_dir: Path, cfg: SynthConfig, workers: int, progress: bool) -> list[tuple]:
    from tqdm.auto import tqdm

    chunk = 50
    jobs = [(str(images_dir), range(s, min(s + chunk, cfg.n)), cfg) for s in range(0, cfg.n, chunk)]
    bar = tqdm(total=cfg.n, desc="rendering", unit="img", disable=not progress, leave=False)
    rows: list[tuple] = []
    try:
        if workers > 1:
            try:
                with cf.ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
                    for part in pool.map(_render_chunk, jobs):
                        rows.extend(part)
                        bar.update(len(part))
                jobs = []
            except cf.process.BrokenProcessPool:
                # Typically a script without `if __name__ == "__main__":` under spawn. Carry on here.
                print("warning: the rendering worker processes could not start (under the 'spawn' start method "
                      "a script must guard its entry point with `if __name__ == \"__main__\":`); rendering in this "
                      "process instead.", file=sys.stderr)
                done = {r[0] for r in rows}
                jobs = [j for j in jobs if j[1][0] not in done]
        for job in jobs:
            rows.extend(_render_chunk(job))
            bar.update(len(job[1]))
    finally:
        bar.close()
    rows.sort(key=lambda r: r[0])
    return rows


def _write_tables(root: Path, cfg: SynthConfig, rows: list[tuple]) -> None:
    names = [image_name(i, cfg.format) for i, *_ in rows]
    aio.write_text(root / "labels.csv", _csv_text(["image", *IDS], [[n, *(lab[r] for r in IDS)]
                                                                     for n, (_, lab, _, _) in zip(names, rows)]))
    aio.write_text(root / "severities.csv", _csv_text(["image", *IDS], [[n, *(_fmt(sev[r]) for r in IDS)]
                                                                         for n, (_, _, sev, _) in zip(names, rows)]))
    header = ["image"] + [f"{r}_{c}" for r in REGION_NAMES for c in ("x0", "y0", "x1", "y1")]
    reg_rows = []
    for n, (_, _, _, regions) in zip(names, rows):
        row = [n]
        for r in REGION_NAMES:
            box = regions.get(r)
            row.extend(_fmt(v / cfg.size) if box else "" for v in (box or (None,) * 4))
        reg_rows.append(row)
    aio.write_text(root / "regions.csv", _csv_text(header, reg_rows))
    counts = {r: {str(c): 0 for c in LABEL_CODES} for r in IDS}
    for _, lab, _, _ in rows:
        for r in IDS:
            counts[r][str(lab[r])] += 1
    meta = {
        "generator": "icao_mtl.synth", "version": GENERATOR_VERSION,
        "n": cfg.n, "size": cfg.size, "seed": cfg.seed, "format": cfg.format,
        "tasks": list(IDS), "groups": {g: list(m) for g, m in GROUPS.items()},
        "label_counts": counts,
        "prevalence_non_compliant": {r: counts[r]["0"] / max(1, counts[r]["0"] + counts[r]["1"]) for r in IDS},
        "thresholds": {r: s.threshold for r, s in SPECS.items()},
        "regions": list(REGION_NAMES),
    }
    aio.write_json(root / "meta.json", meta)


GEOMETRY_FILES = ("pose.csv", "landmarks.csv")


def portrait_landmarks(look: dict) -> np.ndarray:
    """The :data:`LANDMARK_POINTS` of a portrait as (7, 2) pixel coordinates ``(x, y)`` of its image
    (continuous: the top-left pixel spans [0, 1)): the eyes, the tip of the nose (between the nostrils,
    raised off the face as :func:`render` draws it) and the centre of the mouth on the curved face, so
    yaw and pitch move them; the outline where the flat head ellipse crosses the eyes' row, and the
    bottom of the chin, which roll turns and yaw and pitch do not."""
    from .portrait import EYE_U, EYE_V, MOUTH_V, NOSE_LIFT, NOSE_V, _Frame

    f = _Frame(look)
    edge = math.sqrt(1.0 - (EYE_V / f.e) ** 2)
    eyes = f.surface([(-EYE_U, EYE_V), (EYE_U, EYE_V)])
    cheeks = f.flat([(-edge, EYE_V), (edge, EYE_V)])
    nose = f.surface([(0.0, NOSE_V)], lift=NOSE_LIFT)
    mouth = f.surface([(0.0, MOUTH_V)])
    chin = f.flat([(0.0, f.e)])
    return np.concatenate([eyes, cheeks, nose, mouth, chin], 0)


def write_geometry(root: str | os.PathLike, cfg: SynthConfig) -> None:
    """Write ``root/pose.csv`` (``image,roll,yaw,pitch``: the head's pose in degrees; roll turns the head
    in the image plane, clockwise as the image is seen, yaw and pitch turn it left-right and up-down;
    ``rotation``'s severity is the largest absolute angle) and ``root/landmarks.csv``
    (``image,left_eye_x,left_eye_y,...``: the :data:`LANDMARK_POINTS` as fractions of the image side)
    from :func:`sample_portrait`: no rendering, about 0.5 ms an image."""
    pose_rows, mark_rows = [], []
    for i in range(cfg.n):
        look = sample_portrait(cfg.seed, i, cfg.size).look
        name = image_name(i, cfg.format)
        pose_rows.append([name, *(_fmt(look[k]) for k in ("roll", "yaw", "pitch"))])
        mark_rows.append([name, *(_fmt(v / cfg.size) for v in portrait_landmarks(look).ravel())])
    aio.write_text(Path(root) / "pose.csv", _csv_text(["image", "roll", "yaw", "pitch"], pose_rows))
    aio.write_text(Path(root) / "landmarks.csv", _csv_text(["image", *LANDMARK_COLUMNS], mark_rows))


def has_geometry(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds this version's pose.csv and landmarks.csv (every :data:`LANDMARK_COLUMNS`:
    a set written when there were fewer points is not)."""
    root = Path(root)
    if not all((root / name).is_file() for name in GEOMETRY_FILES):
        return False
    with open(root / "landmarks.csv", encoding="utf-8") as fh:
        header = [c.strip() for c in fh.readline().split(",")]
    return set(LANDMARK_COLUMNS) <= set(header)


def _thumb(path: Path, side: int) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)


def write_contact_sheet(root: Path, rows: list[tuple], cfg: SynthConfig, side: int = 96, per_row: int = 4) -> Path:
    """One row per requisite: the compliant example closest to the threshold, then ``per_row``
    non-compliant ones from just above the threshold to the most severe, each captioned with its
    severity. Written as ``contact_sheet.png``."""
    label_w = 150
    sheet = np.full((side * len(IDS), label_w + side * (per_row + 1), 3), 255, np.uint8)
    for r_i, rid in enumerate(IDS):
        y = r_i * side
        cv2.putText(sheet, rid, (4, y + side // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(sheet, f"> {SPECS[rid].threshold:g}", (4, y + side // 2 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (90, 90, 90), 1, cv2.LINE_AA)
        ok = sorted((row for row in rows if row[1][rid] == 1), key=lambda row: -row[2][rid])[:1]
        bad = sorted((row for row in rows if row[1][rid] == 0), key=lambda row: row[2][rid])
        if len(bad) > per_row:  # spread over the severity range: mild ... severe
            bad = [bad[round(j * (len(bad) - 1) / (per_row - 1))] for j in range(per_row)]
        for c_i, row in enumerate(ok + bad):
            x = label_w + c_i * side
            sheet[y:y + side, x:x + side] = _thumb(root / "images" / image_name(row[0], cfg.format), side)
            colour = (0, 140, 0) if row[1][rid] == 1 else (0, 0, 200)  # BGR
            cv2.rectangle(sheet, (x, y), (x + side - 1, y + side - 1), colour, 2)
            cv2.putText(sheet, f"{row[2][rid]:.3g}", (x + 4, y + side - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1,
                        cv2.LINE_AA)
    path = root / "contact_sheet.png"
    ok, buf = cv2.imencode(".png", sheet)
    aio.write_bytes(path, buf.tobytes())
    return path
