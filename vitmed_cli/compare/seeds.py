"""Comparing two initialisations over several seeds as one comparison (seeds pooled per resample)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .. import stats
from ..choices import DEFAULT_ALPHA, DEFAULT_RESAMPLES
from ..errors import InputError, RefusedError
from ..evaluations.store import EvalArrays, load_evaluation_arrays
from ..events import Listener, progress as report_progress
from ..registry.db import Registry
from ..registry.models import MACRO, Evaluation
from ..registry.queries import get_dataset, get_evaluation, run_tune
from .align import align_evaluations
from .choose import _Pick, _picks_for_init, _tuned, refuse_mixed_tuning
from .store import _PAIR_KEYS, FDR_METHOD, _adjust, _check_numbers, _num, _store, floor_warnings, pair_warnings

# --------------------------------------------------------------------------- comparing over seeds

SEEDS_P_VALUE_METHOD = (
    "paired bootstrap over images pooling seeds: each resample draws the test images once for every "
    "seed of both initialisations, each side's AUC is the mean over its seeds; two-sided "
    "p = min(1, 2*min(1+#{d*<=0}, 1+#{d*>=0})/(B+1)); 95% percentile CI"
)
SEEDS_FDR_METHOD = (
    "Benjamini-Hochberg over the findings of this comparison (bootstrap p); the macro row on its own"
)
SEEDS_NO_DELONG = "DeLong's test compares two single models' AUCs, not means over seeds"


@dataclass
class AlignedSeeds:
    y_true: np.ndarray
    scores: list[np.ndarray]  # one per evaluation, in the order given
    findings: list[str]
    image_ids: np.ndarray
    skipped: list[dict[str, str]]


def align_seed_evaluations(arrays: Sequence[EvalArrays]) -> AlignedSeeds:
    """Align several evaluations of the same test images on their shared findings.

    Different images or ground truth are refused (as :func:`align_evaluations`
    refuses them for a pair, with no `intersect`); an image without a score from
    any of the evaluations is left out of that finding.
    """
    first = arrays[0]
    for other in arrays[1:]:
        align_evaluations(first, other)  # the refusals of compare: images, labels, no shared finding
    findings = [f for f in first.findings if all(f in e.findings for e in arrays)]
    skipped = []
    for e in arrays:
        for f in e.findings:
            if f not in findings and f not in [s["finding"] for s in skipped]:
                missing = [str(x.evaluation_id) for x in arrays if f not in x.findings]
                skipped.append({"finding": f, "reason": f"not in evaluation {', '.join(missing)}"})
    # the same image set in each (checked above), sorted by id in each: rows already line up
    y = first.y_true[:, [first.findings.index(f) for f in findings]].copy()
    scores = [e.scores[:, [e.findings.index(f) for f in findings]] for e in arrays]
    for s in scores:
        y[np.isnan(s)] = np.nan
    keep = []
    for j, f in enumerate(findings):
        n1, n0 = int((y[:, j] == 1).sum()), int((y[:, j] == 0).sum())
        if n1 == 0 or n0 == 0:
            skipped.append({"finding": f, "reason": f"no {'positive' if n1 == 0 else 'negative'} image"})
        else:
            keep.append(j)
    if not keep:
        raise RefusedError(
            f"evaluations {', '.join(str(e.evaluation_id) for e in arrays)}: no shared finding has both "
            "positive and negative images - nothing to compare"
        )
    return AlignedSeeds(y[:, keep], [np.nan_to_num(s[:, keep], nan=0.0) for s in scores],
                        [findings[j] for j in keep], first.image_ids, skipped)


def _compare_inits_over_seeds(registry: Registry, *, dataset: str | None, inits: Sequence[str],
                              evals: Sequence[int], runs: Sequence[int], part: str, n_resamples: int,
                              seed: int, intersect: bool, all_seeds: bool, alpha: float,
                              allow_mixed_tuning: bool, per_seed: bool,
                              on_event: Listener | None) -> dict[str, Any]:
    """compare(over_seeds=True): every pair of inits, each init's seeds pooled, stored in one transaction."""
    if evals or runs:
        raise InputError("`over_seeds` pools each init's seeds - choose the models by `init` NAME "
                         "(with `dataset`), not by `eval` or `run`")
    if all_seeds:
        raise InputError("`over_seeds` pools the seeds and `all_seeds` compares seed s with seed s - "
                         "pick one (`per_seed` adds the seed-by-seed p-values to `over_seeds`)")
    if intersect:
        raise InputError("`intersect` does not apply with `over_seeds`: every seed must be evaluated on "
                         "the same images - rerun predict on the same split")
    if len(inits) < 2:
        raise InputError("compare needs two or more models - repeat `init`")
    if dataset is None:
        raise InputError("`init` needs `dataset` NAME (e.g. vitmed compare --dataset vindr --init dinov2 "
                         "--init imagenet --over-seeds)")
    with registry.session(readonly=True) as s:
        ds = get_dataset(s, dataset)
        groups = [_picks_for_init(s, ds, init, part, all_seeds=True) for init in inits]
        labels = [_tuned(init, g[0].tune) for init, g in zip(inits, groups)]
        dataset_id, part_, arrays = _load_seed_groups(s, groups, allow_mixed_tuning)
    pairs = [_seeds_pair(groups[i], groups[j], labels[i], labels[j], arrays, n_resamples, seed, per_seed,
                         on_event, alpha=alpha)
             for i, j in itertools.combinations(range(len(groups)), 2)]
    one = len(pairs) == 1
    return _finish_seeds(registry, pairs, dataset_id=dataset_id, part=part_, n_resamples=n_resamples,
                         seed=seed, alpha=alpha, allow_mixed_tuning=allow_mixed_tuning, group_id=None,
                         fdr_method=SEEDS_FDR_METHOD if one else FDR_METHOD,
                         fdr_family="comparison" if one else "group")


