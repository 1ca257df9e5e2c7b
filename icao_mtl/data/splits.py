"""Train / validation / test splits that keep every requisite's rare classes in every split.

:func:`stratified_split` is iterative stratification (Sechidis, Tsoumakas and Vlahavas, "On the
Stratification of Multi-Label Data", ECML PKDD 2011) on the indicator columns "non-compliant" and "not
applicable" of every task: the rarest indicator is distributed first, each of its rows going to the
split that most lacks it, so even a requisite with a handful of non-compliant images gets them in
proportion in train, validation and test. Seeded and deterministic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..requisites import NON_COMPLIANT, NOT_APPLICABLE
from .manifest import SPLIT_NAMES, DatasetError, LabeledDataset

DEFAULT_FRACTIONS = (0.75, 0.15, 0.10)


def stratified_split(labels: np.ndarray, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> np.ndarray:
    """Assign each row to a split.

    Args:
        labels: int array of shape (n, n_tasks), values in {1, 0, -1}.
        fractions: target share of each split, summing to 1.
        seed: random seed (ties and row order).

    Returns:
        int array of shape (n,): the split index of each row (0 train, 1 val, 2 test for the default
        three fractions).
    """
    labels = np.asarray(labels)
    fractions = np.asarray(fractions, float)
    if fractions.ndim != 1 or (fractions < 0).any() or abs(fractions.sum() - 1) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1. Received: {fractions.tolist()}")
    n = labels.shape[0]
    rng = np.random.default_rng(seed)
    # Indicators of the rare states of each task (compliant is the common one).
    y = np.concatenate([labels == NON_COMPLIANT, labels == NOT_APPLICABLE], axis=1)
    y = y[:, y.any(0)]
    desired = fractions[None, :] * y.sum(0)[:, None]  # (n_labels, n_splits)
    desired_total = fractions * n
    assign = np.full(n, -1)
    remaining = y.copy()
    order = rng.permutation(n)
    active = np.ones(n, bool)
    while True:
        counts = remaining[active].sum(0)
        if not counts.any():
            break
        lab = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        rows = order[np.isin(order, np.flatnonzero(active & remaining[:, lab]))]
        for r in rows:
            need = desired[lab]
            best = np.flatnonzero(need == need.max())
            if len(best) > 1:
                tot = desired_total[best]
                best = best[tot == tot.max()]
            s = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
            assign[r] = s
            active[r] = False
            desired[:, s] -= y[r]
            desired_total[s] -= 1
        remaining[rows] = False
    # Rows with no rare state: fill the splits up to their sizes.
    for r in order[active[order]]:
        s = int(np.argmax(desired_total))
        assign[r] = s
        desired_total[s] -= 1
    return _refine(assign, y.astype(np.int64), fractions, rng)


def _refine(assign: np.ndarray, y: np.ndarray, fractions: np.ndarray, rng, proposals_per_row: int = 20) -> np.ndarray:
    """Swap rows between splits while that brings every indicator's per-split count closer to its
    target (squared error weighted by 1 / target). Split sizes do not change. Greedy stratification
    leaves visible deviations when rows carry several rare labels at once; this removes most of them.
    """
    n_splits = len(fractions)
    if len(assign) < 2 or y.shape[1] == 0:
        return assign
    target = fractions[None, :] * y.sum(0)[:, None]  # (labels, splits)
    weight = 1.0 / np.maximum(target, 1.0)
    counts = np.stack([y[assign == s].sum(0) for s in range(n_splits)], 1).astype(float)
    # 1. Exact split sizes: move the rows whose move hurts the label balance least.
    want = np.floor(fractions * len(assign)).astype(int)
    want[np.argsort(-(fractions * len(assign) - want))[: len(assign) - want.sum()]] += 1
    while True:
        have = np.bincount(assign, minlength=n_splits)
        over, under = np.flatnonzero(have > want), np.flatnonzero(have < want)
        if not len(over):
            break
        a, b = int(over[0]), int(under[0])
        rows = np.flatnonzero(assign == a)
        ca, cb = counts[:, a] - target[:, a], counts[:, b] - target[:, b]
        ya = y[rows]
        cost = (weight[:, a] * ((ca - ya) ** 2 - ca ** 2)).sum(1) + (weight[:, b] * ((cb + ya) ** 2 - cb ** 2)).sum(1)
        r = rows[int(np.argmin(cost))]
        assign[r] = b
        counts[:, a] -= y[r]
        counts[:, b] += y[r]
    # 2. Swaps that improve the balance.
    n_prop = proposals_per_row * len(assign)
    first = rng.integers(len(assign), size=n_prop)
    second = rng.integers(len(assign), size=n_prop)
    for i, j in zip(first, second):
        a, b = assign[i], assign[j]
        if a == b:
            continue
        d = y[j] - y[i]  # change of split a's counts (b changes by -d)
        if not d.any():
            continue
        ca, cb = counts[:, a] - target[:, a], counts[:, b] - target[:, b]
        gain = (weight[:, a] * ((ca + d) ** 2 - ca ** 2)).sum() + (weight[:, b] * ((cb - d) ** 2 - cb ** 2)).sum()
        if gain < -1e-12:
            assign[i], assign[j] = b, a
            counts[:, a] += d
            counts[:, b] -= d
    return assign


@dataclass
class SplitReport:
    """Counts per split and task, and warnings for classes missing from a split."""

    sizes: dict = field(default_factory=dict)  # split -> number of images
    counts: dict = field(default_factory=dict)  # split -> task -> {1: n, 0: n, -1: n}
    warnings: list = field(default_factory=list)
    source: str = "stratified"  # or "column"
    extra_train: int = 0  # training images added from a second dataset (with_extra_training)

    def summary(self) -> str:
        lines = [f"split ({self.source}): " + ", ".join(f"{k} {v}" for k, v in self.sizes.items())]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass
class Splits:
    train: LabeledDataset
    val: LabeledDataset
    test: LabeledDataset
    report: SplitReport

    def __getitem__(self, name: str) -> LabeledDataset:
        if name not in SPLIT_NAMES:
            raise KeyError(f"Unknown split {name!r}; use one of {SPLIT_NAMES}.")
        return getattr(self, name)


def split_dataset(ds: LabeledDataset, fractions=DEFAULT_FRACTIONS, seed: int = 0, use_column: bool = True) -> Splits:
    """Split a dataset into train, validation and test.

    Uses the dataset's own ``split`` column when it has one (and ``use_column``), else
    :func:`stratified_split` with ``fractions`` and ``seed``. The report warns, per split, about every
    task with no non-compliant or no compliant example (its EER is undefined there).

    Raises:
        DatasetError: a split is empty.
    """
    if ds.split is not None and use_column:
        assign = np.array([SPLIT_NAMES.index(s) for s in ds.split])
        source = "column"
    else:
        if len(fractions) != 3:
            raise ValueError(f"fractions must have three values (train, val, test). Received: {fractions}")
        assign = stratified_split(ds.labels, fractions, seed)
        source = "stratified"
    parts = {name: ds.subset(np.flatnonzero(assign == i)) for i, name in enumerate(SPLIT_NAMES)}
    report = SplitReport(source=source)
    for name, part in parts.items():
        if len(part) == 0:
            raise DatasetError(f"The {name} split of {ds.root} is empty ({len(ds)} images in all). Fix: add "
                               "images, change the split fractions, or correct the split column.")
        report.sizes[name] = len(part)
        report.counts[name] = part.label_counts()
        for t, c in report.counts[name].items():
            if c[0] == 0 and c[1] > 0:
                report.warnings.append(f"task {t!r} has no non-compliant example in the {name} split "
                                       f"({c[1]} compliant): its EER is undefined there.")
            elif c[1] == 0 and c[0] > 0:
                report.warnings.append(f"task {t!r} has no compliant example in the {name} split "
                                       f"({c[0]} non-compliant): its EER is undefined there.")
            elif c[0] == 0 and c[1] == 0:
                report.warnings.append(f"task {t!r} has no labelled example in the {name} split.")
    return Splits(train=parts["train"], val=parts["val"], test=parts["test"], report=report)


def with_extra_training(splits: Splits, extra: LabeledDataset, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> Splits:
    """``splits`` with the training split of a second dataset ``extra`` appended to its training split.

    The extra set's rows come from its own split column (its ``train`` rows), or from
    :func:`stratified_split` with ``fractions`` and ``seed`` when it has none, so its validation and
    test images stay unseen (e.g. the LFW faces ``bench_classical`` scores). Its tasks must be among
    the main set's; the main set's other tasks are "not applicable" (-1) on its rows, so they add no
    loss. Names are prefixed with the extra set's directory name (``split.csv`` tells them apart).

    Raises:
        DatasetError: a task of ``extra`` is not one of the main set's, or its train split is empty.
    """
    unknown = [t for t in extra.tasks if t not in splits.train.tasks]
    if unknown:
        raise DatasetError(f"--extra-train {extra.root} has tasks {unknown} that the training data does not have "
                           f"(its tasks: {', '.join(splits.train.tasks)}). Fix: pass a dataset whose columns are "
                           "among them, or a column mapping.")
    if extra.split is not None:
        rows = np.flatnonzero(np.asarray(extra.split) == "train")
    else:
        rows = np.flatnonzero(stratified_split(extra.labels, fractions, seed) == 0)
    if not len(rows):
        raise DatasetError(f"--extra-train {extra.root} has no training images (its split column has no 'train' "
                           "row). Fix: mark the rows to train on as train.")
    merged = append_rows(splits.train, extra.subset(rows))
    report = dataclasses.replace(splits.report, sizes={**splits.report.sizes, "train": len(merged)},
                                 counts={**splits.report.counts, "train": merged.label_counts()},
                                 extra_train=splits.report.extra_train + len(rows))
    return Splits(train=merged, val=splits.val, test=splits.test, report=report)


def append_rows(base: LabeledDataset, other: LabeledDataset) -> LabeledDataset:
    """``base`` followed by the rows of ``other`` (whose tasks are among ``base``'s; the others -1 on
    its rows), their names prefixed with ``other``'s directory name, as :func:`with_extra_training`
    writes them into a run's ``split.csv``."""
    labels = np.full((len(other), len(base.tasks)), NOT_APPLICABLE, dtype=base.labels.dtype)
    for j, t in enumerate(other.tasks):
        labels[:, base.tasks.index(t)] = other.labels[:, j]
    prefix = other.root.name
    severities = None
    if base.severities is not None:  # the other set's severities where it has them, NaN (unknown) elsewhere
        severities = np.full((len(other), len(base.tasks)), np.nan, np.float32)
        for j, t in enumerate(other.tasks):
            if other.severities is not None:
                severities[:, base.tasks.index(t)] = other.severities[:, j]
        severities = np.concatenate([base.severities, severities])
    pose = None
    if base.pose is not None:
        other_pose = other.pose if other.pose is not None else np.full((len(other), base.pose.shape[1]), np.nan,
                                                                         np.float32)
        pose = np.concatenate([base.pose, other_pose])
    landmarks = None
    if base.landmarks is not None:
        other_marks = other.landmarks if other.landmarks is not None else np.full(
            (len(other), base.landmarks.shape[1]), np.nan, np.float32)
        landmarks = np.concatenate([base.landmarks, other_marks])
    return LabeledDataset(root=base.root, names=[*base.names, *(f"{prefix}/{n}" for n in other.names)],
                          paths=[*base.paths, *other.paths], labels=np.concatenate([base.labels, labels]),
                          tasks=base.tasks, groups=base.groups,
                          split=None if base.split is None else np.concatenate([base.split, ["train"] * len(other)]),
                          report=base.report, meta=base.meta, severities=severities, pose=pose,
                          landmarks=landmarks)
