"""tf.data pipeline speed: images/s of the first pass (decode + resize + cache fill) and of cached
training epochs with and without augmentation, at 128 and 224 pixels. Writes
results/bench_pipeline.json.

    python benchmarks/bench_pipeline.py [--n 1500]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import write


def _rate(ds, n):
    t = time.perf_counter()
    for _ in ds:
        pass
    return n / (time.perf_counter() - t)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    from icao_mtl import data
    from icao_mtl.synth import SynthConfig, generate

    tmp = Path(tempfile.mkdtemp())
    try:
        root = generate(tmp / "d", SynthConfig(n=args.n, size=224, seed=0), workers=2, progress=False,
                        contact_sheet=False)
        ds = data.read_dataset(root, check_images="none")
        import tensorflow  # noqa: F401  (imported before timing)

        results = []
        for size in (128, 224):
            for name, aug in (("none", None), ("reference", data.augment_config("reference")),
                              ("paper", data.augment_config("paper"))):
                pipe = data.ImagePipeline(ds, size, args.batch, augment=aug, seed=0)
                first = _rate(pipe.train(0), args.n)
                _rate(pipe.train(1), args.n)  # warm the traced functions
                cached = max(_rate(pipe.train(e), args.n) for e in (2, 3))
                results.append({"image_size": size, "augment": name, "first_pass_images_per_s": first,
                                "cached_epoch_images_per_s": cached})
                print(f"{size:>4}px augment={name:<9} first pass {first:7.0f}/s  cached epoch {cached:7.0f}/s")
        write("bench_pipeline", {"n": args.n, "batch": args.batch, "results": results})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
