"""Aligning two evaluations (or one per seed) on the same images and findings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import RefusedError
from ..evaluations.store import EvalArrays

# --------------------------------------------------------------------------- aligning


@dataclass
class Aligned:
    y_true: np.ndarray
    a: np.ndarray
    b: np.ndarray
    findings: list[str]
    image_ids: np.ndarray
    skipped: list[dict[str, str]]
    n_dropped_images: int
    n_label_conflicts: int


def _examples(keys: Sequence[str], k: int = 3) -> str:
    shown = ", ".join(list(keys)[:k])
    return shown + (", ..." if len(keys) > k else "")


def align_evaluations(ea: EvalArrays, eb: EvalArrays, *, intersect: bool = False) -> Aligned:
    """Align two evaluations on shared images and findings; refuse different images or labels unless ``intersect``."""
    ia, ib = ea.evaluation_id, eb.evaluation_id
    common, pa, pb = np.intersect1d(ea.image_ids, eb.image_ids, assume_unique=True, return_indices=True)
    only_a = np.setdiff1d(np.arange(ea.image_ids.size), pa)
    only_b = np.setdiff1d(np.arange(eb.image_ids.size), pb)
    n_diff = only_a.size + only_b.size
    if n_diff and not intersect:
        keys = [ea.image_keys[i] for i in only_a[:4]] + [eb.image_keys[i] for i in only_b[:4]]
        raise RefusedError(
            f"evaluations {ia} and {ib} differ in {n_diff} images ({only_a.size} only in {ia}, "
            f"{only_b.size} only in {ib}, e.g. {_examples(keys)}) - rerun predict on the same split, "
            "or pass `intersect`"
        )
    if common.size == 0:
        raise RefusedError(f"evaluations {ia} and {ib} share no image - compare evaluations of the same images")
    shared = [f for f in ea.findings if f in eb.findings]
    skipped = [{"finding": f, "reason": f"only in evaluation {ia}"} for f in ea.findings if f not in eb.findings]
    skipped += [{"finding": f, "reason": f"only in evaluation {ib}"} for f in eb.findings if f not in ea.findings]
    if not shared:
        raise RefusedError(
            f"evaluations {ia} and {ib} share no finding ({', '.join(ea.findings)} vs "
            f"{', '.join(eb.findings)}) - compare models trained on the same findings"
        )
    ca = [ea.findings.index(f) for f in shared]
    cb = [eb.findings.index(f) for f in shared]
    ya, yb = ea.y_true[np.ix_(pa, ca)], eb.y_true[np.ix_(pb, cb)]
    sa, sb = ea.scores[np.ix_(pa, ca)], eb.scores[np.ix_(pb, cb)]
    conflict = ~((ya == yb) | (np.isnan(ya) & np.isnan(yb)))
    n_conf = int(conflict.sum())
    if n_conf and not intersect:
        r, c = np.argwhere(conflict)[0]
        key = ea.image_keys[pa[r]]
        show = lambda v: "excluded" if np.isnan(v) else str(int(v))  # noqa: E731
        raise RefusedError(
            f"evaluations {ia} and {ib} disagree on the ground truth of {n_conf} image x finding labels "
            f"in {int(conflict.any(axis=1).sum())} images (e.g. {key} / {shared[c]}: "
            f"{show(ya[r, c])} vs {show(yb[r, c])}) - score both with the same labels and "
            "`uncertain` policy, or pass `intersect`"
        )
    y = ya.copy()
    y[conflict] = np.nan  # with --intersect a disputed label is left out of that finding
    # an image without a score for a finding is left out of that finding
    y[np.isnan(sa) | np.isnan(sb)] = np.nan
    sa, sb = np.nan_to_num(sa, nan=0.0), np.nan_to_num(sb, nan=0.0)
    keep = []
    for j, f in enumerate(shared):
        col = y[:, j]
        n1, n0 = int((col == 1).sum()), int((col == 0).sum())
        if n1 == 0 or n0 == 0:
            skipped.append({"finding": f, "reason": f"no {'positive' if n1 == 0 else 'negative'} image"})
        else:
            keep.append(j)
    if not keep:
        raise RefusedError(
            f"evaluations {ia} and {ib}: no shared finding has both positive and negative images - "
            "nothing to compare"
        )
    return Aligned(
        y[:, keep], sa[:, keep], sb[:, keep], [shared[j] for j in keep], common,
        skipped, n_diff, n_conf,
    )
