import filecmp
import json

import numpy as np
import pandas as pd
import pytest

from icao_mtl.requisites import GLASSES_ONLY, IDS
from icao_mtl.synth import SPECS, SynthConfig, generate, markdown_table, render, sample_portrait
from icao_mtl.synth.__main__ import main as synth_main


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_gives_identical_bytes_for_any_worker_count(tmp_path):
    a = generate(tmp_path / "a", SynthConfig(n=24, size=64, seed=5), workers=1, progress=False)
    b = generate(tmp_path / "b", SynthConfig(n=24, size=64, seed=5), workers=2, progress=False)
    assert _files(a) == _files(b) and len(_files(a)) == 24 + 7  # images, 6 tables, the contact sheet
    for rel in _files(a):
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel


def test_different_seed_gives_different_images_and_labels(tmp_path):
    a = generate(tmp_path / "a", SynthConfig(n=12, size=64, seed=1), progress=False)
    b = generate(tmp_path / "b", SynthConfig(n=12, size=64, seed=2), progress=False)
    assert (a / "images/000000.png").read_bytes() != (b / "images/000000.png").read_bytes()
    assert (a / "labels.csv").read_text() != (b / "labels.csv").read_text()


def test_default_settings_give_both_classes_everywhere_and_not_applicable_glasses_rows():
    labels = np.array([[sample_portrait(0, i).labels[r] for r in IDS] for i in range(2500)])
    for j, r in enumerate(IDS):
        assert (labels[:, j] == 0).sum() >= 100, r  # every requisite has non-compliant images
        assert (labels[:, j] == 1).sum() >= 100, r
    for r in GLASSES_ONLY:
        share = (labels[:, IDS.index(r)] == -1).mean()
        assert 0.55 < share < 0.75, (r, share)  # no glasses on about 65% of the faces
    # Several defects co-occur in one image.
    assert ((labels == 0).sum(1) >= 3).mean() > 0.3


def _applicable(rid):
    """Overrides that make ``rid`` assessable (glasses on, eyes visible, mouth uncovered)."""
    o = {"look.glasses": True}
    for other in ("dark_glasses", "eyes_closed", "veil"):
        if other != rid:
            o[other] = 0.0
    return o


@pytest.mark.parametrize("rid", IDS)
def test_label_flips_exactly_at_the_threshold_and_the_drawing_follows_the_severity(rid):
    spec = SPECS[rid]
    lo, hi = spec.active_range
    eps = 1e-4 * (hi - lo)
    below = sample_portrait(0, 7, 96, {**_applicable(rid), rid: spec.threshold - eps})
    above = sample_portrait(0, 7, 96, {**_applicable(rid), rid: spec.threshold + eps})
    assert below.labels[rid] == 1 and above.labels[rid] == 0
    # Everything else about the two portraits is the same.
    assert {k: v for k, v in below.labels.items() if k != rid} == {k: v for k, v in above.labels.items() if k != rid}
    mild = render(sample_portrait(0, 7, 96, {**_applicable(rid), rid: spec.threshold - 0.15 * (hi - lo)}))[0]
    severe = render(sample_portrait(0, 7, 96, {**_applicable(rid), rid: spec.threshold + 0.15 * (hi - lo)}))[0]
    assert np.abs(mild.astype(int) - severe.astype(int)).mean() > 0.05, rid


def test_eyes_hidden_by_dark_lenses_or_shut_lids_are_not_applicable():
    p = sample_portrait(0, 1, 96, {"look.glasses": True, "dark_glasses": 0.9, "eyes_closed": 0.0})
    assert p.labels["dark_glasses"] == 0
    assert p.labels["eyes_closed"] == p.labels["l_away"] == p.labels["red_eyes"] == -1
    p = sample_portrait(0, 1, 96, {"look.glasses": False, "eyes_closed": 1.0})
    assert p.labels["eyes_closed"] == 0 and p.labels["l_away"] == -1 and p.labels["red_eyes"] == -1
    p = sample_portrait(0, 1, 96, {"veil": 1.0, "mouth": 0.0})
    assert p.labels["veil"] == 0 and p.labels["mouth"] == -1


def test_dataset_files_agree_with_each_other(synth_small):
    labels = pd.read_csv(synth_small / "labels.csv")
    sev = pd.read_csv(synth_small / "severities.csv")
    meta = json.loads((synth_small / "meta.json").read_text())
    regions = pd.read_csv(synth_small / "regions.csv")
    assert list(labels.columns) == ["image", *IDS] and len(labels) == 240 == len(sev) == len(regions)
    assert (synth_small / "contact_sheet.png").stat().st_size > 10_000
    for r in IDS:
        assert meta["label_counts"][r]["0"] == int((labels[r] == 0).sum())
        applicable = sev[r].notna() & (labels[r] != -1)
        # where a label is assessed, it is exactly severity > threshold
        assert ((sev[r][applicable] > SPECS[r].threshold) == (labels[r][applicable] == 0)).all(), r
    assert ((regions["face_x0"] < regions["face_x1"]) & (regions["face_x1"] <= 1)).all()


def test_existing_other_dataset_is_not_overwritten_without_permission(tmp_path):
    out = generate(tmp_path / "d", SynthConfig(n=4, size=48, seed=0), progress=False)
    again = generate(out, SynthConfig(n=4, size=48, seed=0), progress=False)  # same: nothing to do
    assert again == out
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate(out, SynthConfig(n=5, size=48, seed=0), progress=False)
    generate(out, SynthConfig(n=5, size=48, seed=0), progress=False, overwrite=True)
    assert len(list((out / "images").iterdir())) == 5


def test_command_line(tmp_path, capsys):
    assert synth_main(["--out", str(tmp_path / "cli"), "--n", "6", "--size", "48", "--quiet"]) == 0
    assert len(list((tmp_path / "cli" / "images").glob("*.png"))) == 6
    assert synth_main(["--out", str(tmp_path / "j"), "--n", "3", "--size", "48", "--format", "jpg", "--quiet"]) == 0
    assert len(list((tmp_path / "j" / "images").glob("*.jpg"))) == 3
    assert synth_main(["--n", "0", "--out", str(tmp_path / "x")]) == 2
    assert "positive number" in capsys.readouterr().err
    assert synth_main(["--table"]) == 0
    assert "| `veil` |" in capsys.readouterr().out


def test_markdown_table_lists_every_requisite():
    table = markdown_table()
    assert all(f"`{r}`" in table for r in IDS)


def test_a_default_set_of_an_older_generator_version_is_rendered_again(tmp_path):
    from icao_mtl.errors import IcaoMtlError
    from icao_mtl.synth import ensure_dataset

    cfg = SynthConfig(n=12, size=64, seed=2)
    out = ensure_dataset(cfg, tmp_path, workers=1, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "version": "0.9"}))
    assert ensure_dataset(cfg, tmp_path, workers=1, progress=False) == out
    assert json.loads((out / "meta.json").read_text())["version"] == meta["version"]
    # something that is not ours under that name is left alone, with an error saying what to do
    (out / "meta.json").write_text("{}")
    with pytest.raises(IcaoMtlError, match="--overwrite"):
        ensure_dataset(cfg, tmp_path, workers=1, progress=False)
