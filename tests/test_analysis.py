"""Grad-CAM (against tf-keras-vis), error analysis, the single-photo check and model export."""

import json

import numpy as np
import pytest
from PIL import Image

from icao_mtl import analyze, check, evaluate, export, gradcam, train
from icao_mtl.runs import load_models, read_scores
from icao_mtl.synth import SynthConfig, generate

TASKS = ("hat", "dark_glasses", "veil", "background", "close", "blurred")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Handcrafted-2 heads on the small CNN, 96 px, trained 10 epochs on 1,600 synthetic portraits for six
    requisites: four drawn in a region of the face or background, one object, one image-level."""
    root = tmp_path_factory.mktemp("analysis")
    data = generate(root / "data", SynthConfig(n=1600, size=96, seed=5), workers=2, progress=False)
    out = root / "run"
    assert train.main(["--data", str(data), "--out", str(out), "--approach", "hc2", "--tasks", ",".join(TASKS),
                       "--epochs", "10",
                       "--lr", "3e-3", "--img-size", "96", "--quiet", "--seed", "2", "--split-seed", "2",
                       "--mixed-precision", "none"]) == 0  # float32 on every machine: exact oracles and exports
    return data, out


@pytest.fixture(scope="module")
def model(run):
    return load_models(run[1])["model"]


def _test_images(run, n):
    from icao_mtl.analyze import split_dataset_of_run
    from icao_mtl.config import TrainConfig
    from icao_mtl.data import ImagePipeline

    _, out = run
    ds = split_dataset_of_run(out, TrainConfig.from_json(out / "config.json"), "test")
    return ImagePipeline(ds.subset(np.arange(n)), 96, 32).images().astype(np.float32), ds


# --- Grad-CAM -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("task", ["hat", "blurred"])
def test_gradcam_equals_tf_keras_vis_on_the_same_model_layer_and_class(run, model, task, plus):
    import keras
    from tf_keras_vis.gradcam import Gradcam, GradcamPlusPlus
    from tf_keras_vis.utils.scores import CategoricalScore

    images, _ = _test_images(run, 8)
    layer = gradcam.default_layer(model)
    ours = gradcam.compute(model, images, task, layer=layer, target="compliant", score="probability", plus=plus,
                           upsample=False)
    single = keras.Model(model.inputs, model.get_layer(task).output)
    oracle = (GradcamPlusPlus if plus else Gradcam)(single, model_modifier=None, clone=False)
    ref = np.asarray(oracle(CategoricalScore(1), images, penultimate_layer=layer, expand_cam=False))
    assert ours.shape == ref.shape
    for a, b in zip(ours, ref):
        if a.std() == 0 and b.std() == 0:
            continue
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99


def test_gradcam_batched_equals_one_by_one_and_maps_are_normalised(run, model):
    images, _ = _test_images(run, 5)
    batched = gradcam.compute(model, images, "veil", batch_size=32)
    single = np.concatenate([gradcam.compute(model, images[i:i + 1], "veil", batch_size=1) for i in range(5)])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.shape == (5, 96, 96)
    assert batched.min() >= 0 and batched.max() <= 1
    # normalised at the layer's resolution; bilinear upsampling keeps the peak close to 1
    assert np.all(batched.reshape(5, -1).max(1) > 0.95)
    raw = gradcam.compute(model, images, "veil", upsample=False)
    assert np.allclose(raw.reshape(5, -1).max(1), 1.0)


def test_gradcam_on_a_handcrafted3_group_block_lights_only_its_band():
    """A group block sees one row band of the pooled map: its heatmap must be zero outside that band."""
    import keras

    from icao_mtl.architectures import ModelConfig, build_model
    from icao_mtl.requisites import GROUPS

    keras.utils.set_random_seed(0)
    tasks = [g[0] for g in GROUPS.values()]
    m = build_model(ModelConfig("hc3", "small_cnn", "none", image_size=160), tasks, GROUPS)
    x = np.random.default_rng(0).uniform(0, 255, (3, 160, 160, 3)).astype("float32")
    rows = int(m.get_layer("head_shared_pool").output.shape[1])
    for g, (group, members) in enumerate(GROUPS.items()):
        top, bottom = g * rows // len(GROUPS), (g + 1) * rows // len(GROUPS)
        for layer in (f"head_{group}_conv_1", f"head_{group}_pool"):
            cams = gradcam.compute(m, x, tasks[g], layer=layer, target="compliant", upsample=False)
            assert cams.shape == (3, rows, rows)
            outside = np.ones(rows, bool)
            outside[top:bottom] = False
            assert np.all(cams[:, outside] == 0), (group, layer)
            if layer.endswith("conv_1"):
                assert cams[:, top:bottom].max() > 0, (group, layer)
        full = gradcam.compute(m, x, tasks[g], layer=f"head_{group}_conv_1")
        assert full.shape == (3, 160, 160)


def test_gradcam_errors_name_the_output_or_layer(model):
    from icao_mtl.errors import ConfigError

    x = np.zeros((1, 96, 96, 3), np.float32)
    with pytest.raises(ConfigError, match="has no output 'mouth'"):
        gradcam.compute(model, x, "mouth")
    with pytest.raises(ConfigError, match="has no layer 'nope'"):
        gradcam.compute(model, x, "hat", layer="nope")
    with pytest.raises(ConfigError, match="4-D feature map"):
        gradcam.compute(model, x, "hat", layer="head_hat_dense_1")


def test_overlay_and_mass_inside():
    img = np.zeros((10, 10, 3), np.uint8)
    heat = np.zeros((10, 10), np.float32)
    heat[2:4, 2:4] = 1.0
    out = gradcam.overlay(img, heat)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    mask = np.zeros((10, 10), bool)
    mask[:5, :5] = True
    assert gradcam.mass_inside(heat, mask) == 1.0
    assert gradcam.mass_inside(heat, ~mask) == 0.0
    assert np.isnan(gradcam.mass_inside(np.zeros((10, 10)), mask))


# --- error analysis -----------------------------------------------------------------------------------

def test_analyze_writes_galleries_and_the_region_mass_table(run, capsys):
    _, out = run
    assert analyze.main([str(out), "--requisite", "hat", "--kind", "fn", "--n", "4"]) == 0
    assert analyze.main([str(out), "--requisite", "all", "--n", "6", "--regions", "--region-images", "30"]) == 0
    printed = capsys.readouterr().out
    for t in TASKS:
        assert (out / "analysis" / f"gradcam_{t}_all_test.png").is_file()
    assert "| Requisite | region |" in printed
    table = {r["requisite"]: r for r in
             __import__("pandas").read_csv(out / "analysis" / "region_mass.csv").to_dict("records")}
    # Every regional requisite is measured (the image-level one has no region) ...
    assert set(table) == {"hat", "dark_glasses", "veil", "background", "close"}
    assert (out / "analysis" / "region_mass.png").is_file()
    for r in table.values():
        assert 0 <= r["mass_in_region"] <= 1 and 0 < r["region_area"] < 1 and r["images"] > 0
        assert r["ratio"] == pytest.approx(r["mass_in_region"] / r["region_area"])


def test_analyze_outcome_split_and_bad_requisite(run, capsys):
    lab = np.array([1, 1, 0, 0, -1])
    score = np.array([0.9, 0.1, 0.9, 0.1, 0.5])
    assert analyze.outcome(lab, score, 0.5).tolist() == ["tp", "fn", "fp", "tn", ""]
    assert analyze.main([str(run[1]), "--requisite", "mouth"]) == 2
    assert "has no scores for 'mouth'" in capsys.readouterr().err


def test_region_boxes_hold_what_the_renderer_drew():
    """The ground truth of the region check: render a portrait with and without one defect (all else
    equal); most changed pixels must lie in that requisite's region. (Defects that draw random strokes
    shift the random stream of what follows, hence the median over portraits.)"""
    from icao_mtl.synth import REQUISITE_REGION, region_mask
    from icao_mtl.synth.portrait import render, sample_portrait

    size = 96
    # skin tone: neck and ears too; head shadow: blurred; rims: beyond the eyes; rotation: the hair moves too
    loose = {"skin_tone": 0.4, "sh_head": 0.55, "frame_eyes": 0.6, "rotation": 0.6}
    for req, region in REQUISITE_REGION.items():
        if region == "image" or req == "frames_heavy":
            continue
        shares = []
        for i in range(6):
            look = {"look.glasses": True} if req in ("dark_glasses", "frame_eyes", "flash_lenses") else {}
            clean, _ = render(sample_portrait(0, i, size, {req: 0.0, **look}))
            defect, boxes = render(sample_portrait(0, i, size, {req: 0.9, **look}))
            changed = np.abs(clean.astype(int) - defect.astype(int)).sum(-1) > 30
            mask = region_mask({k: np.asarray(v) / size for k, v in boxes.items()}, region, size, size)
            if mask is not None and changed.any():
                shares.append(changed[mask].sum() / changed.sum())
        assert shares, req
        assert np.median(shares) >= loose.get(req, 0.75), (req, region, shares)


# --- the single-photo check ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(run, tmp_path_factory):
    """Good photos in several forms and bad files."""
    data, out = run
    names, _, _ = read_scores(out / "scores_test.csv")
    d = tmp_path_factory.mktemp("photos")
    src = Image.open(data / "images" / names[0]).convert("RGB")
    src.save(d / "portrait.png")
    src.convert("L").save(d / "grey.png")
    rgba = src.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(d / "alpha.png")
    src.resize((300, 380)).save(d / "large_portrait.jpg", quality=92)
    (d / "not_an_image.jpg").write_text("hello")
    full = (d / "large_portrait.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 3])
    Image.new("RGB", (12, 12)).save(d / "tiny.png")
    (d / "folder").mkdir()
    return d, names[0]


def test_check_reports_verdicts_scores_and_thresholds_and_fails_only_bad_files(run, photos, capsys, tmp_path):
    _, out = run
    d, name = photos
    good = ["portrait.png", "grey.png", "alpha.png", "large_portrait.jpg"]
    bad = {"not_an_image.jpg": "not an image", "truncated.jpg": "truncated", "tiny.png": "at least 32",
           "folder": "is a directory", "missing.png": "not found"}
    rc = check.main([str(out), *(str(d / f) for f in good + list(bad)), "--json", str(tmp_path / "r.json")])
    assert rc == 1  # some photos failed; the others were checked
    printed = capsys.readouterr()
    assert "5 of 9 photos could not be checked" in printed.err
    report = json.loads((tmp_path / "r.json").read_text())
    by_name = {p["photo"].split("/")[-1]: p for p in report["photos"]}
    for f, message in bad.items():
        assert not by_name[f]["ok"] and message in by_name[f]["error"], (f, by_name[f]["error"])
    metrics = json.loads((out / "metrics.json").read_text())
    for f in good:
        r = by_name[f]
        assert r["ok"], r
        assert set(r["requisites"]) == set(__import__("icao_mtl").requisites.IDS)
        for t, v in r["requisites"].items():
            if t in TASKS:
                assert v["verdict"] in ("compliant", "non-compliant")
                assert v["threshold"] == pytest.approx(metrics["val"]["per_requisite"][t]["threshold"])
                assert v["verdict"] == ("compliant" if v["score"] >= v["threshold"] else "non-compliant")
            else:
                assert v["verdict"] == "not applicable" and v["score"] is None
    large = by_name["large_portrait.jpg"]["framing"]  # 300 x 380: aligned on its eyes, or padded without a face
    assert large["method"] == "landmarks" and (large["cropped"] if large["faces"] > 0 else large["padded"])
    # The photo as stored in the dataset gets exactly the score the evaluation gave it.
    names, scores, _ = read_scores(out / "scores_test.csv")
    for t in TASKS:
        assert by_name["portrait.png"]["requisites"][t]["score"] == pytest.approx(scores[t][0], abs=2e-5)
    assert "NOT COMPLIANT" in printed.out or "COMPLIANT" in printed.out


def test_check_operating_point_at_a_false_match_rate(run, photos, tmp_path):
    _, out = run
    d, _ = photos
    _, scores, labels = read_scores(out / "scores_val.csv")
    thr = check.thresholds(out, list(TASKS), "fmr=0.05")
    eer_thr = check.thresholds(out, list(TASKS), "eer")
    for t in TASKS:
        non = labels[t] == 0
        assert np.mean(scores[t][non] >= thr[t]) <= 0.05 + 1e-9
        assert thr[t] >= eer_thr[t] - 1e-9  # stricter than the EER point
    assert check.main([str(out), str(d / "portrait.png"), "--operating-point", "fmr=0.05", "--json",
                       str(tmp_path / "f.json")]) == 0
    rep = json.loads((tmp_path / "f.json").read_text())["photos"][0]["requisites"]
    assert rep["hat"]["threshold"] == pytest.approx(thr["hat"])
    assert check.main([str(out), str(d / "portrait.png"), "--operating-point", "far=1"]) == 2


def test_check_heatmaps_for_failing_requisites(run, photos, tmp_path):
    _, out = run
    d, _ = photos
    reports = check.check_photos(out, [d / "portrait.png"], operating_point="fmr=0.0001",
                                 heatmaps_dir=tmp_path / "heat")
    failing = [t for t, v in reports[0].requisites.items() if v["verdict"] == "non-compliant"]
    assert failing  # at an FMR of 0.01% nearly everything is rejected
    for t in failing:
        assert (tmp_path / "heat" / f"portrait_{t}.png").is_file()
        assert Image.open(tmp_path / "heat" / f"portrait_{t}.png").size == (96, 96)


def test_check_a_run_without_model_is_an_error(tmp_path, photos, capsys):
    d, _ = photos
    (tmp_path / "empty").mkdir()
    assert check.main([str(tmp_path / "empty"), str(d / "portrait.png")]) == 2
    assert "holds no model" in capsys.readouterr().err


def test_framing_helpers():
    rgb = np.zeros((100, 60, 3), np.uint8)
    sq = check.pad_to_square(rgb)
    assert sq.shape == (100, 100, 3)
    photo = np.zeros((400, 400, 3), np.uint8)
    crop = check.crop_to_framing(photo, (100, 150, 80, 80))
    assert crop.shape == (200, 200, 3)  # face width 40% of the side
    _, framing = check.frame_face(np.full((120, 120, 3), 200, np.uint8), align="cascade")
    assert framing.faces == 0 and "no face" in framing.note


# --- test-time flip averaging ------------------------------------------------------------------------

def test_evaluation_and_check_average_each_image_with_its_mirror_image(run, model, photos, tmp_path):
    """The reference augmentation flips training images, so ``--tta auto`` scores every image as the mean
    of its own and its mirror image's scores; ``--tta none`` scores it once. check uses what metrics.json
    says its thresholds were found with."""
    import cv2

    _, out = run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tta"] == "flip"
    images, _ = _test_images(run, 40)
    own = check.KerasPredictor({"model": model}).predict(images)
    mirrored = check.KerasPredictor({"model": model}).predict(images[:, :, ::-1])
    _, saved, _ = read_scores(out / "scores_test.csv")
    once = tmp_path / "once"
    assert evaluate.main([str(out), "--tta", "none", "--out", str(once), "--quiet"]) == 0
    assert json.loads((once / "metrics.json").read_text())["tta"] == "none"
    _, single, _ = read_scores(once / "scores_test.csv")
    moved = []
    for t in TASKS:
        np.testing.assert_allclose(saved[t][:40], (own[t] + mirrored[t]) / 2, atol=1e-5)
        np.testing.assert_allclose(single[t][:40], own[t], atol=1e-5)
        moved.append(np.abs(own[t] - mirrored[t]).max())
    assert max(moved) > 1e-3  # the model is not exactly mirror-symmetric: the average is not a no-op

    d, _ = photos
    report = check.check_photos(out, [d / "portrait.png"], align="none")[0]
    assert report.tta == "flip"
    img = np.asarray(Image.open(d / "portrait.png").convert("RGB"))
    img = cv2.resize(img, (96, 96), interpolation=cv2.INTER_AREA).astype(np.float32)[None]
    a, b = check.KerasPredictor({"model": model}).predict(img), check.KerasPredictor({"model": model}).predict(
        img[:, :, ::-1])
    for t in TASKS:
        assert report.requisites[t]["score"] == pytest.approx((a[t][0] + b[t][0]) / 2, abs=1e-5)
    # a run evaluated once (as runs evaluated before --tta were) is checked once
    import shutil

    for name in ("model.keras", "config.json"):
        shutil.copy(out / name, once / name)
    assert check.check_photos(once, [d / "portrait.png"], align="none")[0].tta == "none"
    assert check.check_photos(once, [d / "portrait.png"], align="none")[0].requisites["hat"]["score"] == \
        pytest.approx(a["hat"][0], abs=1e-5)


# --- export ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,quantize,tol", [("savedmodel", False, 1e-5), ("tflite", False, 1e-4),
                                              ("tflite", True, 0.08)])
def test_export_gives_the_keras_scores_and_check_runs_on_it(run, photos, fmt, quantize, tol, tmp_path):
    _, out = run
    d, _ = photos
    images, _ = _test_images(run, 6)
    target = tmp_path / fmt
    assert export.main([str(out), "--format", fmt, "--out", str(target)] + (["--quantize"] if quantize else [])) == 0
    keras_scores = check.KerasPredictor(load_models(out)).predict(images)
    exported = export.ExportedPredictor(target)
    assert set(exported.tasks) == set(TASKS) and exported.input_size == 96
    scores = exported.predict(images)
    for t in TASKS:
        np.testing.assert_allclose(scores[t], keras_scores[t], atol=tol)
    # check runs on the export, from the command line
    assert check.main([str(out), str(d / "portrait.png"), "--backend", fmt, "--export", str(target), "--json",
                       str(tmp_path / "e.json")]) == 0
    a = json.loads((tmp_path / "e.json").read_text())["photos"][0]["requisites"]
    b = check.check_photos(out, [d / "portrait.png"], backend="keras")[0].requisites
    for t in TASKS:
        assert a[t]["score"] == pytest.approx(b[t]["score"], abs=tol)
    wrong = "tflite" if fmt == "savedmodel" else "savedmodel"
    assert check.main([str(out), str(d / "portrait.png"), "--backend", wrong, "--export", str(target)]) == 2


def test_export_bad_options(run, capsys, tmp_path):
    _, out = run
    assert export.main([str(out), "--format", "savedmodel", "--quantize"]) == 2
    assert "TFLite only" in capsys.readouterr().err
    from icao_mtl.errors import ConfigError

    with pytest.raises(ConfigError, match="holds no export"):
        export.ExportedPredictor(tmp_path)
