"""The paired bootstrap over seeds: each resample draws the test images once and averages each
init's AUC over its seeds on those images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..choices import DEFAULT_RESAMPLES
from ..errors import StatsError
from .auc import CONFIDENCE, _as_2d
from .auc import roc_auc
from .bootstrap import PairedBootstrapResult, PairedDiff, _bootstrap_aucs, _paired_diffs

# --------------------------------------------------------------------------- paired bootstrap over seeds


@dataclass(frozen=True)
class SeedAUC:
    """One initialisation's AUC over its seeds (one finding, or the macro average).

    ``mean`` and ``sd`` are over the seeds' AUCs on all test images (``sd`` with
    ddof=1, None for one seed); ``bootstrap_sd`` is the SD over bootstrap
    resamples of the seed-mean AUC (for one seed: the SD of the bootstrap AUCs,
    the "± SD" the paper reported), ``per_seed_bootstrap_sd`` the same per seed.
    """

    mean: float
    sd: float | None
    bootstrap_sd: float
    per_seed: tuple[float, ...]
    per_seed_bootstrap_sd: tuple[float, ...]


@dataclass(frozen=True)
class SeedPairResult:
    """Seed ``index_a`` of A against seed ``index_b`` of B on the resamples of the pooled test."""

    index_a: int
    index_b: int
    result: PairedBootstrapResult


@dataclass(frozen=True)
class PairedSeedsResult:
    """Paired bootstrap of the seed-mean AUC of A minus that of B, per finding and macro.

    ``findings``/``macro`` hold the seed-mean AUCs (``auc_a``, ``auc_b``), their
    difference and its CI and p-value; ``a``/``b`` (one :class:`SeedAUC` per
    finding) and ``a_macro``/``b_macro`` describe each side's seeds.
    """

    findings: list[PairedDiff]
    macro: PairedDiff
    a: list[SeedAUC]
    b: list[SeedAUC]
    a_macro: SeedAUC
    b_macro: SeedAUC
    per_seed: list[SeedPairResult]
    n_seeds_a: int
    n_seeds_b: int
    n_resamples: int
    seed: int
    level: float = CONFIDENCE


def _boot_sd(x: np.ndarray) -> float:
    ok = x[~np.isnan(x)]
    return float(ok.std(ddof=1)) if ok.size > 1 else float("nan")


def _seed_auc(full: np.ndarray, boot: np.ndarray) -> SeedAUC:
    """``full`` (S,) AUCs on all images, ``boot`` (S, B) resampled AUCs of the S seeds."""
    sd = float(np.std(full, ddof=1)) if full.size > 1 else None
    return SeedAUC(float(np.mean(full)), sd, _boot_sd(boot.mean(axis=0)),
                   tuple(float(v) for v in full), tuple(_boot_sd(r) for r in boot))


def _score_list(y_true, scores, side: str) -> list[np.ndarray]:
    if isinstance(scores, np.ndarray) and scores.ndim == np.asarray(y_true).ndim:
        raise StatsError(f"scores_{side} must be a sequence of score arrays, one per seed - wrap one array in a list")
    out = []
    for i, s in enumerate(scores):
        try:
            out.append(_as_2d(y_true, s)[1][0])
        except StatsError as exc:
            raise StatsError(f"scores_{side}[{i}]: {exc}") from None
    if not out:
        raise StatsError(f"scores_{side} holds no seed - give one score array per seed")
    return out


def paired_bootstrap_seeds(
    y_true,
    scores_a: Sequence,
    scores_b: Sequence,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    *,
    indices: np.ndarray | None = None,
    level: float = CONFIDENCE,
    per_seed: bool = False,
    seed_pairs: Sequence[tuple[int, int]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> PairedSeedsResult:
    """Paired bootstrap of initialisation A against B, each trained with several seeds.

    ``scores_a`` and ``scores_b`` hold one score array per seed, all aligned with
    ``y_true`` on the same images and findings.  Each resample draws the images
    once (``indices`` overrides the draw, as in :func:`paired_bootstrap`) and
    uses them for every seed of both sides and every finding; on it, each side's
    AUC per finding is the mean over its seeds, and the difference A - B per
    finding and of the macro average (mean over findings) gives the percentile
    CI and the two-sided p-value of :func:`paired_bootstrap`, with degenerate
    resamples counted and left out the same way.  ``diff`` on the full data is
    the difference of the seed-mean AUCs.  With one seed per side the result
    equals :func:`paired_bootstrap`.

    ``per_seed`` adds seed i of A against seed i of B (``seed_pairs`` names other
    pairs of positions) on the same resamples.
    """
    y = np.asarray(y_true, dtype=float)
    sa, sb = _score_list(y_true, scores_a, "a"), _score_list(y_true, scores_b, "b")
    y = _as_2d(y, sa[0])[0]
    if seed_pairs is None and per_seed:
        if len(sa) != len(sb):
            raise StatsError(
                f"`per_seed` pairs seed i of A with seed i of B, but A has {len(sa)} seeds and B "
                f"{len(sb)} - give `seed_pairs` or the same number of seeds"
            )
        seed_pairs = [(i, i) for i in range(len(sa))]
    for ia, ib in seed_pairs or ():
        if not (0 <= ia < len(sa) and 0 <= ib < len(sb)):
            raise StatsError(f"`seed_pairs` ({ia}, {ib}) is not a seed of A (0..{len(sa) - 1}) "
                             f"and of B (0..{len(sb) - 1})")
    aucs = _bootstrap_aucs(y, sa + sb, n_resamples, seed, indices, progress)  # (S, k, B)
    boot_a, boot_b = aucs[: len(sa)], aucs[len(sa):]
    full_a = np.array([np.atleast_1d(roc_auc(y, s)) for s in sa])  # (S_a, k)
    full_b = np.array([np.atleast_1d(roc_auc(y, s)) for s in sb])
    mean_a, mean_b = boot_a.mean(axis=0), boot_b.mean(axis=0)  # (k, B)
    findings, macro = _paired_diffs(y, full_a.mean(axis=0), full_b.mean(axis=0), mean_a, mean_b, level)

    def side(full: np.ndarray, boot: np.ndarray) -> tuple[list[SeedAUC], SeedAUC]:
        per = [_seed_auc(full[:, j], boot[:, j]) for j in range(y.shape[1])]
        valid = ~np.isnan(boot).any(axis=1)  # (S, B): the same for every seed
        macro_boot = np.where(valid, boot.mean(axis=1), np.nan)  # (S, B)
        return per, _seed_auc(full.mean(axis=1), macro_boot)

    a, a_macro = side(full_a, boot_a)
    b, b_macro = side(full_b, boot_b)
    pairs = []
    for ia, ib in seed_pairs or ():
        f, m = _paired_diffs(y, full_a[ia], full_b[ib], boot_a[ia], boot_b[ib], level)
        pairs.append(SeedPairResult(ia, ib, PairedBootstrapResult(f, m, aucs.shape[2], seed, level)))
    return PairedSeedsResult(findings, macro, a, b, a_macro, b_macro, pairs, len(sa), len(sb),
                             aucs.shape[2], seed, level)
