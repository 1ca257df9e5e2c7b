"""``python -m nas.dag``: the restricted-DAG dynamic network (seed 003; spec dag_mtl.md) on the engine.

A central network of N hidden states, edges i -> j only for j - i <= M (flow restriction), a read-in
from the image to every state and a read-out from every state, with per-task gates (read-ins alpha,
edges gamma, read-outs beta). Three stages on the engine (:mod:`nas.dag.search`): warm-up with the
gates frozen at 0.5, search with the gates on their own optimiser and the squeeze loss (budget kappa),
then fine-tuning from the warm-up weights with each task's binary sub-network from the flow-based
reduction (Algorithm 1). The final network keeps only what some task uses, so it is smaller and faster
than the searched one (``params.json``).

Examples::

    python -m nas.dag --data digits --N 6 --M 3                    # 10 one-vs-rest digit tasks
    python -m nas.dag --N 8 --M 3 --kappa 0.3 --lambda-sq 0.05      # the synthetic faces, 23 requisites
    python -m nas.dag --data lfw --img-size 32 --out runs/dag_lfw
    python -m nas.dag --backbone mobilenet_v2 --weights imagenet --img-size 224   # v_0: ImageNet features
    python -m nas.dag --resume --out runs/dag_lfw                   # after an interruption (kill -9 included)

Outputs (``--out``): the run-directory files of ``python -m icao_mtl.train`` for the fine-tuned network
(``model.keras``, ``metrics.json``, tables, scores, curves, DET and FAR/FRR plots, ``status.json``), and
``dag.json`` (the options), ``trace.json`` / ``trace.png`` (every epoch of the three stages: losses,
squeeze term, gates), ``reduction.json`` (Algorithm 1's sub-networks), ``topology.json`` /
``topology.md`` (per task: adjacency, depth, width, sparsity) with a drawing per task in ``tasks/``,
``params.json`` (parameters, MAdds and CPU latency of the final and searched networks, the shared
bottom and K single-task chains; parameters relative to the shared bottom = 1.00) and, with ``--single RUN_DIR`` (a single-task run on
the same split), ``relative_performance.json`` (Delta_T of eqs. 10-11 on the EER).
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
from .graph import SubNetwork, edges, n_edges, relative_performance
from .network import BACKBONE_STRIDES, DagSpec, build_network, gate_layers, transplant
from .report import TraceWriter, plot_trace, write_topology
from .search import groups, masks_of, phases


@dataclass
class DagConfig(CommonConfig):
    """A restricted-DAG run (the options every method's command shares are those of
    :class:`~nas.common.cli.CommonConfig`)."""

    backbone: str = option("none", "none: the read-ins see the image (the paper); or small_cnn, mobilenet_v2, vgg16, "
                                   "vgg19, resnet50_v2: v_0 is that backbone's feature map, computed once")
    freeze_backbone: bool | None = option(None, "keep the backbone's weights fixed (default: frozen when --weights "
                                                "gives pretrained ones, trained when from scratch)")
    n: int = option(8, "N, hidden states", flag="--N")
    m: int = option(3, "M, the flow constant: edges i -> j with j - i <= M", flag="--M")
    width: int | None = option(None, "channels of every state (default 32; 16 with at most 10 tasks)")
    combine: str = option("a1", "a1: the read-in is one of a state's normalised incoming links (recommended, "
                                "spec 3.2); a2: added outside the edges' normalisation")
    kappa: float = option(0.3, "squeeze budget as a share of the structural edges (kappa = share * |E|)")
    lambda_sq: float = option(0.05, "weight of the squeeze loss")
    warmup_epochs: int = option(4, "stage 1, gates frozen at 0.5")
    search_epochs: int = option(6, "stage 2, gates and weights together")
    finetune_epochs: int = option(10, "stage 3, binary sub-networks from the warm-up weights")
    lr: float = option(1e-3, "the weights' Adam learning rate (the paper: 1e-4 for 5,000-40,000 iterations)")
    arch_lr: float = option(1e-2, "the gates' Adam learning rate")
    augment: str = option("auto", "augmentation preset; auto: none for digits, reference otherwise")
    single: str | None = option(None, "a single-task run directory on the same split, for Delta_T")

    VOLATILE = ("out", "verbose", "single")

    def resolved(self) -> dict:
        named = self.data if self.data in ("digits", "lfw") else None
        if self.backbone != "none":
            from icao_mtl.backbones import spec as backbone_spec

            default = backbone_spec(self.backbone).default_size if self.backbone in BACKBONE_STRIDES else 64
        else:
            default = 32 if named else 64
        return {"img_size": self.img_size or default,
                "freeze_backbone": (self.weights not in (None, "none")) if self.freeze_backbone is None
                else bool(self.freeze_backbone),
                "augment": ("none" if self.data == "digits" else "reference") if self.augment == "auto"
                else self.augment}

    def train_config(self, **changes):
        r = self.resolved()
        # the data side of the run: pipelines at the network's size (the backbone field is unused)
        return super().train_config(**{"backbone": self.backbone if self.backbone in BACKBONE_STRIDES else "small_cnn",
                                       "img_size": r["img_size"], "augment": r["augment"],
                                       "approach": "hc2", "epochs": self.warmup_epochs + self.search_epochs +
                                       self.finetune_epochs, "lr": self.lr, **changes})

    def validate(self) -> "DagConfig":
        if self.backbone != "none" and self.backbone not in BACKBONE_STRIDES:
            raise ConfigError(f"--backbone {self.backbone!r}: the central network reads the image (none) or the feature "
                              f"map of one of {', '.join(BACKBONE_STRIDES)}. Fix: choose one of them.")
        if self.backbone == "none" and self.weights not in (None, "none"):
            raise ConfigError(f"--weights {self.weights!r} needs a --backbone to load them into. Fix: --backbone "
                              "mobilenet_v2 (or another), or --weights none.")
        for name in ("n", "m", "warmup_epochs", "search_epochs", "finetune_epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"--{name.replace('_', '-') if name not in ('n', 'm') else name.upper()} must be a "
                                  f"positive integer. Received: {v!r}.")
        if not 0 <= self.kappa <= 1:
            raise ConfigError(f"--kappa is a share of the edges in [0, 1]. Received: {self.kappa}.")
        if self.lambda_sq < 0:
            raise ConfigError(f"--lambda-sq must be >= 0. Received: {self.lambda_sq}.")
        if self.single and not (Path(self.single) / "metrics.json").is_file():
            raise ConfigError(f"--single {self.single}: no metrics.json there. Fix: pass a finished single-task run "
                              "directory (python -m icao_mtl.train --approach stl).")
        self.train_config().validate()
        self.spec(23).validate()
        return self

    def spec(self, n_tasks: int) -> DagSpec:
        width = self.width or (16 if n_tasks <= 10 else 32)
        return DagSpec(n=self.n, m=self.m, width=width, image_size=self.resolved()["img_size"], combine=self.combine,
                       backbone=self.backbone)


@dataclass
class DagResult(MethodResult):
    """The fine-tuned network (``runs[0]``), the tasks' sub-networks and the parameter accounting."""

    subnetworks: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


