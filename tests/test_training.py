import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from icao_mtl.architectures import ModelConfig, build_model
from icao_mtl.errors import NonFiniteLossError
from icao_mtl.losses import MaskedMultiTaskLoss
from icao_mtl.requisites import GROUPS, IDS
from icao_mtl.training import (Engine, Phase, finetune_phases, optimizer_factory, reset_optimizer, set_precision)

HERE = Path(__file__).resolve().parent


def _arrays_source(x, y, batch=8):
    def make(epoch):
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    return make


def test_masked_loss_ignores_not_applicable_labels():
    loss = MaskedMultiTaskLoss(["a", "b"], {"a": 2.0, "b": 1.0})
    p = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], "float32")
    total, logs = loss({"a": np.array([1, 0, -1]), "b": np.array([-1, -1, -1])}, {"a": p, "b": p})
    expected = 2.0 * (-np.log(0.8) - np.log(0.6)) / 2
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert logs["n"].numpy().tolist() == [2, 0] and logs["correct"].numpy().tolist()[0] == 2


def test_every_output_sees_its_own_requisites_labels():
    """HC3 lists its outputs in group order; labels reach them by name. Each head's bias is trained
    towards its own task's labels, whatever the output order."""
    model = build_model(ModelConfig("hc3", "small_cnn", "none"), IDS, GROUPS)
    assert list(model.output_names) != list(IDS)  # group order, not requisite order
    for layer in model.layers:
        layer.trainable = layer.name in IDS  # only the output layers learn
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 128, 128, 3)).astype("float32")
    # task i has compliant share (i + 1) / 24; a head trained on another task's labels would be off
    share = {t: (i + 1) / 24 for i, t in enumerate(IDS)}
    y = {t: (rng.random(16) < share[t]).astype("int32") for t in IDS}
    for t in IDS:
        y[t][: 16 - round(16 * share[t])] = 0
        y[t][16 - round(16 * share[t]):] = 1
    eng = Engine(model, IDS, optimizer=lambda: keras.optimizers.Adam(0.05), monitor="loss", verbose=0)
    eng.fit([Phase("train", 40)], {"train": _arrays_source(x, y, 16)})
    scores = eng.predict(_arrays_source(x, y, 16)(0))
    for t in IDS:
        assert scores[t].mean() == pytest.approx(y[t].mean(), abs=0.06), t


def test_reference_schedule_is_keras2_adam_decay():
    opt = optimizer_factory("adam", 1e-3, schedule="reference", epochs=10)()
    for t in (0, 100, 1370):
        assert float(opt.learning_rate(t) if callable(opt.learning_rate) else opt._learning_rate(t)) == pytest.approx(
            1e-3 / (1 + 1e-4 * t))


def test_reset_optimizer_zeroes_state_and_keeps_the_learning_rate():
    v = tf.Variable([1.0, 2.0])
    opt = keras.optimizers.Adam(0.01)
    opt.build([v])
    opt.apply([tf.constant([0.5, -0.5])], [v])
    assert int(opt.iterations) == 1
    reset_optimizer(opt)
    assert int(opt.iterations) == 0 and float(opt.learning_rate) == pytest.approx(0.01)
    assert all(float(tf.reduce_sum(tf.abs(s))) == 0 for s in opt.variables if "learning_rate" not in s.path)


def _tiny_model(tasks=("a", "b")):
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp / 255.0)
    h = keras.layers.GlobalAveragePooling2D(name="head_gap")(h)
    return keras.Model(inp, {t: keras.layers.Dense(2, activation="softmax", name=t)(h) for t in tasks})


