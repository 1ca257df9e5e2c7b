import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from icao_mtl import data
from icao_mtl.backbones import set_backbone_trainable
from nas.depth import search as nas_search
from nas.depth.features import FeaturePipeline, load_or_build
from nas.depth.heads import copy_full_to_grouped, copy_grouped_to_full, grouped_head, parameters


def test_feature_cache_is_keyed_and_rebuilt_not_misused(small_portraits, tmp_path):
    root, _, splits, weights = small_portraits
    aug = data.augment_config("reference")
    kw = dict(backbone="small_cnn", weights=weights, image_size=64, seed=0, verbose=0)
    first = load_or_build(tmp_path, splits, augment=aug, views=2, **kw)
    assert first.built and first.train.shape[:2] == (2, len(splits.train)) and first.val.shape[0] == len(splits.val)
    assert not np.allclose(first.train[0], first.train[1])  # two different augmented views
    again = load_or_build(tmp_path, splits, augment=aug, views=2, **kw)
    assert not again.built and again.path == first.path
    np.testing.assert_array_equal(again.train, first.train)
    other = load_or_build(tmp_path, splits, augment=None, views=2, **kw)  # another key: another file
    assert other.built and other.path != first.path and other.train.shape[0] == 1
    # a file at the right name but with another key inside is rebuilt, not used
    with np.load(first.path) as f:
        arrays = dict(f)
    bad = json.loads(arrays["key"].tobytes())
    bad["seed"] = 99
    arrays["key"] = np.frombuffer(json.dumps(bad).encode(), dtype=np.uint8)
    arrays["train"] = arrays["train"] * 0
    np.savez(first.path, **arrays)
    rebuilt = load_or_build(tmp_path, splits, augment=aug, views=2, **kw)
    assert rebuilt.built and np.abs(rebuilt.train).sum() > 0


def test_cached_and_uncached_children_give_the_same_validation_metrics(small_portraits, tmp_path):
    from icao_mtl.architectures import ModelConfig, build_model
    from icao_mtl.losses import MaskedMultiTaskLoss
    from icao_mtl.training import Engine, Phase

    _, _, splits, weights = small_portraits
    feats = load_or_build(tmp_path, splits, backbone="small_cnn", weights=weights, image_size=64, augment=None,
                          seed=0, verbose=0)
    tasks, groups, config = splits.train.tasks, splits.train.groups, (2, 1, 3, 1)
    keras.utils.set_random_seed(7)
    full = build_model(ModelConfig("nas", "small_cnn", weights, image_size=64, nas_config=config), tasks, groups)
    set_backbone_trainable(full, tasks, "frozen")
    head = nas_search.head_model(config, feats.dim, tasks, groups)
    copy_full_to_grouped(full, head, config, tasks, groups)  # the same initial head, in the grouped form
    opt = lambda: keras.optimizers.Adam(1e-3)  # noqa: E731
    loss = MaskedMultiTaskLoss(tasks, 0.1)
    images = data.ImagePipeline(splits.train, 64, 32, seed=0)
    e1 = Engine(full, tasks, optimizer=opt, loss=loss, monitor="loss", verbose=0)
    e1.fit([Phase("train", 2)], {"train": images})
    e2 = Engine(head, tasks, optimizer=opt, loss=loss, monitor="loss", verbose=0)
    e2.fit([Phase("train", 2)], {"train": FeaturePipeline(feats.train, splits.train, 32, 0)})
    v1 = e1.evaluate(data.ImagePipeline(splits.val, 64, 64), summary=True)
    v2 = e2.evaluate(FeaturePipeline(feats.val, splits.val, 64), summary=True)
    assert v2["loss"] == pytest.approx(v1["loss"], rel=1e-3)
    assert v2["eer"] == pytest.approx(v1["eer"], abs=1e-3)
    for t in tasks:
        np.testing.assert_allclose(v2["scores"][t], v1["scores"][t], atol=1e-3)


