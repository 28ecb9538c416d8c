"""Benchmark: paired bootstrap and DeLong of vitmed_cli.stats against a loop over sklearn.

    python benchmarks/compare_stats.py [--images 30000] [--findings 14] [--resamples 1000]
                                       [--baseline-resamples 5]

Data: synthetic multi-label ground truth (prevalence 2-30%) and two models'
continuous probabilities (float64, almost no ties, the slow case for the
level binning).  The baseline computes roc_auc_score per finding and model on
the SAME resampled indices (vitmed_cli.stats.bootstrap_indices) for the first
--baseline-resamples resamples and is extrapolated per resample to the full
count; the speed-up is that extrapolated time over vitmed's measured time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from vitmed_cli import stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=30_000)
    ap.add_argument("--findings", type=int, default=14)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--baseline-resamples", type=int, default=5)
    args = ap.parse_args()
    n, k, B = args.images, args.findings, args.resamples

    rng = np.random.default_rng(0)
    prevalence = rng.uniform(0.02, 0.30, k)
    y = (rng.random((n, k)) < prevalence).astype(float)
    logit_a = 1.2 * y + rng.normal(size=(n, k))
    logit_b = 1.0 * y + 0.6 * logit_a + rng.normal(size=(n, k))
    a, b = 1 / (1 + np.exp(-logit_a)), 1 / (1 + np.exp(-logit_b))

    t0 = time.perf_counter()
    res = stats.paired_bootstrap(y, a, b, n_resamples=B, seed=0)
    t_boot = time.perf_counter() - t0

    t0 = time.perf_counter()
    stats.delong_test(y, a, b)
    t_delong = time.perf_counter() - t0

    nb = min(args.baseline_resamples, B)
    idx = stats.bootstrap_indices(n, nb, seed=0)
    t0 = time.perf_counter()
    diffs = np.empty((k, nb))
    for r in range(nb):
        yy, aa, bb = y[idx[r]], a[idx[r]], b[idx[r]]
        for j in range(k):
            diffs[j, r] = roc_auc_score(yy[:, j], aa[:, j]) - roc_auc_score(yy[:, j], bb[:, j])
    t_base = (time.perf_counter() - t0) / nb * B

    # same indices, same answer: check the first resamples against the baseline
    fast = stats._bootstrap_aucs(y, [a, b], nb, 0, idx)
    err = float(np.abs((fast[0] - fast[1]) - diffs).max())

    print(f"data: {n} images x {k} findings x 2 models, {B} resamples")
    print(f"paired bootstrap (vitmed):      {t_boot:8.3f} s   (target <= 3 s)")
    print(f"loop over sklearn roc_auc_score: {t_base:8.3f} s   (measured on {nb} resamples, extrapolated to {B})")
    print(f"speed-up:                        {t_base / t_boot:8.1f} x  (target >= 30 x)")
    print(f"DeLong, all findings (vitmed):  {t_delong:8.3f} s   (target < 0.2 s)")
    print(f"max |diff - sklearn diff| on the shared resamples: {err:.2e}")
    print(f"macro diff {res.macro.diff:+.4f} [{res.macro.ci_low:+.4f}, {res.macro.ci_high:+.4f}], p = {res.macro.p_value:.4f}")


if __name__ == "__main__":
    main()
