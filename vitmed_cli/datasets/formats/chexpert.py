"""CheXpert-v1.0 or CheXpert-v1.0-small: ``train.csv`` and ``valid.csv``.

PATH is the dataset folder or its parent; patient and study come from ``Path``
(``.../patientNNNNN/studyN/viewN_frontal.jpg``).  Uncertain labels (-1) are kept.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from ...errors import InputError
from ..records import RecordSet, _age, _clean_str, join_paths, label_matrix, read_table, require_ids, view_of


CHEXPERT_FINDINGS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)


def _chexpert_folder(root: Path) -> Path:
    if (root / "train.csv").is_file() or (root / "valid.csv").is_file():
        return root
    found = sorted(p.parent for p in root.glob("CheXpert*/train.csv"))
    if found:
        return found[0]
    raise InputError(
        f"{root / 'train.csv'} not found - PATH must be the CheXpert-v1.0(-small) folder "
        "(holding train.csv and valid.csv) or the folder above it"
    )


def read_chexpert(root: Path) -> RecordSet:
    """CheXpert-v1.0 or CheXpert-v1.0-small: train.csv and valid.csv."""
    folder = _chexpert_folder(root)
    required = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS)
    frames, mats, notes = [], [], []
    for name, part in (("train.csv", "train"), ("valid.csv", "val")):
        path = folder / name
        if not path.is_file():
            notes.append(f"{name} not found: no {part} images")
            continue
        df = read_table(path, required)
        require_ids(df, ("Path",), path, "the image path")
        rel = df["Path"].astype(str).str.strip()
        parts = [PurePosixPath(p).parts for p in rel]
        # Path starts with the dataset folder (CheXpert-v1.0-small/train/...): drop it.
        key = [
            "/".join(pp[1:]) if len(pp) > 1 and (pp[0] == folder.name or pp[0].lower().startswith("chexpert")) else "/".join(pp)
            for pp in parts
        ]
        patient = rel.str.extract(r"(patient\d+)", expand=False)
        study = rel.str.extract(r"(patient\d+/study\d+)", expand=False)
        fl = df["Frontal/Lateral"].astype("string").str.strip()
        appa = _clean_str(df["AP/PA"])
        native_view = [a if (f == "Frontal" and a) else f for f, a in zip(fl.fillna(""), appa)]
        frames.append(
            pd.DataFrame(
                {
                    "key": key,
                    "source_path": join_paths(folder, key, path, "Path"),
                    "patient_id": patient.astype(object).where(patient.notna(), None),
                    "study_id": study.astype(object).where(study.notna(), None),
                    "view": [view_of(v) for v in fl.fillna("")],
                    "view_native": [v or None for v in native_view],
                    "sex": _clean_str(df["Sex"]),
                    "age": _age(df["Age"]),
                    "official_part": part,
                }
            )
        )
        mats.append(label_matrix(df, list(CHEXPERT_FINDINGS), path))
        if patient.isna().any():
            notes.append(f"{name}: {int(patient.isna().sum())} paths without a patientNNNNN folder")
    if not frames:
        raise InputError(f"{folder} holds neither train.csv nor valid.csv")
    notes.append("uncertain labels (-1) kept as uncertain; blank = not mentioned")
    return RecordSet(pd.concat(frames, ignore_index=True), list(CHEXPERT_FINDINGS), np.vstack(mats), notes=notes)
