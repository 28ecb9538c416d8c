"""The study's tables and figures, rebuilt from the registry.

:func:`build_report` reads the registry into plain dataclasses (no ORM rows
leave it); :func:`render_html` and :func:`render_markdown` turn that into one
self-contained HTML page (inline CSS, figures as PNG data URIs, nothing fetched
from the network) or a Markdown file with its figures as PNG files beside it.

Which evaluations the tables show: for each dataset and initialisation, the
latest evaluation on the *test* part (imported evaluations appear under their
name).  The AUC column is the mean +- SD of the macro-average AUC over
bootstrap resamples of the test images, with a 95 % percentile interval; the SD
is over resampled macro averages, not over the findings' AUCs pooled.
Sensitivity, specificity and accuracy are those stored by ``vitmed predict`` at
the threshold chosen on the validation part (averaged over findings in the
summary table); "-" where the evaluation has none (e.g. imported scores).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from sqlalchemy import func, select

from . import __version__
from .catalog import used_images
from .errors import ConfigError, NotFound
from .splits import split_summary
from .registry.db import Registry
from .registry.models import (
    MACRO,
    Comparison,
    Dataset,
    Evaluation,
    EvaluationMetric,
    Image,
    Prediction,
    Run,
)

ALPHA = 0.05
FORMATS = ("html", "md")
INIT_ORDER = ("random", "imagenet", "dinov2")
KWARG_ORDER = ("patch_size", "depth", "embed_dim", "num_heads")
Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- model


@dataclass
class RunInfo:
    """Where one run came from: the provenance of the numbers it produced."""

    id: int
    init_name: str
    arch: str
    init_checkpoint_id: int | None
    init_sha256: str | None
    split: str
    split_seed: int | None
    seed: int
    status: str
    epochs_done: int
    best_epoch: int | None
    best_val_macro_auc: float | None
    code_version: str | None
    started_at: str | None
    epochs: list[int] = field(default_factory=list)
    val_macro_auc: list[float | None] = field(default_factory=list)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init_run_id: int | None = None
    init_run_dataset: str | None = None
    init_run_split: str | None = None

    @property
    def arch_label(self) -> str:
        """``arch`` plus the model kwargs the run built it with, e.g. ``vit_tiny (patch_size=8, depth=4)``."""
        if not self.model_kwargs:
            return self.arch
        keys = [k for k in KWARG_ORDER if k in self.model_kwargs]
        keys += sorted(k for k in self.model_kwargs if k not in KWARG_ORDER)
        return f"{self.arch} ({', '.join(f'{k}={self.model_kwargs[k]}' for k in keys)})"

    @property
    def init_from(self) -> str | None:
        """The run that produced this run's initialisation, for checkpoints with source 'run'."""
        if self.init_run_id is None:
            return None
        return (f"run {self.init_run_id} (dataset {self.init_run_dataset or '-'}, "
                f"split {self.init_run_split or '-'})")


@dataclass
class InitRow:
    """One initialisation on one dataset: the summary numbers and where they came from."""

    init_name: str
    evaluation_id: int
    evaluation_name: str
    source: str
    run_id: int | None
    init_sha256: str | None
    split: str | None
    split_seed: int | None
    code_version: str | None
    n_images: int
    created_at: str | None
    auc: float | None
    auc_mean: float | None = None
    auc_sd: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_degenerate: int | None = None
    n_resamples: int | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    accuracy: float | None = None
    n_findings: int = 0


@dataclass
class FindingRow:
    finding: str
    init_name: str
    evaluation_id: int
    auc: float | None
    auc_mean: float | None
    auc_sd: float | None
    ci_low: float | None
    ci_high: float | None
    threshold: float | None
    sensitivity: float | None
    specificity: float | None
    accuracy: float | None
    n_positive: int | None
    n_negative: int | None


@dataclass
class ComparisonRow:
    finding: str
    auc_a: float | None
    auc_b: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_delong: float | None
    p_adjusted: float | None
    n_positive: int | None
    n_negative: int | None

    @property
    def significant(self) -> bool:
        """Adjusted p below ALPHA (the macro row, which has no adjustment, uses its own p)."""
        p = self.p_adjusted if self.p_adjusted is not None else (
            self.p_value if self.finding == MACRO else None
        )
        return _is_sig(p)


@dataclass
class ComparisonTable:
    id: int
    label_a: str
    label_b: str
    evaluation_a_id: int
    evaluation_b_id: int
    run_a_id: int | None
    run_b_id: int | None
    n_images: int
    n_resamples: int
    seed: int
    group_id: str | None
    options: dict[str, Any]
    created_at: str | None
    rows: list[ComparisonRow]
    name_a: str = ""
    name_b: str = ""
    n_stored: int = 1


@dataclass
class FigureData:
    """A figure as PNG bytes; ``filename`` is where Markdown output puts it."""

    kind: str  # 'roc' | 'epochs' | 'bars'
    title: str
    filename: str
    png: bytes
    dataset: str | None = None
    finding: str | None = None


