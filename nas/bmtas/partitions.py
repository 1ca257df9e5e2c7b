"""Task groupings and the resource-aware loss of BMTAS (seed 004; ../shared/spec/branching_bmtas.md §4).

A *grouping* of T routing units (tasks, or groups of tasks) is a set partition of ``range(T)``, in the
canonical form of a sorted tuple of sorted tuples: ``((0, 1), (2,))``. Its parts share one copy of a
layer. ``TOP`` is everything shared, ``BOTTOM`` everything separate. ``k`` refines ``a`` when every
part of ``k`` lies inside a part of ``a``.

:class:`ResourceLoss` is the expected cost of the sampled architecture, differentiable in the
architecture logits ``alpha`` of shape (L layers, T units, K candidate ops):

- ``semantics="chain"`` (the reference code, the default): the per-layer op groupings must form a
  refinement chain; a layer that breaks the chain, or separates every unit, is charged T copies from
  there on. It is an upper bound of the built network's cost.
- ``semantics="meet"``: the cost of the network the discretisation builds, where the groups of layer
  l are the meet (common refinement) of the op groupings of layers 0..l; exact, propagating the
  distribution over effective groupings (an adaptation, not the paper's method).

Both enumerate the K^T op assignments, so they are exact and practical up to T = 6 or so (B_6 = 203
groupings, 46,656 assignments). :func:`pairwise_sharing_cost` is the O(T^2 K L) surrogate of §8.5 for
more units (meet semantics, exact at full sharing and full separation, a lower bound otherwise).
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np

from icao_mtl.errors import ConfigError

MAX_EXACT_UNITS = 7


def set_partitions(n: int) -> list[tuple[tuple[int, ...], ...]]:
    """All set partitions of ``range(n)`` in canonical form; TOP first, BOTTOM last (Bell(n) of them)."""
    if n < 1:
        raise ConfigError(f"A grouping needs at least one unit. Received: {n}")

    def grow(i, parts):
        if i == n:
            yield tuple(tuple(p) for p in parts)
            return
        for j in range(len(parts)):
            parts[j].append(i)
            yield from grow(i + 1, parts)
            parts[j].pop()
        parts.append([i])
        yield from grow(i + 1, parts)
        parts.pop()

    found = {canonical(p) for p in grow(0, [])}
    return sorted(found, key=lambda p: (len(p), p))


def canonical(parts) -> tuple[tuple[int, ...], ...]:
    return tuple(sorted(tuple(sorted(p)) for p in parts if len(p)))


def partition_of(assignment) -> tuple[tuple[int, ...], ...]:
    """The grouping induced by one op index per unit: units with the same index share a part."""
    parts: dict[int, list[int]] = {}
    for unit, op in enumerate(assignment):
        parts.setdefault(int(op), []).append(unit)
    return canonical(parts.values())


def refines(k, a) -> bool:
    """True when every part of ``k`` is inside a part of ``a`` (k is finer than or equal to a)."""
    owner = {u: i for i, part in enumerate(a) for u in part}
    return all(len({owner[u] for u in part}) == 1 for part in k)


def meet(a, b) -> tuple[tuple[int, ...], ...]:
    """The coarsest grouping that refines both (non-empty intersections of their parts)."""
    return canonical(set(p) & set(q) for p in a for q in b)


def ancestors(k, groupings) -> list:
    """The valid ancestors A(k): the non-BOTTOM groupings that ``k`` refines, ``k`` included."""
    bottom = groupings[-1]
    return [a for a in groupings if a != bottom and refines(k, a)]


@lru_cache(maxsize=32)
def _tables(n_units: int, n_ops: int):
    """Constant tables: the groupings, the assignment matrix (K^T, T), each assignment's grouping id,
    the refinement matrix R[k, a] = k refines a (without BOTTOM) and the meet table."""
    if n_units > MAX_EXACT_UNITS:
        raise ConfigError(
            f"The exact resource loss enumerates {n_ops}^{n_units} op assignments and Bell({n_units}) groupings: "
            f"infeasible for {n_units} routing units. Fix: route task groups (--units groups, at most "
            f"{MAX_EXACT_UNITS}), or use the pairwise-sharing surrogate (cost='pairwise').")
    groupings = set_partitions(n_units)
    index = {g: i for i, g in enumerate(groupings)}
    assignments = np.array(list(itertools.product(range(n_ops), repeat=n_units)), dtype=np.int32)
    pid = np.array([index[partition_of(o)] for o in assignments], dtype=np.int32)
    b = len(groupings)
    refine = np.array([[refines(k, a) for a in groupings[:-1]] for k in groupings[:-1]], dtype=np.float32)
    meets = np.array([[index[meet(a, c)] for c in groupings] for a in groupings], dtype=np.int32)
    sizes = np.array([len(g) for g in groupings], dtype=np.float32)
    return groupings, assignments, pid, b, refine, meets, sizes


class ResourceLoss:
    """Expected cost of the sampled architecture (see the module docstring).

    Args:
        n_units: T, the routing units.
        n_ops: K, candidate copies per layer (BMTAS: K = T).
        layer_costs: c_l, the cost of one copy of each searchable layer (e.g. MAdds), length L.
        semantics: "chain" (the reference) or "meet" (the built network).

    Call with ``alpha`` of shape (L, T, K) (a tensor or an array) to get a float32 scalar tensor;
    ``probabilities(alpha)`` gives the per-layer distribution over groupings, shape (L, Bell(T)).
    """

    def __init__(self, n_units: int, n_ops: int, layer_costs, semantics: str = "chain"):
        if semantics not in ("chain", "meet"):
            raise ConfigError(f"semantics must be 'chain' or 'meet'. Received: {semantics!r}")
        self.n_units, self.n_ops, self.semantics = n_units, n_ops, semantics
        self.layer_costs = np.asarray(layer_costs, dtype=np.float32)
        (self.groupings, self._assign, self._pid, self._b, self._refine, self._meet,
         self._sizes) = _tables(n_units, n_ops)

    def per_layer_grouping(self, alpha):
        """q_l(k): the probability that layer l's op choices alone induce grouping k, shape (L, B)."""
        import tensorflow as tf

        p = tf.nn.softmax(tf.cast(alpha, tf.float32), axis=-1)  # (L, T, K)
        t = self.n_units
        # p[l, t, O[r, t]] for every assignment r, multiplied over t: (L, K^T)
        gathered = tf.stack([tf.gather(p[:, u, :], self._assign[:, u], axis=1) for u in range(t)], axis=-1)
        joint = tf.reduce_prod(gathered, axis=-1)
        return tf.transpose(tf.math.unsorted_segment_sum(tf.transpose(joint), self._pid, self._b))

    def probabilities(self, alpha):
        """P_l(k) under the chosen semantics, shape (L, B) (the last column is BOTTOM)."""
        import tensorflow as tf

        q = self.per_layer_grouping(alpha)
        out = []
        if self.semantics == "chain":
            prev = tf.one_hot(0, self._b - 1, dtype=tf.float32)  # the stem is shared: TOP
            for l in range(len(self.layer_costs)):
                cur = q[l, :-1] * tf.linalg.matvec(self._refine, prev)
                out.append(tf.concat([cur, [1.0 - tf.reduce_sum(cur)]], 0))
                prev = cur
        else:
            # P_l(k) = sum_a P_{l-1}(a) sum_pi q_l(pi) [a meet pi = k]
            meet = tf.one_hot(self._meet, self._b, dtype=tf.float32)  # (B, B, B): a, pi -> k
            prev = tf.one_hot(0, self._b, dtype=tf.float32)
            for l in range(len(self.layer_costs)):
                prev = tf.einsum("a,p,apk->k", prev, q[l], meet)
                out.append(prev)
        return tf.stack(out)

    def expected_copies(self, alpha):
        """E|G_l|, the expected number of copies of each layer, shape (L,)."""
        import tensorflow as tf

        return tf.linalg.matvec(self.probabilities(alpha), tf.constant(self._sizes))

    def __call__(self, alpha):
        import tensorflow as tf

        return tf.reduce_sum(tf.constant(self.layer_costs) * self.expected_copies(alpha))


