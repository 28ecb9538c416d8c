"""Public chest X-ray datasets, read in the layout they are downloaded in.

One reader per format turns a download into a :class:`RecordSet` (a row per
image with harmonised metadata columns and a label matrix 1 / 0 / -1 / NaN =
not mentioned); :func:`ingest_dataset` registers it in one transaction and
then fills the image cache (:mod:`vitmed_cli.images`) in resumable batches.

Formats (``FORMATS``):

* ``vindr``: VinDr-CXR 1.0.0 - ``annotations/image_labels_train.csv`` (three
  radiologists per image, combined by ``--label-policy majority|any``),
  ``annotations/image_labels_test.csv`` (consensus), ``train/`` and ``test/``
  ``<image_id>.dicom``.  No patient identifier: split per image.
* ``chexpert``: CheXpert-v1.0(-small) ``train.csv``/``valid.csv``; PATH is
  the dataset folder or its parent; patient and study from ``Path``.
* ``mimic``: MIMIC-CXR-JPG 2.0.0 ``mimic-cxr-2.0.0-{chexpert,metadata,split}.csv[.gz]``,
  images ``files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg``; study labels per image.
* ``cxr14``: NIH ChestX-ray14 ``Data_Entry_2017[_v2020].csv``,
  ``train_val_list.txt``/``test_list.txt``, PNGs in ``images/`` or ``images_0NN/images/``.
* ``padchest``: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz]``,
  16-bit PNGs in ``<ImageDir>/``; only positive labels are listed, so an
  absent finding has no label row (negative at training time).  Every native
  label (about 190) becomes a finding; the study-level ones ('exclude',
  'suboptimal study', 'unchanged') are listed by canonical name in
  ``Dataset.options["non_findings"]`` for training to skip ('normal' becomes
  "No Finding", a label as in CheXpert and MIMIC).  A row whose
  ``Labels`` cell is blank (not ``[]``) carries no label information: the
  image is registered without label rows and its key is listed in
  ``Dataset.options["unlabelled_keys"]`` (leave it out of training and
  evaluation).  PNGs whose ``PhotometricInterpretation_DICOM`` is MONOCHROME1
  kept the stored values when converted (bright air) and are inverted in the
  cache.

Views (:func:`view_of`): PA/AP and their variants (AP_horizontal, AP AXIAL,
AP/PA LLD/RLD) are 'frontal'; L, LL, RL, LATERAL, XTABLE LATERAL 'lateral';
oblique (LAO, RAO), SWIMMERS, PadChest's COSTAL/EXCLUDE/UNK and blank are
'unknown'.  The native code is kept in ``Image.view_native``.  Required
identifier cells (paths, image/patient/study ids that name the file) must not
be blank: the first blank one is reported with its file, line and column.
ChestX-ray14 ages such as '003M' or '010D' are converted to years.
* ``csv``: a CSV with a path column, optional patient/study/view/sex/age/part,
  and 0/1/-1/blank finding columns.
* ``synthetic``: :func:`vitmed_cli.synthetic.write_synthetic`, then ``csv``.
"""

from __future__ import annotations

import ast
import csv
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import pandas as pd
from sqlalchemy import bindparam, func, select

from .errors import AlreadyExists, ConfigError, InputError
from .findings import harmonise, normalise
from .registry.db import Registry
from .registry.models import Dataset, Finding, Image, Label

log = logging.getLogger("vitmed.ingest")

FORMATS = ("vindr", "chexpert", "mimic", "cxr14", "padchest", "csv", "synthetic")
LABEL_POLICIES = ("majority", "any")
CHEXPERT_FINDINGS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
# VinDr-CXR 1.0.0 image-level labels (image_labels_train.csv; the test file
# spells the last-but-one "Other disease").
VINDR_FINDINGS = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
    "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding",
)
IMAGE_COLUMNS = (
    "key", "source_path", "patient_id", "study_id", "view", "view_native", "sex", "age", "official_part",
)
INSERT_BATCH = 20_000
UPDATE_BATCH = 2_000


@dataclass
class RecordSet:
    """One dataset in memory: image rows, native finding names, label matrix (NaN = not mentioned)."""

    images: pd.DataFrame
    natives: list[str]
    labels: np.ndarray
    has_patient_ids: bool = True
    notes: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # stored in Dataset.options
    invert_keys: set[str] = field(default_factory=set)  # files that keep MONOCHROME1 values

    def __post_init__(self) -> None:
        for col in IMAGE_COLUMNS:
            if col not in self.images.columns:
                self.images[col] = None
        self.images = self.images.loc[:, list(IMAGE_COLUMNS)].reset_index(drop=True)
        self.labels = np.asarray(self.labels, dtype=np.float32).reshape(len(self.images), len(self.natives))


