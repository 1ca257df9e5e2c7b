"""``python -m nas.compare``: every multi-task method on the same data, split, budget and seeds.

Rows, each for every seed:

- ``stl`` one single-task network per requisite, for the requisites of ``--stl-tasks`` (stated in the
  table: STL trains 23 networks for the 23 requisites, so it is measured on a subset);
- ``hc1``, ``hc2``, ``hc3`` the paper's handcrafted multi-task networks (``python -m icao_mtl.train``);
- every method package of :mod:`nas` with a ``compare(budget, base, out, seed)`` hook: the branch-depth
  search (``depth-random``, ``depth-reinforce``: the best child retrained), BMTAS (``bmtas-λ=...`` and
  its ``bmtas-shared`` / ``bmtas-single`` baselines); a new method adds its rows by defining the hook.

All train on the same split (``--split-seed``, default 0) for ``--epochs`` (a search's found network
included), with the searches' own budget (``--search-epochs``, ``--trials``). Each row gives the test
mean and median EER (and mean accuracy) over the requisites, parameters, MAdds (from the traced graph),
CPU latency per image at batch 1 and 32, and the wall time of search and training. Outputs in
``--out``: ``comparison.json`` (``rows``: one per method and seed), ``comparison.md`` (mean and spread
over seeds per method), ``comparison.png`` (test mean EER against MAdds, error bars over seeds) and,
per method and seed, its run directories. A finished row is not run again (``rows/*.json``), so an
interrupted comparison continues where it stopped.

Examples::

    python -m nas.compare                                        # the synthetic set, the default budget
    python -m nas.compare --data digits --methods hc2 hc3 depth bmtas --seeds 0 1 2
    python -m nas.compare --epochs 4 --search-epochs 3 --trials 4 --synth-n 400 --out runs/cmp_small
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from icao_mtl import io as aio
from icao_mtl.errors import ConfigError, command

from .common import cli
from .common.cli import CommonConfig, option
from .common.method import Budget, MethodRun

FAMILIES_OF_TRAIN = ("stl", "hc1", "hc2", "hc3")


def method_hooks() -> dict:
    """``{name: compare hook}`` of every method package of :mod:`nas` that defines one."""
    import nas

    hooks = {}
    for info in pkgutil.iter_modules(nas.__path__):
        if info.ispkg and info.name != "common":
            module = importlib.import_module(f"nas.{info.name}")
            if callable(getattr(module, "compare", None)):
                hooks[info.name] = module.compare
    return hooks


@dataclass
class CompareConfig(CommonConfig):
    """A comparison of methods (the shared options of :class:`~nas.common.cli.CommonConfig` set the data,
    the backbone and the image size of every row)."""

    methods: list[str] = option(["stl", "hc1", "hc2", "hc3", "depth", "bmtas"],
                                "rows to run: stl, hc1, hc2, hc3 and the method packages (depth, bmtas, dag, mtl_nas, "
                                "virtualnet)")
    seeds: list[int] = option([0, 1], "seeds of every row (the split stays the same)")
    epochs: int = option(10, "training epochs of every compared network")
    search_epochs: int = option(8, "epochs of a differentiable search (BMTAS), warm-up included")
    trials: int = option(16, "trials of the branch-depth search")
    pretrain_epochs: int = option(4, "backbone pretraining of the branch-depth search without pretrained weights")
    stl_tasks: list[str] = option(["blurred", "hat", "dark_glasses"], "requisites of the STL row")
    synth_n: int = option(2000, "images of the synthetic set")
    synth_size: int = option(128, "side of the synthetic images in pixels")
    img_size: int | None = option(128, "input side of every network in pixels (Handcrafted 3 needs 128 on the small "
                                  "CNN)")
    latency_repeats: int = option(20, "timed calls per latency measurement")

    def validate(self) -> "CompareConfig":
        known = set(FAMILIES_OF_TRAIN) | set(method_hooks())
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ConfigError(f"Unknown methods {unknown}. Fix: choose among {', '.join(sorted(known))}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds needs distinct seeds. Received: {self.seeds}.")
        for name in ("epochs", "search_epochs", "trials", "latency_repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1. Received: {getattr(self, name)}.")
        if self.search_epochs < 2 and "bmtas" in self.methods:
            raise ConfigError("BMTAS needs --search-epochs >= 2 (a warm-up epoch and a search epoch).")
        self.train_config(approach="hc2").validate()
        return self

    def budget(self) -> Budget:
        return Budget(epochs=self.epochs, search_epochs=self.search_epochs, trials=self.trials,
                      pretrain_epochs=self.pretrain_epochs)

    def base(self) -> dict:
        """The shared options every row is given."""
        return {k: getattr(self, k) for k in ("data", "mapping", "synth_n", "synth_size", "backbone", "weights",
                                              "img_size", "batch_size")}


# ---------------------------------------------------------------------------------------------
# the rows

def _train_rows(family: str, cfg: CompareConfig, out: Path, seed: int) -> list[tuple[str, MethodRun]]:
    """A Handcrafted or STL row through ``python -m icao_mtl.train``'s library call."""
    from icao_mtl.runs import holds_run, train

    tcfg = cfg.train_config(approach=family, epochs=cfg.epochs, seed=seed, out=str(out),
                            tasks=list(cfg.stl_tasks) if family == "stl" else None)
    done = (out / "status.json").is_file() and aio.read_json(out / "status.json").get("state") == "finished"
    start = time.perf_counter()
    if not done:
        train(tcfg, resume=holds_run(out), verbose=0)
    seconds = time.perf_counter() - start if not done else aio.read_json(out / "row_seconds.json")["seconds"]
    if not done:
        aio.write_json(out / "row_seconds.json", {"seconds": seconds})
    return [(family, MethodRun(family, out, search_seconds=0.0, train_seconds=seconds))]