def chain(spec: DagSpec) -> SubNetwork:
    """The shared-bottom network as a sub-network: read-in into v_1, v_1 -> v_2 -> ... -> v_N, read out v_N."""
    n = spec.n
    return SubNetwork(n, tuple(int(s == 1) for s in range(1, n + 1)), tuple(int(s == n) for s in range(1, n + 1)),
                      frozenset((i, i + 1) for i in range(1, n)))


def _network_params(model) -> int:
    """Parameters of the operations and heads (the gates, masks and mode switch excluded); batch-norm
    moving statistics included, as Keras' count_params does (spec §8.3)."""
    skip = {id(v) for l in gate_layers(model) for v in l.weights}
    return int(sum(np.prod(v.shape) for v in model.weights if id(v) not in skip))


def accounting(final, full, spec: DagSpec, tasks) -> dict:
    """Parameters, MAdds and CPU latency (ms per image, batch 32) of the final network, the searched one
    (every edge), the shared bottom (the chain v_1 -> ... -> v_N computed once, one head per task) and K
    single-task chains; parameters relative to the shared bottom (1.00, as the paper reports them)."""
    from ..common.madds import latency_ms as _latency
    from ..common.madds import model_madds

    one = build_network(spec, tasks[:1], subs={tasks[0]: chain(spec)}, name="dag_one_task_chain")
    head = spec.width * 2 + 2
    k = len(tasks)
    rows = {}
    for name, model in (("final", final), ("searched", full)):
        rows[name] = {"params": _network_params(model), "madds": model_madds(model),
                      "latency_ms_batch32": _latency(model, spec.image_size)}
    trunk = {"params": _network_params(one), "madds": model_madds(one),
             "latency_ms_batch32": _latency(one, spec.image_size)}
    rows["shared_bottom"] = {"params": trunk["params"] + (k - 1) * head, "madds": trunk["madds"] + (k - 1) * head,
                             "latency_ms_batch32": trunk["latency_ms_batch32"]}
    rows["single_task"] = {"params": k * trunk["params"], "madds": k * trunk["madds"],
                           "latency_ms_batch32": k * trunk["latency_ms_batch32"]}
    base = rows["shared_bottom"]["params"]
    for r in rows.values():
        r["params_relative"] = r["params"] / base
    return rows


