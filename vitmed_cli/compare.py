"""Compare stored evaluations with paired statistics, and import predictions made elsewhere.

``load_evaluation_arrays`` turns an evaluation's predictions into aligned numpy
arrays; ``compare`` picks evaluations (by id, run or initialisation), aligns
them by image, runs :mod:`vitmed_cli.stats` and stores one ``Comparison`` per
pair with its ``ComparisonResult`` rows; ``import_evaluation`` registers a CSV
of probabilities as an evaluation.
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np
from sqlalchemy import insert, select

from . import stats
from .catalog import get_dataset, get_evaluation, get_run, get_split, unlabelled_keys, used_images
from .errors import InputError, NotFound, RefusedError, StatsError
from .registry.db import Registry
from .registry.models import (
    MACRO,
    Comparison,
    ComparisonResult,
    Evaluation,
    EvaluationMetric,
    Finding,
    Image,
    Label,
    Prediction,
    SplitAssignment,
)

P_VALUE_METHOD = (
    "paired bootstrap over images, two-sided: p = min(1, 2*min(1+#{d*<=0}, 1+#{d*>=0})/(B+1)); "
    "95% percentile CI"
)
FDR_METHOD = (
    "Benjamini-Hochberg over every pair x finding of the comparison group (bootstrap p); "
    "macro rows adjusted separately over the group's pairs"
)
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
KEY_COLUMNS = ("image_id", "key", "Path")


# --------------------------------------------------------------------------- loading


@dataclass
class EvalArrays:
    """An evaluation's predictions as arrays: rows = images (sorted by id), columns = findings."""

    evaluation_id: int
    image_ids: np.ndarray
    image_keys: list[str]
    findings: list[str]
    y_true: np.ndarray  # float, NaN = excluded for that finding
    scores: np.ndarray  # float, NaN = no prediction


def load_evaluation_arrays(session, evaluation_id: int) -> EvalArrays:
    """The stored predictions of one evaluation, aligned as (n_images, n_findings) arrays."""
    get_evaluation(session, evaluation_id)
    rows = session.execute(
        select(
            Prediction.image_id, Prediction.finding_id, Prediction.probability, Prediction.label
        ).where(Prediction.evaluation_id == evaluation_id)
    ).all()
    if not rows:
        return EvalArrays(evaluation_id, np.empty(0, np.int64), [], [], np.empty((0, 0)), np.empty((0, 0)))
    img = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    fid = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
    prob = np.fromiter((r[2] for r in rows), dtype=float, count=len(rows))
    lab = np.fromiter((np.nan if r[3] is None else r[3] for r in rows), dtype=float, count=len(rows))
    image_ids, ri = np.unique(img, return_inverse=True)
    finding_rows = session.execute(
        select(Finding.id, Finding.canonical, Finding.position)
        .where(Finding.id.in_(np.unique(fid).tolist()))
        .order_by(Finding.position, Finding.id)
    ).all()
    col = {f[0]: j for j, f in enumerate(finding_rows)}
    ci = np.array([col[f] for f in fid.tolist()])
    y = np.full((image_ids.size, len(finding_rows)), np.nan)
    s = np.full_like(y, np.nan)
    y[ri, ci] = lab
    s[ri, ci] = prob
    keys = dict(session.execute(select(Image.id, Image.key).where(Image.id.in_(image_ids.tolist()))).all())
    return EvalArrays(
        evaluation_id, image_ids, [keys[i] for i in image_ids.tolist()],
        [f[1] for f in finding_rows], y, s,
    )


# --------------------------------------------------------------------------- choosing evaluations


@dataclass
class _Pick:
    evaluation_id: int
    label: str
    seed: int | None = None


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
        return [_Pick(ev.id, init)]
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
        return [_Pick(by_seed[None].id, init)]
    return [_Pick(e.id, f"{init} (seed {s})", s) for s, e in sorted(seeded.items())]


