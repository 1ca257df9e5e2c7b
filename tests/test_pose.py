"""The head's pose as a training target: ``pose.csv`` written with the synthetic set, served with the
labels as each augmented image shows it, and regressed beside ``rotation`` (``--pose-weight``)."""

import dataclasses
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from icao_mtl import data
from icao_mtl.data import POSE_KEY, read_dataset
from icao_mtl.data.pipeline import _affine_params, apply_affine, augment_config, turn_pose
from icao_mtl.losses import GradedMultiTaskLoss, MaskedMultiTaskLoss
from icao_mtl.synth import SynthConfig, generate, sample_portrait


def test_pose_csv_holds_the_drawn_angles_and_is_added_to_an_older_set_without_rendering(tmp_path):
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
    # a set rendered before pose.csv existed gets it, the images untouched
    text = (root / "pose.csv").read_text()
    (root / "pose.csv").unlink()
    stamp = (root / "images" / "000000.png").stat().st_mtime_ns
    generate(root, cfg, progress=False)
    assert (root / "pose.csv").read_text() == text
    assert (root / "images" / "000000.png").stat().st_mtime_ns == stamp
    # kept by subsets, unknown (NaN) on rows of a set without pose
    np.testing.assert_allclose(ds.subset([3, 1]).pose, ds.pose[[3, 1]])
    merged = data.splits.append_rows(ds, dataclasses.replace(ds.subset([0, 1]), pose=None))
    assert merged.pose.shape == (42, 3) and np.isnan(merged.pose[40:]).all()


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
    assert not any((tmp_path / d).exists() for d in "abc")