def _tiny_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, 16, 16, 3)).astype("float32")
    y = {"a": (x[..., 0].mean((1, 2)) > 127).astype("int32"), "b": rng.integers(0, 2, n).astype("int32")}
    return x, y


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = _tiny_data()

    def source(epoch):
        xe = x.copy()
        if epoch == 1:
            xe[9] = np.nan
        return tf.data.Dataset.from_tensor_slices((xe, y)).batch(8)

    eng = Engine(_tiny_model(), ("a", "b"), optimizer=lambda: keras.optimizers.Adam(1e-3), run_dir=tmp_path,
                 monitor="loss", verbose=0)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, pass 'train', step 2") as err:
        eng.fit([Phase("train", 3)], {"train": source})
    assert "last good checkpoint (epoch 1)" in str(err.value) and "Fix:" in str(err.value)
    with np.load(tmp_path / "checkpoints" / "last.npz") as f:
        state = json.loads(f["state"].tobytes())
    assert state["epoch"] == 1


def test_finetune_phases_unfreeze_then_freeze_the_backbone():
    tasks = ("a", "b")
    model = build_model(ModelConfig("hc2", "small_cnn", "none", image_size=32), tasks)
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = {"a": np.r_[np.zeros(8), np.ones(8)].astype("int32"), "b": np.tile([0, 1], 8).astype("int32")}
    snapshots = []

    class Snap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(model.get_layer("small_cnn_block2_conv").kernel.numpy().copy())

    before = model.get_layer("small_cnn_block2_conv").kernel.numpy().copy()
    eng = Engine(model, tasks, optimizer=lambda: keras.optimizers.Adam(1e-2), monitor="loss", verbose=0)
    hist = eng.fit(finetune_phases(1, 2, tasks, "all"), {"train": _arrays_source(x, y)}, callbacks=[Snap()])
    assert [h["phase"] for h in hist] == ["finetune", "train", "train"]
    assert not np.allclose(before, snapshots[0])  # the backbone learned while unfrozen
    np.testing.assert_array_equal(snapshots[0], snapshots[2])  # and stayed put once frozen again