def run(cfg: DagConfig, *, resume: bool = False) -> DagResult:
    """The three stages, the final pruned network's run directory and the topology; see the module
    docstring for the outputs."""
    from icao_mtl.runs import finish_run_dir, holds_run, start_run_dir, write_status
    from icao_mtl.training import Engine

    cfg.validate()
    out = Path(cfg.out) if cfg.out else Path("runs") / f"dag_N{cfg.n}_M{cfg.m}_{time.strftime('%Y%m%d-%H%M%S')}"
    record = out / "dag.json"
    if cli.check_resume(out, record, cfg.identity(), resume, what="a DAG run") is None and holds_run(out):
        raise ConfigError(f"{out} already holds a run. Fix: choose another --out.")
    verbose = cfg.verbose
    tcfg, _, splits, pipes = prepare(cfg, verbose)
    tasks = splits.train.tasks
    spec = cfg.spec(len(tasks))
    kappa = cfg.kappa * n_edges(spec.n, spec.m)
    rcfg = tcfg.copy(approach="dag", out=str(out))
    out.mkdir(parents=True, exist_ok=True)
    aio.write_json(record, cfg.identity())
    start_run_dir(out, rcfg.to_dict(), splits, stage="search")
    try:
        keras.utils.set_random_seed(cfg.seed)
        full = build_network(spec, tasks, weights=cfg.weights, freeze_backbone=cfg.resolved()["freeze_backbone"])
        if verbose:
            print(f"Central network: N = {spec.n}, M = {spec.m}, {len(edges(spec.n, spec.m))} edges, {spec.width} "
                  f"channels, {spec.image_size} px, {len(tasks)} tasks batched task-major; kappa = {kappa:.2f} edges, "
                  f"lambda_sq = {cfg.lambda_sq}.")

        def note_reduction(reduced):
            aio.write_json(out / "reduction.json", {t: {"algorithm_1": raw.to_dict(), "on_paths": used.to_dict()}
                                                    for t, (raw, used) in reduced.items()})

        engine = Engine(full, tasks, groups=groups(full, lr=cfg.lr, arch_lr=cfg.arch_lr), run_dir=out,
                        monitor="val_accuracy", verbose=1 if verbose else 0, seed=cfg.seed)
        trace = TraceWriter(full, spec, tasks, out / "trace.json")
        started = time.perf_counter()
        history = engine.fit(phases(full, spec, tasks, warmup=cfg.warmup_epochs, search=cfg.search_epochs,
                                    finetune=cfg.finetune_epochs, lambda_sq=cfg.lambda_sq, kappa=kappa,
                                    on_reduced=note_reduction),
                             {"train": pipes["train"]}, pipes["val"], resume=resume, callbacks=[trace])
        seconds = time.perf_counter() - started
        plot_trace(trace.entries, out / "trace.png")
        subs = masks_of(full, spec, tasks)
        final = build_network(spec, tasks, subs=subs, name="dag_final")
        transplant(full, final)
        raw = {}
        if (out / "reduction.json").is_file():
            raw = {t: _sub(spec.n, r["algorithm_1"]) for t, r in aio.read_json(out / "reduction.json").items()}
        rows = write_topology(out, subs, raw, spec.m)
        params = accounting(final, full, spec, tasks)
        params["searched_edges"] = len(edges(spec.n, spec.m)) if spec.n > 1 else 0
        params["final_edges"] = len(set().union(*(s.hidden for s in subs.values())))
        aio.write_json(out / "params.json", params)
        result = finish_run_dir(out, rcfg, {"model": final}, pipes, splits, {"dag": history}, verbose=verbose,
                                params_relative=params["final"]["params_relative"])
    except BaseException as exc:
        write_status(out, "interrupted", error=f"{type(exc).__name__}: {exc}")
        raise
    if cfg.single:
        _relative(out, result.metrics, Path(cfg.single))
    if verbose:
        print(f"Final network: {params['final_edges']} of {params['searched_edges']} edges kept by some task; "
              f"parameters {params['final']['params_relative']:.2f} x the shared bottom; "
              f"{params['final']['latency_ms_batch32']:.3f} ms per image against "
              f"{params['searched']['latency_ms_batch32']:.3f} for the searched network.")
    run_ = MethodRun("final", out, search_seconds=seconds, train_seconds=None,
                     details={"topology": rows, "params": params})
    return DagResult("dag", out, [run_], subs, params)


