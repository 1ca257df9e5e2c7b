"""How well a regions run with its geometry branch locates the face, the pose it reads from the points,
and what that gives ``rotation``.

Side by side on the run's validation and test splits:

- the located points against ``landmarks.csv``: error in pixels of the 224-px portrait per point;
- the signed roll, yaw and pitch of the branch against ``pose.csv``: mean absolute error in degrees,
  against predicting 0 (the compliant mean), and correlation;
- the ``rotation`` EER of the network's head (which reads that pose) beside the plain score
  ``-max(|roll|, |yaw|, |pitch|)`` of the predicted angles, overall and per axis (the non-compliant
  faces turned about that axis against every compliant face).

    python benchmarks/bench_geometry.py --run runs/regions_xxx   # a default run (geometry on by default)

Writes ``benchmarks/results/bench_geometry.json`` (EERs in percent).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import write


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a regions run directory trained with its geometry branch")
    p.add_argument("--name", default="bench_geometry", help="results file name (without .json)")
    args = p.parse_args(argv)

    import keras

    import icao_mtl
    from icao_mtl.architectures import with_landmark_outputs, with_pose_outputs
    from icao_mtl.config import TrainConfig
    from icao_mtl.data import LANDMARK_KEY, LANDMARK_POINTS, POSE_AXES, POSE_KEY
    from icao_mtl.metrics import equal_error_rate
    from icao_mtl.runs import make_pipelines, prepare_data, read_scores

    run = Path(args.run)
    cfg = TrainConfig.from_json(run / "config.json")
    _, splits = prepare_data(cfg, verbose=0)
    pipes = make_pipelines(cfg, splits)
    model = with_pose_outputs(with_landmark_outputs(icao_mtl.load_model(run / "model.keras")))
    geometry = keras.Model(model.inputs, [model.output[LANDMARK_KEY], model.output[POSE_KEY]])
    size = int(model.inputs[0].shape[1])
    count = len(LANDMARK_POINTS)
    rotation = splits.train.tasks.index("rotation")
    out = {"run": str(run), "image_size": size, "points": list(LANDMARK_POINTS)}
    for split in ("val", "test"):
        ds = splits[split]
        found, pose = (np.concatenate(parts) for parts in zip(*(
            [v.numpy() if hasattr(v, "numpy") else v for v in geometry.predict_on_batch(x)]
            for x, _ in pipes[split].eval())))
        pose = pose * 10.0  # the branch's unit: tens of degrees
        located = np.stack([found[:, :count], found[:, count:]], -1) * size  # (n, P, 2) pixels
        err = np.linalg.norm(located - ds.landmarks.reshape(-1, count, 2) * size, axis=-1)
        labels = ds.labels[:, rotation]
        keep = labels >= 0
        _, head, _ = read_scores(run / f"scores_{split}.csv")
        from_pose = -np.abs(pose).max(1)
        axis = np.abs(ds.pose).argmax(1)

        def eer(scores, rows):
            return round(100 * equal_error_rate(labels[rows], scores[rows]).eer, 2)

        per_axis = {}
        for k, name in enumerate(POSE_AXES):
            rows = keep & ((labels == 1) | (axis == k))
            per_axis[name] = {"network_head": eer(head["rotation"], rows), "from_pose": eer(from_pose, rows)}
        out[split] = {
            "median_error_px": dict(zip(LANDMARK_POINTS, np.median(err, 0).round(2).tolist())),
            "mean_error_px": dict(zip(LANDMARK_POINTS, err.mean(0).round(2).tolist())),
            "pose_mean_abs_error_deg": dict(zip(POSE_AXES, np.abs(pose - ds.pose).mean(0).round(2).tolist())),
            "pose_mean_abs_deg_predicting_zero": dict(zip(POSE_AXES, np.abs(ds.pose).mean(0).round(2).tolist())),
            "pose_correlation": {a: round(float(np.corrcoef(pose[:, k], ds.pose[:, k])[0, 1]), 3)
                                 for k, a in enumerate(POSE_AXES)},
            "rotation_eer": {"network_head": eer(head["rotation"], keep), "from_pose": eer(from_pose, keep)},
            "rotation_eer_per_axis": per_axis,
        }
        print(split, out[split])
    write(args.name, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
