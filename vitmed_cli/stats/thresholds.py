"""Operating points: the Youden threshold and the metrics at a threshold."""

from __future__ import annotations


import numpy as np

from ..errors import StatsError

# --------------------------------------------------------------------------- thresholds


def _labelled_1d(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=float).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise StatsError(f"y_true has {y.size} values but scores {s.size} - align them on the same images")
    keep = ~np.isnan(y)
    return y[keep], s[keep]


def youden_threshold(y_true, scores) -> float:
    """The score threshold (predict positive when score >= threshold) maximising sensitivity + specificity - 1."""
    y, s = _labelled_1d(y_true, scores)
    n1 = int((y == 1).sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    ss, ys = s[order], y[order]
    tp = np.cumsum(ys == 1)
    fp = np.cumsum(ys == 0)
    last = np.append(ss[1:] != ss[:-1], True)  # cut only between distinct scores
    j = tp[last] / n1 - fp[last] / n0
    return float(ss[last][int(np.argmax(j))])


def threshold_metrics(y_true, scores, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity and accuracy when predicting positive for score >= threshold."""
    y, s = _labelled_1d(y_true, scores)
    pred = s >= threshold
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return {
        "sensitivity": float((pred & pos).sum() / n1) if n1 else float("nan"),
        "specificity": float((~pred & ~pos).sum() / n0) if n0 else float("nan"),
        "accuracy": float((pred == pos).mean()) if y.size else float("nan"),
    }
