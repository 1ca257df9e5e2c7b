"""What a restricted-DAG run shows: each task's sub-network drawn as a graph, the search trace (losses,
the squeeze term, the soft number of active edges, the gates) and the topology table. Figures are PNG
files written with no pyplot state (Jupyter's backend is left alone)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from icao_mtl import io as aio

from .graph import SubNetwork, edges


def draw(sub: SubNetwork, m: int, path, title: str = "") -> None:
    """Nodes 0 (input), 1..N, L left to right; the structural edges in light grey, the task's read-ins,
    edges and read-outs in colour (arcs above the line skip states)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch

    from icao_mtl.reports import _save

    n = sub.n
    fig = Figure(figsize=(max(5.0, 0.9 * (n + 2)), 2.6))
    ax = fig.subplots()
    xs = {v: float(v) for v in range(n + 2)}

    def arc(i, j, color, lw, z, rad):
        ax.add_patch(FancyArrowPatch((xs[i], 0), (xs[j], 0), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                     mutation_scale=8, color=color, lw=lw, zorder=z))

    for i, j in edges(n, m) if n > 1 else []:
        arc(i, j, "0.85", 0.8, 1, -0.25 - 0.12 * (j - i - 1))
    for i, j in sorted(sub.hidden):
        arc(i, j, "tab:blue", 2.0, 3, -0.25 - 0.12 * (j - i - 1))
    for s, v in enumerate(sub.read_in, 1):
        if v:
            arc(0, s, "tab:green", 1.6, 2, 0.35)
    for s, v in enumerate(sub.read_out, 1):
        if v:
            arc(s, n + 1, "tab:red", 1.6, 2, 0.35)
    ax.scatter(list(xs.values()), [0] * (n + 2), s=160, c=["tab:green"] + ["white"] * n + ["tab:red"],
               edgecolors="k", zorder=4)
    for v, x in xs.items():
        ax.text(x, 0, "in" if v == 0 else ("L" if v == n + 1 else str(v)), ha="center", va="center", fontsize=7,
                zorder=5)
    ax.set_xlim(-0.6, n + 1.6)
    ax.set_ylim(-1.2, 1.2)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


class TraceWriter(keras.callbacks.Callback):
    """``trace.json`` after every epoch: the phase, the losses, the squeeze term, the soft number of
    active edges per task and the gates sigmoid(alpha), sigmoid(beta), sigmoid(gamma) per task."""

    def __init__(self, model, spec, tasks, path):
        super().__init__()
        from .network import probabilities

        self.network, self.spec, self.tasks, self.path = model, spec, tuple(tasks), Path(path)
        self._probabilities = probabilities
        self.entries = aio.read_json(self.path) if self.path.is_file() else []

    def on_epoch_end(self, epoch, logs=None):
        logs = self.model.engine.history[-1]
        gates = self._probabilities(self.network, self.spec, self.tasks)
        entry = {"epoch": int(logs["epoch"]), "phase": logs["phase"], "loss": logs.get("loss"),
                 "squeeze": logs.get("squeeze"), "soft_edges": logs.get("soft_edges"),
                 "val_loss": logs.get("val_loss"), "val_eer": logs.get("val_eer"),
                 "edges_per_task": {t: float(g[2].sum()) for t, g in gates.items()},
                 "gates": {t: {"read_in": np.round(a, 4).tolist(), "read_out": np.round(b, 4).tolist(),
                               "edges": np.round(g, 4).tolist()} for t, (a, b, g) in gates.items()}}
        self.entries = [e for e in self.entries if e["epoch"] < entry["epoch"]] + [entry]
        aio.write_json(self.path, self.entries)


def plot_trace(entries: list, path) -> None:
    """Losses per epoch (stages shaded), the squeeze term and the soft number of active edges per task."""
    from matplotlib.figure import Figure

    from icao_mtl.reports import _save

    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    ep = [e["epoch"] for e in entries]
    axes[0].plot(ep, [e["loss"] for e in entries], marker="o", label="training loss")
    if any(e.get("val_loss") is not None for e in entries):
        axes[0].plot(ep, [e.get("val_loss") if e.get("val_loss") is not None else np.nan for e in entries], "--",
                     marker="o", label="validation loss")
    axes[0].set(xlabel="epoch", title="task loss")
    axes[0].legend(fontsize=7)
    axes[1].plot(ep, [e["squeeze"] if e.get("squeeze") is not None else np.nan for e in entries], marker="o")
    axes[1].set(xlabel="epoch", title="squeeze loss (search)")
    for t in entries[-1]["edges_per_task"]:
        axes[2].plot(ep, [e["edges_per_task"][t] for e in entries], lw=1)
    axes[2].set(xlabel="epoch", title="sum of sigmoid(gamma) per task")
    for ax in axes:
        ax.grid(alpha=0.3)
        prev = None
        for e in entries:
            if e["phase"] != prev:
                ax.axvline(e["epoch"] - 0.5, color="grey", lw=0.6)
                ax.text(e["epoch"] - 0.4, ax.get_ylim()[1], e["phase"], fontsize=7, va="top", color="grey")
                prev = e["phase"]
    fig.tight_layout()
    _save(fig, path)


def topology_table(rows: dict) -> str:
    """Markdown: per task, the states it reads in and out, its edges, depth, width and sparsity."""
    lines = ["| task | read-in | read-out | edges | depth | width | sparsity |", "|---|---|---|---|---|---|---|"]
    for t, r in rows.items():
        lines.append(f"| {t} | {', '.join(map(str, r['read_in']))} | {', '.join(map(str, r['read_out']))} | "
                     f"{r['topology']['edges']} | {r['topology']['depth']} | {r['topology']['width']} | "
                     f"{r['topology']['sparsity']:.3f} |")
    return "\n".join(lines) + "\n"


def write_topology(out: Path, subs: dict, raw: dict, m: int) -> dict:
    """``topology.json`` (per task: the adjacency of its sub-network, the links Algorithm 1 kept that lie
    on no input-output path, the metrics), ``topology.md`` and one drawing per task in ``tasks/``."""
    from .graph import topology

    rows = {}
    for t, sub in subs.items():
        rows[t] = {**sub.to_dict(), "adjacency": sub.adjacency().tolist(), "topology": topology(sub, m),
                   "reduction_kept_off_path": sorted(map(list, raw[t].hidden - sub.hidden)) if t in raw else []}
        draw(sub, m, out / "tasks" / f"{t}.png", title=f"{t}: {len(sub.hidden)} edges")
    aio.write_json(out / "topology.json", rows)
    aio.write_text(out / "topology.md", topology_table(rows))
    return json.loads(json.dumps(rows))
