"""Auto-VirtualNet's cost per level, side by side in one run. Writes results/bench_virtualnet.json.

For a finished ``python -m nas.virtualnet`` run (``--run DIR``), every level's static network
(all tasks, each on its own sliced path; what ``check`` runs at that level), one task's exported
model at every level, and the full shared network (every block, one pass for every task: the
Shared baseline of the same backbone): CPU latency per image at batch 1 and 32, parameters, MAdds,
and the test mean EER of the levels and of the task's models (from levels.json).
Measured in one process, interleaved, median of ``--repeats`` calls.

    python benchmarks/bench_virtualnet.py --run runs/notebook_06 [--repeats 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import write


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished python -m nas.virtualnet run")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--task", default=None, help="the task of the single-task models (default: the fourth)")
    args = parser.parse_args(argv)

    import numpy as np

    from icao_mtl import io as aio
    from nas.common.madds import latency_ms, model_madds
    from nas.virtualnet import build_sliced, load, static_counts

    out = Path(args.run)
    info = aio.read_json(out / "levels.json")
    net = load(out)
    counts = static_counts(out)
    tasks = list(net.task_ids)
    task = args.task or tasks[min(3, len(tasks) - 1)]
    size = net.spec.image_size
    models = {"full (every block, shared)": (build_sliced(net, {t: np.full(net.spec.modules, net.spec.groups)
                                                                 for t in tasks}, name="full"), None)}
    for i, lv in enumerate(info["levels"]):
        models[f"level {i + 1}, all tasks"] = (build_sliced(net, {t: counts[ti, i] for ti, t in enumerate(tasks)},
                                                            name=f"level{i + 1}"), lv["test_eer_mean"])
        models[f"level {i + 1}, {task} alone"] = (build_sliced(net, {task: counts[tasks.index(task), i]},
                                                               name=f"{task}_level{i + 1}"),
                                                  lv["tasks"][task]["test_eer"])
    rows = {name: {f"latency_ms_batch{b}": latency_ms(m, size, batch=b, repeats=args.repeats) for b in (1, 32)}
            for name, (m, _) in models.items()}
    for name, (model, eer) in models.items():
        rows[name].update(params=int(model.count_params()), madds=model_madds(model), test_eer_mean=eer)
    for name, r in rows.items():
        eer = "-" if r["test_eer_mean"] is None else f"{100 * r['test_eer_mean']:.2f}%"
        print(f"{name:32s} {r['params']:>10,} params {r['madds'] / 1e6:8.2f} M MAdds "
              f"{r['latency_ms_batch1']:7.3f} ms (b1) {r['latency_ms_batch32']:7.3f} ms (b32)  EER {eer}")
    write("bench_virtualnet", {"run": str(out), "task": task, "tasks": len(tasks), "image_size": size,
                               "backbone_params": info["backbone_params"], "agent_params": info["agent_params"],
                               "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
