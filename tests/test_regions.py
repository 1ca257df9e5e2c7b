"""The ``regions`` approach: the eye band at full resolution beside the whole image."""

import keras
import numpy as np
import pytest

from icao_mtl.architectures import EYE_BAND_COLS, EYE_BAND_ROWS, ModelConfig, build_model
from icao_mtl.backbones import backbone_layers, last_conv_layer, set_backbone_trainable
from icao_mtl.requisites import GROUPS, IDS
from icao_mtl.synth.portrait import EYE_HH, EYE_HW, EYE_U, REFERENCE_SIZE, eye_framing, render, sample_portrait


def test_the_eye_band_holds_both_eyes_for_every_training_framing():
    fr = eye_framing()
    half = fr["distance"][2] / 2 + EYE_HW * 50 / REFERENCE_SIZE  # half the eye distance + an eye's half-width
    assert EYE_BAND_COLS[0] <= fr["mid_x"][0] - half and fr["mid_x"][2] + half <= EYE_BAND_COLS[1]
    height = 2 * EYE_HH * 50 / REFERENCE_SIZE
    assert EYE_BAND_ROWS[0] <= fr["mid_y"][0] - height and fr["mid_y"][2] + height <= EYE_BAND_ROWS[1]
    # and in rendered portraits: the renderer's own eye boxes fall inside the band
    for index in range(30):
        p = sample_portrait(0, index, size=224)
        _, regions = render(p)
        x0, y0, x1, y1 = regions["eyes"]
        if p.look["roll"] == p.look["yaw"] == p.look["pitch"] == 0 or max(abs(p.look[k]) for k in
                                                                           ("roll", "yaw", "pitch")) < 8:
            assert EYE_BAND_COLS[0] * 224 - 2 <= x0 and x1 <= EYE_BAND_COLS[1] * 224 + 2, (index, regions["eyes"])
            assert EYE_BAND_ROWS[0] * 224 - 2 <= y0 and y1 <= EYE_BAND_ROWS[1] * 224 + 2, (index, regions["eyes"])
    assert 0 < EYE_U < 1


def test_regions_model_shapes_save_load_and_trainable_parts(tmp_path):
    m = build_model(ModelConfig("regions", "small_cnn", "none"), IDS, GROUPS)
    assert tuple(m.input.shape[1:]) == (224, 224, 3)  # the default size of the approach
    crop = m.get_layer("head_eyes_crop")
    assert tuple(crop.output.shape[1:]) == (54, 104, 3)
    assert tuple(m.get_layer("small_cnn_block4_relu").output.shape[1:]) == (7, 7, 128)  # read at 112 px
    assert not any(isinstance(l, keras.layers.Lambda) for l in m.layers)
    x = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    y = m(x)
    assert set(y) == set(IDS) and all(tuple(v.shape) == (2, 2) for v in y.values())
    m.save(tmp_path / "m.keras")
    y2 = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)(x)
    for t in IDS:
        np.testing.assert_allclose(y[t], y2[t], atol=1e-6)
    # the eye branch is head: a frozen backbone leaves it trainable
    set_backbone_trainable(m, IDS, "frozen")
    assert all(l.trainable for l in m.layers if l.name.startswith("head_eyes_block"))
    assert not any(l.name.startswith("head_") for l in backbone_layers(m, IDS))
    assert last_conv_layer(m, IDS) == "small_cnn_block4_conv"


def test_the_eye_band_is_what_the_eye_branch_sees():
    """Pixels outside the band do not reach the eye branch; a pupil-sized spot inside it does."""
    m = build_model(ModelConfig("regions", "small_cnn", "none", image_size=224), ("red_eyes",), GROUPS)
    eyes = keras.Model(m.input, m.get_layer("head_eyes_gmp").output)
    x = np.full((1, 224, 224, 3), 120, np.float32)
    base = np.asarray(eyes(x))
    outside = x.copy()
    outside[0, :40] = 250  # the top rows: outside the band
    np.testing.assert_allclose(np.asarray(eyes(outside)), base, atol=1e-6)
    spot = x.copy()
    r, c = int(0.41 * 224), int(0.42 * 224)
    spot[0, r:r + 3, c:c + 3] = (230, 20, 20)  # a 3-px red pupil
    assert np.abs(np.asarray(eyes(spot)) - base).max() > 1e-3


@pytest.mark.parametrize("size", [128, 224])
def test_regions_builds_at_smaller_sizes_too(size):
    m = build_model(ModelConfig("regions", "small_cnn", "none", image_size=size), ("hat", "red_eyes"), GROUPS)
    assert tuple(m.input.shape[1:]) == (size, size, 3)


def test_the_default_run_is_regions_with_milder_shifts_unless_told_otherwise():
    from icao_mtl.config import REGIONS_AUGMENT, TrainConfig

    default = TrainConfig()
    assert default.approach == "regions" and default.model_config().resolved_size() == 224
    aug = default.augment_config()
    assert aug.width_shift == aug.height_shift == REGIONS_AUGMENT["shift"] and aug.zoom == REGIONS_AUGMENT["zoom"]
    hc2 = TrainConfig(approach="hc2").augment_config()  # the other approaches keep the reference augmentation
    assert (hc2.width_shift, hc2.zoom) == (0.1, 0.15)
    told = TrainConfig(shift=0.1, zoom=0.0).augment_config()  # given values win
    assert (told.width_shift, told.zoom) == (0.1, 0.0)
    assert TrainConfig(augment="none").augment_config().is_identity  # another preset: as it says


def test_soft_argmax_finds_a_peak_to_a_fraction_of_a_cell_and_follows_it():
    from icao_mtl.architectures import SpatialSoftArgmax

    layer = SpatialSoftArgmax()
    peak = np.full((1, 5, 9, 2), -40.0, np.float32)
    peak[0, 2, 5, 0] = 40.0  # channel 0: one cell; cell centres at -1 + 2 j / (n - 1)
    peak[0, 1, 2, 1] = peak[0, 1, 3, 1] = 40.0  # channel 1: two equal cells -> the midpoint between them
    xy = np.asarray(layer(peak))[0]
    np.testing.assert_allclose(xy, [0.25, -1 + 2.5 * 2 / 8, 0.0, -0.5], atol=1e-5)  # x_0, x_1, y_0, y_1
    # a blob moved by a third of a cell moves the keypoint by about a third of a cell, not by 0 or 1
    grid = np.arange(9, dtype=np.float32)

    def blob(centre):
        return np.broadcast_to(-((grid - centre) ** 2)[None, None, :, None], (1, 5, 9, 1)).copy()

    single = SpatialSoftArgmax()  # a layer is built for one map shape
    dx = float(np.asarray(single(blob(4 + 1 / 3)))[0, 0] - np.asarray(single(blob(4.0)))[0, 0])
    assert dx == pytest.approx(2 / 8 / 3, rel=0.05)


def test_regions_with_keypoints_builds_saves_and_loads(tmp_path):
    import icao_mtl

    m = build_model(ModelConfig("regions", "small_cnn", "none", extra={"keypoints": 4}), ("rotation",), GROUPS)
    assert tuple(m.get_layer("head_eyes_keypoint_maps").output.shape[1:]) == (27, 52, 4)
    assert tuple(m.get_layer("head_global_keypoints").output.shape[1:]) == (8,)
    x = np.random.default_rng(1).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    m.save(tmp_path / "k.keras")
    again = icao_mtl.load_model(tmp_path / "k.keras")
    np.testing.assert_allclose(np.asarray(again(x)["rotation"]), np.asarray(m(x)["rotation"]), atol=1e-6)
