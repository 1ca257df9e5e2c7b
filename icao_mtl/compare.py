"""``python -m icao_mtl.compare RUN [RUN ...] [--names STL,MTL1,...] [--split test] [--out DIR]``

Puts runs side by side, one column per run (as the paper's Table 1: STL | MTL 1 | MTL 2 | MTL 3):
EER per requisite in percent, then mean, standard deviation and median. Prints markdown and, with
``--out``, writes ``comparison.md`` and ``comparison.csv``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import io as aio
from .errors import ConfigError, IcaoMtlError
from .reports import compare_table


def _column_name(run_dir: Path) -> str:
    try:
        cfg = aio.read_json(run_dir / "config.json")
        return f"{cfg['approach'].upper()} {cfg['backbone']}"
    except (FileNotFoundError, ValueError, KeyError):
        return run_dir.name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m icao_mtl.compare", description=__doc__.split("\n\n")[1])
    p.add_argument("runs", nargs="+")
    p.add_argument("--names", default=None, help="column names, comma-separated")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    try:
        runs = [Path(r) for r in args.runs]
        names = [n.strip() for n in args.names.split(",")] if args.names else [_column_name(r) for r in runs]
        if len(names) != len(runs):
            raise ConfigError(f"--names has {len(names)} names for {len(runs)} runs. Fix: give one name per run.")
        if len(set(names)) != len(names):
            names = [f"{n} ({r.name})" for n, r in zip(names, runs)]
        metrics = {}
        for name, r in zip(names, runs):
            path = r / "metrics.json"
            if not path.is_file():
                raise ConfigError(f"{r} has no metrics.json. Fix: pass finished run directories.")
            metrics[name] = aio.read_json(path)
        md, csv_text = compare_table(metrics, args.split)
        print(md)
        if args.out:
            out = Path(args.out)
            aio.write_text(out / "comparison.md", md)
            aio.write_text(out / "comparison.csv", csv_text)
    except (IcaoMtlError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
