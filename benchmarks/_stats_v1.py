"""The paired-bootstrap engine of vitmed_cli.stats before the block engine (as on main at 8bb6707).

Kept unchanged, only to measure the current engine against it in the same run
(benchmarks/compare_stats.py); nothing in vitmed imports it.  Per finding and
model it bins the labelled images around the distinct scores of the smaller
class (3 * levels + 1 rows) and parallelises over findings within each block of
32 resamples.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np

from vitmed_cli.errors import StatsError
from vitmed_cli.stats.bootstrap import _CHUNK, _index_blocks


def _counts_t(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each image occurs in each resample, as float32 ``(n, c)`` (images x resamples).

    Counted row by row (each row's scatter stays in cache), then transposed;
    float32 holds counts and (twice the) bin totals exactly below 2**23 images.
    """
    c = idx.shape[0]
    flat = idx.astype(np.int64) + (np.arange(c, dtype=np.int64) * n)[:, None]
    w = np.bincount(flat.ravel(), minlength=n * c).reshape(c, n)
    # 2 * (a bin total) must stay an exact whole number: float32 below 2**23 images
    return np.ascontiguousarray(w.T, dtype=np.float32 if n < 2**23 else np.float64)


class _Engine:
    """Resampled AUCs of several models on several findings from per-image counts.

    For each finding and model, the labelled images are binned once: the
    distinct scores of the smaller class are "levels"; each image of the other
    class falls strictly between two levels or on one (a tie).  One sparse
    0/1 matrix (bins x images) for all findings and models turns a block of
    resample counts into weighted bin totals in a single product; per resample
    the AUC numerator is then a cumulative sum over at most 2 * levels + 1
    bins, so no resample is ever sorted.
    """

    def __init__(self, y: np.ndarray, models: Sequence[np.ndarray]):
        from scipy import sparse

        n, k = y.shape
        rows, cols = [], []
        self.blocks = []  # (finding, model, first row, n_levels)
        r0 = 0
        for j in range(k):
            labelled = ~np.isnan(y[:, j])
            for mi, m in enumerate(models):
                s = m[:, j]
                pos = np.flatnonzero(labelled & (y[:, j] == 1))
                neg = np.flatnonzero(labelled & (y[:, j] == 0))
                sp, sn = s[pos], s[neg]
                lev_p, lev_n = np.unique(sp), np.unique(sn)
                flip = lev_n.size < lev_p.size
                if flip:  # AUC(y, s) = AUC(1 - y, -s): level the smaller class
                    pos, neg, sp, sn = neg, pos, -sn, -sp
                    lev_p = np.unique(sp)
                nlev = lev_p.size
                t = np.searchsorted(lev_p, sn, side="left")
                tie = (t < nlev) & (lev_p[np.minimum(t, max(nlev - 1, 0))] == sn) if nlev else np.zeros(sn.size, bool)
                nbin = 2 * t + tie
                plev = np.searchsorted(lev_p, sp)
                rows += [r0 + nbin, r0 + 2 * nlev + 1 + plev]
                cols += [neg, pos]
                self.blocks.append((j, mi, r0, nlev))
                r0 += 3 * nlev + 1
        self.n_rows = r0
        rr = np.concatenate(rows) if rows else np.empty(0, np.int64)
        cc = np.concatenate(cols) if cols else np.empty(0, np.int64)
        self.g = sparse.csr_matrix(
            (np.ones(rr.size, dtype=np.float32), (rr, cc)), shape=(max(r0, 1), n)
        )
        self.g.sum_duplicates()
        # one row slice per finding and model: each product is small enough that
        # transposing it to (resamples, bins) stays in cache
        self.parts = [
            (j, mi, self.g[r0 : r0 + 3 * nlev + 1], nlev) for j, mi, r0, nlev in self.blocks if nlev
        ]
        self.k, self.n_models = k, len(models)
        workers = min(len(self.parts), os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def aucs(self, wt: np.ndarray) -> np.ndarray:
        """AUCs ``(n_models, n_findings, c)`` for counts ``wt`` (n, c); NaN where degenerate.

        Bin totals stay in the (bins, resamples) layout of the sparse product, so
        nothing is transposed; they are whole numbers below 2**24, exact in float32
        (see :func:`_counts_t`), and only the final products are taken in float64.
        The level class is cumulated (``nlev`` rows, not the other class's
        ``2 * nlev + 1``), and findings run on a thread pool: the sparse product and
        the cumulative sum release the GIL.
        """
        c = wt.shape[1]
        out = np.full((self.n_models, self.k, c), np.nan)

        def one(part) -> None:
            j, mi, g, nlev = part
            tot = g @ wt  # (3 * nlev + 1, c) bin totals
            other = tot[: 2 * nlev + 1]
            levels = tot[2 * nlev + 1 :]
            # above[k] = level-class weight at levels >= k (above[nlev] = 0)
            above = np.zeros((nlev + 1, c), dtype=tot.dtype)
            np.cumsum(levels[::-1], axis=0, out=above[nlev - 1 :: -1])
            # twice the AUC numerator: other-class weight strictly between levels k-1 and k
            # counts every level >= k; at a tie with level k, levels > k and half of level k
            num2 = np.einsum("ij,ij->j", other[0::2], 2 * above, dtype=np.float64)
            num2 += np.einsum("ij,ij->j", other[1::2], 2 * above[1:] + levels, dtype=np.float64)
            den = above[0].astype(np.float64) * other.sum(axis=0, dtype=np.float64)
            ok = den > 0
            out[mi, j, ok] = num2[ok] / (2.0 * den[ok])

        if self.pool is None:
            for part in self.parts:
                one(part)
        else:
            list(self.pool.map(one, self.parts))
        return out


def _bootstrap_aucs(
    y: np.ndarray,
    models: Sequence[np.ndarray],
    n_resamples: int,
    seed: int,
    indices: np.ndarray | None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Resampled AUCs, shape ``(n_models, n_findings, n_resamples)``; NaN = degenerate resample."""
    n, k = y.shape
    if indices is not None:
        indices = np.asarray(indices)
        if indices.ndim != 2 or indices.shape[1] != n:
            raise StatsError(f"indices must have shape (n_resamples, {n}), got {indices.shape}")
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise StatsError(f"indices must lie in 0..{n - 1}")
        n_resamples = indices.shape[0]
        blocks: Iterator[np.ndarray] = (
            indices[i : i + _CHUNK] for i in range(0, n_resamples, _CHUNK)
        )
    else:
        if n_resamples < 1:
            raise StatsError(f"n_resamples must be at least 1, got {n_resamples}")
        blocks = _index_blocks(n, n_resamples, seed)
    engine = _Engine(y, models)
    out = np.empty((len(models), k, n_resamples))
    done = 0
    try:
        for idx in blocks:
            c = idx.shape[0]
            out[:, :, done : done + c] = engine.aucs(_counts_t(idx, n))
            done += c
            if progress is not None:
                progress(c)
    finally:
        engine.close()
    return out
