"""``python -m nas.virtualnet.export``: the standalone model of one (task, cost level) of a finished
Auto-VirtualNet run: only the channels that task's static configuration uses at that level (a
skipped module is its shortcut), saved as ``.keras``; its scores equal the masked network's.

Example::

    python -m nas.virtualnet.export --run runs/virtualnet_digits --task digit_3 --level 1 --out d3_l1.keras
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from icao_mtl.errors import ConfigError, command


def export_task(run_dir, task: str, level: int, path) -> dict:
    """Write the (task, level) model to ``path``; returns its counts, parameters and path."""
    from icao_mtl.runs import save_model

    from .command import load, static_counts, task_cost
    from .network import build_sliced

    net = load(run_dir)
    counts = static_counts(run_dir)
    if task not in net.task_ids:
        raise ConfigError(f"Task {task!r} is not a task of {run_dir}. Fix: one of {', '.join(net.task_ids)}.")
    if not 1 <= int(level) <= counts.shape[1]:
        raise ConfigError(f"--level {level}: {run_dir} has levels 1..{counts.shape[1]}.")
    c = counts[net.task_ids.index(task), int(level) - 1]
    model = build_sliced(net, {task: c}, name=f"virtualnet_{task}_level{level}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, path)
    return {"task": task, "level": int(level), "counts": c.tolist(), "params": int(model.count_params()),
            "expected_params": task_cost(net, c)["params"], "path": str(path)}


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nas.virtualnet.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the --out of a finished python -m nas.virtualnet run")
    parser.add_argument("--task", required=True, help="the task id")
    parser.add_argument("--level", type=int, required=True, help="the cost level, 1 = cheapest")
    parser.add_argument("--out", required=True, help="the .keras file to write")
    args = parser.parse_args(argv)
    info = export_task(args.run, args.task, args.level, args.out)
    print(f"{info['path']}: task {info['task']}, level {info['level']}, counts {info['counts']}, "
          f"{info['params']:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