def test_grouped_head_is_the_per_task_head(tmp_path):
    """The grouped form computes exactly the full NAS model's head, weights carry over both ways, and it
    saves and loads with safe_mode."""
    from icao_mtl.architectures import ModelConfig, build_model, count_params
    from icao_mtl.requisites import GROUPS, IDS

    config = (3, 1, 2, 4)
    full = build_model(ModelConfig("nas", "small_cnn", "none", image_size=64, nas_config=config), IDS, GROUPS)
    head = grouped_head(config, 128, IDS, GROUPS, seed=1)
    assert count_params(head)["total"] == parameters(config, 128, IDS, GROUPS)
    copy_grouped_to_full(head, full, config, IDS, GROUPS)
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    pooled = keras.Model(full.input, full.get_layer("head_gap").output)(x).numpy()
    a, b = head(pooled[:, None, None, :]), full(x)
    for t in IDS:
        np.testing.assert_allclose(a[t], b[t], atol=1e-5)
    other = grouped_head(config, 128, IDS, GROUPS, seed=2)
    copy_full_to_grouped(full, other, config, IDS, GROUPS)
    c = other(pooled[:, None, None, :])
    for t in IDS:
        np.testing.assert_allclose(c[t], b[t], atol=1e-5)
    head.save(tmp_path / "h.keras")
    again = keras.saving.load_model(tmp_path / "h.keras", safe_mode=True)
    np.testing.assert_allclose(again(pooled[:, None, None, :])["veil"], a["veil"], atol=1e-6)


def _args(ds_dir, out, *extra, weights=None, cache=None, final=2):
    a = ["--data", str(ds_dir), "--img-size", "64", "--out", str(out), "--final-epochs", str(final), "--quiet",
         "--views", "2", "--synth-n", "300", "--synth-size", "64"]
    if weights:
        a += ["--weights", weights]
    if cache:
        a += ["--cache-dir", str(cache)]
    return a + list(extra)


def test_end_to_end_search_pretrains_searches_retrains_and_writes_the_table(small_portraits, tmp_path):
    _, ds_dir, _, _ = small_portraits
    out = tmp_path / "s"
    assert nas_search.main(_args(ds_dir, out, "--controller", "random", "--trials", "4", "--child-epochs", "1",
                                 "--pretrain-epochs", "1")) == 0
    recs = sorted(out.glob("trials/*.json"))
    assert len(recs) == 4
    rec = json.loads(recs[0].read_text())
    assert set(rec) >= {"config", "metrics", "seconds"} and rec["metrics"]["val_eer_mean"] > 0
    assert len({tuple(json.loads(r.read_text())["config"]) for r in recs}) == 4  # random: no repeats
    assert (out / "backbone.weights.h5").is_file()  # offline: the backbone was pretrained, then frozen
    result = json.loads((out / "result.json").read_text())
    assert result["N"] == 4 and result["eer_mean"] is not None
    best = min((json.loads(r.read_text()) for r in recs), key=lambda r: r["metrics"]["val_eer_mean"])
    assert result["best_config"] == best["config"]
    assert "| 1 (random) | 1 | 4 |" in (out / "table2.md").read_text()
    assert (out / "best_so_far.png").stat().st_size > 5000
    final = json.loads((out / "final" / "metrics.json").read_text())
    assert set(final) >= {"val", "test"} and (out / "final" / "model.keras").is_file()
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert cfg["approach"] == "nas" and cfg["nas_config"] == best["config"]
    assert nas_search.main(["--summarize", str(out), str(out)]) == 0


