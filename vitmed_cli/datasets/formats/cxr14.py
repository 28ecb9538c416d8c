"""NIH ChestX-ray14: ``Data_Entry_2017[_v2020].csv``, the official lists, PNG folders.

``train_val_list.txt``/``test_list.txt`` give the official parts; PNGs lie in
``images/`` or ``images_0NN/images/``.  Ages such as '003M' or '010D' are converted to years.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import InputError
from ..records import RecordSet, _age, _clean_str, _find_file, read_table, require_ids, view_of


NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)


def _nih_images(root: Path) -> dict[str, str]:
    folders = [root / "images", root, *sorted(root.glob("images_*/images")), *sorted(root.glob("images_*"))]
    found: dict[str, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.lower().endswith(".png") and entry.name not in found:
                    found[entry.name] = entry.path
    return found


def read_cxr14(root: Path) -> RecordSet:
    """NIH ChestX-ray14: Data_Entry_2017(_v2020).csv, official lists, PNG folders."""
    csv_path = _find_file(root, "Data_Entry_2017_v2020.csv") or _find_file(root, "Data_Entry_2017.csv")
    if csv_path is None:
        raise InputError(
            f"{root / 'Data_Entry_2017.csv'} (or Data_Entry_2017_v2020.csv) not found - PATH must be "
            "the ChestX-ray14 folder holding the Data_Entry CSV and images/"
        )
    df = read_table(csv_path, ("Image Index", "Finding Labels", "Patient ID"))
    require_ids(df, ("Image Index",), csv_path, "the PNG file name")
    names = df["Image Index"].str.strip()
    labels = df["Finding Labels"].fillna("").astype(str)
    split_labels = [[x.strip() for x in s.split("|") if x.strip()] for s in labels]
    natives = list(NIH_FINDINGS)
    extra = sorted({x for xs in split_labels for x in xs} - set(NIH_FINDINGS) - {"No Finding"})
    natives += extra
    col = {n: j for j, n in enumerate(natives)}
    mat = np.zeros((len(df), len(natives)), dtype=np.float32)
    for i, xs in enumerate(split_labels):
        for x in xs:
            if x != "No Finding":
                mat[i, col[x]] = 1.0
    official: dict[str, str] = {}
    notes = []
    for list_name, part in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        p = root / list_name
        if p.is_file():
            for line in p.read_text().split():
                official[line.strip()] = part
        else:
            notes.append(f"{list_name} not found: no official {part} part")
    files = _nih_images(root)
    view = _clean_str(df["View Position"]) if "View Position" in df.columns else pd.Series([None] * len(df))
    images = pd.DataFrame(
        {
            "key": names,
            "source_path": [files.get(n, str(root / "images" / n)) for n in names],
            "patient_id": _clean_str(df["Patient ID"]),
            "view": [view_of(v) for v in view],
            "view_native": view,
            "sex": _clean_str(df["Patient Gender"]) if "Patient Gender" in df.columns else None,
            "age": _age(df["Patient Age"]) if "Patient Age" in df.columns else None,
            "official_part": [official.get(n) for n in names],
        }
    )
    missing = int(sum(n not in files for n in names))
    if missing:
        notes.append(f"{missing} images listed in {csv_path.name} not found under images/ or images_0NN/images/")
    if extra:
        notes.append(f"labels outside the 14 findings kept: {', '.join(extra)}")
    return RecordSet(images, natives, mat, notes=notes)