@dataclass
class IngestSummary:
    """What one ``vitmed ingest`` did."""

    dataset_id: int
    name: str
    format: str
    n_images: int
    n_ingested: int
    n_unreadable: int
    n_skipped_existing: int
    n_patients: int | None
    findings: list[str]
    unmapped_findings: list[str]
    notes: list[str]
    seconds: float
    n_new_images: int = 0
    image_size: int = 224
    cache_path: str | None = None
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- small helpers ----------------------------------------------------------


# View codes as the datasets write them (compared upper-case, '_'/'-' as spaces).
# Frontal: PA/AP and their variants (portable, axial, decubitus: AP LLD = AP
# projection with the patient on the left side).  Lateral: true laterals,
# cross-table included.  Everything else - oblique (LAO, RAO, LPO, RPO),
# SWIMMERS, PadChest's COSTAL, EXCLUDE and UNK, blank - is 'unknown'.
FRONTAL_VIEWS = frozenset({
    "FRONTAL", "PA", "AP", "POSTEROANTERIOR", "ANTEROPOSTERIOR", "AP HORIZONTAL", "PA HORIZONTAL",
    "AP AXIAL", "PA AXIAL", "AP LLD", "AP RLD", "PA LLD", "PA RLD", "AP SUPINE", "AP ERECT",
    "AP PORTABLE", "PA ERECT",
})
LATERAL_VIEWS = frozenset({
    "L", "LL", "RL", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL", "XTABLE LATERAL",
    "CROSS TABLE LATERAL", "CROSSTABLE LATERAL", "X TABLE LATERAL",
})


