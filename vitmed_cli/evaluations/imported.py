"""Predictions made elsewhere, registered as an evaluation (``vitmed evals import``).

A CSV with an image key column and one probability column per finding
(canonical or native names) becomes an evaluation scored against the labels in
the registry, so any model can be compared with a vitmed run.  Keys may be the
registered ones or the dataset's native paths (CheXpert's ``Path`` with its
release prefix, MIMIC-CXR ``files/pNN/.../<dicom_id>.jpg``, VinDr
``test/<image_id>.dicom``).  Images vitmed does not evaluate (laterals,
unlabelled) are left out, as ``predict`` leaves them out, and counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np
from sqlalchemy import func, select

from .._util import finite_or_none, first_line
from ..choices import Part, UncertainPolicy
from ..datasets.parts import apply_uncertain
from ..errors import InputError
from ..registry.db import Registry
from ..registry.models import Evaluation, Finding, Image, Label, SplitAssignment
from ..registry.names import check_name
from ..registry.queries import get_dataset, get_split, unlabelled_keys, used_images
from ..stats import roc_auc
from .store import store_evaluation

KEY_COLUMNS = ("image_id", "key", "Path")


def _examples(keys: Sequence[str], k: int = 3) -> str:
    shown = ", ".join(list(keys)[:k])
    return shown + (", ..." if len(keys) > k else "")


def _key_column(columns: list[str], key_col: str | None, path: Path) -> str:
    if key_col is not None:
        if key_col not in columns:
            raise InputError(
                f"{path.name} has no column {key_col!r} (columns: {_examples(columns, 8)}) - "
                "pass the image key column with `key_col`"
            )
        return key_col
    for c in KEY_COLUMNS:
        if c in columns:
            return c
    return columns[0]


@dataclass
class _Table:
    """The prediction CSV as read: its columns, key column, keys (in row order) and hash."""

    path: Path
    frame: Any
    columns: list[str]
    key_column: str
    keys: list[str]
    sha256: str


def _read_table(path: Path, key_col: str | None) -> _Table:
    import pandas as pd

    if not path.is_file():
        raise InputError(f"prediction file {path} does not exist - give the path of a CSV file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {path.name} as CSV: {first_line(exc)} - "
                         "save it as comma-separated text with a header row") from exc
    columns = [str(c) for c in df.columns]
    if len(columns) < 2 or df.empty:
        raise InputError(f"{path.name} needs a header, an image key column and at least one "
                         "probability column with rows - one row per image")
    kcol = _key_column(columns, key_col, path)
    keys = df[kcol].str.strip().tolist()
    dup = pd.Series(keys)[pd.Series(keys).duplicated()].unique().tolist()
    if dup:
        raise InputError(f"{path.name}: image keys appear twice ({_examples(dup)}) - one row per image")
    return _Table(path, df, columns, kcol, keys, hashlib.sha256(path.read_bytes()).hexdigest())


def _finding_columns(table: _Table, ds) -> dict[str, Finding]:
    """Probability column -> the dataset's finding (canonical or native name, any case)."""
    by_name: dict[str, Finding] = {}
    for f in ds.findings:
        by_name.setdefault(f.canonical, f)
        by_name.setdefault(f.native, f)
    lower = {k.lower(): v for k, v in by_name.items()}
    mapping: dict[str, Finding] = {}
    unknown = []
    for c in table.columns:
        if c == table.key_column:
            continue
        f = by_name.get(c) or lower.get(c.lower())
        if f is None:
            unknown.append(c)
        else:
            mapping[c] = f
    name = table.path.name
    if unknown:
        raise InputError(
            f"{name}: columns {', '.join(unknown)} are not findings of {ds.name!r} "
            f"(findings: {', '.join(f.canonical for f in ds.findings)}) - rename them or "
            "pick the key column with `key_col`"
        )
    seen: dict[int, str] = {}
    for c, f in mapping.items():
        if f.id in seen:
            raise InputError(f"{name}: columns {seen[f.id]!r} and {c!r} both name finding "
                             f"{f.canonical!r} - keep one")
        seen[f.id] = c
    return mapping


def _probabilities(table: _Table, columns: Sequence[str]) -> np.ndarray:
    """(n_rows, n_columns) probabilities; anything outside [0, 1] is an error naming the row."""
    import pandas as pd

    out = np.empty((len(table.keys), len(columns)))
    for j, c in enumerate(columns):
        v = pd.to_numeric(table.frame[c].str.strip(), errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(v) | (v < 0) | (v > 1))
        if bad.size:
            raise InputError(
                f"{table.path.name}: column {c!r} has {bad.size} values that are not probabilities in "
                f"[0, 1] (e.g. row {bad[0] + 2}: {table.frame[c].iloc[bad[0]]!r}) - write one "
                "probability per image and finding"
            )
        out[:, j] = v
    return out


