"""``vitmed report``: the study's tables and figures as one HTML page or Markdown file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from ..choices import DEFAULT_RESAMPLES, ReportFormat
from ._common import EventPrinter, JsonOpt, console, print_json, state, want_json


def report(
    ctx: typer.Context,
    dataset: Annotated[
        Optional[list[str]],
        typer.Option("--dataset", "-d", metavar="NAME", help="Only this dataset (repeat for several). Default: all."),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", dir_okay=False, writable=True,
                     help="Report file. Default: report.html (or .md) in the workspace reports folder."),
    ] = None,
    fmt: Annotated[
        Optional[ReportFormat],
        typer.Option("--format", "-f", help="html (one self-contained file) or md (figures as PNG "
                     "files beside it). Default: from the --out suffix, else html."),
    ] = None,
    resamples: Annotated[
        int, typer.Option("--resamples", min=1, help="Bootstrap resamples for mean ± SD and 95% CI of AUC.")
    ] = DEFAULT_RESAMPLES,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    study: Annotated[
        Optional[str],
        typer.Option("--study", metavar="NAME", help="The paper's table of a study run by vitmed study run: "
                     "datasets x inits, macro AUC mean ± SD over seeds with p-values against the reference, "
                     "a forest plot of ΔAUC, per-finding tables and the protocol block."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Rebuild the study's AUC tables, p-value tables and figures from the registry.

    Example: vitmed report --dataset vindr --out vindr.html
    """
    from ..report import create_report

    registry = state(ctx).registry(write=False)
    with EventPrinter() as on_event:
        if study is not None:
            from ..report.study import create_study_report

            kind = fmt.value if fmt else ("md" if out is not None and out.suffix.lower() == ".md" else "html")
            target = out or registry.workspace.report_dir / f"study-{study}.{kind}"
            written = create_study_report(registry, study, target, fmt=kind, on_event=on_event)
        else:
            options = dict(fmt=fmt.value if fmt else None, datasets=dataset, n_resamples=resamples, seed=seed)
            written = create_report(registry, out, on_event=on_event, **options)
    if want_json(ctx, json_out):
        print_json(written.to_dict())
        return
    console.print(
        Text(f"wrote {written.path} ({written.format}: {len(written.datasets)} dataset(s), "
             f"{written.n_tables} tables, {written.n_figures} figures)"),
        soft_wrap=True,
    )