def test_keras_callbacks_can_stop_training():
    x, y = _tiny_data()

    class StopAtSecond(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    eng = Engine(_tiny_model(), ("a", "b"), optimizer=lambda: keras.optimizers.Adam(1e-3), monitor="loss", verbose=0)
    assert len(eng.fit([Phase("train", 5)], {"train": _arrays_source(x, y)}, callbacks=[StopAtSecond()])) == 2


def test_selects_the_best_epoch_on_validation_and_restores_it():
    keras.utils.set_random_seed(0)
    x, y = _tiny_data(64)
    eng = Engine(_tiny_model(), ("a", "b"), optimizer=lambda: keras.optimizers.Adam(3e-2), monitor="val_loss",
                 verbose=0)
    hist = eng.fit([Phase("train", 6)], {"train": _arrays_source(x, y)}, _arrays_source(x, y)(0))
    best = min(range(6), key=lambda i: hist[i]["val_loss"])
    assert eng.best["epoch"] == best + 1
    assert eng.evaluate(_arrays_source(x, y)(0))["loss"] == pytest.approx(hist[best]["val_loss"], rel=1e-4)


def test_mixed_precision_bfloat16_trains_with_float32_outputs():
    try:
        set_precision("bfloat16")
        model = build_model(ModelConfig("hc2", "small_cnn", "none", image_size=32), ("a", "b"))
        x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
        y = {"a": np.tile([0, 1], 8).astype("int32"), "b": np.tile([1, 0], 8).astype("int32")}
        eng = Engine(model, ("a", "b"), optimizer=lambda: keras.optimizers.Adam(1e-3), monitor="loss", verbose=0)
        hist = eng.fit([Phase("train", 2)], {"train": _arrays_source(x, y)})
        assert model.get_layer("small_cnn_block1_conv").compute_dtype == "bfloat16"
        assert model(x)["a"].dtype == "float32" and all(math.isfinite(h["loss"]) for h in hist)
    finally:
        set_precision("none")


def _run_worker(mode, env=None, timeout=240):
    out = subprocess.run([sys.executable, str(HERE / "_strategy_worker.py"), mode], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_training.py
def test_mirrored_strategy_on_two_devices_equals_one_device():
    single = _run_worker("single")
    mirrored = _run_worker("mirrored")
    assert mirrored["replicas"] == 2
    assert mirrored["checksum"] == pytest.approx(single["checksum"], rel=1e-5)
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_strategy_with_two_cpu_workers_on_localhost():
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen([sys.executable, str(HERE / "_strategy_worker.py"), "multiworker"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    single = _run_worker("single")
    assert [r["chief"] for r in results] == [True, False] and results[0]["replicas"] == 2
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=1e-6)  # workers stay in sync
    assert results[0]["checksum"] == pytest.approx(single["checksum"], rel=1e-4)  # and equal one device


def test_float16_mixed_precision_uses_loss_scaling():
    try:
        set_precision("float16")
        x, y = _tiny_data()
        eng = Engine(_tiny_model(), ("a", "b"), optimizer=lambda: keras.optimizers.Adam(1e-3), monitor="loss",
                     verbose=0)
        hist = eng.fit([Phase("train", 2)], {"train": _arrays_source(x, y)})
        assert isinstance(eng.optimizers["model"], keras.optimizers.LossScaleOptimizer)
        assert all(math.isfinite(h["loss"]) for h in hist)
    finally:
        set_precision("none")


def test_the_warp_is_part_of_a_runs_configuration_and_older_runs_resume_with_theirs(tmp_path):
    """A run records how its augmentation was warped: OpenCV by default, ``--warp tensorflow`` on
    request; a whole configuration written before the option existed reads as TensorFlow's warp (what
    it trained with), so resuming it with today's default is refused with the fix, and a partial
    configuration file gets the default. The cached features of a search are keyed by the warp. (Every
    configuration here computes in float32: the dtype policy that "auto" resolves to depends on the CPU,
    and tests/test_precision.py checks how a resume treats it.)"""
    import dataclasses

    from icao_mtl.config import TrainConfig
    from icao_mtl.errors import ConfigError, ResumeError
    from icao_mtl.runs import check_resumable
    from icao_mtl.train import build_parser, config_from_args
    from nas.depth.features import FeatureKey

    assert TrainConfig().warp == "opencv" and TrainConfig().to_dict()["warp"] == "opencv"
    assert config_from_args(build_parser().parse_args(["--warp", "tensorflow"])).warp == "tensorflow"
    with pytest.raises(ConfigError, match="warp must be one of opencv, tensorflow"):
        TrainConfig(warp="pillow").validate()
    before = {k: v for k, v in TrainConfig(epochs=3, mixed_precision="none").to_dict().items() if k != "warp"}
    assert TrainConfig.from_dict(before).warp == "tensorflow"
    assert TrainConfig.from_dict({"epochs": 3}).warp == "opencv"
    (tmp_path / "config.json").write_text(json.dumps(before))
    with pytest.raises(ResumeError, match="warp: 'tensorflow' in the run, 'opencv' now") as err:
        check_resumable(tmp_path, TrainConfig(epochs=3, mixed_precision="none"))
    assert "Fix:" in str(err.value)
    check_resumable(tmp_path, TrainConfig(epochs=3, mixed_precision="none", warp="tensorflow"))
    stored = config_from_args(build_parser().parse_args(["--resume", "--out", str(tmp_path)]))
    assert stored.warp == "tensorflow"  # --resume --out alone continues with the run's own warp
    assert "warp" in {f.name for f in dataclasses.fields(FeatureKey)}


def test_runs_written_before_the_shared_geometry_trunk_resume_with_their_own(tmp_path):
    """A whole configuration written before --geometry-trunk existed reads as "own" (the branch it
    trained), one from before the OpenCV warp also as TensorFlow's warp; a partial file gets today's
    defaults; resuming an older run with today's default is refused with the fix."""
    from icao_mtl.config import TrainConfig
    from icao_mtl.errors import ConfigError, ResumeError
    from icao_mtl.runs import check_resumable
    from icao_mtl.train import build_parser, config_from_args

    now = TrainConfig(epochs=3, mixed_precision="none").to_dict()
    before = {k: v for k, v in now.items() if k != "geometry_trunk"}
    older = {k: v for k, v in before.items() if k != "warp"}
    assert (TrainConfig.from_dict(before).geometry_trunk, TrainConfig.from_dict(before).warp) == ("own", "opencv")
    assert (TrainConfig.from_dict(older).geometry_trunk, TrainConfig.from_dict(older).warp) == ("own", "tensorflow")
    assert TrainConfig.from_dict({"epochs": 3}).geometry_trunk == "auto" == now["geometry_trunk"]
    assert config_from_args(build_parser().parse_args(["--geometry-trunk", "own"])).geometry_trunk == "own"
    with pytest.raises(ConfigError, match="Fix: --geometry-trunk own"):
        TrainConfig(backbone="vgg16", geometry_trunk="shared").validate()
    TrainConfig(approach="hc2", backbone="vgg16", geometry_trunk="shared").validate()  # no branch: nothing to refuse
    (tmp_path / "config.json").write_text(json.dumps(before))
    with pytest.raises(ResumeError, match="geometry_trunk: 'own' in the run, 'shared' now") as err:
        check_resumable(tmp_path, TrainConfig(epochs=3, mixed_precision="none"))
    assert "Fix:" in str(err.value)
    check_resumable(tmp_path, TrainConfig(epochs=3, mixed_precision="none", geometry_trunk="own"))
    # where the option changes nothing (no geometry branch, or one that "auto" gives its own layers),
    # an older run resumes with today's default
    for changes in ({"approach": "hc2"}, {"landmark_weight": 0.0}, {"img_size": 192}):
        older_run = {k: v for k, v in TrainConfig(epochs=3, mixed_precision="none", **changes).to_dict().items()
                     if k != "geometry_trunk"}
        (tmp_path / "config.json").write_text(json.dumps(older_run))
        check_resumable(tmp_path, TrainConfig(epochs=3, mixed_precision="none", **changes))


def test_paper_presets_are_valid_configurations():
    from icao_mtl.config import PAPER_PRESETS, TrainConfig

    for name, preset in PAPER_PRESETS.items():
        cfg = TrainConfig().copy(**preset, **({"nas_config": [2, 1, 3, 2]} if preset["approach"] == "nas" else {}))
        assert cfg.validate().frozen_backbone(), name


def test_weight_decay_and_test_time_flips_keep_older_runs_as_they_were(tmp_path):
    """A configuration written before --weight-decay and --tta reads as no decay and one score per
    image (how it trained and was evaluated) and keeps its fingerprint, so --resume without --out still
    finds its directory; a decay joins the fingerprint, the test-time flips (evaluation only) do not;
    "auto" flips at test time exactly when the training augmentation flipped; bad values are refused
    with the fix before any work."""
    from icao_mtl.config import TrainConfig
    from icao_mtl.errors import ConfigError
    from icao_mtl.runs import check_resumable
    from icao_mtl.train import build_parser, config_from_args

    now = TrainConfig(epochs=3, mixed_precision="none", weight_decay=0.0, synth_extra=0)
    before = {k: v for k, v in now.to_dict().items() if k not in ("weight_decay", "tta", "synth_extra")}
    old = TrainConfig.from_dict(before)
    assert (old.weight_decay, old.tta, old.resolved_tta()) == (0.0, "none", "none")
    assert old.fingerprint() == now.fingerprint() == now.copy(tta="none").fingerprint()
    assert now.copy(weight_decay=0.05).fingerprint() != now.fingerprint()
    (tmp_path / "config.json").write_text(json.dumps(before))
    check_resumable(tmp_path, now)  # the flips are evaluation: a resume does not compare them
    assert (now.resolved_tta(), TrainConfig(flip=False).resolved_tta(), TrainConfig(augment="none").resolved_tta(),
            TrainConfig(augment="none", tta="flip").resolved_tta()) == ("flip", "none", "none", "flip")
    args = config_from_args(build_parser().parse_args(["--weight-decay", "0.05", "--tta", "none"]))
    assert (args.weight_decay, args.tta) == (0.05, "none")
    with pytest.raises(ConfigError, match="weight_decay must be a number >= 0"):
        TrainConfig(weight_decay=-1.0).validate()
    with pytest.raises(ConfigError, match="tta must be one of auto, flip, none"):
        TrainConfig(tta="mirror").validate()


def test_the_default_run_adds_a_second_synthetic_set_and_weight_decay_where_they_were_measured(tmp_path,
                                                                                            monkeypatch):
    """The default (regions from scratch on the synthetic set) trains with a decay of 0.1 on its own
    training split plus a second synthetic set's (seed 1, rendered on first use); validation and test
    stay the first set's. Other approaches, pretrained weights and other data keep neither; given
    values win; config.json records the decided values; a run written before the two options resumes
    only with what it did (no decay, one set), and the refusal names them."""
    from icao_mtl.config import REGIONS_DEFAULTS, TrainConfig
    from icao_mtl.errors import ResumeError
    from icao_mtl.runs import check_resumable, prepare_data
    from icao_mtl.train import build_parser, config_from_args

    default = TrainConfig()
    assert (default.resolved_weight_decay(), default.resolved_synth_extra()) == (0.1, 1) == \
        (REGIONS_DEFAULTS["weight_decay"], REGIONS_DEFAULTS["synth_extra"])
    assert default.epochs == 12
    for other in (TrainConfig(approach="hc2"), TrainConfig(weights="imagenet")):
        assert (other.resolved_weight_decay(), other.resolved_synth_extra()) == (0.0, 0)
    assert TrainConfig(data=str(tmp_path)).resolved_synth_extra() == 0  # another dataset trains on itself
    assert TrainConfig(approach="hc2", synth_extra=2, weight_decay=0.01).with_defaults().to_dict().items() >= \
        {"synth_extra": 2, "weight_decay": 0.01}.items()
    assert default.with_defaults().fingerprint() == TrainConfig(weight_decay=0.1, synth_extra=1,
                                                                task_weights={"hair_eyes": 4.0}).fingerprint()
    args = config_from_args(build_parser().parse_args(["--synth-extra", "0", "--weight-decay", "0"]))
    assert (args.resolved_synth_extra(), args.resolved_weight_decay()) == (0, 0.0)

    monkeypatch.setenv("ICAO_MTL_DATA", str(tmp_path / "data"))
    small = dict(synth_n=40, synth_size=64, check_images="exists")
    _, alone = prepare_data(TrainConfig(synth_extra=0, **small), verbose=0)
    _, both = prepare_data(TrainConfig(**small), verbose=0)
    _, scoring = prepare_data(TrainConfig(**small), verbose=0, training=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["synthetic_n40_s64_seed0", "synthetic_n40_s64_seed1"]
    added = [n for n in both.train.names if n not in alone.train.names]
    assert len(added) == len(both.train) - len(alone.train) > 20 and all("seed1" in n for n in added)
    assert both.val.names == alone.val.names and both.test.names == alone.test.names
    assert scoring.train.names == alone.train.names  # scoring a run reads no training sets
    from icao_mtl.analyze import split_dataset_of_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "split.csv").write_text("image,split\n" + "".join(f"{n},train\n" for n in both.train.names))
    assert split_dataset_of_run(run, TrainConfig(**small), "train").names == both.train.names

    then = dict(epochs=24, mixed_precision="none")
    before = {k: v for k, v in TrainConfig(**then).to_dict().items()
              if k not in ("weight_decay", "synth_extra", "task_weights")}
    (tmp_path / "config.json").write_text(json.dumps(before))
    check_resumable(tmp_path, TrainConfig(weight_decay=0.0, synth_extra=0, task_weights={}, **then))
    with pytest.raises(ResumeError, match="synth_extra: 0 in the run, 1 now") as refused:
        check_resumable(tmp_path, TrainConfig(**then))
    assert "weight_decay: 0.0 in the run, 0.1 now" in str(refused.value)


def test_task_weights_scale_the_named_requisites_cross_entropy_and_an_unknown_id_stops_before_training(
        synth_small, tmp_path, monkeypatch, capsys):
    """``--task-weights hair_eyes=4``: that requisite's cross-entropy weighs 4 x --loss-weight, the others
    1 x (README: hair over the eyes from 26-30% to 15% in the default run, which weighs it so since
    2026-12-08); the fingerprint of runs without any stays what it was; an id the run does not train is
    refused before any epoch; a run written before the option resumes with none, and the refusal names it."""
    from icao_mtl import losses, train
    from icao_mtl.config import TrainConfig
    from icao_mtl.errors import ConfigError

    cfg = train.config_from_args(train.build_parser().parse_args(["--task-weights", "blurred=4, light=0.5"]))
    assert cfg.task_weights == {"blurred": 4.0, "light": 0.5}
    assert cfg.loss_weights(["blurred", "light", "veil"]) == pytest.approx({"blurred": 0.4, "light": 0.05, "veil": 0.1})
    assert TrainConfig(approach="stl", task_weights={"veil": 2}).loss_weights(["veil", "light"]) == {"veil": 2.0,
                                                                                                    "light": 1.0}
    assert TrainConfig().resolved_task_weights() == {"hair_eyes": 4.0}  # the default run's
    assert TrainConfig(tasks=["blurred", "light"]).resolved_task_weights() == {}
    for other in (TrainConfig(approach="hc2"), TrainConfig(weights="imagenet"), TrainConfig(data=str(tmp_path))):
        assert other.resolved_task_weights() == {}
    assert TrainConfig(approach="hc2").with_defaults().fingerprint() == \
        TrainConfig(approach="hc2", task_weights={}).with_defaults().fingerprint() != cfg.with_defaults().fingerprint()
    then = dict(epochs=24, mixed_precision="none", weight_decay=0.1, synth_extra=1)
    before = {k: v for k, v in TrainConfig(**then).to_dict().items() if k != "task_weights"}
    (tmp_path / "config.json").write_text(json.dumps(before))
    from icao_mtl.errors import ResumeError
    from icao_mtl.runs import check_resumable

    check_resumable(tmp_path, TrainConfig(task_weights={}, **then))
    with pytest.raises(ResumeError, match=r"task_weights: \{\} in the run, \{'hair_eyes': 4.0\} now"):
        check_resumable(tmp_path, TrainConfig(**then))
    for bad in ({"blurred": -1}, {"blurred": "4"}, ["blurred"], {"blurred": True}):
        with pytest.raises(ConfigError, match="task_weights must map requisite ids to numbers >= 0"):
            TrainConfig(task_weights=bad).validate()
    assert train.main(["--task-weights", "blurred=x"]) == 2
    assert "id=factor pairs" in capsys.readouterr().err

    seen = []
    real = losses.MaskedMultiTaskLoss

    class Spy(real):
        def __init__(self, tasks, weights=1.0):
            seen.append(dict(weights))
            super().__init__(tasks, weights)

    monkeypatch.setattr(losses, "MaskedMultiTaskLoss", Spy)
    args = ["--data", str(synth_small), "--approach", "hc2", "--img-size", "64", "--epochs", "1", "--quiet",
            "--check-images", "none", "--tasks", "blurred,light"]
    assert train.main([*args, "--out", str(tmp_path / "unknown"), "--task-weights", "hair_eyes=4"]) == 2
    assert "task_weights names ['hair_eyes'], which this run does not train" in capsys.readouterr().err
    assert not (tmp_path / "unknown" / "checkpoints").exists()
    assert train.main([*args, "--out", str(tmp_path / "run"), "--task-weights", "light=3"]) == 0
    assert seen == [pytest.approx({"blurred": 0.1, "light": 0.3})]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["task_weights"] == {"light": 3.0}
