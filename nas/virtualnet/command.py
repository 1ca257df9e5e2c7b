"""``python -m nas.virtualnet``: Auto-VirtualNet (seed 002; spec virtualnet.md), cost-adaptive
models for every task from one set of weights, on the engine.

The backbone is a small ResNet whose residual modules are split into ``--groups`` building blocks
(channel groups); a configuration gives every module a count of blocks (0 skips it; ``c`` uses the
first ``c`` blocks of the task's own block order, so the counts are nested). A search agent (a small
residual CNN) gives, for every image, task and cost level, a softmax over the counts of every
module; level i's sparsity regulariser ``rho_i (mean_j p_j(c_j) / t_j)^2`` makes its models cheaper
(``--rhos``, cheapest first). Training (:mod:`nas.virtualnet.search`): pretraining with random block
dropping, then alternating epochs of the backbone (SGD, Nesterov) on agent-drawn configurations and
of the agent (REINFORCE with a baseline, epsilon-greedy).

The result is ``tasks x levels`` models from one backbone: the per-sample models (the agent chooses
each image's structure) and, for deployment, static models (each module's most frequent greedy count
over the validation images, per task and level). Each level's static models form one network in
``level<i>/``, a run directory like ``python -m icao_mtl.train``'s, on which ``evaluate``,
``analyze``, ``check`` (at that cost level) and ``export`` work; ``python -m nas.virtualnet.export``
writes the standalone model of one (task, level).

Examples::

    python -m nas.virtualnet --data digits                    # 10 one-vs-rest tasks, 32 px
    python -m nas.virtualnet                                  # the synthetic faces, 23 requisites, 64 px
    python -m nas.virtualnet --data lfw --groups 4 --levels 3 --out runs/virtualnet_lfw
    python -m nas.virtualnet --agent task                     # the per-task agent (free logits)
    python -m nas.virtualnet --resume --out runs/virtualnet_lfw   # after an interruption (kill -9 included)
    python -m icao_mtl.check --run runs/virtualnet_lfw/level1 photo.jpg   # check at the cheapest level

Outputs (``--out``): ``virtualnet.json`` (the options), ``levels.json`` (per level and task: the
counts, parameters and MAdds used, test EER and accuracy of the static and of the per-sample models),
``configurations.json`` (the static counts; the histogram of the per-sample counts),
``cost_curves.png`` (test EER against parameters used, per task), ``structures.png`` (blocks per
module, task and level), ``trace.png`` and ``history.json`` (per epoch), ``virtualnet.weights.h5``
(the backbone, heads and agent: :func:`load`), and ``level<i>/`` for every level.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from icao_mtl import io as aio
from icao_mtl.errors import ConfigError

from ..common import cli
from ..common.cli import CommonConfig, option
from ..common.method import MethodResult, MethodRun, prepare
from .blocks import ORDERS, cost_fractions, default_rhos, majority, module_cost, module_madds, nest_levels
from .network import NetSpec, VirtualNet, build_sliced
from .report import plot_cost_curves, plot_structures, plot_trace
from .search import greedy_counts, groups, per_sample_scores, phases


@dataclass
class VirtualNetConfig(CommonConfig):
    """An Auto-VirtualNet run (the options every method's command shares are those of
    :class:`~nas.common.cli.CommonConfig`)."""

    groups: int = option(4, "g = b: channel groups (building blocks) per residual module")
    levels: int = option(3, "n_h: cost levels (models) per task")
    rhos: list[float] = option([], "rho_i of the levels' sparsity regularisers, cheapest level first (default: "
                                   "0.5 0.1 0.02 for 3 levels, geometric from 0.5 to 0.02 otherwise)")
    widths: list[int] = option([16, 32, 64], "channels of the backbone's stages")
    modules_per_stage: int = option(2, "residual modules per stage (m = stages x this)")
    stem: int = option(16, "channels of the stem convolution (not split)")
    order: str = option("cyclic", f"block order of the tasks: {', '.join(ORDERS)} (identity: no reshuffling)")
    agent: str = option("sample", "sample: the agent sees the image (the paper); task: free logits per task")
    agent_size: int = option(32, "side of the agent's input image in pixels")
    pretrain_epochs: int = option(4, "epochs of pretraining with random block dropping")
    search_epochs: int = option(4, "epochs of the alternating search (one backbone and one agent pass each)")
    tasks_per_step: int = option(8, "tasks drawn per batch (rows = batch x this; all tasks when larger)")
    backbone_lr: float = option(0.05, "SGD learning rate of the backbone (Nesterov 0.9, cosine decay over the run)")
    agent_lr: float = option(1e-3, "Adam learning rate of the agent")
    weight_decay: float = option(5e-4, "weight decay of the backbone's SGD")
    p_skip: float = option(0.1, "pretraining: probability that a module is skipped")
    p_full: float = option(0.5, "pretraining: fraction of the rows that use every block (the largest network in "
                                "every step, as nested networks are trained; 0: the paper's random dropping only)")
    eps: list[float] = option([0.2, 0.01], "epsilon-greedy: start and end of its linear decay over the search")
    nesting: str = option("free", "free: levels chosen independently (the paper); strict: level i uses at least "
                                  "the blocks of every cheaper level")
    per_sample: bool = option(True, "also evaluate the per-sample models (the agent's structure per test image)")
    augment: str = option("auto", "augmentation preset; auto: none for digits, reference otherwise")

    def resolved(self) -> dict:
        named = self.data if self.data in ("digits", "lfw") else None
        return {"img_size": self.img_size or (32 if named else 64),
                "augment": ("none" if self.data == "digits" else "reference") if self.augment == "auto"
                else self.augment,
                "rhos": list(self.rhos) or default_rhos(self.levels)}

    def spec(self) -> NetSpec:
        return NetSpec(image_size=self.resolved()["img_size"], stem=self.stem, widths=list(self.widths),
                       modules_per_stage=self.modules_per_stage, groups=self.groups, agent_size=self.agent_size,
                       agent_mode=self.agent, order=self.order, order_seed=self.seed)

    def train_config(self, **changes):
        r = self.resolved()
        return super().train_config(**{"backbone": "small_cnn", "weights": "none", "img_size": r["img_size"],
                                       "augment": r["augment"], "approach": "hc2",
                                       "epochs": self.pretrain_epochs + self.search_epochs,
                                       "lr": self.backbone_lr, **changes})

    def validate(self) -> "VirtualNetConfig":
        if self.backbone != "small_cnn" or self.weights not in ("none", None):
            raise ConfigError(f"--backbone {self.backbone} / --weights {self.weights}: Auto-VirtualNet trains its own "
                              "modularised ResNet (--widths, --modules-per-stage, --groups); ImageNet backbones are "
                              "not split into building blocks. Fix: leave --backbone and --weights out.")
        for name in ("pretrain_epochs", "search_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 0. Received: {v!r}.")
        if self.pretrain_epochs + self.search_epochs < 1:
            raise ConfigError("Nothing to train: --pretrain-epochs and --search-epochs are both 0.")
        if not isinstance(self.levels, int) or self.levels < 1:
            raise ConfigError(f"--levels must be a positive integer. Received: {self.levels!r}.")
        rhos = self.resolved()["rhos"]
        if len(rhos) != self.levels or any(r < 0 for r in rhos):
            raise ConfigError(f"--rhos needs {self.levels} values >= 0 (one per level, cheapest first). "
                              f"Received: {rhos}.")
        if self.tasks_per_step < 1:
            raise ConfigError(f"--tasks-per-step must be >= 1. Received: {self.tasks_per_step}.")
        if len(self.eps) != 2 or not all(0 <= e <= 1 for e in self.eps):
            raise ConfigError(f"--eps takes two probabilities (start, end). Received: {self.eps}.")
        if not 0 <= self.p_skip < 1 or not 0 <= self.p_full <= 1:
            raise ConfigError(f"--p-skip must be in [0, 1) and --p-full in [0, 1]. Received: {self.p_skip}, "
                              f"{self.p_full}.")
        if self.nesting not in ("free", "strict"):
            raise ConfigError(f"--nesting {self.nesting!r}: give free or strict.")
        for name in ("backbone_lr", "agent_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0. Received: {getattr(self, name)}.")
        self.spec().validate()
        self.train_config().validate()
        return self


@dataclass
class VirtualNetResult(MethodResult):
    """One run per level (``runs[i]``: ``level<i+1>/``), the static counts and the per-level figures."""

    counts: np.ndarray | None = None
    levels: list = field(default_factory=list)


def task_cost(net: VirtualNet, counts) -> dict:
    """Parameters (moving statistics included, as Keras counts them) and MAdds of one task's model
    with counts ``(m,)``: the stem, the used blocks of every module, the task's head."""
    g = net.spec.groups
    stem = net.stem_conv.count_params() + net.stem_bn.count_params()
    last = net.shapes[-1].cout
    params = stem + sum(module_cost(int(c), s, g, bn_stats=True) for c, s in zip(counts, net.shapes)) + 2 * (last + 1)
    size = net.spec.image_size
    madds = size * size * 9 * 3 * net.spec.stem + sum(module_madds(int(c), s, g) for c, s in zip(counts, net.shapes))
    return {"params": int(params), "madds": int(madds + 2 * last)}


