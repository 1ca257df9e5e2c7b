"""``python -m icao_mtl.train``: train a model and write a run directory.

With no argument: renders the synthetic set, and a second one (seed 1) whose training split joins its
own, into ``data/`` if they are missing, trains the default model (the regions approach on the small
CNN, from scratch, 224 px, 12 epochs, weight decay 0.1), evaluates it on the first set's test split,
prints the per-requisite EER table and writes ``runs/<approach>_<backbone>_<hash>_<time>/``.

Examples::

    python -m icao_mtl.train
    python -m icao_mtl.train --approach hc3 --backbone vgg16 --weights imagenet --epochs 200 \\
        --finetune-epochs 10 --data /path/to/fvc_icao --mapping fvc.json
    python -m icao_mtl.train --approach nas --nas-config 2,1,3,2 --backbone mobilenet_v2 --weights imagenet
    python -m icao_mtl.train --preset hc2_exp4 --data /path/to/fvc_icao      # the paper's HC2, Experiment IV
    python -m icao_mtl.train --resume --out runs/my_run        # continue after an interruption
"""

from __future__ import annotations

import argparse
import sys

from .config import APPROACHES, PAPER_PRESETS, TrainConfig
from .errors import IcaoMtlError, command

# command-line flag -> config field (flags default to None: only the ones given override --config)
_FLAGS = {
    "data": str, "mapping": str, "approach": str, "backbone": str, "weights": str, "img_size": int, "alpha": float,
    "dropout": float, "epochs": int, "batch_size": int, "optimizer": str, "lr": float, "lr_schedule": str,
    "loss_weight": float, "severity_weight": float, "pose_weight": float, "landmark_weight": float, "augment": str, "rotation": float, "zoom": float, "shear": float, "shift": float,
    "intensity": float, "finetune_epochs": int, "finetune_unfreeze": str, "monitor": str, "patience": int,
    "interpolation": str, "eer_method": str, "bootstrap": int, "seed": int, "split_seed": int, "strategy": str,
    "mixed_precision": str, "out": str, "synth_n": int, "synth_size": int, "check_images": str, "extra_train": str,
    "keypoints": int, "warp": str, "geometry_trunk": str, "tta": str, "weight_decay": float, "synth_extra": int,
}
_HELP = {
    "data": "dataset directory, or synthetic (default) / digits / lfw",
    "extra_train": "more datasets (directories or lfw_framed, comma-separated) whose train splits are added "
                   "to the training split: their tasks must be among --data's, the others count as not "
                   "applicable; validation and test stay --data's",
    "keypoints": "regions: K learnt keypoints (soft arg-max coordinates) on the whole-image and the eye-band "
                 "maps (default 0: none)",
    "geometry_trunk": "regions: the geometry branch reads the small CNN's second block (shared) or has its own "
                      "first layers (own; 20 M more multiply-adds an image at 224 px); default auto: shared with "
                      "the small CNN trained from scratch at sizes where the maps match (224 px among them), own "
                      "otherwise",
    "mapping": "column mapping JSON for another tool's labels.csv (see data/README.md)",
    "approach": f"one of {', '.join(APPROACHES)} (default regions)",
    "backbone": "small_cnn (default), vgg16, vgg19, mobilenet_v2, inception_v3, resnet50_v2",
    "weights": "imagenet, none (default) or a weights file",
    "img_size": "input side in pixels (default: 224 for regions, else the backbone's: 128 for small_cnn)",
    "alpha": "MobileNetV2 width multiplier",
    "dropout": "dropout of Handcrafted 1 (default 0.3)",
    "epochs": "training epochs (default 12; the paper: 10, 50 or 200)",
    "lr_schedule": "constant, reference (the paper code's Adam decay) or cosine",
    "loss_weight": "weight of every task's loss (the reference code: 0.1)",
    "weight_decay": "decoupled weight decay of the kernels, every step w -= lr * weight_decay * w (default: 0.1 "
                    "for the regions approach trained from scratch, 0 otherwise; 0: none)",
    "synth_extra": "the training splits of this many more synthetic sets (seeds 1, 2, ...; rendered into the "
                   "data directory on first use, about 30 s each) join the training split (default: 1 for the "
                   "regions approach on the synthetic set, 0 otherwise; 0: --data's training split alone)",
    "severity_weight": "weight of a regression of every requisite's severity beside its label, from the "
                       "same hidden layer (needs the dataset's severities.csv, as the synthetic set has; 0: off)",
    "landmark_weight": "regions: weight of locating seven face points (eyes, cheeks, nose, mouth, chin) in a "
                       "geometry branch whose head pose the rotation head reads (needs the dataset's "
                       "landmarks.csv, as the synthetic set has; default 0.15 where the training data has "
                       "landmarks.csv and pose.csv, else 0; 0: off)",
    "pose_weight": "weight of a regression of the head's roll, yaw and pitch (regions with landmarks: from the "
                   "points; otherwise from the rotation head's hidden layer; needs the dataset's pose.csv; "
                   "default 0.5 with the landmarks' default, else 0; 0: off)",
    "augment": "augmentation preset: reference (default), paper, no_rotation, none",
    "shift": "width and height shift fraction", "rotation": "rotation range in degrees",
    "finetune_epochs": "Experiment III: epochs with the backbone unfrozen before --epochs with it frozen",
    "finetune_unfreeze": "all (the paper) or last:2 (the reference code)",
    "monitor": "model selection: val_accuracy (the paper), val_loss (the reference code) or val_eer",
    "patience": "early stopping patience in epochs (default: none, as in the paper)",
    "interpolation": "resize: bilinear (default) or nearest (the reference code)",
    "warp": "augmentation warp: opencv (default; uint8) or tensorflow (float32, about four times the CPU; "
            "runs trained before 2026-12-07 used it and resume with it)",
    "eer_method": "fvc (default, FVC2000 / pyeer) or roc (interpolated ROC crossing)",
    "bootstrap": "bootstrap resamples for 95%% EER intervals (default 0: none)",
    "tta": "test-time augmentation of evaluate and check: flip (each image's scores averaged with its mirror "
           "image's), none, or auto (default: flip when the training augmentation flips images)",
    "seed": "seed of initialisation, shuffling, augmentation and dropout (default 0)",
    "split_seed": "seed of the train/val/test split (default 0; --seed leaves the split as it is)",
    "strategy": "none, mirrored, or multiworker (TF_CONFIG)",
    "mixed_precision": "auto (default: mixed bfloat16 on a CPU with AVX512-BF16 or AMX and on GPUs from "
                       "compute capability 8.0, mixed float16 on older GPUs, float32 elsewhere), none (float32), "
                       "float16 or bfloat16",
    "out": "run directory (default runs/<approach>_<backbone>_<hash>_<time>)",
    "check_images": "decode (default), exists or none",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m icao_mtl.train", description=__doc__.split("\n")[0].replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", help="JSON configuration file (flags given here override it)")
    p.add_argument("--preset", choices=sorted(PAPER_PRESETS), default=None,
                   help="one of the paper's reported experiments (needs ImageNet weights or --weights PATH)")
    for name, typ in _FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None, help=_HELP.get(name))
    p.add_argument("--nas-config", dest="nas_config", default=None, help="branch depths per task group, e.g. 2,1,3,2")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the tasks")
    p.add_argument("--no-flip", dest="flip", action="store_const", const=False, default=None, help="no horizontal flips")
    p.add_argument("--freeze-backbone", dest="freeze_backbone", action="store_const", const=True, default=None)
    p.add_argument("--train-backbone", dest="freeze_backbone", action="store_const", const=False, default=None)
    p.add_argument("--no-cache", dest="cache", action="store_const", const=False, default=None)
    p.add_argument("--no-eye-layout", dest="eye_layout", action="store_const", const=False, default=None,
                   help="regions: only pooled features of the eye band (no layout map)")
    p.add_argument("--task-weights", dest="task_weights", default=None,
                   help="factors of some requisites' cross-entropies (times --loss-weight), e.g. hair_eyes=4 "
                        "or hair_eyes=4,red_eyes=2; the others 1 (default: hair_eyes=4 for the regions approach "
                        "from scratch on the synthetic set, none otherwise; an empty string: none)")
    p.add_argument("--split", default=None, help="train,val,test fractions (default 0.75,0.15,0.10)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of progress bars")
    return p


