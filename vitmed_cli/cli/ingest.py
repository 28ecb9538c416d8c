"""``vitmed ingest``: register a public chest X-ray dataset as downloaded and build its image cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from ..choices import DEFAULT_IMAGE_SIZE, DEFAULT_MAX_PIXELS, Flavour, LabelPolicy
from ..choices import Format as IngestFormat
from ._common import EventPrinter, JsonOpt, cli_message, console, print_json, print_record, state, want_json


def ingest(
    ctx: typer.Context,
    fmt: Annotated[IngestFormat, typer.Argument(metavar="FORMAT", help="Layout of the download.", show_default=False)],
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH",
            help="The dataset folder as downloaded (csv: the CSV file; synthetic: the folder to write).",
            show_default=False,
        ),
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Name to register the dataset under.", show_default=False)],
    image_size: Annotated[int, typer.Option("--image-size", help="Side of the square cache images, pixels.")] = DEFAULT_IMAGE_SIZE,
    workers: Annotated[
        Optional[int], typer.Option("--workers", "-w", help="Decoding processes (default: all CPUs).", show_default=False)
    ] = None,
    max_pixels: Annotated[
        int,
        typer.Option("--max-pixels", help="Refuse, before decoding, an image whose header declares more pixels "
                     "than this (default: Pillow's decompression-bomb limit).", min=1),
    ] = DEFAULT_MAX_PIXELS,
    label_policy: Annotated[
        Optional[LabelPolicy],
        typer.Option("--label-policy", help="vindr: combine radiologists by majority (default) or any.", show_default=False),
    ] = None,
    path_col: Annotated[Optional[str], typer.Option("--path-col", help="csv: image path column (default: path).", show_default=False)] = None,
    patient_col: Annotated[
        Optional[str], typer.Option("--patient-col", help="csv: patient column (default: patient_id).", show_default=False)
    ] = None,
    view_col: Annotated[Optional[str], typer.Option("--view-col", help="csv: view column (default: view).", show_default=False)] = None,
    findings: Annotated[
        Optional[str], typer.Option("--findings", help="csv: finding columns A,B,C (default: every 0/1/-1 column).", show_default=False)
    ] = None,
    allow_outside: Annotated[
        bool, typer.Option("--allow-outside", help="csv: accept image paths outside the CSV's folder.")
    ] = False,
    n_images: Annotated[Optional[int], typer.Option("--n-images", help="synthetic: number of images.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="synthetic: random seed (default: 0).", show_default=False)] = None,
    flavour: Annotated[
        Optional[Flavour], typer.Option("--flavour", help="synthetic: source or target (default: source).", show_default=False)
    ] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Register a dataset in its downloaded layout and cache its images (resumable).

    Formats: vindr, chexpert, mimic, cxr14, padchest, csv, synthetic.

    Running it again with the same arguments resumes the image cache; if the
    labels read now differ from the registered ones it refuses (use a new
    --name or `vitmed datasets delete NAME`).  When no image at all could be
    read it exits non-zero but keeps the registration, so a re-run after
    fixing the files resumes.

    Example: vitmed ingest vindr ~/data/vindr-cxr/1.0.0 --name vindr --image-size 224
    """
    from ..datasets.ingest import ingest_dataset

    with EventPrinter(progress=not no_progress) as on_event:
        summary = ingest_dataset(
            state(ctx).registry(),
            fmt.value,
            path,
            name=name,
            image_size=image_size,
            workers=workers,
            on_event=on_event,
            max_pixels=max_pixels,
            label_policy=label_policy.value if label_policy else None,
            path_col=path_col,
            patient_col=patient_col,
            view_col=view_col,
            findings=findings,
            allow_outside=True if allow_outside else None,
            n_images=n_images,
            seed=seed,
            flavour=flavour.value if flavour else None,
        )
    out = summary.to_dict()
    if want_json(ctx, json_out):
        print_json(out)
        return
    notes, errors = out.pop("notes"), out.pop("errors")
    out["findings"] = ", ".join(out["findings"])
    out["unmapped_findings"] = ", ".join(out["unmapped_findings"]) or "-"
    print_record(out, title=f"ingested {name}")
    for note in notes:
        console.print(Text("note: ", style="dim") + Text(note))
    for err in errors:
        console.print(Text("unreadable ", style="yellow") + Text(f"{err['key']}: {cli_message(err['error'])}"))
