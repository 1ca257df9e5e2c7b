"""Building blocks, nested levels, task block orders and the cost of a configuration (spec
virtualnet.md §2-§4, §8.2-§8.3), in NumPy: what the network, the search and the tests share.

A residual module with ``C_mid`` internal channels is split into ``g`` groups of ``s = C_mid / g``
channels; building block ``r`` is group ``r``'s conv1 filters, their batch-norm entries and the
matching input slices of conv2. A configuration gives each module a *count* ``c`` in ``0..g``
(reading R1): 0 skips the module (its output is the shortcut), ``c > 0`` uses the first ``c`` blocks
of the task's block order, so the blocks of count ``l`` are a subset of those of count ``m >= l``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icao_mtl.errors import ConfigError

#: block orders of the tasks (reading R2): cyclic shift (VirtualNet-like), a seeded random
#: permutation per task and module, or the same order for every task (the "no reshuffle" ablation)
ORDERS = ("cyclic", "random", "identity")


@dataclass(frozen=True)
class ModuleShape:
    """One configurable residual module: ``cin -> cmid -> cout`` channels, ``stride``, on an input of
    side ``size`` pixels (the output side is ``ceil(size / stride)``)."""

    cin: int
    cmid: int
    cout: int
    stride: int
    size: int

    @property
    def out_size(self) -> int:
        return -(-self.size // self.stride)


def module_cost(c: int, shape: ModuleShape, groups: int, *, bn_stats: bool = False) -> int:
    """Parameters of a module with ``c`` of ``groups`` blocks (§8.3):
    ``[c > 0] (9 cin cs + 2 cs + 9 cs cout + 2 cout)`` (conv1, BN1 gamma/beta, conv2, BN2 gamma/beta),
    ``s = cmid / groups``; ``bn_stats`` adds the moving means and variances (``2 cs + 2 cout``), as
    Keras' ``count_params`` counts them. The shortcut has no parameters."""
    if c <= 0:
        return 0
    s = shape.cmid // groups
    width = c * s
    n = 9 * shape.cin * width + 2 * width + 9 * width * shape.cout + 2 * shape.cout
    if bn_stats:
        n += 2 * width + 2 * shape.cout
    return int(n)


def module_madds(c: int, shape: ModuleShape, groups: int) -> int:
    """Multiply-adds of one image through a module with ``c`` blocks (the two 3x3 convolutions)."""
    if c <= 0:
        return 0
    width = c * (shape.cmid // groups)
    area = shape.out_size ** 2
    return int(area * 9 * shape.cin * width + area * 9 * width * shape.cout)


def cost_table(shapes, groups: int, *, bn_stats: bool = False) -> np.ndarray:
    """``(m, groups + 1)``: the parameters of every module at every count."""
    return np.array([[module_cost(c, s, groups, bn_stats=bn_stats) for c in range(groups + 1)] for s in shapes],
                    dtype=np.int64)


def cost_fractions(shapes, groups: int) -> np.ndarray:
    """``(m, groups + 1)``: ``p_j(c) / t_j``, the fraction of module j's parameters a count uses."""
    table = cost_table(shapes, groups).astype(np.float64)
    return table / table[:, -1:]


def regulariser(counts, fractions: np.ndarray, rho: float) -> float:
    """Eq. 8: ``rho * (mean_j p_j(c_j) / t_j)^2`` for the counts ``(m,)`` of one configuration."""
    counts = np.asarray(counts, int)
    u = float(np.mean(fractions[np.arange(len(counts)), counts]))
    return rho * u * u


def default_rhos(levels: int) -> list[float]:
    """The sparsity weights of the levels, cheapest first: (0.5, 0.1, 0.02) for three levels (§8.1),
    geometric from 0.5 to 0.02 for other numbers (0.5 for one level)."""
    if levels == 1:
        return [0.5]
    return [float(v) for v in np.geomspace(0.5, 0.02, levels)]


def block_ranks(n_tasks: int, n_modules: int, groups: int, order: str = "cyclic", seed: int = 0) -> np.ndarray:
    """``(n_tasks, n_modules, groups)`` int: ``rank[t, j, r]`` is the position (0-based) of block ``r``
    in task ``t``'s order of module ``j``. Cyclic: task t's order starts at block ``t mod groups``
    (``pi_t(p) = (p + t) mod groups``); random: a permutation per (task, module) from ``seed``;
    identity: every task uses the blocks in order 0, 1, ..."""
    if order not in ORDERS:
        raise ConfigError(f"Unknown block order {order!r}. Fix: one of {', '.join(ORDERS)}.")
    ranks = np.zeros((n_tasks, n_modules, groups), np.int32)
    rng = np.random.default_rng(seed)
    for t in range(n_tasks):
        for j in range(n_modules):
            if order == "cyclic":
                sequence = [(p + t) % groups for p in range(groups)]
            elif order == "random":
                sequence = list(rng.permutation(groups))
            else:
                sequence = list(range(groups))
            ranks[t, j, sequence] = np.arange(groups)
    return ranks


def channel_mask(ranks_tj, c: int, cmid: int, groups: int) -> np.ndarray:
    """``(cmid,)`` bool: the internal channels of a module that count ``c`` uses, given the task's
    ranks ``(groups,)`` of that module (channel ``ch`` is in group ``ch // (cmid / groups)``)."""
    gid = np.arange(cmid) // (cmid // groups)
    return np.asarray(ranks_tj)[gid] < c


def nest_levels(counts) -> np.ndarray:
    """Strict nesting (reading R4): level i executes ``max_{l <= i} c^(l)`` in every module; ``counts``
    has the levels on its second-to-last axis (cheapest first), e.g. ``(..., levels, m)``."""
    return np.maximum.accumulate(np.asarray(counts), axis=-2)


def majority(counts, groups: int) -> np.ndarray:
    """The most frequent count of every module over the first axis (ties: the smaller count);
    ``counts`` ``(n, ..., m)`` -> ``(..., m)``."""
    counts = np.asarray(counts)
    hist = np.stack([(counts == c).sum(axis=0) for c in range(groups + 1)], axis=-1)
    return hist.argmax(axis=-1)
