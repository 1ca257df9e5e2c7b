"""Geometry as training targets: the head's pose (``pose.csv``) and face landmarks (``landmarks.csv``)
written with the synthetic set, served with the labels where each augmented image shows them, and
learnt beside the labels (``--pose-weight``, ``--landmark-weight``)."""

import dataclasses
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from icao_mtl import data
from icao_mtl.data import LANDMARK_KEY, LANDMARK_MAPS_KEY, POSE_KEY, read_dataset
from icao_mtl.data.pipeline import (_affine_params, apply_affine, apply_affine_uint8, augment_config,
                                    move_landmarks, turn_pose)
from icao_mtl.losses import GradedMultiTaskLoss, MaskedMultiTaskLoss
from icao_mtl.synth import SynthConfig, generate, portrait_landmarks, sample_portrait


def test_pose_and_landmarks_hold_the_drawn_geometry_and_are_added_to_an_older_set_without_rendering(tmp_path):
    cfg = SynthConfig(n=40, size=64, seed=5)
    root = generate(tmp_path / "set", cfg, progress=False)
    ds = read_dataset(root, check_images="exists")
    assert ds.pose.shape == (40, 3) and np.isfinite(ds.pose).all()
    look = sample_portrait(5, 7, 64).look
    np.testing.assert_allclose(ds.pose[7], [look["roll"], look["yaw"], look["pitch"]], rtol=1e-5)
    rotation = ds.tasks.index("rotation")
    # the label is a threshold on the largest absolute angle, which is the severity
    np.testing.assert_allclose(np.abs(ds.pose).max(1), ds.severities[:, rotation], rtol=1e-5)
    assert ((np.abs(ds.pose).max(1) > 8) == (ds.labels[:, rotation] == 0)).all()
    # landmarks: the eyes inside the eye boxes of regions.csv, the face's edges on the face box's sides,
    # the chin at its bottom, the mouth in the mouth box, the nose between the eyes and the mouth
    assert ds.landmarks.shape == (40, 14) and np.isfinite(ds.landmarks).all()
    np.testing.assert_allclose(ds.landmarks[7], portrait_landmarks(look).ravel() / 64, rtol=1e-5)
    boxes = np.loadtxt(root / "regions.csv", delimiter=",", skiprows=1, usecols=range(1, 13))
    face, eyes, mouth = boxes[:, 0:4], boxes[:, 4:8], boxes[:, 8:12]
    marks = ds.landmarks.reshape(40, 7, 2)
    assert (marks[:, :2, 0] > eyes[:, None, 0]).all() and (marks[:, :2, 0] < eyes[:, None, 2]).all()
    assert (marks[:, :2, 1] > eyes[:, None, 1]).all() and (marks[:, :2, 1] < eyes[:, None, 3]).all()
    assert (marks[:, 0, 0] < marks[:, 1, 0]).all() and (marks[:, 2, 0] < marks[:, 0, 0]).all()  # image-left first
    assert np.abs(marks[:, 2, 0] - face[:, 0]).max() < 0.03 and np.abs(marks[:, 3, 0] - face[:, 2]).max() < 0.03
    assert (marks[:, 5, 0] > mouth[:, 0]).all() and (marks[:, 5, 0] < mouth[:, 2]).all()
    assert (marks[:, 5, 1] > mouth[:, 1] - 0.01).all() and (marks[:, 5, 1] < mouth[:, 3] + 0.01).all()
    assert (marks[:, :2, 1].max(1) < marks[:, 4, 1]).all() and (marks[:, 4, 1] < marks[:, 5, 1]).all()
    assert (marks[:, 5, 1] < marks[:, 6, 1]).all() and (marks[:, 6, 1] <= face[:, 3] + 1e-4).all()
    assert (face[:, 3] - marks[:, 6, 1]).max() < 0.05  # the chin is the face's lowest point, roll aside
    # a set rendered before pose.csv and landmarks.csv existed gets them, the images untouched; so does a
    # set whose landmarks.csv holds fewer points (the first four, as written before the nose, mouth, chin)
    texts = {n: (root / n).read_text() for n in ("pose.csv", "landmarks.csv")}
    for n in texts:
        (root / n).unlink()
    stamp = (root / "images" / "000000.png").stat().st_mtime_ns
    generate(root, cfg, progress=False)
    assert all((root / n).read_text() == t for n, t in texts.items())
    older = "\n".join(",".join(line.split(",")[:9]) for line in texts["landmarks.csv"].splitlines()) + "\n"
    (root / "landmarks.csv").write_text(older)
    partial = read_dataset(root, check_images="exists").landmarks
    assert np.isfinite(partial[:, :8]).all() and np.isnan(partial[:, 8:]).all()  # the new points unknown, no error
    generate(root, cfg, progress=False)
    assert (root / "landmarks.csv").read_text() == texts["landmarks.csv"]
    assert (root / "images" / "000000.png").stat().st_mtime_ns == stamp
    # kept by subsets, unknown (NaN) on rows of a set without pose
    np.testing.assert_allclose(ds.subset([3, 1]).pose, ds.pose[[3, 1]])
    merged = data.splits.append_rows(ds, dataclasses.replace(ds.subset([0, 1]), pose=None, landmarks=None))
    assert merged.pose.shape == (42, 3) and np.isnan(merged.pose[40:]).all()
    assert merged.landmarks.shape == (42, 14) and np.isnan(merged.landmarks[40:]).all()


