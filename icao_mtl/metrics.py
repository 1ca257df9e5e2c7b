"""Verification metrics per requisite: equal error rate, FMR / FNMR curves, accuracy, summaries.

Conventions (ISO/IEC 19795-1 wording applied to compliance): labels are 1 compliant (the "genuine"
class) and 0 non-compliant (the "impostor" class); -1 (not applicable) is masked out at the boundary.
Scores are the model's probability that the image is compliant. At a threshold ``t`` an image is
accepted as compliant when ``score >= t``:

- FMR(t), false match rate: share of non-compliant images with ``score >= t`` (wrongly accepted);
- FNMR(t), false non-match rate: share of compliant images with ``score < t`` (wrongly rejected).

One kernel (sort once, cumulative sums at the distinct scores) gives both curves; the EER, the DET
plot and the operating points all derive from it, with no loop over thresholds.

EER definitions (``method``):

- ``"fvc"`` (default): the FVC2000 definition used by FVC-onGoing, where the FVC-ICAO benchmark lives
  (Maio et al., "FVC2000: Fingerprint Verification Competition", IEEE TPAMI 24(3), 2002): the
  thresholds tried are the observed scores; around the first one where FMR <= FNMR the interval
  [EER_low, EER_high] spans the two rates, and EER is its midpoint. It equals ``pyeer``'s
  ``get_eer_stats`` (eer, eer_low, eer_high). One deliberate difference: pyeer only tries observed
  scores, so when the curves cross above the highest score (e.g. all scores equal) it returns 1.0;
  here a threshold above the highest score is also tried, which gives the right answer (0.5 when all
  scores are equal: accepting everything or rejecting everything both err on one whole class).
- ``"roc"``: the crossing of the linearly interpolated ROC curve with FNR = FPR (the ``EER_interp``
  of the paper's reference code), equal to a ``sklearn.metrics.roc_curve`` derivation.

:func:`reference_eer` reproduces the number the paper's code reported, to explain the paper's tables;
reports never use it (see its docstring).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

EER_METHODS = ("fvc", "roc")


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for this input (e.g. one class absent); the result is NaN."""


