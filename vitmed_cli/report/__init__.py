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

The package: :mod:`.model` (the report as plain data), :mod:`.gather` (SQL and
bootstrap), :mod:`.figures`, :mod:`.html` and :mod:`.markdown`; this module writes
the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .._util import atomic_write, output_file
from ..choices import DEFAULT_RESAMPLES, ReportFormat
from ..errors import ConfigError
from ..events import Listener
from ..registry.db import Registry
from .gather import build_report
from .html import render_html
from .markdown import render_markdown
from .model import (
    ComparisonRow,
    ComparisonTable,
    DatasetSection,
    FigureData,
    FindingRow,
    InitRow,
    Report,
    RunInfo,
    WrittenReport,
)


def default_report_path(registry: Registry, fmt: str = "html") -> Path:
    return registry.workspace.report_dir / f"report.{fmt}"


def create_report(
    registry: Registry,
    out: Path | None = None,
    *,
    fmt: str | None = None,
    datasets: Sequence[str] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    on_event: Listener | None = None,
) -> WrittenReport:
    """Build the report and write it; the format follows ``fmt`` or the suffix of ``out``."""
    suffix = Path(out).suffix.lower() if out is not None else ""
    by_suffix = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}.get(suffix)
    if fmt is None:
        fmt = by_suffix or "html"
    fmt = ReportFormat.parse(fmt, "report format").value
    if by_suffix is not None and by_suffix != fmt:
        raise ConfigError(
            f"`out` {out} ends in {suffix} but `fmt` is {fmt} - name the file "
            f"{Path(out).with_suffix('.' + fmt)} or leave out `fmt`"
        )
    out = Path(out).expanduser() if out is not None else default_report_path(registry, fmt)
    if out.is_dir():
        raise ConfigError(f"`out` {out} is a folder - give a file name such as {out / ('report.' + fmt)}")
    out = output_file(out)
    rep = build_report(registry, datasets=datasets, n_resamples=n_resamples, seed=seed, on_event=on_event)
    files: list[Path] = []
    if fmt == "html":
        atomic_write(out, render_html(rep).encode("utf-8"))
    else:
        fig_dir = out.with_name(out.stem + "_files")
        fig_dir.mkdir(exist_ok=True)
        for f in rep.all_figures():
            target = fig_dir / f.filename
            atomic_write(target, f.png)
            files.append(target)
        atomic_write(out, render_markdown(rep, fig_dir.name).encode("utf-8"))
    return WrittenReport(path=out, format=fmt, datasets=[d.name for d in rep.datasets],
                         n_tables=rep.n_tables, n_figures=rep.n_figures, figure_files=files)


def write_report(
    registry: Registry,
    out: Path,
    *,
    fmt: str = "html",
    datasets: Sequence[str] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    on_event: Listener | None = None,
) -> Path:
    """Write the report as HTML or Markdown (figures beside it) and return its path."""
    return create_report(registry, out, fmt=fmt, datasets=datasets, n_resamples=n_resamples,
                         seed=seed, on_event=on_event).path


__all__ = [
    "ComparisonRow", "ComparisonTable", "DatasetSection", "FigureData", "FindingRow", "InitRow",
    "Report", "RunInfo", "WrittenReport", "build_report", "create_report", "default_report_path",
    "render_html", "render_markdown", "write_report",
]