def _dots(size, points, colours):
    img = np.zeros((size, size, 3), np.float32)
    for (x, y), c in zip(points, colours):
        img[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2, c] = 255.0
    return img


def _centroid(img, channel):
    w = img[..., channel]
    ys, xs = np.mgrid[:w.shape[0], :w.shape[1]]
    return np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()


@pytest.mark.parametrize("seed", range(6))
def test_the_served_roll_is_the_angle_of_the_eye_line_in_the_augmented_image(seed):
    """Two dots stand for the eyes of a face rolled by 12 degrees (red: the face's left, u < 0; blue:
    its right). After the pipeline's warp (random flip, rotation up to 25 degrees), the angle of the
    line from the face's left eye to its right eye must be the roll :func:`turn_pose` serves; a flip
    also swaps which dot is the face's left eye."""
    size, roll, half = 96, 12.0, 18.0
    r = math.radians(roll)
    centre = np.array([48.0, 48.0])
    left = centre + half * np.array([-math.cos(r), -math.sin(r)])  # image x right, y down: roll turns clockwise
    right = centre + half * np.array([math.cos(r), math.sin(r)])
    img = _dots(size, [left, right], [0, 2])
    cfg = augment_config("none", horizontal_flip=True, rotation=25.0)
    params, _, turn = _affine_params(cfg, tf.constant([seed, 1]), size, size)
    out = apply_affine(tf.constant(img[None]), params[None], "constant").numpy()[0]
    red, blue = _centroid(out, 0), _centroid(out, 2)
    flip = float(turn[0])
    line = (blue - red) if flip > 0 else (red - blue)
    seen = math.degrees(math.atan2(line[1], line[0]))
    served = turn_pose(tf.constant([[roll, 5.0, -3.0]]), turn[None]).numpy()[0]
    assert served[0] == pytest.approx(seen, abs=1.0)
    assert served[1] == pytest.approx(5.0 * flip) and served[2] == pytest.approx(-3.0)


