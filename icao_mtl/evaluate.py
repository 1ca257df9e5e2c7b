"""``python -m icao_mtl.evaluate RUN_DIR [--data PATH] [--split val,test] [--eer-method roc] [--bootstrap 1000]``

Re-evaluates a finished run: on its own data and split (default), or on another dataset with the
same tasks (``--data``: then every image of that dataset is scored, as its "test" split unless it has
a split column). Rewrites metrics.json, the tables, scores and plots in the run directory (or in
``--out``), and prints the per-requisite EER table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import IcaoMtlError, command


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m icao_mtl.evaluate", description=__doc__.split("\n\n")[1])
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="another dataset with the same tasks")
    p.add_argument("--mapping", default=None, help="column mapping JSON for --data")
    p.add_argument("--split", default="val,test", help="splits to evaluate (default val,test)")
    p.add_argument("--eer-method", default=None, choices=("fvc", "roc"))
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples for 95%% intervals")
    p.add_argument("--out", default=None, help="write results here instead of the run directory")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from . import data
    from .runs import evaluate_run, load_run, make_pipelines, prepare_data

    run_dir = Path(args.run_dir)
    cfg, models = load_run(run_dir)
    changes = {k: v for k, v in (("eer_method", args.eer_method), ("bootstrap", args.bootstrap)) if v is not None}
    if args.data:
        changes.update(data=args.data, mapping=args.mapping)
    cfg = cfg.copy(**changes)
    splits_to_do = tuple(s.strip() for s in args.split.split(",") if s.strip())
    bad = [s for s in splits_to_do if s not in data.SPLIT_NAMES]
    if bad:
        raise IcaoMtlError(f"Unknown split(s) {bad}. Fix: use train, val and/or test.")
    if args.data:
        ds = data.load(args.data, tasks=cfg.tasks or None,
                       mapping=data.ColumnMapping.from_json(args.mapping) if args.mapping else None)
        if ds.split is None:  # an external set without a split column: score all of it as every split
            splits = data.Splits(train=ds, val=ds, test=ds, report=data.SplitReport(source="all"))
        else:
            splits = data.split_dataset(ds)
    else:
        _, splits = prepare_data(cfg, verbose=0 if args.quiet else 1)
    trained = {t for m in models.values() for t in m.output_names}
    missing = [t for t in splits.train.tasks if t not in trained]
    if missing:
        raise IcaoMtlError(f"The run's models have no output for tasks {missing} of this dataset. Fix: evaluate on "
                           "a dataset with the run's tasks, or pass --data with a mapping.")
    pipes = make_pipelines(cfg, splits)
    out = Path(args.out) if args.out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    evaluate_run(out, cfg, models, pipes, splits, verbose=0 if args.quiet else 1, splits_to_do=splits_to_do)
    return 0


if __name__ == "__main__":
    sys.exit(main())
