"""Compare stored evaluations with paired statistics.

``compare`` picks evaluations (by id, run or initialisation), reads them as
arrays (:func:`~vitmed_cli.evaluations.store.load_evaluation_arrays`), aligns
them by image, runs :mod:`vitmed_cli.stats` and stores one ``Comparison`` per
pair with its ``ComparisonResult`` rows.  ``compare_over_seeds`` compares two
initialisations with several seeds each as one comparison (seeds pooled per
bootstrap resample); ``adjust_fdr`` redoes the Benjamini-Hochberg adjustment
over a family of stored comparisons (a study, or one dataset of it).
"""

from __future__ import annotations

import itertools
import math
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sqlalchemy import select

from . import stats
from ._util import finite_or_none
from .choices import DEFAULT_ALPHA, DEFAULT_RESAMPLES, Part
from .errors import InputError, NotFound, RefusedError, StatsError
from .evaluations.store import EvalArrays, load_evaluation_arrays
from .events import Listener, progress as report_progress
from .registry.db import Registry
from .registry.models import MACRO, Comparison, ComparisonResult, Evaluation
from .registry.queries import get_dataset, get_evaluation, get_run, run_tune

P_VALUE_METHOD = (
    "paired bootstrap over images, two-sided: p = min(1, 2*min(1+#{d*<=0}, 1+#{d*>=0})/(B+1)); "
    "95% percentile CI"
)
FDR_METHOD = (
    "Benjamini-Hochberg over every pair x finding of the comparison group (bootstrap p); "
    "macro rows adjusted separately over the group's pairs"
)


# --------------------------------------------------------------------------- choosing evaluations


@dataclass
class _Pick:
    evaluation_id: int
    label: str
    seed: int | None = None
    tune: str | None = None  # what the run trained (all, head, last:N); None: imported


def _tuned(label: str, tune: str | None) -> str:
    """A model's label, naming its tuning when it is not the study's full fine-tuning."""
    return label if tune in (None, "all") else f"{label} [{tune}]"


def _latest_eval(session, *, dataset_id: int | None, part: str, run_id: int | None = None,
                 init: str | None = None) -> Evaluation | None:
    q = select(Evaluation).where(Evaluation.part == part)
    if dataset_id is not None:
        q = q.where(Evaluation.dataset_id == dataset_id)
    if run_id is not None:
        q = q.where(Evaluation.run_id == run_id)
    if init is not None:
        q = q.where(Evaluation.init_name == init)
    return session.scalar(q.order_by(Evaluation.created_at.desc(), Evaluation.id.desc()))


def _picks_for_init(session, dataset, init: str, part: str, all_seeds: bool) -> list[_Pick]:
    """Evaluations of models started from ``init`` (a run's init name: dinov2, run:7, ...)."""
    if not all_seeds:
        ev = _latest_eval(session, dataset_id=dataset.id, part=part, init=init)
        if ev is None:
            known = sorted(
                {n for n in session.scalars(
                    select(Evaluation.init_name).where(
                        Evaluation.dataset_id == dataset.id, Evaluation.part == part
                    )
                ) if n}
            )
            hint = f"evaluated here: {', '.join(known)}" if known else "none yet"
            raise NotFound(
                f"no evaluation of init {init!r} on the {part} part of {dataset.name!r} ({hint}) - "
                "run vitmed predict or vitmed evals import first"
            )
        tune = run_tune(ev.run)
        return [_Pick(ev.id, _tuned(init, tune), tune=tune)]
    evs = session.scalars(
        select(Evaluation)
        .where(Evaluation.dataset_id == dataset.id, Evaluation.part == part, Evaluation.init_name == init)
        .order_by(Evaluation.created_at.desc(), Evaluation.id.desc())
    ).all()
    if not evs:
        raise NotFound(
            f"no evaluation of init {init!r} on the {part} part of {dataset.name!r} - "
            "run vitmed predict or vitmed evals import first"
        )
    by_seed: dict[int | None, Evaluation] = {}
    for ev in evs:  # newest first: keep the latest evaluation per seed
        seed = ev.run.seed if ev.run is not None else None
        by_seed.setdefault(seed, ev)
    seeded = {s: e for s, e in by_seed.items() if s is not None}
    if not seeded:
        ev = by_seed[None]
        return [_Pick(ev.id, _tuned(init, run_tune(ev.run)), tune=run_tune(ev.run))]
    return [_Pick(e.id, _tuned(f"{init} (seed {s})", run_tune(e.run)), s, run_tune(e.run))
            for s, e in sorted(seeded.items())]


