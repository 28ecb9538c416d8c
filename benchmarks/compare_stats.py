"""Benchmark: paired bootstrap and DeLong of vitmed_cli.stats against the previous engine and an sklearn loop.

    python benchmarks/compare_stats.py [--images 30000] [--findings 14] [--resamples 1000]
                                       [--big-resamples 10000] [--old-resamples N]
                                       [--baseline-resamples 5] [--seeds 3]

Data: synthetic multi-label ground truth (prevalence 2-30%) and two models'
continuous probabilities (float64, almost no ties, the slow case).  Three cases,
all in one run so the machine's load is the same for every ratio:

1. --resamples (1,000) paired resamples: vitmed against a loop over sklearn's
   roc_auc_score per finding and model on the SAME resampled indices
   (vitmed_cli.stats.bootstrap_indices), timed on the first --baseline-resamples
   and extrapolated per resample; and DeLong for all findings.
2. --big-resamples (10,000, the default of vitmed compare) paired resamples:
   vitmed against the engine as it was before the block engine
   (benchmarks/_stats_v1.py, measured in full unless --old-resamples N, then
   extrapolated from N) and against the sklearn loop (extrapolated as above).
3. The same with --seeds models per initialisation (paired_bootstrap_seeds).

Wall time and the process's CPU time (all threads) are printed, with the load
average before the run: on a shared machine the wall time of the threaded engine
depends on what else runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from vitmed_cli import stats
from vitmed_cli.stats import bootstrap as stats_bootstrap

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _stats_v1  # noqa: E402  (the previous engine, kept for this comparison)


def _data(n: int, k: int, n_models: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    prevalence = rng.uniform(0.02, 0.30, k)
    y = (rng.random((n, k)) < prevalence).astype(float)
    logit_a = 1.2 * y + rng.normal(size=(n, k))
    models = [logit_a]
    for _ in range(n_models - 1):
        models.append(1.0 * y + 0.6 * logit_a + rng.normal(size=(n, k)))
    return y, [1 / (1 + np.exp(-m)) for m in models]


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _sklearn_per_resample(y, models, nb):
    """Seconds per resample of the sklearn loop (every finding and model), and its AUCs."""
    idx = stats.bootstrap_indices(y.shape[0], nb, seed=0)
    k = y.shape[1]
    aucs = np.empty((len(models), k, nb))
    t0 = time.perf_counter()
    for r in range(nb):
        yy = y[idx[r]]
        for m, s in enumerate(models):
            ss = s[idx[r]]
            for j in range(k):
                aucs[m, j, r] = roc_auc_score(yy[:, j], ss[:, j])
    return (time.perf_counter() - t0) / nb, aucs, idx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=30_000)
    ap.add_argument("--findings", type=int, default=14)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--big-resamples", type=int, default=10_000)
    ap.add_argument("--old-resamples", type=int, default=0,
                    help="time the previous engine on this many resamples and extrapolate (0: all)")
    ap.add_argument("--baseline-resamples", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    n, k, B, BB = args.images, args.findings, args.resamples, args.big_resamples
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average before the run {load[0]:.2f} / {load[1]:.2f} / "
          f"{load[2]:.2f}; numpy {np.__version__}")
    y, (a, b) = _data(n, k)

    # 1. the case measured before: 1,000 resamples against the sklearn loop, DeLong
    res, t_boot, _ = _timed(lambda: stats.paired_bootstrap(y, a, b, n_resamples=B, seed=0))
    _, t_delong, _ = _timed(lambda: stats.delong_test(y, a, b))
    nb = min(args.baseline_resamples, B)
    per_res, sk, idx = _sklearn_per_resample(y, [a, b], nb)
    fast = stats_bootstrap._bootstrap_aucs(y, [a, b], nb, 0, idx)
    err = float(np.abs(fast - sk).max())
    print(f"\n1. data: {n} images x {k} findings x 2 models, {B} resamples")
    print(f"paired bootstrap (vitmed):       {t_boot:8.3f} s   (target <= 3 s)")
    print(f"loop over sklearn roc_auc_score: {per_res * B:8.3f} s   (measured on {nb} resamples, extrapolated to {B})")
    print(f"speed-up:                        {per_res * B / t_boot:8.1f} x  (target >= 30 x)")
    print(f"DeLong, all findings (vitmed):   {t_delong:8.3f} s   (target < 0.2 s)")
    print(f"max |AUC - sklearn AUC| on the shared resamples: {err:.2e}")
    print(f"macro diff {res.macro.diff:+.4f} [{res.macro.ci_low:+.4f}, {res.macro.ci_high:+.4f}], p = {res.macro.p_value:.4f}")

    # 2. 10,000 resamples: this engine, the previous one, the sklearn loop
    new, t_new, c_new = _timed(lambda: stats_bootstrap._bootstrap_aucs(y, [a, b], BB, 0, None))
    nold = args.old_resamples or BB
    old, t_old, c_old = _timed(lambda: _stats_v1._bootstrap_aucs(y, [a, b], nold, 0, None))
    scale = BB / nold
    same = np.array_equal(new[:, :, :nold], old, equal_nan=True)
    _, t_paired, _ = _timed(lambda: stats.paired_bootstrap(y, a, b, n_resamples=BB, seed=0))
    print(f"\n2. data: {n} images x {k} findings x 2 models, {BB} resamples")
    print(f"vitmed engine (resampled AUCs):  {t_new:8.3f} s wall, {c_new:7.2f} s CPU   (target <= 10 s on 2 cores)")
    print(f"paired_bootstrap end to end:     {t_paired:8.3f} s wall")
    how = "measured" if nold == BB else f"measured on {nold}, extrapolated"
    print(f"previous engine (_stats_v1):     {t_old * scale:8.3f} s wall, {c_old * scale:7.2f} s CPU   ({how})")
    print(f"speed-up over the previous:      {t_old * scale / t_new:8.1f} x wall, {c_old / c_new * scale:5.1f} x CPU")
    print(f"sklearn loop:                    {per_res * BB:8.1f} s   (measured on {nb} resamples, extrapolated to {BB})")
    print(f"speed-up over sklearn:           {per_res * BB / t_new:8.1f} x")
    print(f"identical resampled AUCs (previous engine, {nold} resamples): {same}")

    # 3. several seeds per initialisation
    S = args.seeds
    ys, models = _data(n, k, n_models=2 * S, seed=1)
    _, t_seeds, c_seeds = _timed(lambda: stats.paired_bootstrap_seeds(ys, models[:S], models[S:], n_resamples=BB,
                                                                      seed=0, per_seed=True))
    print(f"\n3. paired_bootstrap_seeds: {S} seeds per init ({2 * S} models), {BB} resamples, per-seed p-values")
    print(f"vitmed:                          {t_seeds:8.3f} s wall, {c_seeds:7.2f} s CPU")
    print(f"sklearn loop:                    {per_res * BB * S:8.1f} s   (per-resample time above x {S})")


if __name__ == "__main__":
    main()
