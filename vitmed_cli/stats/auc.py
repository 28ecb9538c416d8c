"""ROC AUC with midranks and DeLong's test of two correlated AUCs (the package's conventions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from ..errors import StatsError

CONFIDENCE = 0.95



# --------------------------------------------------------------------------- inputs


def _as_2d(y_true, *scores) -> tuple[np.ndarray, list[np.ndarray], bool]:
    """Float arrays of shape (n, k); ``True`` when the inputs were 1-D."""
    y = np.asarray(y_true, dtype=float)
    flat = y.ndim == 1
    if y.ndim not in (1, 2):
        raise StatsError(f"y_true must be 1-D or (n_images, n_findings), got shape {y.shape}")
    if flat:
        y = y[:, None]
    out = []
    for i, s in enumerate(scores):
        s = np.asarray(s, dtype=float)
        if flat and s.ndim == 1:
            s = s[:, None]
        if s.shape != y.shape:
            raise StatsError(
                f"scores {'ab'[i] if len(scores) > 1 else ''} have shape {s.shape} but y_true has "
                f"{y.shape if not flat else y.shape[:1]} - align both on the same images and findings"
            )
        out.append(s)
    bad = ~np.isnan(y) & (y != 0) & (y != 1)
    if bad.any():
        raise StatsError("y_true must hold 1, 0 or NaN (not labelled) - binarise labels first")
    for s in out:
        if np.isnan(s[~np.isnan(y)]).any():
            raise StatsError("scores hold NaN for labelled images - every labelled image needs a score")
    return y, out, flat


def _midranks_sorted(xs: np.ndarray) -> np.ndarray:
    """Midranks of an already sorted array."""
    n = xs.size
    if n == 0:
        return np.empty(0)
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(xs[1:], xs[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)
    return np.repeat((starts + ends + 1) / 2.0, ends - starts)


def midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy's ``rankdata``, method 'average')."""
    from scipy.stats import rankdata

    return rankdata(np.asarray(x, dtype=float), method="average").astype(float)


# --------------------------------------------------------------------------- AUC


def _auc_1d(y: np.ndarray, s: np.ndarray) -> float:
    keep = ~np.isnan(y)
    y, s = y[keep], s[keep]
    n1 = int((y == 1).sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = midranks(s)
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def roc_auc(y_true, scores):
    """ROC AUC with ties as 1/2; a float for 1-D input, an array per finding for 2-D.

    NaN labels are excluded; a finding without a positive or a negative gives NaN.
    """
    y, (s,), flat = _as_2d(y_true, scores)
    aucs = np.array([_auc_1d(y[:, j], s[:, j]) for j in range(y.shape[1])])
    return float(aucs[0]) if flat else aucs


# --------------------------------------------------------------------------- DeLong


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's test of two correlated AUCs (difference = a - b), normal-theory 95% CI."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    n_positive: int
    n_negative: int


def _delong_1d(y: np.ndarray, a: np.ndarray, b: np.ndarray, level: float) -> DeLongResult:
    keep = ~np.isnan(y)
    y, a, b = y[keep], a[keep], b[keep]
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        nan = float("nan")
        return DeLongResult(nan, nan, nan, nan, nan, nan, nan, nan, m, n)
    # Sun & Xu (2014): placement values from three midrankings per model.
    v10 = np.empty((2, m))
    v01 = np.empty((2, n))
    aucs = np.empty(2)
    idx_pos, idx_neg = np.flatnonzero(pos), np.flatnonzero(~pos)
    for k, s in enumerate((a, b)):
        # one sort per model: the positives and negatives keep their order in it
        order = np.argsort(s, kind="mergesort")
        xs, ps = s[order], pos[order]
        tz = _midranks_sorted(xs)
        place = np.empty(s.size)
        place[order[ps]] = (tz[ps] - _midranks_sorted(xs[ps])) / n
        place[order[~ps]] = 1.0 - (tz[~ps] - _midranks_sorted(xs[~ps])) / m
        v10[k] = place[idx_pos]
        v01[k] = place[idx_neg]
        aucs[k] = v10[k].mean()
    s10 = np.cov(v10) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(v01) if n > 1 else np.zeros((2, 2))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = float(aucs[0] - aucs[1])
    se = float(np.sqrt(max(var, 0.0)))
    zq = float(ndtri(0.5 + level / 2.0))
    ci_low, ci_high = diff - zq * se, diff + zq * se
    if se > 1e-12:
        z = diff / se
        p = float(2.0 * ndtr(-abs(z)))
    elif abs(diff) < 1e-12:
        # identical rankings: no variance of the difference, nothing to detect
        z, p = 0.0, 1.0
    else:
        # a difference with zero estimated variance (tiny or perfectly separated samples):
        # the normal approximation says nothing, so report no p-value rather than p = 0
        z = p = ci_low = ci_high = float("nan")
    return DeLongResult(
        float(aucs[0]), float(aucs[1]), diff, se, float(z), p, ci_low, ci_high, m, n,
    )


def delong_test(y_true, scores_a, scores_b, *, level: float = CONFIDENCE):
    """DeLong's test for two correlated ROC AUCs (fast O(n log n) algorithm of Sun & Xu 2014).

    1-D input gives one :class:`DeLongResult`; 2-D input ``(n_images, n_findings)``
    gives a list, one per finding.  ``p_value`` is two-sided from z = diff / se;
    the CI of the difference is diff +/- z_(1+level)/2 * se.
    """
    y, (a, b), flat = _as_2d(y_true, scores_a, scores_b)
    res = [_delong_1d(y[:, j], a[:, j], b[:, j], level) for j in range(y.shape[1])]
    return res[0] if flat else res