@pytest.mark.parametrize("warp", ["tensorflow", "opencv"])
@pytest.mark.parametrize("seed", range(6))
def test_served_landmarks_are_where_the_augmented_image_shows_the_points(seed, warp):
    """Four coloured dots at known points; after the pipeline's warp (flip, rotation, zoom, shear,
    shifts; TensorFlow's float32 warp or the OpenCV one the pipeline uses by default) their centroids
    must be where :func:`move_landmarks` puts the points, the image-left pair swapped on a flip."""
    size = 96
    points = np.array([[30.0, 40.0], [62.0, 44.0], [18.0, 38.0], [76.0, 47.0]])  # pixels, continuous
    img = np.zeros((size, size, 3), np.float32)
    for j, (x, y) in enumerate(points):  # 2 x 2 dots centred on the point: channels 0, 1, 2 and 0 + 2
        cx, cy = int(round(x)), int(round(y))
        img[cy - 1:cy + 1, cx - 1:cx + 1, [[0], [1], [2], [0, 2]][j]] = 255.0
    cfg = augment_config("reference", rotation=20.0, zoom=0.1, width_shift=0.08, height_shift=0.08)
    params, _, turn = _affine_params(cfg, tf.constant([seed, 3]), size, size)
    if warp == "opencv":
        out = apply_affine_uint8(tf.constant(img[None].astype(np.uint8)), params[None], "constant").numpy()[0]
        out = out.astype(np.float32)
    else:
        out = apply_affine(tf.constant(img[None]), params[None], "constant").numpy()[0]
    moved = move_landmarks(tf.constant(points[None] / size, tf.float32), params[None], turn[None], size).numpy()[0]
    pure = [out[..., 0] * (out[..., 2] < 1), out[..., 1], out[..., 2] * (out[..., 0] < 1), np.minimum(out[..., 0],
                                                                                                    out[..., 2])]
    seen = []
    for w in pure:
        ys, xs = np.mgrid[:size, :size]
        seen.append([(w * (xs + 0.5)).sum() / w.sum(), (w * (ys + 0.5)).sum() / w.sum()])
    seen = np.array(seen)
    if float(turn[0]) < 0:
        seen = seen[[1, 0, 3, 2]]
    np.testing.assert_allclose(moved * size, seen, atol=0.6)


def test_a_flip_swaps_left_and_right_points_and_keeps_the_central_ones():
    from icao_mtl.data import LANDMARK_POINTS
    from icao_mtl.data.manifest import LANDMARK_MIRROR

    assert len(LANDMARK_MIRROR) == len(LANDMARK_POINTS)
    assert all(LANDMARK_MIRROR[LANDMARK_MIRROR[j]] == j for j in range(len(LANDMARK_POINTS)))
    size = 64
    points = np.array([[0.4, 0.4], [0.6, 0.42], [0.3, 0.4], [0.7, 0.41], [0.52, 0.55], [0.51, 0.62], [0.5, 0.8]])
    flip = augment_config("none", horizontal_flip=True)
    for seed in range(8):
        params, _, turn = _affine_params(flip, tf.constant([seed, 0]), size, size)
        moved = move_landmarks(tf.constant(points[None], tf.float32), params[None], turn[None], size).numpy()[0]
        if float(turn[0]) > 0:
            np.testing.assert_allclose(moved, points, atol=1e-5)
            continue
        mirrored = np.stack([1.0 - points[:, 0], points[:, 1]], 1)
        np.testing.assert_allclose(moved, mirrored[list(LANDMARK_MIRROR)], atol=1e-5)
        assert moved[0, 0] < moved[1, 0] and moved[2, 0] < moved[3, 0]  # image-left first, still
        np.testing.assert_allclose(moved[4:], mirrored[4:], atol=1e-5)  # nose, mouth, chin stay themselves


def test_a_pipeline_serves_the_pose_turned_with_its_augmentation_and_plain_in_evaluation(synth_small):
    ds = read_dataset(synth_small, check_images="exists")
    pose = ds.pose
    flip_only = augment_config("none", horizontal_flip=True)
    pipe = data.ImagePipeline(ds, image_size=32, batch_size=240, augment=flip_only, pose_targets=pose, seed=1)
    (_, labels), = list(pipe.eval())
    np.testing.assert_allclose(labels[POSE_KEY].numpy(), pose, rtol=1e-6)
    served = np.concatenate([y[POSE_KEY].numpy() for _, y in pipe.train(0, shuffle=False)])
    sign = np.sign(served[:, 0] * pose[:, 0])
    np.testing.assert_allclose(served[:, :2], pose[:, :2] * sign[:, None], rtol=1e-6)  # roll and yaw flip together
    np.testing.assert_allclose(served[:, 2], pose[:, 2], rtol=1e-6)
    assert 0.3 < (sign < 0).mean() < 0.7  # about half the images flipped
    with pytest.raises(ValueError, match="pose_targets must have shape"):
        data.ImagePipeline(ds, image_size=32, batch_size=8, pose_targets=pose[:, :2])


