"""A branch-depth trial on the feature cache against the same trial from images.

One trial (m = 1) from cached features (the population network of every trial, P = 1, as a search
runs it), the former cached path (a child built and traced per trial) and the same trial from images
through the frozen backbone, from the same head weights: seconds and validation EER (small CNN at
128 px, pretrained 8 epochs as ``nas.depth`` does offline; MobileNetV2 at 224 px, random). The search
controllers are compared in ``bench_exhaustive.py``, against the exhaustive ranking.

    python benchmarks/bench_search.py [--mobilenet-images 3000]

Writes results/bench_search.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import write


def _cached_vs_images(backbone, size, weights, n_images=None):
    import keras
    import numpy as np

    from icao_mtl import data
    from icao_mtl.architectures import ModelConfig, build_model
    from icao_mtl.backbones import set_backbone_trainable
    from icao_mtl.losses import MaskedMultiTaskLoss
    from icao_mtl.training import Engine, Phase
    from nas.depth import search as S
    from nas.depth.features import load_or_build
    from nas.depth.heads import copy_full_to_grouped
    from nas.depth.population import PopulationTrainer

    ds = data.load(None, check_images="exists")
    if n_images:
        ds = ds.subset(np.arange(n_images))
    splits = data.split_dataset(ds, seed=0)
    config = (2, 1, 3, 2)
    aug = data.augment_config("reference")
    tmp = Path(tempfile.mkdtemp())
    try:
        if weights == "none":
            # One random initialisation, saved, so that the cache and the full model share the backbone.
            from icao_mtl.backbones import build_backbone, save_backbone_weights

            keras.utils.set_random_seed(0)
            _, backbone_model = build_backbone(backbone, keras.Input((size, size, 3)), weights="none")
            weights = str(tmp / "backbone.weights.h5")
            save_backbone_weights(backbone_model, weights)
        t = time.perf_counter()
        feats = load_or_build(tmp, splits, backbone=backbone, weights=weights, image_size=size, augment=aug, views=1,
                              seed=0, verbose=0)
        cache_seconds = time.perf_counter() - t
        keras.utils.set_random_seed(0)
        model = build_model(ModelConfig("nas", backbone, weights, image_size=size, nas_config=config), ds.tasks,
                            ds.groups)
        set_backbone_trainable(model, ds.tasks, "frozen")
        # Both paths start from the same head weights, so the metrics differ only by the data path.
        head = S.head_model(config, feats.dim, ds.tasks, ds.groups)
        copy_full_to_grouped(model, head, config, ds.tasks, ds.groups)
        start = {layer.name: [layer.kernel.numpy(), layer.bias.numpy()] for layer in head.layers
                 if hasattr(layer, "kernel")}
        # A search's trials: the population network (P = 1) built once, each trial assigned, trained
        # one epoch and validated once. The first trial traces; the figure is the mean of the next ones.
        t = time.perf_counter()
        trainer = PopulationTrainer(feats, splits, population=1, seed=0)
        seconds = []
        for trial in range(6):
            t = time.perf_counter() if trial else t
            trainer.set_child_weights(0, config, start)
            trainer.train(1)
            cached_metrics = trainer.score()[0]
            seconds.append(time.perf_counter() - t)
        cached = float(np.mean(seconds[1:]))
        # the former path: a grouped head built, trained by a new engine (traced), validated by it
        t = time.perf_counter()
        head = S.head_model(config, feats.dim, ds.tasks, ds.groups)
        copy_full_to_grouped(model, head, config, ds.tasks, ds.groups)
        engine, _ = S.train_head(head, feats, splits, epochs=1, lr=1e-3, batch_size=32, seed=0)
        rebuilt_metrics = S.score(engine, feats.val, splits.val)
        rebuilt = time.perf_counter() - t
        t = time.perf_counter()
        pipe = data.ImagePipeline(splits.train, size, 32, augment=aug, seed=0)
        val = data.ImagePipeline(splits.val, size, 64)
        eng = Engine(model, ds.tasks, optimizer=lambda: keras.optimizers.Adam(1e-3),
                     loss=MaskedMultiTaskLoss(ds.tasks, 0.1), verbose=0)
        eng.fit([Phase("train", 1)], {"train": pipe}, val)
        images_metrics = eng.evaluate(val, summary=True)
        from_images = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"backbone": backbone, "image_size": size, "images": len(ds), "cache_build_seconds": cache_seconds,
            "trial_seconds_cached": cached, "trial_seconds_cached_first (traces)": seconds[0],
            "trial_seconds_cached_rebuilt (former path)": rebuilt, "trial_seconds_from_images": from_images,
            "ratio": from_images / cached, "ratio_former_path": from_images / rebuilt,
            "val_eer_mean_cached": cached_metrics["eer_mean"], "val_eer_mean_cached_rebuilt": rebuilt_metrics["eer_mean"],
            "val_eer_mean_from_images": images_metrics["eer"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mobilenet-images", type=int, default=None,
                        help="images for the MobileNetV2 timing (default: the whole default set)")
    args = parser.parse_args()
    from icao_mtl import data
    from nas.depth import search as S

    work = Path(os.environ.get("ICAO_MTL_BENCH_DIR") or tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    data.resolve(None)  # the default synthetic set
    # The frozen backbone: the small CNN pretrained 8 epochs (as `nas.depth` does offline).
    pre = S.SearchConfig(trials=1, final_epochs=0, verbose=1, out=str(work / "prepare"), cache_dir=str(work / "cache"))
    t = time.perf_counter()
    out = work / "prepare"
    out.mkdir(parents=True, exist_ok=True)
    _, _, weights, _ = S._prepare(pre, out, 1)
    prepare_seconds = time.perf_counter() - t
    results = {"prepare_seconds (pretrain 8 epochs + cache 4 views)": prepare_seconds}
    trial_cost = [_cached_vs_images("small_cnn", 128, weights),
                  _cached_vs_images("mobilenet_v2", 224, "none", n_images=args.mobilenet_images)]
    results["cached_vs_images"] = trial_cost
    for r in trial_cost:
        print(r)
    write("bench_search", results)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