def _check(labels, scores, name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Validate once at the boundary; drop not-applicable (-1) labels."""
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and {name} must have the same length. Received: {labels.shape[0]} labels, "
                         f"{scores.shape[0]} {name}.")
    bad = ~np.isin(labels, (1, 0, -1))
    if bad.any():
        raise ValueError(f"labels must be 1 (compliant), 0 (non-compliant) or -1 (not applicable). Received "
                         f"{np.unique(labels[bad])[:5].tolist()}.")
    keep = labels != -1
    labels, scores = labels[keep].astype(np.int8), scores[keep]
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} contain NaN or infinite values ({int((~np.isfinite(scores)).sum())} of them); "
                         "the model produced invalid outputs.")
    return labels, scores


def error_counts(labels, scores):
    """FM and FNM counts at every distinct score, plus one threshold above the highest score.

    Args:
        labels: array of shape (n,), values in {1, 0, -1} (-1 is ignored).
        scores: array of shape (n,), probability of compliant.

    Returns:
        ``(thresholds, fm, fnm, n_compliant, n_non_compliant)``: ``thresholds`` increasing, shape (k+1,),
        the last one above every score; ``fm[i]`` = non-compliant with ``score >= thresholds[i]``;
        ``fnm[i]`` = compliant with ``score < thresholds[i]``.
    """
    labels, scores = _check(labels, scores)
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    genuine = (labels[order] == 1).astype(np.int64)
    n_g = int(genuine.sum())
    n_i = len(s) - n_g
    thresholds, first = np.unique(s, return_index=True)
    cum_g = np.concatenate([[0], np.cumsum(genuine)])
    fnm = cum_g[first]  # compliant strictly below t
    fm = n_i - (first - fnm)  # non-compliant at or above t
    top = np.nextafter(s[-1], np.inf) if len(s) else 1.0
    return (np.append(thresholds, top), np.append(fm, 0), np.append(fnm, n_g), n_g, n_i)


def error_curves(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FMR and FNMR against the threshold.

    Returns:
        ``(thresholds, fmr, fnmr)``, each of shape (k+1,), thresholds increasing (see
        :func:`error_counts`). Rates are NaN (with a warning) when a class is absent.
    """
    thr, fm, fnm, n_g, n_i = error_counts(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        fmr = fm / n_i if n_i else np.full(len(thr), np.nan)
        fnmr = fnm / n_g if n_g else np.full(len(thr), np.nan)
    if not (n_g and n_i):
        warnings.warn("error_curves: one class is absent; its rate is NaN.", UndefinedMetricWarning, stacklevel=2)
    return thr, fmr, fnmr


@dataclass(frozen=True)
class EER:
    """An equal error rate. Rates are fractions in [0, 1]; NaN when undefined.

    Attributes:
        eer: the equal error rate.
        eer_low, eer_high: the interval around the crossing (equal for ``method="roc"``).
        threshold: the score threshold at the EER point (accept as compliant when score >= threshold).
        n_compliant, n_non_compliant: examples of each class used (not-applicable excluded).
        method: "fvc" or "roc".
        ci_low, ci_high: bootstrap 95% interval of ``eer`` (None unless requested).
        reason: why the EER is undefined (None when defined).
    """

    eer: float
    eer_low: float
    eer_high: float
    threshold: float
    n_compliant: int
    n_non_compliant: int
    method: str = "fvc"
    ci_low: float | None = None
    ci_high: float | None = None
    reason: str | None = None

    @property
    def defined(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict:
        return asdict(self)


def _undefined(n_g: int, n_i: int, method: str) -> EER:
    reason = ("no non-compliant example" if n_i == 0 else "no compliant example") if (n_g or n_i) else "no labelled example"
    return EER(math.nan, math.nan, math.nan, math.nan, n_g, n_i, method, reason=reason)


def _fvc(thr, fm, fnm, n_g, n_i) -> tuple[float, float, float, float]:
    fmr, fnmr = fm / n_i, fnm / n_g
    diff = fmr - fnmr
    t2 = int(np.argmax(diff <= 0))  # first crossing; exists thanks to the threshold above every score
    t1 = t2 - 1 if diff[t2] != 0 and t2 != 0 else t2
    if fmr[t1] + fnmr[t1] <= fmr[t2] + fnmr[t2]:
        return (fnmr[t1] + fmr[t1]) / 2, fnmr[t1], fmr[t1], thr[t1]
    return (fnmr[t2] + fmr[t2]) / 2, fmr[t2], fnmr[t2], thr[t2]


def _roc(labels, scores, n_g, n_i) -> tuple[float, float]:
    """EER of the linearly interpolated ROC curve and the interpolated threshold."""
    thr, fm, fnm, _, _ = error_counts(labels, scores)
    # ROC points from the highest threshold down: (fpr, tpr) both non-decreasing.
    fpr = (fm / n_i)[::-1]
    tpr = 1.0 - (fnm / n_g)[::-1]
    t = thr[::-1]
    d = fpr + tpr - 1.0  # fpr - fnr, non-decreasing, from -1 to +1
    i = int(np.argmax(d >= 0))
    if d[i] == 0 or i == 0:
        return float(fpr[i]), float(t[i])
    lam = -d[i - 1] / (d[i] - d[i - 1])
    eer = fpr[i - 1] + lam * (fpr[i] - fpr[i - 1])
    return float(eer), float(t[i - 1] + lam * (t[i] - t[i - 1]))


def equal_error_rate(labels, scores, *, method: str = "fvc", bootstrap: int = 0, seed: int = 0) -> EER:
    """Equal error rate of compliance scores.

    Args:
        labels: array of shape (n,), 1 compliant, 0 non-compliant, -1 not applicable (ignored).
        scores: array of shape (n,), probability of compliant (higher = more compliant).
        method: "fvc" (FVC2000 interval midpoint, default) or "roc" (interpolated ROC crossing).
        bootstrap: number of bootstrap resamples for a 95% interval (0: none).
        seed: seed of the bootstrap.

    Returns:
        An :class:`EER`. With one class absent it is undefined: NaN values, ``reason`` set and an
        :class:`UndefinedMetricWarning`.

    Example:
        >>> equal_error_rate([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1]).eer
        0.5
    """
    if method not in EER_METHODS:
        raise ValueError(f"method must be one of {EER_METHODS}. Received: method={method!r}")
    labels, scores = _check(labels, scores)
    n_g, n_i = int((labels == 1).sum()), int((labels == 0).sum())
    if n_g == 0 or n_i == 0:
        res = _undefined(n_g, n_i, method)
        warnings.warn(f"EER undefined: {res.reason}.", UndefinedMetricWarning, stacklevel=2)
        return res
    if method == "fvc":
        eer, low, high, thr = _fvc(*error_counts(labels, scores))
    else:
        eer, thr = _roc(labels, scores, n_g, n_i)
        low = high = eer
    ci = (None, None)
    if bootstrap:
        ci = _bootstrap(labels, scores, method, bootstrap, seed)
    return EER(float(eer), float(low), float(high), float(thr), n_g, n_i, method, *ci)


def _bootstrap(labels, scores, method, n, seed) -> tuple[float, float]:
    """Percentile 95% interval over ``n`` stratified resamples (each class resampled in its own size)."""
    rng = np.random.default_rng(seed)
    g, i = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    values = np.empty(n)
    for b in range(n):
        idx = np.concatenate([rng.choice(g, len(g)), rng.choice(i, len(i))])
        lab, sc = labels[idx], scores[idx]
        if method == "fvc":
            values[b] = _fvc(*error_counts(lab, sc))[0]
        else:
            values[b] = _roc(lab, sc, len(g), len(i))[0]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def accuracy(labels, scores, threshold: float = 0.5) -> float:
    """Share of correct decisions (compliant when score >= threshold) among applicable labels; NaN if none."""
    labels, scores = _check(labels, scores)
    if len(labels) == 0:
        return math.nan
    return float(((scores >= threshold) == (labels == 1)).mean())


def rates_at(labels, scores, threshold: float) -> tuple[float, float]:
    """(FMR, FNMR) at one threshold; NaN for an absent class."""
    labels, scores = _check(labels, scores)
    g, i = scores[labels == 1], scores[labels == 0]
    fmr = float((i >= threshold).mean()) if len(i) else math.nan
    fnmr = float((g < threshold).mean()) if len(g) else math.nan
    return fmr, fnmr


def threshold_at_fmr(labels, scores, target_fmr: float) -> float:
    """The lowest threshold whose FMR is at most ``target_fmr`` (e.g. 0.01), from the error curves."""
    if not 0 <= target_fmr <= 1:
        raise ValueError(f"target_fmr must be in [0, 1]. Received: {target_fmr}")
    thr, fm, _, n_g, n_i = error_counts(labels, scores)
    if n_i == 0:
        raise ValueError("threshold_at_fmr needs non-compliant examples; the labels have none.")
    ok = np.flatnonzero(fm / n_i <= target_fmr)
    return float(thr[ok[0]])


@dataclass(frozen=True)
class ReferenceEER:
    """The reference code's evaluation of one requisite (spec section 8.2), values as fractions.

    Attributes:
        eer_mean: (FAR + FRR) / 2 at ``threshold``, or 0.0 when FP or FN (or TP or TN) is 0: the number
            the paper reported as EER.
        eer_interp: the interpolated ROC crossing (what the code only logged).
        threshold: t*, interpolated from the ROC thresholds at ``eer_interp``.
        far, frr: the rates at ``threshold`` (None where the code left them undefined).
        accuracy: accuracy at ``threshold``.
    """

    eer_mean: float
    eer_interp: float
    threshold: float
    far: float | None
    frr: float | None
    accuracy: float


def reference_eer(labels, scores) -> ReferenceEER:
    """The EER exactly as the paper's reference code computed it (``model_evaluator.py``).

    ROC with scikit-learn (its first threshold patched to "second + 1" as scikit-learn 0.23 had it),
    ``EER_interp`` = root of ``1 - x - TPR(x)`` (Brent's method on the interpolated ROC), threshold t*
    interpolated from the ROC thresholds, decisions ``score >= t*``, then FAR = FP / (FP + TN) only if
    FP > 0 and TN > 0, FRR = FN / (FN + TP) only if FN > 0 and TP > 0, both rounded to 4 decimals;
    ``eer_mean = (FAR + FRR) / 2`` if both are defined, **otherwise 0.0**.

    Use it to explain the published numbers, never to report a model: the 0.0 rule turns any
    requisite with no false acceptance (common with 2 non-compliant test images) into "0.00%" whatever
    its false rejections (spec section 8.3: an interpolated EER of 12.2% reported as 0.00%).

    Raises:
        ValueError: one class is absent (the code's Brent solver fails there too).
    """
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq
    from sklearn.metrics import roc_curve

    labels, scores = _check(labels, scores)
    if len(np.unique(labels)) < 2:
        raise ValueError("reference_eer needs both compliant and non-compliant examples.")
    fpr, tpr, thr = roc_curve(labels, scores)
    thr = thr.astype(np.float64).copy()
    if len(thr) > 1:
        thr[0] = thr[1] + 1.0
    eer_interp = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    t_star = float(interp1d(fpr, thr)(eer_interp))
    pred = scores >= t_star
    tp = int(((labels == 1) & pred).sum())
    tn = int(((labels == 0) & ~pred).sum())
    fp = int(((labels == 0) & pred).sum())
    fn = int(((labels == 1) & ~pred).sum())
    far = round(fp / (fp + tn), 4) if fp > 0 and tn > 0 else None
    frr = round(fn / (fn + tp), 4) if fn > 0 and tp > 0 else None
    eer_mean = (far + frr) / 2 if far is not None and frr is not None else 0.0
    acc = round((tp + tn) / len(labels), 4)
    return ReferenceEER(float(eer_mean), float(eer_interp), t_star, far, frr, acc)


@dataclass
class TaskMetrics:
    """Everything reported for one requisite on one split."""

    eer: EER
    accuracy: float  # at score >= 0.5 (the argmax of the two-class softmax)

    def to_dict(self) -> dict:
        return {"eer": self.eer.eer, "eer_low": self.eer.eer_low, "eer_high": self.eer.eer_high,
                "threshold": self.eer.threshold, "accuracy": self.accuracy,
                "n_compliant": self.eer.n_compliant, "n_non_compliant": self.eer.n_non_compliant,
                "ci_low": self.eer.ci_low, "ci_high": self.eer.ci_high, "undefined_reason": self.eer.reason}


def evaluate_tasks(labels: dict, scores: dict, *, method: str = "fvc", bootstrap: int = 0,
                   seed: int = 0) -> dict[str, TaskMetrics]:
    """Per task: EER and accuracy. ``labels`` and ``scores`` are dicts task -> array of shape (n,);
    they are paired by task name, never by position."""
    missing = [t for t in labels if t not in scores]
    if missing:
        raise ValueError(f"No scores for tasks {missing}; scores have {list(scores)}.")
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for t in labels:
            out[t] = TaskMetrics(equal_error_rate(labels[t], scores[t], method=method, bootstrap=bootstrap, seed=seed),
                                 accuracy(labels[t], scores[t]))
    return out


def summarize(per_task: dict[str, TaskMetrics]) -> dict:
    """The aggregate of the paper's Table 1 over requisites with a defined EER.

    Returns:
        ``{"per_requisite": {id: {...}}, "eer_mean", "eer_std" (sample, n - 1), "eer_median",
        "accuracy_mean", "n_defined", "undefined": {id: reason}, "note"}``; fractions, None where
        undefined.
    """
    defined = {t: m for t, m in per_task.items() if m.eer.defined}
    eers = np.array([m.eer.eer for m in defined.values()])
    accs = np.array([m.accuracy for m in per_task.values() if not math.isnan(m.accuracy)])
    undefined = {t: m.eer.reason for t, m in per_task.items() if not m.eer.defined}
    note = None
    if undefined:
        note = (f"EER undefined for {', '.join(undefined)} (one class absent in this split); left out of the "
                "mean, standard deviation and median, as the paper did for Ink Mark.")
    return {
        "per_requisite": {t: m.to_dict() for t, m in per_task.items()},
        "eer_mean": float(eers.mean()) if len(eers) else None,
        "eer_std": float(eers.std(ddof=1)) if len(eers) > 1 else None,
        "eer_median": float(np.median(eers)) if len(eers) else None,
        "accuracy_mean": float(accs.mean()) if len(accs) else None,
        "n_defined": int(len(eers)),
        "undefined": undefined,
        "note": note,
    }


def evaluate_by_condition(labels: dict, scores: dict, condition, *, method: str = "fvc") -> dict:
    """Every task's EER on all images and on the two parts that ``condition`` separates: the images
    non-compliant (label 0) for at least one task of ``condition`` ("with"), and the others ("without":
    compliant or not applicable for all of them). E.g. ``condition=("blurred", "pixelation")`` asks how
    much of each requisite's error comes from degraded photos.

    Args:
        labels, scores: dicts task -> array of shape (n,), as :func:`evaluate_tasks`.
        condition: task ids, each a key of ``labels``.

    Returns:
        ``{"condition": [...], "n": {"all", "with", "without"}: images, "all" / "with" / "without":
        the :func:`summarize` of that part}``. A condition's own task has one class in "without" (EER
        undefined there, left out of that part's mean and median).
    """
    condition = list(condition)
    unknown = [t for t in condition if t not in labels]
    if not condition or unknown:
        raise ValueError(f"The condition must name tasks of the labels ({', '.join(labels)}). Received: "
                         f"{condition or 'nothing'}")
    first = next(iter(labels.values()))
    hit = np.zeros(len(first), bool)
    for t in condition:
        hit |= np.asarray(labels[t]) == 0
    parts = {"all": np.ones(len(first), bool), "with": hit, "without": ~hit}
    out = {"condition": condition, "n": {name: int(mask.sum()) for name, mask in parts.items()}}
    for name, mask in parts.items():
        out[name] = summarize(evaluate_tasks({t: np.asarray(v)[mask] for t, v in labels.items()},
                                             {t: np.asarray(scores[t])[mask] for t in labels}, method=method))
    return out
