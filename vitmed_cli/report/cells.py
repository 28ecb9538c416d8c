"""Table cells and provenance lines, shared by the HTML and Markdown renderers."""

from __future__ import annotations

import re
from typing import Sequence

from .._util import finite_or_none
from .._util import format_p as _p
from ..registry.models import MACRO
from .model import ComparisonRow, ComparisonTable, DatasetSection, FindingRow, InitRow, Report


def _f(value: float | None, digits: int = 3) -> str:
    value = finite_or_none(value)
    return "-" if value is None else f"{value:.{digits}f}"


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
                "AUC mean ± SD (bootstrap)", "95% CI", "sensitivity", "specificity", "accuracy",
                "tuning", "image size (px)")
FINDING_COLS = ("finding", "initialisation", "AUC", "AUC mean ± SD", "95% CI", "threshold",
                "sensitivity", "specificity", "accuracy", "positives", "negatives")
CMP_COLS = ("finding", "AUC A", "AUC B", "difference A − B", "95% CI of difference",
            "p (bootstrap)", "p (DeLong)", "p (FDR-adjusted)")


def _summary_cells(r: InitRow) -> list[str]:
    return [r.init_name, str(r.evaluation_id), "-" if r.run_id is None else str(r.run_id),
            str(r.n_images), _f(r.auc), _mean_sd(r.auc_mean, r.auc_sd), _ci(r.ci_low, r.ci_high),
            _f(r.sensitivity), _f(r.specificity), _f(r.accuracy), r.tune or "-",
            "-" if r.image_size is None else str(r.image_size)]


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


def comparison_warnings(c: ComparisonTable) -> list[str]:
    """The warnings ``vitmed compare`` stored with the comparison (degenerate resamples, images
    left out), parameter names without their backticks."""
    return [re.sub(r"`([^`]+)`", r"\1", w) for w in (c.options or {}).get("warnings") or ()]


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
        elif r.run_id is not None:  # a run of another dataset scored on this one
            bits.append(f"run {r.run_id} (trained on dataset {r.run_dataset})")
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
