"""``python -m icao_mtl.train``: prepares the default dataset.

The training engine is not part of this package yet: this command generates the synthetic set into
``data/`` if it is missing, validates and splits it, and says what it would train. It trains nothing.
"""

from __future__ import annotations

import argparse
import sys

from . import data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icao_mtl.train", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="dataset directory, or synthetic / digits / lfw")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        ds = data.load(args.data, seed=args.seed)
    except data.DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    splits = data.split_dataset(ds, seed=args.seed)
    print(ds.report.summary())
    print(splits.report.summary())
    print(f"Would train a multi-task model on {len(ds.tasks)} tasks; the training engine is not implemented "
          "yet, so nothing was trained.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
