"""PadChest: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz]`` and 16-bit PNGs in ``<ImageDir>/``.

Only positive labels are listed, so an absent finding has no label row
(negative at training time).  Every native label (about 190) becomes a finding;
the study-level ones ('exclude', 'suboptimal study', 'unchanged') are listed by
canonical name in ``Dataset.options["non_findings"]`` for training to skip
('normal' becomes "No Finding", a label as in CheXpert and MIMIC).  A row whose
``Labels`` cell is blank (not ``[]``) carries no label information: the image
is registered without label rows and its key is listed in
``Dataset.options["unlabelled_keys"]`` (left out of training and evaluation).
PNGs whose ``PhotometricInterpretation_DICOM`` is MONOCHROME1 kept the stored
values when converted (bright air) and are inverted in the cache.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...errors import InputError
from ..findings import harmonise, normalise
from ..records import RecordSet, _blank, _clean_str, join_paths, read_table, require_ids, view_of


def parse_padchest_labels(value: Any) -> list[str] | None:
    """PadChest's ``Labels`` cell (a Python-list string) as clean names; None when blank/NaN."""
    if _blank(value):
        return None
    text = str(value).strip()
    try:
        parsed = ast.literal_eval(text)
        items = list(parsed) if isinstance(parsed, (list, tuple)) else [parsed]
    except (ValueError, SyntaxError):
        items = re.findall(r"'([^']*)'", text) or text.strip("[]").split(",")
    out: list[str] = []
    for item in items:
        name = " ".join(str(item).split()).strip().strip("'\"").strip()
        if name and name not in out:
            out.append(name)
    return out


def _padchest_csv(root: Path) -> Path:
    if root.is_file():
        return root
    for pattern in ("PADCHEST_chest_x_ray_images_labels_160K*.csv*", "PADCHEST*.csv*"):
        found = sorted(p for p in root.glob(pattern) if p.suffix in (".csv", ".gz"))
        if found:
            return found[0]
    raise InputError(
        f"{root / 'PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv'} (or .csv.gz) not found - "
        "PATH must be the PadChest folder holding the labels CSV and the numbered image folders"
    )


# PadChest labels that describe the study, not the patient (Bustos et al. 2020,
# label hierarchy): kept as findings in the registry, listed in
# Dataset.options["non_findings"] so that training can leave them out.  'normal'
# is not among them: it maps to "No Finding", which CheXpert, MIMIC and VinDr
# train and score as a label, so PadChest does the same.
PADCHEST_NON_FINDINGS = frozenset({"exclude", "suboptimal study", "unchanged"})


def read_padchest(root: Path) -> RecordSet:
    """PadChest: the labels CSV and 16-bit PNGs under ``<ImageDir>/``."""
    csv_path = _padchest_csv(root)
    root = csv_path.parent
    df = read_table(csv_path, ("ImageID", "ImageDir", "PatientID", "Projection", "Labels"))
    require_ids(df, ("ImageID", "ImageDir"), csv_path, "the image is <ImageDir>/<ImageID>")
    parsed = [parse_padchest_labels(v) for v in df["Labels"]]
    counts: dict[str, int] = {}
    for xs in parsed:
        for x in xs or ():
            counts[x] = counts.get(x, 0) + 1
    natives = sorted(counts, key=lambda n: (-counts[n], n))
    col = {n: j for j, n in enumerate(natives)}
    mat = np.full((len(df), len(natives)), np.nan, dtype=np.float32)
    for i, xs in enumerate(parsed):
        for x in xs or ():
            mat[i, col[x]] = 1.0
    image_dir = df["ImageDir"].astype("string").str.strip().str.replace(r"\.0+$", "", regex=True)
    ids = df["ImageID"].str.strip()
    age = None
    if "StudyDate_DICOM" in df.columns and "PatientBirth" in df.columns:
        year = pd.to_numeric(df["StudyDate_DICOM"].astype("string").str[:4], errors="coerce")
        birth = pd.to_numeric(df["PatientBirth"], errors="coerce")
        age = year - birth
    projection = _clean_str(df["Projection"])
    invert_keys: set[str] = set()
    if "PhotometricInterpretation_DICOM" in df.columns:
        photometric = df["PhotometricInterpretation_DICOM"].astype("string").str.strip().str.upper()
        invert_keys = set(ids[(photometric == "MONOCHROME1").fillna(False).to_numpy(dtype=bool)])
    images = pd.DataFrame(
        {
            "key": ids,
            "source_path": join_paths(
                root, [f"{d}/{i}" if d else i for d, i in zip(image_dir.fillna(""), ids)], csv_path, "ImageID"),
            "patient_id": _clean_str(df["PatientID"]),
            "study_id": _clean_str(df["StudyID"]) if "StudyID" in df.columns else None,
            "view": [view_of(p) for p in projection],
            "view_native": projection,
            "sex": _clean_str(df["PatientSex_DICOM"]) if "PatientSex_DICOM" in df.columns else None,
            "age": age,
        }
    )
    notes = [
        "PadChest lists positive findings only: an absent finding has no label row "
        "(negative at training time)"
    ]
    unlabelled = [str(k) for k, xs in zip(ids, parsed) if xs is None]
    if unlabelled:
        notes.append(
            f"{len(unlabelled)} images have a blank Labels cell (no label information): registered "
            "without labels and left out of training and evaluation (an empty [] cell means no "
            "finding and is used)"
        )
    if invert_keys:
        notes.append(
            f"{len(invert_keys)} PNGs from MONOCHROME1 DICOMs keep the stored values (bright air): "
            "inverted in the cache"
        )
    canonical = dict(zip(harmonise(natives).native, harmonise(natives).canonical))
    non_findings = [canonical[n] for n in natives if normalise(n) in PADCHEST_NON_FINDINGS]
    options = {"non_findings": non_findings, "unlabelled_keys": unlabelled, "n_monochrome1_inverted": len(invert_keys)}
    return RecordSet(images, natives, mat, notes=notes, options=options, invert_keys=invert_keys)
