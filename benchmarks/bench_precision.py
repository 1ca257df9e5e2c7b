"""The default model (regions with its geometry branch, 224 px) trained in float32 against mixed
bfloat16, side by side in one run: mixed bfloat16 as ``--mixed-precision bfloat16`` builds it (the input
stage in float32, ``icao_mtl.backbones.INPUT_STAGE_DTYPE``) and with the input stage in bfloat16 too.
Writes results/bench_precision.json: the milliseconds of a training step (forward, loss, backward,
Adam) on one fixed batch of 32, rounds interleaved, the per-round ratios float32 / each mixed way,
and whether this CPU computes bfloat16 natively (``icao_mtl.training.native_bfloat16_cpu``: where it
does not, bfloat16 is emulated and slower).

    python benchmarks/bench_precision.py [--steps 10] [--rounds 5] [--size 224]
"""

from __future__ import annotations

import numpy as np

from _common import default_model, mean_square_loss, step_timing_parser, time_training_steps, write


def main():
    args = step_timing_parser().parse_args()

    import keras
    import tensorflow as tf

    from icao_mtl import architectures, backbones
    from icao_mtl.training import native_bfloat16_cpu

    def model(policy, input_stage="float32"):
        # the input stage's dtype is a module constant read when the layers are built
        architectures.INPUT_STAGE_DTYPE = backbones.INPUT_STAGE_DTYPE = input_stage
        keras.mixed_precision.set_global_policy(policy)
        try:
            return default_model(args.size)
        finally:
            keras.mixed_precision.set_global_policy("float32")
            architectures.INPUT_STAGE_DTYPE = backbones.INPUT_STAGE_DTYPE = "float32"

    models = {"float32": model("float32"), "mixed_bfloat16": model("mixed_bfloat16"),
              "mixed_bfloat16_input_stage_too": model("mixed_bfloat16", input_stage=None)}
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (32, args.size, args.size, 3)).astype(np.float32))
    speed = time_training_steps(models, x, mean_square_loss, args.steps, args.rounds)
    base = speed["float32"]["ms_per_step_rounds"]
    for name in ("mixed_bfloat16", "mixed_bfloat16_input_stage_too"):
        ratios = [a / b for a, b in zip(base, speed[name]["ms_per_step_rounds"])]
        speed[f"ratio_float32_over_{name}_median"] = round(float(np.median(ratios)), 3)
        speed[f"ratio_float32_over_{name}_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    print("speed:", speed)
    write("bench_precision", {"args": vars(args), "model": "regions + geometry branch (the default run's)",
                              "batch": 32, "native_bfloat16_cpu": native_bfloat16_cpu(), "speed": speed})


if __name__ == "__main__":
    main()
