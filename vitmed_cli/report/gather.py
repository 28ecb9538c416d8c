"""Reading the report out of the registry: the latest test evaluations per initialisation,
bootstrapped AUCs, stored comparisons and the provenance of every number."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from sqlalchemy import func, select

from .. import __version__
from .._util import finite_or_none
from ..choices import DEFAULT_RESAMPLES
from ..errors import ConfigError, NotFound
from ..evaluations.store import load_evaluation_arrays
from ..events import Listener, progress
from ..registry.db import Registry
from ..registry.models import MACRO, Comparison, Dataset, Evaluation, EvaluationMetric, Image, Prediction, Run
from ..registry.queries import get_dataset, run_tune, used_images
from ..splits import split_summary
from ..stats import bootstrap_auc
from .figures import bar_figure, dataset_figures, unique_filenames
from .model import (
    init_sort_key,
    ComparisonRow,
    ComparisonTable,
    DatasetSection,
    FindingRow,
    InitRow,
    Report,
    RunInfo,
)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in map(finite_or_none, values) if v is not None]
    return float(np.mean(vals)) if vals else None


def _eval_init(ev: Evaluation) -> str:
    return ev.init_name or ev.name


def _eval_model(ev: Evaluation) -> tuple[str, str | None, int | None]:
    """What an evaluation scores: (initialisation, tuning, training resolution)."""
    run = ev.run
    return _eval_init(ev), run_tune(run), run.image_size if run is not None else None


def _model_label(key: tuple[str, str | None, int | None], several_sizes: bool) -> str:
    """The report's name of a model: its init, with its tuning (not all) and resolution (when
    the dataset was evaluated at several), e.g. ``dinov2 [head] @512px``."""
    init, tune, size = key
    label = init if tune in (None, "all") else f"{init} [{tune}]"
    return f"{label} @{size}px" if several_sizes and size is not None else label


def _model_kwargs(run: Run) -> dict[str, Any]:
    cfg = run.config or {}
    kw = cfg.get("model_kwargs")
    if not kw and isinstance(cfg.get("train"), dict):
        kw = cfg["train"].get("model_kwargs")
    return dict(kw) if isinstance(kw, dict) else {}


def _init_source_run(session, run: Run) -> Run | None:
    """The run whose output checkpoint initialised ``run`` (checkpoint source 'run'), if any."""
    ck = run.init_checkpoint
    if ck is None or ck.source != "run":
        return None
    src_id = ck.run_id if ck.run_id is not None else (ck.meta or {}).get("from_run")
    if src_id is None or src_id == run.id:
        return None
    try:
        return session.get(Run, int(src_id))
    except (TypeError, ValueError):
        return None


def _run_info(session, run: Run) -> RunInfo:
    sha = run.init_sha256 or (run.init_checkpoint.sha256 if run.init_checkpoint else None)
    src = _init_source_run(session, run)
    return RunInfo(
        model_kwargs=_model_kwargs(run),
        init_run_id=src.id if src is not None else None,
        init_run_dataset=src.dataset.name if src is not None else None,
        init_run_split=src.split.name if src is not None else None,
        id=run.id,
        init_name=run.init_name,
        arch=run.arch,
        init_checkpoint_id=run.init_checkpoint_id,
        init_sha256=sha,
        split=run.split.name,
        split_seed=run.split.seed,
        seed=run.seed,
        status=run.status,
        tune=run_tune(run) or "all",
        image_size=run.image_size,
        epochs_done=run.epochs_done,
        best_epoch=run.best_epoch,
        best_val_macro_auc=finite_or_none(run.best_val_macro_auc),
        code_version=run.code_version,
        started_at=_iso(run.started_at),
        epochs=[m.epoch for m in run.epochs],
        val_macro_auc=[finite_or_none(m.val_macro_auc) for m in run.epochs],
    )


def _latest_test_evaluations(session, ds: Dataset) -> list[tuple[str, Evaluation]]:
    """The latest test evaluation of each model (init, tuning, resolution), labelled, grouped by
    resolution (smallest first), then in the study's init order."""
    evs = session.scalars(
        select(Evaluation)
        .where(Evaluation.dataset_id == ds.id, Evaluation.part == "test")
        .order_by(Evaluation.created_at, Evaluation.id)
    ).all()
    latest: dict[tuple, Evaluation] = {}
    for ev in evs:  # later rows win
        latest[_eval_model(ev)] = ev
    several = len({k[2] for k in latest if k[2] is not None}) > 1
    # imported evaluations (no training resolution) after the runs
    keys = sorted(latest, key=lambda k: (k[2] is None, k[2] or 0, init_sort_key(k[0]), k[1] or ""))
    return [(_model_label(k, several), latest[k]) for k in keys]


