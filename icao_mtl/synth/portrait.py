"""Sampling and drawing of one synthetic passport portrait.

A portrait is described by a :class:`Portrait`: the severity of each of the 23 requisites (see
:mod:`icao_mtl.synth.specs`) plus the look of the person (face shape, skin, hair, eyes, clothes,
background, glasses, lighting, noise). :func:`sample_portrait` draws it from ``(seed, index)`` alone,
so any image of a dataset can be re-created without the others; :func:`render` draws it with OpenCV
and NumPy and returns the image with the boxes of the regions where each defect lives (used by the
Grad-CAM region analysis).

Geometry: the head is an ellipse of half-width ``a`` and half-height ``a * e``. Face coordinates
``(u, v)`` are in units of ``a`` with ``v`` pointing down. Inner features (eyes, nose, mouth, glasses)
lie on a half-ellipsoid, so yaw and pitch move them across the face and foreshorten them as a real
head does; roll rotates the whole head in the image plane.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..requisites import COMPLIANT, GLASSES_ONLY, IDS, NON_COMPLIANT, NOT_APPLICABLE
from . import defects
from .specs import EYES_HIDDEN_TINT, GLASSES_PROB, PUPILS_HIDDEN_CLOSURE, SPECS

REFERENCE_SIZE = 224

# Face layout in units of the face half-width a (v down, origin at the face centre).
EYE_U, EYE_V, EYE_HW, EYE_HH = 0.40, -0.22, 0.18, 0.085
IRIS_R, PUPIL_R = 0.085, 0.036
BROW_V = -0.45
MOUTH_V, MOUTH_HW = 0.62, 0.24
NOSE_V, NOSE_LIFT = 0.32, 0.1  # the nostrils' row, and how far the nose stands off the head ellipsoid
NOSE_TIP_V = 0.30

# Where the face lies, in pixels of a REFERENCE_SIZE portrait: half-width a ~ U(FACE_HALF_WIDTH), centre
# FACE_CENTRE plus uniform jitters.
FACE_HALF_WIDTH = (40.0, 50.0)
FACE_CENTRE = (112.0, 100.0)
FACE_JITTER_X, FACE_JITTER_Y = (-8.0, 8.0), (-6.0, 8.0)


def eye_framing() -> dict:
    """Where the portraits put the eyes (pose zero), as shares of the image side: the distance between
    the eye centres and their midpoint, each as (low, mean, high) over the sampled framings. A real
    photo aligned so that its eyes fall at the means is framed like the training images."""
    lo, hi = FACE_HALF_WIDTH
    distance = tuple(2 * EYE_U * a / REFERENCE_SIZE for a in (lo, (lo + hi) / 2, hi))
    xs = [FACE_CENTRE[0] + j for j in FACE_JITTER_X]
    mid_x = (xs[0] / REFERENCE_SIZE, (xs[0] + xs[1]) / 2 / REFERENCE_SIZE, xs[1] / REFERENCE_SIZE)
    # the eye line lies EYE_V * a from the face centre (EYE_V < 0: above it)
    ys = [FACE_CENTRE[1] + j + EYE_V * a for j in FACE_JITTER_Y for a in FACE_HALF_WIDTH]
    mean_y = FACE_CENTRE[1] + sum(FACE_JITTER_Y) / 2 + EYE_V * sum(FACE_HALF_WIDTH) / 2
    mid_y = (min(ys) / REFERENCE_SIZE, mean_y / REFERENCE_SIZE, max(ys) / REFERENCE_SIZE)
    return {"distance": distance, "mid_x": mid_x, "mid_y": mid_y}


SKIN_LOCUS = np.array([(255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 90), (160, 105, 70),
                       (120, 75, 50), (85, 55, 38)], np.float32)
HAIR_COLOURS = ((25, 20, 18), (60, 40, 25), (100, 70, 45), (200, 170, 110), (140, 60, 30), (150, 150, 150),
                (215, 212, 205))
EYE_COLOURS = ((90, 55, 30), (45, 30, 20), (70, 110, 160), (80, 120, 70), (110, 120, 125), (120, 100, 50))
PLAIN_BACKGROUNDS = ((226, 226, 226), (242, 242, 238), (190, 214, 236), (236, 226, 204), (200, 210, 222),
                     (182, 182, 182), (214, 226, 214), (232, 218, 224))
FRAME_COLOURS = ((20, 20, 20), (70, 45, 25), (190, 160, 80), (175, 175, 180), (140, 30, 40))
TINT_COLOURS = ((25, 25, 25), (60, 40, 20), (30, 50, 35), (20, 30, 60))
CLOTH_COLOURS = ((25, 25, 30), (240, 240, 240), (40, 60, 120), (120, 30, 40), (60, 90, 60), (130, 130, 130),
                 (200, 170, 120), (90, 60, 110))
HAIR_STYLES = ("short", "long", "bald", "bun", "fringe")
BACKGROUND_KINDS = ("gradient", "texture", "clutter", "photo")


@dataclass
class Portrait:
    """Everything needed to draw one image, all JSON-able.

    Attributes:
        index: image index in its dataset.
        size: image side in pixels.
        severity: requisite id -> severity (NaN where the requisite does not apply).
        labels: requisite id -> 1 / 0 / -1.
        look: appearance parameters (face geometry, colours, styles, noise).
    """

    index: int
    size: int
    severity: dict[str, float]
    labels: dict[str, int]
    look: dict = field(default_factory=dict)


def portrait_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of a dataset generated with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _skin_colour(rng) -> list[float]:
    t = rng.uniform(0, len(SKIN_LOCUS) - 1)
    i = min(int(t), len(SKIN_LOCUS) - 2)
    c = SKIN_LOCUS[i] * (1 - (t - i)) + SKIN_LOCUS[i + 1] * (t - i)
    return list(np.clip(c + rng.uniform(-6, 6, 3), 0, 255).astype(float))


def _shift_hue(rgb, degrees: float) -> tuple[float, float, float]:
    """Rotate the hue of one RGB colour by ``degrees`` and saturate it in proportion."""
    px = np.uint8([[np.clip(rgb, 0, 255)]])
    hsv = cv2.cvtColor(px, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + degrees * 256.0 / 360.0) % 256.0
    hsv[..., 1] = np.clip(hsv[..., 1] * (1.0 + min(abs(degrees), 90.0) / 90.0) + abs(degrees) * 0.4, 0, 255)
    return tuple(float(x) for x in cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB_FULL)[0, 0])


def mouth_half_height(opening: float) -> float:
    """Half-height of the outer lips (units of a) for a mouth opening severity."""
    return 0.055 + opening * MOUTH_HW


def veil_top(coverage: float, e: float) -> float:
    """v coordinate of the upper edge of a veil of the given coverage (chin at v = e)."""
    return e - coverage * (e - (NOSE_TIP_V - 0.04))


def sample_portrait(seed: int, index: int, size: int = REFERENCE_SIZE, overrides: dict | None = None) -> Portrait:
    """Draw the portrait of image ``index`` of the dataset generated with ``seed``.

    Args:
        seed: dataset seed.
        index: image index.
        size: image side in pixels (the same person is drawn at every size).
        overrides: optional ``{requisite_id: severity}`` and ``{"look.<key>": value}`` entries that
            replace the sampled values (used by tests and the contact sheet); severities of other
            requisites are still sampled from the same stream.

    Returns:
        A :class:`Portrait` whose labels follow from the severities and thresholds.
    """
    rng = portrait_rng(seed, index)
    overrides = dict(overrides or {})
    look: dict = {}
    look["glasses"] = bool(rng.random() < GLASSES_PROB)
    if "look.glasses" in overrides:
        look["glasses"] = bool(overrides.pop("look.glasses"))
    sev: dict[str, float] = {}
    for rid, spec in SPECS.items():
        if rid == "rotation":
            continue
        s = spec.sample(rng)  # always drawn, so the stream does not depend on glasses
        if spec.applies == "glasses" and not look["glasses"]:
            s = math.nan
        elif spec.applies == "glasses_else_compliant" and not look["glasses"]:
            s = 0.0
        sev[rid] = s
    # Rotation: every axis varies a little; an active defect turns one axis further.
    axes = np.clip(rng.normal(0, SPECS["rotation"].baseline[1], 3), -SPECS["rotation"].baseline[2],
                   SPECS["rotation"].baseline[2])
    if rng.random() < SPECS["rotation"].active_prob:
        axis = int(rng.choice(3, p=[0.4, 0.4, 0.2]))
        axes[axis] = rng.uniform(*SPECS["rotation"].active_range) * rng.choice([-1.0, 1.0])
    look["roll"], look["yaw"], look["pitch"] = (float(x) for x in axes)
    sev["rotation"] = float(np.max(np.abs(axes)))

    # The look of the person and of the photo.
    k = size / REFERENCE_SIZE
    look["a"] = float(rng.uniform(*FACE_HALF_WIDTH) * k)
    look["e"] = float(rng.uniform(1.22, 1.40))
    look["cx"] = float((FACE_CENTRE[0] + rng.uniform(*FACE_JITTER_X)) * k)
    look["cy"] = float((FACE_CENTRE[1] + rng.uniform(*FACE_JITTER_Y)) * k)
    look["skin"] = _skin_colour(rng)
    look["skin_hue_sign"] = float(rng.choice([-1.0, 1.0]))
    look["hair_colour"] = list(_pick(rng, HAIR_COLOURS))
    look["hair_style"] = _pick(rng, HAIR_STYLES)
    look["hairline"] = float(-0.62 + rng.uniform(-0.08, 0.06))
    look["eye_colour"] = list(_pick(rng, EYE_COLOURS))
    look["cloth_colour"] = list(_pick(rng, CLOTH_COLOURS))
    look["collar"] = bool(rng.random() < 0.5)
    look["background"] = list(np.clip(np.array(_pick(rng, PLAIN_BACKGROUNDS)) + rng.uniform(-8, 8, 3), 0, 255))
    look["background_kind"] = _pick(rng, BACKGROUND_KINDS) if sev["background"] > 0.12 else "gradient"
    look["background_seed"] = int(rng.integers(2**31))
    look["light_angle"] = float(rng.uniform(0, 2 * np.pi))
    look["light_gradient"] = float(rng.uniform(0, 0.12))
    look["noise"] = float(rng.uniform(0.5, 3.0))
    look["jpeg"] = int(rng.integers(70, 96))
    look["wink"] = bool(rng.random() < 0.3)
    look["gaze_angle"] = float(rng.choice([0.0, np.pi]) + rng.normal(0, 0.5))
    look["exposure_sign"] = float(rng.choice([-1.0, 1.0]))
    look["blur_motion_angle"] = float(rng.uniform(0, 180)) if rng.random() < 0.4 else None
    look["frame_colour"] = list(_pick(rng, FRAME_COLOURS))
    look["tint_colour"] = list(_pick(rng, TINT_COLOURS))
    look["lens_shape"] = "ellipse" if rng.random() < 0.5 else "rect"
    look["hat_style"] = _pick(rng, ("beanie", "cap", "brimmed"))
    look["hat_colour"] = list(_pick(rng, CLOTH_COLOURS))
    look["veil_colour"] = list(_pick(rng, CLOTH_COLOURS))
    look["close_kind"] = _pick(rng, ("face", "teddy", "hand"))
    look["close_side"] = float(rng.choice([-1.0, 1.0]))
    look["close_dv"] = float(rng.uniform(-0.3, 0.9))
    look["shadow_angle"] = float(rng.uniform(0, 2 * np.pi))
    look["head_shadow_offset"] = [float(rng.choice([-1, 1]) * rng.uniform(0.25, 0.6)), float(rng.uniform(-0.1, 0.25))]
    look["ink_style"] = "crease" if rng.random() < 0.3 else "pen"
    look["draw_seed"] = int(rng.integers(2**31))  # for the details drawn at render time
    for key in list(overrides):
        if key.startswith("look."):
            look[key[5:]] = overrides.pop(key)
    for rid, value in overrides.items():
        if rid not in SPECS:
            raise ValueError(f"Unknown override {rid!r}: use a requisite id or 'look.<key>'.")
        if rid == "rotation":
            look["roll"], look["yaw"], look["pitch"] = float(value), 0.0, 0.0
        sev[rid] = float(value)
    sev = {rid: sev[rid] for rid in IDS}
    return Portrait(index=index, size=size, severity=sev, labels=labels_from(sev, look), look=look)


def labels_from(severity: dict[str, float], look: dict) -> dict[str, int]:
    """Labels of a portrait: non-compliant above the threshold, -1 where a requisite cannot be
    assessed (no glasses; eyes hidden by dark lenses; pupils hidden by shut lids; mouth under a veil).
    """
    labels = {}
    for rid, s in severity.items():
        if math.isnan(s):
            labels[rid] = NOT_APPLICABLE
        else:
            labels[rid] = NON_COMPLIANT if s > SPECS[rid].threshold else COMPLIANT
    if not look.get("glasses", False):
        for rid in GLASSES_ONLY:
            labels[rid] = NOT_APPLICABLE
    elif severity["dark_glasses"] >= EYES_HIDDEN_TINT:
        for rid in ("eyes_closed", "l_away", "red_eyes"):
            labels[rid] = NOT_APPLICABLE
    if severity["eyes_closed"] >= PUPILS_HIDDEN_CLOSURE:
        for rid in ("l_away", "red_eyes"):
            labels[rid] = NOT_APPLICABLE
    e = look.get("e", 1.3)
    if veil_top(severity["veil"], e) < MOUTH_V - mouth_half_height(severity["mouth"]) - 0.02:
        labels["mouth"] = NOT_APPLICABLE
    return labels


# --------------------------------------------------------------------------------------------------
# drawing helpers

def _fix(pts) -> np.ndarray:
    return np.round(np.asarray(pts, np.float64) * 16).astype(np.int32)


def _fill(img, pts, colour, alpha: float = 1.0):
    pts = np.asarray(pts, np.float64)
    if alpha >= 0.999:
        cv2.fillPoly(img, [_fix(pts)], colour, cv2.LINE_AA, shift=4)
        return
    if alpha <= 0.001:
        return
    h, w = img.shape[:2]
    x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int) - 2, 0)
    x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + 3, [w, h])
    if x1 <= x0 or y1 <= y0:
        return
    crop = img[y0:y1, x0:x1]
    layer = crop.copy()
    cv2.fillPoly(layer, [_fix(pts - [x0, y0])], colour, cv2.LINE_AA, shift=4)
    cv2.addWeighted(layer, alpha, crop, 1 - alpha, 0, dst=crop)


def _stroke(img, pts, colour, thickness: float, closed: bool = False):
    cv2.polylines(img, [_fix(pts)], closed, colour, max(1, int(round(thickness))), cv2.LINE_AA, shift=4)


@functools.lru_cache(maxsize=64)
def _unit_arc(n: int, t0: float, t1: float) -> np.ndarray:
    t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * np.pi - 1e-9)
    arc = np.stack([np.cos(t), np.sin(t)], 1)
    arc.flags.writeable = False
    return arc


def _ellipse(cu, cv, ru, rv, n: int = 36, t0: float = 0.0, t1: float = 2 * np.pi) -> np.ndarray:
    """Points of an ellipse (or of the arc from angle t0 to t1), shape (n, 2)."""
    return _unit_arc(n, float(t0), float(t1)) * (ru, rv) + (cu, cv)


class _Frame:
    """Maps face coordinates to image pixels (pose applied)."""

    def __init__(self, look: dict):
        self.cx, self.cy, self.a, self.e = look["cx"], look["cy"], look["a"], look["e"]
        r, y, p = (math.radians(look[k]) for k in ("roll", "yaw", "pitch"))
        self.cr, self.sr = math.cos(r), math.sin(r)
        self.cy_, self.sy_ = math.cos(y), math.sin(y)
        self.cp, self.sp = math.cos(p), math.sin(p)

    def _out(self, u, v):
        x = u * self.cr - v * self.sr
        y = u * self.sr + v * self.cr
        return np.stack([self.cx + self.a * x, self.cy + self.a * y], -1)

    def flat(self, pts) -> np.ndarray:
        pts = np.asarray(pts, np.float64)
        return self._out(pts[..., 0], pts[..., 1])

    def surface(self, pts, lift: float = 0.0) -> np.ndarray:
        """Points on the face surface (depth from the head ellipsoid, plus ``lift``)."""
        pts = np.asarray(pts, np.float64)
        u, v = pts[..., 0], pts[..., 1]
        w = np.sqrt(np.clip(1.0 - u * u - (v / self.e) ** 2, 0.0, None)) + lift
        u1 = u * self.cy_ + w * self.sy_
        w1 = -u * self.sy_ + w * self.cy_
        v1 = v * self.cp + w1 * self.sp
        return self._out(u1, v1)


@functools.lru_cache(maxsize=4)
def _textures() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Real textures and photos shipped with scikit-image (no download): zero-mean grey textures
    and RGB photos, loaded once per process."""
    import skimage.data as skd

    textures = []
    for name in ("brick", "grass", "gravel"):
        t = getattr(skd, name)().astype(np.float32)
        if t.ndim == 3:
            t = t.mean(-1)
        textures.append((t - t.mean()) / (t.std() + 1e-6))
    photos = [getattr(skd, name)()[..., :3].astype(np.float32) for name in ("coffee", "chelsea", "astronaut", "rocket")]
    return textures, photos


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    return xx, yy


