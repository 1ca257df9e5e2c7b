"""What an MTL-NAS run shows: the edges (JSON and a drawing) and the trace of the search."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from icao_mtl import io as aio

from .edges import Edge


def edge_rows(table: list[Edge], logits, units: list) -> list[dict]:
    """One row per candidate edge: units by name, stages, logit, sigmoid, kept."""
    logits = np.asarray(logits, np.float64)
    names = [u for u, _ in units]
    return [{"target": names[e.target], "source": names[e.source], "stage": e.stage, "from_stage": e.from_stage,
             "logit": float(a), "probability": float(1 / (1 + np.exp(-a))), "kept": bool(a > 0)}
            for e, a in zip(table, logits)]


def write_edges(out: Path, table: list[Edge], logits, units: list, stages: int) -> dict:
    """``edges.json`` (every edge and the kept ones per target unit) and ``edges.png``."""
    rows = edge_rows(table, logits, units)
    p = np.array([r["probability"] for r in rows]) if rows else np.zeros(0)
    summary = {"edges": len(rows), "kept": int(sum(r["kept"] for r in rows)),
               "undecided": float(np.mean((p > 0.05) & (p < 0.95))) if rows else 0.0,
               "units": {u: list(t) for u, t in units},
               "kept_by_target": {u: [f"{r['source']}.{r['from_stage']} -> {u}.{r['stage']}" for r in rows
                                      if r["kept"] and r["target"] == u] for u, _ in units},
               "rows": rows}
    aio.write_json(out / "edges.json", summary)
    draw_edges(rows, units, stages, out / "edges.png")
    return summary


def draw_edges(rows: list[dict], units: list, stages: int, path: Path) -> None:
    """Units as columns of stages (top: the input side); a kept edge as an arrow from the source
    unit's stage to the target unit's fusion op, its width by the gate's probability."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [u for u, _ in units]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 1.2 + 0.45 * stages))
    for x, u in enumerate(names):
        ax.plot([x] * stages, range(stages), "-", color="0.75", zorder=1)
        ax.scatter([x] * stages, range(stages), s=60, color="0.35", zorder=2)
    kept = [r for r in rows if r["kept"]]
    for r in kept:
        x0, x1 = names.index(r["source"]), names.index(r["target"])
        ax.annotate("", xy=(x1 - 0.06 * np.sign(x1 - x0), r["stage"]), xytext=(x0, r["from_stage"]),
                    arrowprops={"arrowstyle": "->", "lw": 0.5 + 2 * r["probability"], "color": "tab:red",
                                "connectionstyle": f"arc3,rad={0.15 * np.sign(x1 - x0)}"}, zorder=3)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(stages), [f"stage {i}" for i in range(stages)])
    ax.set_ylim(stages - 0.5, -0.5)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_title(f"MTL-NAS: {len(kept)} of {len(rows)} fusion edges kept (logit > 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trace(history: list[dict], path: Path) -> None:
    """Per epoch: the losses, the validation accuracy, the MinEntropy term and the share of
    undecided gates (sigmoid in (0.05, 0.95))."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for key, label in (("loss", "architecture half"), ("weight_half_loss", "weight half"), ("val_loss", "validation")):
        vals = [h.get(key, np.nan) for h in history]
        if np.isfinite(vals).any():
            axes[0].plot(epochs, vals, marker=".", label=label)
    axes[0].set_title("task loss")
    axes[0].legend(fontsize=8)
    axes[1].plot(epochs, [h.get("val_accuracy", np.nan) for h in history], marker=".")
    axes[1].set_title("validation accuracy (gates 1[a > 0])")
    for key in ("entropy", "undecided", "mean_gate"):
        axes[2].plot(epochs, [h.get(key, np.nan) for h in history], marker=".", label=key)
    axes[2].set_title("gates")
    axes[2].legend(fontsize=8)
    phases = [h.get("phase", "") for h in history]
    for ax in axes:
        ax.set_xlabel("epoch")
        for k in range(1, len(phases)):
            if phases[k] != phases[k - 1]:
                ax.axvline(k + 0.5, color="0.7", ls="--")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