def _bootstrap(session, ev: Evaluation, n_resamples: int, seed: int):
    """(arrays, BootstrapAUC) from the stored predictions, or (None, None) when there are none."""
    n_pred = session.scalar(
        select(func.count()).select_from(Prediction).where(Prediction.evaluation_id == ev.id)
    )
    if not n_pred:
        return None, None
    arrays = load_evaluation_arrays(session, ev.id)
    # A finding without positives or negatives on this part has no AUC; leaving it in would
    # make every resampled macro average undefined, so the macro is over scoreable findings.
    y = arrays.y_true
    keep = [j for j in range(y.shape[1]) if np.any(y[:, j] == 1) and np.any(y[:, j] == 0)]
    if not keep:
        return arrays, None
    boot = bootstrap_auc(y[:, keep], arrays.scores[:, keep], n_resamples=n_resamples, seed=seed)
    return arrays, (boot, [arrays.findings[j] for j in keep])


def _split_parts(session, ds: Dataset) -> dict[str, dict[str, Any]]:
    splits: dict[str, dict[str, Any]] = {}
    for sp in ds.splits:
        info = split_summary(session, sp)
        parts = {p: v["n_images"] for p, v in info["parts"].items() if v["n_images"]}
        splits[sp.name] = {"seed": sp.seed, "method": sp.method, "by": sp.by, "parts": parts}
    return splits


def _init_row(session, ev: Evaluation, metrics: dict[str, EvaluationMetric]) -> InitRow:
    """The summary row of one evaluation, before its bootstrap."""
    run = ev.run
    if run is not None:
        sha = run.init_sha256 or (run.init_checkpoint.sha256 if run.init_checkpoint else None)
        code_version = run.code_version
    else:
        sha, code_version = None, (ev.config or {}).get("code_version")
    return InitRow(
        tune=run_tune(run),
        image_size=run.image_size if run is not None else None,
        run_dataset=run.dataset.name if run is not None else None,
        init_name=_eval_init(ev),
        evaluation_id=ev.id,
        evaluation_name=ev.name,
        source=ev.source,
        run_id=ev.run_id,
        init_sha256=sha,
        split=ev.split.name if ev.split else None,
        split_seed=ev.split.seed if ev.split else None,
        code_version=code_version,
        n_images=ev.n_images,
        created_at=_iso(ev.created_at),
        auc=finite_or_none(ev.macro_auc),
        sensitivity=_mean(m.sensitivity for m in metrics.values()),
        specificity=_mean(m.specificity for m in metrics.values()),
        accuracy=_mean(m.accuracy for m in metrics.values()),
        n_findings=len(metrics),
    )


def _finding_row(name: str, row: InitRow, m: EvaluationMetric | None, s: Any) -> FindingRow:
    """One finding of one evaluation: its stored metrics ``m`` and bootstrap summary ``s``."""
    auc = finite_or_none(m.auc) if m is not None and m.auc is not None else (finite_or_none(s.auc) if s else None)
    return FindingRow(
        finding=name, init_name=row.init_name, evaluation_id=row.evaluation_id, auc=auc,
        auc_mean=finite_or_none(s.mean) if s else None,
        auc_sd=finite_or_none(s.sd) if s else None,
        ci_low=finite_or_none(s.ci_low) if s else None,
        ci_high=finite_or_none(s.ci_high) if s else None,
        threshold=finite_or_none(m.threshold) if m else None,
        sensitivity=finite_or_none(m.sensitivity) if m else None,
        specificity=finite_or_none(m.specificity) if m else None,
        accuracy=finite_or_none(m.accuracy) if m else None,
        n_positive=m.n_positive if m else None,
        n_negative=m.n_negative if m else None,
    )


