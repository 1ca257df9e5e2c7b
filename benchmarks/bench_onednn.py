"""The default model's training step with TensorFlow's oneDNN kernels off and on, side by side in one
run. TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it is imported, so each way runs in a child
process of its own, the children alternating (off, on, off, on, ...) so that a machine's drift reaches
both alike. TensorFlow turns the kernels on by itself only on CPUs with AVX-512 VNNI, BF16 or AMX;
``import icao_mtl`` turns them on everywhere else (unless the variable is set).

Writes results/bench_onednn.json: per way, the milliseconds of a training step (forward, loss, backward,
Adam) on one fixed batch of 32 at 224 px, every round's; the per-round ratios off / on; and how far the
two ways' outputs of the same weights on the same batch lie apart (float rounding of another order of
sums, not another model).

    python benchmarks/bench_onednn.py [--steps 10] [--rounds 4] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import step_timing_parser, write

WAYS = {"onednn_off": "0", "onednn_on": "1"}


def child(args, outputs_path: str) -> None:
    """One round in this process: the default model's outputs before training (saved to
    ``outputs_path``), then ``args.steps`` timed steps; prints one JSON line."""
    import tensorflow as tf

    from _common import default_model, mean_square_loss, time_training_steps

    model = default_model(args.size)
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (32, args.size, args.size, 3)).astype(np.float32))
    outputs = model(x, training=False)
    np.savez(outputs_path, **{str(k): np.asarray(v, np.float32) for k, v in outputs.items()})
    speed = time_training_steps({"model": model}, x, mean_square_loss, args.steps, 1)
    print("RESULT " + json.dumps({"ms_per_step": speed["model"]["ms_per_step_median"]}))


def main():
    parser = step_timing_parser()
    parser.set_defaults(rounds=4)
    parser.add_argument("--child", metavar="OUTPUTS_NPZ", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args, args.child)

    rounds = {name: [] for name in WAYS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, value in WAYS.items():
                out = Path(tmp) / f"{name}.npz"
                env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": value, "TF_CPP_MIN_LOG_LEVEL": "1"}
                done = subprocess.run([sys.executable, __file__, "--child", str(out), "--steps", str(args.steps),
                                       "--size", str(args.size)], env=env, capture_output=True, text=True,
                                      cwd=Path(__file__).parent)
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
                if done.returncode or line is None:
                    sys.exit(f"the {name} child failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
                rounds[name].append(json.loads(line[len("RESULT "):])["ms_per_step"])
                print(f"round {r + 1}/{args.rounds} {name}: {rounds[name][-1]} ms per step", flush=True)
        off, on = (np.load(Path(tmp) / f"{name}.npz") for name in WAYS)
        differences = {k: float(np.abs(off[k] - on[k]).max()) for k in off.files}
        largest = {k: float(np.abs(off[k]).max()) for k in off.files}
    ratios = [a / b for a, b in zip(rounds["onednn_off"], rounds["onednn_on"])]
    speed = {name: {"ms_per_step_median": round(float(np.median(t)), 1), "ms_per_step_rounds": t}
             for name, t in rounds.items()}
    speed["ratio_off_over_on_median"] = round(float(np.median(ratios)), 3)
    speed["ratio_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    print("speed:", speed)
    flags = Path("/proc/cpuinfo").read_text(errors="replace").split() if Path("/proc/cpuinfo").exists() else []
    write("bench_onednn", {
        "args": {k: v for k, v in vars(args).items() if k != "child"},
        "model": "regions + geometry branch (the default run's), float32", "batch": 32,
        "cpu_flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")},
        "speed": speed,
        "outputs_max_abs_difference": {k: round(v, 7) for k, v in differences.items()},
        "outputs_max_abs_value": {k: round(v, 4) for k, v in largest.items()},
        "note": "each round is a child process (build, trace, 3 warm-up steps, then --steps timed steps)"})


if __name__ == "__main__":
    main()
