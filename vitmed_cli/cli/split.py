"""``vitmed split``: patient-level, stratified splits; official splits; export and import."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.text import Text

from .. import splits
from .._util import atomic_write, output_file
from ..errors import ConfigError
from ._common import JsonOpt, cli_message, console, err_console, print_json, state, want_json


def _render(info: dict[str, Any]) -> None:
    from rich.table import Table

    title = (
        f"split {info['name']} of {info['dataset']} (id {info['id']}, {info['method']}, "
        f"by {info['by']}, seed {info['seed'] if info['seed'] is not None else '-'})"
    )
    # one row per finding, one column per part: stays readable with 20+ findings
    parts = list(info["parts"])
    table = Table(title=Text(title))
    table.add_column("", style="bold", overflow="fold")
    for part in parts:
        table.add_column(part, justify="right")
    table.add_row("images", *[str(info["parts"][p]["n_images"]) for p in parts])
    table.add_row("patients", *["-" if info["parts"][p]["n_patients"] is None
                                else str(info["parts"][p]["n_patients"]) for p in parts])
    table.add_row("used (frontal, readable)", *[str(info["parts"][p].get("n_used", "-")) for p in parts])
    for f in info["findings"]:
        table.add_row(Text(f"{f} (positives)"), *[str(info["parts"][p]["positives"][f]) for p in parts])
    console.print(table)
    if info.get("n_unassigned"):
        console.print(f"{info['n_unassigned']} image(s) unassigned")
    for note in info.get("notes", []):
        err_console.print(Text(f"note: {note}"))
    for warning in info.get("warnings", []):
        err_console.print(Text("warning: ", style="yellow") + Text(cli_message(warning)))


def split(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Dataset name, as given to vitmed ingest --name.")],
    val: Annotated[float, typer.Option("--val", help="Fraction of images (by patient) for validation.")] = 0.1,
    test: Annotated[float, typer.Option("--test", help="Fraction of images (by patient) for testing.")] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same split.")] = 0,
    split_name: Annotated[
        Optional[str],
        typer.Option("--name", help="Name of the new split (default patient-s{seed}, image-s{seed} for a dataset without patient ids, or official).",
                     show_default=False),
    ] = None,
    official: Annotated[
        bool, typer.Option("--official", help="Use the dataset's own test (and val) parts.")
    ] = False,
    export: Annotated[
        Optional[str],
        typer.Option("--export", metavar="SPLIT", help="Write split SPLIT as CSV (image_key, patient_id, part).",
                     show_default=False),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", dir_okay=False, help="With --export: write the CSV here instead of stdout."),
    ] = None,
    import_file: Annotated[
        Optional[Path],
        typer.Option("--import", metavar="FILE", exists=True, dir_okay=False, readable=True,
                     help="Read a split CSV (image_key, part[, patient_id]); needs --name."),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite an existing split of that name (if no run uses it).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Split a dataset into train/val/test by patient, stratified over findings.

    No patient is ever in two parts (checked after every split). Datasets without
    patient ids (VinDr-CXR) are split per image.

    Example: vitmed split chexpert --val 0.1 --test 0.2 --seed 1
    """
    modes = [m for m, on in (("--official", official), ("--export", export is not None),
                             ("--import", import_file is not None)) if on]
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)} cannot be combined - use one per command")
    if out is not None and export is None:
        raise ConfigError("--out only applies to --export - add --export SPLIT or drop --out")
    registry = state(ctx).registry(write=export is None)  # --export only reads
    if export is not None:
        text = splits.export_split(registry, name, export)
        if out is not None:
            try:
                atomic_write(output_file(out), text.encode("utf-8"))
            except OSError as exc:
                raise ConfigError(f"cannot write {out}: {exc.strerror or exc} - choose a writable place") from exc
            err_console.print(Text(f"wrote split {export} of {name} to {out}"))
        else:
            sys.stdout.write(text)
        return
    if import_file is not None:
        if not split_name:
            raise ConfigError("--import needs --name S: the name to store the imported split under")
        info = splits.import_split(registry, name, import_file, split_name, replace=replace)
    elif official:
        info = splits.official_split(registry, name, val=val, seed=seed,
                                     name=split_name or "official", replace=replace)
    else:
        info = splits.make_split(registry, name, val=val, test=test, seed=seed,
                                 name=split_name, replace=replace)
    if want_json(ctx, json_out):
        print_json(info)
    else:
        _render(info)