def _evaluation_rows(session, ds: Dataset, ev: Evaluation, n_resamples: int, seed: int,
                     arrays_out: dict, label: str | None = None) -> tuple[InitRow, list[FindingRow]]:
    """One evaluation's summary row (bootstrapped macro AUC) and its per-finding rows."""
    metrics = {
        m.finding: m
        for m in session.scalars(select(EvaluationMetric).where(EvaluationMetric.evaluation_id == ev.id))
        if m.finding != MACRO
    }
    row = _init_row(session, ev, metrics)
    row.init_name = label or row.init_name
    arrays, boot = _bootstrap(session, ev, n_resamples, seed)
    summaries: dict[str, Any] = {}
    if arrays is not None:
        arrays_out[ev.id] = arrays
    if boot is not None:
        boot, scored = boot
        mac = boot.macro
        row.auc = finite_or_none(mac.auc) if row.auc is None else row.auc
        row.auc_mean, row.auc_sd = finite_or_none(mac.mean), finite_or_none(mac.sd)
        row.ci_low, row.ci_high = finite_or_none(mac.ci_low), finite_or_none(mac.ci_high)
        row.n_degenerate, row.n_resamples = mac.n_degenerate, n_resamples
        summaries = dict(zip(scored, boot.findings))
        if not row.n_images:
            row.n_images = len(arrays.image_ids)
    names = [f.canonical for f in ds.findings]
    names += [n for n in list(metrics) + list(summaries) if n not in names]
    findings = [_finding_row(n, row, metrics.get(n), summaries.get(n))
                for n in names if n in metrics or n in summaries]
    return row, findings


def _latest_comparisons(session, ds: Dataset) -> list[tuple[Comparison, int]]:
    """Per set of compared evaluations, the latest stored comparison and how many were stored.

    Every `vitmed compare` stores a new comparison (kept for provenance); the set is the
    pair, and the group's evaluations for 3+ models.
    """
    stored = list(session.scalars(
        select(Comparison).where(Comparison.dataset_id == ds.id)
        .order_by(Comparison.created_at, Comparison.id)
    ))
    group_evals: dict[str, set[int]] = {}
    for cmp in stored:
        if cmp.group_id:
            group_evals.setdefault(cmp.group_id, set()).update((cmp.evaluation_a_id, cmp.evaluation_b_id))
    latest: dict[tuple, Comparison] = {}
    n_stored: dict[tuple, int] = {}
    for cmp in stored:  # later rows win
        members = group_evals.get(cmp.group_id or "", {cmp.evaluation_a_id, cmp.evaluation_b_id})
        key = (cmp.evaluation_a_id, cmp.evaluation_b_id, frozenset(members))
        latest.pop(key, None)
        latest[key] = cmp
        n_stored[key] = n_stored.get(key, 0) + 1
    return [(cmp, n_stored[key]) for key, cmp in sorted(latest.items(), key=lambda kv: kv[1].id)]


def _comparison_table(session, cmp: Comparison, n_stored: int, order: dict[str, int]) -> ComparisonTable:
    ev_a, ev_b = session.get(Evaluation, cmp.evaluation_a_id), session.get(Evaluation, cmp.evaluation_b_id)
    results = sorted(cmp.results, key=lambda r: (r.finding == MACRO, order.get(r.finding, len(order)), r.finding))
    return ComparisonTable(
        id=cmp.id, label_a=cmp.label_a, label_b=cmp.label_b,
        evaluation_a_id=cmp.evaluation_a_id, evaluation_b_id=cmp.evaluation_b_id,
        run_a_id=ev_a.run_id if ev_a else None, run_b_id=ev_b.run_id if ev_b else None,
        n_images=cmp.n_images, n_resamples=cmp.n_resamples, seed=cmp.seed,
        group_id=cmp.group_id, options=dict(cmp.options or {}), created_at=_iso(cmp.created_at),
        name_a=_model_label(_eval_model(ev_a), False) if ev_a else cmp.label_a,
        name_b=_model_label(_eval_model(ev_b), False) if ev_b else cmp.label_b,
        n_stored=n_stored,
        rows=[ComparisonRow(
            finding=r.finding, auc_a=finite_or_none(r.auc_a), auc_b=finite_or_none(r.auc_b),
            diff=finite_or_none(r.diff), ci_low=finite_or_none(r.ci_low), ci_high=finite_or_none(r.ci_high),
            p_value=finite_or_none(r.p_value), p_delong=finite_or_none(r.p_delong),
            p_adjusted=finite_or_none(r.p_adjusted), n_positive=r.n_positive, n_negative=r.n_negative,
        ) for r in results],
    )