def _native_aliases(id_by_key: dict[str, int]) -> dict[str, int | None]:
    """File name and stem of every registered key -> its image (None where two images share one)."""
    aliases: dict[str, int | None] = {}
    for key, iid in id_by_key.items():
        for alias in {PurePosixPath(key).name, PurePosixPath(key).stem}:
            aliases[alias] = None if alias in aliases and aliases[alias] != iid else iid
    return aliases


def _image_ids(session, ds, table: _Table) -> np.ndarray:
    """Registry ids of the table's keys: registered keys, native paths, or registry ids."""
    keys = table.keys
    id_by_key = dict(session.execute(select(Image.key, Image.id).where(Image.dataset_id == ds.id)).all())
    missing = [k for k in keys if k not in id_by_key]
    if missing:
        # native paths with a release prefix (CheXpert's "CheXpert-v1.0-small/train/...")
        # name the same image as the registered key "train/..."; file paths of datasets keyed
        # by an id (MIMIC "files/p10/.../<dicom_id>.jpg", VinDr "test/<image_id>.dicom"): match
        # the file name, then its stem
        aliases = _native_aliases(id_by_key)
        for k in missing:
            parts = k.replace("\\", "/").split("/")
            hit = next((id_by_key[t] for t in ("/".join(parts[i:]) for i in range(1, len(parts)))
                        if t in id_by_key), None)
            if hit is None:
                as_path = PurePosixPath(k.replace("\\", "/"))
                hit = aliases.get(as_path.name) or aliases.get(as_path.stem)
            if hit is not None:
                id_by_key[k] = hit
        missing = [k for k in keys if k not in id_by_key]
    if missing and table.key_column == "image_id" and all(k.isdigit() for k in keys):
        # an image_id column may hold registry ids rather than keys
        ids = set(session.scalars(select(Image.id).where(Image.dataset_id == ds.id)))
        if all(int(k) in ids for k in keys):
            id_by_key = {k: int(k) for k in keys}
            missing = []
    if missing:
        raise InputError(
            f"{table.path.name}: {len(missing)} image keys are not images of {ds.name!r} "
            f"(e.g. {_examples(missing)}) - use the keys of vitmed datasets export {ds.name}, "
            "or choose the key column with `key_col`"
        )
    return np.array([id_by_key[k] for k in keys], dtype=np.int64)


def _evaluated(session, ds, table: _Table, image_ids: np.ndarray) -> np.ndarray:
    """Mask of the rows predict would score too: frontal and labelled images (not laterals)."""
    used = set(session.scalars(select(Image.id).where(Image.dataset_id == ds.id,
                                                      used_images(ds.id, cached=False))))
    no_labels = unlabelled_keys(ds)
    keep = np.array([i in used and k not in no_labels for k, i in zip(table.keys, image_ids.tolist())],
                    dtype=bool)
    if not keep.any():
        raise InputError(
            f"{table.path.name}: none of its {len(keep)} images is one vitmed evaluates (frontal, "
            "labelled) - score the frontal images of the dataset"
        )
    return keep


def _check_part(session, sp, part: str, table: _Table, keys: Sequence[str], image_ids: np.ndarray) -> None:
    in_part = set(session.scalars(select(SplitAssignment.image_id).where(
        SplitAssignment.split_id == sp.id, SplitAssignment.part == part)))
    outside = [k for k, i in zip(keys, image_ids.tolist()) if i not in in_part]
    if outside:
        raise InputError(
            f"{table.path.name}: {len(outside)} images are not in the {part} part of split "
            f"{sp.name!r} (e.g. {_examples(outside)}) - pass the right `split` / `part`"
        )


def _labels(session, image_ids: np.ndarray, finding_ids: Sequence[int], uncertain: str) -> np.ndarray:
    """The registry's labels after the uncertain policy (not mentioned = 0), as training uses them."""
    id_list = image_ids.tolist()
    raw = np.full((len(id_list), len(finding_ids)), np.nan, dtype=np.float32)
    row_of = {iid: r for r, iid in enumerate(id_list)}
    col_of = {fid: j for j, fid in enumerate(finding_ids)}
    for i in range(0, len(id_list), 20_000):  # stay under bound-parameter limits
        for iid, fid, val in session.execute(select(Label.image_id, Label.finding_id, Label.value).where(
                Label.finding_id.in_(list(finding_ids)), Label.image_id.in_(id_list[i : i + 20_000]))):
            raw[row_of[iid], col_of[fid]] = val
    return apply_uncertain(raw, uncertain).astype(float)