@dataclass
class DatasetSection:
    name: str
    n_images: int
    n_images_frontal: int
    findings: list[str]
    splits: dict[str, dict[str, Any]]
    inits: list[InitRow]
    per_finding: list[FindingRow]
    comparisons: list[ComparisonTable]
    runs: list[RunInfo]
    figures: list[FigureData] = field(default_factory=list)


@dataclass
class Report:
    generated_at: str
    vitmed_version: str
    registry_url: str
    n_resamples: int
    seed: int
    datasets: list[DatasetSection]
    figures: list[FigureData] = field(default_factory=list)

    @property
    def n_tables(self) -> int:
        """Data tables (summary, per finding, one per comparison); provenance not counted."""
        return sum(2 + len(d.comparisons) for d in self.datasets)

    @property
    def n_figures(self) -> int:
        return len(self.figures) + sum(len(d.figures) for d in self.datasets)

    def all_figures(self) -> list[FigureData]:
        return list(self.figures) + [f for d in self.datasets for f in d.figures]


@dataclass
class WrittenReport:
    path: Path
    format: str
    datasets: list[str]
    n_tables: int
    n_figures: int
    figure_files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "datasets": self.datasets,
            "n_tables": self.n_tables,
            "n_figures": self.n_figures,
            "figure_files": [str(p) for p in self.figure_files],
        }


# --------------------------------------------------------------------------- gathering


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _init_key(name: str) -> tuple[int, str]:
    return (INIT_ORDER.index(name), name) if name in INIT_ORDER else (len(INIT_ORDER), name)


def _eval_init(ev: Evaluation) -> str:
    return ev.init_name or ev.name


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
        epochs_done=run.epochs_done,
        best_epoch=run.best_epoch,
        best_val_macro_auc=_num(run.best_val_macro_auc),
        code_version=run.code_version,
        started_at=_iso(run.started_at),
        epochs=[m.epoch for m in run.epochs],
        val_macro_auc=[_num(m.val_macro_auc) for m in run.epochs],
    )


def _latest_test_evaluations(session, ds: Dataset) -> list[Evaluation]:
    evs = session.scalars(
        select(Evaluation)
        .where(Evaluation.dataset_id == ds.id, Evaluation.part == "test")
        .order_by(Evaluation.created_at, Evaluation.id)
    ).all()
    latest: dict[str, Evaluation] = {}
    for ev in evs:  # later rows win
        latest[_eval_init(ev)] = ev
    return [latest[k] for k in sorted(latest, key=_init_key)]


def _bootstrap(session, ev: Evaluation, n_resamples: int, seed: int):
    """(arrays, BootstrapAUC) from the stored predictions, or (None, None) when there are none."""
    n_pred = session.scalar(
        select(func.count()).select_from(Prediction).where(Prediction.evaluation_id == ev.id)
    )
    if not n_pred:
        return None, None
    from .compare import load_evaluation_arrays
    from .stats import bootstrap_auc

    arrays = load_evaluation_arrays(session, ev.id)
    # A finding without positives or negatives on this part has no AUC; leaving it in would
    # make every resampled macro average undefined, so the macro is over scoreable findings.
    y = arrays.y_true
    keep = [j for j in range(y.shape[1]) if np.any(y[:, j] == 1) and np.any(y[:, j] == 0)]
    if not keep:
        return arrays, None
    boot = bootstrap_auc(y[:, keep], arrays.scores[:, keep], n_resamples=n_resamples, seed=seed)
    return arrays, (boot, [arrays.findings[j] for j in keep])


