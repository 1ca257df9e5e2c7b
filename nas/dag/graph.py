"""The central network's graph (spec dag_mtl.md §2, §5, §7.1), in NumPy: the flow-restricted edges,
the flow-based reduction of one task's gates to a binary sub-network (Algorithm 1 made deterministic
by decisions D1-D7), the topology metrics and the relative performance of eqs. 10-11.

Indices: hidden states are 1..N; node 0 is the input ``v_0`` and node N + 1 the read-out ``v_L``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np


def edges(n: int, m: int) -> list[tuple[int, int]]:
    """The structural edges ``(i, j)``, ``1 <= i < j <= n``, ``j - i <= m`` (flow restriction), ordered
    by target then source (the order the forward pass visits them)."""
    if n < 1 or m < 1:
        raise ValueError(f"The central network needs N >= 1 hidden states and M >= 1. Received: N={n}, M={m}.")
    return [(i, j) for j in range(2, n + 1) for i in range(max(1, j - m), j)]


def n_edges(n: int, m: int) -> int:
    """``|E(N, M)| = sum_{d=1}^{min(M, N-1)} (N - d)``."""
    return sum(n - d for d in range(1, min(m, n - 1) + 1))


@dataclass(frozen=True)
class SubNetwork:
    """One task's binary sub-network: read-ins ``a`` (N,), read-outs ``b`` (N,), hidden edges (a set of
    ``(i, j)``), with 1-based states."""

    n: int
    read_in: tuple
    read_out: tuple
    hidden: frozenset

    def to_dict(self) -> dict:
        return {"read_in": [i + 1 for i, v in enumerate(self.read_in) if v],
                "read_out": [i + 1 for i, v in enumerate(self.read_out) if v],
                "edges": sorted([list(e) for e in self.hidden])}

    def adjacency(self) -> np.ndarray:
        """(N + 2, N + 2) 0/1 matrix over nodes 0 (input), 1..N, N + 1 (read-out)."""
        a = np.zeros((self.n + 2, self.n + 2), np.int8)
        for s in range(1, self.n + 1):
            a[0, s] = self.read_in[s - 1]
            a[s, self.n + 1] = self.read_out[s - 1]
        for i, j in self.hidden:
            a[i, j] = 1
        return a


def _reachable(psi: np.ndarray) -> bool:
    """Whether node N + 1 is reachable from node 0 over entries > 0 (D6)."""
    target = len(psi) - 1
    seen, todo = {0}, deque([0])
    while todo:
        u = todo.popleft()
        for v in np.flatnonzero(psi[u] > 0):
            if v == target:
                return True
            if v not in seen:
                seen.add(int(v))
                todo.append(int(v))
    return False


def flow_scores(psi: np.ndarray) -> np.ndarray:
    """``S[i, j] = psi_ij (f_i + h_j)`` for the entries > 0 (NaN elsewhere), with the upstream factor
    ``f_v = I_v / (d-_v O_v)`` and downstream factor ``h_v = O_v / (d+_v I_v)``, a term with a zero
    denominator being 0 (D4)."""
    inflow, outflow = psi.sum(0), psi.sum(1)
    d_in, d_out = (psi > 0).sum(0), (psi > 0).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where((d_in > 0) & (outflow > 0), inflow / (d_in * outflow), 0.0)
        h = np.where((d_out > 0) & (inflow > 0), outflow / (d_out * inflow), 0.0)
    scores = psi * (f[:, None] + h[None, :])
    return np.where(psi > 0, scores, np.nan)


def reduce_task(read_in, read_out, gates, n: int, m: int, *, return_trace: bool = False):
    """Algorithm 1 for one task (spec §5.3): from the post-sigmoid gates, the binary sub-network.

    Args:
        read_in, read_out: sigma(alpha), sigma(beta) of the task, shape (N,).
        gates: sigma(gamma) of the task, one value per structural edge of :func:`edges` (|E|,), or a dict
            ``{(i, j): value}``.
        return_trace: also return the removals ``[((i, j), score), ...]``.
    """
    a = np.asarray(read_in, np.float64)
    b = np.asarray(read_out, np.float64)
    if a.shape != (n,) or b.shape != (n,):
        raise ValueError(f"read_in and read_out must have N = {n} values. Received: {a.shape}, {b.shape}.")
    edge_list = edges(n, m) if n > 1 else []
    g = gates if isinstance(gates, dict) else dict(zip(edge_list, np.asarray(gates, np.float64).tolist()))
    s_in = int(np.argmax(a)) + 1  # D1: 1-based, ties to the smallest index
    s_out = min(n, max(s_in + 1, int(np.argmax(b)) + 1))
    psi = np.zeros((n + 2, n + 2))
    for (i, j), v in g.items():
        if s_in <= i < j <= s_out and j - i <= m:
            psi[i, j] = v
    for s in range(s_in, s_out + 1):
        psi[0, s] = a[s - 1]
        psi[s, n + 1] = b[s - 1]
    best = psi.copy()  # D3
    trace = []
    while True:
        scores = flow_scores(psi)
        if np.all(np.isnan(scores)):
            break
        flat = int(np.nanargmin(scores))  # row-major tie-break (D5: zero scores are candidates)
        i, j = divmod(flat, n + 2)
        trial = psi.copy()
        trial[i, j] = 0.0
        if not _reachable(trial):
            break
        trace.append(((i, j), float(scores[i, j])))
        psi = best = trial
    on = best > 0
    hidden = frozenset((int(i) + 1, int(j) + 1) for i, j in zip(*np.nonzero(on[1:n + 1, 1:n + 1])))
    sub = SubNetwork(n, tuple(int(v) for v in on[0, 1:n + 1]), tuple(int(v) for v in on[1:n + 1, n + 1]), hidden)
    return (sub, trace) if return_trace else sub


# ---------------------------------------------------------------------------------------------
# topology metrics (§2.2), on the hidden-to-hidden edges

def depth_longest(hidden) -> int:
    """Length in edges of the longest directed path over the hidden edges."""
    longest: dict = {}
    for i, j in sorted(hidden, key=lambda e: (e[1], e[0])):
        longest[j] = max(longest.get(j, 0), longest.get(i, 0) + 1)
    return max(longest.values(), default=0)


def depth_diameter(hidden) -> int:
    """The largest shortest-path length between two connected states (the literal graph distance)."""
    out: dict = {}
    for i, j in hidden:
        out.setdefault(i, []).append(j)
    best = 0
    for start in {i for i, _ in hidden}:
        dist, todo = {start: 0}, deque([start])
        while todo:
            u = todo.popleft()
            for v in out.get(u, []):
                if v not in dist:
                    dist[v] = dist[u] + 1
                    todo.append(v)
        best = max(best, max(dist.values()))
    return best


def width(hidden) -> int:
    """The largest out-degree of a hidden state."""
    degree: dict = {}
    for i, _ in hidden:
        degree[i] = degree.get(i, 0) + 1
    return max(degree.values(), default=0)


def sparsity(hidden, n: int, m: int) -> float:
    """``|E_s| / |E(N, M)|`` (the structural hidden edges as denominator; the paper's tables imply 78
    for N = 12, the complete DAG on 13 nodes, see spec §2.2)."""
    total = n_edges(n, m)
    return len(hidden) / total if total else 0.0


def topology(sub: SubNetwork, m: int) -> dict:
    return {"depth": depth_longest(sub.hidden), "depth_diameter": depth_diameter(sub.hidden),
            "width": width(sub.hidden), "sparsity": sparsity(sub.hidden, sub.n, m), "edges": len(sub.hidden)}


# ---------------------------------------------------------------------------------------------
# relative performance (§7.1)

def relative_performance(metrics: dict, single: dict, lower_is_better: dict) -> dict:
    """Eqs. 10-11: ``Delta_Ti = 100 / |M| * sum_j (-1)^l_j (M_ij - M_single_ij) / M_single_ij`` per task and
    their mean ``Delta_T``.

    Args:
        metrics, single: ``{task: {metric: value}}`` of the method and of the single-task baselines.
        lower_is_better: ``{metric: bool}``.

    Returns:
        ``{"per_task": {task: Delta_Ti}, "delta_t": mean}`` in percent; tasks whose baseline is 0 or
        missing are left out.
    """
    per_task = {}
    for task, values in metrics.items():
        base = single.get(task)
        if not base:
            continue
        terms = []
        for name, value in values.items():
            ref = base.get(name)
            if ref is None or value is None or ref == 0 or (isinstance(ref, float) and math.isnan(ref)):
                continue
            sign = -1.0 if lower_is_better[name] else 1.0
            terms.append(sign * (value - ref) / ref)
        if terms:
            per_task[task] = 100.0 * float(np.mean(terms))
    return {"per_task": per_task, "delta_t": float(np.mean(list(per_task.values()))) if per_task else None}
