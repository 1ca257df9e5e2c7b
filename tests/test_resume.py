"""A run killed with SIGKILL and resumed ends exactly as an uninterrupted run, for every approach.

Each test runs a command twice at once: uninterrupted, and killed (``tests/_kill_worker.py``) in the
middle of an epoch or right after a phase boundary's checkpoint; then resumes the killed one with
``--resume`` and compares the final weights, metrics and (for the searches) every trial and trace.
The HC3, BMTAS, DAG, MTL-NAS and Auto-VirtualNet runs take minutes each and are marked ``slow`` (``pytest -m slow
tests/test_resume.py``); STL, HC1, HC2 and the branch-depth search run by default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "TF_DETERMINISTIC_OPS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """96 portraits at 64 px (every approach trains on it in seconds)."""
    from icao_mtl.synth import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("resume") / "d", SynthConfig(n=96, size=64, seed=1), progress=False)


def _start(module, args, kill=None):
    env = {k: v for k, v in ENV.items() if k != "KILL_AT"}
    if kill:
        env["KILL_AT"] = kill
    return subprocess.Popen([sys.executable, str(HERE / "_kill_worker.py"), module, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc, killed=False, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    if killed:
        assert proc.returncode == -9, f"the run was to be killed, it ended with {proc.returncode}:\n{err[-3000:]}"
    else:
        assert proc.returncode == 0, err[-3000:]
    return out


def _run_killed_and_full(module, args, out_full, out_cut, kills):
    """The uninterrupted run beside the killed ones (each kill then a resume), then the last resume."""
    full = _start(module, [*args, "--out", str(out_full)])
    first = _start(module, [*args, "--out", str(out_cut)], kill=kills[0])
    _wait(first, killed=True)
    for kill in kills[1:]:
        _wait(_start(module, [*args, "--out", str(out_cut), "--resume"], kill=kill), killed=True)
    resumed = _wait(_start(module, [*args, "--out", str(out_cut), "--resume"]))
    _wait(full)
    return resumed


def _weights(path):
    import icao_mtl

    return [np.asarray(w) for w in icao_mtl.load_model(path).get_weights()]


def _assert_same_run(a: Path, b: Path, model="model.keras"):
    ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    for split in ("val", "test"):
        assert mb[split]["eer_mean"] == pytest.approx(ma[split]["eer_mean"], abs=1e-9), split
        assert mb[split]["per_requisite"] == ma[split]["per_requisite"], split
    for wa, wb in zip(_weights(a / model), _weights(b / model)):
        np.testing.assert_allclose(wb, wa, rtol=1e-5, atol=1e-6)
    ha, hb = json.loads((a / "history.json").read_text()), json.loads((b / "history.json").read_text())
    for name in ha:
        assert [h["epoch"] for h in hb[name]] == [h["epoch"] for h in ha[name]]
        np.testing.assert_allclose([h["loss"] for h in hb[name]], [h["loss"] for h in ha[name]], rtol=1e-5)
    assert json.loads((b / "status.json").read_text())["state"] == "finished"


def _train_args(data, *extra):
    return ["--data", str(data), "--img-size", "64", "--batch-size", "16", "--quiet", "--check-images", "none",
            "--epochs", "3", *extra]


def test_hc2_killed_mid_epoch_resumes_exactly(tiny_set, tmp_path):
    out = _run_killed_and_full("icao_mtl.train", _train_args(tiny_set, "--approach", "hc2"), tmp_path / "full",
                               tmp_path / "cut", ["step:1:7"])
    assert "Resuming after epoch 1" in out
    _assert_same_run(tmp_path / "full", tmp_path / "cut")
    # --resume with another configuration is refused, naming the difference
    args = _train_args(tiny_set, "--approach", "hc2")
    args[args.index("--epochs") + 1] = "7"
    other = subprocess.run([sys.executable, "-m", "icao_mtl.train", *args, "--out", str(tmp_path / "cut"), "--resume"],
                           capture_output=True, text=True, env=ENV, timeout=300)
    assert other.returncode == 2 and "epochs: 3 in the run, 7 now" in other.stderr


def test_regions_with_its_geometry_targets_killed_mid_epoch_resumes_exactly(tiny_set, tmp_path):
    """The default approach: the pose and landmark targets move with each augmented image, so a resumed
    epoch must serve the same targets as well as the same images."""
    args = _train_args(tiny_set, "--approach", "regions")
    args[args.index("--img-size") + 1] = "96"
    out = _run_killed_and_full("icao_mtl.train", args, tmp_path / "full", tmp_path / "cut", ["step:1:7"])
    assert "Resuming after epoch 1" in out
    _assert_same_run(tmp_path / "full", tmp_path / "cut")
    history = json.loads((tmp_path / "cut" / "history.json").read_text())["regions"]
    full = json.loads((tmp_path / "full" / "history.json").read_text())["regions"]
    for key in ("landmark_loss", "landmark_map_loss", "pose_loss"):
        np.testing.assert_allclose([h[key] for h in history], [h[key] for h in full], rtol=1e-5)


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_resume.py
def test_hc1_dropout_and_a_finetune_boundary_resume_exactly(tiny_set, tmp_path):
    """Handcrafted 1 has dropout (its seed generators' states are checkpointed) and, with pretrained
    weights and --finetune-epochs, a phase boundary whose setup (freezing the backbone) must run after
    the restore: killed right after the boundary, then again in the middle of an epoch."""
    import keras

    from icao_mtl.backbones import build_backbone, save_backbone_weights

    keras.utils.set_random_seed(3)
    _, backbone = build_backbone("small_cnn", keras.Input((64, 64, 3)), weights="none")
    weights = tmp_path / "small_cnn.weights.h5"
    save_backbone_weights(backbone, weights)
    args = _train_args(tiny_set, "--approach", "hc1", "--weights", str(weights), "--finetune-epochs", "1",
                       "--lr-schedule", "cosine")
    out = _run_killed_and_full("icao_mtl.train", args, tmp_path / "full", tmp_path / "cut",
                               ["phase:1:finetune", "step:1:12"])
    assert "Resuming after epoch 2" in out
    _assert_same_run(tmp_path / "full", tmp_path / "cut")


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_resume.py
def test_stl_killed_in_its_second_model_resumes_exactly(tiny_set, tmp_path):
    args = _train_args(tiny_set, "--approach", "stl", "--tasks", "blurred,hat,veil", "--epochs", "2")
    _run_killed_and_full("icao_mtl.train", args, tmp_path / "full", tmp_path / "cut", ["step:2:6"])
    for task in ("blurred", "hat", "veil"):
        for wa, wb in zip(_weights(tmp_path / "full" / "models" / f"{task}.keras"),
                          _weights(tmp_path / "cut" / "models" / f"{task}.keras")):
            np.testing.assert_allclose(wb, wa, rtol=1e-5, atol=1e-6)
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert b["test"]["eer_mean"] == pytest.approx(a["test"]["eer_mean"], abs=1e-9)


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_resume.py
def test_hc3_killed_mid_epoch_resumes_exactly(tiny_set, tmp_path):
    args = _train_args(tiny_set, "--approach", "hc3", "--epochs", "2")
    args[args.index("--img-size") + 1] = "128"  # four row bands of the pooled map need 128 px
    _run_killed_and_full("icao_mtl.train", args, tmp_path / "full", tmp_path / "cut", ["step:1:8"])
    _assert_same_run(tmp_path / "full", tmp_path / "cut")


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_resume.py
def test_branch_depth_search_killed_in_a_trial_resumes_exactly(tiny_set, tmp_path):
    args = ["--data", str(tiny_set), "--img-size", "64", "--batch-size", "16", "--quiet", "--controller", "reinforce",
            "--trials", "4", "--child-epochs", "1", "--final-epochs", "2", "--pretrain-epochs", "1", "--views", "1",
            "--max-depth", "2"]
    # one engine trains every trial (one fit each, its model "depth_population"): killed in the third
    _run_killed_and_full("nas.depth", args, tmp_path / "full", tmp_path / "cut", ["fit:depth_population:3"])
    recs = [sorted((json.loads(p.read_text()) for p in (d / "trials").glob("*.json")), key=lambda r: int(r["trial_id"]))
            for d in (tmp_path / "full", tmp_path / "cut")]
    assert [r["config"] for r in recs[1]] == [r["config"] for r in recs[0]]
    np.testing.assert_allclose([r["metrics"]["val_eer_mean"] for r in recs[1]],
                               [r["metrics"]["val_eer_mean"] for r in recs[0]], atol=1e-9)
    assert len({r["trial_id"] for r in recs[1]}) == 4  # every trial once: the finished ones were not rerun
    assert len({tuple(r["config"]) for r in recs[1]}) == 4  # REINFORCE never trains a configuration twice
    ra = json.loads((tmp_path / "full" / "result.json").read_text())
    rb = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert rb["best_config"] == ra["best_config"] and rb["eer_mean"] == pytest.approx(ra["eer_mean"], abs=1e-9)
    _assert_same_run(tmp_path / "full" / "final", tmp_path / "cut" / "final")
    assert json.loads((tmp_path / "cut" / "status.json").read_text())["state"] == "finished"
    assert (tmp_path / "cut" / "final" / "split.csv").is_file()
    # --resume against another search is refused, naming the difference
    other = [*args, "--out", str(tmp_path / "cut"), "--resume"]
    other[other.index("reinforce")] = "random"
    done = subprocess.run([sys.executable, "-m", "nas.depth", *other], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "controller: 'reinforce' there, 'random' now" in done.stderr


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_resume.py
def test_bmtas_search_killed_at_the_warmup_boundary_and_in_the_search_resumes_exactly(tiny_set, tmp_path):
    """Killed right after the warm-up's checkpoint (the search phase's setup and first optimisers not
    made yet), then in the middle of a search epoch; the retraining resumes as any run does (above)."""
    args = ["--data", str(tiny_set), "--img-size", "32", "--batch-size", "16", "--quiet", "--epochs", "4",
            "--warmup", "1", "--arch-fraction", "0.4", "--arch-lr", "0.5", "--retrain-epochs", "0",
            "--lambda", "0.5"]
    _run_killed_and_full("nas.bmtas", args, tmp_path / "full", tmp_path / "cut", ["phase:1:warmup", "step:1:9"])
    a, b = tmp_path / "full" / "lambda_0.5", tmp_path / "cut" / "lambda_0.5"
    with np.load(a / "search" / "checkpoints" / "last.npz") as fa, np.load(b / "search" / "checkpoints" / "last.npz") as fb:
        assert sorted(fa.files) == sorted(fb.files)
        for k in fa.files:
            if k != "state":
                np.testing.assert_allclose(fb[k], fa[k], rtol=1e-5, atol=1e-6, err_msg=k)
    sa, sb = json.loads((a / "structure.json").read_text()), json.loads((b / "structure.json").read_text())
    assert sb["config"] == sa["config"]
    np.testing.assert_allclose(sb["probabilities"], sa["probabilities"], atol=1e-6)
    ta, tb = json.loads((a / "trace.json").read_text()), json.loads((b / "trace.json").read_text())
    assert [e["epoch"] for e in tb] == [e["epoch"] for e in ta]
    np.testing.assert_allclose([e["expected_cost"] for e in tb], [e["expected_cost"] for e in ta], rtol=1e-6)
    assert json.loads((tmp_path / "cut" / "status.json").read_text())["state"] == "finished"


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_resume.py
def test_dag_killed_at_the_search_boundary_and_in_the_finetuning_resumes_exactly(tiny_set, tmp_path):
    """Killed right after the search's checkpoint (the masks written, the rewind and the binary mode not
    yet done), then in the middle of a fine-tuning epoch."""
    args = ["--data", str(tiny_set), "--img-size", "32", "--batch-size", "16", "--quiet", "--N", "4", "--M", "2",
            "--width", "8", "--warmup-epochs", "1", "--search-epochs", "2", "--finetune-epochs", "2"]
    _run_killed_and_full("nas.dag", args, tmp_path / "full", tmp_path / "cut", ["phase:1:search", "step:1:18"])
    _assert_same_run(tmp_path / "full", tmp_path / "cut")
    for f in ("topology.json", "reduction.json"):
        assert json.loads((tmp_path / "cut" / f).read_text()) == json.loads((tmp_path / "full" / f).read_text()), f


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_resume.py
def test_mtl_nas_killed_at_the_pretraining_boundary_and_in_the_search_resumes_exactly(tiny_set, tmp_path):
    """Killed right after the pretraining's checkpoint, then in the middle of a search epoch (the 50/50
    split of that epoch, the binary-concrete draws and the schedules must continue where they were),
    then the retraining runs as any phase."""
    args = ["--data", str(tiny_set), "--img-size", "32", "--batch-size", "16", "--quiet", "--stages", "1", "1",
            "--channels", "8", "16", "--pretrain-epochs", "1", "--search-epochs", "2", "--retrain-epochs", "1"]
    _run_killed_and_full("nas.mtl_nas", args, tmp_path / "full", tmp_path / "cut", ["phase:1:pretrain", "step:1:8"])
    _assert_same_run(tmp_path / "full", tmp_path / "cut")
    ea, eb = (json.loads((tmp_path / d / "edges.json").read_text()) for d in ("full", "cut"))
    assert [r["kept"] for r in eb["rows"]] == [r["kept"] for r in ea["rows"]]
    np.testing.assert_allclose([r["logit"] for r in eb["rows"]], [r["logit"] for r in ea["rows"]], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.slow  # a long end-to-end run: pytest -m slow tests/test_resume.py
def test_virtualnet_killed_at_the_pretraining_boundary_and_in_the_agents_pass_resumes_exactly(tiny_set, tmp_path):
    """Killed right after the pretraining's checkpoint, then in the middle of a search epoch's agent
    pass (the reward baseline, the epsilon schedule and the agent's draws must continue where they
    were): every level's model, metrics and history, the static counts and the agent's weights equal
    the uninterrupted run's."""
    import h5py

    args = ["--data", str(tiny_set), "--img-size", "32", "--batch-size", "16", "--quiet", "--widths", "8", "16",
            "--stem", "8", "--modules-per-stage", "1", "--pretrain-epochs", "1", "--search-epochs", "2",
            "--tasks-per-step", "4"]
    _run_killed_and_full("nas.virtualnet", args, tmp_path / "full", tmp_path / "cut", ["phase:1:pretrain", "step:1:8"])
    for level in ("level1", "level2", "level3"):
        _assert_same_run(tmp_path / "full" / level, tmp_path / "cut" / level)
    ca, cb = (json.loads((tmp_path / d / "configurations.json").read_text()) for d in ("full", "cut"))
    assert cb["static"] == ca["static"] and cb["validation_histogram"] == ca["validation_histogram"]

    def arrays(path):
        out = []
        with h5py.File(path) as f:
            f.visititems(lambda name, obj: out.append((name, obj[()])) if isinstance(obj, h5py.Dataset) else None)
        return out

    for (na, wa), (nb, wb) in zip(arrays(tmp_path / "full" / "virtualnet.weights.h5"),
                                  arrays(tmp_path / "cut" / "virtualnet.weights.h5")):
        assert na == nb
        np.testing.assert_allclose(wb, wa, rtol=1e-5, atol=1e-6, err_msg=na)