def _models(run_dir: Path) -> list:
    from icao_mtl.runs import load_models

    return list(load_models(run_dir).values())


def measure(run: MethodRun, repeats: int = 20) -> dict:
    """Test metrics, parameters, MAdds and CPU latency of a run directory's model(s); an STL run's
    figures are the sums over its single-task models (what checking one photo costs)."""
    import tensorflow as tf

    from icao_mtl.architectures import count_params

    from .common.madds import model_madds

    models = _models(run.run_dir)
    metrics = run.metrics["test"]
    size = tuple(int(d) for d in models[0].inputs[0].shape[1:])
    latency = {}
    for batch in (1, 32):
        x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, *size)).astype(np.float32))
        fns = [tf.function(lambda v, m=m: m(v, training=False)) for m in models]
        for fn in fns:
            fn(x)  # trace
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for fn in fns:
                tf.nest.map_structure(lambda v: v.numpy(), fn(x))
            times.append(time.perf_counter() - t)
        latency[batch] = float(np.median(times)) / batch * 1000
    return {"test_eer_mean": metrics["eer_mean"], "test_eer_median": metrics["eer_median"],
            "test_accuracy_mean": metrics["accuracy_mean"], "n_tasks": len(metrics["per_requisite"]),
            "params": int(sum(count_params(m)["total"] for m in models)),
            "madds": int(sum(model_madds(m) for m in models)),
            "latency_ms_batch1": latency[1], "latency_ms_batch32": latency[32],
            "search_seconds": run.search_seconds, "train_seconds": run.train_seconds}


def _family_rows(family: str, cfg: CompareConfig, seed: int, out: Path) -> list[dict]:
    """Run (or read back) one family's rows for one seed."""
    record = out / "rows" / f"{family}_seed{seed}.json"
    if record.is_file():
        return aio.read_json(record)
    where = out / family / f"seed{seed}"
    start = time.perf_counter()
    if family in FAMILIES_OF_TRAIN:
        runs = _train_rows(family, cfg, where, seed)
    else:
        runs = method_hooks()[family](cfg.budget(), cfg.base(), where, seed)
    wall = time.perf_counter() - start
    rows = []
    for name, run in runs:
        rows.append({"method": name, "family": family, "seed": seed, "run_dir": str(run.run_dir),
                     "family_wall_seconds": wall, **measure(run, cfg.latency_repeats)})
    aio.write_json(record, rows)
    return rows


# ---------------------------------------------------------------------------------------------
# the table and the figure

