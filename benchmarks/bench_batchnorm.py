"""Keras's batch normalisation against the fused kernel (``FusedBatchNormalization``), side by side in
one run. Writes results/bench_batchnorm.json.

(results/bench_batchnorm.json was measured before the geometry branch shared the small CNN's second
block: 147 M multiply-adds an image, not today's 127 M.)

1. Equivalence: the default run's model (the regions approach with its geometry branch, 224 px) built
   twice from one seed, once with ``keras.layers.BatchNormalization`` in every ``conv_bn_relu`` and
   once with ``FusedBatchNormalization``; the same batch through both: the largest difference of the
   outputs, of the loss's gradients and of the moving statistics after one training step.
2. Speed: a training step (forward, loss, backward, Adam) of each model on one fixed batch of 32,
   rounds interleaved (keras, fused, keras, fused, ...), the median milliseconds per step of each and
   the median of the per-round ratios.

    python benchmarks/bench_batchnorm.py [--steps 10] [--rounds 5] [--size 224] [--precision none]
"""

from __future__ import annotations

import numpy as np

from _common import default_model, mean_square_loss, step_timing_parser, time_training_steps, write


def main():
    parser = step_timing_parser()
    parser.add_argument("--precision", default="none", help="the engine's --mixed-precision: none, bfloat16, ...")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from icao_mtl.training import set_precision

    set_precision(args.precision)

    from icao_mtl import backbones

    def model(norm):
        fused = backbones.FusedBatchNormalization
        backbones.FusedBatchNormalization = norm  # conv_bn_relu reads the module's name when it builds
        try:
            return default_model(args.size)
        finally:
            backbones.FusedBatchNormalization = fused

    models = {"keras": model(keras.layers.BatchNormalization), "fused": model(backbones.FusedBatchNormalization)}
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (32, args.size, args.size, 3)).astype(np.float32))

    # 1. equivalence, before any step changes the weights
    grads, outs = {}, {}
    for name, m in models.items():
        with tf.GradientTape() as tape:
            out = m(x, training=True)
            loss = mean_square_loss(out)
        grads[name] = tape.gradient(loss, m.trainable_variables)
        outs[name] = tf.nest.flatten(out)
    moving = {name: [v.numpy() for v in m.non_trainable_variables] for name, m in models.items()}

    def largest(a, b):
        return max(float(np.max(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)))) for p, q in zip(a, b))

    def scale(a):
        return max(float(np.max(np.abs(np.asarray(p, np.float64)))) for p in a)

    equivalence = {"outputs_max_abs_diff": largest(outs["keras"], outs["fused"]), "outputs_max_abs": scale(outs["keras"]),
                   "gradients_max_abs_diff": largest(grads["keras"], grads["fused"]),
                   "gradients_max_abs": scale(grads["keras"]),
                   "moving_statistics_max_abs_diff": largest(moving["keras"], moving["fused"])}
    print("equivalence:", equivalence)

    # 2. speed
    speed = time_training_steps(models, x, mean_square_loss, args.steps, args.rounds,
                                ratio_name="ratio_keras_over_fused_median")
    print("speed:", speed)
    write("bench_batchnorm", {"args": vars(args), "model": "regions + geometry branch (TrainConfig's default at --size)",
                              "batch": 32, "equivalence": equivalence, "speed": speed})


if __name__ == "__main__":
    main()
