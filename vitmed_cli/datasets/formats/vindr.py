"""VinDr-CXR 1.0.0 as downloaded from PhysioNet.

``annotations/image_labels_train.csv`` holds three radiologists per image,
combined by ``label_policy`` (majority or any); ``annotations/image_labels_test.csv``
the consensus; images are ``train/<image_id>.dicom`` and ``test/<image_id>.dicom``.
There is no patient identifier: images are split individually.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import ConfigError, InputError
from ..findings import normalise
from ..records import RecordSet, label_matrix, read_table, require_ids

LABEL_POLICIES = ("majority", "any")


# VinDr-CXR 1.0.0 image-level labels (image_labels_train.csv; the test file
# spells the last-but-one "Other disease").
VINDR_FINDINGS = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
    "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding",
)


def _vindr_key(name: str) -> str:
    n = normalise(name)
    return "other diseases" if n == "other disease" else n


def read_vindr(root: Path, *, label_policy: str = "majority") -> RecordSet:
    """VinDr-CXR 1.0.0 as downloaded from PhysioNet."""
    if label_policy not in LABEL_POLICIES:
        raise ConfigError(f"unknown `label_policy` {label_policy!r} - use majority or any")
    ann = root / "annotations"
    files = {"train": ann / "image_labels_train.csv", "test": ann / "image_labels_test.csv"}
    if not any(p.is_file() for p in files.values()):
        raise InputError(
            f"{files['train']} not found - PATH must be the VinDr-CXR folder holding "
            "annotations/image_labels_train.csv, train/ and test/"
        )
    natives: list[str] = []
    keys: dict[str, int] = {}
    frames: list[tuple[str, pd.DataFrame, list[str]]] = []
    notes = ["VinDr-CXR has no patient identifier: images are split individually"]
    for part, csv_path in files.items():
        if not csv_path.is_file():
            notes.append(f"{csv_path.name} not found: no {part} images")
            continue
        required = ("image_id", "rad_id") if part == "train" else ("image_id",)
        df = read_table(csv_path, required)
        require_ids(df, required, csv_path)
        folder = root / part
        if not folder.is_dir():
            raise InputError(f"{folder} not found - {csv_path.name} lists its images as {part}/<image_id>.dicom")
        cols = [c for c in df.columns if c not in ("image_id", "rad_id") and not c.startswith("Unnamed")]
        known = {_vindr_key(f) for f in VINDR_FINDINGS}
        if not any(_vindr_key(c) in known for c in cols):
            raise InputError(
                f"{csv_path} has none of the VinDr-CXR finding columns (e.g. "
                f"{', '.join(VINDR_FINDINGS[:4])}, ..., No finding); it has: "
                f"{', '.join(cols[:10]) or 'only ' + ', '.join(required)} - PATH must be the VinDr-CXR 1.0.0 "
                "folder whose annotations/ hold the published image_labels_*.csv"
            )
        for c in cols:
            k = _vindr_key(c)
            if k not in keys:
                keys[k] = len(natives)
                natives.append(c)
        values = pd.DataFrame(label_matrix(df, cols, csv_path), columns=cols)
        values["image_id"] = df["image_id"].str.strip().to_numpy()
        grouped = values.groupby("image_id", sort=False)
        if "rad_id" in df.columns and part == "train":
            n_readers = grouped.size()
            combined = grouped.mean() > 0.5 if label_policy == "majority" else grouped.max() > 0
            combined = combined.astype(np.float32)
            if len(n_readers) and n_readers.max() > 1:
                notes.append(
                    f"train labels: {len(df)} radiologist rows over {len(n_readers)} images combined by "
                    f"{label_policy} vote"
                )
        else:
            combined = grouped.max()
        frames.append((part, combined, cols))
    rows, mats = [], []
    for part, combined, cols in frames:
        mat = np.full((len(combined), len(natives)), np.nan, dtype=np.float32)
        for c in cols:
            mat[:, keys[_vindr_key(c)]] = combined[c].to_numpy(dtype=np.float32)
        mats.append(mat)
        ids = combined.index.astype(str)
        rows.append(
            pd.DataFrame(
                {
                    "key": ids,
                    "source_path": [str(root / part / f"{i}.dicom") for i in ids],
                    "view": "frontal",
                    "official_part": part,
                }
            )
        )
    images = pd.concat(rows, ignore_index=True)
    return RecordSet(images, natives, np.vstack(mats), has_patient_ids=False, notes=notes)