def _gather_dataset(session, ds: Dataset, n_resamples: int, seed: int, arrays_out: dict,
                    step: Callable[[str], None]) -> DatasetSection | None:
    evs = _latest_test_evaluations(session, ds)
    if not evs:
        return None
    n_images = session.scalar(select(func.count()).where(Image.dataset_id == ds.id)) or 0
    # the images training and evaluation use: the one rule of registry.queries.used_images
    n_frontal = session.scalar(
        select(func.count()).where(Image.dataset_id == ds.id, used_images(ds.id))
    ) or 0
    inits: list[InitRow] = []
    per_finding: list[FindingRow] = []
    for label, ev in evs:
        step(f"{ds.name}: bootstrap of {label}")
        row, rows = _evaluation_rows(session, ds, ev, n_resamples, seed, arrays_out, label)
        inits.append(row)
        per_finding += rows
    order = {n: i for i, n in enumerate(f.canonical for f in ds.findings)}
    init_pos = {r.init_name: i for i, r in enumerate(inits)}
    per_finding.sort(key=lambda r: (order.get(r.finding, len(order)), r.finding, init_pos[r.init_name]))
    comparisons = [_comparison_table(session, cmp, n, order) for cmp, n in _latest_comparisons(session, ds)]
    runs = [
        _run_info(session, r)
        for r in session.scalars(select(Run).where(Run.dataset_id == ds.id).order_by(Run.id))
    ]
    return DatasetSection(
        name=ds.name, n_images=n_images, n_images_frontal=n_frontal,
        findings=[f.canonical for f in ds.findings], splits=_split_parts(session, ds),
        inits=inits, per_finding=per_finding, comparisons=comparisons, runs=runs,
    )


def build_report(
    registry: Registry,
    *,
    datasets: Sequence[str] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    figures: bool = True,
    on_event: Listener | None = None,
) -> Report:
    """Gather the report from the registry: tables, provenance and (optionally) figures.

    Raises NotFound for an unknown dataset and when there is nothing to report.
    """
    if n_resamples < 1:
        raise ConfigError(f"`resamples` must be at least 1 (got {n_resamples}) - use e.g. {DEFAULT_RESAMPLES}")
    arrays: dict[int, Any] = {}
    sections: list[DatasetSection] = []
    with registry.session(readonly=True) as s:
        if datasets:
            chosen = [get_dataset(s, name) for name in dict.fromkeys(datasets)]
        else:
            chosen = list(s.scalars(select(Dataset).order_by(Dataset.name)))
        n_evals = s.scalar(
            select(func.count()).select_from(Evaluation).where(
                Evaluation.part == "test", Evaluation.dataset_id.in_([d.id for d in chosen])
            )
        ) if chosen else 0
        total = n_evals + len(chosen)
        done = 0

        def step(label: str) -> None:
            nonlocal done
            progress(on_event, "report", done, total, label)
            done += 1

        for ds in chosen:
            sec = _gather_dataset(s, ds, n_resamples, seed, arrays, step)
            if sec is not None:
                sections.append(sec)
    if not sections:
        where = (
            f"for dataset(s) {', '.join(datasets)} " if datasets else ""
        )
        raise NotFound(
            f"nothing to report: no evaluations on the test part {where}in the registry at "
            f"{registry.url} - run vitmed predict or vitmed evals import first"
        )
    rep = Report(
        generated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        vitmed_version=__version__,
        registry_url=registry.url,
        n_resamples=n_resamples,
        seed=seed,
        datasets=sections,
    )
    if figures:
        for sec in sections:
            progress(on_event, "report", done, total, f"{sec.name}: figures")
            done += 1
            sec.figures = dataset_figures(sec, arrays)
        bars = bar_figure(sections)
        if bars is not None:
            rep.figures.append(bars)
        unique_filenames(rep.all_figures())
    progress(on_event, "report", total, total)
    return rep
