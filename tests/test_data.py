import json

import cv2
import numpy as np
import pytest

from icao_mtl import data
from icao_mtl.data import ColumnMapping, DatasetError, read_dataset
from icao_mtl.requisites import IDS


def _make(root, rows, header=None, n_images=None, ext="png"):
    """A dataset with the 23 requisites; ``rows`` are label lists (or full CSV lines as str)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    header = header if header is not None else "image," + ",".join(IDS)
    lines = [header] if header else []
    for i, r in enumerate(rows):
        lines.append(r if isinstance(r, str) else f"{i:03d}.{ext}," + ",".join(str(v) for v in r))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    for i in range(len(rows) if n_images is None else n_images):
        img = np.full((20, 24, 3), 40 * (i % 6), np.uint8)
        cv2.imwrite(str(root / "images" / f"{i:03d}.{ext}"), img)
    return root


def _ok_rows(n=6):
    return [[1] * 23 if i % 2 else [0] * 23 for i in range(n)]


def test_reads_a_valid_dataset_and_summarises(tmp_path):
    ds = read_dataset(_make(tmp_path / "d", _ok_rows()))
    assert len(ds) == 6 and ds.tasks == IDS and ds.labels.dtype == np.int8
    assert ds.report.rows_read == ds.report.rows_kept == 6
    assert "6 rows read, 6 kept" in ds.report.summary()


@pytest.mark.parametrize("case, match", [
    ("no_dir", "not found"),
    ("no_csv", "labels.csv not found"),
    ("empty_csv", "is empty"),
    ("header_only", "no rows"),
    ("headerless", "no header"),
    ("no_image_col", "no image column 'image'"),
    ("duplicates", r"(?s)duplicate image name.*'001.png' in rows 3 and 4"),
    ("unknown_col", r"not tasks of this dataset: \['hats'\]"),
    ("missing_col", r"lacks the task columns \['red_eyes'\]"),
    ("bad_label", r"row 3 \(image '001.png'\), column 'mouth': '2'"),
    ("missing_file", r"missing:\n  row 7: '005.png'"),
    ("corrupt", r"(?s)cannot be decoded.*002.png"),
    ("truncated", r"(?s)cannot be decoded.*003.png"),
    ("bad_ext", r"(?s)unsupported type.*'000.tif'"),
    ("tiff_named_jpg", r"(?s)cannot be decoded.*001.jpg"),  # PIL opens it; TensorFlow, which trains, cannot
    ("bad_split", r"split column 'split' are not train / val / test"),
])
def test_bad_input_gives_an_error_naming_the_place_and_the_fix(tmp_path, case, match):
    root = tmp_path / "d"
    rows = _ok_rows()
    if case == "no_dir":
        root = tmp_path / "nowhere"
    elif case == "no_csv":
        _make(root, rows)
        (root / "labels.csv").unlink()
    elif case == "empty_csv":
        _make(root, rows)
        (root / "labels.csv").write_text("")
    elif case == "header_only":
        _make(root, [], n_images=0)
    elif case == "headerless":
        _make(root, rows, header="")
    elif case == "no_image_col":
        _make(root, rows, header="file," + ",".join(IDS))
    elif case == "duplicates":
        _make(root, [f"{i:03d}.png," + ",".join(["1"] * 23) for i in (0, 1, 1, 2)])
    elif case == "unknown_col":
        _make(root, [r + [1] for r in rows], header="image," + ",".join(IDS) + ",hats")
    elif case == "missing_col":
        _make(root, [r[:-1] for r in rows], header="image," + ",".join(IDS[:-1]))
    elif case == "bad_label":
        rows[1][0] = 2
        _make(root, rows)
    elif case == "missing_file":
        _make(root, rows, n_images=5)
    elif case == "corrupt":
        _make(root, rows)
        (root / "images/002.png").write_bytes(b"this is not a png file at all")
    elif case == "truncated":
        _make(root, rows)
        big = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images/003.png"), big)
        full = (root / "images/003.png").read_bytes()
        (root / "images/003.png").write_bytes(full[: len(full) // 2])
    elif case == "bad_ext":
        _make(root, rows, ext="tif")
    elif case == "tiff_named_jpg":
        _make(root, rows, ext="jpg")
        ok, tiff = cv2.imencode(".tif", np.zeros((20, 24, 3), np.uint8))
        (root / "images/001.jpg").write_bytes(tiff.tobytes())
    elif case == "bad_split":
        _make(root, [f"{i:03d}.png," + ",".join(["1"] * 23) + ",training2" for i in range(3)],
              header="image," + ",".join(IDS) + ",split")
    with pytest.raises(DatasetError, match=match) as err:
        read_dataset(root)
    assert "Fix: " in str(err.value)


def test_column_mapping_renames_recodes_and_refuses_no_answer_rows_with_a_count(tmp_path):
    root = tmp_path / "fvc"
    (root / "images").mkdir(parents=True)
    header = "file,MouthOpen,Blurred,subject"
    rows = ["a.png,1,0,s1", "b.png,-99,1,s2", "c.png,2,1,s3", "d.png,0,-99,s4", "e.png,1,1,s5"]
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    for n in "abcde":
        cv2.imwrite(str(root / "images" / f"{n}.png"), np.zeros((8, 8, 3), np.uint8))
    mapping = ColumnMapping(image="file", columns={"MouthOpen": "mouth", "Blurred": "blurred"},
                            values={-99: None, 2: -1}, ignore=("subject",))
    ds = read_dataset(root, tasks=["mouth", "blurred"], mapping=mapping)
    assert ds.names == ["a.png", "c.png", "e.png"]
    assert ds.labels.tolist() == [[1, 0], [-1, 1], [1, 1]]
    assert ds.report.rows_read == 5 and ds.report.rows_kept == 3
    assert "2 with no answer" in ds.report.summary()
    # Without mapping the same file is refused, naming the problem.
    with pytest.raises(DatasetError, match="no image column 'image'"):
        read_dataset(root, tasks=["mouth", "blurred"])


def test_mapping_file_round_trip(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"image": "file", "columns": {"A": "mouth"}, "values": {"-99": null, "2.0": -1}}')
    m = ColumnMapping.from_json(path)
    assert m.image == "file" and m.values == {"-99": None, "2": -1}
    path.write_text('{"colums": {}}')
    with pytest.raises(DatasetError, match="unknown keys"):
        ColumnMapping.from_json(path)


def test_split_proportions_and_stratification(synth_small):
    ds = read_dataset(synth_small)
    sp = data.split_dataset(ds, seed=0)
    sizes = np.array([len(sp.train), len(sp.val), len(sp.test)])
    assert np.allclose(sizes / len(ds), [0.75, 0.15, 0.10], atol=0.02)
    assert sorted(sp.train.names + sp.val.names + sp.test.names) == sorted(ds.names)
    for j, t in enumerate(ds.tasks):
        total = (ds.labels[:, j] == 0).sum()
        if total >= 20:
            share = np.array([(part.labels[:, j] == 0).sum() for part in (sp.train, sp.val, sp.test)]) / total
            assert np.allclose(share, [0.75, 0.15, 0.10], atol=0.07), (t, share)
    again = data.split_dataset(ds, seed=0)
    assert again.test.names == sp.test.names
    assert data.split_dataset(ds, seed=1).test.names != sp.test.names


def test_split_warns_when_a_split_lacks_non_compliant_examples(tmp_path):
    rows = [[1] * 23 for _ in range(20)]
    rows[0][5] = 0  # one non-compliant 'hat' image: two splits will have none
    sp = data.split_dataset(read_dataset(_make(tmp_path / "d", rows)), seed=0)
    assert sum("'hat' has no non-compliant example" in w for w in sp.report.warnings) == 2
    assert "warning" in sp.report.summary()


def test_split_column_is_used_when_present(tmp_path):
    lines = [f"{i:03d}.png," + ",".join(["1" if i % 2 else "0"] * 23) + "," + ("train", "val", "test")[i % 3]
             for i in range(9)]
    ds = read_dataset(_make(tmp_path / "d", lines, header="image," + ",".join(IDS) + ",split"))
    sp = data.split_dataset(ds)
    assert sp.report.source == "column" and sp.test.names == ["002.png", "005.png", "008.png"]


def test_augmentation_only_in_training_and_deterministic_per_epoch(synth_small):
    ds = read_dataset(synth_small)
    aug = data.augment_config("paper")
    pipe = data.ImagePipeline(ds, 64, 16, augment=aug, seed=0)
    raw = pipe.images().astype(np.float32)
    ev = np.concatenate([x.numpy() for x, _ in pipe.eval()])
    np.testing.assert_array_equal(ev, raw)  # validation / test: no augmentation, file order
    labels = {t: np.concatenate([y[t].numpy() for _, y in pipe.eval()]) for t in ds.tasks}
    for j, t in enumerate(ds.tasks):
        np.testing.assert_array_equal(labels[t], ds.labels[:, j])
    plain = data.ImagePipeline(ds, 64, 16, augment=None, seed=0)
    a = np.concatenate([x.numpy() for x, _ in pipe.train(epoch=2)])
    b = np.concatenate([x.numpy() for x, _ in pipe.train(epoch=2)])
    c = np.concatenate([x.numpy() for x, _ in plain.train(epoch=2)])
    np.testing.assert_array_equal(a, b)  # the same epoch is the same data (resume-safe)
    assert np.abs(a - c).mean() > 5  # augmentation changed the training images
    order = [x for x, _ in pipe.train(epoch=3)]
    assert not np.array_equal(np.concatenate([o.numpy() for o in order]), a)  # another epoch differs
    # The shuffled, augmented training set keeps images and labels together.
    for x, y in plain.train(epoch=0).take(1):
        first = x.numpy()[0]
        match = np.flatnonzero(np.all(raw == first, axis=(1, 2, 3)))[0]
        assert all(int(y[t][0]) == ds.labels[match, j] for j, t in enumerate(ds.tasks))


@pytest.mark.parametrize("fill_mode", ["nearest", "constant", "reflect"])
def test_opencv_warp_gives_tensorflows_pixels_rounded(fill_mode):
    """The pipeline's OpenCV warp on uint8 against TensorFlow's float32 warp, with the paper's
    augmentation (rotation up to 20 degrees, shear, zoom, shifts, flips): every pixel within 0.5 (OpenCV
    rounds to integers), on noise as on a photo, borders included."""
    import skimage.data
    import tensorflow as tf

    from icao_mtl.data.pipeline import _affine_params, apply_affine, apply_affine_uint8

    rng = np.random.default_rng(0)
    photo = cv2.resize(skimage.data.astronaut(), (80, 80), interpolation=cv2.INTER_AREA)
    images = np.stack([rng.integers(0, 256, (80, 80, 3), dtype=np.uint8), photo] * 3)
    cfg = data.augment_config("paper")
    params = tf.stack([_affine_params(cfg, tf.constant([5, i]), 80, 80)[0] for i in range(len(images))])
    reference = apply_affine(tf.constant(images, tf.float32), params, fill_mode).numpy()
    warped = apply_affine_uint8(tf.constant(images), params, fill_mode).numpy()
    assert warped.dtype == np.uint8
    assert np.abs(warped - reference).max() <= 0.501
    assert np.abs(warped.astype(np.float32) - images).mean() > 10  # the warp did move the pixels
    with pytest.raises(ValueError, match="fill_mode"):
        apply_affine_uint8(tf.constant(images), params, "wrap")


def test_pipeline_warps_agree_and_serve_the_same_targets(synth_small):
    """``warp="opencv"`` (the default) and ``warp="tensorflow"`` give the same epoch: the same images in
    the same order within 0.5, the same labels and landmarks; a ``wrap`` fill warps with TensorFlow in
    both; an unknown warp is refused."""
    ds = read_dataset(synth_small)
    aug = data.augment_config("paper")
    marks = np.full((len(ds), 4), 0.5, np.float32)

    def epoch(warp, augment=aug):
        pipe = data.ImagePipeline(ds, 64, 16, augment=augment, seed=1, landmark_targets=marks, warp=warp)
        batches = list(pipe.train(epoch=1))
        return np.concatenate([x.numpy() for x, _ in batches]), [y for _, y in batches]

    (a, ya), (b, yb) = epoch("opencv"), epoch("tensorflow")
    assert np.abs(a - b).max() <= 0.501
    for p, q in zip(ya, yb):
        assert all(np.array_equal(p[k].numpy(), q[k].numpy()) for k in p)
    brighter = data.augment_config("paper", intensity=0.3)  # the gain applies after either warp
    (c, _), (d, _) = epoch("opencv", brighter), epoch("tensorflow", brighter)
    assert np.abs(c - d).max() <= 0.501 * 1.3 + 1e-4 and np.abs(c - a).max() > 20
    wrap = data.augment_config("paper", fill_mode="wrap")
    np.testing.assert_array_equal(epoch("opencv", wrap)[0], epoch("tensorflow", wrap)[0])
    with pytest.raises(ValueError, match="warp must be one of"):
        data.ImagePipeline(ds, 64, 16, augment=aug, warp="pillow")


def test_augment_config_validation_and_presets():
    assert data.augment_config("no_rotation").rotation == 0 and data.augment_config("paper").rotation == 20
    assert data.AUGMENT_PRESETS["none"].is_identity
    with pytest.raises(ValueError, match="rotation"):
        data.augment_config("reference", rotation=-3)
    with pytest.raises(ValueError, match="Unknown augmentation preset"):
        data.augment_config("strong")


def test_digits_and_lfw_task_sets(data_root):
    digits = data.load("digits", data_root)
    assert digits.tasks == tuple(f"n_{d}" for d in range(10)) and len(digits) == 1797
    assert (digits.labels.sum(1) == 1).all()  # exactly one digit per image
    assert set(digits.groups) == {"g0", "g1", "g2", "g3"}
    lfw = data.load("lfw", data_root)
    assert lfw.tasks == ("blurred", "pixelation", "washed_out", "light", "ink_mark") and len(lfw) == 2000
    sp = data.split_dataset(lfw)
    assert sp.report.source == "column"
    faces = {s: {n.split("_")[0] for n in part.names} for s, part in (("train", sp.train), ("test", sp.test))}
    assert not faces["train"] & faces["test"]  # no face in both training and test
    for j, t in enumerate(lfw.tasks):
        assert 100 < (lfw.labels[:, j] == 0).sum() < 1000, t
    pipe = data.ImagePipeline(sp.val, 64, 32)
    x, y = next(iter(pipe.eval()))
    assert x.shape[1:] == (64, 64, 3) and set(y) == set(lfw.tasks)


def test_named_set_or_path_errors(tmp_path):
    with pytest.raises(DatasetError, match="neither a dataset directory nor one of"):
        data.resolve(str(tmp_path / "nope"))


def test_a_task_subset_skips_the_other_requisite_columns(synth_small):
    ds = read_dataset(synth_small, tasks=["veil", "blurred"], check_images="exists")
    assert ds.tasks == ("veil", "blurred") and ds.labels.shape == (240, 2)
    assert ds.groups == {"g0": ("blurred",), "g1": ("veil",)}


def _extra_set(root, tasks=("blurred", "light"), split=True):
    lines = [f"{i:03d}.png," + ",".join(["0" if i % 2 else "1"] * len(tasks))
             + ("," + ("train", "train", "val", "test")[i % 4] if split else "") for i in range(8)]
    _make(root, lines, header="image," + ",".join(tasks) + (",split" if split else ""), n_images=0)
    for i in range(8):  # larger than _make's: check's photos have at least 32 px a side
        cv2.imwrite(str(root / "images" / f"{i:03d}.png"), np.full((40, 36, 3), 30 * i, np.uint8))
    (root / "meta.json").write_text(json.dumps({"version": "1.0", "params": {}, "tasks": list(tasks),
                                                "groups": {"image": list(tasks)}}))
    return root


def test_extra_training_rows_join_the_training_split_only_and_analyze_finds_them(tmp_path):
    from icao_mtl.analyze import split_dataset_of_run
    from icao_mtl.config import TrainConfig
    from icao_mtl.runs import prepare_data, write_split

    main = _make(tmp_path / "main", [f"{i:03d}.png," + ",".join(["1" if i % 2 else "0"] * 23) + ","
                                     + ("train", "val", "test")[i % 3] for i in range(9)],
                 header="image," + ",".join(IDS) + ",split")
    extra = _extra_set(tmp_path / "faces")
    cfg = TrainConfig(data=str(main), extra_train=str(extra))
    _, sp = prepare_data(cfg, verbose=0)
    base = data.split_dataset(read_dataset(main))
    assert sp.val.names == base.val.names and sp.test.names == base.test.names  # validation and test untouched
    added = sp.train.names[len(base.train):]
    assert added == ["faces/000.png", "faces/001.png", "faces/004.png", "faces/005.png"]  # its train rows only
    assert sp.report.extra_train == 4 and sp.report.sizes["train"] == len(base.train) + 4
    rows = sp.train.labels[len(base.train):]
    for j, t in enumerate(IDS):
        expected = [1, 0, 1, 0] if t in ("blurred", "light") else [-1] * 4  # the others: not applicable
        assert rows[:, j].tolist() == expected, t
    run = tmp_path / "run"
    run.mkdir()
    write_split(run, sp)
    again = split_dataset_of_run(run, cfg, "train")
    assert again.names == sp.train.names and (again.labels == sp.train.labels).all()
    assert again.paths == sp.train.paths
    # several sets, comma-separated: each adds its train rows, in order; analyze finds them all
    second = _extra_set(tmp_path / "more")
    cfg2 = TrainConfig(data=str(main), extra_train=f"{extra}, {second}")
    _, sp2 = prepare_data(cfg2, verbose=0)
    assert sp2.train.names[len(base.train):] == added + [n.replace("faces/", "more/") for n in added]
    assert sp2.report.extra_train == 8 and sp2.val.names == base.val.names
    write_split(run, sp2)
    assert split_dataset_of_run(run, cfg2, "train").names == sp2.train.names


def test_extra_training_set_errors_name_the_set_and_the_fix(tmp_path):
    main = data.split_dataset(read_dataset(_make(tmp_path / "main", _ok_rows(12))))
    with pytest.raises(DatasetError, match=r"tasks \['n_3'\] that the training data does not have.*Fix"):
        data.with_extra_training(main, read_dataset(_extra_set(tmp_path / "digit", tasks=("n_3",))))
    no_split = read_dataset(_extra_set(tmp_path / "plain", split=False))
    sp = data.with_extra_training(main, no_split)  # no split column: its own stratified train split
    assert 0 < sp.report.extra_train < len(no_split)


def test_lfw_framed_keeps_labels_and_split_and_frames_every_image(tmp_path):
    from icao_mtl.data.tasksets import build_lfw_framed

    source = _extra_set(tmp_path / "lfw_defects")
    out = build_lfw_framed(tmp_path / "lfw_framed", source, size=48, align="none", progress=False)
    framed, src = read_dataset(out), read_dataset(source)
    assert framed.names == src.names and (framed.labels == src.labels).all() and list(framed.split) == list(src.split)
    x = cv2.imread(framed.paths[0])
    assert x.shape == (48, 48, 3)  # the 36 x 40 source padded to a square, then resized
    assert build_lfw_framed(tmp_path / "lfw_framed", source, size=48, align="none", progress=False) == out