def _random_crop(src: np.ndarray, size: int, rng) -> np.ndarray:
    h, w = src.shape[:2]
    side = int(min(h, w) * rng.uniform(0.35, 1.0))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return cv2.resize(src[y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_AREA)


def _background(size: int, look: dict, strength: float) -> np.ndarray:
    """Plain background colour plus a pattern of the given opacity (the ``background`` severity)."""
    rng = np.random.default_rng(look["background_seed"])
    base = np.array(look["background"], np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = base
    kind = look["background_kind"]
    xx, yy = _grid(size)
    if strength <= 0:
        return img
    if kind == "gradient":  # base -> another colour along a random direction: one fused expression
        ang = rng.uniform(0, 2 * np.pi)
        ramp = xx * np.float32(np.cos(ang)) + yy * np.float32(np.sin(ang))
        ramp += np.float32(0.5 - 0.5 * (np.cos(ang) + np.sin(ang)))
        other = rng.uniform(0, 255, 3).astype(np.float32)
        img += ramp[..., None] * ((other - base) * np.float32(1.6 * strength))
        # ramp is in [0, 1]: below strength 0.625 every pixel stays between two valid colours.
        return img if strength < 0.625 else np.clip(img, 0, 255, out=img)
    if kind == "texture":
        textures, _ = _textures()
        tex = _random_crop(textures[int(rng.integers(len(textures)))], size, rng)
        tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
        pattern = base * tint + tex[..., None] * np.float32(55)
    elif kind == "photo":
        _, photos = _textures()
        pattern = cv2.GaussianBlur(_random_crop(photos[int(rng.integers(len(photos)))], size, rng), (0, 0), 1.0)
    else:  # clutter: shelves, frames and objects behind the person
        pattern = img.copy()
        for _ in range(int(rng.integers(4, 9))):
            colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
            x0, y0 = rng.uniform(0, size, 2)
            w, h = rng.uniform(0.1, 0.5, 2) * size
            if rng.random() < 0.6:
                cv2.rectangle(pattern, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), colour, -1)
            else:
                cv2.circle(pattern, (int(x0), int(y0)), int(w / 2), colour, -1, cv2.LINE_AA)
        for _ in range(int(rng.integers(1, 4))):
            y = rng.uniform(0, size)
            cv2.line(pattern, (0, int(y)), (size, int(y + rng.uniform(-10, 10))), (60, 50, 40),
                     max(1, size // 60))
    return img * np.float32(1 - strength) + np.clip(pattern, 0, 255) * np.float32(strength)


# --------------------------------------------------------------------------------------------------
# the portrait

def render(p: Portrait, encoded: dict | None = None) -> tuple[np.ndarray, dict[str, tuple[float, float, float, float]]]:
    """Draw a portrait.

    Args:
        p: the portrait.
        encoded: optional dict that receives the photo's JPEG bytes under ``"jpg"``.

    Returns:
        ``(image, regions)``: uint8 RGB array of shape (size, size, 3), and boxes
        ``(x0, y0, x1, y1)`` in pixels for the regions ``face``, ``eyes``, ``mouth``, ``lower_face``,
        ``head_top``, ``person``, ``shoulders`` and, when drawn, ``head_shadow``, ``strands`` (the hair
        strands and the eyes), ``close`` and ``ink``. ``lower_face`` includes the veil when drawn.
    """
    look, sev, size = p.look, p.severity, p.size
    k = size / REFERENCE_SIZE
    rng = np.random.default_rng(look["draw_seed"])
    f = _Frame(look)
    a, e = f.a, f.e
    skin = _shift_hue(look["skin"], look["skin_hue_sign"] * sev["skin_tone"])
    skin_dark = tuple(c * 0.86 for c in skin)
    hair = tuple(look["hair_colour"])
    regions: dict[str, tuple[float, float, float, float]] = {}

    img = _background(size, look, sev["background"])

    # Person silhouette (head, neck, shoulders), also the caster of the head shadow.
    head = f.flat(_ellipse(0, 0, 1.0, e, 48))
    neck_y = look["cy"] + e * a * 0.92
    cx = look["cx"]
    neck = np.array([(cx - 0.38 * a, look["cy"] + 0.5 * e * a), (cx + 0.38 * a, look["cy"] + 0.5 * e * a),
                     (cx + 0.40 * a, neck_y + 0.35 * a), (cx - 0.40 * a, neck_y + 0.35 * a)])
    body = np.array([(cx - 0.42 * a, neck_y + 0.18 * a), (cx - 1.5 * a, neck_y + 0.5 * a),
                     (cx - 2.2 * a, neck_y + 1.1 * a), (cx - 2.6 * a, size + 5), (cx + 2.6 * a, size + 5),
                     (cx + 2.2 * a, neck_y + 1.1 * a), (cx + 1.5 * a, neck_y + 0.5 * a),
                     (cx + 0.42 * a, neck_y + 0.18 * a)])
    if sev["sh_head"] > 0:
        mask = np.zeros((size, size), np.float32)
        off = np.array(look["head_shadow_offset"]) * a
        for poly in (head, neck, body):
            cv2.fillPoly(mask, [_fix(poly + off)], 1.0, cv2.LINE_AA, shift=4)
        mask = cv2.GaussianBlur(mask, (0, 0), 3.0 * k)
        img *= (1.0 - np.float32(sev["sh_head"]) * mask)[..., None]
        # The shadow shows beside the head and neck; the body's shadow stays mostly behind the body.
        regions["head_shadow"] = _union([_box(head + off), _box(neck + off)])

    if look["hair_style"] == "long":
        back = f.flat(np.concatenate([_ellipse(0, -0.1, 1.22, e * 1.1, 24, np.pi, 2 * np.pi),
                                      [(1.3, e + 0.7), (-1.3, e + 0.7)]]))
        _fill(img, back, hair)
    _fill(img, body, tuple(look["cloth_colour"]))
    _fill(img, neck, skin_dark)
    if look["collar"]:
        _fill(img, [(cx - 0.42 * a, neck_y + 0.18 * a), (cx + 0.42 * a, neck_y + 0.18 * a),
                    (cx, neck_y + 0.9 * a)], skin_dark)
    for side in (-1, 1):  # ears sit slightly behind the face plane: drawn before the head
        ear = f.surface(_ellipse(side * 1.0, -0.05, 0.13, 0.24, 16), lift=-0.2)
        _fill(img, ear, skin_dark)
    _fill(img, head, skin)
    regions["face"] = _box(head)
    regions["person"] = _box(np.concatenate([head, body]))
    regions["shoulders"] = _box(body[2:6])  # below the shoulder line: background = not head, not shoulders

    # Brows, eyes, nose, mouth.
    brow_col = tuple(c * 0.7 for c in hair)
    for side in (-1, 1):
        brow = f.surface([(side * (0.18 + 0.44 * t), BROW_V - 0.06 * math.sin(math.pi * t)) for t in np.linspace(0, 1, 8)])
        _stroke(img, brow, brow_col, 0.05 * a)
    closure = sev["eyes_closed"]
    closures = (closure, closure if not look["wink"] else min(closure, rng.uniform(0, 0.3)))
    if rng.random() < 0.5:
        closures = closures[::-1]
    eye_boxes = []
    for side, cl in zip((-1, 1), closures):
        eye_boxes.append(_draw_eye(img, f, side, cl, sev, look, skin))
    regions["eyes"] = _union(eye_boxes)
    _stroke(img, f.surface([(0.07, -0.12), (0.09, 0.18), (0.05, 0.26)], lift=NOSE_LIFT), skin_dark, 0.03 * a)
    for side in (-1, 1):
        _fill(img, f.surface(_ellipse(side * 0.075, NOSE_V, 0.045, 0.025, 12), lift=NOSE_LIFT),
              tuple(c * 0.55 for c in skin))
    regions["mouth"] = _draw_mouth(img, f, sev["mouth"], skin)
    regions["lower_face"] = _box(f.flat(_ellipse(0, 0, 1.0, e, 48)[:25]))  # lower half: v > 0 is down

    if sev["reflection"] > 0:
        _hot_spots(img, f, sev["reflection"], rng)

    # Hair on top, then strands over the eyes.
    hl = look["hairline"] + (0.12 if look["hair_style"] == "fringe" else 0.0)
    if look["hair_style"] != "bald":
        outer = _ellipse(0, 0, 1.07, e * 1.05, 32, np.pi, 2 * np.pi)
        inner = [(0.97 * math.cos(t), -0.15 + (hl + 0.15) * math.sin(t)) for t in np.linspace(0, math.pi, 16)]
        _fill(img, f.flat(np.concatenate([outer, inner])), hair)
        if look["hair_style"] == "bun":
            _fill(img, f.flat(_ellipse(0, -e * 1.05 - 0.2, 0.32, 0.26, 20)), hair)
    regions["head_top"] = _box(f.flat([(-1.1, -e * 1.1 - 0.3), (1.1, hl)]))
    if sev["hair_eyes"] > 0:
        regions["strands"] = _union([regions["eyes"], _hair_strands(img, f, sev["hair_eyes"], hl, hair, rng)])

    if look["glasses"]:
        regions["eyes"] = _union([regions["eyes"], _draw_glasses(img, f, sev, look, rng, k)])
    if sev["veil"] > 0:
        regions["lower_face"] = _union([regions["lower_face"], _draw_veil(img, f, sev["veil"], look, rng)])
    if sev["hat"] > 0:
        _draw_hat(img, f, sev["hat"], look)
        regions["head_top"] = _union([regions["head_top"], _box(f.flat([(-1.2, -e * 1.3), (1.2, -e + sev["hat"] * (e - 0.5))]))])
    if sev["close"] > 0:
        regions["close"] = _draw_close_object(img, f, sev["close"], look, skin, rng)

    if sev["sh_face"] > 0:
        head_mask = np.zeros((size, size), np.float32)
        cv2.fillPoly(head_mask, [_fix(head)], 1.0, cv2.LINE_AA, shift=4)
        cv2.fillPoly(head_mask, [_fix(neck)], 1.0, cv2.LINE_AA, shift=4)
        xx, yy = _grid(size)
        ang = look["shadow_angle"]
        d = ((xx * size - f.cx) * np.cos(ang) + (yy * size - f.cy) * np.sin(ang)) / (0.18 * a)
        ramp = np.clip(d + 0.5, 0, 1) * cv2.GaussianBlur(head_mask, (0, 0), 1.5 * k)
        img *= (1.0 - np.float32(sev["sh_face"]) * ramp)[..., None]

    # Natural light (a gentle gradient, always compliant) and the exposure of the photo, in one pass.
    gain = 2.0 ** (look["exposure_sign"] * sev["light"])
    if look["light_gradient"] > 0:
        xx, yy = _grid(size)
        ramp = xx * np.float32(math.cos(look["light_angle"])) + yy * np.float32(math.sin(look["light_angle"]))
        ramp -= np.float32(0.5 * (math.cos(look["light_angle"]) + math.sin(look["light_angle"])))
        img *= (np.float32(gain) * (1.0 + np.float32(look["light_gradient"]) * ramp))[..., None]
    else:
        img *= np.float32(gain)
    np.clip(img, 0, 255, out=img)

    # The photo: contrast, the print (ink), the scan (blur, pixels, noise, JPEG).
    defects.washed_out(img, sev["washed_out"])
    if sev["ink_mark"] > 0:
        img, box = defects.ink_marks(img, sev["ink_mark"], rng, k, look["ink_style"])
        if box:
            regions["ink"] = box
    img = defects.blur(img, sev["blurred"], k, look["blur_motion_angle"])
    img = defects.pixelate(img, sev["pixelation"], k)
    out = defects.sensor_noise_and_jpeg(img, look["noise"], look["jpeg"], look["draw_seed"], encoded)
    return out, {name: _clip_box(b, size) for name, b in regions.items()}


def _box(pts) -> tuple[float, float, float, float]:
    pts = np.asarray(pts, np.float64)
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    return float(x0), float(y0), float(x1), float(y1)


def _union(boxes) -> tuple[float, float, float, float]:
    boxes = np.array([b for b in boxes if b is not None])
    return float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())


def _clip_box(b, size):
    return tuple(min(max(float(x), 0.0), float(size)) for x in b)


def _draw_eye(img, f: _Frame, side: int, closure: float, sev, look, skin) -> tuple:
    """Sclera, iris and pupil clipped to the eye opening; the upper lid covers ``closure`` of it."""
    a = f.a
    cu = side * EYE_U
    outline = f.surface(_ellipse(cu, EYE_V, EYE_HW, EYE_HH, 28))
    h, w = img.shape[:2]
    x0, y0 = np.maximum(np.floor(outline.min(0)).astype(int) - 3, 0)
    x1, y1 = np.minimum(np.ceil(outline.max(0)).astype(int) + 4, [w, h])
    box = (float(x0), float(y0), float(x1), float(y1))
    if x1 <= x0 or y1 <= y0:
        return box
    crop = img[y0:y1, x0:x1]
    org = np.array([x0, y0])
    if closure < 0.999:
        layer = crop.copy()
        mask = np.zeros(crop.shape[:2], np.float32)
        cv2.fillPoly(mask, [_fix(outline - org)], 1.0, cv2.LINE_AA, shift=4)
        cv2.fillPoly(layer, [_fix(outline - org)], (236, 232, 228), cv2.LINE_AA, shift=4)
        off = sev["l_away"] * EYE_HW
        g = look["gaze_angle"]
        iu, iv = cu + off * math.cos(g), EYE_V + 0.5 * off * math.sin(g)
        _fill(layer, f.surface(_ellipse(iu, iv, IRIS_R, IRIS_R, 20)) - org, tuple(look["eye_colour"]))
        red = sev["red_eyes"]
        pupil = tuple((1 - red) * 15 + red * c for c in (205, 25, 25))
        pr = PUPIL_R * (1 + 0.5 * red)
        _fill(layer, f.surface(_ellipse(iu, iv, pr, pr, 16)) - org, pupil)
        crop[:] = crop + (layer - crop) * mask[..., None]
    # The lid: eye outline clipped below the lid line, filled with skin; lashes along its edge.
    lid_v = EYE_V - EYE_HH + closure * 2 * EYE_HH
    if closure > 0.02:
        pts = _ellipse(cu, EYE_V, EYE_HW * 1.04, EYE_HH * 1.15, 28)
        pts[:, 1] = np.minimum(pts[:, 1], lid_v)
        _fill(img, f.surface(pts), tuple(c * 0.95 for c in skin))
    t = min(max((lid_v - EYE_V) / EYE_HH, -1.0), 1.0)
    half = EYE_HW * math.sqrt(max(1 - t * t, 0.0))
    if closure >= 0.98:
        lash = _ellipse(cu, EYE_V, EYE_HW, EYE_HH * 0.6, 14, 0, np.pi)
    elif closure > 0.02:
        lash = np.array([(cu + s * half, lid_v) for s in np.linspace(-1, 1, 8)])
    else:
        lash = _ellipse(cu, EYE_V, EYE_HW, EYE_HH, 14, np.pi, 2 * np.pi)
    _stroke(img, f.surface(lash), (35, 25, 20), 0.03 * a)
    return box


def _draw_mouth(img, f: _Frame, opening: float, skin) -> tuple:
    lip = (skin[0] * 0.78 + 30, skin[1] * 0.55, skin[2] * 0.58)
    hh = mouth_half_height(opening)
    outer = f.surface(_ellipse(0, MOUTH_V, MOUTH_HW, hh, 28))
    _fill(img, outer, lip)
    if opening < 0.03:
        _stroke(img, f.surface([(x, MOUTH_V + 0.012 * math.cos(x * 6)) for x in np.linspace(-MOUTH_HW, MOUTH_HW, 10)]),
                tuple(c * 0.45 for c in lip), max(1.0, 0.025 * f.a))
    else:
        gap = opening * MOUTH_HW
        _fill(img, f.surface(_ellipse(0, MOUTH_V, MOUTH_HW * 0.84, gap, 24)), (70, 22, 28))
        if opening > 0.15:
            teeth = _ellipse(0, MOUTH_V, MOUTH_HW * 0.8, gap * 0.95, 24)
            teeth[:, 1] = np.minimum(teeth[:, 1], MOUTH_V - gap * 0.45)
            _fill(img, f.surface(teeth), (240, 238, 228))
    return _box(outer)


def _hot_spots(img, f: _Frame, intensity: float, rng):
    """Specular flash hot-spots on the skin: Gaussian blobs that push the pixels towards white."""
    sites = [(0.0, -0.6), (0.0, 0.22), (-0.5, 0.2), (0.5, 0.2), (-0.3, -0.55), (0.3, -0.55)]
    n = int(rng.integers(1, 4))
    chosen = rng.choice(len(sites), n, replace=False)
    h, w = img.shape[:2]
    for j, idx in enumerate(chosen):
        cu, cv = sites[idx]
        r = rng.uniform(0.10, 0.18) * f.a
        peak = intensity * (1.0 if j == 0 else rng.uniform(0.6, 1.0))
        (x, y), = f.surface([(cu, cv)])
        x0, x1 = int(max(x - 3 * r, 0)), int(min(x + 3 * r + 1, w))
        y0, y1 = int(max(y - 3 * r, 0)), int(min(y + 3 * r + 1, h))
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        g = np.float32(peak) * np.exp(-((xx - x) ** 2 + ((yy - y) * 1.3) ** 2) / np.float32(2 * r * r))
        crop = img[y0:y1, x0:x1]
        crop += (255 - crop) * g[..., None]


def _hair_strands(img, f: _Frame, reach: float, hairline: float, hair, rng):
    """Strands falling from the hairline; their tips end ``reach`` of the way down the eye opening."""
    tip_v = EYE_V - EYE_HH - 0.06 + reach * (2 * EYE_HH + 0.06)
    sides = (-1, 1) if rng.random() < 0.5 else (int(rng.choice([-1, 1])),)
    drawn = []
    for side in sides:
        for _ in range(int(rng.integers(4, 8))):
            u0 = side * rng.uniform(0.1, 0.55)
            u1 = u0 + rng.uniform(-0.12, 0.12)
            pts = [(u0 + (u1 - u0) * t + 0.04 * math.sin(6 * t), hairline + (tip_v - hairline) * t)
                   for t in np.linspace(0, 1, 8)]
            strand = f.surface(pts, lift=0.05)
            _stroke(img, strand, hair, rng.uniform(0.025, 0.05) * f.a)
            drawn.append(strand)
    return _box(np.concatenate(drawn))


def _draw_glasses(img, f: _Frame, sev, look, rng, k: float) -> tuple:
    lw, lh = 0.25, 0.17
    rim_top = EYE_V - EYE_HH + sev["frame_eyes"] * 2 * EYE_HH
    cv_ = rim_top + lh
    frame = tuple(look["frame_colour"])
    thick = max(1.0, sev["frames_heavy"] * k)
    lenses = []
    for side in (-1, 1):
        cu = side * EYE_U
        if look["lens_shape"] == "ellipse":
            pts = _ellipse(cu, cv_, lw, lh, 32)
        else:
            t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
            c, s = np.cos(t), np.sin(t)
            pts = np.stack([cu + lw * np.sign(c) * np.abs(c) ** 0.4, cv_ + lh * np.sign(s) * np.abs(s) ** 0.4], 1)
        lens = f.surface(pts, lift=0.12)
        lenses.append(lens)
        if sev["dark_glasses"] > 0:
            _fill(img, lens, tuple(look["tint_colour"]), float(sev["dark_glasses"]))
    if sev["flash_lenses"] > 0:
        for j, side in enumerate((-1, 1)):
            if j == 1 and rng.random() < 0.4:
                continue
            area = sev["flash_lenses"] * math.pi * lw * lh
            rx = math.sqrt(area / math.pi * 1.6)
            ry = area / (math.pi * rx)
            cu = side * EYE_U + rng.uniform(-0.4, 0.4) * (lw - rx)
            cvv = cv_ + rng.uniform(-0.4, 0.4) * max(lh - ry, 0.0)
            blob = f.surface(_ellipse(cu, cvv, rx, ry, 20), lift=0.13)
            _fill(img, blob, (252, 252, 250), 0.95)
    for lens in lenses:
        _stroke(img, lens, frame, thick, closed=True)
    bridge = f.surface([(-EYE_U + lw * 0.9, cv_ - lh * 0.4), (0, cv_ - lh * 0.6), (EYE_U - lw * 0.9, cv_ - lh * 0.4)], lift=0.12)
    _stroke(img, bridge, frame, thick)
    for side in (-1, 1):
        _stroke(img, f.surface([(side * (EYE_U + lw), cv_ - lh * 0.3), (side * 0.98, cv_ - lh * 0.1)]), frame,
                max(1.0, thick * 0.7))
    return _box(np.concatenate(lenses))


def _draw_veil(img, f: _Frame, coverage: float, look, rng):
    """Cloth over the face from the chin up to ``veil_top``, draped down over the neck."""
    e = f.e
    top = veil_top(coverage, e)
    rx, ry = 1.06, e * 1.04
    t_top = math.asin(min(max(top / ry, -1.0), 1.0))  # where the upper edge meets the face outline
    t_drape = math.acos(0.72)  # where the drape leaves the outline towards the shoulders
    t_right = np.linspace(t_top, max(t_top, t_drape), 8)
    right = np.stack([rx * np.cos(t_right), ry * np.sin(t_right)], 1)
    left = right[::-1] * (-1, 1)
    drape = [(0.9, e + 0.9), (-0.9, e + 0.9)]
    x_edge = rx * math.cos(t_top)
    edge = [(x, top - 0.04 * math.sin(math.pi * (x + x_edge) / (2 * x_edge))) for x in np.linspace(-x_edge, x_edge, 10)]
    poly = np.concatenate([right, drape, left, edge])
    colour = tuple(look["veil_colour"])
    _fill(img, f.flat(poly), colour, float(rng.uniform(0.88, 1.0)))
    for _ in range(3):  # folds
        x = rng.uniform(-0.6, 0.6)
        _stroke(img, f.flat([(x, top + 0.1), (x * 1.1, e + 0.5)]), tuple(c * 0.8 for c in colour), 0.03 * f.a)
    return _box(f.flat(poly))


def _draw_hat(img, f: _Frame, coverage: float, look):
    e = f.e
    low = -e * 1.02 + coverage * (e - 0.5)
    colour = tuple(look["hat_colour"])
    dark = tuple(c * 0.75 for c in colour)
    style = look["hat_style"]
    # Crown: the part of an enlarged head ellipse above the hat's lower edge.
    width = 0.88 if style == "brimmed" else 1.1
    pts = _ellipse(0, 0, width, e * 1.08, 40, np.pi, 2 * np.pi)
    pts[:, 1] = np.minimum(pts[:, 1], low)
    top = pts[:, 1].min()
    if style == "brimmed":
        pts[:, 1] = np.minimum(pts[:, 1], low)
        pts = np.concatenate([pts, [(width, low), (-width, low)]])
        pts[:, 1] -= 0.25 * (low - top)  # a taller crown
    _fill(img, f.flat(pts), colour)
    if style == "beanie":
        band = _ellipse(0, low, 1.1, 0.11, 24)
        band[:, 1] = np.minimum(band[:, 1], low + 0.02)
        _fill(img, f.flat(np.concatenate([pts[pts[:, 1] >= low - 0.14], band[::-1]])), dark)
    elif style == "cap":
        _fill(img, f.flat(_ellipse(0.1, low + 0.02, 0.95, 0.12, 28)), dark)
    else:
        _fill(img, f.flat(_ellipse(0, low, 1.6, 0.17, 32)), dark)


def _draw_close_object(img, f: _Frame, closeness: float, look, skin, rng) -> tuple:
    """Another face, a teddy or a hand beside the head, nearer and bigger with ``closeness``."""
    r = 0.35 + 0.45 * closeness
    du = look["close_side"] * (2.4 - 1.25 * closeness + 0.3 * r)
    cu, cv = du, look["close_dv"]
    # Not in the head frame: the object does not roll with the head.
    def place(pts):
        pts = np.asarray(pts, np.float64)
        return np.stack([f.cx + f.a * pts[:, 0], f.cy + f.a * pts[:, 1]], 1)

    kind = look["close_kind"]
    if kind == "face":
        other = _skin_colour(rng)
        body = place(_ellipse(cu, cv, r * 0.8, r, 28))
        _fill(img, body, tuple(other))
        for s in (-1, 1):
            _fill(img, place(_ellipse(cu + s * 0.32 * r, cv - 0.15 * r, 0.1 * r, 0.06 * r, 12)), (30, 25, 20))
        _stroke(img, place([(cu - 0.25 * r, cv + 0.45 * r), (cu, cv + 0.52 * r), (cu + 0.25 * r, cv + 0.45 * r)]),
                (120, 50, 50), max(1.0, 0.04 * r * f.a))
        _fill(img, place(_ellipse(cu, cv - 0.55 * r, 0.85 * r, 0.5 * r, 20, np.pi, 2 * np.pi)),
              tuple(_pick(rng, HAIR_COLOURS)))
    elif kind == "teddy":
        fur = tuple(float(c) for c in rng.uniform([100, 60, 20], [170, 120, 70]))
        for s in (-1, 1):
            _fill(img, place(_ellipse(cu + s * 0.7 * r, cv - 0.7 * r, 0.3 * r, 0.3 * r, 16)), fur)
        body = place(_ellipse(cu, cv, r, r, 28))
        _fill(img, body, fur)
        _fill(img, place(_ellipse(cu, cv + 0.3 * r, 0.4 * r, 0.3 * r, 16)), tuple(min(255, c * 1.3) for c in fur))
        for s in (-1, 1):
            _fill(img, place(_ellipse(cu + s * 0.35 * r, cv - 0.2 * r, 0.09 * r, 0.09 * r, 10)), (20, 15, 10))
    else:  # a hand raised beside the face
        body = place(_ellipse(cu, cv, 0.55 * r, 0.65 * r, 24))
        _fill(img, body, tuple(skin))
        for j in range(4):
            fu = cu + (j - 1.5) * 0.26 * r
            _fill(img, place(_ellipse(fu, cv - 0.85 * r, 0.11 * r, 0.38 * r, 14)), tuple(skin))
        _fill(img, place(_ellipse(cu - look["close_side"] * 0.6 * r, cv, 0.35 * r, 0.12 * r, 12)), tuple(skin))
        body = np.concatenate([body, place([(cu - 0.6 * r, cv - 1.25 * r), (cu + 0.6 * r, cv - 1.25 * r)])])
    return _box(body)