def summary(rows: list[dict]) -> list[dict]:
    """One entry per method: mean and spread (sample standard deviation) over seeds of each figure."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        entry = {"method": method, "family": mine[0]["family"], "seeds": len(mine), "n_tasks": mine[0]["n_tasks"]}
        for key in ("test_eer_mean", "test_eer_median", "test_accuracy_mean", "params", "madds", "latency_ms_batch1",
                    "latency_ms_batch32", "search_seconds", "train_seconds"):
            values = np.array([r[key] for r in mine if r[key] is not None], float)
            entry[key] = float(values.mean()) if len(values) else None
            entry[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else None
        out.append(entry)
    return out


def table(entries: list[dict], cfg: CompareConfig) -> str:
    def minutes(v):
        return "-" if v is None else f"{v / 60:.1f}"

    def pct(e, k):
        if e[k] is None:
            return "-"
        sd = f" ± {100 * e[k + '_sd']:.2f}" if e.get(k + "_sd") is not None else ""
        return f"{100 * e[k]:.2f}{sd}"

    families = {e["family"] for e in entries}
    notes = [f"Test split, mean ± sd over the seeds of each row; {cfg.epochs} training epochs per network; searches: "
             f"BMTAS {cfg.search_epochs} epochs, branch depth {cfg.trials} trials; {cfg.backbone} at {cfg.img_size} px"]
    small = [n for f, n in (("dag", "DAG"), ("mtl_nas", "MTL-NAS"), ("virtualnet", "Auto-VirtualNet")) if f in families]
    if small:
        notes.append(f" (the {', '.join(small)} rows at most 64 px: one set of states, one branch or one path per task "
                     "or group)")
    if "virtualnet" in families:
        notes.append("; Auto-VirtualNet: one row per cost level, its parameters those of the level's sliced paths (its "
                     "memory is one backbone)")
    notes.append(".")
    if "stl" in families:
        notes.append(f" STL: {', '.join(cfg.stl_tasks)} only.")
    lines = ["".join(notes), "",
             "| method | seeds | tasks | EER mean (%) | EER median (%) | accuracy (%) | parameters | MAdds (M) | "
             "ms/image, batch 1 | ms/image, batch 32 | search (min) | training (min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['method']} | {e['seeds']} | {e['n_tasks']} | {pct(e, 'test_eer_mean')} | "
                     f"{pct(e, 'test_eer_median')} | {pct(e, 'test_accuracy_mean')} | {e['params']:,.0f} | "
                     f"{e['madds'] / 1e6:.1f} | {e['latency_ms_batch1']:.2f} | {e['latency_ms_batch32']:.3f} | "
                     f"{minutes(e['search_seconds'])} | {minutes(e['train_seconds'])} |")
    return "\n".join(lines) + "\n"


def plot(entries: list[dict], path) -> None:
    """Test mean EER against MAdds, one marker per method, error bars over seeds."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. Jupyter's) is left alone

    from icao_mtl.reports import _save

    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    markers = {"stl": "v", "hc1": "s", "hc2": "s", "hc3": "s", "depth": "^", "bmtas": "o", "dag": "P", "mtl_nas": "X",
               "virtualnet": "*"}
    for e in entries:
        if e["test_eer_mean"] is None:
            continue
        err = 100 * e["test_eer_mean_sd"] if e["test_eer_mean_sd"] is not None else None
        ax.errorbar(e["madds"] / 1e6, 100 * e["test_eer_mean"], yerr=err, fmt=markers.get(e["family"], "D"),
                    capsize=3, label=e["method"])
        ax.annotate(e["method"], (e["madds"] / 1e6, 100 * e["test_eer_mean"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set(xlabel="MAdds per image (M, log scale)", ylabel="test mean EER (%)",
           title="Methods on the same data, split and budget")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def all_rows(out: Path) -> list[dict]:
    """Every finished row of the comparison in ``out`` (earlier calls' methods and seeds included), in the
    order STL, Handcrafted, then the method packages, seed by seed."""
    order = {f: i for i, f in enumerate([*FAMILIES_OF_TRAIN, *sorted(method_hooks())])}
    rows = [r for p in sorted((out / "rows").glob("*.json")) for r in aio.read_json(p)]
    return sorted(rows, key=lambda r: (order.get(r["family"], len(order)), r["seed"]))


def run(cfg: CompareConfig) -> dict:
    """Run every row not yet done, then write comparison.json / .md / .png over every finished row of the
    directory (earlier methods and seeds included); returns the JSON content."""
    cfg.validate()
    out = Path(cfg.out or "runs/comparison")
    out.mkdir(parents=True, exist_ok=True)
    recorded = out / "compare.json"
    identity = {k: v for k, v in cfg.identity().items() if k not in ("methods", "seeds")}
    if recorded.is_file():
        old = aio.read_json(recorded)
        diff = sorted(k for k in identity if old.get(k) != identity[k])
        if diff:
            raise ConfigError(f"{out} holds a comparison with other settings ({', '.join(diff)}). Fix: use the same "
                              "settings (methods and seeds may be added), or another --out.")
    aio.write_json(recorded, identity)
    for family in cfg.methods:
        for seed in cfg.seeds:
            if cfg.verbose:
                print(f"{family}, seed {seed} ...", flush=True)
            _family_rows(family, cfg, seed, out)
    rows = all_rows(out)
    entries = summary(rows)
    result = {"config": asdict(cfg), "rows": rows, "summary": entries}
    aio.write_json(out / "comparison.json", result)
    md = table(entries, cfg)
    aio.write_text(out / "comparison.md", md)
    plot(entries, out / "comparison.png")
    if cfg.verbose:
        print(md)
    return result


@command
def main(argv: list[str] | None = None) -> int:
    parser = cli.build_parser(CompareConfig, prog="python -m nas.compare", doc=__doc__)
    cfg, _ = cli.parse(CompareConfig, parser, argv)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
