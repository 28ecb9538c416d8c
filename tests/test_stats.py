"""vitmed_cli.stats against independent computations written here."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from vitmed_cli import stats
from vitmed_cli.errors import StatsError


def _data(n=300, k=4, seed=0, ties=True, prevalence=(0.1, 0.3, 0.6, 0.85)):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < np.resize(prevalence, k)).astype(float)
    a = y * 0.7 + rng.normal(size=(n, k))
    b = y * 0.4 + 0.5 * a + rng.normal(size=(n, k))
    if ties:  # coarse scores: many ties within and across classes
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b


def _sk_auc(y, s):
    keep = ~np.isnan(y)
    y, s = y[keep], s[keep]
    if len(np.unique(y)) < 2:
        return np.nan
    return roc_auc_score(y, s)


def test_roc_auc_matches_sklearn_with_ties_and_missing_labels():
    y, a, _ = _data(ties=True)
    y[::7, 1] = np.nan
    got = stats.roc_auc(y, a)
    want = [_sk_auc(y[:, j], a[:, j]) for j in range(y.shape[1])]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert stats.roc_auc(y[:, 0], a[:, 0]) == pytest.approx(want[0], abs=1e-12)
    # all tied: exactly one half; one class only: NaN
    assert stats.roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5
    assert np.isnan(stats.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))


def _delong_slow(y, a, b):
    """DeLong 1988 with structural components from explicit pairwise loops."""
    pos = [i for i in range(len(y)) if y[i] == 1]
    neg = [i for i in range(len(y)) if y[i] == 0]
    m, n = len(pos), len(neg)

    def psi(x, z):
        return 1.0 if x > z else 0.5 if x == z else 0.0

    v10 = np.zeros((2, m))
    v01 = np.zeros((2, n))
    for k, s in enumerate((a, b)):
        for ii, i in enumerate(pos):
            v10[k, ii] = sum(psi(s[i], s[j]) for j in neg) / n
        for jj, j in enumerate(neg):
            v01[k, jj] = sum(psi(s[i], s[j]) for i in pos) / m
    aucs = v10.mean(axis=1)
    s10, s01 = np.cov(v10), np.cov(v01)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    se = np.sqrt(var)
    z = (aucs[0] - aucs[1]) / se
    return aucs, se, z, 2 * norm.sf(abs(z))


@pytest.mark.parametrize("ties", [True, False])
def test_delong_matches_pairwise_structural_components(ties):
    y, a, b = _data(n=120, k=1, seed=3, ties=ties, prevalence=(0.35,))
    res = stats.delong_test(y[:, 0], a[:, 0], b[:, 0])
    aucs, se, z, p = _delong_slow(y[:, 0], a[:, 0], b[:, 0])
    assert res.auc_a == pytest.approx(aucs[0], abs=1e-12)
    assert res.auc_b == pytest.approx(aucs[1], abs=1e-12)
    assert res.auc_a == pytest.approx(roc_auc_score(y[:, 0], a[:, 0]), abs=1e-12)
    assert res.se == pytest.approx(se, rel=1e-9)
    assert res.z == pytest.approx(z, rel=1e-9)
    assert res.p_value == pytest.approx(p, rel=1e-9)
    assert res.ci_low == pytest.approx(res.diff - 1.959963984540054 * se, rel=1e-9)
    assert res.ci_high == pytest.approx(res.diff + 1.959963984540054 * se, rel=1e-9)


def test_delong_2d_and_identical_models():
    y, a, b = _data(n=200, k=3, seed=5)
    out = stats.delong_test(y, a, b)
    assert len(out) == 3
    for j, r in enumerate(out):
        assert r.auc_a == pytest.approx(_sk_auc(y[:, j], a[:, j]), abs=1e-12)
    same = stats.delong_test(y[:, 0], a[:, 0], a[:, 0])
    assert same.diff == 0 and same.p_value == 1.0


def _slow_bootstrap(y, a, b, idx):
    """Loop over resamples with sklearn, NaN where a finding lacks a class."""
    B, k = idx.shape[0], y.shape[1]
    da = np.full((k, B), np.nan)
    db = np.full((k, B), np.nan)
    for r in range(B):
        yy, aa, bb = y[idx[r]], a[idx[r]], b[idx[r]]
        for j in range(k):
            da[j, r] = _sk_auc(yy[:, j], aa[:, j])
            db[j, r] = _sk_auc(yy[:, j], bb[:, j])
    return da, db


def _slow_p(d):
    d = np.round(d[~np.isnan(d)], 12)  # sklearn's trapezoids are off by ~1e-16 where AUCs tie
    return min(1.0, 2 * min(1 + (d <= 0).sum(), 1 + (d >= 0).sum()) / (d.size + 1))


def test_paired_bootstrap_matches_slow_loop_on_same_indices():
    y, a, b = _data(n=150, k=4, seed=7)
    y[::5, 2] = np.nan
    idx = stats.bootstrap_indices(len(y), 200, seed=11)
    res = stats.paired_bootstrap(y, a, b, n_resamples=200, seed=11)
    # the seed reproduces bootstrap_indices, and explicit indices give the same result
    res2 = stats.paired_bootstrap(y, a, b, indices=idx)
    assert res2.macro == res.macro
    da, db = _slow_bootstrap(y, a, b, idx)
    d = da - db
    for j, f in enumerate(res.findings):
        assert f.auc_a == pytest.approx(_sk_auc(y[:, j], a[:, j]), abs=1e-12)
        assert f.diff == pytest.approx(f.auc_a - f.auc_b, abs=1e-15)
        ok = d[j][~np.isnan(d[j])]
        lo, hi = np.quantile(ok, [0.025, 0.975])
        assert f.ci_low == pytest.approx(lo, abs=1e-9)
        assert f.ci_high == pytest.approx(hi, abs=1e-9)
        assert f.p_value == pytest.approx(_slow_p(d[j]), abs=1e-12)
        assert f.n_degenerate == int(np.isnan(d[j]).sum())
    valid = ~np.isnan(d).any(axis=0)
    md = da[:, valid].mean(axis=0) - db[:, valid].mean(axis=0)
    lo, hi = np.quantile(md, [0.025, 0.975])
    assert res.macro.ci_low == pytest.approx(lo, abs=1e-9)
    assert res.macro.ci_high == pytest.approx(hi, abs=1e-9)
    assert res.macro.p_value == pytest.approx(_slow_p(md), abs=1e-12)
    assert res.macro.diff == pytest.approx(np.mean(res.diff), abs=1e-12)
    assert res.macro.n_degenerate == int((~valid).sum())


def test_paired_bootstrap_counts_degenerate_resamples():
    # 2 positives in 40 images: many resamples hold none of them
    y = np.zeros((40, 2))
    y[:2, 0] = 1
    y[:20, 1] = 1
    rng = np.random.default_rng(0)
    a, b = rng.random((40, 2)), rng.random((40, 2))
    idx = stats.bootstrap_indices(40, 300, seed=1)
    res = stats.paired_bootstrap(y, a, b, indices=idx)
    has_pos = (idx < 2).any(axis=1)
    assert res.findings[0].n_degenerate == int((~has_pos).sum()) > 0
    assert res.findings[1].n_degenerate == 0
    assert res.macro.n_degenerate == res.findings[0].n_degenerate
    da, db = _slow_bootstrap(y, a, b, idx)
    assert res.findings[0].p_value == pytest.approx(_slow_p(da[0] - db[0]), abs=1e-12)


def test_identical_models_give_p_one():
    y, a, _ = _data(n=100, k=2, seed=2)
    res = stats.paired_bootstrap(y, a, a, n_resamples=50)
    assert all(f.p_value == 1.0 and f.diff == 0 for f in res.findings)
    assert res.macro.p_value == 1.0


def test_bootstrap_auc_matches_slow_loop():
    y, a, _ = _data(n=120, k=3, seed=9)
    idx = stats.bootstrap_indices(len(y), 100, seed=4)
    res = stats.bootstrap_auc(y, a, n_resamples=100, seed=4)
    da, _ = _slow_bootstrap(y, a, a, idx)
    for j, f in enumerate(res.findings):
        ok = da[j][~np.isnan(da[j])]
        assert f.auc == pytest.approx(_sk_auc(y[:, j], a[:, j]), abs=1e-12)
        assert f.mean == pytest.approx(ok.mean(), abs=1e-9)
        assert f.sd == pytest.approx(ok.std(ddof=1), abs=1e-9)
    valid = ~np.isnan(da).any(axis=0)
    macro = da[:, valid].mean(axis=0)
    assert res.macro.mean == pytest.approx(macro.mean(), abs=1e-9)
    assert res.macro.sd == pytest.approx(macro.std(ddof=1), abs=1e-9)
    lo, hi = np.quantile(macro, [0.025, 0.975])
    assert (res.macro.ci_low, res.macro.ci_high) == pytest.approx((lo, hi), abs=1e-9)


def test_fdr_bh_matches_statsmodels_and_keeps_nan():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(20) ** 3, [0.0, 1.0, 0.04, 0.04]])
    want = multipletests(p, method="fdr_bh")[1]
    np.testing.assert_allclose(stats.fdr_bh(p), want, rtol=1e-12)
    with_nan = np.array([0.01, np.nan, 0.03, 0.2])
    got = stats.fdr_bh(with_nan)
    assert np.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2, 3]], multipletests([0.01, 0.03, 0.2], method="fdr_bh")[1])


def test_youden_threshold_and_metrics_match_brute_force():
    y, a, _ = _data(n=200, k=1, seed=12)
    y, s = y[:, 0], a[:, 0]
    best_j = -2.0  # the largest Youden J over every candidate threshold
    for t in np.unique(s):
        pred = s >= t
        j = (pred & (y == 1)).sum() / (y == 1).sum() - (pred & (y == 0)).sum() / (y == 0).sum()
        best_j = max(best_j, j)
    thr = stats.youden_threshold(y, s)
    m = stats.threshold_metrics(y, s, thr)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(best_j, abs=1e-12)
    pred = s >= thr
    assert m["accuracy"] == pytest.approx((pred == (y == 1)).mean())


def test_misaligned_arrays_are_refused():
    with pytest.raises(StatsError, match="align both"):
        stats.paired_bootstrap(np.zeros((5, 2)), np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(StatsError, match="1, 0 or NaN"):
        stats.roc_auc([0, 2, 1], [0.1, 0.2, 0.3])


def test_delong_reports_no_p_value_for_a_difference_without_variance():
    # one positive, one negative: AUC 1 vs 0 with zero estimated variance
    r = stats.delong_test(np.array([1.0, 0.0]), np.array([0.9, 0.1]), np.array([0.1, 0.9]))
    assert r.diff == 1.0 and r.se == 0.0
    assert np.isnan(r.p_value) and np.isnan(r.ci_low) and np.isnan(r.ci_high)
    same = stats.delong_test(np.array([1.0, 0.0]), np.array([0.9, 0.1]), np.array([0.8, 0.2]))
    assert same.diff == 0.0 and same.p_value == 1.0


def _seed_scores(y, n_seeds, strength, seed, ties=True):
    """Scores of ``n_seeds`` models of one initialisation: a shared signal plus seed noise."""
    rng = np.random.default_rng(seed)
    base = y * strength + rng.normal(size=y.shape)
    out = [base + 0.5 * rng.normal(size=y.shape) for _ in range(n_seeds)]
    return [np.round(s, 1) for s in out] if ties else out


def _slow_seed_aucs(y, scores, idx):
    """(S, k, B) resampled AUCs of each seed with sklearn, NaN where a finding lacks a class."""
    return np.array([[[_sk_auc(y[r, j], s[r, j]) for r in idx] for j in range(y.shape[1])]
                     for s in scores])


def test_paired_bootstrap_seeds_matches_a_direct_loop():
    y, _, _ = _data(n=140, k=3, seed=21, prevalence=(0.08, 0.3, 0.6))
    y[::6, 1] = np.nan
    sa, sb = _seed_scores(y, 3, 0.9, seed=1), _seed_scores(y, 2, 0.5, seed=2)
    # 102 resamples: not a multiple of 4, the unpacked cumulative sum (the paired test packs)
    idx = stats.bootstrap_indices(len(y), 102, seed=5)
    res = stats.paired_bootstrap_seeds(y, sa, sb, n_resamples=102, seed=5)
    assert stats.paired_bootstrap_seeds(y, sa, sb, indices=idx).macro == res.macro
    ba, bb = _slow_seed_aucs(y, sa, idx), _slow_seed_aucs(y, sb, idx)  # (S, k, B)
    # each resample: the seed-mean AUC of A minus that of B, on the same images
    d = ba.mean(axis=0) - bb.mean(axis=0)
    full_a = np.array([[_sk_auc(y[:, j], s[:, j]) for j in range(3)] for s in sa])
    full_b = np.array([[_sk_auc(y[:, j], s[:, j]) for j in range(3)] for s in sb])
    assert res.n_seeds_a == 3 and res.n_seeds_b == 2 and res.n_resamples == 102
    for j, f in enumerate(res.findings):
        assert f.auc_a == pytest.approx(full_a[:, j].mean(), abs=1e-12)
        assert f.auc_b == pytest.approx(full_b[:, j].mean(), abs=1e-12)
        assert f.diff == pytest.approx(f.auc_a - f.auc_b, abs=1e-15)
        ok = d[j][~np.isnan(d[j])]
        lo, hi = np.quantile(ok, [0.025, 0.975])
        assert (f.ci_low, f.ci_high) == pytest.approx((lo, hi), abs=1e-9)
        assert f.p_value == pytest.approx(_slow_p(d[j]), abs=1e-12)
        assert f.n_degenerate == int(np.isnan(d[j]).sum())
        # each side over its seeds: mean, SD (ddof=1) and the bootstrap SD of the seed mean
        a = res.a[j]
        assert a.mean == pytest.approx(full_a[:, j].mean(), abs=1e-12)
        assert a.sd == pytest.approx(full_a[:, j].std(ddof=1), abs=1e-12)
        assert a.per_seed == pytest.approx(tuple(full_a[:, j]), abs=1e-12)
        m = ba[:, j].mean(axis=0)
        assert a.bootstrap_sd == pytest.approx(m[~np.isnan(m)].std(ddof=1), abs=1e-9)
        for s in range(3):
            one = ba[s, j][~np.isnan(ba[s, j])]
            assert a.per_seed_bootstrap_sd[s] == pytest.approx(one.std(ddof=1), abs=1e-9)
    valid = ~np.isnan(d).any(axis=0)
    md = ba.mean(axis=0)[:, valid].mean(axis=0) - bb.mean(axis=0)[:, valid].mean(axis=0)
    assert res.macro.diff == pytest.approx(full_a.mean() - full_b.mean(), abs=1e-12)
    assert res.macro.p_value == pytest.approx(_slow_p(md), abs=1e-12)
    lo, hi = np.quantile(md, [0.025, 0.975])
    assert (res.macro.ci_low, res.macro.ci_high) == pytest.approx((lo, hi), abs=1e-9)
    assert res.macro.n_degenerate == int((~valid).sum())
    macro_seeds = full_b.mean(axis=1)
    assert res.b_macro.mean == pytest.approx(macro_seeds.mean(), abs=1e-12)
    assert res.b_macro.sd == pytest.approx(macro_seeds.std(ddof=1), abs=1e-12)
    mb = bb.mean(axis=0)[:, valid].mean(axis=0)
    assert res.b_macro.bootstrap_sd == pytest.approx(mb.std(ddof=1), abs=1e-9)
    assert res.per_seed == []


def test_paired_bootstrap_seeds_with_one_seed_equals_paired_bootstrap():
    y, a, b = _data(n=150, k=4, seed=7)
    y[::5, 2] = np.nan
    one = stats.paired_bootstrap(y, a, b, n_resamples=200, seed=11)
    res = stats.paired_bootstrap_seeds(y, [a], [b], n_resamples=200, seed=11)
    assert res.findings == one.findings and res.macro == one.macro
    assert res.a[0].sd is None and res.a_macro.sd is None
    boot = stats.bootstrap_auc(y, a, n_resamples=200, seed=11)
    assert [s.bootstrap_sd for s in res.a] == pytest.approx([f.sd for f in boot.findings], abs=1e-12)
    assert res.a_macro.bootstrap_sd == pytest.approx(boot.macro.sd, abs=1e-12)


def test_paired_bootstrap_seeds_per_seed_on_the_same_resamples():
    y, _, _ = _data(n=120, k=2, seed=3, prevalence=(0.2, 0.5))
    sa, sb = _seed_scores(y, 2, 0.8, seed=4), _seed_scores(y, 2, 0.3, seed=5)
    res = stats.paired_bootstrap_seeds(y, sa, sb, n_resamples=120, seed=2, per_seed=True)
    assert [(p.index_a, p.index_b) for p in res.per_seed] == [(0, 0), (1, 1)]
    for p in res.per_seed:
        want = stats.paired_bootstrap(y, sa[p.index_a], sb[p.index_b], n_resamples=120, seed=2)
        assert p.result.findings == want.findings and p.result.macro == want.macro
    crossed = stats.paired_bootstrap_seeds(y, sa, sb[:1], n_resamples=20, seed_pairs=[(1, 0)])
    assert [(p.index_a, p.index_b) for p in crossed.per_seed] == [(1, 0)]
    with pytest.raises(StatsError, match="A has 2 seeds and B 1"):
        stats.paired_bootstrap_seeds(y, sa, sb[:1], n_resamples=20, per_seed=True)
    with pytest.raises(StatsError, match=r"scores_b\[1\]: .*align both"):
        stats.paired_bootstrap_seeds(y, sa, [sb[0], sb[1][:-1]], n_resamples=20)


def test_bootstrap_is_exact_beyond_16_bit_counts():
    # 2**16 images and more: counts and block totals leave uint16 for float32
    rng = np.random.default_rng(8)
    n = 70_000
    y = (rng.random(n) < 0.3).astype(float)
    a = np.round(y + rng.normal(size=n), 2)  # ties across classes too
    b = np.round(0.5 * y + rng.normal(size=n), 2)
    idx = stats.bootstrap_indices(n, 3, seed=2)
    res = stats.paired_bootstrap(y, a, b, indices=idx)
    da, db = _slow_bootstrap(y[:, None], a[:, None], b[:, None], idx)
    d = np.round(da - db, 12)
    assert res.findings[0].p_value == pytest.approx(_slow_p(d[0]), abs=1e-12)
    lo, hi = np.quantile(d[0], [0.025, 0.975])
    assert (res.findings[0].ci_low, res.findings[0].ci_high) == pytest.approx((lo, hi), abs=1e-12)
    one = stats.bootstrap_auc(y, a, indices=idx).findings[0]
    assert (one.mean, one.sd) == pytest.approx((da[0].mean(), da[0].std(ddof=1)), abs=1e-12)