def _choose(session, *, dataset: str | None, inits: Sequence[str], evals: Sequence[int],
            runs: Sequence[int], part: str, all_seeds: bool) -> tuple[list[tuple[_Pick, _Pick]], int]:
    """Pairs of evaluations to compare, and the dataset id."""
    if inits and (evals or runs):
        raise InputError(
            "choose the models by `init` NAME (with `dataset`), or by `run` ID / `eval` ID "
            "(these two can be mixed), not both"
        )
    if len(inits) + len(evals) + len(runs) < 2:
        raise InputError("compare needs two or more models - repeat `init`, `eval` or `run`")
    picks: list[list[_Pick]] = []
    if evals or runs:
        # runs first, then evaluations: --run 3 --eval 7 compares run 3 (A) with evaluation 7 (B)
        for rid in runs:
            run = get_run(session, rid)
            ds_id = get_dataset(session, dataset).id if dataset else run.dataset_id
            ev = _latest_eval(session, dataset_id=ds_id, part=part, run_id=rid)
            if ev is None:
                raise NotFound(
                    f"run {rid} has no evaluation on the {part} part - run: vitmed predict --run {rid}"
                )
            tune = run_tune(run)
            picks.append([_Pick(ev.id, _tuned(f"run {rid} ({run.init_name})", tune), run.seed, tune)])
        for eid in evals:
            ev = get_evaluation(session, eid)
            tune = run_tune(ev.run)
            picks.append([_Pick(ev.id, _tuned(f"eval {ev.id} ({ev.init_name or ev.name})", tune), tune=tune)])
    else:
        if dataset is None:
            raise InputError("`init` needs `dataset` NAME (e.g. vitmed compare --dataset vindr --init dinov2 --init imagenet)")
        ds = get_dataset(session, dataset)
        picks = [_picks_for_init(session, ds, init, part, all_seeds) for init in inits]
    if len(picks) < 2:
        raise InputError("compare needs two or more models - repeat `init`, `eval` or `run`")
    ids = [p.evaluation_id for group in picks for p in group]
    if len(set(ids)) != len(ids):
        raise InputError(
            f"the same evaluation was chosen twice (ids {', '.join(map(str, ids))}) - pick different models"
        )
    datasets = {session.get(Evaluation, i).dataset_id for i in ids}
    if len(datasets) > 1:
        raise InputError(
            f"evaluations {', '.join(map(str, ids))} are on different datasets - compare evaluations of one dataset"
        )
    pairs: list[tuple[_Pick, _Pick]] = []
    for ga, gb in itertools.combinations(picks, 2):
        if len(ga) == 1 or len(gb) == 1:
            pairs += [(a, b) for a in ga for b in gb]  # a single model meets every seed of the other
            continue
        seeds_b = {p.seed: p for p in gb}
        matched = [(a, seeds_b[a.seed]) for a in ga if a.seed in seeds_b]
        if not matched:
            raise InputError(
                f"{ga[0].label.split(' (')[0]} and {gb[0].label.split(' (')[0]} share no seed "
                f"(seeds {sorted(p.seed for p in ga)} vs {sorted(p.seed for p in gb)}) - "
                "drop `all_seeds` or train matching seeds"
            )
        pairs += matched
    return pairs, datasets.pop()


_TUNE_WORDS = {"all": "a full fine-tune", "head": "a linear probe"}