def config_from_args(args) -> TrainConfig:
    base = TrainConfig.from_json(args.config) if args.config else TrainConfig()
    if args.preset:
        base = base.copy(**PAPER_PRESETS[args.preset])
    if args.resume and not args.config and args.out:
        from pathlib import Path

        stored = Path(args.out) / "config.json"
        if stored.is_file():
            base = TrainConfig.from_json(stored)
    changes = {k: getattr(args, k) for k in (*_FLAGS, "flip", "freeze_backbone", "cache", "eye_layout") if getattr(args, k) is not None}
    if args.nas_config:
        try:
            changes["nas_config"] = [int(v) for v in args.nas_config.split(",")]
        except ValueError:
            raise IcaoMtlError(f"--nas-config must be integers separated by commas, e.g. 2,1,3,2. Received: "
                               f"{args.nas_config!r}") from None
    if args.tasks:
        changes["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.task_weights is not None:
        try:
            pairs = [item.split("=") for item in args.task_weights.split(",") if item.strip()]
            changes["task_weights"] = {name.strip(): float(value) for name, value in pairs}
        except ValueError:
            raise IcaoMtlError(f"--task-weights must be id=factor pairs separated by commas, e.g. hair_eyes=4. "
                               f"Received: {args.task_weights!r}") from None
    if args.split:
        try:
            changes["split"] = [float(v) for v in args.split.split(",")]
        except ValueError:
            raise IcaoMtlError(f"--split must be three fractions separated by commas, e.g. 0.75,0.15,0.10. "
                               f"Received: {args.split!r}") from None
    return base.copy(**changes)


@command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args).validate()
    from .runs import train

    train(cfg, resume=args.resume, verbose=2 if args.quiet else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
