"""Graded targets: the severity behind each label, read from ``severities.csv`` and regressed beside
the label (``--severity-weight``)."""

import json

import cv2
import numpy as np
import pytest
import tensorflow as tf

from icao_mtl import data
from icao_mtl.data import SEVERITY_KEY, DatasetError, read_dataset
from icao_mtl.losses import GradedMultiTaskLoss, MaskedMultiTaskLoss, severity_targets

TASKS = ("blurred", "light")


def _dataset(root, severities: str | None, meta: dict | None = None, n: int = 6):
    (root / "images").mkdir(parents=True)
    rows = ["image," + ",".join(TASKS)]
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"{i}.png"), np.full((8, 8, 3), 30 * i, np.uint8))
        rows.append(f"{i}.png,{i % 2},{1 - i % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "meta.json").write_text(json.dumps({"tasks": list(TASKS), **(meta or {})}))
    if severities is not None:
        (root / "severities.csv").write_text(severities)
    return root


def test_severities_are_read_by_name_kept_by_subsets_and_unknown_where_missing(tmp_path):
    # rows in another order than labels.csv, image 5 absent, an empty cell, an extra column
    text = "image,light,blurred,other\n1.png,0.1,0.5,9\n0.png,0.9,2.5,9\n2.png,,1.0,9\n3.png,0.2,0.2,9\n4.png,1,3,9\n"
    ds = read_dataset(_dataset(tmp_path / "d", text), check_images="exists")
    s = ds.severities
    assert s.shape == (6, 2) and s.dtype == np.float32
    np.testing.assert_allclose(s[0], [2.5, 0.9])
    np.testing.assert_allclose(s[1], [0.5, 0.1])
    assert np.isnan(s[2, 1]) and s[2, 0] == 1.0
    assert np.isnan(s[5]).all()
    np.testing.assert_allclose(ds.subset([4, 0]).severities, s[[4, 0]])
    assert read_dataset(_dataset(tmp_path / "none", None), check_images="exists").severities is None


def test_a_malformed_severities_file_names_the_cell_and_the_fix(tmp_path):
    bad = _dataset(tmp_path / "bad", "image,blurred,light\n0.png,high,0.1\n")
    with pytest.raises(DatasetError, match=r"(?s)not numbers.*row 2 \(image '0.png'\), column 'blurred': 'high'.*Fix"):
        read_dataset(bad, check_images="exists")
    headless = _dataset(tmp_path / "headless", "name,blurred\n0.png,1\n")
    with pytest.raises(DatasetError, match="no 'image' column.*Fix"):
        read_dataset(headless, check_images="exists")


def test_thresholds_from_meta_or_between_the_classes_and_targets_centred_on_them(tmp_path):
    # labels: blurred = i % 2 (odd rows compliant), light = 1 - i % 2
    text = "image,blurred,light\n" + "".join(f"{i}.png,{[3.0, 1.0][i % 2] + 0.05 * i},{[0.2, 0.9][i % 2]}\n"
                                             for i in range(6))
    ds = read_dataset(_dataset(tmp_path / "d", text, meta={"thresholds": {"blurred": 1.5}}), check_images="exists")
    thr = ds.thresholds()
    assert thr[0] == pytest.approx(1.5)  # from meta.json
    assert thr[1] == pytest.approx(0.55)  # light: compliant at most 0.2, non-compliant from 0.9
    z = severity_targets(ds)
    assert (np.sign(z[:, 0]) == np.where(ds.labels[:, 0] == 0, 1, -1)).all()  # positive on the non-compliant side
    np.testing.assert_allclose(z[:, 0], (ds.severities[:, 0] - 1.5) / ds.severities[:, 0].std(), rtol=1e-5)
    half = ds.subset([0, 1, 2])
    np.testing.assert_allclose(severity_targets(half, reference=ds), z[:3], rtol=1e-6)  # scaled as the reference


def test_the_graded_loss_is_the_masked_loss_plus_a_huber_term_over_known_targets():
    tasks = ("a", "b", "c")
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, (8, 3)).astype(np.float32)
    outputs = {t: tf.constant(np.stack([1 - p[:, j], p[:, j]], 1)) for j, t in enumerate(tasks)}
    labels = {t: tf.constant(rng.integers(-1, 2, 8), tf.int32) for t in tasks}
    pred = rng.normal(0, 2, (8, 3)).astype(np.float32)
    target = rng.normal(0, 1, (8, 3)).astype(np.float32)
    target[[0, 3, 5], 1] = np.nan
    target[:, 2] = np.nan  # a task with no known severity adds nothing
    outputs[SEVERITY_KEY] = tf.constant(pred)
    plain, plain_logs = MaskedMultiTaskLoss(tasks, 0.1)(labels, outputs)
    loss, logs = GradedMultiTaskLoss(tasks, 0.1, severity_weight=0.3)(labels, outputs)  # no targets: plain
    assert float(loss) == pytest.approx(float(plain))
    loss, logs = GradedMultiTaskLoss(tasks, 0.1, severity_weight=0.3)({**labels, SEVERITY_KEY: tf.constant(target)},
                                                                      outputs)
    err = np.abs(pred - target)
    huber = np.where(err <= 1, 0.5 * err ** 2, err - 0.5)
    expected = sum(np.nanmean(huber[:, j]) for j in range(2))
    assert float(logs["severity_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(logs["loss"]) == pytest.approx(float(plain), rel=1e-6)  # what the progress line compares
    assert float(loss) == pytest.approx(float(plain) + 0.3 * expected, rel=1e-5)
    np.testing.assert_allclose(logs["ce"], plain_logs["ce"])


def test_a_run_with_severities_saves_a_model_of_the_tasks_only(tmp_path, synth_small):
    import icao_mtl
    from icao_mtl import train

    out = tmp_path / "run"
    args = ["--data", str(synth_small), "--approach", "hc2", "--img-size", "32", "--epochs", "2", "--quiet",
            "--check-images", "none", "--tasks", "blurred,light,washed_out", "--severity-weight", "0.2"]
    assert train.main([*args, "--out", str(out)]) == 0
    model = icao_mtl.load_model(out / "model.keras")
    assert sorted(model.output_names) == ["blurred", "light", "washed_out"]
    history = json.loads((out / "history.json").read_text())["hc2"]
    assert all(e["severity_loss"] > 0 for e in history)
    # STL: one model per requisite, each regressing its own severity column
    stl = tmp_path / "stl"
    assert train.main([*args, "--approach", "stl", "--tasks", "blurred,light", "--epochs", "1", "--out", str(stl)]) == 0
    assert sorted(p.stem for p in (stl / "models").glob("*.keras")) == ["blurred", "light"]


def test_severity_weight_without_severities_is_refused_before_training(tmp_path, data_root, monkeypatch, capsys):
    from icao_mtl import train

    monkeypatch.setenv("ICAO_MTL_DATA", str(data_root))
    code = train.main(["--data", "digits", "--approach", "hc2", "--severity-weight", "0.2", "--epochs", "1",
                       "--quiet", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "no usable severities.csv" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