def refuse_mixed_tuning(pairs: Sequence[tuple[_Pick, _Pick]]) -> None:
    """A probe against a full fine-tune (or any two tunings) measures the tuning, not the init."""
    for a, b in pairs:
        if a.tune is not None and b.tune is not None and a.tune != b.tune:
            def what(p: _Pick) -> str:
                return _TUNE_WORDS.get(p.tune, f"a partial fine-tune (last {p.tune.split(':')[-1]} blocks)")

            raise RefusedError(
                f"{a.label} is {what(a)} (tune {a.tune}) and {b.label} {what(b)} (tune {b.tune}) - "
                "the difference would mix the initialisations with how they were trained; compare runs "
                "of one tuning mode, or pass `allow_mixed_tuning`"
            )


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


def floor_warnings(n_resamples: int, alpha: float) -> list[str]:
    """The smallest bootstrap p-value is 2/(B+1): with too few resamples nothing can be significant."""
    floor = 2 / (n_resamples + 1)
    if floor <= alpha:
        return []
    return [f"with {n_resamples} resamples the smallest possible p-value is {floor:.3g}, above `alpha` "
            f"{alpha:g}: no difference can come out significant - use `n_resamples` of at least "
            f"{math.ceil(2 / alpha)} (default {DEFAULT_RESAMPLES})"]


def pair_warnings(res: dict[str, Any], n_resamples: int) -> list[str]:
    """What a reader of this comparison must know: degenerate resamples, images left out."""
    out = []
    worst = max((r.get("n_degenerate") or 0 for r in res["findings"] + [res["macro"]]), default=0)
    if worst:
        macro_n = res["macro"].get("n_degenerate") or 0
        out.append(
            f"up to {worst} of {n_resamples} resamples had a finding with no positive or no negative "
            f"image and were left out of it (macro: {macro_n}); with this few images the p-values "
            "are unreliable - compare on a larger test part"
        )
    if res["n_dropped_images"] or res["n_label_conflicts"]:
        out.append(f"compared on the images both evaluations hold (`intersect`): {res['n_dropped_images']} "
                   f"images left out, {res['n_label_conflicts']} disputed labels excluded")
    return out


def _adjust(results: list[dict[str, Any]], alpha: float) -> None:
    """Benjamini-Hochberg over every pair x finding (macro rows over the pairs); 'better' where
    the adjusted p is below ``alpha``."""
    flat = [r for res in results for r in res["findings"]]
    for r, q in zip(flat, stats.fdr_bh([r["p_value"] for r in flat])):
        r["p_adjusted"] = float(q)
    for res, q in zip(results, stats.fdr_bh([res["macro"]["p_value"] for res in results])):
        res["macro"]["p_adjusted"] = float(q)
    for res in results:
        for r in res["findings"] + [res["macro"]]:
            sig = r["p_adjusted"] is not None and r["p_adjusted"] < alpha
            r["better"] = (res["a"] if r["diff"] > 0 else res["b"]) if sig and r["diff"] != 0 else None


def _store(registry: Registry, results: list[dict[str, Any]], *, dataset_id: int, n_resamples: int,
           seed: int, options: dict[str, Any], group_id: str | None = None) -> str:
    """One Comparison (with its result rows) per pair, in one transaction; the group id."""
    group_id = group_id or uuid.uuid4().hex
    with registry.session() as s:
        for res in results:
            cmp_row = Comparison(
                dataset_id=dataset_id, evaluation_a_id=res["evaluation_a"],
                evaluation_b_id=res["evaluation_b"], label_a=res["a"][:128], label_b=res["b"][:128],
                group_id=group_id, n_images=res["n_images"], n_resamples=n_resamples, seed=seed,
                options={**options, "tune_a": res["tune_a"], "tune_b": res["tune_b"],
                         "skipped_findings": res["skipped_findings"],
                         "n_dropped_images": res["n_dropped_images"],
                         "n_label_conflicts": res["n_label_conflicts"],
                         "warnings": res["warnings"], **res.get("options", {})},
            )
            cmp_row.results = [
                ComparisonResult(**{k: _num(r[k]) for k in _RESULT_COLUMNS})
                for r in res["findings"] + [res["macro"]]
            ]
            s.add(cmp_row)
            s.flush()
            res["comparison_id"] = cmp_row.id
    return group_id


