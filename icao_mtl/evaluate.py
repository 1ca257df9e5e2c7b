"""``python -m icao_mtl.evaluate RUN_DIR [--data PATH] [--split val,test] [--eer-method roc] [--bootstrap 1000] [--tta flip] [--by REQS]``

Re-evaluates a finished run: on its own data and split (default), or on another dataset with the
same tasks (``--data``: then every image of that dataset is scored, as its "test" split unless it has
a split column). Rewrites metrics.json, the tables, scores and plots in the run directory (or in
``--out``), and prints the per-requisite EER table.

``--by blurred,pixelation`` re-scores nothing: from the run's ``scores_<split>.csv`` (in ``--out``
when given) it breaks every requisite's EER down into the images non-compliant for any of the named
requisites and the others, prints the table and writes ``breakdown_<split>.md``, ``.csv`` and
``.json`` beside them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import TTA_MODES
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
    p.add_argument("--tta", default=None, choices=TTA_MODES,
                   help="flip: average each image's scores with its mirror image's (default: the run's own)")
    p.add_argument("--out", default=None, help="write results here instead of the run directory")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--by", default=None, help="requisites (comma-separated): EER with and without their defects, "
                                             "from the saved scores")
    args = p.parse_args(argv)
    if args.by is not None:
        ignored = [flag for flag, v in (("--data", args.data), ("--mapping", args.mapping),
                                        ("--bootstrap", args.bootstrap), ("--tta", args.tta)) if v is not None]
        if ignored:
            raise IcaoMtlError(f"--by reads the saved scores and re-scores nothing, so {', '.join(ignored)} would do "
                               "nothing. Fix: evaluate first (python -m icao_mtl.evaluate RUN_DIR --data OTHER --out "
                               "DIR), then break it down (python -m icao_mtl.evaluate RUN_DIR --out DIR --by ...).")
        return breakdown(Path(args.out) if args.out else Path(args.run_dir), args.by, args.split,
                         method=args.eer_method, quiet=args.quiet, where="--out" if args.out else "the run directory")
    from . import data
    from .runs import evaluate_run, load_run, make_pipelines, prepare_data

    run_dir = Path(args.run_dir)
    cfg, models = load_run(run_dir)
    changes = {k: v for k, v in (("eer_method", args.eer_method), ("bootstrap", args.bootstrap), ("tta", args.tta))
               if v is not None}
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
        _, splits = prepare_data(cfg, verbose=0 if args.quiet else 1, training=False)
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


def breakdown(run_dir: Path, by: str, splits: str, *, method: str | None = None, quiet: bool = False,
              where: str = "the run directory") -> int:
    """``--by``: the breakdown of every split in ``splits`` from ``run_dir/scores_<split>.csv``, with
    ``method`` or else the EER method of ``run_dir/metrics.json`` (the numbers of its "all" column)."""
    from . import io as aio
    from .metrics import evaluate_by_condition
    from .reports import compare_table
    from .runs import read_scores

    condition = [t.strip() for t in by.split(",") if t.strip()]
    if not condition:
        raise IcaoMtlError(f"--by {by!r} names no requisite. Fix: name one or more, comma-separated, e.g. "
                           "--by blurred,pixelation.")
    if method is None:
        stored = run_dir / "metrics.json"
        method = aio.read_json(stored).get("eer_method", "fvc") if stored.is_file() else "fvc"
    for split in (s.strip() for s in splits.split(",") if s.strip()):
        path = run_dir / f"scores_{split}.csv"
        if not path.is_file():
            raise IcaoMtlError(f"{path} not found: --by reads the scores that an evaluation saved in {where}. Fix: "
                               f"evaluate the {split} split there first (python -m icao_mtl.evaluate RUN_DIR"
                               f"{' --out ' + str(run_dir) if where == '--out' else ''} --split {split}), or choose "
                               "another --split.")
        _, scores, labels = read_scores(path)
        unknown = [t for t in condition if t not in labels]
        if unknown:
            raise IcaoMtlError(f"--by {by!r}: {', '.join(unknown)} is not a requisite of {path}. Fix: name some of "
                               f"{', '.join(labels)}.")
        result = evaluate_by_condition(labels, scores, condition, method=method)
        named = ", ".join(condition)
        if result["n"]["with"] == 0:
            raise IcaoMtlError(f"No image of {path} is non-compliant for {named}, so there is nothing to break down. "
                               "Fix: name requisites with non-compliant images in this split, or choose another "
                               "--split.")
        result["eer_method"] = method
        columns = {f"all ({result['n']['all']})": {split: result["all"]},
                   f"without: compliant or not applicable for {named} ({result['n']['without']})":
                       {split: result["without"]},
                   f"with: non-compliant for any of {named} ({result['n']['with']})": {split: result["with"]}}
        md, csv_text = compare_table(columns, split)
        note = (f"\nEER % ({method}) of every requisite on the {split} split, on all its images and on the two "
                f"parts that {named} separate (images in brackets). n/a: one class only in that part (a "
                "requisite of the condition in 'without', or in 'with' when the condition is that requisite "
                "alone); left out of that column's mean and median.\n")
        aio.write_text(run_dir / f"breakdown_{split}.md", md + note)
        aio.write_text(run_dir / f"breakdown_{split}.csv", csv_text)
        aio.write_json(run_dir / f"breakdown_{split}.json", result)
        if not quiet:
            print(f"{split} split, by {named}:\n{md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