def load(out) -> VirtualNet:
    """The trained :class:`VirtualNet` of a run directory (its options and weights)."""
    out = Path(out)
    record, weights = out / "virtualnet.json", out / "virtualnet.weights.h5"
    for f in (record, weights):
        if not f.is_file():
            raise ConfigError(f"{f} is missing: {out} is not a finished Auto-VirtualNet run. Fix: pass the --out of "
                              "a finished `python -m nas.virtualnet` run.")
    info = aio.read_json(out / "levels.json")
    spec = NetSpec(**info["spec"])
    net = VirtualNet(spec, info["tasks"], len(info["levels"]))
    net.load_weights(weights)
    return net


def static_counts(out) -> np.ndarray:
    """The static counts ``(k, levels, m)`` of a finished run."""
    return np.array(aio.read_json(Path(out) / "configurations.json")["static"]["counts"], int)


def _eer_summary(labels: dict, scores: dict) -> dict:
    from icao_mtl.metrics import evaluate_tasks

    m = evaluate_tasks(labels, scores)
    per = {t: {"eer": float(v.eer.eer) if v.eer.defined else float("nan"), "accuracy": float(v.accuracy)}
           for t, v in m.items()}
    eers = [v["eer"] for v in per.values() if np.isfinite(v["eer"])]
    return {"tasks": per, "eer_mean": float(np.mean(eers)) if eers else float("nan")}


