"""``python -m icao_mtl.analyze RUN_DIR --requisite veil [--kind tp|tn|fp|fn|all] [--n 12] [--split test]``

Error analysis with Grad-CAM, as the paper's Figure 9: galleries of true / false positives and
negatives of one requisite (or ``--requisite all``), each image with its heatmap, label, score and the
decision threshold (the EER threshold chosen on the validation split). Positive = compliant:
TP compliant accepted, FN compliant rejected, FP non-compliant accepted, TN non-compliant rejected.
PNG files go to ``RUN_DIR/analysis/``.

``--regions`` adds the check the paper could not make: on the synthetic set, the renderer knows where it
drew each defect, so for every requisite the share of heatmap mass inside its region (eyes, hair
strands, mouth, lower face and veil, face, head top, background, head shadow, the close object, the ink
mark) is measured on non-compliant images (Grad-CAM of the non-compliant class) and compared with the
region's share of the image (what a uniform heatmap would give):
``analysis/region_mass.md``, ``.csv`` and ``.png``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from . import io as aio
from .errors import ConfigError, IcaoMtlError, command

KINDS = ("tp", "tn", "fp", "fn", "all")


def split_dataset_of_run(run_dir: Path, cfg, split: str):
    """The images of one split of a run, in the order of its scores file."""
    import pandas as pd

    from . import data

    if not (run_dir / "split.csv").is_file():
        raise ConfigError(f"{run_dir} has no split.csv, so its images cannot be matched to the splits. Fix: pass a run "
                          "directory written by python -m icao_mtl.train, nas.depth or nas.bmtas.")
    mapping = data.ColumnMapping.from_json(cfg.mapping) if cfg.mapping else None
    ds = data.load(cfg.data, tasks=cfg.tasks, mapping=mapping, check_images="exists", synth_n=cfg.synth_n,
                   synth_size=cfg.synth_size, progress=False)
    from .data.splits import append_rows

    # only the training split holds other sets' rows (in split.csv: <its directory>/<image>)
    for name, load_kwargs in cfg.extra_training_sets() if split == "train" else ():
        ds = append_rows(ds, data.load(name, check_images="exists", progress=False, **load_kwargs))
    table = pd.read_csv(run_dir / "split.csv")
    names = table.loc[table["split"] == split, "image"].tolist()
    index = {n: i for i, n in enumerate(ds.names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ConfigError(f"{len(missing)} images of the run's {split} split are no longer in {ds.root} (e.g. "
                          f"{missing[0]}). Fix: analyse with the dataset the run was trained on.")
    return ds.subset(np.array([index[n] for n in names], dtype=int))


def outcome(label: np.ndarray, score: np.ndarray, threshold: float) -> np.ndarray:
    """'tp' / 'tn' / 'fp' / 'fn' per image ('' where the label is not applicable); compliant is positive."""
    accepted = score >= threshold
    out = np.full(len(label), "", dtype=object)
    out[(label == 1) & accepted] = "tp"
    out[(label == 1) & ~accepted] = "fn"
    out[(label == 0) & accepted] = "fp"
    out[(label == 0) & ~accepted] = "tn"
    return out


def _threshold(metrics: dict, task: str) -> float:
    for split in ("val", "test"):
        t = metrics.get(split, {}).get("per_requisite", {}).get(task, {}).get("threshold")
        if t is not None and math.isfinite(t):
            return float(t)
    raise ConfigError(f"No EER threshold for {task!r} in metrics.json (its EER is undefined on validation and "
                      "test). Fix: choose another requisite.")


def gallery(run_dir: Path, task: str, kind: str = "all", n: int = 12, split: str = "test", *, layer=None,
            plus: bool = False, seed: int = 0) -> Path | None:
    """Write a Grad-CAM gallery PNG for one requisite; returns its path (None if no image of that kind)."""
    from . import gradcam
    from .data import ImagePipeline
    from .reports import _name, _plt, _save
    from .runs import load_run, read_scores

    cfg, models = load_run(run_dir)
    names, scores, labels = read_scores(run_dir / f"scores_{split}.csv")
    if task not in scores:
        raise ConfigError(f"The run has no scores for {task!r}; it has {list(scores)}. Fix: pick one of them.")
    metrics = aio.read_json(run_dir / "metrics.json")
    thr = _threshold(metrics, task)
    kinds = outcome(labels[task], scores[task], thr)
    chosen = np.flatnonzero(kinds != "") if kind == "all" else np.flatnonzero(kinds == kind)
    if len(chosen) == 0:
        return None
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(chosen, min(n, len(chosen)), replace=False))
    ds = split_dataset_of_run(run_dir, cfg, split)
    model = models[task] if task in models else models["model"]
    size = int(model.inputs[0].shape[1])
    images = ImagePipeline(ds.subset(chosen), size, 32, interpolation=cfg.interpolation).images()
    maps = gradcam.compute(model, images, task, layer=layer, plus=plus)
    plt = _plt()
    cols = min(6, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.7 * rows), squeeze=False)
    for ax, i, img, cam in zip(axes.flat, chosen, images, maps):
        ax.imshow(gradcam.overlay(img, cam, cmap="viridis"))
        lab = "compliant" if labels[task][i] == 1 else "non-compliant"
        correct = kinds[i] in ("tp", "tn")
        ax.set_title(f"{kinds[i].upper()} {lab}\nscore {scores[task][i]:.3f} (thr {thr:.3f})", fontsize=7,
                     color="green" if correct else "red")
        ax.axis("off")
    for ax in axes.flat[len(chosen):]:
        ax.axis("off")
    fig.suptitle(f"{_name(task)}: Grad-CAM{'++' if plus else ''} at {layer or gradcam.default_layer(model, task)}, {split} "
                 f"split, {kind.upper() if kind != 'all' else 'all outcomes'}", fontsize=9)
    return _save(fig, run_dir / "analysis" / f"gradcam_{task}_{kind}_{split}.png")


def region_mass(run_dir: Path, n: int = 40, split: str = "test", *, layer=None, seed: int = 0) -> tuple[str, Path]:
    """For every requisite with a region: the mean share of Grad-CAM mass inside it on up to ``n``
    non-compliant images, against the region's mean share of the image. Writes md / csv / png."""
    import pandas as pd

    from . import gradcam
    from .data import ImagePipeline
    from .reports import _name, _plt, _save
    from .runs import load_run, read_scores
    from .synth import REQUISITE_REGION, read_regions, region_mask

    cfg, models = load_run(run_dir)
    ds = split_dataset_of_run(run_dir, cfg, split)
    regions_path = ds.root / "regions.csv"
    if not regions_path.is_file():
        raise ConfigError(f"{ds.root} has no regions.csv: the region check needs the synthetic set (its renderer "
                          "records where it drew each defect). Fix: analyse a run trained on the synthetic set.")
    regions = read_regions(regions_path)
    names, scores, labels = read_scores(run_dir / f"scores_{split}.csv")
    rng = np.random.default_rng(seed)
    rows = []
    for task in scores:
        region = REQUISITE_REGION.get(task)
        if region is None or region == "image":
            continue
        model = models[task] if task in models else models["model"]
        size = int(model.inputs[0].shape[1])
        cand = np.flatnonzero(labels[task] == 0)
        cand = [i for i in cand if region_mask(regions[names[i]], region, 4, 4) is not None]
        if not cand:
            continue
        chosen = np.sort(rng.choice(cand, min(n, len(cand)), replace=False))
        images = ImagePipeline(ds.subset(chosen), size, 32, interpolation=cfg.interpolation).images()
        maps = gradcam.compute(model, images, task, layer=layer, target="non_compliant")
        masses, areas = [], []
        for i, cam in zip(chosen, maps):
            mask = region_mask(regions[names[i]], region, size, size)
            m = gradcam.mass_inside(cam, mask)
            if not math.isnan(m):
                masses.append(m)
                areas.append(mask.mean())
        if masses:
            rows.append({"requisite": task, "name": _name(task), "region": region, "images": len(masses),
                         "mass_in_region": float(np.mean(masses)), "mass_sd": float(np.std(masses)),
                         "region_area": float(np.mean(areas)), "ratio": float(np.mean(masses) / np.mean(areas))})
    if not rows:
        raise IcaoMtlError("No requisite had non-compliant images with a region in this split.")
    df = pd.DataFrame(rows)
    out = run_dir / "analysis"
    aio.write_text(out / "region_mass.csv", df.to_csv(index=False))
    md = ["| Requisite | region | images | heatmap mass inside % | region area % | ratio |", "|---|---|---|---|---|---|"]
    md += [f"| {r['name']} | {r['region']} | {r['images']} | {100 * r['mass_in_region']:.1f} ± {100 * r['mass_sd']:.1f} | "
           f"{100 * r['region_area']:.1f} | {r['ratio']:.2f} |" for r in rows]
    text = "\n".join(md) + ("\n\nratio > 1: the network looks at the region more than a uniform heatmap would "
                            f"(Grad-CAM of the non-compliant class at {layer or 'the last backbone convolution'}, non-compliant {split} images).\n")
    aio.write_text(out / "region_mass.md", text)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows)), 4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, 100 * df["mass_in_region"], 0.4, label="heatmap mass inside the region")
    ax.bar(x + 0.2, 100 * df["region_area"], 0.4, label="region share of the image (uniform heatmap)")
    ax.set_xticks(x, df["name"], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    ax.set_title("Where the network looks, against where the defect is drawn")
    _save(fig, out / "region_mass.png")
    return text, out / "region_mass.md"


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m icao_mtl.analyze", description=__doc__.split("\n\n")[1])
    p.add_argument("run_dir")
    p.add_argument("--requisite", default=None, help="a requisite id, or all")
    p.add_argument("--kind", default="all", choices=KINDS)
    p.add_argument("--n", type=int, default=12, help="images per gallery (default 12)")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--layer", default=None, help="convolutional layer (default: the backbone's last)")
    p.add_argument("--plus", action="store_true", help="Grad-CAM++")
    p.add_argument("--regions", action="store_true", help="the region-mass table of every requisite")
    p.add_argument("--region-images", type=int, default=40, help="non-compliant images per requisite for --regions")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not args.requisite and not args.regions:
        raise ConfigError("Nothing to do. Fix: pass --requisite ID (or all) and/or --regions.")
    if args.requisite:
        from .runs import read_scores

        _, scores, _ = read_scores(run_dir / f"scores_{args.split}.csv")
        tasks = list(scores) if args.requisite == "all" else [args.requisite]
        for t in tasks:
            path = gallery(run_dir, t, args.kind, args.n, args.split, layer=args.layer, plus=args.plus,
                           seed=args.seed)
            print(f"{t}: {path}" if path else f"{t}: no {args.kind.upper()} image in the {args.split} split")
    if args.regions:
        text, path = region_mass(run_dir, args.region_images, args.split, layer=args.layer, seed=args.seed)
        print(text)
        print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
