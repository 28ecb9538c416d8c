"""Paired comparisons of evaluations: statistics per pair, FDR within the call, stored rows."""

from __future__ import annotations

from typing import Any, Sequence


from .. import stats
from ..choices import DEFAULT_ALPHA, DEFAULT_RESAMPLES, Part
from ..errors import InputError, RefusedError, StatsError
from ..evaluations.store import EvalArrays, load_evaluation_arrays
from ..events import Listener, progress as report_progress
from ..registry.db import Registry
from ..registry.models import MACRO
from .align import Aligned, align_evaluations
from .choose import _choose, _Pick, refuse_mixed_tuning
from .seeds import _compare_inits_over_seeds
from .store import FDR_METHOD, P_VALUE_METHOD, _adjust, _check_numbers, _ordered, _store, floor_warnings, pair_warnings

# --------------------------------------------------------------------------- comparing


def _pair_stats(al: Aligned, n_resamples: int, seed: int, progress) -> dict[str, Any]:
    boot = stats.paired_bootstrap(al.y_true, al.a, al.b, n_resamples=n_resamples, seed=seed,
                                  progress=progress)
    delong = stats.delong_test(al.y_true, al.a, al.b)
    rows = []
    for f, bf, d in zip(al.findings, boot.findings, delong):
        rows.append({
            "finding": f, "auc_a": bf.auc_a, "auc_b": bf.auc_b, "diff": bf.diff,
            "ci_low": bf.ci_low, "ci_high": bf.ci_high, "p_value": bf.p_value,
            "p_delong": d.p_value, "p_adjusted": None, "n_positive": bf.n_positive,
            "n_negative": bf.n_negative, "n_degenerate": bf.n_degenerate,
        })
    m = boot.macro
    macro = {
        "finding": MACRO, "auc_a": m.auc_a, "auc_b": m.auc_b, "diff": m.diff, "ci_low": m.ci_low,
        "ci_high": m.ci_high, "p_value": m.p_value, "p_delong": None, "p_adjusted": None,
        "n_positive": None, "n_negative": None, "n_degenerate": m.n_degenerate,
    }
    return {"findings": rows, "macro": macro}


def compare(
    registry: Registry,
    *,
    dataset: str | None = None,
    inits: Sequence[str] = (),
    evals: Sequence[int] = (),
    runs: Sequence[int] = (),
    part: str = "test",
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    intersect: bool = False,
    all_seeds: bool = False,
    alpha: float = DEFAULT_ALPHA,
    allow_mixed_tuning: bool = False,
    over_seeds: bool = False,
    per_seed: bool = False,
    on_event: Listener | None = None,
) -> dict[str, Any]:
    """Compare two or more evaluations pairwise and store the results.

    Returns ``{"group_id", "pairs": [pair, ...]}``; each pair holds
    ``comparison_id, a, b, evaluation_a, evaluation_b, n_images, findings,
    macro, skipped_findings, ...`` with, per finding, AUCs, diff = a - b, 95%
    bootstrap CI, bootstrap p, DeLong p and the BH-adjusted p.  ``better`` names
    the model with the higher AUC where the adjusted p is below ``alpha``.
    ``on_event`` receives a progress event per pair as resamples finish.  Each pair names
    what its runs trained (``tune_a``, ``tune_b``: all, head, last:N; None for an imported
    evaluation); models of different tunings are refused unless ``allow_mixed_tuning``.

    ``over_seeds`` (with ``inits``): each init's latest evaluation per seed, every pair of
    inits compared with :func:`compare_over_seeds`'s statistics (seeds pooled, one stored
    comparison per pair, ``per_seed`` adds seed-by-seed p-values); BH over all pairs x findings.
    """
    part = Part.parse(part, "part").value
    _check_numbers(n_resamples, alpha)
    if over_seeds:
        return _compare_inits_over_seeds(
            registry, dataset=dataset, inits=inits, evals=evals, runs=runs, part=part,
            n_resamples=n_resamples, seed=seed, intersect=intersect, all_seeds=all_seeds, alpha=alpha,
            allow_mixed_tuning=allow_mixed_tuning, per_seed=per_seed, on_event=on_event)
    if per_seed:
        raise InputError("`per_seed` goes with `over_seeds` (seed s of A against seed s of B within a "
                         "pooled comparison) - add `over_seeds`, or use `all_seeds` for one comparison per seed")
    with registry.session(readonly=True) as s:
        pairs, dataset_id = _choose(s, dataset=dataset, inits=inits, evals=evals, runs=runs,
                                    part=part, all_seeds=all_seeds)
        if not allow_mixed_tuning:
            refuse_mixed_tuning(pairs)
        aligned = _align_pairs(s, pairs, intersect)
    results = [_pair_result(pa, pb, al, n_resamples, seed, on_event) for (pa, pb), al in zip(pairs, aligned)]
    for res in results:
        res["warnings"] += floor_warnings(n_resamples, alpha)
    _adjust(results, alpha)
    options = {
        "part": part, "intersect": intersect, "all_seeds": all_seeds, "alpha": alpha,
        "p_value_method": P_VALUE_METHOD, "fdr_method": FDR_METHOD, "n_pairs": len(results),
        "allow_mixed_tuning": allow_mixed_tuning,
    }
    group_id = _store(registry, results, dataset_id=dataset_id, n_resamples=n_resamples, seed=seed,
                      options=options)
    return {"group_id": group_id, "alpha": alpha, "n_resamples": n_resamples, "seed": seed,
            "pairs": [_ordered(r) for r in results]}


def _align_pairs(session, pairs: list[tuple[_Pick, _Pick]], intersect: bool) -> list[Aligned]:
    """Each pair's evaluations read once and aligned on shared images and findings."""
    cache: dict[int, EvalArrays] = {}

    def arrays(i: int) -> EvalArrays:
        if i not in cache:
            cache[i] = load_evaluation_arrays(session, i)
            if cache[i].image_ids.size == 0:
                raise RefusedError(f"evaluation {i} holds no predictions - rerun predict or evals import")
        return cache[i]

    return [align_evaluations(arrays(a.evaluation_id), arrays(b.evaluation_id), intersect=intersect)
            for a, b in pairs]


def _pair_result(pa: _Pick, pb: _Pick, al: Aligned, n_resamples: int, seed: int,
                 on_event: Listener | None) -> dict[str, Any]:
    """Bootstrap and DeLong of one aligned pair, with a progress event per block of resamples."""
    label = f"{pa.label} vs {pb.label}"
    cb = None
    if on_event is not None:
        done = [0]

        def cb(c: int) -> None:
            done[0] += c
            report_progress(on_event, label, done[0], n_resamples)

    try:
        res = _pair_stats(al, n_resamples, seed, cb)
    except StatsError as exc:  # pragma: no cover - aligned arrays always fit
        raise RefusedError(f"{label}: {exc}") from exc
    res.update({
        "a": pa.label, "b": pb.label, "evaluation_a": pa.evaluation_id,
        "evaluation_b": pb.evaluation_id, "tune_a": pa.tune, "tune_b": pb.tune,
        "n_images": int(al.image_ids.size),
        "skipped_findings": al.skipped, "n_dropped_images": al.n_dropped_images,
        "n_label_conflicts": al.n_label_conflicts,
    })
    res["warnings"] = pair_warnings(res, n_resamples)
    return res