def test_the_final_retraining_from_images_reproduces_the_trial_within_seed_noise(tmp_path, data_root, monkeypatch):
    """On the digits (a random small CNN's features separate them: EER well below chance), the best
    child retrained from images (fresh augmentation every epoch, the frozen backbone run on every
    image) as long as a trial reaches the trial's validation EER within the seed spread of the trial
    itself (the same child trained on the cached views from two other seeds)."""
    from nas.depth.features import load_or_build
    from nas.depth.population import PopulationTrainer

    monkeypatch.setenv("ICAO_MTL_DATA", str(data_root))
    out, epochs = tmp_path / "s", 4
    assert nas_search.main(["--data", "digits", "--img-size", "32", "--out", str(out), "--quiet", "--views", "2",
                            "--controller", "random", "--trials", "2", "--child-epochs", str(epochs), "--lr", "3e-3",
                            "--pretrain-epochs", "0", "--final-epochs", str(epochs)]) == 0
    recs = [json.loads(p.read_text()) for p in sorted(out.glob("trials/*.json"))]
    best = min(recs, key=lambda r: r["metrics"]["val_eer_mean"])
    assert best["metrics"]["val_eer_mean"] < 0.35
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert cfg["epochs"] == epochs and cfg["freeze_backbone"] and cfg["monitor"] == "val_eer"
    history = json.loads((out / "final" / "history.json").read_text())
    assert len(next(iter(history.values()))) == epochs  # trained from images by an ordinary run
    final_val = json.loads((out / "final" / "metrics.json").read_text())["val"]["eer_mean"]
    from icao_mtl.runs import prepare_data

    _, splits = prepare_data(nas_search.SearchConfig(data="digits", img_size=32).train_config(), verbose=0)
    feats = load_or_build(out / "feature_cache", splits, backbone="small_cnn", weights=str(out / "backbone.weights.h5"),
                          image_size=32, augment=data.augment_config("reference"), views=2, seed=0, verbose=0)
    again = PopulationTrainer(feats, splits, population=2, lr=3e-3, seed=0)
    again.assign_many({0: (tuple(best["config"]), 101), 1: (tuple(best["config"]), 102)})
    again.train(epochs)
    a, b = (s["eer_mean"] for s in again.score())
    noise = abs(a - b)
    assert abs(final_val - best["metrics"]["val_eer_mean"]) <= 0.03 + 2 * noise, (final_val, best["metrics"], a, b)


def test_a_diverging_child_is_a_failed_trial_and_the_search_goes_on(small_portraits, tmp_path, monkeypatch):
    from icao_mtl.errors import NonFiniteLossError

    from nas.depth.population import PopulationTrainer

    _, ds_dir, _, weights = small_portraits
    real = PopulationTrainer.train
    calls = {"n": 0}

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise NonFiniteLossError("The training loss became nan at step 3")
        return real(self, *a, **kw)

    monkeypatch.setattr(PopulationTrainer, "train", flaky)
    out = tmp_path / "s"
    assert nas_search.main(_args(ds_dir, out, "--controller", "random", "--trials", "3", weights=weights, final=0)) == 0
    recs = [json.loads(p.read_text()) for p in sorted(out.glob("trials/*.json"))]
    assert len(recs) == 3 and sum(r["failure"] is not None for r in recs) == 1
    assert "diverged" in next(r["failure"] for r in recs if r["failure"])
    assert json.loads((out / "result.json").read_text())["trials_run"] == 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_nas_search.py
def test_distributed_search_with_a_chief_and_two_workers(small_portraits, tmp_path):
    _, ds_dir, _, weights = small_portraits
    out = tmp_path / "dist"
    port = str(_free_port())
    args = [sys.executable, "-m", "nas.depth", *_args(ds_dir, out, "--controller", "random", "--trials", "6",
                                                        weights=weights, cache=tmp_path / "cache", final=0)]
    base = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERASTUNER_ORACLE_IP": "127.0.0.1",
            "KERASTUNER_ORACLE_PORT": port}
    chief = subprocess.Popen(args, env={**base, "KERASTUNER_TUNER_ID": "chief"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    workers = [subprocess.Popen(args, env={**base, "KERASTUNER_TUNER_ID": f"tuner{i}"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-2000:]
    _, err = chief.communicate(timeout=600)
    assert chief.returncode == 0, err[-2000:]
    recs = [json.loads(p.read_text()) for p in sorted(out.glob("trials/*.json"))]
    assert len(recs) == 6 and len({r["trial_id"] for r in recs}) == 6  # every trial ran exactly once
    assert {r["tuner_id"] for r in recs} <= {"tuner1", "tuner2"} and len({r["pid"] for r in recs}) >= 1
    result = json.loads((out / "result.json").read_text())  # gathered and finished by the chief
    assert result["trials_run"] == 6 and result["best_val_eer_mean"] > 0