def test_the_pose_term_is_the_huber_loss_in_tens_of_degrees_over_known_angles():
    tasks = ("rotation", "mouth")
    labels = {"rotation": tf.constant([1, 0, 1]), "mouth": tf.constant([0, 1, -1])}
    outputs = {"rotation": tf.constant([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]),
               "mouth": tf.constant([[0.7, 0.3], [0.1, 0.9], [0.5, 0.5]])}
    pred = np.array([[0.1, -0.2, 0.0], [1.5, 0.0, 0.3], [0.0, 0.0, 0.0]], np.float32)
    target = np.array([[2.0, -4.0, 1.0], [-12.0, 0.5, 3.0], [np.nan, np.nan, np.nan]], np.float32)
    plain, _ = MaskedMultiTaskLoss(tasks, 0.1)(labels, outputs)
    loss, logs = GradedMultiTaskLoss(tasks, 0.1, severity_weight=0.0, pose_weight=0.5)(
        {**labels, POSE_KEY: tf.constant(target)}, {**outputs, POSE_KEY: tf.constant(pred)})
    err = np.abs(pred[:2] - target[:2] / 10.0)
    huber = np.where(err <= 1, 0.5 * err ** 2, err - 0.5)
    expected = huber.mean(0).sum()  # per axis over the two known rows, summed over the axes
    assert float(logs["pose_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(loss) == pytest.approx(float(plain) + 0.5 * expected, rel=1e-5)
    assert float(logs["loss"]) == pytest.approx(float(plain), rel=1e-6)
    # evaluation labels carry no pose: the plain loss
    loss, logs = GradedMultiTaskLoss(tasks, 0.1, pose_weight=0.5)(labels, {**outputs, POSE_KEY: tf.constant(pred)})
    assert float(loss) == pytest.approx(float(plain)) and "pose_loss" not in logs


def test_the_heat_map_term_is_the_cross_entropy_to_a_gaussian_of_one_cell_around_each_known_point():
    rng = np.random.default_rng(0)
    xs, ys = np.linspace(0.3, 0.7, 6).astype("float32"), np.linspace(0.3, 0.5, 4).astype("float32")
    logits = rng.normal(0, 2, (3, 4, 6, 2)).astype("float32")  # (batch, H, W, points)
    target = np.array([[0.41, 0.55, 0.33, 0.47], [0.62, 0.38, 0.45, 0.31], [np.nan, 0.5, np.nan, 0.4]], "float32")
    fn = GradedMultiTaskLoss(("rotation",), 0.1, landmark_weight=0.2, landmark_grid=(xs, ys))
    labels = {"rotation": tf.constant([1, 0, 1]), LANDMARK_KEY: tf.constant(target)}
    outputs = {"rotation": tf.constant([[0.3, 0.7]] * 3), LANDMARK_KEY: tf.constant(np.full((3, 4), 0.5, "float32")),
               LANDMARK_MAPS_KEY: tf.constant(logits)}
    _, logs = fn(labels, outputs)
    sigma = xs[1] - xs[0]
    expected = 0.0
    for k in range(2):
        ces = []
        for i in range(3):
            tx, ty = target[i, k], target[i, 2 + k]
            if np.isnan(tx):
                continue
            dist = np.exp(-((ys[:, None] - ty) ** 2 + (xs[None, :] - tx) ** 2) / (2 * sigma ** 2))
            dist /= dist.sum()
            z = logits[i, :, :, k]
            logp = z - np.log(np.exp(z - z.max()).sum()) - z.max()
            ces.append(-(dist * logp).sum())
        expected += np.mean(ces)
    assert float(logs["landmark_map_loss"]) == pytest.approx(expected, rel=1e-5)


def test_a_run_with_pose_learns_the_angles_and_saves_a_model_of_the_tasks_only(tmp_path, synth_small):
    import icao_mtl
    from icao_mtl import train

    out = tmp_path / "run"
    args = ["--data", str(synth_small), "--approach", "hc2", "--img-size", "48", "--epochs", "4", "--quiet",
            "--check-images", "none", "--tasks", "rotation,blurred", "--pose-weight", "1", "--lr", "3e-3"]
    assert train.main([*args, "--out", str(out)]) == 0
    model = icao_mtl.load_model(out / "model.keras")
    assert sorted(model.output_names) == ["blurred", "rotation"]
    history = json.loads((out / "history.json").read_text())["hc2"]
    assert all(e["pose_loss"] > 0 for e in history)
    assert history[-1]["pose_loss"] < history[0]["pose_loss"]
    # STL: the rotation model regresses the pose, the other trains without it
    stl = tmp_path / "stl"
    assert train.main([*args, "--approach", "stl", "--epochs", "1", "--out", str(stl)]) == 0
    history = json.loads((stl / "history.json").read_text())
    assert "pose_loss" in history["rotation"][0] and "pose_loss" not in history["blurred"][0]


def test_landmark_outputs_place_the_soft_argmax_on_the_whole_image_and_rotation_reads_the_pose():
    import keras

    from icao_mtl.architectures import (ModelConfig, build_model, landmark_grid, task_outputs, with_landmark_outputs,
                                        with_pose_outputs)

    size = 224
    model = build_model(ModelConfig(approach="regions", image_size=size, extra={"landmarks": 7}),
                        ("rotation", "eyes_closed"))
    trained = with_pose_outputs(with_landmark_outputs(model))
    maps = trained.get_layer("head_geometry_landmark_maps")
    maps.set_weights([np.zeros_like(w) for w in maps.get_weights()])  # a flat map: every point at its centre
    image = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    out = trained({"image": image})
    points = out[LANDMARK_KEY].numpy()
    assert points.shape == (2, 14) and out[POSE_KEY].shape == (2, 3)
    np.testing.assert_allclose(points, 0.5, atol=0.5 / size)
    # the soft arg-max's -1 and 1 are the centres of the first and last of 28 cells of 8 px
    xs, ys = landmark_grid(trained)
    assert xs.shape == (28,) and ys.shape == (28,)
    np.testing.assert_allclose(xs[[0, -1]], [4 / size, 220 / size], rtol=1e-6)
    np.testing.assert_allclose(ys, xs)
    ends = trained.get_layer("head_landmarks")(np.array([[-1.0] * 14, [1.0] * 14], "float32")).numpy()
    np.testing.assert_allclose(ends[:, 0], xs[[0, -1]], rtol=1e-6)
    np.testing.assert_allclose(ends[:, 7], ys[[0, -1]], rtol=1e-6)
    assert trained.output[LANDMARK_MAPS_KEY].shape[1:] == (28, 28, 7)
    # the pose is the geometry branch's (no second regression), and rotation's head reads only its
    # positive and negative parts; the other heads read the appearance features
    assert trained.get_layer("head_geometry_pose").output is trained.output[POSE_KEY]
    assert "head_pose" not in [layer.name for layer in trained.layers]
    assert trained.get_layer("head_rotation_dense_1").input.shape[-1] == 6
    assert trained.get_layer("head_eyes_closed_dense_1").input.shape[-1] > 1000
    pose = trained.get_layer("head_geometry_pose").output
    parts = keras.Model(trained.inputs, [pose, trained.get_layer("head_geometry_pose_parts").output])(image)
    np.testing.assert_allclose(parts[1].numpy(), np.concatenate([np.maximum(parts[0], 0), np.maximum(-parts[0], 0)], 1))
    assert sorted(task_outputs(trained, ("rotation", "eyes_closed")).output_names) == ["eyes_closed", "rotation"]
    # Grad-CAM explains rotation on the branch it reads (the backbone does not reach its head)
    from icao_mtl import gradcam

    assert gradcam.default_layer(model, "rotation") == "head_geometry_landmark_maps"
    assert gradcam.default_layer(model, "eyes_closed") == gradcam.default_layer(model)
    fresh = build_model(ModelConfig(approach="regions", image_size=size, extra={"landmarks": 7}), ("rotation",))
    assert gradcam.compute(fresh, image[:1], "rotation").max() > 0
    with pytest.raises(Exception, match="regions approach built with landmarks"):
        with_landmark_outputs(build_model(ModelConfig(approach="hc2", image_size=64), ("rotation",)))
    # without the geometry branch, the pose is a regression from rotation's hidden layer
    plain = with_pose_outputs(build_model(ModelConfig(approach="hc2", image_size=64), ("rotation",)))
    assert plain.get_layer("head_pose").input is plain.get_layer("rotation").input


def test_the_geometry_branch_starts_from_the_small_cnns_second_block_by_default():
    """--geometry-trunk: "auto" (the default) gives the small CNN's geometry branch the small CNN's
    second block as its first two layers (the same 56 x 56 x 32 map its own two layers make at 224 px),
    20 M fewer multiply-adds an image; the maps, the grid and what Grad-CAM explains stay the same."""
    from icao_mtl import gradcam
    from icao_mtl.architectures import ModelConfig, build_model, landmark_grid, resolve_geometry_trunk
    from icao_mtl.errors import ConfigError
    from nas.common.madds import model_madds

    size, tasks = 224, ("rotation", "eyes_closed")
    models = {trunk: build_model(ModelConfig(approach="regions", image_size=size,
                                             extra={"landmarks": 7, **({"geometry_trunk": trunk} if trunk else {})}),
                                 tasks) for trunk in (None, "shared", "own")}
    shared, own = models["shared"], models["own"]
    assert [l.name for l in models[None].layers] == [l.name for l in shared.layers]
    assert shared.get_layer("head_geometry_block2_conv").input is shared.get_layer("small_cnn_block1_pool").output
    assert not {"head_geometry_block0_conv", "head_geometry_block1_conv"} & {l.name for l in shared.layers}
    # own: a 3x3 convolution 3 -> 16 at 112 x 112 and 16 -> 32 at 56 x 56
    assert model_madds(own) - model_madds(shared) == 112 * 112 * 27 * 16 + 56 * 56 * 144 * 32
    for m in (shared, own):
        assert m.get_layer("head_geometry_landmark_maps").output.shape[1:] == (28, 28, 7)
        np.testing.assert_allclose(landmark_grid(m)[0], landmark_grid(own)[0])
        assert gradcam.default_layer(m, "rotation") == "head_geometry_landmark_maps"
        assert gradcam.default_layer(m, "eyes_closed") == gradcam.default_layer(m) == "small_cnn_block4_conv"
    image = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    assert gradcam.compute(shared, image, "rotation").max() > 0
    # "auto" shares only where the maps are the same cell for cell, and not with a loaded (frozen) small CNN
    for side in (64, 96, 128, 160, 224, 256, 320):
        assert resolve_geometry_trunk("auto", "small_cnn", side) == "shared"
    for side in (100, 192, 230, 336, 448):
        assert resolve_geometry_trunk("auto", "small_cnn", side) == "own"
        with pytest.raises(ConfigError, match=f"at {side} px .* Fix: --geometry-trunk own"):
            resolve_geometry_trunk("shared", "small_cnn", side)
    assert resolve_geometry_trunk("auto", "small_cnn", 224, pretrained=True) == "own"
    assert resolve_geometry_trunk("auto", "mobilenet_v2", 224) == "own"
    with pytest.raises(ConfigError, match="Fix: --geometry-trunk own"):
        resolve_geometry_trunk("shared", "mobilenet_v2", 224)
    with pytest.raises(ConfigError, match="geometry_trunk must be one of auto, shared, own"):
        resolve_geometry_trunk("first", "small_cnn", 224)
    at_448 = build_model(ModelConfig(approach="regions", image_size=448, extra={"landmarks": 7}), ("rotation",))
    assert "head_geometry_block0_conv" in {l.name for l in at_448.layers}
    assert landmark_grid(at_448)[0].shape == (28,)


def test_the_default_weights_train_geometry_where_the_data_has_it(synth_small, tmp_path):
    """--landmark-weight and --pose-weight default to None: the regions approach on data with
    landmarks.csv, pose.csv and rotation gets the geometry branch; other approaches, other tasks and
    data without the files train without it, refused by nothing."""
    import shutil

    from icao_mtl.config import GEOMETRY_DEFAULTS, TrainConfig

    train = read_dataset(synth_small, check_images="exists")
    cfg = TrainConfig()
    assert cfg.landmark_weight is None and cfg.pose_weight is None
    chosen = cfg.with_geometry(train)
    assert (chosen.landmark_weight, chosen.pose_weight) == (GEOMETRY_DEFAULTS["landmark_weight"],
                                                            GEOMETRY_DEFAULTS["pose_weight"])
    assert chosen.model_config().extra["landmarks"] == 7
    for other in (TrainConfig(approach="hc2").with_geometry(train),
                  cfg.with_geometry(read_dataset(synth_small, tasks=["blurred", "light"], check_images="exists"))):
        assert (other.landmark_weight, other.pose_weight) == (0.0, 0.0)
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("labels.csv", "meta.json"):
        shutil.copy(synth_small / name, bare / name)
    (bare / "images").symlink_to(synth_small / "images")
    assert cfg.with_geometry(read_dataset(bare, check_images="exists")).landmark_weight == 0.0
    given = TrainConfig(landmark_weight=0.05, pose_weight=0.0).with_geometry(train)
    assert (given.landmark_weight, given.pose_weight) == (0.05, 0.0)


def test_a_run_with_landmarks_learns_where_the_points_are(tmp_path, synth_small):
    import icao_mtl
    from icao_mtl import train

    out = tmp_path / "run"
    assert train.main(["--data", str(synth_small), "--approach", "regions", "--epochs", "5", "--quiet",
                       "--check-images", "none", "--tasks", "rotation,eyes_closed", "--lr", "3e-3",
                       "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["landmark_weight"] > 0 and config["pose_weight"] > 0  # the defaults, decided from the data
    history = json.loads((out / "history.json").read_text())["regions"]
    assert history[-1]["landmark_loss"] < 0.6 * history[0]["landmark_loss"]
    assert history[-1]["landmark_map_loss"] < history[0]["landmark_map_loss"]
    assert history[-1]["pose_loss"] < history[0]["pose_loss"]
    model = icao_mtl.load_model(out / "model.keras")
    assert sorted(model.output_names) == ["eyes_closed", "rotation"]
    assert model.get_layer("head_geometry_landmarks") is not None  # the points stay what the pose is read from
    # resuming the run with the same command (the weights left to their default) is the same configuration
    from icao_mtl.config import TrainConfig
    from icao_mtl.runs import check_resumable

    check_resumable(out, TrainConfig(data=str(synth_small), approach="regions", epochs=5, check_images="none",
                                     tasks=["rotation", "eyes_closed"], lr=3e-3, out=str(out)))
    # check reports where the branch puts the points and the pose it reads, in the photo's pixels
    from icao_mtl import check
    from icao_mtl.architectures import with_landmark_outputs, with_pose_outputs
    from icao_mtl.data.manifest import LANDMARK_POINTS

    ds = read_dataset(synth_small, check_images="none")
    photos = [ds.paths[i] for i in range(4)]
    reports = check.check_photos(out, photos, align="none")
    import cv2

    size = int(model.inputs[0].shape[1])  # 224: the regions model's size, the 96-px portraits resized to it
    images = np.stack([cv2.resize(check.load_photo(p), (size, size), interpolation=cv2.INTER_AREA)
                       for p in photos]).astype(np.float32)
    served = with_landmark_outputs(model).predict(images, verbose=0)[LANDMARK_KEY]
    turned = with_pose_outputs(with_landmark_outputs(model)).predict(images, verbose=0)[POSE_KEY] * 10
    for i, report in enumerate(reports):
        assert report.ok and list(report.geometry["points"]) == list(LANDMARK_POINTS)
        fractions = np.array([report.geometry["points_in_model_input"][p] for p in LANDMARK_POINTS])
        # the points the branch located, in landmarks.csv's order, rows (x, y)
        np.testing.assert_allclose(fractions, np.stack([served[i, :7], served[i, 7:]], 1), atol=1e-4)
        found = np.array([report.geometry["points"][p] for p in LANDMARK_POINTS])
        np.testing.assert_allclose(found, fractions * 96, atol=0.1)  # in the 96-px photo's pixels
        pose = report.geometry["pose_degrees"]
        np.testing.assert_allclose([pose["roll"], pose["yaw"], pose["pitch"]], turned[i], atol=0.01)
    assert "head pose (the model's geometry branch): roll" in check.format_report(reports[0])
    # a run trained without the pose term has the layer only as a feature of the rotation head: no angles
    import shutil

    no_pose = tmp_path / "no_pose"
    shutil.copytree(out, no_pose)
    config["pose_weight"] = 0.0
    (no_pose / "config.json").write_text(json.dumps(config))
    bare = check.check_photos(no_pose, photos[:1], align="none")[0]
    assert "pose_degrees" not in bare.geometry and bare.geometry["points"] == reports[0].geometry["points"]
    assert "head pose" not in check.format_report(bare)
    # evaluate, analyze (Grad-CAM of rotation on the branch), check and export read the run
    from _run_dir_commands import exercise_run_dir_commands

    exercise_run_dir_commands(out, photos[0], "rotation", tmp_path)


def test_points_of_the_model_input_are_mapped_back_to_the_photo():
    from icao_mtl.check import Framing, framed_to_photo

    cropped = Framing(faces=1, cropped=True, crop=[-20, 30, 200])  # the square went past the left edge
    assert framed_to_photo(cropped, (400, 300, 3), 0.5, 0.25) == (80.0, 80.0)
    wide = Framing(faces=0, cropped=False, padded=True)  # 100 x 160: 30 rows added above, 30 below
    assert framed_to_photo(wide, (100, 160, 3), 0.5, 0.5) == (80.0, 50.0)
    tall = Framing(faces=0, cropped=False, padded=True)  # 160 x 100: 30 columns added on each side
    assert framed_to_photo(tall, (160, 100, 3), 0.0, 1.0) == (-30.0, 160.0)
    assert framed_to_photo(Framing(faces=-1, cropped=False), (96, 96, 3), 0.25, 0.75) == (24.0, 72.0)


def test_pose_weight_is_refused_before_training_without_pose_or_without_rotation(tmp_path, synth_small, data_root,
                                                                                  monkeypatch, capsys):
    import shutil

    from icao_mtl import train

    no_pose = tmp_path / "no_pose"
    no_pose.mkdir()
    for name in ("labels.csv", "meta.json", "severities.csv"):
        shutil.copy(synth_small / name, no_pose / name)
    (no_pose / "images").symlink_to(synth_small / "images")
    common = ["--approach", "hc2", "--pose-weight", "0.5", "--epochs", "1", "--quiet", "--check-images", "none"]
    assert train.main(["--data", str(no_pose), *common, "--out", str(tmp_path / "a")]) == 2
    assert "has no pose.csv" in capsys.readouterr().err
    assert train.main(["--data", str(synth_small), *common, "--tasks", "blurred,light", "--out", str(tmp_path / "b")]) == 2
    assert "'rotation' is not among the tasks" in capsys.readouterr().err
    monkeypatch.setenv("ICAO_MTL_DATA", str(data_root))
    assert train.main(["--data", "digits", *common, "--out", str(tmp_path / "c")]) == 2
    assert "'rotation' is not among the tasks" in capsys.readouterr().err
    marks = ["--landmark-weight", "0.1", "--epochs", "1", "--quiet", "--check-images", "none"]
    assert train.main(["--data", str(no_pose), "--approach", "regions", *marks, "--out", str(tmp_path / "d")]) == 2
    assert "has no landmarks.csv" in capsys.readouterr().err
    assert train.main(["--data", str(synth_small), "--approach", "hc2", *marks, "--out", str(tmp_path / "e")]) == 2
    assert "'hc2' has none" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abcde")