def _seed_picks(session, ids: Sequence[int], label: str) -> list[_Pick]:
    picks = []
    for i in ids:
        ev = get_evaluation(session, i)
        seed = ev.run.seed if ev.run is not None else None
        name = f"{label} (seed {seed})" if seed is not None else f"{label} (evaluation {i})"
        picks.append(_Pick(ev.id, name, seed, run_tune(ev.run)))
    return picks


def _seed_pairs(seeds_a: list[int | None], seeds_b: list[int | None]) -> list[tuple[int, int]]:
    """Positions (i in A, j in B) of the seeds both sides trained, by seed value."""
    where_b: dict[int, int] = {}
    for j, s in enumerate(seeds_b):
        if s is not None:
            where_b.setdefault(s, j)
    pairs, used = [], set()
    for i, s in enumerate(seeds_a):
        if s is not None and s in where_b and s not in used:
            pairs.append((i, where_b[s]))
            used.add(s)
    return pairs


def _seed_auc_dict(x: stats.SeedAUC) -> dict[str, Any]:
    return {"mean": _num(x.mean), "sd": _num(x.sd), "bootstrap_sd": _num(x.bootstrap_sd),
            "per_seed": [_num(v) for v in x.per_seed],
            "per_seed_bootstrap_sd": [_num(v) for v in x.per_seed_bootstrap_sd]}


def _diff_dict(d: stats.PairedDiff) -> dict[str, Any]:
    return {k: _num(getattr(d, k)) for k in ("auc_a", "auc_b", "diff", "ci_low", "ci_high", "p_value",
                                             "n_degenerate")}


def compare_over_seeds(
    registry: Registry,
    *,
    evaluations_a: Sequence[int],
    evaluations_b: Sequence[int],
    label_a: str,
    label_b: str,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
    per_seed: bool = False,
    group_id: str | None = None,
    on_event: Listener | None = None,
    allow_mixed_tuning: bool = False,
) -> dict[str, Any]:
    """Compare initialisation A (one evaluation per seed) with B, pooling the seeds; store one comparison.

    All evaluations must be of one dataset and the same test images with the same
    ground truth (refused otherwise, as :func:`compare` refuses a pair), and of one
    tuning mode unless ``allow_mixed_tuning``.  Each bootstrap resample draws the
    images once for every seed of both sides; each side's AUC per finding is the
    mean over its seeds (:func:`vitmed_cli.stats.paired_bootstrap_seeds`), giving
    the CI and p-value of A - B per finding and for the macro average.  The
    findings' p-values are Benjamini-Hochberg adjusted within this comparison, the
    macro row on its own (``fdr_family`` "comparison"); :func:`adjust_fdr` redoes
    that over a larger family.  ``per_seed`` adds seed s of A against seed s of B
    (matched by seed number) on the same resamples.

    Stores ONE ``Comparison`` (``evaluation_a_id``/``evaluation_b_id`` = the first
    of each list, ``group_id`` if given) whose ``options`` hold ``mode: "seeds"``,
    the evaluations and seeds of each side, the mean, SD and bootstrap SD over
    seeds per finding and macro (``over_seeds``) and, when asked, ``per_seed``.
    Returns the shape of :func:`compare` with one pair; the pair adds ``mode``,
    ``evaluations_a``/``_b``, ``seeds_a``/``_b``, ``n_seeds_a``/``_b``,
    ``over_seeds`` and ``per_seed`` (None unless asked), and each finding row
    ``sd_a``/``sd_b`` (over seeds, None for one seed) and ``bootstrap_sd_a``/``_b``.
    """
    _check_numbers(n_resamples, alpha)
    ids_a, ids_b = [int(i) for i in evaluations_a], [int(i) for i in evaluations_b]
    if not ids_a or not ids_b:
        raise InputError("`evaluations_a` and `evaluations_b` each need one or more evaluation ids "
                         "(one per seed)")
    with registry.session(readonly=True) as s:
        groups = [_seed_picks(s, ids_a, label_a), _seed_picks(s, ids_b, label_b)]
        dataset_id, part, arrays = _load_seed_groups(s, groups, allow_mixed_tuning)
    pair = _seeds_pair(groups[0], groups[1], label_a, label_b, arrays, n_resamples, seed, per_seed, on_event,
                       alpha=alpha)
    return _finish_seeds(registry, [pair], dataset_id=dataset_id, part=part, n_resamples=n_resamples,
                         seed=seed, alpha=alpha, allow_mixed_tuning=allow_mixed_tuning,
                         group_id=group_id, fdr_method=SEEDS_FDR_METHOD, fdr_family="comparison")


