"""The augmentation's warp, OpenCV (uint8, the default) against TensorFlow's (float32), side by side in
one run. Writes results/bench_augment.json.

The default run's training split (the default synthetic set, 4,500 portraits at 224 px) and its
augmentation (flip, shear, zoom 0.05, shifts 0.04), two :class:`~icao_mtl.data.ImagePipeline` that
differ only in ``warp``:

1. Equivalence: the first batch of epoch 0 from each: the largest and the mean absolute difference of
   the images (values 0-255), and whether labels, landmarks and poses are equal.
2. The pipeline alone: a whole epoch of each (141 batches of 32), rounds interleaved.
3. Training fed by the pipeline (what a run sees, the warp taking CPU from the step): the default run's
   model (regions with the geometry branch), forward, its loss, backward and Adam on batches from each
   pipeline, rounds of ``--steps`` steps interleaved; the median milliseconds per step of each and the
   median of the per-round ratios.

Every dataset runs with the engine's tf.data options (autotuning off).

    python benchmarks/bench_augment.py [--steps 40] [--rounds 4] [--pipeline-rounds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import write


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of training steps per warp")
    parser.add_argument("--pipeline-rounds", type=int, default=3, help="epochs of the pipeline alone per warp")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from icao_mtl.architectures import build_model, landmark_grid, with_landmark_outputs, with_pose_outputs
    from icao_mtl.config import TrainConfig
    from icao_mtl.data import ImagePipeline
    from icao_mtl.losses import GradedMultiTaskLoss
    from icao_mtl.runs import prepare_data
    from icao_mtl.training import _pipeline_options

    cfg = TrainConfig()
    ds, splits = prepare_data(cfg, verbose=0)
    cfg = cfg.with_geometry(splits.train)
    size = cfg.model_config().resolved_size()
    train = splits.train
    pipes = {warp: ImagePipeline(train, size, cfg.batch_size, augment=cfg.augment_config(), seed=cfg.seed,
                                 pose_targets=train.pose, landmark_targets=train.landmarks, warp=warp)
             for warp in ("tensorflow", "opencv")}
    for pipe in pipes.values():  # decode and cache once, outside every timer
        for _ in pipe.base():
            pass

    def epoch(warp, e):
        return pipes[warp].train(e).with_options(_pipeline_options())

    # 1. equivalence
    first = {warp: next(iter(epoch(warp, 0))) for warp in pipes}
    (x_tf, y_tf), (x_cv, y_cv) = first["tensorflow"], first["opencv"]
    diff = np.abs(x_tf.numpy().astype(np.float64) - x_cv.numpy())
    same_targets = all(np.array_equal(y_tf[k].numpy(), y_cv[k].numpy(), equal_nan=True) for k in y_tf)
    equivalence = {"images_max_abs_diff": round(float(diff.max()), 4), "images_mean_abs_diff": round(float(diff.mean()), 4),
                   "labels_landmarks_pose_equal": bool(same_targets)}
    print("equivalence:", equivalence, flush=True)

    # 2. the pipeline alone
    alone = {warp: [] for warp in pipes}
    for r in range(args.pipeline_rounds):
        for warp in pipes:
            start = time.perf_counter()
            n = sum(1 for _ in epoch(warp, r))
            alone[warp].append(round(time.perf_counter() - start, 2))
    print("pipeline epoch, s:", alone, flush=True)

    # 3. training steps fed by each pipeline
    keras.utils.set_random_seed(0)
    model = with_pose_outputs(with_landmark_outputs(build_model(cfg.model_config(), ds.tasks, ds.groups)))
    loss_fn = GradedMultiTaskLoss(ds.tasks, cfg.loss_weight, pose_weight=cfg.pose_weight,
                                  landmark_weight=cfg.landmark_weight, landmark_grid=landmark_grid(model))
    optimizer = keras.optimizers.Adam(cfg.lr)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss, _ = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    iterators = {warp: iter(epoch(warp, 1).repeat()) for warp in pipes}
    for warp, it in iterators.items():  # trace, warm up, fill the prefetch buffers
        for _ in range(3):
            step(*next(it))
    times = {warp: [] for warp in pipes}
    for _ in range(args.rounds):
        for warp, it in iterators.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = step(*next(it))
            float(loss)
            times[warp].append(round((time.perf_counter() - start) / args.steps * 1000, 1))
    ratios = [t / o for t, o in zip(times["tensorflow"], times["opencv"])]
    training = {warp: {"ms_per_step_median": round(float(np.median(t)), 1), "ms_per_step_rounds": t}
                for warp, t in times.items()}
    training["ratio_tensorflow_over_opencv_median"] = round(float(np.median(ratios)), 3)
    training["ratio_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    print("training:", training, flush=True)
    write("bench_augment", {"args": vars(args), "images": len(train), "image_size": size, "batch": cfg.batch_size,
                            "augment": cfg.augment_config().to_dict(), "steps_per_epoch": n,
                            "model": "regions + geometry branch (the default run's)", "equivalence": equivalence,
                            "pipeline_epoch_s": {warp: {"median": float(np.median(t)), "rounds": t}
                                                 for warp, t in alone.items()},
                            "training": training})


if __name__ == "__main__":
    main()
