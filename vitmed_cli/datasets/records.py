"""One dataset in memory, and the checks every reader shares.

A reader (one module per source in :mod:`vitmed_cli.datasets.formats`) turns a
download into a :class:`RecordSet`: a row per image with harmonised metadata
columns, the native finding names, and a label matrix (1 / 0 / -1 uncertain /
NaN not mentioned).  The helpers here read CSVs with errors that name the file,
line and column, and map view codes to frontal / lateral / unknown.

Paths read from a CSV (:func:`join_paths`) are normalised (``img/../img/a.png``,
``./img/a.png`` and ``img/a.png`` are one file) and must stay inside the dataset
folder; a NUL byte in any cell is an error naming its line (neither back end
can store one in a text column, and no file name holds one).

Views (:func:`view_of`): PA/AP and their variants (AP_horizontal, AP AXIAL,
AP/PA LLD/RLD) are 'frontal'; L, LL, RL, LATERAL, XTABLE LATERAL 'lateral';
oblique (LAO, RAO), SWIMMERS, PadChest's COSTAL/EXCLUDE/UNK and blank are
'unknown'.  The native code is kept in ``Image.view_native``.  Required
identifier cells (paths, image/patient/study ids that name the file) must not
be blank: the first blank one is reported with its file, line and column.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError

IMAGE_COLUMNS = (
    "key", "source_path", "patient_id", "study_id", "view", "view_native", "sex", "age", "official_part",
)


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


DELIMITERS = ",;\t|"
SNIFF_BYTES = 64 * 1024


def sniff_delimiter(path: Path) -> str:
    """The CSV's delimiter (comma, semicolon, tab or bar) from its first lines; comma when unsure."""
    try:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as fh:
            sample = fh.read(SNIFF_BYTES)
    except (OSError, EOFError):
        return ","  # pandas reports the file's problem
    if "\n" in sample and len(sample) == SNIFF_BYTES:
        sample = sample[: sample.rindex("\n")]  # whole lines only
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


def _refuse_nul(df: pd.DataFrame, path: Path) -> None:
    """A NUL byte in a cell: the first one, by line and column."""
    for col in df.columns:
        text = df[col]
        if not (text.dtype == object or pd.api.types.is_string_dtype(text.dtype)):
            continue
        has = text.str.contains("\x00", regex=False).to_numpy(dtype=bool, na_value=False)
        if has.any():
            i = int(np.flatnonzero(has)[0])
            raise InputError(
                f"{path}: line {i + 2}, column {col!r} holds a NUL byte ({text.iloc[i]!r}) - no file name or "
                "label contains one; correct the cell (the file may be damaged or not text)"
            )


def read_table(
    path: Path, required: tuple[str, ...] | list[str] = (), *, what: str = "", hint: str = "",
    sniff: bool = False,
) -> pd.DataFrame:
    """A CSV (plain or .gz) with every column as text; fails at once on missing columns and on
    a NUL byte in any cell (naming its line).

    The error lists the columns the file has; ``hint`` (e.g. which option
    renames a column) is appended to it.  ``sniff``: the delimiter is detected
    (a semicolon-separated export reads as one), else it is a comma.
    """
    sep = sniff_delimiter(path) if sniff else ","
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=True, low_memory=False, sep=sep)
    except FileNotFoundError as exc:
        raise InputError(f"{path} does not exist{' - ' + what if what else ''}") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise InputError(f"cannot read {path} as CSV: {' '.join(str(exc).split())}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        has = [c for c in df.columns if not c.startswith("Unnamed")]
        shown = ", ".join(has[:20]) + (f", ... ({len(has)} in all)" if len(has) > 20 else "")
        other = [d for d in ";\t|" if len(has) == 1 and d in has[0]]
        raise InputError(
            f"{path} is missing column(s) {', '.join(missing)} - expected {', '.join(required)}"
            + (f" ({what})" if what else "")
            + f"; the file has: {shown or 'no columns'}"
            + (f" (one column: is the file separated by {other[0]!r}, not commas?)" if other else "")
            + (f" - {hint}" if hint else "")
        )
    _refuse_nul(df, path)
    return df


def join_paths(
    root: Path, paths: Sequence[str], source: Path, column: str, *, allow_outside: bool = False,
    lines: Sequence[int] | None = None, hint: str = "",
) -> list[str]:
    """``paths`` (relative to ``root``, or absolute) as normalised absolute paths.

    ``.``, ``..`` and repeated slashes are folded, without following links, so the
    spellings of one file are one path.  A path that leaves ``root`` is refused
    (naming the file, line and column) unless ``allow_outside``; ``hint`` says how
    to allow it.
    """
    base = os.path.normpath(os.path.abspath(root))
    out: list[str] = []
    for i, p in enumerate(paths):
        p = str(p)
        full = os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))
        if not allow_outside and os.path.commonpath([base, full]) != base:
            line = int(lines[i]) if lines is not None else i + 2
            raise InputError(
                f"{source}: line {line}, column {column!r}: {p!r} is outside the dataset folder {base} - "
                "images must lie under it" + (f"; {hint}" if hint else "")
            )
        out.append(full)
    return out


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