def _sub(n: int, d: dict) -> SubNetwork:
    return SubNetwork(n, tuple(int(s in d["read_in"]) for s in range(1, n + 1)),
                      tuple(int(s in d["read_out"]) for s in range(1, n + 1)), frozenset(map(tuple, d["edges"])))


def _relative(out: Path, metrics: dict, single_dir: Path) -> dict:
    """Delta_T (eqs. 10-11) of the test EER against the single-task run's."""
    single = aio.read_json(single_dir / "metrics.json")["test"]["per_requisite"]
    mine = metrics["test"]["per_requisite"]
    rel = relative_performance({t: {"eer": v["eer"]} for t, v in mine.items()},
                               {t: {"eer": v["eer"]} for t, v in single.items()}, {"eer": True})
    aio.write_json(out / "relative_performance.json", {**rel, "single": str(single_dir), "metric": "test EER"})
    return rel


def compare(budget, base: dict, out: Path, seed: int) -> list[tuple[str, MethodRun]]:
    """The row of ``python -m nas.compare``: warm-up and search share ``budget.search_epochs`` as the
    paper's 2 : 3, the fine-tuning takes ``budget.epochs``; ``base``: the shared options (the image at
    most 64 px)."""
    warmup = max(1, round(budget.search_epochs * 2 / 5))
    # every task has its own hidden states (K times a single network's work): at most 64 px, the spec's
    # faces setting (§8.1), so that 23 tasks stay affordable on a CPU
    size = min(base.get("img_size") or 64, 64)
    cfg = DagConfig(**{**base, "backbone": "none", "weights": "none", "img_size": size}, warmup_epochs=warmup,
                    search_epochs=max(1, budget.search_epochs - warmup), finetune_epochs=budget.epochs, seed=seed,
                    out=str(out), verbose=0)
    result = run(cfg, resume=(Path(out) / "dag.json").is_file())
    return [(f"dag-M{cfg.m}", r) for r in result.runs]


build_parser, main = cli.method_main(DagConfig, run, prog="python -m nas.dag", doc=__doc__, record="dag.json")


if __name__ == "__main__":
    sys.exit(main())
