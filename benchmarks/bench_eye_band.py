"""What limits one eye requisite: the eye band alone, one task, the same steps on 1x or 2x the portraits.

Hair over the eyes stays at 24-35% test EER in every default run. This script takes the multi-task
model out of the question: the regions model's eye band (rows 0.29-0.53, columns 0.27-0.73 of the
224-px portrait, 54 x 104 px, read at full resolution) goes through the same four conv-BN-ReLU layers
(16, 24, 48, 64 filters, max pooling after the last three; the package's ``conv_bn_relu``), average
and max pooling, D(64), D(2), for one requisite only. (The regions model reads the band from the
whole augmented portrait; here random 6-px shifts of the crop stand for the run's shifts.) It trains two such models for the same number of steps, side by side:

- ``default``: the training split of the default synthetic set (4,500 portraits), ``--epochs`` epochs;
- ``twice``: the same split plus the training split of a second synthetic set (seed 1, 4,500 more
  portraits, rendered on first use), half the epochs: the same steps on more distinct faces.

Both are scored on the default set's validation and test splits (FVC2000 EER, percent), and the test
scores are averaged by severity bin: a model that only sees *whether* strands are there gives the
same score to every reach; one that sees *where their tips end* gives lower compliant scores as the
reach grows past the threshold (0.35 of the eye opening).

    python benchmarks/bench_eye_band.py --task hair_eyes --epochs 12

Writes ``benchmarks/results/bench_eye_band.json``. With ``--epochs 12``, about 7 minutes per way alone on
2 cores (float32; 17 and 11 beside a test-suite run, the figures in the JSON).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import write

MARGIN = 6  # pixels around the band for the random shifts of training (the run's augmentation shifts too)
SEVERITY_BINS = (-0.01, 0.001, 0.2, 0.35, 0.5, 0.75, 1.0)


def band_arrays(dataset, rows, margin: int = MARGIN):
    """uint8 ``(len(rows), band_h + 2 margin, band_w + 2 margin, 3)`` crops of the eye band."""
    from PIL import Image

    from icao_mtl.architectures import eye_band_box

    top, bottom, left, right = eye_band_box(224)
    crops = []
    for path in np.asarray(dataset.paths)[rows]:
        image = np.asarray(Image.open(path).convert("RGB"))
        if image.shape[:2] != (224, 224):
            raise SystemExit(f"{path}: this script reads 224-px portraits (the synthetic set's default size).")
        crops.append(image[top - margin:bottom + margin, left - margin:right + margin])
    return np.stack(crops)


def eye_band_model(height: int, width: int, seed: int):
    """The regions model's eye branch with one head: (batch, height, width, 3) uint8 -> (batch, 2)."""
    import keras

    from icao_mtl.backbones import Preprocess, conv_bn_relu

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((height, width, 3))
    x = Preprocess("unit")(inputs)  # as the regions model's eye branch: [0, 255] -> [0, 1]
    for i, filters in enumerate((16, 24, 48, 64)):
        x = conv_bn_relu(x, filters, f"eyes_block{i}")
        if i >= 1:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(x), keras.layers.GlobalMaxPooling2D()(x)])
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def train_and_score(train_x, train_y, evals: dict, epochs: int, seed: int) -> dict:
    """Train one eye-band model; ``evals``: name -> (x, y, severity). Returns EERs (%) and score means."""
    import keras
    import tensorflow as tf

    from icao_mtl.metrics import equal_error_rate

    height, width = train_x.shape[1] - 2 * MARGIN, train_x.shape[2] - 2 * MARGIN
    model = eye_band_model(height, width, seed)
    batches = int(np.ceil(len(train_x) / 32))
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, epochs * batches)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy")
    # class 0 = compliant (label 1), as the package's heads: softmax[:, 0] is the compliance score
    train = (tf.data.Dataset.from_tensor_slices((train_x, (1 - train_y).astype("int32")))
             .shuffle(len(train_x), seed=seed)
             .map(lambda x, y: (tf.image.random_crop(x, (height, width, 3), seed=seed), y))
             .batch(32).prefetch(2))
    start = time.perf_counter()
    history = model.fit(train, epochs=epochs, verbose=2)
    out = {"epochs": epochs, "steps": epochs * batches, "train_images": len(train_x),
           "seconds": round(time.perf_counter() - start, 1), "final_loss": round(history.history["loss"][-1], 4)}
    for name, (x, y, severity) in evals.items():
        centre = x[:, MARGIN:MARGIN + height, MARGIN:MARGIN + width]
        scores = model.predict(centre, batch_size=64, verbose=0)[:, 0]
        out[f"{name}_eer"] = round(100 * equal_error_rate(y, scores).eer, 2)
        if name == "test":
            bins = np.digitize(severity, SEVERITY_BINS[1:-1], right=True)
            out["test_score_by_severity"] = {
                f"({SEVERITY_BINS[b]}, {SEVERITY_BINS[b + 1]}]": [round(float(scores[bins == b].mean()), 3),
                                                                int((bins == b).sum())]
                for b in range(len(SEVERITY_BINS) - 1) if (bins == b).any()}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="hair_eyes", help="an eye requisite (default hair_eyes)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs on the default training split (even)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from icao_mtl import data

    ds = data.load("synthetic", progress=True)
    splits = data.split_dataset(ds, seed=0)
    extra = data.load(data.resolve("synthetic", seed=1, progress=True))
    extra_rows = np.flatnonzero(np.asarray(extra.split) == "train") if extra.split is not None else \
        np.flatnonzero(data.stratified_split(extra.labels, data.DEFAULT_FRACTIONS, 0) == 0)

    def pick(view):
        """(eye bands, labels, severities) of the rows of ``view`` where the task applies."""
        column = list(view.tasks).index(args.task)
        rows = np.flatnonzero(view.labels[:, column] >= 0)
        return band_arrays(view, rows), view.labels[rows, column].astype(int), view.severities[rows, column]

    train_main = pick(splits.train)
    train_extra = pick(extra.subset(extra_rows))
    evals = {"val": pick(splits.val), "test": pick(splits.test)}
    results = {"task": args.task, "band_px": [train_main[0].shape[1] - 2 * MARGIN, train_main[0].shape[2] - 2 * MARGIN],
               "margin_px": MARGIN, "ways": {}}
    results["ways"]["default"] = train_and_score(train_main[0], train_main[1], evals, args.epochs, args.seed)
    print("default:", results["ways"]["default"], flush=True)
    both_x = np.concatenate([train_main[0], train_extra[0]])
    both_y = np.concatenate([train_main[1], train_extra[1]])
    results["ways"]["twice"] = train_and_score(both_x, both_y, evals, max(1, args.epochs // 2), args.seed)
    print("twice:", results["ways"]["twice"], flush=True)
    write("bench_eye_band", results)
    return results


if __name__ == "__main__":
    main()
