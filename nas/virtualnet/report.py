"""What an Auto-VirtualNet run shows: the accuracy-cost curve of every task, the chosen structures
(the paper's Fig. 5: blocks per module, task and level) and the trace of the training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pct(v) -> float:
    """Percent, NaN for an undefined EER (a task with one class in the split)."""
    return float("nan") if v is None else 100 * float(v)


def plot_cost_curves(levels: list[dict], tasks, path: Path) -> None:
    """One panel per task: test EER (%) against the parameters the task's model uses, one point per
    cost level (the static model, line) and the per-sample models (crosses); the last panel the means."""
    plt = _plt()
    panels = list(tasks) + ["mean"]
    cols = min(6, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), squeeze=False)
    for ax, task in zip(axes.flat, panels):
        if task == "mean":
            xs = [np.mean([lv["tasks"][t]["params"] for t in tasks]) for lv in levels]
            ys = [_pct(lv["test_eer_mean"]) for lv in levels]
            ps = [_pct(lv["per_sample"]["test_eer_mean"]) for lv in levels if lv.get("per_sample")]
            px = [np.mean([lv["per_sample"]["tasks"][t]["params"] for t in tasks]) for lv in levels
                  if lv.get("per_sample")]
        else:
            xs = [lv["tasks"][task]["params"] for lv in levels]
            ys = [_pct(lv["tasks"][task]["test_eer"]) for lv in levels]
            ps = [_pct(lv["per_sample"]["tasks"][task]["test_eer"]) for lv in levels if lv.get("per_sample")]
            px = [lv["per_sample"]["tasks"][task]["params"] for lv in levels if lv.get("per_sample")]
        ax.plot(np.array(xs) / 1e3, ys, "o-", color="C0", label="static")
        if ps:
            ax.plot(np.array(px) / 1e3, ps, "x", color="C3", label="per sample")
        for i, (x, y) in enumerate(zip(xs, ys)):
            ax.annotate(f"L{i + 1}", (x / 1e3, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_title(task, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("params (k)", fontsize=6)
        ax.set_ylabel("test EER (%)", fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_structures(counts: np.ndarray, tasks, groups: int, path: Path) -> None:
    """Counts ``(k, levels, m)``: one heat map per level, tasks x modules, the number of blocks used
    (0: the module is skipped)."""
    plt = _plt()
    k, levels, m = counts.shape
    fig, axes = plt.subplots(1, levels, figsize=(1.2 + 0.45 * m * levels, 0.8 + 0.22 * k), squeeze=False)
    for i, ax in enumerate(axes[0]):
        im = ax.imshow(counts[:, i, :], vmin=0, vmax=groups, cmap="viridis", aspect="auto")
        ax.set_title(f"level {i + 1}", fontsize=8)
        ax.set_xticks(range(m), [str(j) for j in range(m)], fontsize=6)
        ax.set_xlabel("module", fontsize=7)
        ax.set_yticks(range(k), list(tasks) if i == 0 else [""] * k, fontsize=6)
        for t in range(k):
            for j in range(m):
                ax.text(j, t, str(int(counts[t, i, j])), ha="center", va="center", fontsize=5, color="w")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="blocks")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def plot_trace(history: list[dict], levels: int, path: Path) -> None:
    """Per epoch: the backbone's loss, the full network's validation accuracy, the agent's cost and the
    fraction of module parameters each level uses."""
    plt = _plt()
    epochs = np.arange(1, len(history) + 1)
    get = (lambda key: np.array([h.get(key, np.nan) for h in history], float))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    axes[0].plot(epochs, get("loss"), "o-", label="backbone loss")
    axes[0].plot(epochs, get("agent_cost"), "s-", label="agent cost (CE + R)")
    axes[0].set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    axes[1].plot(epochs, get("val_accuracy"), "o-", label="val accuracy (every block)")
    axes[1].set_xlabel("epoch")
    axes[1].legend(fontsize=7)
    for i in range(levels):
        axes[2].plot(epochs, get(f"agent_used_level{i + 1}"), "o-", label=f"level {i + 1}")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_ylabel("fraction of module params")
    axes[2].set_xlabel("epoch")
    axes[2].legend(fontsize=7)
    phases = [h.get("phase") for h in history]
    for ax in axes:
        for e in range(1, len(phases)):
            if phases[e] != phases[e - 1]:
                ax.axvline(e + 0.5, color="grey", ls=":")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
