"""A dataset's labels as CSV: image key, patient, view, one column per finding (1, 0, -1, blank)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select

from .._util import atomic_write, output_file
from ..registry.db import Registry
from ..registry.models import Finding, Image, Label
from ..registry.queries import get_dataset


def export_labels(registry: Registry, name: str, out: str | Path | IO[str]) -> dict[str, Any]:
    """Write a dataset's labels as CSV to ``out`` (a path, or an open text stream such as
    ``sys.stdout``): key, patient_id, view, one column per finding."""
    with registry.session(readonly=True) as s:
        ds = get_dataset(s, name)
        findings = list(ds.findings)
        t = Image.__table__
        images = s.execute(
            select(t.c.id, t.c.key, t.c.patient_id, t.c.view).where(t.c.dataset_id == ds.id).order_by(t.c.id)
        ).all()
        labels = s.execute(
            select(Label.image_id, Label.finding_id, Label.value)
            .join(Finding, Finding.id == Label.finding_id)
            .where(Finding.dataset_id == ds.id)
        ).all()
    row_of = {img[0]: i for i, img in enumerate(images)}
    col_of = {f.id: j for j, f in enumerate(findings)}
    grid: list[list[str]] = [[""] * len(findings) for _ in images]
    for image_id, finding_id, value in labels:
        grid[row_of[image_id]][col_of[finding_id]] = str(int(value))

    def write(fh) -> None:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["key", "patient_id", "view", *[f.canonical for f in findings]])
        for (image_id, key, patient, view), values in zip(images, grid):
            writer.writerow([key, patient or "", view, *values])

    if hasattr(out, "write"):
        write(out)
        out.flush()
        out = None
    else:
        out = output_file(out)
        buf = io.StringIO(newline="")
        write(buf)
        atomic_write(out, buf.getvalue().encode("utf-8"))
    return {"dataset": name, "n_images": len(images), "findings": [f.canonical for f in findings],
            "out": str(out) if out else None}