def run(cfg: VirtualNetConfig, *, resume: bool = False) -> VirtualNetResult:
    """Pretraining, the alternating search, the static models of every level (a run directory each),
    the per-sample evaluation and the reports; see the module docstring for the outputs."""
    from icao_mtl.runs import finish_run_dir, holds_run, start_run_dir, write_status
    from icao_mtl.training import Engine

    cfg.validate()
    out = Path(cfg.out) if cfg.out else Path("runs") / f"virtualnet_{time.strftime('%Y%m%d-%H%M%S')}"
    record = out / "virtualnet.json"
    if cli.check_resume(out, record, cfg.identity(), resume, what="an Auto-VirtualNet run") is None and holds_run(out):
        raise ConfigError(f"{out} already holds a run. Fix: choose another --out.")
    verbose = cfg.verbose
    tcfg, ds, splits, pipes = prepare(cfg, verbose)
    tasks = list(splits.train.tasks)
    r = cfg.resolved()
    spec = cfg.spec()
    out.mkdir(parents=True, exist_ok=True)
    aio.write_json(record, cfg.identity())
    write_status(out, "running", stage="search")
    try:
        keras.utils.set_random_seed(cfg.seed)
        net = VirtualNet(spec, tasks, cfg.levels)
        fractions = cost_fractions(net.shapes, spec.groups)
        steps = pipes["train"].steps * (cfg.pretrain_epochs + cfg.search_epochs)
        if verbose:
            rhos = ", ".join(f"{v:g}" for v in r["rhos"])
            agent = sum(int(np.prod(v.shape)) for v in net.agent_variables())
            print(f"Auto-VirtualNet: {len(tasks)} tasks x {cfg.levels} levels (rho {rhos}); {spec.modules} modules of "
                  f"{spec.groups} blocks at {spec.image_size} px; backbone {net.backbone_params():,} parameters, agent "
                  f"{agent:,}; {min(cfg.tasks_per_step, len(tasks))} tasks per batch.")
        engine = Engine(net, tasks, groups=groups(net, backbone_lr=cfg.backbone_lr, agent_lr=cfg.agent_lr, steps=steps,
                                                  weight_decay=cfg.weight_decay),
                        run_dir=out, monitor="val_accuracy", verbose=1 if verbose else 0, seed=cfg.seed)
        started = time.perf_counter()
        history = engine.fit(phases(net, tasks, pretrain=cfg.pretrain_epochs, search=cfg.search_epochs,
                                    tasks_per_step=cfg.tasks_per_step, rhos=r["rhos"], fractions=fractions,
                                    p_skip=cfg.p_skip, p_full=cfg.p_full, eps=cfg.eps),
                             {"train": pipes["train"]}, pipes["val"], resume=resume)
        seconds = time.perf_counter() - started
        net.save_weights(out / "virtualnet.weights.h5")
        aio.write_json(out / "history.json", history)
        plot_trace(history, cfg.levels, out / "trace.png")
        # static models: each module's most frequent greedy count over the validation images
        val_counts = greedy_counts(net, pipes["val"])
        counts = majority(val_counts, spec.groups)  # (k, levels, m)
        if cfg.nesting == "strict":
            counts = nest_levels(counts)
        histogram = [[[np.bincount(val_counts[:, t, i, j], minlength=spec.groups + 1).tolist()
                       for j in range(spec.modules)] for i in range(cfg.levels)] for t in range(len(tasks))]
        aio.write_json(out / "configurations.json",
                       {"tasks": tasks, "modules": spec.modules, "groups": spec.groups,
                        "static": {"counts": counts.tolist(), "rule": "most frequent greedy count over the validation "
                                   "images" + ("; strict nesting" if cfg.nesting == "strict" else "")},
                        "validation_histogram": histogram, "block_ranks": net.ranks.tolist()})
        plot_structures(counts, tasks, spec.groups, out / "structures.png")
        test_counts = greedy_counts(net, pipes["test"]) if cfg.per_sample else None
        if cfg.nesting == "strict" and test_counts is not None:
            test_counts = nest_levels(test_counts)
        levels, runs = [], []
        for i in range(cfg.levels):
            level_dir = out / f"level{i + 1}"
            model = build_sliced(net, {t: counts[ti, i] for ti, t in enumerate(tasks)}, name=f"virtualnet_level{i + 1}")
            rcfg = tcfg.copy(approach="virtualnet", out=str(level_dir))
            start_run_dir(level_dir, rcfg.to_dict(), splits, stage="final")
            finish_run_dir(level_dir, rcfg, {"model": model}, pipes, splits, {"virtualnet": history},
                           verbose=verbose, level=i + 1)
            metrics = aio.read_json(level_dir / "metrics.json")["test"]
            per_task = {}
            for ti, t in enumerate(tasks):
                row = metrics["per_requisite"].get(t, {})
                per_task[t] = {"counts": counts[ti, i].tolist(), **task_cost(net, counts[ti, i]),
                               "test_eer": row.get("eer"), "test_accuracy": row.get("accuracy")}
            entry = {"level": i + 1, "rho": r["rhos"][i], "test_eer_mean": metrics["eer_mean"],
                     "test_eer_median": metrics["eer_median"], "tasks": per_task,
                     "network_params": int(model.count_params())}
            if test_counts is not None:
                scores = per_sample_scores(net, pipes["test"], test_counts, i)
                labels = {t: np.asarray(splits.test.labels[:, list(splits.test.tasks).index(t)]) for t in tasks}
                summary = _eer_summary(labels, scores)
                for ti, t in enumerate(tasks):
                    costs = [task_cost(net, c)["params"] for c in test_counts[:, ti, i]]
                    summary["tasks"][t].update(test_eer=summary["tasks"][t].pop("eer"), params=float(np.mean(costs)))
                entry["per_sample"] = {"test_eer_mean": summary["eer_mean"], "tasks": summary["tasks"]}
            levels.append(entry)
            mean_params = float(np.mean([v["params"] for v in per_task.values()]))
            runs.append(MethodRun(f"level{i + 1}", level_dir, search_seconds=seconds, train_seconds=None,
                                  details={"level": i + 1, "rho": r["rhos"][i], "mean_task_params": mean_params}))
        info = {"tasks": tasks, "spec": spec.to_dict(), "rhos": r["rhos"], "nesting": cfg.nesting,
                "backbone_params": net.backbone_params(),
                "agent_params": int(sum(int(np.prod(v.shape)) for v in net.agent_variables())),
                "seconds": seconds, "levels": levels}
        aio.write_json(out / "levels.json", info)
        plot_cost_curves(levels, tasks, out / "cost_curves.png")
        write_status(out, "finished", levels=cfg.levels)
    except BaseException as exc:
        write_status(out, "interrupted", error=f"{type(exc).__name__}: {exc}")
        raise
    if verbose:
        for lv in levels:
            mean_params = np.mean([v["params"] for v in lv["tasks"].values()])
            extra = (f"; per sample {100 * lv['per_sample']['test_eer_mean']:.2f}%" if "per_sample" in lv else "")
            print(f"level {lv['level']} (rho {lv['rho']:g}): test mean EER {100 * lv['test_eer_mean']:.2f}% with "
                  f"{mean_params:,.0f} parameters per task{extra}")
    return VirtualNetResult("virtualnet", out, runs, counts, levels)


def compare(budget, base: dict, out: Path, seed: int) -> list[tuple[str, MethodRun]]:
    """The rows of ``python -m nas.compare``, one per cost level: the backbone is pretrained for
    ``budget.epochs`` (as every compared network is trained for the budget's epochs), then the
    alternating search runs ``budget.search_epochs``; ``base``: the shared options (the image at most
    64 px)."""
    size = min(base.get("img_size") or 64, 64)
    cfg = VirtualNetConfig(**{**base, "backbone": "small_cnn", "weights": "none", "img_size": size},
                           pretrain_epochs=budget.epochs, search_epochs=budget.search_epochs,
                           seed=seed, out=str(out), verbose=0)
    result = run(cfg, resume=(Path(out) / "virtualnet.json").is_file())
    return [(f"virtualnet-l{r.details['level']}", r) for r in result.runs]


build_parser, main = cli.method_main(VirtualNetConfig, run, prog="python -m nas.virtualnet", doc=__doc__,
                                     record="virtualnet.json")


if __name__ == "__main__":
    sys.exit(main())