def pairwise_sharing_cost(alpha, layer_costs):
    """The surrogate of spec §8.5 for many units: with s_tu(l) = prod_{j<=l} <p_jt, p_ju> the exact
    probability that units t and u share every layer up to l, E|G_l| ~ sum_t 1 / (1 + sum_{u!=t} s_tu(l)).
    Exact when all share or all separate, a lower bound otherwise. O(T^2 K L); a float32 scalar."""
    import tensorflow as tf

    p = tf.nn.softmax(tf.cast(alpha, tf.float32), axis=-1)  # (L, T, K)
    same = tf.einsum("ltk,luk->ltu", p, p)  # P(t and u pick the same op at layer l)
    shared = tf.math.cumprod(same, axis=0)
    eye = tf.eye(tf.shape(p)[1])
    copies = tf.reduce_sum(1.0 / (1.0 + tf.reduce_sum(shared * (1.0 - eye), axis=-1)), axis=-1)
    return tf.reduce_sum(tf.constant(np.asarray(layer_costs, np.float32)) * copies)


def architecture_cost(config, layer_costs, semantics: str = "meet") -> float:
    """The cost of one discrete architecture ``config`` (L, T) of op indices: meet semantics is what the
    built network costs; chain semantics is what the reference loss charges it."""
    config = np.asarray(config)
    t = config.shape[1]
    total, effective, chained = 0.0, canonical([range(t)]), True
    bottom = canonical([[u] for u in range(t)])
    for l, row in enumerate(config):
        pi = partition_of(row)
        if semantics == "meet":
            effective = meet(effective, pi)
            total += layer_costs[l] * len(effective)
        else:
            chained = chained and pi != bottom and refines(pi, effective)
            effective = pi
            total += layer_costs[l] * (len(pi) if chained else t)
    return float(total)


