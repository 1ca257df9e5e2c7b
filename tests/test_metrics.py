import math
import warnings

import numpy as np
import pytest
from pyeer.eer_info import get_eer_stats
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from icao_mtl.metrics import (EER, TaskMetrics, UndefinedMetricWarning, accuracy, equal_error_rate, error_curves,
                              evaluate_tasks, rates_at, reference_eer, summarize, threshold_at_fmr)


def _cases(seed=0, n_cases=600):
    rng = np.random.default_rng(seed)
    for k in range(n_cases):
        n = int(rng.integers(2, 400))
        y = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(int)
        if y.min() == y.max():
            continue
        kind = k % 3
        if kind == 0:
            s = rng.random(n)
        elif kind == 1:  # heavily tied
            s = np.round(rng.random(n) * rng.integers(1, 6)) / 5
        else:
            s = np.clip(rng.normal(y * rng.uniform(0, 2), 1) / 4 + 0.5, 0, 1)
        yield y, s


def _brute_force_fvc(y, s):
    """FVC2000 by brute force over every threshold (observed scores and one above them all)."""
    thr = np.append(np.unique(s), np.inf)
    fmr = np.array([(s[y == 0] >= t).mean() for t in thr])
    fnmr = np.array([(s[y == 1] < t).mean() for t in thr])
    t2 = int(np.argmax(fmr - fnmr <= 0))
    t1 = t2 - 1 if fmr[t2] != fnmr[t2] and t2 else t2
    i = t1 if fmr[t1] + fnmr[t1] <= fmr[t2] + fnmr[t2] else t2
    return (fmr[i] + fnmr[i]) / 2