def _load_seed_groups(session, groups: list[list[_Pick]], allow_mixed_tuning: bool
                      ) -> tuple[int, str, dict[int, EvalArrays]]:
    """Check the evaluations of every side (one dataset, no evaluation twice, one tuning) and read them."""
    ids = [p.evaluation_id for g in groups for p in g]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"evaluation {', '.join(map(str, twice))} is listed twice - give each seed's "
                         "evaluation once, on one side")
    evs = [session.get(Evaluation, i) for i in ids]
    if len({e.dataset_id for e in evs}) > 1:
        raise InputError(f"evaluations {', '.join(map(str, ids))} are on different datasets - "
                         "compare evaluations of one dataset")
    everyone = [p for g in groups for p in g]
    if not allow_mixed_tuning:
        refuse_mixed_tuning([(everyone[0], p) for p in everyone[1:]])
    arrays = {}
    for i in ids:
        arrays[i] = load_evaluation_arrays(session, i)
        if arrays[i].image_ids.size == 0:
            raise RefusedError(f"evaluation {i} holds no predictions - rerun predict or evals import")
    return evs[0].dataset_id, evs[0].part, arrays


def _seeds_pair(picks_a: list[_Pick], picks_b: list[_Pick], label_a: str, label_b: str,
                arrays: dict[int, EvalArrays], n_resamples: int, seed: int, per_seed: bool,
                on_event: Listener | None, alpha: float = DEFAULT_ALPHA) -> dict[str, Any]:
    """The pooled-seeds statistics of A against B as a pair dict (not yet adjusted or stored)."""
    ids_a, ids_b = [p.evaluation_id for p in picks_a], [p.evaluation_id for p in picks_b]
    al = align_seed_evaluations([arrays[i] for i in ids_a + ids_b])
    seeds_a, seeds_b = [p.seed for p in picks_a], [p.seed for p in picks_b]
    pairs = None
    if per_seed:
        pairs = _seed_pairs(seeds_a, seeds_b)
        if not pairs:
            show = lambda seeds: ", ".join("none" if x is None else str(x) for x in seeds)  # noqa: E731
            raise RefusedError(
                f"`per_seed` pairs seed s of {label_a} with seed s of {label_b}, but they share no seed "
                f"({show(seeds_a)} vs {show(seeds_b)}) - train matching seeds or drop `per_seed`"
            )
    task = f"{label_a} vs {label_b} over seeds"
    cb = None
    if on_event is not None:
        done = [0]

        def cb(c: int) -> None:
            done[0] += c
            report_progress(on_event, task, done[0], n_resamples)

    na = len(ids_a)
    res = stats.paired_bootstrap_seeds(al.y_true, al.scores[:na], al.scores[na:], n_resamples=n_resamples,
                                       seed=seed, seed_pairs=pairs, progress=cb)

    def row(finding: str, d: stats.PairedDiff, sa: stats.SeedAUC, sb: stats.SeedAUC) -> dict[str, Any]:
        return {
            "finding": finding, "auc_a": d.auc_a, "auc_b": d.auc_b, "diff": d.diff, "ci_low": d.ci_low,
            "ci_high": d.ci_high, "p_value": d.p_value, "p_delong": None, "p_adjusted": None,
            "n_positive": d.n_positive, "n_negative": d.n_negative, "n_degenerate": d.n_degenerate,
            "sd_a": sa.sd, "sd_b": sb.sd, "bootstrap_sd_a": sa.bootstrap_sd, "bootstrap_sd_b": sb.bootstrap_sd,
        }

    over_seeds = {
        side: {**{f: _seed_auc_dict(x) for f, x in zip(al.findings, per)}, MACRO: _seed_auc_dict(mac)}
        for side, per, mac in (("a", res.a, res.a_macro), ("b", res.b, res.b_macro))
    }
    per_seed_out = None
    if pairs is not None:
        per_seed_out = [{
            "seed": seeds_a[p.index_a], "evaluation_a": ids_a[p.index_a], "evaluation_b": ids_b[p.index_b],
            "findings": [{"finding": f, **_diff_dict(d)} for f, d in zip(al.findings, p.result.findings)],
            "macro": {"finding": MACRO, **_diff_dict(p.result.macro)},
        } for p in res.per_seed]
    pair = {
        "a": label_a, "b": label_b, "evaluation_a": ids_a[0], "evaluation_b": ids_b[0],
        "tune_a": next((p.tune for p in picks_a if p.tune is not None), None),
        "tune_b": next((p.tune for p in picks_b if p.tune is not None), None),
        "n_images": int(al.image_ids.size),
        "findings": [row(f, d, sa, sb) for f, d, sa, sb in zip(al.findings, res.findings, res.a, res.b)],
        "macro": {**row(MACRO, res.macro, res.a_macro, res.b_macro), "n_positive": None, "n_negative": None},
        "skipped_findings": al.skipped, "n_dropped_images": 0, "n_label_conflicts": 0, "mode": "seeds",
        "evaluations_a": ids_a, "evaluations_b": ids_b, "seeds_a": seeds_a, "seeds_b": seeds_b,
        "n_seeds_a": len(ids_a), "n_seeds_b": len(ids_b), "over_seeds": over_seeds,
        "per_seed": per_seed_out, "p_delong_reason": SEEDS_NO_DELONG,
    }
    pair["warnings"] = (pair_warnings(pair, n_resamples) + floor_warnings(n_resamples, alpha)
                        + _seed_warnings(label_a, seeds_a, ids_a) + _seed_warnings(label_b, seeds_b, ids_b))
    return pair


