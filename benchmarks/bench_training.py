"""Training and inference speed, side by side in one run. Writes results/bench_training.json.

1. The engine against ``keras.Model.fit`` on the same model (Handcrafted 2 on the small CNN, 128 px)
   and the same cached, augmented tf.data pipeline: training images/s of whole calls of 3 epochs in
   alternation (engine, fit, engine, fit, ...), the median and the spread of the 6 per-round ratios.
2. Inference: one Handcrafted 2 model (23 outputs) against the 23 STL models the paper's single-task
   approach needs, images/s for the 23 answers of an image (small CNN at 128 px; MobileNetV2 at 224).
3. With ``--default-run``: peak resident memory (RSS) and wall time of ``python -m icao_mtl.train``
   with no argument, in a child process.

    python benchmarks/bench_training.py [--n 1500] [--default-run]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write


def _engine_vs_fit(root, rounds=6, epochs_per_call=3):
    """The engine's ``fit`` and ``Model.fit`` training the same model on the same augmented pipeline,
    whole calls of ``epochs_per_call`` epochs in alternation (engine, fit, engine, fit, ...), so that a
    change of the machine's speed falls on both. Each call is timed from the outside: every epoch's
    iterator start and teardown, steps and bookkeeping count, as they do for a user. A first round of
    each (tracing) is left out; the engine keeps its optimiser across calls (``VariableGroup(reuse=
    True)``) and ``Model.fit`` its train function, so neither traces again."""
    import keras
    import numpy as np

    from icao_mtl import data
    from icao_mtl.architectures import ModelConfig, build_model
    from icao_mtl.losses import MaskedMultiTaskLoss
    from icao_mtl.training import Engine, Phase, VariableGroup

    ds = data.read_dataset(root, check_images="none")
    ds.labels[ds.labels < 0] = 0  # Model.fit has no masking: compare on plain binary labels
    pipe = data.ImagePipeline(ds, 128, 32, augment=data.augment_config("reference"))
    for _ in pipe.train(0):
        pass  # fill the cache
    tasks = ds.tasks

    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig("hc2", "small_cnn", "none"), tasks, ds.groups)
    group = VariableGroup("model", lambda: keras.optimizers.Adam(1e-3), reuse=True)
    engine = Engine(model, tasks, groups={"model": group}, monitor="loss", verbose=0,
                    loss=MaskedMultiTaskLoss(tasks, 0.1), tensorboard=False)
    keras.utils.set_random_seed(0)
    model2 = build_model(ModelConfig("hc2", "small_cnn", "none"), tasks, ds.groups)
    model2.compile(keras.optimizers.Adam(1e-3), loss={t: "sparse_categorical_crossentropy" for t in tasks},
                   loss_weights={t: 0.1 for t in tasks})
    phases = [Phase("train", epochs_per_call)]
    engine_rates, fit_rates = [], []
    for r in range(rounds + 1):
        gc.collect()
        start = time.perf_counter()
        engine.fit(phases, {"train": pipe})
        engine_s = time.perf_counter() - start
        gc.collect()
        start = time.perf_counter()
        model2.fit(pipe.train(r), epochs=epochs_per_call, verbose=0)
        fit_s = time.perf_counter() - start
        if r:
            engine_rates.append(len(ds) * epochs_per_call / engine_s)
            fit_rates.append(len(ds) * epochs_per_call / fit_s)
    e_rates, f_rates = np.array(engine_rates), np.array(fit_rates)
    ratios = e_rates / f_rates
    return {"engine_images_per_s": float(np.median(e_rates)), "keras_fit_images_per_s": float(np.median(f_rates)),
            "ratio_engine_over_fit": float(np.median(ratios)),
            "ratio_min_max": [float(ratios.min()), float(ratios.max())],
            "engine_images_per_s_per_call": e_rates.round(1).tolist(),
            "keras_fit_images_per_s_per_call": f_rates.round(1).tolist(),
            "images": len(ds), "batch": 32, "model": "hc2 small_cnn 128", "rounds_timed": rounds,
            "epochs_per_call": epochs_per_call,
            "order": "alternating calls: engine.fit of 3 epochs, Model.fit of 3 epochs, ...; the first round of each "
                     "(tracing) left out; each call timed as a whole (iterator start and teardown included)"}


def _inference(backbone, size, batch=32, repeats=3):
    import keras
    import numpy as np

    from icao_mtl.architectures import ModelConfig, build_model
    from icao_mtl.requisites import GROUPS, IDS

    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    mtl = build_model(ModelConfig("hc2", backbone, "none", image_size=size), IDS, GROUPS)
    stl = [build_model(ModelConfig("stl", backbone, "none", image_size=size), (t,)) for t in IDS]
    for m in [mtl, *stl]:
        m.predict(x, verbose=0)  # trace once

    def rate(models):
        best = 1e9
        for _ in range(repeats):
            t = time.perf_counter()
            for m in models:
                m.predict(x, verbose=0)
            best = min(best, time.perf_counter() - t)
        return batch / best

    one, many = rate([mtl]), rate(stl)
    keras.backend.clear_session()
    return {"backbone": backbone, "image_size": size, "one_multitask_model_images_per_s": one,
            "23_stl_models_images_per_s": many, "speedup": one / many}


def _default_run():
    out = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "icao_mtl.train", "--out", str(out / "run"), "--quiet"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    wall = time.perf_counter() - t
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    lines = [l for l in proc.stdout.splitlines() if l.startswith("test EER")]
    shutil.rmtree(out, ignore_errors=True)
    return {"returncode": proc.returncode, "wall_seconds": wall, "peak_rss_mb": peak_kb / 1024,
            "result": lines[-1] if lines else proc.stderr[-500:]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--default-run", action="store_true")
    parser.add_argument("--only-engine", action="store_true", help="measure the engine against fit only")
    args = parser.parse_args()
    from icao_mtl.synth import SynthConfig, generate

    tmp = Path(tempfile.mkdtemp())
    try:
        root = generate(tmp / "d", SynthConfig(n=args.n, size=128, seed=0), workers=2, progress=False,
                        contact_sheet=False)
        results = {"engine_vs_fit": _engine_vs_fit(root)}
        print(results["engine_vs_fit"])
        from _common import RESULTS

        previous = RESULTS / "bench_training.json"
        old = json.loads(previous.read_text()) if previous.is_file() else {}
        if args.only_engine:  # keep the other sections of the last full measurement
            for key in ("inference", "default_run"):
                if key in old:
                    results[key] = {**old[key], "note": "measured by an earlier run"} if isinstance(old[key], dict) \
                        else old[key]
        else:
            results["inference"] = [_inference("small_cnn", 128), _inference("mobilenet_v2", 224)]
            for r in results["inference"]:
                print(r)
            if args.default_run:
                results["default_run"] = _default_run()
                print(results["default_run"])
            elif old.get("default_run"):  # keep the last measurement of the (long) default run
                results["default_run"] = {**old["default_run"], "note": "measured by an earlier --default-run"}
        write("bench_training", results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