def view_of(native: Any) -> str:
    """'frontal' | 'lateral' | 'unknown' from a dataset's view code (see FRONTAL_VIEWS, LATERAL_VIEWS)."""
    if native is None or native is pd.NA or (isinstance(native, float) and np.isnan(native)):
        return "unknown"
    v = re.sub(r"[\s_\-]+", " ", str(native)).strip().upper()
    if v in FRONTAL_VIEWS:
        return "frontal"
    if v in LATERAL_VIEWS:
        return "lateral"
    return "unknown"


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def _clean_str(series: pd.Series) -> pd.Series:
    s = series.astype("string").str.strip()
    keep = (s.notna() & (s != "")).to_numpy(dtype=bool, na_value=False)
    out = s.astype(object).to_numpy(copy=True)
    out[~keep] = None
    return pd.Series(out, index=series.index, dtype=object)


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_table(
    path: Path, required: tuple[str, ...] | list[str] = (), *, what: str = "", hint: str = ""
) -> pd.DataFrame:
    """A CSV (plain or .gz) with every column as text; fails at once on missing columns.

    The error lists the columns the file has; ``hint`` (e.g. which option
    renames a column) is appended to it.
    """
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=True, low_memory=False)
    except FileNotFoundError as exc:
        raise InputError(f"{path} does not exist{' - ' + what if what else ''}") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise InputError(f"cannot read {path} as CSV: {' '.join(str(exc).split())}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        has = [c for c in df.columns if not c.startswith("Unnamed")]
        shown = ", ".join(has[:20]) + (f", ... ({len(has)} in all)" if len(has) > 20 else "")
        raise InputError(
            f"{path} is missing column(s) {', '.join(missing)} - expected {', '.join(required)}"
            + (f" ({what})" if what else "")
            + f"; the file has: {shown or 'no columns'}"
            + (f" - {hint}" if hint else "")
        )
    return df


def require_ids(df: pd.DataFrame, columns: tuple[str, ...] | list[str], source: Path, what: str = "") -> None:
    """Fail on the first blank cell of an identifier column, naming file, line and column."""
    for col in columns:
        blank = df[col].isna() | (df[col].astype("string").str.strip() == "").fillna(True)
        if blank.any():
            line = int(np.flatnonzero(blank.to_numpy(dtype=bool))[0]) + 2  # header is line 1
            raise InputError(
                f"{source}: line {line} has an empty {col!r} - every row needs one"
                + (f" ({what})" if what else "")
                + "; fill it in or delete the row"
            )


LABEL_VALUES = (1, 0, -1)


def _invalid_labels(raw: pd.Series) -> np.ndarray:
    """Mask of cells that are neither blank nor 1 / 0 / -1 (1.0 etc. count as valid)."""
    text = raw.astype("string").str.strip()
    blank = (raw.isna() | (text == "")).to_numpy(dtype=bool, na_value=True)
    values = pd.to_numeric(text, errors="coerce")
    valid = values.isin(LABEL_VALUES).to_numpy(dtype=bool, na_value=False)
    return ~blank & ~valid


def label_matrix(
    df: pd.DataFrame, columns: list[str], source: Path, *, lines: np.ndarray | None = None
) -> np.ndarray:
    """Columns of 1 / 0 / -1 / blank as float32 (NaN = blank); anything else is an error.

    The error names the file, the line (``lines[i]`` for row i; by default
    row + 2, the header being line 1), the column and the value.
    """
    out = np.full((len(df), len(columns)), np.nan, dtype=np.float32)
    for j, col in enumerate(columns):
        raw = df[col]
        bad = _invalid_labels(raw)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            line = int(lines[i]) if lines is not None else i + 2
            raise InputError(
                f"{source}: line {line}, column {col!r} has {str(raw.iloc[i]).strip()!r} - finding columns "
                "take 1, 0, -1 (uncertain) or blank; correct the cell"
            )
        values = pd.to_numeric(raw.astype("string").str.strip(), errors="coerce")
        out[:, j] = values.to_numpy(dtype=np.float32, na_value=np.nan)
    return out


AGE_UNITS = {"Y": 1.0, "M": 12.0, "W": 52.0, "D": 365.0}


def _age(series: pd.Series) -> pd.Series:
    """Ages in years; DICOM-style '045Y', '003M', '010D' (and W) are converted (M/12, W/52, D/365)."""
    parts = series.astype("string").str.strip().str.upper().str.extract(r"(\d+(?:\.\d+)?)\s*([YMWD])?")
    years = pd.to_numeric(parts[0], errors="coerce")
    unit = parts[1].map(AGE_UNITS, na_action="ignore").astype("float64").fillna(1.0)
    return (years / unit.to_numpy()).astype("float64")


# --- readers ---------------------------------------------------------------


def _vindr_key(name: str) -> str:
    n = normalise(name)
    return "other diseases" if n == "other disease" else n


def read_vindr(root: Path, *, label_policy: str = "majority") -> RecordSet:
    """VinDr-CXR 1.0.0 as downloaded from PhysioNet."""
    if label_policy not in LABEL_POLICIES:
        raise ConfigError(f"unknown --label-policy {label_policy!r} - use majority or any")
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
                    "source_path": [str(folder / k) for k in key],
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
            "source_path": [str(root / str(d) / i) for d, i in zip(image_dir.fillna(""), ids)],
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
            f"{len(unlabelled)} images have a blank Labels cell: registered without label rows and listed "
            "in options['unlabelled_keys'] (leave them out of training and evaluation)"
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
        hint=f"name the image path column with --path-col COLUMN (now {path_col!r}) and the patient column "
        f"with --patient-col COLUMN (default patient_id)",
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
            + ") - add them or name them with --findings A,B,C"
        )
    mat = label_matrix(df, natives, csv_path)
    paths = _clean_str(df[path_col])
    if paths.isna().any():
        row = int(np.flatnonzero(paths.isna().to_numpy())[0]) + 2
        raise InputError(f"{csv_path}: line {row} has an empty {path_col!r} - every row needs an image path")
    base = csv_path.parent
    has_patients = patient_col in df.columns
    if not has_patients:
        notes.append(f"no {patient_col!r} column: images are split individually (use --patient-col)")
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
            "key": paths,
            "source_path": [p if os.path.isabs(p) else str(base / p) for p in paths],
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


READERS: dict[str, Callable[..., RecordSet]] = {
    "vindr": read_vindr,
    "chexpert": read_chexpert,
    "mimic": read_mimic,
    "cxr14": read_cxr14,
    "padchest": read_padchest,
    "csv": read_generic_csv,
}
FORMAT_OPTIONS = {
    "vindr": {"label_policy"},
    "csv": {"path_col", "patient_col", "view_col", "findings"},
    "synthetic": {"n_images", "seed", "flavour"},
}


