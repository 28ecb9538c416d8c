"""Statistics for ROC AUC: pure functions over numpy arrays, no I/O, no registry.

Conventions
-----------
* ``y_true`` is 1 (positive) / 0 (negative); NaN means "not labelled" and
  excludes that image from that finding only.  2-D arrays are
  ``(n_images, n_findings)``; paired tests take arrays aligned on the same images.
* AUC is P(score of a positive > score of a negative), ties counted as 1/2
  (the Mann-Whitney statistic with midranks); it is NaN without a positive or
  a negative.
* Bootstrap resamples draw images with replacement; every resample uses the
  same images for both models and for every finding (the images are the unit
  of resampling, so correlations between findings and models are kept).
  Resampled AUCs are computed from per-image counts on scores sorted once per
  finding and model, so one resample costs O(n) after one O(n log n) sort.
  The resample indices always come from one seeded stream in the same order
  (:func:`bootstrap_indices`), whatever the block size or number of threads.

Every statistic here shares the conventions above, and nothing else in vitmed
may compute an AUC or a p-value its own way.  Modules: :mod:`.auc` (AUC,
midranks, DeLong), :mod:`.bootstrap` (the engine; paired and single-model
bootstraps), :mod:`.seeds` (the paired bootstrap over seeds), :mod:`.thresholds`
(Youden, metrics at a threshold) and :mod:`.fdr` (Benjamini-Hochberg).
"""

from __future__ import annotations

from .auc import CONFIDENCE, DeLongResult, delong_test, midranks, roc_auc
from .bootstrap import (
    AUCSummary,
    BootstrapAUC,
    PairedBootstrapResult,
    PairedDiff,
    bootstrap_auc,
    bootstrap_indices,
    paired_bootstrap,
)
from .fdr import fdr_bh
from .seeds import PairedSeedsResult, SeedAUC, SeedPairResult, paired_bootstrap_seeds
from .thresholds import threshold_metrics, youden_threshold

__all__ = [
    "AUCSummary",
    "BootstrapAUC",
    "CONFIDENCE",
    "DeLongResult",
    "PairedBootstrapResult",
    "PairedDiff",
    "PairedSeedsResult",
    "SeedAUC",
    "SeedPairResult",
    "bootstrap_auc",
    "bootstrap_indices",
    "delong_test",
    "fdr_bh",
    "midranks",
    "paired_bootstrap",
    "paired_bootstrap_seeds",
    "roc_auc",
    "threshold_metrics",
    "youden_threshold",
]
