"""Tables and pictures of results: the per-requisite table of the paper's Table 1 (markdown and CSV),
training curves (as the paper's Figure 10), FAR / FRR against the threshold, DET curves, and runs side
by side. Library code here only returns text or writes the files it is asked to write.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from . import io as aio
from .requisites import BY_ID


def _name(task: str) -> str:
    return BY_ID[task].name if task in BY_ID else task


def _pct(x, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def requisite_table(split_metrics: dict, *, title: str | None = None) -> tuple[str, str]:
    """The per-requisite table of one split.

    Args:
        split_metrics: one split of ``metrics.json`` (the output of :func:`icao_mtl.metrics.summarize`).

    Returns:
        ``(markdown, csv_text)``. EER, its interval and accuracy in percent; undefined EERs are "n/a"
        and explained under the table.
    """
    per = split_metrics["per_requisite"]
    has_ci = any(v.get("ci_low") is not None for v in per.values())
    head = ["Requisite", "id", "EER %", "EER low-high %", "threshold", "accuracy %", "compliant", "non-compliant"]
    if has_ci:
        head.insert(4, "EER 95% CI %")
    rows = []
    for t, v in per.items():
        row = [_name(t), t, _pct(v["eer"]), f"{_pct(v['eer_low'])}-{_pct(v['eer_high'])}",
               "n/a" if v["threshold"] is None or math.isnan(v["threshold"] or math.nan) else f"{v['threshold']:.4f}",
               _pct(v["accuracy"]), str(v["n_compliant"]), str(v["n_non_compliant"])]
        if has_ci:
            row.insert(4, f"{_pct(v['ci_low'])}-{_pct(v['ci_high'])}")
        rows.append(row)
    foot = [("Mean EER", split_metrics.get("eer_mean")), ("EER sd.", split_metrics.get("eer_std")),
            ("Md. EER", split_metrics.get("eer_median"))]
    md = ([f"### {title}", ""] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += [f"| **{name}** | | **{_pct(v)}** |" + " |" * (len(head) - 3) for name, v in foot]
    md.append(f"\nMean accuracy: {_pct(split_metrics.get('accuracy_mean'))}%. EER: FVC2000 definition; "
              "accuracy at score >= 0.5; standard deviation over requisites with n - 1.")
    if split_metrics.get("note"):
        md.append(f"\nNote: {split_metrics['note']}")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    w.writerows(rows)
    for name, v in foot:
        w.writerow([name, "", _pct(v)])
    return "\n".join(md) + "\n", buf.getvalue()


def _plt():
    # No matplotlib.use("Agg") here: it would switch a Jupyter session away from its inline backend;
    # matplotlib falls back to Agg by itself on a machine without a display.
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    with aio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _plt().close(fig)
    return path


def plot_curves(histories: dict[str, list[dict]], path) -> Path:
    """Training and validation loss and accuracy per epoch (one line pair per model), phases
    shaded. ``histories``: model name -> the engine's history."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for name, hist in histories.items():
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        label = "" if len(histories) == 1 else f"{name} "
        for ax, key in zip(axes, ("loss", "accuracy", "eer")):
            for prefix, style in (("", "-"), ("val_", "--")):
                vals = [h.get(prefix + key) for h in hist]
                if any(v is not None for v in vals):
                    ax.plot(ep, [np.nan if v is None else v for v in vals], style,
                            label=f"{label}{'validation' if prefix else 'training'}")
    for ax, key in zip(axes, ("loss", "accuracy (mean over tasks)", "EER (mean over tasks, validation)")):
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    first = next((h for h in histories.values() if h), [])
    phases = [(h["epoch"], h.get("phase")) for h in first]
    for ax in axes:
        for i, (e, ph) in enumerate(phases):
            if i == 0 or ph != phases[i - 1][1]:
                if i:
                    ax.axvline(e - 0.5, color="grey", lw=0.8)
                ax.text(e, ax.get_ylim()[1], f" {ph}", va="top", fontsize=7, color="grey")
    if len(histories) <= 6:
        axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_far_frr(labels: dict, scores: dict, path, *, eer_thresholds: dict | None = None) -> Path:
    """FAR (FMR) and FRR (FNMR) against the threshold, one panel per requisite, the EER point marked."""
    from .metrics import UndefinedMetricWarning, equal_error_rate, error_curves

    import warnings

    plt = _plt()
    tasks = list(labels)
    cols = min(6, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.7 * rows), squeeze=False)
    for ax, t in zip(axes.flat, tasks):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            thr, fmr, fnmr = error_curves(labels[t], scores[t])
            e = equal_error_rate(labels[t], scores[t])
        thr = np.minimum(thr, 1.0)
        ax.step(thr, fmr, where="post", label="FAR (FMR)", color="tab:red")
        ax.step(thr, fnmr, where="post", label="FRR (FNMR)", color="tab:blue")
        if e.defined:
            ax.plot([e.threshold], [e.eer], "ko", ms=3)
            ax.set_title(f"{_name(t)}  EER {100 * e.eer:.1f}%", fontsize=8)
        else:
            ax.set_title(f"{_name(t)}  EER n/a", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel("threshold on P(compliant)")
    fig.tight_layout(h_pad=1.2)
    return _save(fig, path)


def plot_det(labels: dict, scores: dict, path) -> Path:
    """Detection error trade-off curves (FNMR against FMR on normal-deviate axes), all requisites."""
    from scipy.stats import norm

    from .metrics import UndefinedMetricWarning, error_curves

    import warnings

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    ticks = np.array([0.001, 0.01, 0.05, 0.1, 0.2, 0.4, 0.6])
    clip = lambda p: norm.ppf(np.clip(p, 5e-4, 1 - 5e-4))  # noqa: E731
    cmap = plt.get_cmap("tab20")
    for i, t in enumerate(labels):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            _, fmr, fnmr = error_curves(labels[t], scores[t])
        if np.isnan(fmr).any() or np.isnan(fnmr).any():
            continue
        ax.plot(clip(fmr), clip(fnmr), label=_name(t), color=cmap(i % 20), lw=1)
    ax.plot(clip(ticks), clip(ticks), "k:", lw=0.8)
    ax.set_xticks(clip(ticks), [f"{100 * v:g}%" for v in ticks])
    ax.set_yticks(clip(ticks), [f"{100 * v:g}%" for v in ticks])
    ax.set_xlim(clip(0.0005), clip(0.7))
    ax.set_ylim(clip(0.0005), clip(0.7))
    ax.set_xlabel("FMR (non-compliant accepted)")
    ax.set_ylabel("FNMR (compliant rejected)")
    ax.set_title("DET curves (dotted: EER line)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def compare_table(runs: dict[str, dict], split: str = "test") -> tuple[str, str]:
    """Runs side by side (STL | MTL 1 | MTL 2 | MTL 3 as in Table 1).

    Args:
        runs: column name -> the run's ``metrics.json`` content.
        split: which split to compare.

    Returns:
        ``(markdown, csv_text)``, EER in percent per requisite, then mean, sd and median.
    """
    names = list(runs)
    missing = [n for n in names if split not in runs[n]]
    if missing:
        raise ValueError(f"Runs {missing} have no {split!r} metrics. Fix: evaluate them (python -m icao_mtl.evaluate "
                         "RUN_DIR) or choose another --split.")
    tasks = []
    for n in names:
        tasks += [t for t in runs[n][split]["per_requisite"] if t not in tasks]
    head = ["ICAO Rq.", *names]
    rows = [[_name(t), *(_pct(runs[n][split]["per_requisite"].get(t, {}).get("eer")) for n in names)] for t in tasks]
    foot = [[label, *(_pct(runs[n][split].get(key)) for n in names)]
            for label, key in (("Mean EER", "eer_mean"), ("EER sd.", "eer_std"), ("Md. EER", "eer_median"))]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["| **" + r[0] + "** | " + " | ".join(f"**{v}**" for v in r[1:]) + " |" for r in foot]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerows([head, *rows, *foot])
    return "\n".join(md) + "\n", buf.getvalue()
