"""Run directories as every command writes them, and the smaller defects of the review (issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from icao_mtl import train

FAST = ["--approach", "hc2", "--img-size", "32", "--batch-size", "16", "--quiet", "--check-images", "none", "--epochs", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from icao_mtl.synth import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("runs") / "d", SynthConfig(n=80, size=64, seed=4), progress=False)


def test_an_interrupted_stl_run_is_not_overwritten_by_a_new_one(tiny, tmp_path, capsys):
    """STL checkpoints live under models/<task>/: the guard looked at run_dir/checkpoints only."""
    out = tmp_path / "stl"
    (out / "models" / "hat" / "checkpoints").mkdir(parents=True)
    argv = ["--data", str(tiny), "--approach", "stl", "--tasks", "hat,veil", "--out", str(out), *FAST]
    assert train.main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_the_seed_changes_the_training_not_the_test_split(tiny, tmp_path):
    for seed in (0, 1):
        assert train.main(["--data", str(tiny), "--tasks", "hat,veil", "--seed", str(seed),
                           "--out", str(tmp_path / f"s{seed}"), *FAST]) == 0
    assert (tmp_path / "s0" / "split.csv").read_text() == (tmp_path / "s1" / "split.csv").read_text()
    assert train.main(["--data", str(tiny), "--tasks", "hat,veil", "--split-seed", "5",
                       "--out", str(tmp_path / "other"), *FAST]) == 0
    assert (tmp_path / "other" / "split.csv").read_text() != (tmp_path / "s0" / "split.csv").read_text()


def test_an_absurd_learning_rate_ends_with_a_collapse_error_not_a_table_of_fifty_percent(tiny, tmp_path, capsys):
    out = tmp_path / "collapsed"
    argv = ["--data", str(tiny), "--lr", "1e6", "--out", str(out), *FAST]
    argv[argv.index("--epochs") + 1] = "24"
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "collapsed" in err and "Fix: lower the learning rate" in err
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == "CollapsedModelError"
    assert not (out / "metrics.json").exists()
    history = np.load(out / "checkpoints" / "last.npz")["state"]
    assert json.loads(history.tobytes())["epoch"] <= 3  # stopped in the first epochs, not after 24


def test_every_saved_model_loads_in_a_fresh_python_with_one_import(tiny, tmp_path):
    """``import icao_mtl; icao_mtl.load_model(path)`` registers what the file needs (the backbones'
    preprocessing, the branched networks' blocks of nas) in a Python that imported nothing else."""
    import keras

    from nas.common.blocks import layout
    from nas.bmtas import build_branched

    out = tmp_path / "hc2"
    assert train.main(["--data", str(tiny), "--tasks", "hat,veil", "--out", str(out), *FAST]) == 0
    model, _ = build_branched(layout("small_cnn", "fine"), ("a", "b"), [("a",), ("b",)],
                              np.array([[0, 0], [0, 0], [0, 1], [0, 1]]), image_size=32)
    model.save(tmp_path / "branched.keras")
    paths = [str(out / "model.keras"), str(tmp_path / "branched.keras")]
    code = (f"import icao_mtl, numpy as np\nfor p in {paths!r}:\n"
            "    print(sorted(icao_mtl.load_model(p)(np.zeros((1, 32, 32, 3), 'float32'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["['hat',", "'veil']", "['a',", "'b']"]
    with pytest.raises(ValueError, match="not a Keras model file"):
        bad = tmp_path / "bad.keras"
        bad.write_text("no zip")
        import icao_mtl

        icao_mtl.load_model(bad)
    del keras


def test_val_eer_follows_the_eer_method():
    """--monitor val_eer with --eer-method roc selected on the FVC EER."""
    import keras
    import tensorflow as tf

    from icao_mtl.metrics import evaluate_tasks
    from icao_mtl.training import Engine, Phase

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (40, 8, 8, 3)).astype("float32")
    y = {"a": rng.integers(0, 2, 40).astype("int32")}
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, {"a": keras.layers.Dense(2, activation="softmax", name="a")(
        keras.layers.Flatten()(inp / 255.0))})
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    engine = Engine(model, ("a",), optimizer=lambda: keras.optimizers.Adam(1e-3), monitor="val_eer", verbose=0,
                    eer_method="roc")
    hist = engine.fit([Phase("train", 1)], {"train": lambda e: data}, data)
    result = engine.evaluate(data)
    roc = evaluate_tasks(result["labels"], result["scores"], method="roc")["a"].eer.eer
    fvc = evaluate_tasks(result["labels"], result["scores"], method="fvc")["a"].eer.eer
    assert hist[0]["val_eer"] == pytest.approx(roc) and roc != pytest.approx(fvc)


def test_handcrafted3_refuses_a_fifth_group_instead_of_reusing_the_first_groups_settings():
    from icao_mtl.architectures import ModelConfig, build_model
    from icao_mtl.errors import ConfigError

    groups = {f"g{i}": (f"t{i}",) for i in range(5)}
    with pytest.raises(ConfigError, match="settings for 4 task groups.*g0, g1, g2, g3, g4.*Fix"):
        build_model(ModelConfig("hc3", "small_cnn", "none", image_size=128), tuple(f"t{i}" for i in range(5)), groups)