def _gather_dataset(session, ds: Dataset, n_resamples: int, seed: int, arrays_out: dict,
                    step: Callable[[str], None]) -> DatasetSection | None:
    evs = _latest_test_evaluations(session, ds)
    if not evs:
        return None
    n_images = session.scalar(select(func.count()).where(Image.dataset_id == ds.id)) or 0
    # the images training and evaluation use: the one rule of catalog.used_images
    n_frontal = session.scalar(
        select(func.count()).where(Image.dataset_id == ds.id, used_images(ds.id))
    ) or 0
    splits: dict[str, dict[str, Any]] = {}
    for sp in ds.splits:
        info = split_summary(session, sp)
        parts = {p: v["n_images"] for p, v in info["parts"].items() if v["n_images"]}
        splits[sp.name] = {"seed": sp.seed, "method": sp.method, "by": sp.by, "parts": parts}

    inits: list[InitRow] = []
    per_finding: list[FindingRow] = []
    for ev in evs:
        step(f"{ds.name}: bootstrap of {_eval_init(ev)}")
        run = ev.run
        sha = None
        code_version = None
        if run is not None:
            sha = run.init_sha256 or (run.init_checkpoint.sha256 if run.init_checkpoint else None)
            code_version = run.code_version
        else:
            code_version = (ev.config or {}).get("code_version")
        metrics = {
            m.finding: m
            for m in session.scalars(
                select(EvaluationMetric).where(EvaluationMetric.evaluation_id == ev.id)
            )
            if m.finding != MACRO
        }
        arrays, boot = _bootstrap(session, ev, n_resamples, seed)
        row = InitRow(
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
            auc=_num(ev.macro_auc),
            sensitivity=_mean(m.sensitivity for m in metrics.values()),
            specificity=_mean(m.specificity for m in metrics.values()),
            accuracy=_mean(m.accuracy for m in metrics.values()),
            n_findings=len(metrics),
        )
        summaries: dict[str, Any] = {}
        if arrays is not None:
            arrays_out[ev.id] = arrays
        if boot is not None:
            boot, scored = boot
            mac = boot.macro
            row.auc = _num(mac.auc) if row.auc is None else row.auc
            row.auc_mean, row.auc_sd = _num(mac.mean), _num(mac.sd)
            row.ci_low, row.ci_high = _num(mac.ci_low), _num(mac.ci_high)
            row.n_degenerate, row.n_resamples = mac.n_degenerate, n_resamples
            summaries = dict(zip(scored, boot.findings))
            if not row.n_images:
                row.n_images = len(arrays.image_ids)
        inits.append(row)
        names = [f.canonical for f in ds.findings]
        names += [n for n in list(metrics) + list(summaries) if n not in names]
        for name in names:
            m, s = metrics.get(name), summaries.get(name)
            if m is None and s is None:
                continue
            per_finding.append(FindingRow(
                finding=name,
                init_name=row.init_name,
                evaluation_id=ev.id,
                auc=_num(m.auc) if m is not None and m.auc is not None else (_num(s.auc) if s else None),
                auc_mean=_num(s.mean) if s else None,
                auc_sd=_num(s.sd) if s else None,
                ci_low=_num(s.ci_low) if s else None,
                ci_high=_num(s.ci_high) if s else None,
                threshold=_num(m.threshold) if m else None,
                sensitivity=_num(m.sensitivity) if m else None,
                specificity=_num(m.specificity) if m else None,
                accuracy=_num(m.accuracy) if m else None,
                n_positive=m.n_positive if m else None,
                n_negative=m.n_negative if m else None,
            ))
    order = {n: i for i, n in enumerate(f.canonical for f in ds.findings)}
    init_pos = {r.init_name: i for i, r in enumerate(inits)}
    per_finding.sort(key=lambda r: (order.get(r.finding, len(order)), r.finding, init_pos[r.init_name]))

    # Every `vitmed compare` stores a new comparison (kept for provenance); the report shows, per
    # set of compared evaluations (the pair, and the group's evaluations for 3+ models), the latest.
    stored = list(session.scalars(
        select(Comparison).where(Comparison.dataset_id == ds.id)
        .order_by(Comparison.created_at, Comparison.id)
    ))
    group_evals: dict[str, set[int]] = {}
    for cmp in stored:
        if cmp.group_id:
            group_evals.setdefault(cmp.group_id, set()).update((cmp.evaluation_a_id, cmp.evaluation_b_id))
    latest_cmp: dict[tuple, Comparison] = {}
    n_stored: dict[tuple, int] = {}
    for cmp in stored:  # later rows win
        members = group_evals.get(cmp.group_id or "", {cmp.evaluation_a_id, cmp.evaluation_b_id})
        key = (cmp.evaluation_a_id, cmp.evaluation_b_id, frozenset(members))
        latest_cmp.pop(key, None)
        latest_cmp[key] = cmp
        n_stored[key] = n_stored.get(key, 0) + 1
    comparisons: list[ComparisonTable] = []
    for key, cmp in sorted(latest_cmp.items(), key=lambda kv: kv[1].id):
        ev_a, ev_b = session.get(Evaluation, cmp.evaluation_a_id), session.get(Evaluation, cmp.evaluation_b_id)
        results = sorted(cmp.results, key=lambda r: (r.finding == MACRO, order.get(r.finding, len(order)), r.finding))
        comparisons.append(ComparisonTable(
            id=cmp.id, label_a=cmp.label_a, label_b=cmp.label_b,
            evaluation_a_id=cmp.evaluation_a_id, evaluation_b_id=cmp.evaluation_b_id,
            run_a_id=ev_a.run_id if ev_a else None, run_b_id=ev_b.run_id if ev_b else None,
            n_images=cmp.n_images, n_resamples=cmp.n_resamples, seed=cmp.seed,
            group_id=cmp.group_id, options=dict(cmp.options or {}), created_at=_iso(cmp.created_at),
            name_a=_eval_init(ev_a) if ev_a else cmp.label_a,
            name_b=_eval_init(ev_b) if ev_b else cmp.label_b,
            n_stored=n_stored[key],
            rows=[ComparisonRow(
                finding=r.finding, auc_a=_num(r.auc_a), auc_b=_num(r.auc_b), diff=_num(r.diff),
                ci_low=_num(r.ci_low), ci_high=_num(r.ci_high), p_value=_num(r.p_value),
                p_delong=_num(r.p_delong), p_adjusted=_num(r.p_adjusted),
                n_positive=r.n_positive, n_negative=r.n_negative,
            ) for r in results],
        ))

    runs = [
        _run_info(session, r)
        for r in session.scalars(select(Run).where(Run.dataset_id == ds.id).order_by(Run.id))
    ]
    return DatasetSection(
        name=ds.name, n_images=n_images, n_images_frontal=n_frontal,
        findings=[f.canonical for f in ds.findings], splits=splits,
        inits=inits, per_finding=per_finding, comparisons=comparisons, runs=runs,
    )


