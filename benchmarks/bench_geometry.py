"""How well a run trained with ``--landmark-weight`` locates the face, and what that gives ``rotation``.

Side by side on the run's validation and test splits:

- the located points against ``landmarks.csv``: error in pixels of the 224-px portrait per point;
- the roll read from the located eyes against ``pose.csv`` (mean error in degrees, correlation), and
  the yaw ratio (eye midpoint between the face's edges) against the true yaw (correlation);
- the ``rotation`` EER of the network's own head beside scores computed by hand from the points:
  ``|roll|`` alone, the yaw ratio alone, and the larger of the two, each in units of its threshold.

    python benchmarks/bench_geometry.py --run runs/landmarks   # trained with --landmark-weight

Writes ``benchmarks/results/bench_geometry.json`` (EERs in percent).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import write


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run directory trained with --landmark-weight")
    p.add_argument("--name", default="bench_geometry", help="results file name (without .json)")
    args = p.parse_args(argv)

    import keras

    import icao_mtl
    from icao_mtl.architectures import with_landmark_outputs
    from icao_mtl.config import TrainConfig
    from icao_mtl.data import LANDMARK_KEY, LANDMARK_POINTS
    from icao_mtl.metrics import equal_error_rate
    from icao_mtl.runs import make_pipelines, prepare_data, read_scores

    run = Path(args.run)
    cfg = TrainConfig.from_json(run / "config.json")
    _, splits = prepare_data(cfg, verbose=0)
    pipes = make_pipelines(cfg, splits)
    model = with_landmark_outputs(icao_mtl.load_model(run / "model.keras"))
    locate = keras.Model(model.inputs, model.output[LANDMARK_KEY])
    size = int(model.inputs[0].shape[1])
    rotation = splits.train.tasks.index("rotation")
    out = {"run": str(run), "image_size": size}
    for split in ("val", "test"):
        ds = splits[split]
        pred = np.concatenate([locate.predict_on_batch(x) for x, _ in pipes[split].eval()])
        found = np.stack([pred[:, :4], pred[:, 4:]], -1) * size  # (n, 4, 2) pixels
        true = ds.landmarks.reshape(-1, 4, 2) * size
        err = np.linalg.norm(found - true, axis=-1)
        roll = np.degrees(np.arctan2(found[:, 1, 1] - found[:, 0, 1], found[:, 1, 0] - found[:, 0, 0]))
        yaw = ((found[:, 0, 0] + found[:, 1, 0]) / 2 - (found[:, 2, 0] + found[:, 3, 0]) / 2) / (
            found[:, 3, 0] - found[:, 2, 0])
        # the yaw ratio at the 8-degree threshold, from the true yaw of the training split's faces
        train_yaw = splits.train.pose[:, 1]
        true_ratio = ((splits.train.landmarks[:, 0] + splits.train.landmarks[:, 2]) / 2
                      - (splits.train.landmarks[:, 4] + splits.train.landmarks[:, 6]) / 2) / (
            splits.train.landmarks[:, 6] - splits.train.landmarks[:, 4])
        slope = float(np.polyfit(train_yaw, true_ratio, 1)[0])  # ratio per degree
        labels = ds.labels[:, rotation]
        keep = labels >= 0
        _, head, _ = read_scores(run / f"scores_{split}.csv")
        by_hand = {"roll": -np.abs(roll) / 8.0, "yaw_ratio": -np.abs(yaw) / abs(8.0 * slope)}
        by_hand["larger"] = np.minimum(by_hand["roll"], by_hand["yaw_ratio"])
        out[split] = {
            "points": list(LANDMARK_POINTS),
            "median_error_px": np.median(err, 0).round(2).tolist(),
            "mean_error_px": err.mean(0).round(2).tolist(),
            "roll_mean_error_deg": round(float(np.abs(roll - ds.pose[:, 0]).mean()), 2),
            "roll_correlation": round(float(np.corrcoef(roll, ds.pose[:, 0])[0, 1]), 3),
            "yaw_ratio_correlation": round(float(np.corrcoef(yaw, ds.pose[:, 1])[0, 1]), 3),
            "rotation_eer": {"network_head": round(100 * equal_error_rate(labels[keep], head["rotation"][keep]).eer, 2),
                             **{f"from_points_{k}": round(100 * equal_error_rate(labels[keep], v[keep]).eer, 2)
                                for k, v in by_hand.items()}},
        }
        print(split, out[split])
    write(args.name, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