def test_fvc_eer_equals_pyeer_on_random_and_tied_scores():
    checked = fallbacks = 0
    for y, s in _cases():
        ours = equal_error_rate(y, s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = get_eer_stats(s[y == 1], s[y == 0])
        if ref.eer == 1.0 and ref.eer_low == 1.0:
            # pyeer found no crossing among observed scores: ours tries a threshold above them all
            fallbacks += 1
            assert ours.eer == pytest.approx(_brute_force_fvc(y, s), abs=1e-12)
            continue
        assert abs(ours.eer - ref.eer) <= 1e-9
        assert abs(ours.eer_low - ref.eer_low) <= 1e-9 and abs(ours.eer_high - ref.eer_high) <= 1e-9
        assert ours.threshold == pytest.approx(ref.eer_th)
        checked += 1
    assert checked > 500 and fallbacks > 10


def test_all_equal_scores_give_one_half_where_pyeer_says_one():
    y, s = np.array([1, 0, 1, 0, 1]), np.full(5, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert get_eer_stats(s[y == 1], s[y == 0]).eer == 1.0
    r = equal_error_rate(y, s)
    assert (r.eer, r.eer_low, r.eer_high) == (0.5, 0.0, 1.0)


def test_roc_method_equals_sklearn_interpolated_crossing():
    for y, s in _cases(seed=1, n_cases=300):
        fpr, tpr, _ = roc_curve(y, s)
        expected = brentq(lambda x: 1 - x - np.interp(x, fpr, tpr), 0, 1, xtol=1e-14)
        assert equal_error_rate(y, s, method="roc").eer == pytest.approx(expected, abs=1e-9)


def test_perfect_and_inverted_scores():
    y = np.array([0, 0, 1, 1])
    assert equal_error_rate(y, [0.1, 0.2, 0.8, 0.9]).eer == 0.0
    assert equal_error_rate(y, [0.9, 0.8, 0.2, 0.1]).eer == 1.0
    assert equal_error_rate(y, [0.1, 0.2, 0.8, 0.9], method="roc").eer == 0.0


def test_not_applicable_labels_are_ignored_and_one_class_is_undefined():
    y = np.array([1, 0, -1, 1, 0, -1])
    s = np.array([0.9, 0.1, 0.0, 0.8, 0.3, 1.0])
    assert equal_error_rate(y, s).eer == equal_error_rate(y[y >= 0], s[y >= 0]).eer == 0.0
    assert equal_error_rate(y, s).n_compliant == 2
    with pytest.warns(UndefinedMetricWarning, match="no non-compliant"):
        r = equal_error_rate([1, 1, -1], [0.2, 0.9, 0.1])
    assert math.isnan(r.eer) and not r.defined and r.reason == "no non-compliant example"


def test_input_validation_names_the_problem():
    with pytest.raises(ValueError, match="same length"):
        equal_error_rate([1, 0], [0.5])
    with pytest.raises(ValueError, match=r"1 \(compliant\), 0 \(non-compliant\) or -1"):
        equal_error_rate([1, 2], [0.5, 0.4])
    with pytest.raises(ValueError, match="NaN"):
        equal_error_rate([1, 0], [np.nan, 0.4])
    with pytest.raises(ValueError, match="method"):
        equal_error_rate([1, 0], [0.5, 0.4], method="det")


def test_curves_accuracy_rates_and_operating_points():
    y = np.array([1, 1, 1, 0, 0])
    s = np.array([0.9, 0.7, 0.4, 0.6, 0.1])
    thr, fmr, fnmr = error_curves(y, s)
    assert np.all(np.diff(thr) > 0) and fmr[0] == 1.0 and fnmr[0] == 0.0 and fmr[-1] == 0.0 and fnmr[-1] == 1.0
    assert np.all(np.diff(fmr) <= 0) and np.all(np.diff(fnmr) >= 0)
    assert accuracy(y, s) == pytest.approx(3 / 5)
    assert rates_at(y, s, 0.5) == (0.5, pytest.approx(1 / 3))
    t = threshold_at_fmr(y, s, 0.0)
    assert rates_at(y, s, t)[0] == 0.0 and t == pytest.approx(0.7)


def test_bootstrap_interval_contains_the_estimate():
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.3).astype(int)
    s = np.clip(rng.normal(y, 0.8) / 3 + 0.5, 0, 1)
    r = equal_error_rate(y, s, bootstrap=300, seed=1)
    assert r.ci_low < r.eer < r.ci_high and r.ci_high - r.ci_low < 0.2


def test_reference_eer_reports_zero_when_no_false_acceptance():
    """Spec 8.3: 2 non-compliant and 286 compliant images, no non-compliant accepted, compliant images
    rejected: the reference's EER is 0.00% while the real EER is not."""
    rng = np.random.default_rng(0)
    compliant = np.clip(rng.normal(0.6, 0.2, 286), 0, 1)
    non = np.array([0.05, 0.15])
    y = np.r_[np.ones(286, int), np.zeros(2, int)]
    s = np.r_[compliant, non]
    ref = reference_eer(y, s)
    ours = equal_error_rate(y, s)
    assert ref.eer_mean == 0.0 and ref.far is None  # the 0.0 rule
    assert ours.eer > 0.0
    # Where both rates are defined it is (FAR + FRR) / 2 at the interpolated threshold.
    y2 = (rng.random(300) < 0.4).astype(int)
    s2 = np.clip(rng.normal(y2, 0.9) / 3 + 0.5, 0, 1)
    r2 = reference_eer(y2, s2)
    fmr, fnmr = rates_at(y2, s2, r2.threshold)
    assert r2.eer_mean == pytest.approx((round(fmr, 4) + round(fnmr, 4)) / 2)
    assert r2.eer_interp == pytest.approx(equal_error_rate(y2, s2, method="roc").eer, abs=1e-9)


# The paper's Table 1: 22 per-requisite EERs (%) per column and the printed summary rows.
TABLE1 = {
    "STL": ([21.20, 27.94, 21.04, 18.31, 3.32, 1.40, 1.81, 50.00, 15.58, 11.76, 2.38, 19.40, 14.63, 15.18, 9.18, 10.21,
             21.13, 1.06, 31.79, 12.94, 7.30, 14.40], (15.09, 11.54, 14.52)),
    "MTL 1": ([6.0, 27.06, 11.46, 2.04, 7.69, 0.98, 1.62, 50.0, 3.74, 4.08, 2.38, 15.32, 9.63, 17.96, 8.21, 12.39, 19.39,
               0.35, 34.86, 2.68, 21.54, 1.77], (11.87, 12.61, 7.95)),
    "MTL 2": ([5.06, 18.27, 8.83, 1.98, 4.02, 2.88, 0.20, 50.00, 5.08, 4.70, 2.94, 13.87, 8.03, 11.39, 9.72, 11.25, 16.64,
               0.18, 22.99, 4.73, 3.87, 1.98], (9.48, 10.91, 5.07)),
    "MTL 3": ([3.67, 18.75, 11.96, 3.75, 0.00, 1.61, 0.00, 0.00, 4.83, 3.86, 4.82, 13.17, 8.22, 12.13, 6.16, 9.67, 0.00,
               19.10, 0.00, 27.39, 4.89, 10.42], (7.47, 7.32, 4.86)),
}


@pytest.mark.parametrize("column", list(TABLE1))
def test_summary_reproduces_the_papers_table_1_rows(column):
    values, (mean, sd, median) = TABLE1[column]
    per = {f"r{i}": TaskMetrics(EER(v / 100, v / 100, v / 100, 0.5, 10, 10), 0.9) for i, v in enumerate(values)}
    per["ink_mark"] = TaskMetrics(EER(math.nan, math.nan, math.nan, math.nan, 20, 0, reason="no non-compliant example"),
                                  0.9)
    s = summarize(per)
    assert round(100 * s["eer_mean"], 2) == mean
    assert round(100 * s["eer_std"], 2) == sd  # sample standard deviation (n - 1)
    assert round(100 * s["eer_median"], 2) == median
    assert s["n_defined"] == 22 and "ink_mark" in s["undefined"] and "left out" in s["note"]


def test_evaluate_tasks_pairs_by_name():
    labels = {"a": np.array([1, 0, 1, 0]), "b": np.array([0, 1, 0, 1])}
    scores = {"b": np.array([0.1, 0.9, 0.2, 0.8]), "a": np.array([0.9, 0.1, 0.8, 0.2])}
    m = evaluate_tasks(labels, scores)
    assert m["a"].eer.eer == 0.0 and m["b"].eer.eer == 0.0