def _import_warnings(session, ds, sp, part: str, name: str, table: _Table, image_ids: np.ndarray,
                     n_left_out: int) -> list[str]:
    """What the importer should know: rows left out, a part covered only partly, a name reused."""
    out = []
    if n_left_out:
        out.append(f"{n_left_out} of the file's {len(table.keys)} images were left out: laterals, "
                   "unreadable or unlabelled images, which predict does not score either")
    if sp is not None:
        in_part = session.scalar(select(func.count()).select_from(SplitAssignment).join(
            Image, Image.id == SplitAssignment.image_id).where(
            SplitAssignment.split_id == sp.id, SplitAssignment.part == part, used_images(ds.id)))
        if in_part and len(image_ids) < in_part:
            out.append(f"the file covers {len(image_ids)} of the {in_part} images of the {part} part of "
                       f"split {sp.name!r} that vitmed scores: compare refuses to pair it with a full "
                       "evaluation unless `intersect`")
    earlier = session.scalars(select(Evaluation.id).where(Evaluation.name == name)).all()
    if earlier:
        out.append(f"evaluation name {name!r} was already used by evaluation(s) "
                   f"{', '.join(map(str, earlier))}; this one is stored beside it (the report and "
                   "compare `init` use the newest)")
    return out


def import_evaluation(
    registry: Registry,
    path: str | Path,
    *,
    dataset: str,
    name: str,
    split: str | None = None,
    part: str = "test",
    key_col: str | None = None,
    uncertain: str = "zeros",
) -> dict[str, Any]:
    """Register a CSV of probabilities (image key + one column per finding) as an evaluation.

    Labels come from the registry: uncertain per ``uncertain`` (zeros, ones or
    ignore = excluded), not mentioned = 0.  Everything is written in one
    transaction; returns ``{"evaluation_id", "macro_auc", "n_images", ...}``.
    """
    uncertain = UncertainPolicy.parse(uncertain, "uncertain").value
    part = Part.parse(part, "part").value
    # the name is the model's label in comparisons too (Evaluation.init_name)
    check_name(name, Evaluation.name, Evaluation.init_name, param="name", what="evaluation")
    table = _read_table(Path(path), key_col)
    with registry.session() as s:
        ds = get_dataset(s, dataset)
        sp = get_split(s, ds, split) if split is not None else None
        mapping = _finding_columns(table, ds)
        probs = _probabilities(table, list(mapping))
        image_ids = _image_ids(s, ds, table)
        keep = _evaluated(s, ds, table, image_ids)
        keys = [k for k, ok in zip(table.keys, keep) if ok]
        image_ids, probs = image_ids[keep], probs[keep]
        if sp is not None:
            _check_part(s, sp, part, table, keys, image_ids)
        fids = [f.id for f in mapping.values()]
        y = _labels(s, image_ids, fids, uncertain)
        aucs = roc_auc(y, probs)
        metrics = [
            {"finding": f.canonical, "auc": finite_or_none(aucs[j]),
             "n_positive": int((y[:, j] == 1).sum()), "n_negative": int((y[:, j] == 0).sum())}
            for j, f in enumerate(mapping.values())
        ]
        n_left_out = int((~keep).sum())
        ev = Evaluation(
            name=name, source="import", dataset_id=ds.id, split_id=sp.id if sp else None, part=part,
            init_name=name, n_images=len(image_ids),
            macro_auc=float(np.nanmean(aucs)) if np.isfinite(aucs).any() else None,
            skipped_findings=[f.canonical for f in ds.findings if f.id not in set(fids)],
            uncertain_policy=uncertain,
            config={"file": str(table.path.resolve()), "sha256": table.sha256,
                    "key_column": table.key_column,
                    "columns": {c: f.canonical for c, f in mapping.items()},
                    "n_left_out": n_left_out},
        )
        warnings = _import_warnings(s, ds, sp, part, name, table, image_ids, n_left_out)
        store_evaluation(s, ev, metrics=metrics, image_ids=image_ids, finding_ids=fids,
                         probabilities=probs, labels=y)
        return {
            "evaluation_id": ev.id, "name": name, "dataset": ds.name,
            "split": sp.name if sp else None, "part": part, "n_images": len(image_ids),
            "macro_auc": ev.macro_auc, "uncertain_policy": uncertain,
            "findings": {f.canonical: finite_or_none(aucs[j]) for j, f in enumerate(mapping.values())},
            "skipped_findings": ev.skipped_findings,
            "n_left_out": n_left_out,
            "warnings": warnings,
        }
