"""Classical image-quality measures for the image-level requisites: a peer the learned models must beat.

Each measure is a hand-made statistic of the kind face-image-quality tools compute on a photo or on
landmark-defined regions (BIQT-Face, OFIQ and ISO/IEC 29794-5: sharpness, compression, illumination,
dynamic range, background uniformity, natural colour). Nothing is trained; every measure is oriented
so that a **higher score means more compliant**, which is what an EER needs (the threshold is then
chosen by the EER itself, exactly as for a model's P(compliant)). The only fitted quantity is the skin
colour reference of :func:`skin_tone_score` (a mean and covariance of compliant faces' chroma).

Regions are shares of the side of a square photo framed like the training portraits
(:func:`icao_mtl.synth.portrait.eye_framing`; ``check`` aligns real photos to it): ``FACE`` is the
central face box, ``BACKGROUND`` the two top corners beside the head, ``EYES`` the band that holds
both eyes. For tight face crops (the LFW task set) pass ``face=FULL``.

All functions take one uint8 RGB image (H, W, 3) and return a float.
"""

from __future__ import annotations

import cv2
import numpy as np

from .synth import defects  # the same area-down, nearest-up operation that pixelates a photo

#: (row0, row1, col0, col1) as shares of the side.
FACE = (0.28, 0.62, 0.34, 0.66)
FULL = (0.0, 1.0, 0.0, 1.0)
BACKGROUND = ((0.02, 0.22, 0.02, 0.22), (0.02, 0.22, 0.78, 0.98))
EYES = (0.33, 0.48, 0.33, 0.67)


def _region(img: np.ndarray, box) -> np.ndarray:
    h, w = img.shape[:2]
    r0, r1, c0, c1 = box
    return img[int(r0 * h):max(int(r1 * h), int(r0 * h) + 1), int(c0 * w):max(int(c1 * w), int(c0 * w) + 1)]


def _luma(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)


def sharpness(img: np.ndarray, face=FACE) -> float:
    """``blurred``: log variance of the Laplacian of the face region's luminance (OFIQ's and BIQT's
    sharpness idea); blur removes the high frequencies it measures."""
    lap = cv2.Laplacian(_luma(_region(img, face)), cv2.CV_32F, ksize=3)
    return float(np.log(lap.var() + 1e-6))


def compression(img: np.ndarray, face=FULL, blocks=np.arange(1.5, 9.01, 0.25), reference_side: int = 224) -> float:
    """``pixelation``: minus the strength of a block grid. For each candidate block size b (in pixels
    of a ``reference_side`` photo), the photo is re-pixelated on its own grid and on the grid shifted
    by half a block; a photo made of b-pixel blocks survives the aligned re-pixelation almost
    unchanged and not the shifted one, so the ratio of the two errors peaks at its block size. A photo
    without blocks gives ratios near 1 for every b. Returns minus the log of the largest ratio."""
    y = _luma(_region(img, face))
    scale = y.shape[0] / reference_side
    best = 1.0
    for b in blocks:
        size = b * scale
        if size <= 1.05:
            continue
        # half a grey level added to both errors: an exact grid (error 0) gives a large, finite ratio
        aligned = np.abs(defects.pixelate(y, b, scale) - y).mean() + 0.5
        shift = max(1, int(round(size / 2)))
        moved = np.roll(y, shift, axis=(0, 1))
        shifted = np.abs(defects.pixelate(moved, b, scale) - moved).mean() + 0.5
        best = max(best, float(shifted / aligned))
    return -float(np.log(best))


def illumination(img: np.ndarray, face=FACE, target: float = 150.0) -> float:
    """``light`` (too dark or too light): minus the distance, in photographic stops, of the face
    region's mean luminance from a mid-tone target (about 150 of 255 for a well-exposed face)."""
    mean = float(_luma(_region(img, face)).mean())
    return -abs(float(np.log2((mean + 1.0) / (target + 1.0))))


def dynamic_range(img: np.ndarray, face=FACE) -> float:
    """``washed_out``: the luminance spread of the face region, 99th minus 1st percentile (ISO/IEC
    29794-5's dynamic range): a washed-out photo is pulled towards one grey."""
    p1, p99 = np.percentile(_luma(_region(img, face)), [1, 99])
    return float(p99 - p1)


def background_uniformity(img: np.ndarray, regions=BACKGROUND) -> float:
    """``background``: minus the mean of the luminance and colour standard deviations in the top
    corners beside the head, after a light blur (so sensor noise does not count as pattern)."""
    out = []
    for box in regions:
        patch = cv2.GaussianBlur(_region(img, box).astype(np.float32), (3, 3), 0)
        out.append(float(patch.reshape(-1, 3).std(0).mean()))
    return -float(np.mean(out))


def _face_chroma(img: np.ndarray, face=FACE) -> np.ndarray:
    lab = cv2.cvtColor(_region(img, face), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    return np.median(lab[:, 1:], axis=0)


class SkinReference:
    """Mean and covariance of the face's median chroma (Lab a*, b*) over compliant photos."""

    def __init__(self, images, face=FACE):
        ab = np.stack([_face_chroma(im, face) for im in images])
        self.mean = ab.mean(0)
        self.inv_cov = np.linalg.inv(np.cov(ab.T) + 1e-3 * np.eye(2))


def skin_tone_score(img: np.ndarray, reference: SkinReference, face=FACE) -> float:
    """``skin_tone`` (unnatural skin): minus the Mahalanobis distance of the face's chroma from the
    compliant faces' (a reference fitted on training photos)."""
    d = _face_chroma(img, face) - reference.mean
    return -float(np.sqrt(d @ reference.inv_cov @ d))


def red_eye_score(img: np.ndarray, eyes=EYES) -> float:
    """``red_eyes``: minus the redness of the reddest eye pixels, the 99.5th percentile of
    R - max(G, B) in the eye band (red pupils are small, so only the top of the distribution tells)."""
    band = _region(img, eyes).astype(np.float32)
    redness = band[..., 0] - np.maximum(band[..., 1], band[..., 2])
    return -float(np.percentile(redness, 99.5))


#: requisite -> measure for photos framed like the training portraits (skin tone needs a reference).
MEASURES = {
    "blurred": sharpness,
    "pixelation": compression,
    "light": illumination,
    "washed_out": dynamic_range,
    "background": background_uniformity,
    "red_eyes": red_eye_score,
}
#: The measures that apply to tight face crops (no background, no eye band): LFW's requisites.
FACE_CROP_MEASURES = {
    "blurred": lambda im: sharpness(im, FULL),
    "pixelation": lambda im: compression(im, FULL),
    "light": lambda im: illumination(im, FULL),
    "washed_out": lambda im: dynamic_range(im, FULL),
}