def read_dataset(fmt: str, path: Path, **options) -> RecordSet:
    """The records of one download, without touching the registry."""
    fmt = _check_format(fmt)
    return READERS["csv" if fmt == "synthetic" else fmt](Path(path), **options)


def _check_format(fmt: Any) -> str:
    fmt = getattr(fmt, "value", fmt)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown ingest format {fmt!r} - use one of: {', '.join(FORMATS)}")
    return fmt


# --- ingest ----------------------------------------------------------------


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "dataset"


def _none(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _label_text(value: float) -> str:
    return "blank" if np.isnan(value) else str(int(value))


def _check_same_labels(s, ds: Dataset, records: RecordSet) -> None:
    """Refuse a re-ingest whose labels or findings differ from the registered ones.

    Compares every image already registered (by key) and every finding
    (registered or newly read); a registered finding the new read lacks
    counts as blank.  Raises :class:`AlreadyExists` naming the count and
    the first difference.
    """
    registered = sorted(ds.findings, key=lambda f: f.position)
    col_of = {f.native: j for j, f in enumerate(registered)}
    new_findings = [n for n in records.natives if n not in col_of]
    t = Image.__table__
    conn = s.connection()
    id_key = conn.execute(select(t.c.id, t.c.key).where(t.c.dataset_id == ds.id)).all()
    row_of_key = {str(k): i for i, k in enumerate(records.images["key"].astype(str))}
    pairs = [(image_id, row_of_key[str(k)]) for image_id, k in id_key if str(k) in row_of_key]
    old = np.full((len(pairs), len(registered)), np.nan, dtype=np.float32)
    if pairs and registered:
        at = {image_id: i for i, (image_id, _) in enumerate(pairs)}
        fcol = {f.id: j for j, f in enumerate(registered)}
        lt = Label.__table__
        q = select(lt.c.image_id, lt.c.finding_id, lt.c.value).where(lt.c.finding_id.in_(list(fcol)))
        for image_id, finding_id, value in conn.execute(q):
            i = at.get(image_id)
            if i is not None:
                old[i, fcol[finding_id]] = value
    new = np.full_like(old, np.nan)
    rows = np.array([r for _, r in pairs], dtype=np.int64)
    for j_new, native in enumerate(records.natives):
        j = col_of.get(native)
        if j is not None and len(rows):
            new[:, j] = records.labels[rows, j_new]
    differ = ~((old == new) | (np.isnan(old) & np.isnan(new)))
    n_differ = int(differ.sum())
    if not n_differ and not new_findings:
        return
    example = ""
    if n_differ:
        i, j = (int(x[0]) for x in np.nonzero(differ))
        key = records.images["key"].iloc[rows[i]]
        example = f" (e.g. {key}: {registered[j].native} {_label_text(old[i, j])} -> {_label_text(new[i, j])})"
    listed = f" ({', '.join(new_findings[:5])}{', ...' if len(new_findings) > 5 else ''})" if new_findings else ""
    raise AlreadyExists(
        f"dataset {ds.name!r} is registered with different labels: {n_differ} image x finding labels "
        f"differ{example} and {len(new_findings)} findings are new{listed} - ingest under a new --name, "
        f"or delete it first with vitmed datasets delete {ds.name}"
    )


def _register(
    registry: Registry,
    *,
    name: str,
    fmt: str,
    source: Path,
    image_size: int,
    records: RecordSet,
    label_policy: str | None,
    options: dict[str, Any],
) -> tuple[int, str, int]:
    """Dataset, findings, new images and their labels in ONE transaction: (id, cache path, n new)."""
    from .config import get_workspace

    fmap = harmonise(records.natives)
    dup = records.images["key"][records.images["key"].duplicated()]
    if len(dup):
        raise InputError(
            f"{source}: image key(s) listed twice: {', '.join(map(str, dup.iloc[:3]))} - "
            "each image may appear once"
        )
    with registry.session() as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == name))
        if ds is not None:
            if ds.format != fmt or ds.source_path != str(source):
                raise AlreadyExists(
                    f"dataset {name!r} is already registered from {ds.format} {ds.source_path} - "
                    f"choose a new --name or remove it first: vitmed datasets delete {name}"
                )
            if ds.image_size != image_size:
                raise AlreadyExists(
                    f"dataset {name!r} was ingested at --image-size {ds.image_size} - re-run with "
                    f"--image-size {ds.image_size}, or use a new --name for another size"
                )
            if (ds.label_policy or None) != (label_policy or None):
                raise AlreadyExists(
                    f"dataset {name!r} was ingested with --label-policy {ds.label_policy} - re-run "
                    "with that policy, or use a new --name"
                )
            _check_same_labels(s, ds, records)
            # same labels: options derived from the source (non-findings, unlabelled rows)
            # follow the reader of this vitmed version
            ds.options = {**(ds.options or {}), **options}
        else:
            ds = Dataset(
                name=name,
                format=fmt,
                source_path=str(source),
                image_size=image_size,
                has_patient_ids=records.has_patient_ids,
                label_policy=label_policy,
                options=options,
                notes="; ".join(records.notes) or None,
            )
            s.add(ds)
            s.flush()
            cache = get_workspace().cache_dir / f"{_slug(name)}-{ds.id}-{image_size}px.npy"
            if cache.exists():  # left by a deleted dataset that had the same id
                cache.unlink()
            ds.cache_path = str(cache)
        known = {f.native: f for f in ds.findings}
        next_pos = len(known)
        used = {f.canonical for f in ds.findings}
        for canonical, native in fmap.pairs:
            if native in known:
                continue
            if canonical in used:
                canonical = native
            f = Finding(dataset_id=ds.id, canonical=canonical, native=native, position=next_pos)
            s.add(f)
            known[native] = f
            used.add(canonical)
            next_pos += 1
        s.flush()
        finding_ids = np.array([known[n].id for n in fmap.native], dtype=np.int64)

        existing = set(s.scalars(select(Image.key).where(Image.dataset_id == ds.id)))
        frame = records.images
        new_idx = np.flatnonzero(~frame["key"].isin(existing).to_numpy()) if existing else np.arange(len(frame))
        table = Image.__table__
        conn = s.connection()
        cols = [c for c in IMAGE_COLUMNS]
        for start in range(0, len(new_idx), INSERT_BATCH):
            sub = frame.iloc[new_idx[start : start + INSERT_BATCH]]
            rows = [
                {"dataset_id": ds.id, **{c: _none(v) for c, v in zip(cols, rec)}}
                for rec in sub.itertuples(index=False, name=None)
            ]
            for r in rows:
                if r["age"] is not None:
                    r["age"] = float(r["age"])
                r["key"] = str(r["key"])
            conn.execute(table.insert(), rows)
        if len(new_idx):
            new_keys = set(frame["key"].iloc[new_idx].astype(str))
            id_of = {
                k: i
                for k, i in conn.execute(select(table.c.key, table.c.id).where(table.c.dataset_id == ds.id))
                if k in new_keys
            }
            image_ids = np.array([id_of[str(k)] for k in frame["key"].iloc[new_idx]], dtype=np.int64)
            labels = records.labels[new_idx]
            ltable = Label.__table__
            step = max(1, 100_000 // max(1, labels.shape[1]))
            for start in range(0, len(new_idx), step):
                block = labels[start : start + step]
                r, c = np.nonzero(~np.isnan(block))
                if not len(r):
                    continue
                vals = block[r, c].astype(np.int64)
                conn.execute(
                    ltable.insert(),
                    [
                        {"image_id": int(i), "finding_id": int(f), "value": int(v)}
                        for i, f, v in zip(image_ids[start + r], finding_ids[c], vals)
                    ],
                )
        return ds.id, ds.cache_path, len(new_idx)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        auto_refresh=False,  # no refresh thread while worker processes fork
        disable=not enabled,
    )