def _choose(session, *, dataset: str | None, inits: Sequence[str], evals: Sequence[int],
            runs: Sequence[int], part: str, all_seeds: bool) -> tuple[list[tuple[_Pick, _Pick]], int]:
    """Pairs of evaluations to compare, and the dataset id."""
    if inits and (evals or runs):
        raise InputError(
            "choose the models by --init NAME (with --dataset), or by --run ID / --eval ID "
            "(these two can be mixed), not both"
        )
    if len(inits) + len(evals) + len(runs) < 2:
        raise InputError("compare needs two or more models - repeat --init, --eval or --run")
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
            picks.append([_Pick(ev.id, f"run {rid} ({run.init_name})", run.seed)])
        for eid in evals:
            ev = get_evaluation(session, eid)
            picks.append([_Pick(ev.id, f"eval {ev.id} ({ev.init_name or ev.name})")])
    else:
        if dataset is None:
            raise InputError("--init needs --dataset NAME (e.g. vitmed compare --dataset vindr --init dinov2 --init imagenet)")
        ds = get_dataset(session, dataset)
        picks = [_picks_for_init(session, ds, init, part, all_seeds) for init in inits]
    if len(picks) < 2:
        raise InputError("compare needs two or more models - repeat --init, --eval or --run")
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
                "drop --all-seeds or train matching seeds"
            )
        pairs += matched
    return pairs, datasets.pop()


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
            "or pass --intersect"
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
            "--uncertain policy, or pass --intersect"
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
    n_resamples: int = 1000,
    seed: int = 0,
    intersect: bool = False,
    all_seeds: bool = False,
    alpha: float = 0.05,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Compare two or more evaluations pairwise and store the results.

    Returns ``{"group_id", "pairs": [pair, ...]}``; each pair holds
    ``comparison_id, a, b, evaluation_a, evaluation_b, n_images, findings,
    macro, skipped_findings, ...`` with, per finding, AUCs, diff = a - b, 95%
    bootstrap CI, bootstrap p, DeLong p and the BH-adjusted p.  ``better`` names
    the model with the higher AUC where the adjusted p is below ``alpha``.
    ``progress(label, done, total)`` is called as resamples finish.
    """
    if n_resamples < 10:
        raise InputError(f"--n-resamples {n_resamples} is too few for a p-value - use 1000 or more")
    if not 0 < alpha < 1:
        raise InputError(f"--alpha {alpha} must lie between 0 and 1, e.g. 0.05")
    with registry.session() as s:
        pairs, dataset_id = _choose(s, dataset=dataset, inits=inits, evals=evals, runs=runs,
                                    part=part, all_seeds=all_seeds)
        cache: dict[int, EvalArrays] = {}

        def arrays(i: int) -> EvalArrays:
            if i not in cache:
                cache[i] = load_evaluation_arrays(s, i)
                if cache[i].image_ids.size == 0:
                    raise RefusedError(f"evaluation {i} holds no predictions - rerun predict or evals import")
            return cache[i]

        aligned = [align_evaluations(arrays(a.evaluation_id), arrays(b.evaluation_id), intersect=intersect)
                   for a, b in pairs]
    results = []
    for (pa, pb), al in zip(pairs, aligned):
        label = f"{pa.label} vs {pb.label}"
        cb = None
        if progress is not None:
            done = [0]

            def cb(c, label=label, done=done):
                done[0] += c
                progress(label, done[0], n_resamples)

        try:
            res = _pair_stats(al, n_resamples, seed, cb)
        except StatsError as exc:  # pragma: no cover - aligned arrays always fit
            raise RefusedError(f"{label}: {exc}") from exc
        res.update({
            "a": pa.label, "b": pb.label, "evaluation_a": pa.evaluation_id,
            "evaluation_b": pb.evaluation_id, "n_images": int(al.image_ids.size),
            "skipped_findings": al.skipped, "n_dropped_images": al.n_dropped_images,
            "n_label_conflicts": al.n_label_conflicts,
        })
        results.append(res)
    # BH over every pair x finding; macro rows over the pairs
    flat = [r for res in results for r in res["findings"]]
    for r, q in zip(flat, stats.fdr_bh([r["p_value"] for r in flat])):
        r["p_adjusted"] = float(q)
    for res, q in zip(results, stats.fdr_bh([res["macro"]["p_value"] for res in results])):
        res["macro"]["p_adjusted"] = float(q)
    for res in results:
        for r in res["findings"] + [res["macro"]]:
            sig = r["p_adjusted"] is not None and r["p_adjusted"] < alpha
            r["better"] = (res["a"] if r["diff"] > 0 else res["b"]) if sig and r["diff"] != 0 else None
    group_id = uuid.uuid4().hex
    options = {
        "part": part, "intersect": intersect, "all_seeds": all_seeds, "alpha": alpha,
        "p_value_method": P_VALUE_METHOD, "fdr_method": FDR_METHOD, "n_pairs": len(results),
    }
    with registry.session() as s:
        for res in results:
            cmp_row = Comparison(
                dataset_id=dataset_id, evaluation_a_id=res["evaluation_a"],
                evaluation_b_id=res["evaluation_b"], label_a=res["a"][:128], label_b=res["b"][:128],
                group_id=group_id, n_images=res["n_images"], n_resamples=n_resamples, seed=seed,
                options={**options, "skipped_findings": res["skipped_findings"],
                         "n_dropped_images": res["n_dropped_images"],
                         "n_label_conflicts": res["n_label_conflicts"]},
            )
            cmp_row.results = [
                ComparisonResult(**{k: _num(r[k]) for k in _RESULT_COLUMNS})
                for r in res["findings"] + [res["macro"]]
            ]
            s.add(cmp_row)
            s.flush()
            res["comparison_id"] = cmp_row.id
    return {"group_id": group_id, "alpha": alpha, "n_resamples": n_resamples, "seed": seed,
            "pairs": [_ordered(r) for r in results]}


_RESULT_COLUMNS = ("finding", "auc_a", "auc_b", "diff", "ci_low", "ci_high", "p_value", "p_delong",
                   "p_adjusted", "n_positive", "n_negative", "n_degenerate")


def _num(v):
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def _ordered(res: dict[str, Any]) -> dict[str, Any]:
    keys = ["comparison_id", "a", "b", "evaluation_a", "evaluation_b", "n_images", "findings", "macro",
            "skipped_findings", "n_dropped_images", "n_label_conflicts"]
    return {k: res[k] for k in keys}


# --------------------------------------------------------------------------- import


def _key_column(columns: list[str], key_col: str | None, path: Path) -> str:
    if key_col is not None:
        if key_col not in columns:
            raise InputError(
                f"{path.name} has no column {key_col!r} (columns: {_examples(columns, 8)}) - "
                "pass the image key column with --key-col"
            )
        return key_col
    for c in KEY_COLUMNS:
        if c in columns:
            return c
    return columns[0]


def import_evaluation(
    registry: Registry,
    path: str | Path,
    *,
    dataset: str,
    name: str,
    split: str | None = None,
    part: str = "test",
    key_col: str | None = None,
    uncertain: str = "zeros",
) -> dict[str, Any]:
    """Register a CSV of probabilities (image key + one column per finding) as an evaluation.

    Labels come from the registry: uncertain per ``uncertain`` (zeros, ones or
    ignore = excluded), not mentioned = 0.  Everything is written in one
    transaction; returns ``{"evaluation_id", "macro_auc", "n_images", ...}``.
    """
    import pandas as pd

    path = Path(path)
    if uncertain not in UNCERTAIN_POLICIES:
        raise InputError(f"--uncertain {uncertain!r}: use one of {', '.join(UNCERTAIN_POLICIES)}")
    if not path.is_file():
        raise InputError(f"prediction file {path} does not exist - give the path of a CSV file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {path.name} as CSV: {str(exc).splitlines()[0]} - "
                         "save it as comma-separated text with a header row") from exc
    columns = [str(c) for c in df.columns]
    if len(columns) < 2 or df.empty:
        raise InputError(f"{path.name} needs a header, an image key column and at least one "
                         "probability column with rows - one row per image")
    kcol = _key_column(columns, key_col, path)
    keys = df[kcol].str.strip().tolist()
    dup = pd.Series(keys)[pd.Series(keys).duplicated()].unique().tolist()
    if dup:
        raise InputError(f"{path.name}: image keys appear twice ({_examples(dup)}) - one row per image")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with registry.session() as s:
        ds = get_dataset(s, dataset)
        sp = get_split(s, ds, split) if split is not None else None
        by_name: dict[str, Finding] = {}
        for f in ds.findings:
            by_name.setdefault(f.canonical, f)
            by_name.setdefault(f.native, f)
        lower = {k.lower(): v for k, v in by_name.items()}
        mapping: dict[str, Finding] = {}
        unknown = []
        for c in columns:
            if c == kcol:
                continue
            f = by_name.get(c) or lower.get(c.lower())
            if f is None:
                unknown.append(c)
            else:
                mapping[c] = f
        if unknown:
            raise InputError(
                f"{path.name}: columns {', '.join(unknown)} are not findings of {ds.name!r} "
                f"(findings: {', '.join(f.canonical for f in ds.findings)}) - rename them or "
                "pick the key column with --key-col"
            )
        seen: dict[int, str] = {}
        for c, f in mapping.items():
            if f.id in seen:
                raise InputError(f"{path.name}: columns {seen[f.id]!r} and {c!r} both name finding "
                                 f"{f.canonical!r} - keep one")
            seen[f.id] = c
        probs = {}
        for c in mapping:
            v = pd.to_numeric(df[c].str.strip(), errors="coerce").to_numpy(dtype=float)
            bad = np.flatnonzero(~np.isfinite(v) | (v < 0) | (v > 1))
            if bad.size:
                raise InputError(
                    f"{path.name}: column {c!r} has {bad.size} values that are not probabilities in "
                    f"[0, 1] (e.g. row {bad[0] + 2}: {df[c].iloc[bad[0]]!r}) - write one probability "
                    "per image and finding"
                )
            probs[c] = v
        id_by_key = dict(s.execute(select(Image.key, Image.id).where(Image.dataset_id == ds.id)).all())
        missing = [k for k in keys if k not in id_by_key]
        if missing:
            # native paths with a release prefix (CheXpert's "CheXpert-v1.0-small/train/...")
            # name the same image as the registered key "train/..."
            # as do file paths of datasets keyed by an id (MIMIC "files/p10/.../<dicom_id>.jpg",
            # VinDr "test/<image_id>.dicom"): match the file name, then its stem
            by_name: dict[str, int | None] = {}
            for key, iid in list(id_by_key.items()):
                for alias in {PurePosixPath(key).name, PurePosixPath(key).stem}:
                    by_name[alias] = None if alias in by_name and by_name[alias] != iid else iid
            for k in missing:
                parts = k.replace("\\", "/").split("/")
                hit = None
                for i in range(1, len(parts)):
                    hit = id_by_key.get("/".join(parts[i:]))
                    if hit is not None:
                        break
                if hit is None:
                    as_path = PurePosixPath(k.replace("\\", "/"))
                    hit = by_name.get(as_path.name) or by_name.get(as_path.stem)
                if hit is not None:
                    id_by_key[k] = hit
            missing = [k for k in keys if k not in id_by_key]
        if missing and kcol == "image_id" and all(k.isdigit() for k in keys):
            # an image_id column may hold registry ids rather than keys
            ids = set(s.scalars(select(Image.id).where(Image.dataset_id == ds.id)))
            if all(int(k) in ids for k in keys):
                id_by_key = {k: int(k) for k in keys}
                missing = []
        if missing:
            raise InputError(
                f"{path.name}: {len(missing)} image keys are not images of {ds.name!r} "
                f"(e.g. {_examples(missing)}) - use the keys of vitmed datasets export {ds.name}, "
                "or choose the key column with --key-col"
            )
        image_ids = np.array([id_by_key[k] for k in keys], dtype=np.int64)
        # the images predict would score: frontal and labelled - not laterals
        used = set(s.scalars(select(Image.id).where(Image.dataset_id == ds.id,
                                                    used_images(ds.id, cached=False))))
        no_labels = unlabelled_keys(ds)
        keep = np.array([i in used and k not in no_labels for k, i in zip(keys, image_ids.tolist())],
                        dtype=bool)
        n_left_out = int((~keep).sum())
        if n_left_out == len(keys):
            raise InputError(
                f"{path.name}: none of its {len(keys)} images is one vitmed evaluates (frontal, "
                "labelled) - score the frontal images of the dataset"
            )
        if n_left_out:
            keys = [k for k, ok in zip(keys, keep) if ok]
            image_ids = image_ids[keep]
            probs = {c: v[keep] for c, v in probs.items()}
        if sp is not None:
            in_part = set(s.scalars(select(SplitAssignment.image_id).where(
                SplitAssignment.split_id == sp.id, SplitAssignment.part == part)))
            outside = [k for k, i in zip(keys, image_ids.tolist()) if i not in in_part]
            if outside:
                raise InputError(
                    f"{path.name}: {len(outside)} images are not in the {part} part of split "
                    f"{sp.name!r} (e.g. {_examples(outside)}) - pass the right --split / --part"
                )
        fids = [f.id for f in mapping.values()]
        label_rows = []
        id_list = image_ids.tolist()
        for i in range(0, len(id_list), 20_000):  # stay under bound-parameter limits
            label_rows += s.execute(select(Label.image_id, Label.finding_id, Label.value).where(
                Label.finding_id.in_(fids), Label.image_id.in_(id_list[i : i + 20_000]))).all()
        row_of = {iid: r for r, iid in enumerate(id_list)}
        col_of = {fid: j for j, fid in enumerate(fids)}
        y = np.zeros((len(id_list), len(fids)))  # not mentioned = negative
        unc = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertain]
        for iid, fid, val in label_rows:
            y[row_of[iid], col_of[fid]] = unc if val == -1 else float(val)
        p = np.column_stack([probs[c] for c in mapping])
        aucs = stats.roc_auc(y, p)
        ev = Evaluation(
            name=name, source="import", dataset_id=ds.id, split_id=sp.id if sp else None, part=part,
            init_name=name, n_images=len(id_list),
            macro_auc=float(np.nanmean(aucs)) if np.isfinite(aucs).any() else None,
            skipped_findings=[f.canonical for f in ds.findings if f.id not in col_of],
            uncertain_policy=uncertain,
            config={"file": str(path.resolve()), "sha256": sha, "key_column": kcol,
                    "columns": {c: f.canonical for c, f in mapping.items()},
                    "n_left_out": n_left_out},
        )
        s.add(ev)
        s.flush()
        for j, f in enumerate(mapping.values()):
            col = y[:, j]
            s.add(EvaluationMetric(
                evaluation_id=ev.id, finding=f.canonical,
                auc=float(aucs[j]) if np.isfinite(aucs[j]) else None,
                n_positive=int((col == 1).sum()), n_negative=int((col == 0).sum()),
            ))
        rows = [
            {"evaluation_id": ev.id, "image_id": iid, "finding_id": fid,
             "probability": float(p[r, j]), "label": None if np.isnan(y[r, j]) else int(y[r, j])}
            for r, iid in enumerate(id_list) for j, fid in enumerate(fids)
        ]
        for i in range(0, len(rows), 50_000):
            s.execute(insert(Prediction), rows[i : i + 50_000])
        return {
            "evaluation_id": ev.id, "name": name, "dataset": ds.name,
            "split": sp.name if sp else None, "part": part, "n_images": len(id_list),
            "macro_auc": ev.macro_auc, "uncertain_policy": uncertain,
            "findings": {f.canonical: (float(aucs[j]) if np.isfinite(aucs[j]) else None)
                         for j, f in enumerate(mapping.values())},
            "skipped_findings": ev.skipped_findings,
            "n_left_out": n_left_out,
        }


def comparison_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (pair x finding, macro last) for CSV output."""
    out = []
    for pair in result["pairs"]:
        for r in pair["findings"] + [pair["macro"]]:
            out.append({"comparison_id": pair["comparison_id"], "a": pair["a"], "b": pair["b"],
                        **{k: r.get(k) for k in _RESULT_COLUMNS}, "better": r.get("better")})
    return out


__all__ = [
    "Aligned", "EvalArrays", "align_evaluations", "compare", "comparison_rows", "import_evaluation",
    "load_evaluation_arrays",
]
