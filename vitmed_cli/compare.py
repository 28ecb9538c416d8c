"""Compare stored evaluations with paired statistics.

``compare`` picks evaluations (by id, run or initialisation), reads them as
arrays (:func:`~vitmed_cli.evaluations.store.load_evaluation_arrays`), aligns
them by image, runs :mod:`vitmed_cli.stats` and stores one ``Comparison`` per
pair with its ``ComparisonResult`` rows.
"""

from __future__ import annotations

import itertools
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
    """
    part = Part.parse(part, "part").value
    if n_resamples < 10:
        raise InputError(f"`n_resamples` {n_resamples} is too few for a p-value - use 1000 or more")
    if not 0 < alpha < 1:
        raise InputError(f"`alpha` {alpha} must lie between 0 and 1, e.g. 0.05")
    with registry.session(readonly=True) as s:
        pairs, dataset_id = _choose(s, dataset=dataset, inits=inits, evals=evals, runs=runs,
                                    part=part, all_seeds=all_seeds)
        if not allow_mixed_tuning:
            refuse_mixed_tuning(pairs)
        aligned = _align_pairs(s, pairs, intersect)
    results = [_pair_result(pa, pb, al, n_resamples, seed, on_event) for (pa, pb), al in zip(pairs, aligned)]
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
           seed: int, options: dict[str, Any]) -> str:
    """One Comparison (with its result rows) per pair, in one transaction; the group id."""
    group_id = uuid.uuid4().hex
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
                         "warnings": res["warnings"]},
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


def _ordered(res: dict[str, Any]) -> dict[str, Any]:
    keys = ["comparison_id", "a", "b", "evaluation_a", "evaluation_b", "tune_a", "tune_b", "n_images",
            "findings", "macro",
            "skipped_findings", "n_dropped_images", "n_label_conflicts", "warnings"]
    return {k: res[k] for k in keys}


def comparison_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (pair x finding, macro last) for CSV output."""
    out = []
    for pair in result["pairs"]:
        for r in pair["findings"] + [pair["macro"]]:
            out.append({"comparison_id": pair["comparison_id"], "a": pair["a"], "b": pair["b"],
                        **{k: r.get(k) for k in _RESULT_COLUMNS}, "better": r.get("better")})
    return out


__all__ = [
    "Aligned", "EvalArrays", "align_evaluations", "compare", "comparison_rows", "load_evaluation_arrays",
]