def build_cache(
    registry: Registry,
    dataset_id: int,
    *,
    workers: int | None = None,
    progress: bool = True,
    invert_keys: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Decode every image not yet cached into the dataset's cache; resumable.

    ``invert_keys``: image keys whose files keep MONOCHROME1 values (PadChest
    PNGs from MONOCHROME1 DICOMs); they are inverted so that 0 is black.
    """
    from .images import ensure_cache, fill_cache

    table = Image.__table__
    with registry.session() as s:
        ds = s.get(Dataset, dataset_id)
        cache_path, size, name = Path(ds.cache_path), ds.image_size, ds.name
        rows = s.execute(
            select(table.c.id, table.c.source_path, table.c.readable, table.c.cache_index, table.c.key)
            .where(table.c.dataset_id == dataset_id)
            .order_by(table.c.id)
        ).all()
    had_cache = ensure_cache(cache_path, len(rows), size)
    tasks = [
        (image_id, row, path, key in invert_keys)
        for row, (image_id, path, readable, cache_index, key) in enumerate(rows)
        if not (had_cache and readable and cache_index is not None)
    ]
    stats: dict[str, Any] = {
        "n_ingested": 0, "n_done": 0, "n_skipped_existing": len(rows) - len(tasks), "inverted": [],
    }
    buffer: list[dict[str, Any]] = []
    stmt = (
        table.update()
        .where(table.c.id == bindparam("b_id"))
        .values(cache_index=bindparam("b_row"), readable=bindparam("b_ok"), error=bindparam("b_err"))
    )

    def flush() -> None:
        if buffer:
            with registry.session() as s:
                s.connection().execute(stmt, buffer)
            buffer.clear()

    started = time.perf_counter()
    with _progress(progress and bool(tasks)) as bar:
        task = bar.add_task(f"caching {name}", total=len(tasks), rate="")

        def on_results(results) -> None:
            for r in results:
                ok = r.error is None
                buffer.append({"b_id": r.image_id, "b_row": r.row if ok else None, "b_ok": ok, "b_err": r.error})
                if ok:
                    stats["n_ingested"] += 1
                if r.inverted:
                    stats["inverted"].append(r.image_id)
            if len(buffer) >= UPDATE_BATCH:
                flush()
            stats["n_done"] += len(results)
            elapsed = time.perf_counter() - started
            rate = f"{stats['n_done'] / elapsed:.0f} img/s" if elapsed > 0 else ""
            bar.update(task, advance=len(results), rate=rate)
            bar.refresh()

        try:
            fill_cache(cache_path, tasks, size, workers=workers, on_results=on_results)
        finally:
            flush()
    return stats


def ingest_dataset(
    registry: Registry,
    fmt: str,
    path: Path,
    *,
    name: str,
    image_size: int = 224,
    workers: int | None = None,
    label_policy: str | None = None,
    progress: bool = True,
    **format_options: Any,
) -> IngestSummary:
    """Register a dataset from its downloaded layout and fill its image cache.

    The dataset, its findings, images and labels are written in one
    transaction; the cache is then filled in batches, so an interrupted
    ingest resumes where it stopped when run again with the same arguments.
    """
    started = time.perf_counter()
    fmt = _check_format(fmt)
    label_policy = getattr(label_policy, "value", label_policy)
    if not name or not str(name).strip():
        raise ConfigError("--name must not be empty - name the dataset, e.g. --name vindr")
    if not 16 <= int(image_size) <= 2048:
        raise ConfigError(f"--image-size must be between 16 and 2048 pixels (got {image_size})")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {workers})")
    allowed = FORMAT_OPTIONS.get(fmt, set())
    given = {k: getattr(v, "value", v) for k, v in format_options.items() if v is not None}
    unknown = sorted(set(given) - allowed)
    if unknown:
        opts = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ConfigError(f"{opts} do(es) not apply to the {fmt} format - remove it")
    if label_policy is not None and fmt != "vindr":
        raise ConfigError(
            f"--label-policy applies to vindr only (several radiologists per image) - remove it for {fmt}"
        )
    source = Path(path).expanduser().resolve()
    if fmt == "synthetic":
        from .synthetic import write_synthetic

        if "n_images" not in given:
            raise ConfigError("vitmed ingest synthetic needs --n-images N (e.g. --n-images 400)")
        csv_path = write_synthetic(
            source, n_images=int(given["n_images"]), seed=int(given.get("seed", 0)),
            flavour=str(given.get("flavour", "source")),
        )
        records = read_generic_csv(csv_path)
        options = {k: given[k] for k in given}
    else:
        if not source.exists():
            raise InputError(f"{source} does not exist - give the folder (or file) of the {fmt} download")
        if fmt == "vindr":
            label_policy = label_policy or "majority"
            records = read_vindr(source, label_policy=label_policy)
        else:
            records = READERS[fmt](source, **given)
        options = dict(given)
    options.update(records.options)
    fmap = harmonise(records.natives)
    dataset_id, cache_path, n_new = _register(
        registry, name=name, fmt=fmt, source=source, image_size=int(image_size),
        records=records, label_policy=label_policy, options=options,
    )
    stats = build_cache(registry, dataset_id, workers=workers, progress=progress, invert_keys=records.invert_keys)
    notes = list(records.notes)
    imgs = records.images
    if "view" in imgs and "view_native" in imgs:
        odd = imgs.loc[(imgs["view"] == "unknown") & imgs["view_native"].notna(), "view_native"]
        if len(odd) and (imgs["view"] != "unknown").any():
            codes = ", ".join(sorted({str(c) for c in odd})[:5])
            notes.append(f"{len(odd)} image(s) with view codes that are neither frontal nor lateral "
                         f"({codes}) are registered as 'unknown' and left out of training and evaluation")
    if stats["inverted"] and not records.invert_keys:
        notes.append(f"{len(stats['inverted'])} MONOCHROME1 image(s) inverted so that 0 is black")
    with registry.session() as s:
        t = Image.__table__
        n_images = s.scalar(select(func.count()).where(t.c.dataset_id == dataset_id))
        n_unreadable = s.scalar(select(func.count()).where(t.c.dataset_id == dataset_id, t.c.readable.is_(False)))
        n_patients = (
            s.scalar(
                select(func.count(func.distinct(t.c.patient_id))).where(
                    t.c.dataset_id == dataset_id, t.c.patient_id.is_not(None)
                )
            )
            if records.has_patient_ids
            else None
        )
        errors = [
            {"key": k, "error": e}
            for k, e in s.execute(
                select(t.c.key, t.c.error)
                .where(t.c.dataset_id == dataset_id, t.c.readable.is_(False))
                .order_by(t.c.id)
                .limit(10)
            )
        ]
        if stats["inverted"]:
            for key, src in s.execute(select(t.c.key, t.c.source_path).where(t.c.id.in_(stats["inverted"][:3]))):
                log.warning("%s is MONOCHROME1: inverted so that 0 is black", src)
        findings = list(
            s.scalars(select(Finding.canonical).where(Finding.dataset_id == dataset_id).order_by(Finding.position))
        )
        first_bad = None
        if n_images and n_unreadable == n_images:
            first_bad = s.execute(
                select(t.c.source_path, t.c.key, t.c.error)
                .where(t.c.dataset_id == dataset_id, t.c.readable.is_(False))
                .order_by(t.c.id)
                .limit(1)
            ).first()
    if first_bad is not None:
        # Kept registered (not rolled back): fixing the files and re-running resumes.
        src, key, error = first_bad
        try:
            shown = Path(src).relative_to(source if source.is_dir() else source.parent).as_posix()
        except (TypeError, ValueError):
            shown = str(key)
        error = " ".join(str(error or "unreadable").split())
        error = error if len(error) <= 200 else error[:197] + "..."
        raise InputError(
            f"none of the {n_images} images of {name!r} could be read (first: {shown}: {error}) - check the "
            "files; the dataset is registered so a re-run after fixing them resumes"
        )
    return IngestSummary(
        dataset_id=dataset_id,
        name=name,
        format=fmt,
        n_images=n_images,
        n_ingested=stats["n_ingested"],
        n_unreadable=n_unreadable,
        n_skipped_existing=stats["n_skipped_existing"],
        n_patients=n_patients,
        findings=findings,
        unmapped_findings=list(fmap.unmapped),
        notes=notes,
        seconds=round(time.perf_counter() - started, 3),
        n_new_images=n_new,
        image_size=int(image_size),
        cache_path=cache_path,
        errors=errors,
    )


# --- export ----------------------------------------------------------------


def export_labels(registry: Registry, name: str, out: Path | None = None) -> dict[str, Any]:
    """Write a dataset's labels as CSV (stdout without ``out``): key, patient_id, view, findings."""
    from .catalog import get_dataset

    with registry.session() as s:
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

    if out is None:
        write(sys.stdout)
        sys.stdout.flush()
    else:
        out = Path(out)
        if out.parent and not out.parent.is_dir():
            raise InputError(f"folder {out.parent} does not exist - create it or choose another --out")
        with open(out, "w", newline="") as fh:
            write(fh)
    return {"dataset": name, "n_images": len(images), "findings": [f.canonical for f in findings],
            "out": str(out) if out else None}


__all__ = [
    "FORMATS",
    "IngestSummary",
    "RecordSet",
    "build_cache",
    "export_labels",
    "ingest_dataset",
    "label_matrix",
    "parse_padchest_labels",
    "read_chexpert",
    "read_cxr14",
    "read_dataset",
    "read_generic_csv",
    "read_mimic",
    "read_padchest",
    "read_table",
    "read_vindr",
    "view_of",
]
