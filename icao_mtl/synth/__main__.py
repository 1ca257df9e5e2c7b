"""Command line: ``python -m icao_mtl.synth --out DIR --n 6000 --size 224 --seed 0 [--workers N]``."""

from __future__ import annotations

import argparse
import sys
import time

from . import SynthConfig, default_data_root, generate, markdown_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icao_mtl.synth", description=__doc__.split("\n")[0] + " Renders "
                                     "the synthetic ICAO portrait set (images/, labels.csv, severities.csv, "
                                     "regions.csv, meta.json, contact_sheet.png).")
    parser.add_argument("--out", help="dataset directory (default: data/synthetic_n<N>_s<SIZE>_seed<SEED>)")
    parser.add_argument("--n", type=int, default=6000, help="number of images (default 6000)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes (default 1)")
    parser.add_argument("--format", choices=("png", "jpg"), default="png",
                        help="png (default, lossless copy of the rendered photo) or jpg (the photo's own JPEG bytes: "
                             "4x smaller, no second compression)")
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset at --out")
    parser.add_argument("--table", action="store_true", help="print the per-requisite table and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table())
        return 0
    try:
        cfg = SynthConfig(n=args.n, size=args.size, seed=args.seed, format=args.format).validate()
        out = args.out or default_data_root() / cfg.default_name()
        start = time.perf_counter()
        path = generate(out, cfg, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{cfg.n} images ({cfg.size}x{cfg.size}, seed {cfg.seed}) in {path} "
          f"[{time.perf_counter() - start:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
