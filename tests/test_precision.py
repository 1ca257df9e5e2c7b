"""Mixed precision: what ``--mixed-precision auto`` (the default) resolves to, the input stage kept in
float32 under mixed bfloat16, Keras' global policy given back after a run, and a resume refused
under another policy than the run's; TensorFlow's oneDNN kernels on wherever the package is imported
first, and recorded in ``status.json``."""

import json
import os
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest

from icao_mtl import training
from icao_mtl.errors import ConfigError, ResumeError
from icao_mtl.training import native_bfloat16_cpu, resolve_precision, set_precision


def test_auto_is_mixed_bfloat16_only_where_the_cpu_computes_it(monkeypatch):
    monkeypatch.setattr(training.tf.config, "list_physical_devices", lambda kind=None: [])
    monkeypatch.setattr(training, "native_bfloat16_cpu", lambda: True)
    assert resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(training, "native_bfloat16_cpu", lambda: False)
    assert resolve_precision("auto") == "float32"
    assert resolve_precision("none") == resolve_precision(None) == resolve_precision("float32") == "float32"
    assert (resolve_precision("bfloat16"), resolve_precision("float16")) == ("mixed_bfloat16", "mixed_float16")
    with pytest.raises(ConfigError, match="Fix: use none, auto, float16 or bfloat16"):
        resolve_precision("int8")
    # on a GPU: bfloat16 from compute capability 8.0 on, float16 (with loss scaling) before
    monkeypatch.setattr(training.tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    for capability, policy in (((7, 5), "mixed_float16"), ((8, 0), "mixed_bfloat16"), ((9, 0), "mixed_bfloat16")):
        monkeypatch.setattr(training.tf.config.experimental, "get_device_details",
                            lambda device, c=capability: {"compute_capability": c})
        assert resolve_precision("auto") == policy, capability
    from icao_mtl.config import TrainConfig

    assert TrainConfig().mixed_precision == "auto"


def test_native_bfloat16_is_read_from_the_cpu_flags_with_onednn_on(monkeypatch, tmp_path):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert native_bfloat16_cpu(with_bf16) and not native_bfloat16_cpu(without)
    assert not native_bfloat16_cpu(tmp_path / "absent")  # another OS: float32
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # without oneDNN's kernels bfloat16 is emulated
    assert not native_bfloat16_cpu(with_bf16)


def test_importing_the_package_first_turns_onednn_on_unless_the_user_set_it():
    """TensorFlow turns its oneDNN kernels on by itself only on AVX-512 VNNI / BF16 / AMX CPUs; the package
    turns them on before TensorFlow loads (1.75x the training step on an AVX2 CPU) and leaves a user's
    TF_ENABLE_ONEDNN_OPTS alone. Each case in a fresh interpreter: TensorFlow reads it once."""
    probe = ("import os, nas.common, tensorflow; from icao_mtl.training import onednn_kernels_on; "
             "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], onednn_kernels_on())")
    for given, expected in ((None, "1 True"), ("0", "0 False"), ("1", "1 True")):
        env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        if given is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = given
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split("\n")[-2] == expected, (given, done.stdout)


def test_the_input_stage_stays_float32_under_mixed_bfloat16():
    """The image, its pooling, crop and scaling, and each branch's first block compute in float32
    (bfloat16's steps near white are half a grey level), and so does the geometry branch from its
    points' logits on (a soft arg-max at a low temperature); the rest in bfloat16; outputs in float32."""
    from icao_mtl.architectures import build_model, with_landmark_outputs, with_pose_outputs
    from icao_mtl.config import GEOMETRY_DEFAULTS, TrainConfig
    from icao_mtl.requisites import GROUPS, IDS

    previous = keras.mixed_precision.global_policy()
    try:
        set_precision("bfloat16")
        built = {trunk: with_pose_outputs(with_landmark_outputs(build_model(
            TrainConfig(geometry_trunk=trunk, **GEOMETRY_DEFAULTS).model_config(), IDS, GROUPS)))
            for trunk in ("shared", "own")}
    finally:
        keras.mixed_precision.set_global_policy(previous)
    for trunk, model in built.items():
        first = ["downsample", "preprocess", "small_cnn_block0_conv", "small_cnn_block0_bn", "small_cnn_block0_relu",
                 "head_eyes_crop", "head_eyes_preprocess", "head_eyes_block0_conv", "head_eyes_block0_bn"]
        first += ["head_geometry_landmark_maps", "head_geometry_landmarks", "head_geometry_dense_1"]  # the points
        rest = ["small_cnn_block1_conv", "small_cnn_block4_conv", "head_eyes_block1_conv", "head_geometry_block2_conv"]
        if trunk == "own":
            first += ["head_geometry_pool", "head_geometry_preprocess", "head_geometry_block0_conv"]
            rest += ["head_geometry_block1_conv"]
        assert {name: model.get_layer(name).compute_dtype for name in first} == dict.fromkeys(first, "float32"), trunk
        assert {name: model.get_layer(name).compute_dtype for name in rest} == dict.fromkeys(rest, "bfloat16"), trunk
        assert all(o.dtype == "float32" for o in model.outputs)


def test_a_mixed_run_gives_back_the_policy_and_resumes_only_under_its_own(synth_small, tmp_path, monkeypatch):
    from icao_mtl import check, train
    from icao_mtl.config import TrainConfig
    from icao_mtl.data import read_dataset
    from icao_mtl.runs import check_resumable

    out = tmp_path / "run"
    args = ["--data", str(synth_small), "--approach", "hc2", "--img-size", "64", "--epochs", "1", "--quiet",
            "--check-images", "none", "--tasks", "blurred,light", "--out", str(out)]
    assert train.main([*args, "--mixed-precision", "bfloat16"]) == 0
    assert keras.mixed_precision.global_policy().name == "float32"  # the process's later models are float32
    status = json.loads((out / "status.json").read_text())
    assert (status["policy"], status["onednn"]) == ("mixed_bfloat16", training.onednn_kernels_on())
    photos = read_dataset(synth_small, check_images="none").paths[:6]
    reports = check.check_photos(out, photos, align="none")  # the mixed model loads and scores
    # the exports compute in float32 (TFLite has no bfloat16 kernels) with the same weights: scores within
    # bfloat16's resolution of the mixed model's
    from icao_mtl import export
    from icao_mtl.runs import load_models

    mixed = load_models(out)["model"]
    twin = export.float32_twin(mixed)
    assert mixed.get_layer("small_cnn_block1_conv").compute_dtype == "bfloat16"
    assert all(layer.compute_dtype == "float32" for layer in twin.layers)
    for fmt in ("savedmodel", "tflite"):
        target = export.export_run(out, fmt, out=tmp_path / fmt)
        exported = check.check_photos(out, photos, align="none", backend=fmt, export_dir=target)
        for a, b in zip(exported, reports):
            for task in ("blurred", "light"):
                assert a.requisites[task]["score"] == pytest.approx(b.requisites[task]["score"], abs=0.05)
    images = np.stack([check.load_photo(p).astype("float32") for p in photos])
    images = np.stack([cv2.resize(i, (64, 64), interpolation=cv2.INTER_AREA) for i in images])
    np.testing.assert_allclose(np.asarray(twin(images)["blurred"]), np.asarray(mixed(images)["blurred"]), atol=0.05)

    def cfg(mode):
        return TrainConfig(data=str(synth_small), approach="hc2", img_size=64, epochs=1, check_images="none",
                           tasks=["blurred", "light"], out=str(out), mixed_precision=mode)

    check_resumable(out, cfg("bfloat16"))
    with pytest.raises(ResumeError, match="mixed_precision: 'mixed_bfloat16' in the run, 'float32' now") as err:
        check_resumable(out, cfg("none"))
    assert "Fix: --mixed-precision bfloat16" in str(err.value)
    # "auto" resumes where it gives the run's policy, and is refused where it does not
    monkeypatch.setattr(training.tf.config, "list_physical_devices", lambda kind=None: [])
    monkeypatch.setattr(training, "native_bfloat16_cpu", lambda: True)
    check_resumable(out, cfg("auto"))
    monkeypatch.setattr(training, "native_bfloat16_cpu", lambda: False)
    with pytest.raises(ResumeError, match="Fix: --mixed-precision bfloat16"):
        check_resumable(out, cfg("auto"))
    # an interrupted run written before status.json recorded the policy of every state: its "auto" meant
    # mixed bfloat16 on every CPU, which a CPU without native bfloat16 no longer gives
    status = json.loads((out / "status.json").read_text())
    (out / "config.json").write_text(json.dumps({**json.loads((out / "config.json").read_text()),
                                                 "mixed_precision": "auto"}))
    (out / "status.json").write_text(json.dumps({k: v for k, v in status.items() if k != "policy"}))
    with pytest.raises(ResumeError, match="'mixed_bfloat16' in the run, 'float32' now"):
        check_resumable(out, cfg("auto"))
    check_resumable(out, cfg("bfloat16"))


def test_gradcam_of_a_mixed_model_matches_its_float32_twin():
    """Grad-CAM differentiates a mixed model's bfloat16 feature map itself (a float32 copy of it is off
    the tape's path): the maps equal, to bfloat16's precision, those of the same weights in float32."""
    from icao_mtl import gradcam
    from icao_mtl.architectures import ModelConfig, build_model

    cfg = ModelConfig("hc2", "small_cnn", "none", image_size=64)
    previous = keras.mixed_precision.global_policy()
    try:
        keras.utils.set_random_seed(0)
        twin = build_model(cfg, ("hat", "veil"))
        set_precision("bfloat16")
        mixed = build_model(cfg, ("hat", "veil"))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    mixed.set_weights(twin.get_weights())
    images = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    for task in ("hat", "veil"):
        ours = gradcam.compute(mixed, images, task, target="compliant", upsample=False)
        exact = gradcam.compute(twin, images, task, target="compliant", upsample=False)
        assert ours.shape == exact.shape and ours.max() > 0
        assert np.corrcoef(ours.ravel(), exact.ravel())[0, 1] > 0.95


def test_resume_without_out_finds_the_runs_that_compute_alike(tmp_path, monkeypatch):
    """``--resume`` without ``--out`` looks for the latest run of the configuration: a run of another
    ``--mixed-precision`` mode that gives the same policy here is one (auto and bfloat16 on a CPU with
    native bfloat16), a run of another policy is not."""
    from icao_mtl.config import TrainConfig
    from icao_mtl.runs import latest_run_dir

    monkeypatch.setenv("ICAO_MTL_RUNS", str(tmp_path))
    monkeypatch.setattr(training.tf.config, "list_physical_devices", lambda kind=None: [])
    cfg = TrainConfig(epochs=3)
    for mode, stamp in (("bfloat16", "20261207-100000"), ("none", "20261207-110000")):
        (tmp_path / f"regions_small_cnn_{cfg.copy(mixed_precision=mode).fingerprint()}_{stamp}").mkdir()
    monkeypatch.setattr(training, "native_bfloat16_cpu", lambda: True)
    assert latest_run_dir(cfg).name.endswith("20261207-100000")  # auto = bfloat16 here; the float32 run is not it
    assert latest_run_dir(cfg.copy(mixed_precision="none")).name.endswith("20261207-110000")
    monkeypatch.setattr(training, "native_bfloat16_cpu", lambda: False)
    assert latest_run_dir(cfg).name.endswith("20261207-110000")  # auto = float32 here
