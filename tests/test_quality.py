"""The classical quality measures of the baseline: each falls as its defect grows, on a real photo."""

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from icao_mtl import quality
from icao_mtl.synth import defects


@pytest.fixture(scope="module")
def portrait():
    """The astronaut photo cropped square around her face, at 224 px (face in the centre)."""
    img = skdata.astronaut()[0:300, 80:380]
    return cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA)


def _decreasing(values):
    return all(a > b for a, b in zip(values, values[1:]))


def test_each_measure_falls_as_its_defect_grows(portrait):
    f = portrait.astype(np.float32)

    def u8(x):
        return np.clip(np.round(x), 0, 255).astype(np.uint8)

    assert _decreasing([quality.sharpness(u8(defects.blur(f.copy(), s))) for s in (0.0, 1.0, 2.0, 4.0)])
    clean = quality.compression(portrait)
    for block in (2.0, 3.0, 4.5, 6.0, 9.0):  # any block grid, integer or not, stands out
        assert quality.compression(u8(defects.pixelate(f.copy(), block))) < clean - 0.3, block
    dark = [quality.illumination(u8(defects.exposure(f.copy(), -s))) for s in (0.0, 0.8, 1.6)]
    light = [quality.illumination(u8(defects.exposure(f.copy(), s))) for s in (0.0, 0.8, 1.6)]
    assert _decreasing(dark) and light[2] < light[0]
    assert _decreasing([quality.dynamic_range(u8(defects.washed_out(f.copy(), s))) for s in (0.0, 0.3, 0.7)])


def test_background_and_red_eye_measures(portrait):
    plain = np.full((224, 224, 3), 230, np.uint8)
    plain[60:200, 70:160] = portrait[60:200, 70:160]
    patterned = plain.copy()
    rng = np.random.default_rng(0)
    patterned[:60] = np.clip(230 + rng.normal(0, 25, (60, 224, 3)), 0, 255).astype(np.uint8)
    assert quality.background_uniformity(patterned) < quality.background_uniformity(plain) - 5
    red = plain.copy()
    r, c = int(0.41 * 224), int(0.42 * 224)
    red[r:r + 3, c:c + 3] = (220, 30, 30)
    red[r:r + 3, c + 35:c + 38] = (220, 30, 30)
    assert quality.red_eye_score(red) < quality.red_eye_score(plain)


def test_skin_reference_prefers_natural_skin(portrait):
    faces = [np.clip(portrait.astype(np.int16) + d, 0, 255).astype(np.uint8) for d in (-10, -5, 0, 5, 10)]
    ref = quality.SkinReference(faces)
    green = portrait.copy()
    green[..., 1] = np.clip(green[..., 1].astype(np.int16) + 60, 0, 255)
    assert quality.skin_tone_score(green, ref) < quality.skin_tone_score(portrait, ref) - 3
