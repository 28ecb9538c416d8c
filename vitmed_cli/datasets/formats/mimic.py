"""MIMIC-CXR-JPG 2.0.0: the chexpert, metadata and split CSVs, JPEGs under ``files/``.

``mimic-cxr-2.0.0-{chexpert,metadata,split}.csv[.gz]``; images are
``files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg``; the study's labels apply to each of its images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import InputError
from ..records import RecordSet, _clean_str, _find_file, label_matrix, read_table, require_ids, view_of
from .chexpert import CHEXPERT_FINDINGS


def read_mimic(root: Path) -> RecordSet:
    """MIMIC-CXR-JPG 2.0.0: chexpert, metadata and split CSVs, JPEGs under files/."""
    names = {k: f"mimic-cxr-2.0.0-{k}.csv" for k in ("chexpert", "metadata", "split")}
    paths = {}
    for k, name in names.items():
        found = _find_file(root, name)
        if found is None:
            raise InputError(
                f"{root / name} (or {name}.gz) not found - PATH must be the MIMIC-CXR-JPG 2.0.0 "
                "folder holding the three mimic-cxr-2.0.0-*.csv files and files/"
            )
        paths[k] = found
    meta = read_table(paths["metadata"], ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    labels = read_table(paths["chexpert"], ("subject_id", "study_id", *CHEXPERT_FINDINGS))
    split = read_table(paths["split"], ("dicom_id", "split"))
    require_ids(meta, ("subject_id", "study_id", "dicom_id"), paths["metadata"], "it names the image file")
    require_ids(labels, ("subject_id", "study_id"), paths["chexpert"])
    require_ids(split, ("dicom_id",), paths["split"])
    for df in (meta, labels):
        for col in ("subject_id", "study_id"):
            df[col] = df[col].str.strip()
    meta["dicom_id"] = meta["dicom_id"].str.strip()
    first = ~labels.duplicated(["subject_id", "study_id"]).to_numpy()
    study_mat = label_matrix(labels, list(CHEXPERT_FINDINGS), paths["chexpert"])[first]
    lab = labels[first].set_index(["subject_id", "study_id"])
    pos = lab.index.get_indexer(pd.MultiIndex.from_frame(meta[["subject_id", "study_id"]]))
    mat = np.full((len(meta), len(CHEXPERT_FINDINGS)), np.nan, dtype=np.float32)
    has = pos >= 0
    mat[has] = study_mat[pos[has]]
    part_map = {"train": "train", "validate": "val", "val": "val", "test": "test"}
    split_of = dict(zip(split["dicom_id"].str.strip(), split["split"].str.strip().str.lower()))
    parts = [part_map.get(split_of.get(d, ""), None) for d in meta["dicom_id"]]
    rel = [
        f"files/p{s[:2]}/p{s}/s{st}/{d}.jpg"
        for s, st, d in zip(meta["subject_id"], meta["study_id"], meta["dicom_id"])
    ]
    vp = _clean_str(meta["ViewPosition"])
    images = pd.DataFrame(
        {
            "key": meta["dicom_id"],
            "source_path": [str(root / r) for r in rel],
            "patient_id": meta["subject_id"],
            "study_id": meta["study_id"],
            "view": [view_of(v) for v in vp],
            "view_native": vp,
            "official_part": parts,
        }
    )
    notes = ["study-level CheXpert labels joined to every image of the study; uncertain (-1) kept"]
    if (~has).any():
        notes.append(f"{int((~has).sum())} images belong to studies without a labels row")
    return RecordSet(images, list(CHEXPERT_FINDINGS), mat, notes=notes)
