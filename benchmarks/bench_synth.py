"""Renderer speed at 224x224: images/s rendering only (one core), and whole generation (render +
write) with PNG and JPG files, 1 and 2 worker processes. Writes results/bench_synth.json.

    python benchmarks/bench_synth.py [--n 1000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import write


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    import cv2

    from icao_mtl.synth import SynthConfig, generate, render, sample_portrait

    cv2.setNumThreads(1)
    portraits = [sample_portrait(0, i, args.size) for i in range(args.n)]
    for p in portraits[:20]:
        render(p)  # warm-up (textures, caches)
    t = time.perf_counter()
    for p in portraits:
        render(p)
    render_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(args.n):
        sample_portrait(0, i, args.size)
    sample_s = time.perf_counter() - t
    results = [{"what": "render only, 1 core", "images_per_s": args.n / render_s,
                "ms_per_image": 1e3 * render_s / args.n},
               {"what": "sample parameters only, 1 core", "images_per_s": args.n / sample_s}]
    tmp = Path(tempfile.mkdtemp())
    try:
        for fmt in ("png", "jpg"):
            for workers in (1, 2):
                out = tmp / f"{fmt}{workers}"
                t = time.perf_counter()
                generate(out, SynthConfig(n=args.n, size=args.size, seed=0, format=fmt), workers=workers,
                         progress=False, contact_sheet=False)
                s = time.perf_counter() - t
                mb = sum(f.stat().st_size for f in (out / "images").iterdir()) / 2**20
                results.append({"what": f"generate {fmt}, {workers} worker(s)", "format": fmt, "workers": workers,
                                "images_per_s": args.n / s, "images_per_s_per_worker": args.n / s / workers,
                                "seconds": s, "mb_per_1000_images": mb * 1000 / args.n})
                shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in results:
        print(f"{r['what']:<34} {r['images_per_s']:8.1f} images/s")
    write("bench_synth", {"n": args.n, "size": args.size, "results": results})


if __name__ == "__main__":
    main()
