"""Any dataset as one CSV: a path column, optional patient/study/view/sex/age/part, finding columns.

Finding columns hold 1 / 0 / -1 (uncertain) / blank; columns that mostly do are
read as findings unless ``findings`` names them.  Relative paths are relative
to the CSV's folder, and normalised: ``img/../img/a.png``, ``./img/a.png`` and
``img/a.png`` are one image (the key is the normalised path), listed once.  A
path outside the CSV's folder (``../../x.png``, an absolute path elsewhere) is
refused unless ``allow_outside``.  The delimiter is detected (``csv.Sniffer``):
a semicolon-separated export reads as it is.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import InputError
from ..records import RecordSet, _clean_str, _invalid_labels, join_paths, label_matrix, read_table, view_of


FINDING_COLUMN_VALID_SHARE = 0.9  # csv: share of non-blank cells that must be 1/0/-1 to call it a finding
CSV_META = ("study_id", "sex", "age", "part")
PART_ALIASES = {"train": "train", "val": "val", "valid": "val", "validate": "val", "validation": "val", "test": "test"}


def read_generic_csv(
    csv_path: Path,
    *,
    path_col: str = "path",
    patient_col: str | None = None,
    view_col: str | None = None,
    findings: list[str] | str | None = None,
    allow_outside: bool = False,
) -> RecordSet:
    """Any dataset as one CSV: a path column, optional patient/study/view/sex/age/part, findings."""
    if csv_path.is_dir():
        raise InputError(f"{csv_path} is a folder - the csv format takes the CSV file itself")
    if not csv_path.is_file():
        raise InputError(f"{csv_path} does not exist - give the CSV file listing the images")
    explicit_patient = patient_col is not None
    patient_col = patient_col or "patient_id"
    explicit_view = view_col is not None
    view_col = view_col or "view"
    if isinstance(findings, str):
        findings = [f.strip() for f in findings.split(",") if f.strip()]
    required = [path_col]
    if explicit_patient:
        required.append(patient_col)
    if explicit_view:
        required.append(view_col)
    if findings:
        required += list(findings)
    df = read_table(
        csv_path, required,
        hint=f"name the image path column with `path_col` COLUMN (now {path_col!r}) and the patient column "
        f"with `patient_col` COLUMN (default patient_id)",
        sniff=True,
    )
    notes: list[str] = []
    meta = {path_col, patient_col, view_col, *CSV_META}
    if findings:
        natives = list(findings)
    else:
        natives, ignored = [], []
        for c in df.columns:
            if c in meta or c.startswith("Unnamed"):
                continue
            # A column that is mostly 1/0/-1/blank is a finding column: its few
            # other cells are typos, reported by label_matrix below (never a
            # column silently dropped over one typo).
            text = df[c].astype("string").str.strip()
            n_filled = int((df[c].notna() & (text != "")).sum())
            n_bad = int(_invalid_labels(df[c]).sum())
            if n_filled and (n_filled - n_bad) >= FINDING_COLUMN_VALID_SHARE * n_filled:
                natives.append(c)
            else:
                ignored.append(c)
        if ignored:
            notes.append(f"columns not read as findings (values other than 0/1/-1/blank): {', '.join(ignored)}")
    if not natives:
        others = [c for c in df.columns if c not in meta]
        raise InputError(
            f"{csv_path} has no finding columns (columns holding only 1, 0, -1 or blank"
            + (f"; not findings: {', '.join(others)}" if others else "")
            + ") - add them or name them with `findings` A,B,C"
        )
    mat = label_matrix(df, natives, csv_path)
    paths = _clean_str(df[path_col])
    if paths.isna().any():
        row = int(np.flatnonzero(paths.isna().to_numpy())[0]) + 2
        raise InputError(f"{csv_path}: line {row} has an empty {path_col!r} - every row needs an image path")
    base = csv_path.parent
    sources = join_paths(base, paths, csv_path, path_col, allow_outside=bool(allow_outside),
                         hint="pass `allow_outside` if they really live elsewhere")
    _refuse_same_file(sources, paths, csv_path)
    keys = [os.path.normpath(p) if os.path.isabs(p) else posixpath.normpath(p) for p in paths]
    has_patients = patient_col in df.columns
    if not has_patients:
        notes.append(f"no {patient_col!r} column: images are split individually (use `patient_col`)")
    part = None
    if "part" in df.columns:
        raw = _clean_str(df["part"])
        part = [PART_ALIASES.get(str(p).lower()) if p is not None else None for p in raw]
        bad = [p for p, m in zip(raw, part) if p is not None and m is None]
        if bad:
            raise InputError(f"{csv_path}: column 'part' holds {bad[0]!r} - use train, val or test (or blank)")
    view = _clean_str(df[view_col]) if view_col in df.columns else pd.Series([None] * len(df), dtype=object)
    images = pd.DataFrame(
        {
            "key": keys,
            "source_path": sources,
            "patient_id": _clean_str(df[patient_col]) if has_patients else None,
            "study_id": _clean_str(df["study_id"]) if "study_id" in df.columns else None,
            "view": [view_of(v) for v in view],
            "view_native": view,
            "sex": _clean_str(df["sex"]) if "sex" in df.columns else None,
            "age": pd.to_numeric(df["age"], errors="coerce") if "age" in df.columns else None,
            "official_part": part,
        }
    )
    return RecordSet(images, natives, mat, has_patient_ids=has_patients, notes=notes)


def _refuse_same_file(sources: list[str], paths, csv_path: Path) -> None:
    """Two lines naming one file (however spelt) would register it twice."""
    first: dict[str, int] = {}
    for i, src in enumerate(sources):
        j = first.setdefault(src, i)
        if j != i:
            raise InputError(
                f"{csv_path}: line {j + 2} ({paths.iloc[j]!r}) and line {i + 2} ({paths.iloc[i]!r}) name the "
                "same image - each image may be listed once; delete one of the lines"
            )
