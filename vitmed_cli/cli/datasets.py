"""``vitmed datasets``: what has been ingested."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from .. import catalog
from ._common import DatasetArg, JsonOpt, YesOpt, confirm_delete, console, fmt, print_json, print_record, print_table, state, want_json

app = typer.Typer(help="Ingested datasets: list, show, export, delete.", no_args_is_help=True)


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List registered datasets with their image counts.

    Example: vitmed datasets list --json
    """
    rows = catalog.list_datasets(state(ctx).registry(write=False))
    if want_json(ctx, json_out):
        print_json(rows)
    else:
        print_table(rows, ["id", "name", "format", "n_images", "n_findings", "image_size", "splits"],
                    title="datasets", empty="no datasets yet - run vitmed ingest")
        for row in rows:  # an ingest that stopped half-way (the table keeps its width for the names)
            if row["status"] != "complete":
                console.print(Text(f"{row['name']}: {row['status']}", style="yellow")
                              + Text(f" - vitmed datasets show {row['name']} names the command that finishes it"))


@app.command("show")
def show(ctx: typer.Context, name: DatasetArg, json_out: JsonOpt = False) -> None:
    """Show one dataset: images, patients, unreadable files, label counts per finding and split.

    Example: vitmed datasets show vindr --json
    """
    info = catalog.dataset_summary(state(ctx).registry(write=False), name)
    if want_json(ctx, json_out):
        print_json(info)
        return
    findings = info.pop("findings")
    shown = {k: v for k, v in info.items() if k != "splits" and not (k == "resume_command" and v is None)}
    print_record(shown, title=f"dataset {name}")
    for sp in info["splits"]:
        parts = ", ".join(f"{part} {n} ({sp['used'].get(part, 0)} used)" for part, n in sorted(sp["parts"].items()))
        console.print(Text.assemble("split ", (sp["name"], "bold"), f" ({sp['method']}, seed {fmt(sp['seed'])}): {parts} images"))
    print_table(
        [{"finding": k, **v} for k, v in findings.items()],
        ["finding", "native", "positive", "negative", "uncertain"],
        title="findings",
    )


@app.command("export")
def export(
    ctx: typer.Context,
    name: DatasetArg,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write CSV here instead of stdout.")] = None,
) -> None:
    """Write a dataset's labels as CSV: image key, patient, view, one column per finding (1, 0, -1, blank).

    Example: vitmed datasets export vindr --out vindr_labels.csv
    """
    from ..datasets.export import export_labels

    export_labels(state(ctx).registry(write=False), name, out if out is not None else sys.stdout)


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: DatasetArg,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete a dataset with its images, labels and splits (refused while runs use it).

    Example: vitmed datasets delete old-copy --yes
    """
    confirm_delete(ctx, yes, f"delete dataset {name!r} and all its images, labels and splits?",
                   lambda: catalog.delete_dataset(state(ctx).registry(), name),
                   json_out, "deleted dataset {name} ({deleted_images} images)")
