"""Image-level defects: exposure, washed out, ink marks, blur, pixelation, sensor noise, JPEG.

These act on the whole photo, so they apply to any face image: the renderer uses them on its
portraits and :mod:`icao_mtl.data.tasksets` on real LFW faces. Images are float32 arrays of shape
(H, W, 3) with values in [0, 255] (RGB). ``scale`` is the number of image pixels per pixel of the
224x224 reference frame in which severities are expressed (``size / 224`` for a portrait).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

INK_COLOURS = ((30, 50, 160), (20, 20, 25), (180, 25, 30))  # blue, black, red (RGB)


def exposure(img: np.ndarray, stops: float) -> np.ndarray:
    """Multiply by ``2**stops`` (signed; positive over-exposes) and clip to [0, 255]."""
    if stops == 0:
        return img
    return np.clip(img * np.float32(2.0 ** stops), 0, 255, out=img)


def washed_out(img: np.ndarray, severity: float, grey: float = 215.0) -> np.ndarray:
    """Compress contrast towards ``grey``: ``img * (1 - s) + grey * s`` with ``s = severity``."""
    if severity <= 0:
        return img
    c = np.float32(1.0 - severity)
    img *= c
    img += np.float32(grey * severity)
    return img


def blur(img: np.ndarray, spread: float, scale: float = 1.0, motion_angle: float | None = None) -> np.ndarray:
    """Gaussian blur of standard deviation ``spread`` (reference pixels), or a linear motion blur of
    the same standard deviation (length ``spread * sqrt(12)``) along ``motion_angle`` degrees."""
    sigma = spread * scale
    if sigma < 0.05:
        return img
    if motion_angle is None:
        return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    length = max(sigma * np.sqrt(12.0), 1.0)
    half = int(np.ceil(length / 2))
    k = np.zeros((2 * half + 1, 2 * half + 1), np.float32)
    c = half
    dx, dy = np.cos(np.radians(motion_angle)), np.sin(np.radians(motion_angle))
    # A line of the requested length through the kernel centre, drawn anti-aliased in a 16x finer grid.
    p0 = (int(round((c - dx * length / 2) * 16)), int(round((c - dy * length / 2) * 16)))
    p1 = (int(round((c + dx * length / 2) * 16)), int(round((c + dy * length / 2) * 16)))
    cv2.line(k, p0, p1, 1.0, 1, cv2.LINE_AA, shift=4)
    k /= k.sum()
    return cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT)


def pixelate(img: np.ndarray, block: float, scale: float = 1.0) -> np.ndarray:
    """Area-downsample by ``block`` reference pixels, then upsample with nearest neighbour."""
    b = block * scale
    if b <= 1.05:
        return img
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, round(w / b)), max(1, round(h / b))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def ink_marks(img: np.ndarray, opacity: float, rng: np.random.Generator, scale: float = 1.0,
              style: str | None = None) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """Draw pen strokes or a crease over the photo with the given opacity.

    Returns:
        ``(img, box)``: the image and the bounding box ``(x0, y0, x1, y1)`` of the mark in pixels
        (None when nothing was drawn).
    """
    if opacity <= 0:
        return img, None
    h, w = img.shape[:2]
    style = style or ("crease" if rng.random() < 0.3 else "pen")
    layer = img.copy()
    if style == "pen":
        colour = INK_COLOURS[rng.integers(len(INK_COLOURS))]
        thickness = max(1, int(round(rng.uniform(2.0, 4.0) * scale)))
        pts_all = []
        for _ in range(int(rng.integers(1, 4))):
            # a cubic Bezier scribble somewhere on the photo
            ctrl = rng.uniform([0.05 * w, 0.05 * h], [0.95 * w, 0.95 * h], size=(4, 2))
            t = np.linspace(0, 1, 24)[:, None]
            curve = ((1 - t) ** 3 * ctrl[0] + 3 * (1 - t) ** 2 * t * ctrl[1] + 3 * (1 - t) * t ** 2 * ctrl[2]
                     + t ** 3 * ctrl[3])
            pts = np.round(curve * 16).astype(np.int32)
            cv2.polylines(layer, [pts], False, colour, thickness, cv2.LINE_AA, shift=4)
            pts_all.append(curve)
        allp = np.concatenate(pts_all)
    else:  # a fold: a bright ridge beside a dark valley across the whole photo
        angle = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
        d = np.array([np.cos(angle), np.sin(angle)]) * 2 * max(h, w)
        n = np.array([-np.sin(angle), np.cos(angle)]) * max(1.0, 1.5 * scale)
        for off, colour in ((0.0, (250, 250, 250)), (1.0, (40, 40, 40))):
            p0 = np.array([cx, cy]) - d + off * n
            p1 = np.array([cx, cy]) + d + off * n
            cv2.line(layer, tuple(np.round(p0 * 16).astype(int)), tuple(np.round(p1 * 16).astype(int)), colour,
                     max(1, int(round(1.6 * scale))), cv2.LINE_AA, shift=4)
        allp = np.array([[0, 0], [w, h]], float)
    cv2.addWeighted(layer, float(opacity), img, 1.0 - float(opacity), 0.0, dst=img)
    x0, y0 = np.clip(allp.min(0), 0, [w, h])
    x1, y1 = np.clip(allp.max(0), 0, [w, h])
    return img, (float(x0), float(y0), float(x1), float(y1))


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """4 M standard-normal floats, made once per process from a fixed seed."""
    return np.random.default_rng(20240601).standard_normal(1 << 22, dtype=np.float32)


def sensor_noise_and_jpeg(img: np.ndarray, noise_sigma: float, jpeg_quality: int, noise_seed: int,
                          encoded: dict | None = None) -> np.ndarray:
    """Add Gaussian sensor noise (8-bit levels), round to uint8 and pass through JPEG once.

    The noise is a slice, at an offset drawn from ``noise_seed``, of a fixed bank of standard-normal
    values: as random-looking and deterministic as fresh draws, at a tenth of their cost.

    Args:
        encoded: if a dict is given, the JPEG bytes are stored in ``encoded["jpg"]`` so a caller can
            write the photo without compressing it twice.

    Returns:
        uint8 array of shape (H, W, 3), RGB.
    """
    if noise_sigma > 0:
        bank = _noise_bank()
        offset = int(np.random.default_rng(noise_seed).integers(0, bank.size - img.size))
        img += bank[offset:offset + img.size].reshape(img.shape) * np.float32(noise_sigma)
    out = np.clip(img, 0, 255, out=img).astype(np.uint8)
    if jpeg_quality < 100:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if encoded is not None:
            encoded["jpg"] = buf.tobytes()
    return out
