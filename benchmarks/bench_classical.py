"""A classical baseline as a peer: hand-made quality measures against a trained model, per requisite.

For the image-level requisites that face-image-quality tools measure without learning (sharpness,
compression, illumination, dynamic range, background uniformity, skin colour, red eyes:
:mod:`icao_mtl.quality`), the test EER of the measure beside the model's:

- on the **synthetic test split** of the run (the same 600 images, the same labels);
- on **degraded real faces**: the LFW task set (the 100 real faces of ``skimage.data.lfw_subset``,
  each rendered 20 times with blur, pixelation, exposure, washed-out and ink defects of known
  severity). The model, trained on synthetic portraits only, scores each face after ``check``'s own
  alignment (MTCNN eyes to the training framing); the measures read the face crop as it is. The AUC
  of compliant against degraded is reported too. A run trained with ``--extra-train lfw_framed`` (the
  LFW train split's faces beside the portraits) is scored on the 25 faces of the LFW val and test
  splits only, which it never saw.

    python benchmarks/bench_classical.py --run runs/default   # a run trained on the default synthetic set

Writes ``benchmarks/results/bench_classical.json``:
``{"synthetic": {requisite: {"model_eer", "classical_eer", ...}}, "lfw": {...}}`` (EERs in percent).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import write


def _rates(labels: np.ndarray, scores: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    from icao_mtl.metrics import equal_error_rate

    keep = labels >= 0
    y, s = labels[keep], scores[keep]
    if len(np.unique(y)) < 2:
        return {"eer": None, "auc": None, "n": int(keep.sum())}
    return {"eer": 100 * float(equal_error_rate(y, s).eer), "auc": float(roc_auc_score(y, s)), "n": int(keep.sum())}


def synthetic_part(run: Path) -> dict:
    from icao_mtl import quality
    from icao_mtl.analyze import split_dataset_of_run
    from icao_mtl.check import load_photo
    from icao_mtl.config import TrainConfig
    from icao_mtl.runs import read_scores

    cfg = TrainConfig.from_json(run / "config.json")
    test = split_dataset_of_run(run, cfg, "test")
    names, model_scores, labels = read_scores(run / "scores_test.csv")
    if list(test.names) != list(names):
        raise SystemExit(f"{run}/scores_test.csv does not list the run's test split. Fix: re-evaluate the run.")
    test_images = [load_photo(p) for p in test.paths]
    train = split_dataset_of_run(run, cfg, "train")
    compliant_skin = np.flatnonzero(train.labels[:, train.tasks.index("skin_tone")] == 1)[:600]
    reference = quality.SkinReference([load_photo(train.paths[i]) for i in compliant_skin])
    measures = {**quality.MEASURES, "skin_tone": lambda im: quality.skin_tone_score(im, reference)}
    out = {}
    for task, measure in measures.items():
        if task not in labels:
            continue
        y = labels[task]
        classical = np.array([measure(im) for im in test_images])
        m, c = _rates(y, model_scores[task]), _rates(y, classical)
        out[task] = {"model_eer": m["eer"], "classical_eer": c["eer"], "model_auc": m["auc"], "classical_auc": c["auc"],
                     "measure": measure.__name__ if hasattr(measure, "__name__") else task, "n": m["n"]}
        print(f"synthetic {task:<12} model EER {m['eer']:6.2f}%  classical {c['eer']:6.2f}%", flush=True)
    return out


def lfw_part(run: Path, limit: int | None) -> dict:
    from icao_mtl import quality
    from icao_mtl.check import score_degraded_faces

    got = score_degraded_faces(run, limit=limit)
    ds, order, scores, images = got["dataset"], got["rows"], got["scores"], got["photos"]
    out = {"_faces_found": got["faces_found"], "_images": int(len(order)),
           "_alignment_s_per_image": got["align_s_per_image"],
           "_faces": "val and test faces (the run trained on the train faces)" if got["unseen_only"] else "all 100"}
    for task in ds.tasks:
        y = ds.labels[order, ds.tasks.index(task)]
        m = _rates(y, scores[task]) if task in scores else {"eer": None, "auc": None}
        row = {"model_eer": m["eer"], "model_auc": m["auc"], "classical_eer": None, "classical_auc": None}
        if task in quality.FACE_CROP_MEASURES:
            c = _rates(y, np.array([quality.FACE_CROP_MEASURES[task](im) for im in images]))
            row.update(classical_eer=c["eer"], classical_auc=c["auc"])
        out[task] = row
        print(f"lfw {task:<12} model EER {row['model_eer'] if row['model_eer'] is None else round(row['model_eer'], 2)}"
              f"  AUC {row['model_auc']}  classical EER {row['classical_eer']}", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run trained on the default synthetic set")
    parser.add_argument("--lfw-limit", type=int, default=None, help="score only this many LFW images (random)")
    parser.add_argument("--name", default="bench_classical", help="results file name")
    args = parser.parse_args()
    run = Path(args.run)
    payload = {"run": str(run), "synthetic": synthetic_part(run), "lfw": lfw_part(run, args.lfw_limit)}
    write(args.name, payload)


if __name__ == "__main__":
    main()
