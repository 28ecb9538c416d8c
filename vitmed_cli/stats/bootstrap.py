"""The bootstrap engine (resampled AUCs from per-image counts) and the paired and single-model
bootstraps built on it."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..choices import DEFAULT_RESAMPLES
from ..errors import StatsError
from .auc import CONFIDENCE, _as_2d, roc_auc

_CHUNK = 32  # resamples per draw: a block of counts stays in cache
_BLOCK_CELLS = 1 << 20  # images x resamples counted per block (several draws when the test set is small)
_MAX_WORKERS = 8

# --------------------------------------------------------------------------- bootstrap engine


def _index_blocks(n: int, n_resamples: int, seed: int, block: int = _CHUNK) -> Iterator[np.ndarray]:
    """Resampled image indices, ``block`` resamples at a time, from one seeded stream."""
    rng = np.random.default_rng(seed)
    dtype = np.int32 if n < 2**31 - 1 else np.int64
    done = 0
    while done < n_resamples:
        c = min(block, n_resamples - done)
        yield rng.integers(0, n, size=(c, n), dtype=dtype)
        done += c


def bootstrap_indices(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """The resampled image indices ``(n_resamples, n)`` that the bootstrap functions use for ``seed``.

    Row b lists the images (with repetition) of resample b; tests and slow
    reference loops can reuse them to reproduce a bootstrap exactly.
    """
    blocks = list(_index_blocks(n, n_resamples, seed))
    return np.concatenate(blocks) if blocks else np.empty((0, n), dtype=np.int64)


def _count_dtype(n: int) -> type:
    """The narrowest type that holds every count, block total and cumulative total exactly.

    Each of those is at most n (a resample draws n images): uint16 below 2**16
    images (integer sums vectorise best), float32 below 2**24, float64 above.
    """
    return np.uint16 if n < 2**16 else np.float32 if n < 2**24 else np.float64


def _counts_t(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each image occurs in each resample, ``(n, c)`` (images x resamples).

    Counted resample by resample (each scatter stays in cache) into the narrow
    type, then transposed.
    """
    w = np.empty((idx.shape[0], n), dtype=_count_dtype(n))
    for r in range(idx.shape[0]):
        w[r] = np.bincount(idx[r], minlength=n)
    return np.ascontiguousarray(w.T)


