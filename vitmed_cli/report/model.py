"""The report as plain data: what the tables, figures and provenance show, with no ORM rows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._util import finite_or_none
from ..choices import DEFAULT_ALPHA
from ..registry.models import MACRO

ALPHA = DEFAULT_ALPHA
INIT_ORDER = ("random", "imagenet", "dinov2")
KWARG_ORDER = ("patch_size", "depth", "embed_dim", "num_heads")


def init_sort_key(name: str) -> tuple[int, str]:
    return (INIT_ORDER.index(name), name) if name in INIT_ORDER else (len(INIT_ORDER), name)


def slug(text: str) -> str:
    """``text`` as a lower-case file-name and anchor fragment."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.").lower() or "x"


def is_significant(p: float | None) -> bool:
    """An (adjusted) p-value below ALPHA."""
    p = finite_or_none(p)
    return p is not None and p < ALPHA


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
    tune: str = "all"
    image_size: int | None = None

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
    tune: str | None = None  # what the run trained: all, head, last:N (None: imported)
    image_size: int | None = None  # the run's training resolution (None: imported)
    run_dataset: str | None = None  # the dataset the run trained on (another one: a cross-dataset test)


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
        return is_significant(p)


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