def build_report(
    registry: Registry,
    *,
    datasets: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    figures: bool = True,
    progress: Progress | None = None,
) -> Report:
    """Gather the report from the registry: tables, provenance and (optionally) figures.

    Raises NotFound for an unknown dataset and when there is nothing to report.
    """
    if n_resamples < 1:
        raise ConfigError(f"--resamples must be at least 1 (got {n_resamples}) - use e.g. 1000")
    arrays: dict[int, Any] = {}
    sections: list[DatasetSection] = []
    with registry.session() as s:
        if datasets:
            from .catalog import get_dataset

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
            if progress is not None:
                progress(label, done, total)
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
            if progress is not None:
                progress(f"{sec.name}: figures", done, total)
            done += 1
            sec.figures = _dataset_figures(sec, arrays)
        bars = _bar_figure(sections)
        if bars is not None:
            rep.figures.append(bars)
        _unique_filenames(rep.all_figures())
    if progress is not None:
        progress("done", total, total)
    return rep


# --------------------------------------------------------------------------- figures


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.").lower() or "x"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _new_figure(width: float = 4.6, height: float = 4.0):
    # The object API (no pyplot): no global state, always the Agg canvas.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _roc_figure(sec: DatasetSection, finding: str, arrays: dict[int, Any]) -> FigureData | None:
    from sklearn.metrics import roc_curve

    fig = _new_figure()
    ax = fig.add_subplot()
    drawn = 0
    for row in sec.inits:
        arr = arrays.get(row.evaluation_id)
        if arr is None or finding not in arr.findings:
            continue
        j = arr.findings.index(finding)
        y, p = arr.y_true[:, j], arr.scores[:, j]
        keep = ~np.isnan(y) & ~np.isnan(p)
        y, p = y[keep], p[keep]
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        auc = next((r.auc for r in sec.per_finding
                    if r.finding == finding and r.evaluation_id == row.evaluation_id), None)
        label = row.init_name + (f" (AUC {auc:.3f})" if auc is not None else "")
        ax.plot(fpr, tpr, lw=1.6, label=label)
        drawn += 1
    if not drawn:
        return None
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{sec.name}: {finding}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return FigureData(
        kind="roc", title=f"ROC curves of {finding} on {sec.name} (test part)",
        filename=f"roc_{_slug(sec.name)}_{_slug(finding)}.png", png=_png(fig),
        dataset=sec.name, finding=finding,
    )


