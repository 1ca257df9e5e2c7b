"""check's alignment of real photos: MTCNN landmarks, the eyes moved to where the training portraits
have them, no rotation, and a clear report when no face is found."""

import json
import math
import sys

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from icao_mtl import check
from icao_mtl.errors import ConfigError
from icao_mtl.synth.portrait import eye_framing, render, sample_portrait


def _eyes_in_model_input(framing, size):
    """The detected eyes in the coordinates of the square image resized to ``size``."""
    x0, y0, side = framing.crop
    k = framing.landmarks
    return [((x - x0) * size / side, (y - y0) * size / side) for x, y in (k["left_eye"], k["right_eye"])]


def _frontal_portrait():
    """A 224-px synthetic portrait with the head straight, among those MTCNN detects."""
    for index in range(40):
        p = sample_portrait(0, index, size=224)
        p.look.update(roll=0.0, yaw=0.0, pitch=0.0)
        image, _ = render(p)
        if check.detect_faces(image):
            return image
    pytest.fail("no synthetic portrait that MTCNN detects among the first 40")


def test_a_real_photo_is_aligned_so_its_eyes_fall_where_the_training_portraits_have_them():
    photo = skdata.astronaut()  # 512 x 512, the face in the upper left quarter
    framed, framing = check.frame_face(photo)
    assert framing.method == "landmarks" and framing.faces == 1 and framing.confidence > 0.95
    assert set(framing.landmarks) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}
    assert framing.cropped and framing.crop[2] == framed.shape[0] == framed.shape[1]
    fr = eye_framing()
    size = 128
    (xl, yl), (xr, yr) = _eyes_in_model_input(framing, size)
    assert math.hypot(xr - xl, yr - yl) == pytest.approx(fr["distance"][1] * size, abs=1.0)
    assert (xl + xr) / 2 == pytest.approx(fr["mid_x"][1] * size, abs=1.0)
    assert (yl + yr) / 2 == pytest.approx(fr["mid_y"][1] * size, abs=1.0)
    json.dumps(framing.__dict__)  # the report's JSON takes it as it is


def test_alignment_undoes_an_unknown_framing_of_a_portrait():
    """A training-like portrait shrunk and pasted off-centre into a larger photo: aligned, it is
    (nearly) the portrait again; taken as framed, it is not."""
    original = _frontal_portrait()
    small = cv2.resize(original, (150, 150), interpolation=cv2.INTER_AREA)
    photo = np.full((320, 420, 3), 128, np.uint8)
    photo[40:190, 230:380] = small
    framed, framing = check.frame_face(photo)
    assert framing.cropped and framing.faces == 1

    def error(img):
        back = cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
        face = (slice(50, 170), slice(60, 164))  # the face region of the portrait
        return float(np.abs(back[face] - original[face].astype(np.float32)).mean())

    as_framed, _ = check.frame_face(photo, align="none")
    # the eyes are placed at the mean framing, the portrait had its own (within the training range)
    assert error(framed) < 0.4 * error(as_framed), (error(framed), error(as_framed))
    assert error(framed) < 25


def test_a_portrait_already_in_the_training_framing_is_used_as_it_is():
    original = _frontal_portrait()
    framed, framing = check.frame_face(original)
    assert not framing.cropped and framing.faces == 1 and "already" in framing.note
    assert np.array_equal(framed, original)


def test_roll_is_measured_not_levelled():
    photo = skdata.astronaut()
    _, upright = check.frame_face(photo)
    centre = tuple(map(float, upright.landmarks["nose"]))
    turned = cv2.warpAffine(photo, cv2.getRotationMatrix2D(centre, -12, 1.0), photo.shape[1::-1],
                            borderMode=cv2.BORDER_REPLICATE)  # -12: the image's right side goes down
    framed, rolled = check.frame_face(turned)
    assert rolled.eye_roll_degrees - upright.eye_roll_degrees == pytest.approx(12, abs=3)
    # the crop is an axis-aligned square of the photo: the eye line stays tilted in what the model sees
    again = check.detect_faces(framed)[0]["keypoints"]
    (xl, yl), (xr, yr) = again["left_eye"], again["right_eye"]
    assert math.degrees(math.atan2(yr - yl, xr - xl)) - upright.eye_roll_degrees > 8


def test_without_a_face_the_photo_is_scored_as_it_is_and_the_report_says_so():
    blank = np.full((200, 150, 3), 210, np.uint8)
    framed, framing = check.frame_face(blank)
    assert framing.faces == 0 and not framing.cropped and framing.landmarks is None
    assert "no face found" in framing.note and "padded" in framing.note and framed.shape == (200, 200, 3)
    with pytest.raises(ConfigError, match="--align one of landmarks, cascade, none"):
        check.frame_face(blank, align="eyes")


def test_a_missing_detector_is_a_clear_error(monkeypatch):
    check.landmark_detector.cache_clear()
    monkeypatch.setitem(sys.modules, "mtcnn", None)
    try:
        with pytest.raises(ConfigError, match="pip install mtcnn"):
            check.frame_face(np.zeros((64, 64, 3), np.uint8))
    finally:
        check.landmark_detector.cache_clear()
