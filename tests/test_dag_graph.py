"""The restricted-DAG method's graph algorithms (spec dag_mtl.md §2, §5, §7.1 and the test list of
§8.4, items 1, 5, 6, 7)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from nas.dag.graph import (SubNetwork, _reachable, depth_diameter, depth_longest, edges, flow_scores, n_edges,
                           reduce_task, relative_performance, sparsity, topology, width)

N, M = 4, 2
E4 = edges(N, M)


@pytest.mark.parametrize("n, m, count", [(8, 3, 18), (12, 7, 56), (4, 2, 5), (8, 7, 28), (12, 3, 30), (1, 3, 0)])
def test_edge_counts_band_and_out_degree(n, m, count):
    e = edges(n, m)
    assert len(e) == n_edges(n, m) == count
    assert all(1 <= i < j <= n and j - i <= m for i, j in e) and len(set(e)) == len(e)
    out = {}
    for i, _ in e:
        out[i] = out.get(i, 0) + 1
    assert max(out.values(), default=0) <= m  # Property 2


def _gates(values: dict):
    return [values[e] for e in E4]


EXAMPLES = {
    "A": dict(a=(0.9, 0.5, 0.1, 0.7), b=(0.3, 0.4, 0.6, 0.9),
              g={(1, 2): 0.5, (1, 3): 0.8, (2, 3): 0.4, (2, 4): 0.8, (3, 4): 0.2},
              read_in=[1], read_out=[3, 4], hidden={(1, 2), (1, 3), (2, 4)},
              removed=[((0, 3), Fraction(2, 65)), ((2, 5), Fraction(1, 8)), ((1, 5), Fraction(27, 160)),
                       ((3, 4), Fraction(87, 340)), ((0, 2), Fraction(3, 10)), ((2, 3), Fraction(11, 30)),
                       ((0, 4), Fraction(21, 50))]),
    "B": dict(a=(0.3, 0.9, 0.2, 0.1), b=(0.1, 0.2, 0.3, 0.9),
              g={(1, 2): 0.5, (1, 3): 0.5, (2, 3): 0.6, (2, 4): 0.7, (3, 4): 0.8},
              read_in=[2], read_out=[4], hidden={(2, 3), (2, 4), (3, 4)},
              removed=[((0, 4), Fraction(9, 160)), ((3, 5), Fraction(6, 55)), ((2, 5), Fraction(3, 25)),
                       ((0, 3), Fraction(1, 5))]),
    "C": dict(a=(0.9, 0.1, 0.7, 0.5), b=(0.4, 0.6, 0.8, 0.9),
              g={(1, 2): 0.2, (1, 3): 0.8, (2, 3): 0.9, (2, 4): 0.1, (3, 4): 0.4},
              read_in=[1], read_out=[3], hidden={(1, 2), (1, 3), (2, 3)}, removed=None),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_flow_based_reduction_reproduces_the_worked_examples(name):
    ex = EXAMPLES[name]
    sub, trace = reduce_task(ex["a"], ex["b"], _gates(ex["g"]), N, M, return_trace=True)
    d = sub.to_dict()
    assert d["read_in"] == ex["read_in"] and d["read_out"] == ex["read_out"]
    assert set(map(tuple, d["edges"])) == ex["hidden"]
    if ex["removed"]:
        assert [e for e, _ in trace] == [e for e, _ in ex["removed"]]
        for (_, got), (_, want) in zip(trace, ex["removed"]):
            assert got == pytest.approx(float(want), abs=1e-12)
    if name == "C":  # the zero-score dead end (D5) is removed: (0, 4) goes with S = 0
        assert ((0, 4), 0.0) in [(e, round(s, 12)) for e, s in trace]


def test_example_a_first_scores_and_example_d_degenerate():
    ex = EXAMPLES["A"]
    psi = np.zeros((6, 6))
    for (i, j), v in ex["g"].items():
        psi[i, j] = v
    psi[0, 1:5] = ex["a"]
    psi[1:5, 5] = ex["b"]
    s = flow_scores(psi)
    assert s[0, 3] == pytest.approx(2 / 65) and s[1, 3] == pytest.approx(0.6962, abs=1e-4)
    assert s[2, 5] == pytest.approx(0.1250) and np.isnan(s[0, 0])
    sub = reduce_task([0.7], [0.2], [], 1, 3)
    assert sub.read_in == (1,) and sub.read_out == (1,) and not sub.hidden


def test_topology_metrics_on_examples_a_and_b():
    a = reduce_task(EXAMPLES["A"]["a"], EXAMPLES["A"]["b"], _gates(EXAMPLES["A"]["g"]), N, M)
    b = reduce_task(EXAMPLES["B"]["a"], EXAMPLES["B"]["b"], _gates(EXAMPLES["B"]["g"]), N, M)
    assert (depth_longest(a.hidden), depth_diameter(a.hidden), width(a.hidden)) == (2, 2, 2)
    assert (depth_longest(b.hidden), depth_diameter(b.hidden), width(b.hidden)) == (2, 1, 2)
    assert sparsity(a.hidden, N, M) == pytest.approx(3 / 5)
    assert topology(a, M) == {"depth": 2, "depth_diameter": 2, "width": 2, "sparsity": 0.6, "edges": 3}


def _score_min_entry(psi):
    s = flow_scores(psi)
    i, j = divmod(int(np.nanargmin(s)), len(psi))
    return i, j


@pytest.mark.parametrize("n, m", [(8, 3), (12, 7)])
def test_reduction_invariants_on_random_gates(n, m):
    """300 random draws: binary output, read-out reachable, band and [s_in, s_out] constraints,
    stop-minimality (removing the min-score entry of the final graph disconnects it), determinism."""
    rng = np.random.default_rng(n * 100 + m)
    e = edges(n, m)
    for _ in range(300):
        a, b, g = rng.random(n), rng.random(n), rng.random(len(e))
        sub = reduce_task(a, b, g, n, m)
        again = reduce_task(a.copy(), b.copy(), g.copy(), n, m)
        assert sub == again
        adj = sub.adjacency()
        assert set(np.unique(adj)) <= {0, 1} and _reachable(adj.astype(float))
        s_in = int(np.argmax(a)) + 1
        s_out = min(n, max(s_in + 1, int(np.argmax(b)) + 1))
        assert all(s_in <= i < j <= s_out and j - i <= m for i, j in sub.hidden)
        assert all(s_in <= s <= s_out for s, v in enumerate(sub.read_in, 1) if v)
        assert all(s_in <= s <= s_out for s, v in enumerate(sub.read_out, 1) if v)
        # stop-minimality on the final continuous graph
        psi = np.zeros((n + 2, n + 2))
        for (i, j), v in zip(e, g):
            if (i, j) in sub.hidden:
                psi[i, j] = v
        for s in range(1, n + 1):
            psi[0, s] = a[s - 1] if sub.read_in[s - 1] else 0.0
            psi[s, n + 1] = b[s - 1] if sub.read_out[s - 1] else 0.0
        i, j = _score_min_entry(psi)
        psi[i, j] = 0.0
        assert not _reachable(psi)


def test_relative_performance_recomputes_the_papers_table_2_from_table_11():
    """Eqs. 10-11 on NYU-v2 (Table 11 rows): Shared Bottom -7.62 / +7.47 / +5.17 -> +1.67; Ours (M=5)
    +11.89 / +7.84 / +8.79 -> +9.51 (Table 2: -7.6, +7.5, +5.2, +1.7 and +11.9, +7.9, +8.8, +9.5)."""
    lower = {"miou": False, "pix": False, "abs": True, "rel": True, "d1": False, "d2": False, "d3": False,
             "mean": True, "med": True, "a11": False, "a22": False, "a30": False}

    def row(v):
        return {"sem": dict(zip(("miou", "pix"), v[0:2])), "dep": dict(zip(("abs", "rel", "d1", "d2", "d3"), v[2:7])),
                "norm": dict(zip(("mean", "med", "a11", "a22", "a30"), v[7:12]))}

    single = row([27.5, 58.9, 0.62, 0.25, 57.9, 85.8, 95.7, 17.5, 15.2, 34.9, 73.3, 85.7])
    shared = relative_performance(row([24.1, 57.2, 0.58, 0.23, 62.4, 88.2, 96.5, 16.6, 13.4, 42.5, 73.2, 84.6]),
                                  single, lower)
    ours = relative_performance(row([31.8, 63.7, 0.56, 0.21, 64.3, 90.2, 97.7, 16.5, 13.2, 43.9, 71.7, 82.9]),
                                single, lower)
    for got, want in ((shared, (-7.62, 7.47, 5.17, 1.67)), (ours, (11.89, 7.84, 8.79, 9.51))):
        assert [got["per_task"][t] for t in ("sem", "norm", "dep")] == pytest.approx(want[:3], abs=0.1)
        assert got["delta_t"] == pytest.approx(want[3], abs=0.1)


def test_sub_network_json_and_adjacency():
    sub = SubNetwork(3, (1, 0, 0), (0, 0, 1), frozenset({(1, 2), (2, 3)}))
    assert sub.to_dict() == {"read_in": [1], "read_out": [3], "edges": [[1, 2], [2, 3]]}
    adj = sub.adjacency()
    assert adj[0, 1] == adj[1, 2] == adj[2, 3] == adj[3, 4] == 1 and adj.sum() == 4