def _segments(pos: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Blocks of one finding and model: (row of each image, blocks holding a tie, number of blocks).

    Sorted by score, the labelled images form runs of negatives and positives.
    Block b is a run of negatives (row b) followed by a run of positives (row
    nb + b); a score held by a positive and a negative is a block of its own.
    Per resample the AUC numerator is then sum_b P_b * (negatives up to block b),
    less half of P_b * N_b for the tie blocks, over 2 * nb rows instead of n images.
    """
    order = np.argsort(s, kind="mergesort")
    ss, pp = s[order], pos[order]
    new_value = np.empty(ss.size, dtype=bool)
    new_value[0] = True
    np.not_equal(ss[1:], ss[:-1], out=new_value[1:])
    vid = np.cumsum(new_value) - 1  # distinct score of each sorted image
    nv = int(vid[-1]) + 1
    has_p = np.zeros(nv, dtype=bool)
    has_n = np.zeros(nv, dtype=bool)
    has_p[vid[pp]] = True
    has_n[vid[~pp]] = True
    tie = has_p & has_n
    start = tie.copy()  # a new block at a tie, after a tie, and at negatives after positives
    start[1:] |= tie[:-1] | (has_n[1:] & has_p[:-1])
    start[0] = True
    block_of_value = np.cumsum(start) - 1
    nb = int(block_of_value[-1]) + 1
    block = block_of_value[vid]
    rows = np.empty(s.size, dtype=np.int64)
    rows[order] = np.where(pp, nb + block, block)
    return rows, np.unique(block_of_value[tie]), nb


class _Engine:
    """Resampled AUCs of several models on several findings from per-image counts.

    For each finding and model the labelled images are grouped once into blocks
    of consecutive scores (see :func:`_segments`); one sparse 0/1 matrix (rows x
    images) turns a block of resample counts into every block's negative and
    positive weight in a single product, and a cumulative sum over the blocks
    gives the AUC numerator, so no resample is ever sorted.  Counts, block totals
    and their cumulative sums are whole numbers up to n, exact in
    :func:`_count_dtype`; products are taken in float64.
    """

    def __init__(self, y: np.ndarray, models: Sequence[np.ndarray]):
        from scipy import sparse

        n, k = y.shape
        self.pos_rows: list[int] = []
        self.pos_cols: list[np.ndarray] = []
        rows, cols, parts = [], [], []
        r0 = 0
        for j in range(k):
            labelled = np.flatnonzero(~np.isnan(y[:, j]))
            pos = y[labelled, j] == 1
            if pos.all() or not pos.any():
                continue  # NaN for every resample
            self.pos_rows.append(j)
            self.pos_cols.append(labelled[pos])
            for mi, m in enumerate(models):
                r, ties, nb = _segments(pos, m[labelled, j])
                rows.append(r0 + r)
                cols.append(labelled)
                parts.append((j, mi, r0, nb, ties))
                r0 += 2 * nb
        rr = np.concatenate(rows) if rows else np.empty(0, np.int64)
        cc = np.concatenate(cols) if cols else np.empty(0, np.int64)
        dtype = _count_dtype(n)
        g = sparse.csr_matrix((np.ones(rr.size, dtype=dtype), (rr, cc)), shape=(max(r0, 1), n))
        # one row slice per finding and model: its product stays in cache
        self.parts = [(j, mi, g[r0 : r0 + 2 * nb], nb, ties) for j, mi, r0, nb, ties in parts]
        self.k, self.n_models = k, len(models)
        # the positives' weight per finding, shared by every model
        pr = np.repeat(np.arange(len(self.pos_cols)), [c.size for c in self.pos_cols])
        pc = np.concatenate(self.pos_cols) if self.pos_cols else np.empty(0, np.int64)
        self.pos_g = sparse.csr_matrix((np.ones(pc.size, dtype=dtype), (pr, pc)),
                                       shape=(max(len(self.pos_cols), 1), n))
        self.pos_index = {j: i for i, j in enumerate(self.pos_rows)}

    def aucs(self, wt: np.ndarray) -> np.ndarray:
        """AUCs ``(n_models, n_findings, c)`` for counts ``wt`` (n, c); NaN where degenerate."""
        c = wt.shape[1]
        out = np.full((self.n_models, self.k, c), np.nan)
        pos_total = (self.pos_g @ wt).astype(np.float64)  # (findings with both classes, c)
        small = wt.dtype == np.uint16
        packed = small and c % 4 == 0
        # sum of products <= positives x negatives <= (n / 2)**2 < 2**30 below 2**16 images
        acc = np.uint32 if small else np.float64
        for j, mi, g, nb, ties in self.parts:
            tot = g @ wt  # (2 * nb, c): negatives of each block, then positives
            neg, pos = tot[:nb], tot[nb:]
            if packed:  # four 16-bit totals per 64-bit add: no lane carries, as every total <= n < 2**16
                upto = np.cumsum(neg.view(np.uint64), axis=0, dtype=np.uint64).view(np.uint16)
            else:
                upto = np.cumsum(neg, axis=0, dtype=tot.dtype)  # negatives in blocks <= b
            num2 = 2.0 * np.einsum("ij,ij->j", pos, upto, dtype=acc).astype(np.float64)
            if ties.size:  # a tie counts 1/2, not 1
                num2 -= np.einsum("ij,ij->j", pos[ties], neg[ties], dtype=acc)
            den = upto[-1].astype(np.float64) * pos_total[self.pos_index[j]]
            ok = den > 0
            out[mi, j, ok] = num2[ok] / (2.0 * den[ok])
        return out


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, _MAX_WORKERS))


def _bootstrap_aucs(
    y: np.ndarray,
    models: Sequence[np.ndarray],
    n_resamples: int,
    seed: int,
    indices: np.ndarray | None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Resampled AUCs, shape ``(n_models, n_findings, n_resamples)``; NaN = degenerate resample.

    The indices are drawn in order from one stream (as :func:`bootstrap_indices`
    returns them); blocks of resamples are counted and scored on a thread pool
    (the sparse products and numpy's array loops run without the GIL), with at
    most two blocks per thread in flight, so memory stays a few blocks of counts.
    """
    n, k = y.shape
    if indices is not None:
        indices = np.asarray(indices)
        if indices.ndim != 2 or indices.shape[1] != n:
            raise StatsError(f"indices must have shape (n_resamples, {n}), got {indices.shape}")
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise StatsError(f"indices must lie in 0..{n - 1}")
        n_resamples = indices.shape[0]
        draws: Iterator[np.ndarray] = (indices[i : i + _CHUNK] for i in range(0, n_resamples, _CHUNK))
    else:
        if n_resamples < 1:
            raise StatsError(f"n_resamples must be at least 1, got {n_resamples}")
        draws = _index_blocks(n, n_resamples, seed)
    # small test sets: several draws per block, so per-block overhead stays small
    per_block = max(1, min(32, _BLOCK_CELLS // (_CHUNK * max(n, 1))))

    def blocks() -> Iterator[np.ndarray]:
        buf: list[np.ndarray] = []
        for idx in draws:
            buf.append(idx)
            if len(buf) == per_block:
                yield buf[0] if per_block == 1 else np.concatenate(buf)
                buf = []
        if buf:
            yield np.concatenate(buf)

    engine = _Engine(y, models)
    out = np.empty((len(models), k, n_resamples))
    done = 0

    def job(idx: np.ndarray) -> np.ndarray:
        return engine.aucs(_counts_t(idx, n))

    def put(c: int, aucs: np.ndarray) -> None:
        nonlocal done
        out[:, :, done : done + c] = aucs
        done += c
        if progress is not None:
            progress(c)

    workers = _workers()
    if workers == 1:
        for idx in blocks():
            put(idx.shape[0], job(idx))
        return out
    pool = ThreadPoolExecutor(workers)
    pending: deque = deque()
    try:
        for idx in blocks():
            pending.append((idx.shape[0], pool.submit(job, idx)))
            while len(pending) > 2 * workers:
                c, fut = pending.popleft()
                put(c, fut.result())
        while pending:
            c, fut = pending.popleft()
            put(c, fut.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _percentile_ci(x: np.ndarray, level: float) -> tuple[float, float]:
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _two_sided_p(d: np.ndarray) -> float:
    """Bootstrap p for H0: diff = 0, from the resampled differences (NaN excluded).

    p = min(1, 2 * min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (B + 1)): twice the
    smaller tail of the bootstrap distribution beyond zero.  It is the p-value
    that matches the percentile CI (p < 1 - level exactly when the CI excludes
    0, up to the +1), and the +1 keeps p from being reported as 0 with a finite
    number of resamples (smallest p = 2 / (B + 1)).
    """
    d = d[~np.isnan(d)]
    if d.size == 0:
        return float("nan")
    le = 1 + int((d <= 0).sum())
    ge = 1 + int((d >= 0).sum())
    return float(min(1.0, 2.0 * min(le, ge) / (d.size + 1)))


# --------------------------------------------------------------------------- paired bootstrap


@dataclass(frozen=True)
class PairedDiff:
    """One finding (or the macro average): AUCs on the full data, difference a - b, bootstrap CI and p."""

    auc_a: float
    auc_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_degenerate: int
    n_positive: int | None = None
    n_negative: int | None = None


@dataclass(frozen=True)
class PairedBootstrapResult:
    """Per-finding and macro-average paired bootstrap of AUC(a) - AUC(b)."""

    findings: list[PairedDiff]
    macro: PairedDiff
    n_resamples: int
    seed: int
    level: float = CONFIDENCE

    # convenience views, one value per finding
    @property
    def diff(self) -> np.ndarray:
        return np.array([f.diff for f in self.findings])

    @property
    def ci_low(self) -> np.ndarray:
        return np.array([f.ci_low for f in self.findings])

    @property
    def ci_high(self) -> np.ndarray:
        return np.array([f.ci_high for f in self.findings])

    @property
    def p_value(self) -> np.ndarray:
        return np.array([f.p_value for f in self.findings])

    @property
    def n_degenerate(self) -> np.ndarray:
        return np.array([f.n_degenerate for f in self.findings])


def paired_bootstrap(
    y_true,
    scores_a,
    scores_b,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    *,
    indices: np.ndarray | None = None,
    level: float = CONFIDENCE,
    progress: Callable[[int], None] | None = None,
) -> PairedBootstrapResult:
    """Paired bootstrap of AUC(a) - AUC(b) per finding and for the macro-average AUC.

    Each resample draws the images with replacement once and uses them for both
    models and all findings (``indices`` overrides the draw; see
    :func:`bootstrap_indices`).  ``diff`` is the difference on the full data;
    the CI is the percentile ``level`` interval of the resampled differences;
    ``p_value`` is two-sided, p = min(1, 2 * min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (B + 1))
    with B the valid resamples, the p-value dual to the percentile CI.

    A resample in which a finding has no positive or no negative is degenerate
    for that finding: counted in ``n_degenerate`` and left out of that finding.
    The macro average uses only resamples valid for every finding (its
    ``n_degenerate`` counts the others), so it is never an average over a
    changing set of findings.  Findings whose full data have no positive or no
    negative should be removed first (their AUC is NaN, and so is the macro).
    """
    y, (a, b), _flat = _as_2d(y_true, scores_a, scores_b)
    aucs = _bootstrap_aucs(y, [a, b], n_resamples, seed, indices, progress)
    full_a, full_b = np.atleast_1d(roc_auc(y, a)), np.atleast_1d(roc_auc(y, b))
    findings, macro = _paired_diffs(y, full_a, full_b, aucs[0], aucs[1], level)
    return PairedBootstrapResult(findings, macro, aucs.shape[2], seed, level)


def _paired_diffs(y: np.ndarray, full_a: np.ndarray, full_b: np.ndarray, boot_a: np.ndarray,
                  boot_b: np.ndarray, level: float) -> tuple[list[PairedDiff], PairedDiff]:
    """Per-finding and macro differences from full-data AUCs ``(k,)`` and resampled AUCs ``(k, B)``."""
    d = boot_a - boot_b  # (k, B)
    findings = []
    for j in range(y.shape[1]):
        lo, hi = _percentile_ci(d[j], level)
        labelled = y[~np.isnan(y[:, j]), j]
        findings.append(
            PairedDiff(
                float(full_a[j]), float(full_b[j]), float(full_a[j] - full_b[j]), lo, hi,
                _two_sided_p(d[j]), int(np.isnan(d[j]).sum()),
                int((labelled == 1).sum()), int((labelled == 0).sum()),
            )
        )
    valid = ~np.isnan(d).any(axis=0)
    md = np.where(valid, boot_a.mean(axis=0) - boot_b.mean(axis=0), np.nan)
    ma, mb = float(np.mean(full_a)), float(np.mean(full_b))
    lo, hi = _percentile_ci(md, level)
    macro = PairedDiff(ma, mb, ma - mb, lo, hi, _two_sided_p(md), int((~valid).sum()))
    return findings, macro


# --------------------------------------------------------------------------- single-model bootstrap


@dataclass(frozen=True)
class AUCSummary:
    """AUC on the full data with the mean, SD and percentile CI over bootstrap resamples."""

    auc: float
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    n_degenerate: int


@dataclass(frozen=True)
class BootstrapAUC:
    findings: list[AUCSummary]
    macro: AUCSummary
    n_resamples: int
    seed: int


def _summary(full: float, x: np.ndarray, level: float) -> AUCSummary:
    ok = x[~np.isnan(x)]
    lo, hi = _percentile_ci(x, level)
    mean = float(ok.mean()) if ok.size else float("nan")
    sd = float(ok.std(ddof=1)) if ok.size > 1 else float("nan")
    return AUCSummary(float(full), mean, sd, lo, hi, int(x.size - ok.size))


def bootstrap_auc(
    y_true,
    scores,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    *,
    indices: np.ndarray | None = None,
    level: float = CONFIDENCE,
) -> BootstrapAUC:
    """Bootstrap AUC per finding and of the macro average for one model.

    The macro summary's mean, SD and CI are over the resampled macro-average
    AUC (resamples valid for every finding), not the spread of findings.
    """
    y, (s,), _flat = _as_2d(y_true, scores)
    aucs = _bootstrap_aucs(y, [s], n_resamples, seed, indices)[0]  # (k, B)
    full = np.atleast_1d(roc_auc(y, s))
    findings = [_summary(full[j], aucs[j], level) for j in range(y.shape[1])]
    valid = ~np.isnan(aucs).any(axis=0)
    macro_b = np.where(valid, aucs.mean(axis=0), np.nan)
    macro = _summary(float(np.mean(full)), macro_b, level)
    return BootstrapAUC(findings, macro, aucs.shape[1], seed)
