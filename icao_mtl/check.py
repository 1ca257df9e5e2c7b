"""``python -m icao_mtl.check RUN_DIR photo.jpg [more ...] [--json OUT] [--heatmaps DIR]
[--operating-point eer|fmr=0.01] [--backend keras|savedmodel|tflite [--export DIR]]
[--align landmarks|cascade|none]``

Checks photos against the ICAO requisites with a trained run: for each photo and requisite a verdict
(compliant, non-compliant, or not applicable where the run's model has no output for that requisite),
the score (probability of compliant) and the threshold used. Thresholds come from the run's
validation split: the EER point (default), or the threshold whose false match rate (non-compliant
photos accepted) is at most a target, ``--operating-point fmr=0.01``.

Photos of any size, colour or grey, with or without alpha (composited on white). Before scoring, a
photo is aligned to the framing the models were trained on (``--align landmarks``, the default): the
MTCNN face detector (the ``mtcnn`` package, weights inside the wheel) finds the face and its five
landmarks, and the photo is scaled and shifted so that the eyes fall where the synthetic portraits put
them (:func:`icao_mtl.synth.portrait.eye_framing`). It is **not rotated**: head roll is a requisite,
and levelling the eyes would hide it; the roll measured from the eyes is reported. Without a face the
photo is scored as it is (padded to a square) and the report says so. A model with the regions
approach's geometry branch (the default run's) also reports what it locates itself: seven face points
in the photo's pixels and the head's roll, yaw and pitch in degrees, the pose its ``rotation`` head
reads (:func:`located_geometry`). ``--align cascade`` uses
scikit-image's LBP frontal-face cascade (no landmarks: the face box sets the framing), ``--align
none`` takes the photo as framed. A file that is not an image, a truncated image, a directory or a
tiny image gets an error of its own; the other photos are still checked, and the exit code is 1 when
some photo failed (2 for a problem with the run or the options).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import io as aio
from .errors import ConfigError, IcaoMtlError, command
from .requisites import BY_ID, IDS

MIN_SIDE = 32
FACE_WIDTH_SHARE = 0.40  # face width / image width in the training framing
FACE_CENTRE_HEIGHT = 0.45  # face centre / image height
ALIGNMENTS = ("landmarks", "cascade", "none")
#: MTCNN faces below this confidence are ignored.
MIN_FACE_CONFIDENCE = 0.9


class PhotoError(IcaoMtlError):
    """One photo cannot be checked (the others still are)."""


def load_photo(path) -> np.ndarray:
    """A photo as uint8 RGB (H, W, 3); alpha is composited on white.

    Raises:
        PhotoError: missing, a directory, not an image, truncated, or smaller than 32 pixels a side.
    """
    from PIL import Image, ImageFile, UnidentifiedImageError

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    path = Path(path)
    if path.is_dir():
        raise PhotoError(f"{path} is a directory, not a photo. Fix: pass image files (e.g. {path}/*.jpg).")
    if not path.is_file():
        raise PhotoError(f"{path} not found. Fix: check the path.")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            rgb = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise PhotoError(f"{path} is not an image (unknown format). Fix: pass a JPEG, PNG, BMP or similar.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise PhotoError(f"{path} cannot be decoded ({exc}); it is probably truncated or corrupt. Fix: export the "
                         "photo again.") from None
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise PhotoError(f"{path} is {rgb.shape[1]}x{rgb.shape[0]} pixels; the check needs at least {MIN_SIDE} per "
                         "side. Fix: use the full-resolution photo.")
    return rgb


@dataclass
class Framing:
    """How the image the model saw was obtained from the photo (reported in the JSON).

    ``box`` is the face (x, y, width, height) in the photo's pixels; ``landmarks`` the five MTCNN points
    (``left_eye`` is the eye on the image's left); ``crop`` the square (x0, y0, side) of the photo that
    was resized to the model's input (it may extend past the photo: edges replicated);
    ``eye_roll_degrees`` the angle of the eye line (positive: the eye on the image's right is lower)."""

    faces: int  # faces found (-1: not looked for)
    cropped: bool
    padded: bool = False
    box: list | None = None
    note: str = ""
    method: str = "none"
    confidence: float | None = None
    landmarks: dict | None = None
    crop: list | None = None
    eye_roll_degrees: float | None = None


def _square_crop(rgb: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    """rgb[y0:y0 + size, x0:x0 + size], edges replicated where the square leaves the photo."""
    h, w = rgb.shape[:2]
    pad = max(0, -x0, -y0, x0 + size - w, y0 + size - h)
    padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else rgb
    return padded[y0 + pad:y0 + pad + size, x0 + pad:x0 + pad + size]


def box_crop(box) -> tuple[int, int, int]:
    """The square (x0, y0, side) in which the face ``box`` (x, y, width, height) has the training
    framing: face width 40% of the side, face centre at 45% of the height, centred horizontally."""
    x, y, fw, fh = box
    size = max(MIN_SIDE, int(round(fw / FACE_WIDTH_SHARE)))
    return int(round(x + fw / 2 - size / 2)), int(round(y + fh / 2 - FACE_CENTRE_HEIGHT * size)), size


def crop_to_framing(rgb: np.ndarray, box) -> np.ndarray:
    """The crop of :func:`box_crop` (edges replicated where it leaves the photo)."""
    return _square_crop(rgb, *box_crop(box))


def eye_crop(left_eye, right_eye) -> tuple[int, int, int]:
    """The square (x0, y0, side), in photo pixels, in which the eyes lie where the training portraits
    put them on average: their distance a share ``eye_framing()["distance"][1]`` of the side (about
    0.16) and their midpoint at ``(mid_x, mid_y)`` (0.50, 0.41). Scale and shift only."""
    from .synth.portrait import eye_framing

    fr = eye_framing()
    (xl, yl), (xr, yr) = left_eye, right_eye
    distance = math.hypot(xr - xl, yr - yl)  # roll keeps the distance: it is not levelled
    side = max(MIN_SIDE, int(round(distance / fr["distance"][1])))
    mx, my = (xl + xr) / 2, (yl + yr) / 2
    return int(round(mx - fr["mid_x"][1] * side)), int(round(my - fr["mid_y"][1] * side)), side


def already_framed(shape, left_eye, right_eye) -> bool:
    """Whether a square photo's eyes lie within the range of the training framings (then the photo is
    used as it is: cropping would only resample it)."""
    from .synth.portrait import eye_framing

    h, w = shape[:2]
    if h != w:
        return False
    fr = eye_framing()
    (xl, yl), (xr, yr) = left_eye, right_eye
    d = math.hypot(xr - xl, yr - yl) / w
    mx, my = (xl + xr) / 2 / w, (yl + yr) / 2 / w
    # margins for the landmarks' own error (2-3 px at 224 px on the synthetic portraits)
    return (0.9 * fr["distance"][0] <= d <= 1.1 * fr["distance"][2]
            and fr["mid_x"][0] - 0.02 <= mx <= fr["mid_x"][2] + 0.02
            and fr["mid_y"][0] - 0.02 <= my <= fr["mid_y"][2] + 0.02)


@functools.lru_cache(maxsize=1)
def landmark_detector():
    """The MTCNN detector (built once per process, about 1 s)."""
    try:
        from mtcnn import MTCNN
    except ImportError:
        raise ConfigError("Aligning photos needs the mtcnn package (a TensorFlow face detector whose weights ship "
                          "in the wheel). Fix: pip install mtcnn, or check with --align cascade or --align none."
                          ) from None
    return MTCNN()


def detect_faces(rgb: np.ndarray) -> list[dict]:
    """MTCNN faces of confidence >= MIN_FACE_CONFIDENCE, largest first: ``box`` [x, y, w, h],
    ``confidence`` and ``keypoints`` (left_eye, right_eye, nose, mouth_left, mouth_right as [x, y])."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # mtcnn may print while it traces
        found = landmark_detector().detect_faces(np.ascontiguousarray(rgb))
    faces = []
    for f in found or []:
        if float(f["confidence"]) < MIN_FACE_CONFIDENCE:
            continue
        faces.append({"box": [int(v) for v in f["box"]], "confidence": float(f["confidence"]),
                      "keypoints": {k: [float(p[0]), float(p[1])] for k, p in f["keypoints"].items()}})
    return sorted(faces, key=lambda f: -f["box"][2] * f["box"][3])


def pad_to_square(rgb: np.ndarray) -> np.ndarray:
    """Centre the photo on a square canvas (edges replicated), so resizing does not distort the face."""
    h, w = rgb.shape[:2]
    if h == w:
        return rgb
    d = abs(h - w)
    a, b = d // 2, d - d // 2
    spec = ((a, b), (0, 0), (0, 0)) if h < w else ((0, 0), (a, b), (0, 0))
    return np.pad(rgb, spec, mode="edge")


def _align_landmarks(rgb: np.ndarray, framing: Framing) -> np.ndarray:
    faces = detect_faces(rgb)
    framing.faces = len(faces)
    if not faces:
        framing.note = "no face found: the photo was scored as it is"
        return rgb
    face = faces[0]
    k = face["keypoints"]
    framing.box, framing.confidence, framing.landmarks = face["box"], face["confidence"], k
    (xl, yl), (xr, yr) = k["left_eye"], k["right_eye"]
    framing.eye_roll_degrees = math.degrees(math.atan2(yr - yl, xr - xl))
    many = f"{len(faces)} faces found, the largest checked; " if len(faces) > 1 else ""
    if already_framed(rgb.shape, k["left_eye"], k["right_eye"]):
        framing.note = many + "eyes already where the training photos have them"
        return rgb
    x0, y0, side = eye_crop(k["left_eye"], k["right_eye"])
    framing.crop, framing.cropped = [x0, y0, side], True
    framing.note = many + "aligned on the eyes (scale and shift, no rotation)"
    return _square_crop(rgb, x0, y0, side)


def _align_cascade(rgb: np.ndarray, framing: Framing) -> np.ndarray:
    import skimage.data
    import skimage.feature

    h, w = rgb.shape[:2]
    side = min(h, w)
    detector = skimage.feature.Cascade(skimage.data.lbp_frontal_face_cascade_filename())
    faces = detector.detect_multi_scale(rgb.mean(-1) / 255.0, scale_factor=1.2, step_ratio=1,
                                        min_size=(side // 5, side // 5), max_size=(side, side))
    framing.faces = len(faces)
    if not faces:
        framing.note = "no face found: the photo was scored as it is"
        return rgb
    face = max(faces, key=lambda f: f["width"])
    framing.box = [int(face["c"]), int(face["r"]), int(face["width"]), int(face["height"])]
    many = f"{len(faces)} faces found, the largest checked; " if len(faces) > 1 else ""
    share = face["width"] / w
    if 0.3 <= share <= 0.55 and abs(face["c"] + face["width"] / 2 - w / 2) < 0.1 * w and h == w:
        framing.note = many + "already framed like the training photos"
        return rgb
    framing.cropped, framing.crop = True, list(box_crop(framing.box))
    framing.note = many + "cropped to the training framing"
    return _square_crop(rgb, *framing.crop)


def _check_alignment(align: str) -> None:
    if align not in ALIGNMENTS:
        raise ConfigError(f"Unknown alignment {align!r}. Fix: --align one of {', '.join(ALIGNMENTS)}.")


def frame_face(rgb: np.ndarray, align: str = "landmarks") -> tuple[np.ndarray, Framing]:
    """The square image the model sees, and how it was obtained (see the module docstring).

    Args:
        rgb: the photo, uint8 (H, W, 3).
        align: "landmarks" (MTCNN eyes, the default), "cascade" (scikit-image's LBP cascade, a face
            box only; a classical detector that misses many faces) or "none" (as framed).
    """
    _check_alignment(align)
    framing = Framing(faces=-1, cropped=False, method=align)
    if align == "landmarks":
        rgb = _align_landmarks(rgb, framing)
    elif align == "cascade":
        rgb = _align_cascade(rgb, framing)
    if rgb.shape[0] != rgb.shape[1]:
        rgb = pad_to_square(rgb)
        framing.padded = True
        framing.note = "; ".join(n for n in (framing.note, "padded to a square") if n)
    return rgb, framing


def thresholds(run_dir: Path, tasks, operating_point: str) -> dict:
    """Per task, the decision threshold on P(compliant) at the operating point, from validation."""
    from .metrics import threshold_at_fmr
    from .runs import read_scores

    if operating_point == "eer":
        metrics = aio.read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else None
        if metrics is None:
            raise ConfigError(f"{run_dir} has no metrics.json to take the EER thresholds from. Fix: evaluate the run "
                              "(python -m icao_mtl.evaluate RUN_DIR).")
        per = metrics.get("val", metrics.get("test", {})).get("per_requisite", {})
        return {t: per.get(t, {}).get("threshold") for t in tasks}
    if not operating_point.startswith("fmr="):
        raise ConfigError(f"Unknown operating point {operating_point!r}. Fix: use eer or fmr=<rate>, e.g. fmr=0.01.")
    try:
        target = float(operating_point[4:])
    except ValueError:
        raise ConfigError(f"Bad operating point {operating_point!r}. Fix: e.g. fmr=0.01.") from None
    _, scores, labels = read_scores(run_dir / "scores_val.csv")
    if not labels:
        raise ConfigError("scores_val.csv has no labels (an older run). Fix: re-evaluate the run "
                          "(python -m icao_mtl.evaluate RUN_DIR) to choose thresholds at an FMR.")
    out = {}
    for t in tasks:
        try:
            out[t] = threshold_at_fmr(labels[t], scores[t], target) if t in scores else None
        except ValueError:
            out[t] = None
    return out


def scored_tta(run_dir: Path) -> str:
    """How the run's thresholds were found: "flip" (each image's score averaged with its mirror
    image's) or "none", as ``metrics.json`` records it (runs evaluated before it did: "none")."""
    path = Path(run_dir) / "metrics.json"
    return (aio.read_json(path).get("tta") or "none") if path.is_file() else "none"


class MirrorAveraged:
    """A predictor whose score for an image is the mean of its own and its mirror image's: photos
    are scored as the run's validation images were when their thresholds were found
    (:func:`scored_tta`)."""

    def __init__(self, predictor):
        self.predictor = predictor

    @property
    def tasks(self):
        return self.predictor.tasks

    @property
    def input_size(self) -> int:
        return self.predictor.input_size

    def predict(self, images, **kwargs):
        images = np.asarray(images, np.float32)
        own = self.predictor.predict(images, **kwargs)
        mirrored = self.predictor.predict(np.ascontiguousarray(images[:, :, ::-1]), **kwargs)
        return {t: (own[t] + mirrored[t]) / 2 for t in own}


def run_predictor(predictor, run_dir: Path):
    """``predictor`` scoring as the run's thresholds expect (:class:`MirrorAveraged` where it says flip)."""
    return MirrorAveraged(predictor) if scored_tta(run_dir) == "flip" else predictor


class KerasPredictor:
    def __init__(self, models: dict):
        self.models = models

    @property
    def tasks(self):
        return [t for m in self.models.values() for t in m.output_names]

    @property
    def input_size(self) -> int:
        return int(next(iter(self.models.values())).inputs[0].shape[1])

    def predict(self, images, batch_size: int = 32):
        # A direct call, not Model.predict: for the few photos of a check, predict's per-call set-up
        # (a tf.data pipeline and a traced function) costs more than the forward pass.
        images = np.asarray(images, np.float32)
        out = {}
        for m in self.models.values():
            parts = [m(images[i:i + batch_size], training=False) for i in range(0, len(images), batch_size)]
            for t in parts[0]:
                out[t] = np.concatenate([np.asarray(p[t])[:, 1] for p in parts]).astype(np.float64)
        return out


def score_degraded_faces(run_dir, *, limit: int | None = None, data_root=None) -> dict:
    """The run's scores on real faces with known defects: the LFW task set (``--data lfw``), every
    image aligned and resized as :func:`frame_face` and ``check`` do for a photo.

    A run trained with ``--extra-train`` (e.g. ``lfw_framed``, the LFW train split's faces) is scored on
    the faces of the LFW val and test splits only, which it never saw; any other run on all 100 faces.

    Args:
        run_dir: a run directory (``models/``, ``config.json``).
        limit: score only this many images (a seeded random choice), or all.
        data_root: where named sets live (default ``$ICAO_MTL_DATA`` or ``./data``).

    Returns:
        ``{"dataset": LabeledDataset, "rows": indices scored, "photos": the raw uint8 images,
        "scores": {task: P(compliant) (len(rows),)}, "faces_found": int, "align_s_per_image": float,
        "unseen_only": bool}``.
    """
    import time

    import cv2

    from . import data as idata
    from .config import TrainConfig
    from .runs import load_models

    run_dir = Path(run_dir)
    ds = idata.read_dataset(idata.resolve("lfw", data_root), check_images="none")
    unseen_only = bool(TrainConfig.from_json(run_dir / "config.json").extra_train)
    rows = np.flatnonzero(ds.split != "train") if unseen_only else np.arange(len(ds))
    if limit is not None:
        rows = np.random.default_rng(0).permutation(rows)[:limit]
    predictor = run_predictor(KerasPredictor(load_models(run_dir)), run_dir)
    size = predictor.input_size
    photos, framed, found = [], [], 0
    start = time.perf_counter()
    for i in rows:
        rgb = load_photo(ds.paths[i])
        photos.append(rgb)
        square, framing = frame_face(rgb)
        found += framing.faces > 0
        interp = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_CUBIC
        framed.append(cv2.resize(square, (size, size), interpolation=interp).astype(np.float32))
    align_s = (time.perf_counter() - start) / max(len(rows), 1)
    return {"dataset": ds, "rows": rows, "photos": photos, "scores": predictor.predict(np.stack(framed)),
            "faces_found": int(found), "align_s_per_image": align_s, "unseen_only": unseen_only}


@dataclass
class PhotoReport:
    photo: str
    ok: bool
    error: str | None = None
    framing: dict = field(default_factory=dict)
    requisites: dict = field(default_factory=dict)
    compliant: bool | None = None
    heatmaps: dict = field(default_factory=dict)
    geometry: dict | None = None  # see located_geometry
    tta: str | None = None  # "flip": each score is the mean of the photo's and its mirror image's (scored_tta)


def framed_to_photo(framing: Framing, photo_shape, fx: float, fy: float) -> tuple[float, float]:
    """Where a point of the model's input image, at fractions ``(fx, fy)`` of its side from the top-left
    corner, lies in the photo: ``(x, y)`` in the photo's pixels from its top-left corner (continuous
    coordinates; outside the photo where the square went past its edges)."""
    if framing.crop:
        x0, y0, side = framing.crop
        return x0 + fx * side, y0 + fy * side
    h, w = photo_shape[:2]
    side = max(h, w)
    shift = (side - min(h, w)) // 2  # pad_to_square centres the shorter side
    return fx * side - (shift if w < h else 0), fy * side - (shift if h < w else 0)


def located_geometry(reader, image: np.ndarray, framing: Framing, photo_shape) -> dict:
    """What the model's geometry branch finds in ``image`` (the model's input, (S, S, 3)): its points
    in the photo's pixels and as fractions of the model's input, and, where ``reader`` gives it (a run
    trained with its pose term), the head pose in degrees, the pose the ``rotation`` head reads (signs
    as ``pose.csv``: roll clockwise as the image is seen, yaw left-right, pitch up-down; rotation is
    non-compliant above 8 degrees on any axis)."""
    from .data.manifest import LANDMARK_POINTS

    out = reader(image[None], training=False)
    coords = np.asarray(out["points"], np.float64)[0]
    count = len(coords) // 2
    names = LANDMARK_POINTS if count == len(LANDMARK_POINTS) else tuple(f"point_{i}" for i in range(count))
    points, fractions = {}, {}
    for i, name in enumerate(names):
        fx, fy = float(coords[i]), float(coords[count + i])
        fractions[name] = [round(fx, 4), round(fy, 4)]
        x, y = framed_to_photo(framing, photo_shape, fx, fy)
        points[name] = [round(x, 1), round(y, 1)]
    found = {"points": points, "points_in_model_input": fractions,
             "source": "the model's geometry branch (what its rotation head reads)"}
    if "pose" in out:  # a run trained with --pose-weight 0 has no angles to report
        pose = np.asarray(out["pose"], np.float64)[0] * 10.0
        found["pose_degrees"] = {axis: round(float(v), 2) for axis, v in zip(("roll", "yaw", "pitch"), pose)}
    return found


def check_photos(run_dir, photos, *, operating_point: str = "eer", backend: str = "keras", align: str = "landmarks",
                 heatmaps_dir=None, export_dir=None) -> list[PhotoReport]:
    """Check photos with a run; one report per photo (failed photos carry their error).

    ``backend`` "savedmodel" or "tflite" runs the export in ``export_dir`` (default
    ``RUN_DIR/export/<backend>``); the thresholds still come from the run directory."""
    import cv2

    run_dir = Path(run_dir)
    _check_alignment(align)
    if align == "landmarks":
        landmark_detector()  # a missing mtcnn is said before any photo is read
    if not run_dir.is_dir():
        raise ConfigError(f"Run directory {run_dir} not found. Fix: pass the directory of a training run.")
    models = geometry = None
    if backend == "keras":
        from .architectures import geometry_reader
        from .runs import load_models

        models = load_models(run_dir)
        predictor = KerasPredictor(models)
        trained = aio.read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
        pose = bool(trained.get("pose_weight"))  # otherwise the pose layer is a feature, not angles
        geometry = next((r for r in (geometry_reader(m, pose=pose) for m in models.values()) if r is not None),
                        None)
    elif backend in ("savedmodel", "tflite"):
        from .export import ExportedPredictor

        predictor = ExportedPredictor(export_dir or run_dir / "export" / backend)
        if predictor.format != backend:
            raise ConfigError(f"{predictor.dir} holds a {predictor.format} export, not {backend}. Fix: pass "
                              f"--backend {predictor.format}.")
    else:
        raise ConfigError(f"Unknown backend {backend!r}. Fix: use keras, savedmodel or tflite.")
    predictor = run_predictor(predictor, run_dir)
    tasks = predictor.tasks
    thr = thresholds(run_dir, tasks, operating_point)
    size = predictor.input_size
    reports = []
    for photo in photos:
        try:
            rgb = load_photo(photo)
            framed, framing = frame_face(rgb, align)
            img = cv2.resize(framed, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
            scores = predictor.predict(img[None])
        except PhotoError as exc:
            reports.append(PhotoReport(str(photo), False, str(exc)))
            continue
        req = {}
        for t in IDS if set(tasks) <= set(IDS) else tasks:
            if t not in scores or thr.get(t) is None or not math.isfinite(thr[t]):
                req[t] = {"verdict": "not applicable", "score": float(scores[t][0]) if t in scores else None,
                          "threshold": None}
                continue
            s = float(scores[t][0])
            req[t] = {"verdict": "compliant" if s >= thr[t] else "non-compliant", "score": s, "threshold": float(thr[t])}
        assessed = [v["verdict"] for v in req.values() if v["verdict"] != "not applicable"]
        report = PhotoReport(str(photo), True, framing=framing.__dict__, requisites=req,
                             compliant=all(v == "compliant" for v in assessed) if assessed else None,
                             tta="flip" if isinstance(predictor, MirrorAveraged) else "none")
        if geometry is not None:
            report.geometry = located_geometry(geometry, img, framing, rgb.shape)
        if heatmaps_dir and models is not None:
            from . import gradcam

            failing = [t for t, v in req.items() if v["verdict"] == "non-compliant"]
            for t in failing:
                model = models[t] if t in models else models["model"]
                cam = gradcam.compute(model, img[None], t, target="non_compliant")[0]
                path = Path(heatmaps_dir) / f"{Path(photo).stem}_{t}.png"
                ok, buf = cv2.imencode(".png", cv2.cvtColor(gradcam.overlay(img.astype(np.uint8), cam),
                                                            cv2.COLOR_RGB2BGR))
                aio.write_bytes(path, buf.tobytes())
                report.heatmaps[t] = str(path)
        reports.append(report)
    return reports


def format_report(r: PhotoReport) -> str:
    if not r.ok:
        return f"{r.photo}: ERROR {r.error}\n"
    lines = [f"{r.photo}: " + ("COMPLIANT" if r.compliant else "NOT COMPLIANT" if r.compliant is False else
                               "no requisite assessed") + (f"  ({r.framing.get('note')})" if r.framing.get("note") else "")]
    lines.append(f"  {'requisite':<14} {'verdict':<15} {'score':>7} {'threshold':>9}")
    for t, v in r.requisites.items():
        name = BY_ID[t].name if t in BY_ID else t
        score = "" if v["score"] is None else f"{v['score']:.3f}"
        thr = "" if v["threshold"] is None else f"{v['threshold']:.3f}"
        flag = " <" if v["verdict"] == "non-compliant" else ""
        lines.append(f"  {name:<14} {v['verdict']:<15} {score:>7} {thr:>9}{flag}")
    if r.geometry and "pose_degrees" in r.geometry:
        pose = r.geometry["pose_degrees"]
        lines.append("  head pose (the model's geometry branch): "
                     + ", ".join(f"{axis} {pose[axis]:+.1f} deg" for axis in ("roll", "yaw", "pitch")))
    return "\n".join(lines) + "\n"


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m icao_mtl.check", description=__doc__.split("\n\n")[1])
    p.add_argument("run_dir")
    p.add_argument("photos", nargs="+")
    p.add_argument("--json", default=None, help="write the reports as JSON to this file")
    p.add_argument("--heatmaps", default=None, help="write a Grad-CAM overlay per failing requisite here (keras)")
    p.add_argument("--operating-point", default="eer", help="eer (default) or fmr=<rate>, e.g. fmr=0.01")
    p.add_argument("--backend", default="keras", choices=("keras", "savedmodel", "tflite"))
    p.add_argument("--export", default=None, help="export directory for --backend savedmodel/tflite "
                                                  "(default RUN_DIR/export/<backend>)")
    p.add_argument("--align", default="landmarks", choices=ALIGNMENTS,
                   help="landmarks: MTCNN eyes to the training framing (default); cascade: scikit-image's face "
                        "cascade; none: the photo as framed")
    p.add_argument("--crop-face", action="store_const", const="cascade", dest="align",
                   help="the former option: the same as --align cascade")
    args = p.parse_args(argv)
    reports = check_photos(args.run_dir, args.photos, operating_point=args.operating_point, backend=args.backend,
                           align=args.align, heatmaps_dir=args.heatmaps, export_dir=args.export)
    for r in reports:
        print(format_report(r))
    if args.json:
        aio.write_json(args.json, {"run": str(args.run_dir), "operating_point": args.operating_point,
                                   "backend": args.backend, "photos": [r.__dict__ for r in reports]})
    failed = [r for r in reports if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(reports)} photos could not be checked.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