def _epoch_figure(sec: DatasetSection) -> FigureData | None:
    runs = [r for r in sec.runs if any(v is not None for v in r.val_macro_auc)]
    if not runs:
        return None
    fig = _new_figure(6.0, 3.8)
    ax = fig.add_subplot()
    for r in runs:
        pts = [(e, v) for e, v in zip(r.epochs, r.val_macro_auc) if v is not None]
        ax.plot([e for e, _ in pts], [v for _, v in pts], marker="o", ms=3, lw=1.4,
                label=f"run {r.id} ({r.init_name})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation macro AUC")
    ax.set_title(f"{sec.name}: validation AUC per epoch", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return FigureData(
        kind="epochs", title=f"Validation macro AUC per epoch, runs on {sec.name}",
        filename=f"epochs_{_slug(sec.name)}.png", png=_png(fig), dataset=sec.name,
    )


def _dataset_figures(sec: DatasetSection, arrays: dict[int, Any]) -> list[FigureData]:
    out: list[FigureData] = []
    names = list(sec.findings) + [r.finding for r in sec.per_finding if r.finding not in sec.findings]
    for finding in dict.fromkeys(names):
        fig = _roc_figure(sec, finding, arrays)
        if fig is not None:
            out.append(fig)
    ep = _epoch_figure(sec)
    if ep is not None:
        out.append(ep)
    return out


def _unique_filenames(figs: list[FigureData]) -> None:
    # Names that slug alike ("Lung Lesion", "lung-lesion") must not overwrite each other's PNG.
    seen: set[str] = set()
    for f in figs:
        stem, n = f.filename[:-4], 1
        while f.filename in seen:
            n += 1
            f.filename = f"{stem}_{n}.png"
        seen.add(f.filename)


def _bar_figure(sections: list[DatasetSection]) -> FigureData | None:
    inits = sorted({r.init_name for s in sections for r in s.inits}, key=_init_key)
    if not inits:
        return None
    colours = {name: f"C{k % 10}" for k, name in enumerate(inits)}
    widest = max(len(s.inits) for s in sections)
    fig = _new_figure(max(4.5, 0.55 * sum(len(s.inits) for s in sections) + 2.5), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / widest
    labelled: set[str] = set()
    lows = [0.5]
    for i, sec in enumerate(sections):
        # Only the initialisations this dataset has, centred on its tick.
        for k, row in enumerate(sec.inits):
            v = row.auc_mean if row.auc_mean is not None else row.auc
            if v is None:
                continue
            err = None
            if row.ci_low is not None and row.ci_high is not None:
                err = [[max(0.0, v - row.ci_low)], [max(0.0, row.ci_high - v)]]
                lows.append(row.ci_low)
            lows.append(v)
            ax.bar(i + (k - (len(sec.inits) - 1) / 2) * width, v, width * 0.95, yerr=err, capsize=3,
                   color=colours[row.init_name],
                   label=None if row.init_name in labelled else row.init_name)
            labelled.add(row.init_name)
    ax.set_xticks(np.arange(len(sections)), [s.name for s in sections])
    ax.set_ylabel("macro AUC (bootstrap mean, 95% CI)")
    # An AUC axis starts at chance (0.5) or, when some bar or interval falls below chance, at 0.
    bottom = 0.5 if min(lows) >= 0.5 else 0.0
    ax.set_ylim(bottom, 1.0)
    if bottom == 0.5:
        ax.axhline(0.5, color="0.5", lw=0.8, ls="--")
    ax.set_title("AUC per dataset and initialisation", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    start = "0.5 (chance)" if bottom == 0.5 else "0"
    return FigureData(kind="bars", title=f"Macro AUC per dataset and initialisation (test part); "
                                         f"the y axis starts at {start}",
                      filename="auc_bars.png", png=_png(fig))


# --------------------------------------------------------------------------- formatting


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _is_sig(p: float | None) -> bool:
    return p is not None and math.isfinite(p) and p < ALPHA


def _mean_sd(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}"


def _ci(lo: float | None, hi: float | None) -> str:
    return "-" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "-"


def _finding_label(name: str) -> str:
    return "macro average" if name == MACRO else name


SUMMARY_COLS = ("initialisation", "evaluation", "run", "n test images", "AUC",
                "AUC mean ± SD (bootstrap)", "95% CI", "sensitivity", "specificity", "accuracy")
FINDING_COLS = ("finding", "initialisation", "AUC", "AUC mean ± SD", "95% CI", "threshold",
                "sensitivity", "specificity", "accuracy", "positives", "negatives")
CMP_COLS = ("finding", "AUC A", "AUC B", "difference A − B", "95% CI of difference",
            "p (bootstrap)", "p (DeLong)", "p (FDR-adjusted)")


def _summary_cells(r: InitRow) -> list[str]:
    return [r.init_name, str(r.evaluation_id), "-" if r.run_id is None else str(r.run_id),
            str(r.n_images), _f(r.auc), _mean_sd(r.auc_mean, r.auc_sd), _ci(r.ci_low, r.ci_high),
            _f(r.sensitivity), _f(r.specificity), _f(r.accuracy)]


def _finding_cells(r: FindingRow) -> list[str]:
    return [r.finding, r.init_name, _f(r.auc), _mean_sd(r.auc_mean, r.auc_sd),
            _ci(r.ci_low, r.ci_high), _f(r.threshold), _f(r.sensitivity), _f(r.specificity),
            _f(r.accuracy), "-" if r.n_positive is None else str(r.n_positive),
            "-" if r.n_negative is None else str(r.n_negative)]


def _cmp_caption(c: ComparisonTable) -> str:
    return (f"comparison {c.id}: A = {c.name_a or c.label_a} (evaluation {c.evaluation_a_id}), "
            f"B = {c.name_b or c.label_b} (evaluation {c.evaluation_b_id})")


def _cmp_cells(r: ComparisonRow) -> list[str]:
    return [_finding_label(r.finding), _f(r.auc_a), _f(r.auc_b), _f(r.diff), _ci(r.ci_low, r.ci_high),
            _p(r.p_value), _p(r.p_delong), _p(r.p_adjusted)]


def _comparison_note(c: ComparisonTable, shown: set[int]) -> str:
    """What one p-value table rests on beyond the dataset's provenance."""
    text = (f"comparison {c.id} (latest of {c.n_stored} stored comparison{'s' if c.n_stored != 1 else ''} "
            f"of these evaluations): evaluations {c.evaluation_a_id} vs {c.evaluation_b_id}, runs "
            f"{c.run_a_id or '-'} vs {c.run_b_id or '-'}, {c.n_images} paired images, {c.n_resamples} "
            f"resamples (seed {c.seed}), {c.created_at or '-'}")
    stale = [i for i in (c.evaluation_a_id, c.evaluation_b_id) if i not in shown]
    if stale:
        text += (f"; evaluation(s) {', '.join(map(str, stale))} are not the latest of their "
                 "initialisation: the summary table shows newer ones")
    return text + "."


def _provenance_items(rep: Report, sec: DatasetSection, rows: Sequence[InitRow]) -> list[tuple[str, str, str | None]]:
    """(label, text, full value for a tooltip) lines of provenance for a table."""
    items: list[tuple[str, str, str | None]] = [
        ("dataset", f"{sec.name}: {sec.n_images} images ({sec.n_images_frontal} used: frontal, readable)", None),
    ]
    runs = {r.id: r for r in sec.runs}
    for r in rows:
        run = runs.get(r.run_id) if r.run_id is not None else None
        bits = [f"evaluation {r.evaluation_id} ({r.source}, {r.n_images} test images, {r.created_at or '-'})"]
        if run is not None:
            bits.append(f"run {run.id} ({run.arch_label}, seed {run.seed}, best epoch {run.best_epoch})")
        else:
            bits.append("no run (imported scores)")
        split = r.split or (run.split if run else None)
        seed = r.split_seed if r.split else (run.split_seed if run else None)
        bits.append(f"split {split or '-'} (seed {seed if seed is not None else '-'})")
        init = f"init sha256 {_short(r.init_sha256)}"
        if run is not None and run.init_from:
            init += f" from {run.init_from}"
        bits.append(init)
        bits.append(f"code {r.code_version or '-'}")
        items.append((r.init_name, "; ".join(bits), r.init_sha256))
    for name, info in sec.splits.items():
        parts = ", ".join(f"{k} {v}" for k, v in sorted(info["parts"].items()))
        items.append((f"split {name}", f"{info['method']} by {info['by']}, seed {info['seed'] if info['seed'] is not None else '-'}: {parts}", None))
    items.append(("report", f"vitmed {rep.vitmed_version}, {rep.generated_at}, bootstrap "
                            f"{rep.n_resamples} resamples (seed {rep.seed})", None))
    return items


# --------------------------------------------------------------------------- HTML

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1400px;
color:#222;padding:0 1em;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ccd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccd;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#eef0f6}td:first-child,th:first-child,td.name{text-align:left}
tr:nth-child(even) td{background:#fafbfd}
td.significant{font-weight:bold;background:#fde8c8 !important}
td.wrap{white-space:normal;overflow-wrap:anywhere;text-align:left;min-width:6em}
td.hash{white-space:normal;word-break:break-all;text-align:left}
code{word-break:break-all}
.provenance h4{margin:.2em 0 .3em 0}.provref{font-size:.85em;color:#555;margin:.2em 0 1em 0}
caption{text-align:left;font-size:.9em;color:#444;padding-bottom:.2em}
.block{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
.block>table{flex:none}
.provenance{font-size:.8em;color:#444;background:#f6f6f2;border-left:3px solid #bba;padding:.4em .8em;
flex:1 1 16em;max-width:36em;margin-top:.6em}
.provenance dt{font-weight:bold}.provenance dd{margin:0 0 .3em 0}
.note{font-size:.85em;color:#555}
.figures{display:flex;flex-wrap:wrap;gap:.8em}
figure{margin:0;border:1px solid #dde;padding:.3em;background:#fff}
figure img{display:block;max-width:100%}figcaption{font-size:.8em;color:#555}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


class _Raw(str):
    """A table cell that is already HTML (built from escaped parts)."""


def _sha_html(r: RunInfo) -> str:
    if not r.init_sha256:
        return "-"
    out = f'<code class="sha256" title="{_e(r.init_sha256)}">{_e(_short(r.init_sha256))}</code>'
    if r.init_from:
        out += f'<br><span class="init-from">from {_e(r.init_from)}</span>'
    return out


def _html_table(cls: str, attrs: dict[str, Any], cols: Sequence[str], rows: list[list[str]],
                sig: list[set[int]] | None = None, caption: str | None = None,
                wrap: dict[int, str] | None = None) -> str:
    a = "".join(f' {k}="{_e(v)}"' for k, v in attrs.items())
    out = [f'<table class="{cls}"{a}>']
    if caption:
        out.append(f"<caption>{_e(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr></thead><tbody>")
    for i, cells in enumerate(rows):
        tds = []
        for j, c in enumerate(cells):
            klass = "significant" if sig and j in sig[i] else ("name" if j == 0 else "")
            if wrap and j in wrap:
                klass = f"{klass} {wrap[j]}".strip()
            cattr = f' class="{klass}"' if klass else ""
            text = c if isinstance(c, _Raw) else _e(c)
            text = f"<strong>{text}</strong>" if klass == "significant" else text
            tds.append(f"<td{cattr}>{text}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _prov_id(name: str) -> str:
    return "prov-" + _slug(name)


def _html_provenance(rep: Report, sec: DatasetSection) -> str:
    items = _provenance_items(rep, sec, sec.inits)
    out = [f'<aside class="provenance" id="{_prov_id(sec.name)}" data-for="dataset" '
           f'data-dataset="{_e(sec.name)}"><h4>Provenance of {_e(sec.name)}</h4><dl>']
    for label, text, full in items:
        if full:
            short = _short(full)
            body = _e(text).replace(_e(short), f'<code class="sha256" title="{_e(full)}">{_e(short)}</code>', 1)
        else:
            body = _e(text)
        out.append(f"<dt>{_e(label)}</dt><dd>{body}</dd>")
    out.append("</dl></aside>")
    return "".join(out)


def _html_figure(fig: FigureData) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    attrs = f' data-kind="{_e(fig.kind)}"'
    if fig.dataset is not None:
        attrs += f' data-dataset="{_e(fig.dataset)}"'
    if fig.finding is not None:
        attrs += f' data-finding="{_e(fig.finding)}"'
    return (f'<figure class="figure"{attrs}><img alt="{_e(fig.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_e(fig.title)}</figcaption></figure>')


def _html_provref(sec: DatasetSection, note: str | None = None, **attrs: Any) -> str:
    a = "".join(f' data-{k}="{_e(v)}"' for k, v in attrs.items())
    text = f"{_e(note)} " if note else ""
    return (f'<p class="provref"{a}>{text}Provenance: see <a href="#{_prov_id(sec.name)}">'
            f"provenance of {_e(sec.name)}</a>.</p>")


def _anchor(name: str) -> str:
    return "ds-" + _slug(name)


def render_html(report: Report) -> str:
    """One self-contained HTML page: inline CSS, figures as data URIs, no scripts."""
    rep = report
    o: list[str] = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>vitmed report</title>", f"<style>{CSS}</style></head><body>",
        '<header><h1>vitmed report</h1>',
        f'<p class="meta">Generated <time datetime="{_e(rep.generated_at)}">{_e(rep.generated_at)}</time> '
        f'by vitmed <span class="version">{_e(rep.vitmed_version)}</span> from the registry at '
        f"<code>{_e(rep.registry_url)}</code>.</p>",
        '<p class="note">For each dataset and initialisation the latest evaluation on the test part '
        "is shown (imported evaluations under their name). AUC is the macro average over findings; "
        f"mean ± SD and the 95% percentile interval are over {rep.n_resamples} bootstrap resamples "
        f"of the test images (seed {rep.seed}); the SD is that of the resampled macro averages, not "
        "of the findings' AUCs pooled. Sensitivity, specificity and accuracy are at the threshold "
        "chosen on the validation part (averaged over findings in the summary); \"-\" where none "
        f"was stored. In p-value tables, bold cells have p &lt; {ALPHA}; the FDR adjustment is "
        "Benjamini–Hochberg over all pairs × findings compared together in one vitmed compare call (the macro rows over the pairs).</p>",
        '<nav><ul class="toc">',
    ]
    o += [f'<li><a href="#{_anchor(s.name)}">{_e(s.name)}</a></li>' for s in rep.datasets]
    o.append("</ul></nav></header>")
    if rep.figures:
        o.append('<section class="overview"><h2>Overview</h2><div class="figures">')
        o += [_html_figure(f) for f in rep.figures]
        o.append("</div></section>")
    for sec in rep.datasets:
        ds = {"data-dataset": sec.name}
        o.append(f'<section class="dataset" id="{_anchor(sec.name)}" data-dataset="{_e(sec.name)}">')
        o.append(f"<h2>Dataset {_e(sec.name)}</h2>")
        o.append("<h3>AUC per initialisation</h3><div class=\"block\">")
        o.append(_html_table("auc-table", ds, SUMMARY_COLS, [_summary_cells(r) for r in sec.inits]))
        o.append(_html_provenance(rep, sec))
        o.append("</div><h3>Per finding</h3>")
        o.append(_html_table("finding-table", ds, FINDING_COLS, [_finding_cells(r) for r in sec.per_finding]))
        o.append(_html_provref(sec, table="finding-table"))
        if sec.comparisons:
            o.append("<h3>Comparisons (p-values)</h3>")
        shown = {r.evaluation_id for r in sec.inits}
        for c in sec.comparisons:
            sig = []
            for r in c.rows:
                cells = set()
                if _is_sig(r.p_value):
                    cells.add(5)
                if _is_sig(r.p_delong):
                    cells.add(6)
                if _is_sig(r.p_adjusted):
                    cells.add(7)
                sig.append(cells)
            o.append(_html_table("pvalue-table", {**ds, "data-comparison": c.id}, CMP_COLS,
                                 [_cmp_cells(r) for r in c.rows], sig, _cmp_caption(c)))
            o.append(_html_provref(sec, _comparison_note(c, shown), table="pvalue-table", comparison=c.id))
        if sec.figures:
            o.append('<h3>Figures</h3><div class="figures">')
            o += [_html_figure(f) for f in sec.figures]
            o.append("</div>")
        if sec.runs:
            o.append("<h3>Runs</h3>")
            o.append(_html_table(
                "runs-table", ds,
                ("run", "initialisation", "arch", "init sha256", "split", "seed", "status",
                 "epochs", "best epoch", "best val AUC", "code version", "started"),
                [[str(r.id), r.init_name, r.arch_label, _Raw(_sha_html(r)), r.split, str(r.seed), r.status,
                  str(r.epochs_done), "-" if r.best_epoch is None else str(r.best_epoch),
                  _f(r.best_val_macro_auc), r.code_version or "-", r.started_at or "-"] for r in sec.runs],
                wrap={1: "wrap", 2: "wrap", 3: "hash", 4: "wrap", 10: "hash", 11: "wrap"},
            ))
        o.append("</section>")
    o.append("</body></html>\n")
    return "\n".join(o)


# --------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    # Backslash escapes keep names such as "<fluid>" or "a|b" literal in every CommonMark renderer.
    for ch in ("\\", "|", "<", ">", "*", "_", "`", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def _md_table(cols: Sequence[str], rows: list[list[str]], sig: list[set[int]] | None = None) -> str:
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for i, cells in enumerate(rows):
        out = []
        for j, c in enumerate(cells):
            c = _md_cell(c)
            out.append(f"**{c}**" if sig and j in sig[i] else c)
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def _md_provenance(rep: Report, sec: DatasetSection) -> str:
    lines = [f"### Provenance of {_md_cell(sec.name)}", ""]
    for label, text, full in _provenance_items(rep, sec, sec.inits):
        if full:
            text = text.replace(_short(full), full, 1)
        lines.append(f"- **{_md_cell(label)}**: {_md_cell(text)}")
    return "\n".join(lines)


def render_markdown(report: Report, figure_dir: str = "report_files") -> str:
    """The same tables as pipe tables; figures linked as ``figure_dir/<filename>``."""
    rep = report
    o = [
        "# vitmed report", "",
        f"Generated {rep.generated_at} by vitmed {rep.vitmed_version} from the registry at "
        f"`{rep.registry_url}`.", "",
        "For each dataset and initialisation the latest evaluation on the test part is shown. AUC is "
        f"the macro average over findings; mean ± SD and the 95% CI are those of the macro average over "
        f"{rep.n_resamples} bootstrap resamples of the test images (seed {rep.seed}). Sensitivity, specificity and "
        "accuracy are at the validation-chosen threshold; \"-\" where none was stored. Bold p-values "
        f"are below {ALPHA}.", "",
    ]

    def fig_md(f: FigureData) -> str:
        return f"![{_md_cell(f.title)}]({figure_dir}/{f.filename})"

    if rep.figures:
        o += ["## Overview", ""] + [fig_md(f) + "\n" for f in rep.figures]
    for sec in rep.datasets:
        ref = f"Provenance: see *Provenance of {_md_cell(sec.name)}* above."
        o += [f"## Dataset {_md_cell(sec.name)}", "", "### AUC per initialisation", "",
              _md_table(SUMMARY_COLS, [_summary_cells(r) for r in sec.inits]), "",
              _md_provenance(rep, sec), "",
              "### Per finding", "",
              _md_table(FINDING_COLS, [_finding_cells(r) for r in sec.per_finding]), "", ref, ""]
        shown = {r.evaluation_id for r in sec.inits}
        for c in sec.comparisons:
            sig = [{j for j, p in ((5, r.p_value), (6, r.p_delong), (7, r.p_adjusted)) if _is_sig(p)}
                   for r in c.rows]
            o += [f"### {_md_cell(_cmp_caption(c)[0].upper() + _cmp_caption(c)[1:])}", "",
                  _md_table(CMP_COLS, [_cmp_cells(r) for r in c.rows], sig), "",
                  _md_cell(_comparison_note(c, shown)) + " " + ref, ""]
        if sec.figures:
            o += ["### Figures", ""] + [fig_md(f) + "\n" for f in sec.figures]
    return "\n".join(o).rstrip() + "\n"


# --------------------------------------------------------------------------- writing


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        os.chmod(path, 0o666 & ~_umask())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_report_path(fmt: str = "html") -> Path:
    from .config import get_workspace

    return get_workspace().report_dir / f"report.{fmt}"


def create_report(
    registry: Registry,
    out: Path | None = None,
    *,
    fmt: str | None = None,
    datasets: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
) -> WrittenReport:
    """Build the report and write it; the format follows ``fmt`` or the suffix of ``out``."""
    if fmt is None:
        fmt = "md" if out is not None and Path(out).suffix.lower() in {".md", ".markdown"} else "html"
    if fmt not in FORMATS:
        raise ConfigError(f"unknown report format {fmt!r} - use one of: {', '.join(FORMATS)}")
    out = Path(out) if out is not None else default_report_path(fmt)
    out = out.expanduser()
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder - give a file name such as {out / ('report.' + fmt)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder of --out {out}: {exc.strerror}") from exc
    rep = build_report(registry, datasets=datasets, n_resamples=n_resamples, seed=seed, progress=progress)
    files: list[Path] = []
    if fmt == "html":
        _atomic_write(out, render_html(rep).encode("utf-8"))
    else:
        fig_dir = out.with_name(out.stem + "_files")
        fig_dir.mkdir(exist_ok=True)
        for f in rep.all_figures():
            target = fig_dir / f.filename
            _atomic_write(target, f.png)
            files.append(target)
        _atomic_write(out, render_markdown(rep, fig_dir.name).encode("utf-8"))
    return WrittenReport(path=out, format=fmt, datasets=[d.name for d in rep.datasets],
                         n_tables=rep.n_tables, n_figures=rep.n_figures, figure_files=files)


def write_report(
    registry: Registry,
    out: Path,
    *,
    fmt: str = "html",
    datasets: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
) -> Path:
    """Write the report as HTML or Markdown (figures beside it) and return its path."""
    return create_report(registry, out, fmt=fmt, datasets=datasets, n_resamples=n_resamples,
                         seed=seed, progress=progress).path


__all__ = [
    "ComparisonRow", "ComparisonTable", "DatasetSection", "FigureData", "FindingRow", "InitRow",
    "Report", "RunInfo", "WrittenReport", "build_report", "create_report", "default_report_path",
    "render_html", "render_markdown", "write_report",
]
