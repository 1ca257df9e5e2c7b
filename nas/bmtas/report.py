"""What a BMTAS run shows: the search trace, the branch tree, the error-against-cost (Pareto) plot and
table. Figures are written as PNG with no pyplot state (Jupyter's backend is left alone)."""

from __future__ import annotations

import math

import numpy as np


def plot_trace(entries: list, unit_names, path) -> None:
    """Expected encoder MAdds, losses and temperature per epoch, and the routing probabilities of the
    final argmax copy per layer and unit."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. Jupyter's) is left alone

    from icao_mtl.reports import _save

    epochs = [e["epoch"] for e in entries]
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, [e["expected_encoder_madds"] / 1e6 for e in entries], marker="o")
    axes[0].set(xlabel="epoch", ylabel="expected encoder MAdds (M)", title="resource term")
    axes[1].plot(epochs, [e["weights_loss"] for e in entries], label="weight pass")
    axes[1].plot(epochs, [e["arch_loss"] if e["arch_loss"] is not None else math.nan for e in entries],
                 label="architecture pass")
    ax2 = axes[1].twinx()
    ax2.plot(epochs, [e["temperature"] if e["temperature"] is not None else math.nan for e in entries], "k--",
             label="temperature")
    ax2.set_ylabel("temperature")
    axes[1].set(xlabel="epoch", ylabel="loss", title="losses and temperature")
    axes[1].legend(loc="upper right")
    probs = np.asarray(entries[-1]["probabilities"])  # (L, U, K)
    axes[2].imshow(probs.max(-1).T, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axes[2].set(xlabel="layer", title="probability of the chosen copy (last epoch)")
    axes[2].set_yticks(range(len(unit_names)), unit_names)
    fig.tight_layout()
    _save(fig, path)


def plot_tree(info: dict, path, title: str = "") -> None:
    """The branch tree: one column per layer, one node per copy, edges from parent to child copies, the
    units written at the leaves."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. Jupyter's) is left alone

    from icao_mtl.reports import _save

    groups = [[tuple(p) for p in g] for g in info["groups"]]
    names = info["unit_names"]
    n_units = len(names)
    leaves = sorted(groups[-1], key=lambda g: min(g)) if groups else [tuple(range(n_units))]
    order = [u for g in leaves for u in sorted(g)]
    slot = {u: i for i, u in enumerate(order)}

    def ypos(g):
        return float(np.mean([slot[u] for u in g]))

    fig = Figure(figsize=(max(6, 0.55 * len(groups) + 3), max(3, 0.6 * n_units + 1.5)))
    ax = fig.subplots()
    root = (-1, tuple(range(n_units)))
    ax.scatter([-1], [ypos(root[1])], c="k", s=40, zorder=3)
    prev = [root[1]]
    for l, g_l in enumerate(groups):
        for g in g_l:
            parent = next(p for p in prev if set(g) <= set(p))
            ax.plot([l - 1, l], [ypos(parent), ypos(g)], c="tab:blue", lw=1.5 + 0.8 * len(g))
            ax.scatter([l], [ypos(g)], c="tab:blue", s=30, zorder=3)
        prev = g_l
    for g in prev:
        ax.text(len(groups) - 0.7, ypos(g), ", ".join(names[u] for u in sorted(g)), va="center", fontsize=9)
    ax.set_xticks(range(-1, len(groups)), ["stem", *info.get("layers", range(len(groups)))], rotation=60, fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-1.5, len(groups) + 2.5)
    madds = info.get("madds", {}).get("total")
    ax.set_title(title + (f"  ({madds / 1e6:.1f} M MAdds)" if madds else ""))
    fig.tight_layout()
    _save(fig, path)


def plot_pareto(rows: list[dict], path) -> None:
    """Test mean EER against MAdds for every searched and baseline network (the paper's Figure 2)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. Jupyter's) is left alone

    from icao_mtl.reports import _save

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for r in rows:
        if r["test_eer_mean"] is None:
            continue
        base = r["name"].startswith("baseline")
        ax.scatter(r["madds"] / 1e6, 100 * r["test_eer_mean"], marker="s" if base else "o",
                   c="tab:red" if base else "tab:blue", s=50, zorder=3)
        ax.annotate(r["label"], (r["madds"] / 1e6, 100 * r["test_eer_mean"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set(xlabel="MAdds (M)", ylabel="test mean EER (%)", title="BMTAS: error against cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def pareto_table(rows: list[dict]) -> str:
    lines = ["| network | copies per layer | MAdds (M) | parameters | val EER (%) | test EER (%) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        pct = [f"{100 * v:.2f}" if v is not None else "-" for v in (r["val_eer_mean"], r["test_eer_mean"])]
        lines.append(f"| {r['label']} | {' '.join(map(str, r['copies']))} | {r['madds'] / 1e6:.1f} | "
                     f"{r['params'] if r['params'] is not None else '-'} | {pct[0]} | {pct[1]} |")
    return "\n".join(lines)