_SEED_PAIR_KEYS = ["mode", "evaluations_a", "evaluations_b", "seeds_a", "seeds_b", "n_seeds_a", "n_seeds_b",
                   "over_seeds", "per_seed", "p_delong_reason"]


def _finish_seeds(registry: Registry, pairs: list[dict[str, Any]], *, dataset_id: int, part: str,
                  n_resamples: int, seed: int, alpha: float, allow_mixed_tuning: bool,
                  group_id: str | None, fdr_method: str, fdr_family: str) -> dict[str, Any]:
    """Adjust (BH over the pairs x findings given), store one Comparison per pair, return compare's shape."""
    _adjust(pairs, alpha)
    options = {
        "mode": "seeds", "part": part, "alpha": alpha, "p_value_method": SEEDS_P_VALUE_METHOD,
        "fdr_method": fdr_method, "fdr_family": fdr_family, "n_pairs": len(pairs),
        "allow_mixed_tuning": allow_mixed_tuning, "p_delong": SEEDS_NO_DELONG,
    }
    for pair in pairs:
        pair["options"] = {k: pair[k] for k in ("evaluations_a", "evaluations_b", "seeds_a", "seeds_b",
                                                "over_seeds")}
        if pair["per_seed"] is not None:
            pair["options"]["per_seed"] = pair["per_seed"]
    group = _store(registry, pairs, dataset_id=dataset_id, n_resamples=n_resamples, seed=seed,
                   options=options, group_id=group_id)
    return {"group_id": group, "alpha": alpha, "n_resamples": n_resamples, "seed": seed,
            "fdr_family": fdr_family, "pairs": [{k: p[k] for k in _PAIR_KEYS + _SEED_PAIR_KEYS} for p in pairs]}


def _seed_warnings(label: str, seeds: list[int | None], ids: list[int]) -> list[str]:
    out = []
    known = [s for s in seeds if s is not None]
    for s in sorted({s for s in known if known.count(s) > 1}):
        twice = [str(i) for i, x in zip(ids, seeds) if x == s]
        out.append(f"{label} holds seed {s} more than once (evaluations {', '.join(twice)}); each counts as "
                   "one seed in the mean and SD")
    return out