_RESULT_COLUMNS = ("finding", "auc_a", "auc_b", "diff", "ci_low", "ci_high", "p_value", "p_delong",
                   "p_adjusted", "n_positive", "n_negative", "n_degenerate")


def _num(v):
    """A stored value: floats finite or None, numpy scalars as Python numbers."""
    if isinstance(v, (float, np.floating)):
        return finite_or_none(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


_PAIR_KEYS = ["comparison_id", "a", "b", "evaluation_a", "evaluation_b", "tune_a", "tune_b", "n_images",
              "findings", "macro", "skipped_findings", "n_dropped_images", "n_label_conflicts", "warnings"]


def _ordered(res: dict[str, Any]) -> dict[str, Any]:
    return {k: res[k] for k in _PAIR_KEYS}


def comparison_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (pair x finding, macro last) for CSV output."""
    out = []
    for pair in result["pairs"]:
        for r in pair["findings"] + [pair["macro"]]:
            out.append({"comparison_id": pair["comparison_id"], "a": pair["a"], "b": pair["b"],
                        **{k: r.get(k) for k in _RESULT_COLUMNS}, "better": r.get("better")})
    return out


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
FAMILY_FDR_METHOD = (
    "Benjamini-Hochberg over every comparison x finding of the family (bootstrap p); macro rows "
    "adjusted separately over the family's comparisons"
)


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


def _check_numbers(n_resamples: int, alpha: float) -> None:
    if n_resamples < 10:
        raise InputError(f"`n_resamples` {n_resamples} is too few for a p-value - use {DEFAULT_RESAMPLES} "
                         "(the default) or more")
    if not 0 < alpha < 1:
        raise InputError(f"`alpha` {alpha} must lie between 0 and 1, e.g. 0.05")


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


def adjust_fdr(registry: Registry, comparison_ids: Sequence[int], *, family: str,
               alpha: float = DEFAULT_ALPHA) -> None:
    """Benjamini-Hochberg over the findings of several stored comparisons as one family, in one transaction.

    As :func:`compare` does within a call: the raw bootstrap p-values of every
    comparison x finding (macro rows excluded) form the family; the macro rows are
    adjusted separately, over the comparisons' macro p-values.  Each comparison's
    ``p_adjusted`` is replaced and its options record ``fdr_family`` = ``family``
    (e.g. the study's name, or "study/DATASET" for a per-dataset family),
    ``fdr_method``, the family's comparison ids and ``alpha``.
    """
    ids = list(dict.fromkeys(int(i) for i in comparison_ids))
    if not ids:
        raise InputError("`comparison_ids` is empty - give the ids of the comparisons in the family")
    if not isinstance(family, str) or not family.strip():
        raise InputError("`family` must name the family, e.g. the study's name or STUDY/DATASET")
    if not 0 < alpha < 1:
        raise InputError(f"`alpha` {alpha} must lie between 0 and 1, e.g. 0.05")
    with registry.session() as s:
        cmps = []
        for i in ids:
            row = s.get(Comparison, i)
            if row is None:
                raise NotFound(f"no comparison with id {i} - run vitmed compare first")
            cmps.append(row)
        findings = [r for c in cmps for r in c.results if r.finding != MACRO]
        macros = [r for c in cmps for r in c.results if r.finding == MACRO]
        for rows in (findings, macros):
            raw = [np.nan if r.p_value is None else r.p_value for r in rows]
            for r, q in zip(rows, stats.fdr_bh(raw)):
                r.p_adjusted = finite_or_none(q)
        n_tests = sum(r.p_value is not None for r in findings)
        for c in cmps:  # a new dict: the JSON column sees the change
            c.options = {**(c.options or {}), "fdr_family": family, "fdr_method": FAMILY_FDR_METHOD,
                         "fdr_comparisons": ids, "fdr_n_tests": n_tests, "alpha": alpha}


__all__ = [
    "Aligned", "AlignedSeeds", "EvalArrays", "adjust_fdr", "align_evaluations", "align_seed_evaluations",
    "compare", "compare_over_seeds", "comparison_rows", "load_evaluation_arrays",
]
