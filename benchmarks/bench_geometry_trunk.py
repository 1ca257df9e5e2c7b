"""The regions model's geometry branch with its own first layers against the branch that reads the
small CNN's second block (``--geometry-trunk own`` / ``shared``), side by side in one run. Writes
results/bench_geometry_trunk.json: each model's multiply-adds per image and parameters, and the
milliseconds of a training step (forward, loss, backward, Adam) on one fixed batch of 32, rounds
interleaved, with the median of the per-round ratios own / shared.

    python benchmarks/bench_geometry_trunk.py [--steps 10] [--rounds 5] [--size 224]
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import mean_square_loss, time_training_steps, write


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from icao_mtl.architectures import build_model, with_landmark_outputs, with_pose_outputs
    from icao_mtl.config import GEOMETRY_DEFAULTS, TrainConfig
    from icao_mtl.requisites import GROUPS, IDS
    from nas.common.madds import model_madds

    def model(trunk):
        keras.utils.set_random_seed(0)
        cfg = TrainConfig(img_size=args.size, geometry_trunk=trunk, **GEOMETRY_DEFAULTS).model_config()
        return with_pose_outputs(with_landmark_outputs(build_model(cfg, IDS, GROUPS)))

    models = {"own": model("own"), "shared": model("shared")}
    sizes = {name: {"madds_per_image": model_madds(m), "parameters": int(m.count_params())} for name, m in models.items()}
    print("sizes:", sizes)
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (32, args.size, args.size, 3)).astype(np.float32))
    speed = time_training_steps(models, x, mean_square_loss, args.steps, args.rounds,
                                ratio_name="ratio_own_over_shared_median")
    print("speed:", speed)
    write("bench_geometry_trunk", {"args": vars(args), "model": "regions + geometry branch (the default run's)",
                                   "batch": 32, "sizes": sizes, "speed": speed})


if __name__ == "__main__":
    main()