def brute_force_cost(alpha, layer_costs, semantics: str = "chain") -> float:
    """The expected cost by enumerating all K^(T L) architectures (tests; tiny T and L only)."""
    alpha = np.asarray(alpha, np.float64)
    p = np.exp(alpha - alpha.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    n_layers, t, k = p.shape
    if k ** (t * n_layers) > 2_000_000:
        raise ConfigError("Too many architectures to enumerate.")
    total = 0.0
    for flat in itertools.product(range(k), repeat=t * n_layers):
        config = np.array(flat).reshape(n_layers, t)
        prob = math.prod(p[l, u, config[l, u]] for l in range(n_layers) for u in range(t))
        total += prob * architecture_cost(config, layer_costs, semantics)
    return total


def discretize(alpha) -> np.ndarray:
    """The argmax op of each unit at each layer, shape (L, T)."""
    return np.asarray(alpha).argmax(-1)


def branch_groups(config) -> list:
    """The groups of the built network at each layer: the meet of the op groupings so far (a tree)."""
    config = np.asarray(config)
    effective = canonical([range(config.shape[1])])
    out = []
    for row in config:
        effective = meet(effective, partition_of(row))
        out.append(effective)
    return out


def gumbel_softmax(alpha, temperature: float, seed=None):
    """Relaxed samples softmax((alpha + Gumbel noise) / temperature) over the last axis (spec §3.2)."""
    import tensorflow as tf

    alpha = tf.cast(alpha, tf.float32)
    if seed is None:
        u = tf.random.uniform(tf.shape(alpha), 1e-10, 1.0)
    else:
        u = tf.random.stateless_uniform(tf.shape(alpha), seed, 1e-10, 1.0)
    return tf.nn.softmax((alpha - tf.math.log(-tf.math.log(u))) / temperature, axis=-1)


def temperature(epoch: int, epochs: int, warmup: int, start: float = 5.0, end: float = 0.1) -> float:
    """The temperature of 1-based ``epoch`` (spec §3.3): ``start`` through warm-up and the first search
    epoch, then linear to ``end`` at the last epoch; constant within an epoch.
    tau(e) = min(start - (e - W - 1) / (E - W - 1) * (start - end), start)."""
    if epochs - warmup - 1 <= 0:
        return end
    return float(min(start - (epoch - warmup - 1) / (epochs - warmup - 1) * (start - end), start))
