"""Grad-CAM throughput and the latency of ``python -m icao_mtl.check``, side by side in one run.
Writes results/bench_analysis.json.

1. Grad-CAM heatmaps per second for one requisite of a Handcrafted 2 model (23 outputs): batches of 32
   against one image per step (the reference code's loop), small CNN at 128 px and MobileNetV2 at 224;
   and a separate ``compute`` call per image (each call traces its function).
2. ``check``: per-photo latency (decode, framing, model, thresholds) and start-up time (loading the
   model) with the Keras model, its TFLite export and the quantised TFLite export, on a small run.

    python benchmarks/bench_analysis.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from _common import write


def _gradcam_rate(backbone: str, size: int, n: int = 64) -> dict:
    import keras
    import numpy as np

    from icao_mtl import gradcam
    from icao_mtl.architectures import ModelConfig, build_model
    from icao_mtl.requisites import GROUPS, IDS

    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig("hc2", backbone, "none", image_size=size), list(IDS), GROUPS)
    images = np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    gradcam.compute(model, images[:32], "veil")  # trace both shapes once
    gradcam.compute(model, images[:1], "veil", batch_size=1)
    t = time.perf_counter()
    gradcam.compute(model, images, "veil", batch_size=32)
    batched = n / (time.perf_counter() - t)
    t = time.perf_counter()
    gradcam.compute(model, images, "veil", batch_size=1)  # one traced function, one image per step
    single = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(8):  # a fresh call per image, as a loop over photos does (traces every call)
        gradcam.compute(model, images[i:i + 1], "veil")
    per_call = 8 / (time.perf_counter() - t)
    return {"backbone": backbone, "image_size": size, "heatmaps": n, "batched_32_per_s": batched,
            "one_by_one_per_s": single, "speedup": batched / single, "one_call_per_image_per_s": per_call}


def _check_latency(work: Path, photos: int = 20) -> list:
    from icao_mtl import check, export, train
    from icao_mtl.synth import SynthConfig, generate

    data = generate(work / "data", SynthConfig(n=400, size=224, seed=0), workers=2, progress=False)
    run = work / "run"
    assert train.main(["--data", str(data), "--out", str(run), "--epochs", "1", "--quiet"]) == 0
    export.export_run(run, "tflite")
    export.export_run(run, "tflite", quantize=True, out=run / "export" / "tflite_int8")
    paths = sorted((data / "images").glob("*.png"))[:photos + 1]
    rows = []
    for label, backend in (("keras", "keras"), ("tflite", "tflite"), ("tflite (int8 weights)", "tflite_int8")):
        def run_check(files):
            if backend == "keras":
                return check.check_photos(run, files)
            return check.check_photos(run, files, backend="tflite", export_dir=run / "export" / backend)

        run_check(paths[:1])  # warm the file cache and the imports
        t = time.perf_counter()
        run_check(paths[:1])
        one = time.perf_counter() - t
        t = time.perf_counter()
        reports = run_check(paths)
        many = time.perf_counter() - t
        assert all(r.ok for r in reports)
        per_photo = (many - one) / photos
        files = [run / "model.keras"] if backend == "keras" else list((run / "export" / backend).glob("*.tflite"))
        size = sum(f.stat().st_size for f in files)
        rows.append({"backend": label, "per_photo_ms": 1000 * per_photo, "startup_ms": 1000 * (one - per_photo),
                     "model_file_mb": size / 2**20, "model": "hc2 small_cnn 128 px, 23 requisites"})
        print(rows[-1])
    return rows


def main():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    gradcam_rows = [_gradcam_rate("small_cnn", 128), _gradcam_rate("mobilenet_v2", 224)]
    for r in gradcam_rows:
        print(r)
    with tempfile.TemporaryDirectory() as tmp:
        check_rows = _check_latency(Path(tmp))
    write("bench_analysis", {"gradcam": gradcam_rows, "check": check_rows})


if __name__ == "__main__":
    main()
