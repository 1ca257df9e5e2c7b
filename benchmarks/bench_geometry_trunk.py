"""The regions model's geometry branch with its own first layers against the branch that reads the
small CNN's second block (``--geometry-trunk own`` / ``shared``), side by side in one run. Writes
results/bench_geometry_trunk.json: each model's multiply-adds per image and parameters, and the
milliseconds of a training step (forward, loss, backward, Adam) on one fixed batch of 32, rounds
interleaved, with the median of the per-round ratios own / shared.

    python benchmarks/bench_geometry_trunk.py [--steps 10] [--rounds 5] [--size 224]
"""

from __future__ import annotations

import numpy as np

from _common import default_model, mean_square_loss, step_timing_parser, time_training_steps, write


def main():
    args = step_timing_parser().parse_args()

    import tensorflow as tf

    from nas.common.madds import model_madds

    models = {trunk: default_model(args.size, geometry_trunk=trunk) for trunk in ("own", "shared")}
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
