"""Leak-free splits: patient-level, stratified over findings, reproducible from a seed.

A split assigns every image of a dataset (laterals and unreadable files too:
training and evaluation skip those themselves) to ``train``, ``val`` or
``test``.  All images of one patient land in one part; datasets without
patient identifiers (VinDr-CXR) are split per image, and the result says so.

Multi-label stratification follows iterative stratification (Sechidis,
Tsoumakas & Vlahavas 2011) lifted to patients: each patient carries the number
of its positive images per finding; the finding with the fewest unassigned
patients is served first, each of its patients goes to the part that still
lacks most positives of that finding (ties: the part that lacks most images,
then the seeded generator).  Patients without positives fill the parts by size.

One module on purpose (about 580 lines): making, checking, storing, exporting and
importing a split all share the one leakage rule and the stored layout.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select

from .registry.queries import get_dataset, get_split, require_complete, used_images
from .errors import AlreadyExists, ConfigError, InputError, RefusedError
from .registry.db import Registry
from .registry.names import check_name
from .registry.models import (
    PARTS,
    Dataset,
    Evaluation,
    Finding,
    Image,
    Label,
    Run,
    Split,
    SplitAssignment,
)

EXPORT_COLUMNS = ("image_key", "patient_id", "part")
REQUIRED_IMPORT_COLUMNS = ("image_key", "part")
_PART_INDEX = {p: i for i, p in enumerate(PARTS)}


class SplitLeakage(RefusedError):
    """A patient has images in two parts of one split."""


@dataclass
class _Images:
    """The images of one dataset, sorted by id, with their positives per finding."""

    ids: np.ndarray
    keys: list[str]
    patients: list[str | None]
    official: list[str | None]
    findings: list[str]
    positives: np.ndarray  # (n_images, n_findings) 0/1


def _load_images(session, ds: Dataset) -> _Images:
    rows = session.execute(
        select(Image.id, Image.key, Image.patient_id, Image.official_part)
        .where(Image.dataset_id == ds.id)
        .order_by(Image.id)
    ).all()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    findings = [f.canonical for f in ds.findings]
    col = {f.id: i for i, f in enumerate(ds.findings)}
    positives = np.zeros((len(rows), len(findings)), dtype=np.int64)
    if len(rows) and findings:
        pos = session.execute(
            select(Label.image_id, Label.finding_id)
            .join(Finding, Finding.id == Label.finding_id)
            .where(Finding.dataset_id == ds.id, Label.value == 1)
        ).all()
        if pos:
            img = np.array([p[0] for p in pos], dtype=np.int64)
            fnd = np.array([col[p[1]] for p in pos], dtype=np.int64)
            positives[np.searchsorted(ids, img), fnd] = 1
    return _Images(
        ids=ids,
        keys=[r[1] for r in rows],
        patients=[r[2] for r in rows],
        official=[r[3] for r in rows],
        findings=findings,
        positives=positives,
    )


def check_fractions(val: float, test: float) -> None:
    """Refuse fractions that cannot make a split."""
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise ConfigError(
            f"`val` and `test` must each be >= 0 and add up to less than 1 "
            f"(got `val` {val:g} `test` {test:g}) - e.g. `val` 0.1 `test` 0.2"
        )


def stratify_groups(
    positives: np.ndarray, sizes: np.ndarray, fractions, seed: int = 0
) -> np.ndarray:
    """Assign groups to parts by iterative stratification; returns one part index per group.

    ``positives`` is (n_groups, n_findings): positive images per group and
    finding; ``sizes`` the images per group; ``fractions`` one per part (sum 1).
    """
    rng = np.random.default_rng(seed)
    positives = np.asarray(positives, dtype=np.float64).reshape(len(sizes), -1)
    sizes = np.asarray(sizes, dtype=np.float64)
    fractions = np.asarray(fractions, dtype=np.float64)
    n, n_findings = positives.shape
    usable = fractions > 0
    want_pos = fractions[:, None] * positives.sum(axis=0)[None, :]
    want_size = fractions * sizes.sum()
    has = positives > 0
    left = has.sum(axis=0).astype(np.int64)
    part = np.full(n, -1, dtype=np.int64)
    order = rng.permutation(n)

    def choose(scores_list) -> int:
        cand = np.flatnonzero(usable)
        for scores in scores_list:
            best = scores[cand].max()
            cand = cand[np.isclose(scores[cand], best)]
            if len(cand) == 1:
                return int(cand[0])
        return int(rng.choice(cand))

    def place(u: int, p: int) -> None:
        part[u] = p
        want_pos[p] -= positives[u]
        want_size[p] -= sizes[u]
        left[has[u]] -= 1

    while n_findings and (left > 0).any():
        f = int(np.argmin(np.where(left > 0, left, np.iinfo(np.int64).max)))
        for u in order[(part[order] < 0) & has[order, f]]:
            place(int(u), choose([want_pos[:, f], want_size]))
    for u in order[part[order] < 0]:
        place(int(u), choose([want_size]))
    return part


def _groups(images: _Images, by_patient: bool) -> tuple[np.ndarray, int, int]:
    """Group index per image (patients, or single images), n groups, n images without patient id."""
    if not by_patient:
        return np.arange(len(images.ids)), len(images.ids), 0
    index: dict[str, int] = {}
    out = np.empty(len(images.ids), dtype=np.int64)
    n_missing = 0
    for i, pid in enumerate(images.patients):
        if pid is None or pid == "":
            # An image without a patient id is its own group; key it apart from real ids.
            n_missing += 1
            out[i] = index.setdefault(f"\0image:{images.ids[i]}", len(index))
        else:
            out[i] = index.setdefault(pid, len(index))
    return out, len(index), n_missing


def _assign_by_groups(images: _Images, mask: np.ndarray, fractions, seed: int, by_patient: bool) -> np.ndarray:
    """Part index per image in ``mask`` (others -1), stratified at group level."""
    parts = np.full(len(images.ids), -1, dtype=np.int64)
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return parts
    sub = _Images(
        ids=images.ids[idx], keys=[images.keys[i] for i in idx],
        patients=[images.patients[i] for i in idx], official=[], findings=images.findings,
        positives=images.positives[idx],
    )
    group, n_groups, _ = _groups(sub, by_patient)
    # Sort groups by their first image's key so the result does not depend on row order.
    first_key: dict[int, str] = {}
    for g, key in zip(group, sub.keys):
        first_key.setdefault(int(g), key)
    rank = np.empty(n_groups, dtype=np.int64)
    rank[np.array(sorted(range(n_groups), key=lambda g: first_key[g]))] = np.arange(n_groups)
    group = rank[group]
    pos = np.zeros((n_groups, sub.positives.shape[1]), dtype=np.int64)
    np.add.at(pos, group, sub.positives)
    sizes = np.bincount(group, minlength=n_groups)
    gpart = stratify_groups(pos, sizes, fractions, seed)
    parts[idx] = gpart[group]
    return parts


def _drop_existing(session, ds: Dataset, name: str, replace: bool) -> None:
    old = session.scalar(select(Split).where(Split.dataset_id == ds.id, Split.name == name))
    if old is None:
        return
    if not replace:
        raise AlreadyExists(
            f"dataset {ds.name!r} already has a split named {name!r} - choose another `name` "
            "or pass `replace` to overwrite it"
        )
    n_runs = session.scalar(select(func.count()).where(Run.split_id == old.id))
    n_evals = session.scalar(select(func.count()).where(Evaluation.split_id == old.id))
    if n_runs or n_evals:
        raise RefusedError(
            f"split {name!r} of dataset {ds.name!r} is used by {n_runs} run(s) and {n_evals} "
            "evaluation(s) and cannot be replaced - choose another `name`"
        )
    session.execute(delete(SplitAssignment).where(SplitAssignment.split_id == old.id))
    session.delete(old)
    session.flush()


def _store(session, ds: Dataset, images: _Images, parts: np.ndarray, *, name: str, method: str,
           by: str, seed: int | None, val: float | None, test: float | None) -> Split:
    sp = Split(dataset_id=ds.id, name=name, method=method, seed=seed, val_fraction=val,
               test_fraction=test, by=by)
    session.add(sp)
    session.flush()
    rows = [
        {"split_id": sp.id, "image_id": int(i), "part": PARTS[int(p)]}
        for i, p in zip(images.ids, parts)
        if p >= 0
    ]
    for start in range(0, len(rows), 20_000):
        session.execute(insert(SplitAssignment), rows[start:start + 20_000])
    session.flush()
    check_no_leakage(session, sp.id)
    return sp


def check_no_leakage(session, split_id: int) -> None:
    """Raise :class:`SplitLeakage` if any patient has images in two parts of the split."""
    leaks = session.execute(
        select(Image.patient_id, func.count(func.distinct(SplitAssignment.part)))
        .join(SplitAssignment, SplitAssignment.image_id == Image.id)
        .where(SplitAssignment.split_id == split_id, Image.patient_id.is_not(None))
        .group_by(Image.patient_id)
        .having(func.count(func.distinct(SplitAssignment.part)) > 1)
        .order_by(Image.patient_id)
    ).all()
    if leaks:
        sp = session.get(Split, split_id)
        shown = ", ".join(str(p) for p, _ in leaks[:5])
        more = f" and {len(leaks) - 5} more" if len(leaks) > 5 else ""
        raise SplitLeakage(
            f"split {sp.name if sp else split_id!r} puts {len(leaks)} patient(s) in more than one "
            f"part ({shown}{more}) - make it again by patient with vitmed split DATASET --name NEW"
        )


def split_summary(session, sp: Split) -> dict[str, Any]:
    """Images, patients and positives per finding in each part of a split."""
    ds = session.get(Dataset, sp.dataset_id)
    counts = session.execute(
        select(
            SplitAssignment.part,
            func.count(),
            func.count(func.distinct(Image.patient_id)),
        )
        .join(Image, Image.id == SplitAssignment.image_id)
        .where(SplitAssignment.split_id == sp.id)
        .group_by(SplitAssignment.part)
    ).all()
    pos = session.execute(
        select(SplitAssignment.part, Finding.canonical, func.count())
        .join(Label, Label.image_id == SplitAssignment.image_id)
        .join(Finding, Finding.id == Label.finding_id)
        .where(SplitAssignment.split_id == sp.id, Label.value == 1)
        .group_by(SplitAssignment.part, Finding.canonical)
    ).all()
    findings = [f.canonical for f in ds.findings]
    parts: dict[str, dict[str, Any]] = {
        p: {"n_images": 0, "n_patients": 0 if ds.has_patient_ids else None,
            "positives": {f: 0 for f in findings}}
        for p in PARTS
    }
    # what training and evaluation will use of each part (frontal, readable: catalog.used_images)
    used = dict(session.execute(
        select(SplitAssignment.part, func.count())
        .join(Image, Image.id == SplitAssignment.image_id)
        .where(SplitAssignment.split_id == sp.id, used_images(ds.id))
        .group_by(SplitAssignment.part)
    ).all())
    for part, n_img, n_pat in counts:
        parts[part]["n_images"] = n_img
        if ds.has_patient_ids:
            parts[part]["n_patients"] = n_pat
    for part in parts:
        parts[part]["n_used"] = int(used.get(part, 0))
    for part, finding, n in pos:
        parts[part]["positives"][finding] = n
    n_total = session.scalar(select(func.count()).where(Image.dataset_id == ds.id))
    n_assigned = sum(p["n_images"] for p in parts.values())
    return {
        "id": sp.id,
        "name": sp.name,
        "dataset": ds.name,
        "method": sp.method,
        "by": sp.by,
        "seed": sp.seed,
        "val_fraction": sp.val_fraction,
        "test_fraction": sp.test_fraction,
        "n_images": n_assigned,
        "n_unassigned": n_total - n_assigned,
        "findings": findings,
        "parts": parts,
    }


_NEEDED_FOR = {"train": "finetune trains on it", "val": "finetune chooses the best epoch on it",
               "test": "predict and compare score on it"}


def part_warnings(summary: dict[str, Any], fractions: dict[str, float | None]) -> list[str]:
    """A part that came out empty, or without any image training and evaluation use, said where
    the split is made (not first at finetune).  ``fractions``: the parts asked for (None: official)."""
    unit = "patients" if summary["by"] == "patient" else "images"
    out = []
    if fractions.get("val") == 0:
        out.append("no validation part (`val` 0) - finetune chooses the best epoch and the thresholds on "
                   "it; make the split with `val` above 0 to fine-tune on this split")
    for part in ("val", "test"):
        info = summary["parts"][part]
        if not info["n_used"]:
            continue
        missing = [f for f, n in info["positives"].items()
                   if n == 0 and summary["parts"]["train"]["positives"].get(f)]
        if missing:
            out.append(f"the {part} part has no positive image of {', '.join(missing)} - "
                       f"{'their validation AUC is not defined' if part == 'val' else 'they cannot be scored'}"
                       f"; a larger `{part}` fraction may give them some")
    for part, frac in fractions.items():
        info = summary["parts"][part]
        if info["n_used"] or frac == 0:
            continue
        if info["n_images"] == 0:
            why = (f"too few {unit} for a {frac:g} fraction" if frac is not None
                   else "no image was given this part")
            out.append(f"the {part} part is empty ({why}) - {_NEEDED_FOR[part]}; make the split again "
                       f"with a larger `{part}` or from more {unit}")
        else:
            out.append(f"the {part} part has {info['n_images']} images but none that training and "
                       f"evaluation use (frontal, readable, labelled) - {_NEEDED_FOR[part]}; see vitmed "
                       f"datasets show {summary['dataset']}")
    return out


def make_split(
    registry: Registry,
    dataset: str,
    *,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    name: str | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """Split a dataset by patient (by image where it has no patient ids), stratified over findings."""
    check_fractions(val, test)
    with registry.session() as s:
        ds = get_dataset(s, dataset)
        require_complete(s, ds, "split it")
        name = check_name(name or f"{'patient' if ds.has_patient_ids else 'image'}-s{seed}", Split.name,
                          param="name", what="split")
        _drop_existing(s, ds, name, replace)
        images = _load_images(s, ds)
        if len(images.ids) == 0:
            raise InputError(f"dataset {dataset!r} has no images - re-run vitmed ingest for it")
        by_patient = bool(ds.has_patient_ids)
        fractions = (1.0 - val - test, val, test)
        parts = _assign_by_groups(images, np.ones(len(images.ids), bool), fractions, seed, by_patient)
        _, _, n_missing = _groups(images, by_patient)
        sp = _store(s, ds, images, parts, name=name, method="patient" if by_patient else "image",
                    by="patient" if by_patient else "image", seed=seed, val=val, test=test)
        out = split_summary(s, sp)
        notes = []
        if not by_patient:
            notes.append(f"dataset {dataset!r} has no patient ids: split per image, so patient "
                         "leakage cannot be ruled out")
        elif n_missing:
            notes.append(f"{n_missing} image(s) without a patient id were split as their own patients")
        out["notes"] = notes
        out["warnings"] = part_warnings(out, dict(zip(PARTS, fractions)))
        return out


def official_split(
    registry: Registry,
    dataset: str,
    *,
    val: float = 0.1,
    seed: int = 0,
    name: str = "official",
    replace: bool = False,
) -> dict[str, Any]:
    """The dataset's own test (and validation) parts; without an official validation part,
    ``val`` of the remaining images is taken out by patient, stratified.

    A patient with any official test image goes to test entirely, so no patient leaks.
    """
    name = check_name(name, Split.name, param="name", what="split")
    check_fractions(val, 0.0)
    with registry.session() as s:
        ds = get_dataset(s, dataset)
        require_complete(s, ds, "split it")
        images = _load_images(s, ds)
        official = np.array([_PART_INDEX.get(o, -1) if o else -1 for o in images.official], dtype=np.int64)
        if len(images.ids) == 0 or (official < 0).all():
            raise InputError(
                f"dataset {dataset!r} has no official split (no image has an official part) - "
                f"make a random patient-level split with: vitmed split {dataset}"
            )
        _drop_existing(s, ds, name, replace)
        by_patient = bool(ds.has_patient_ids)
        group, n_groups, _ = _groups(images, by_patient)
        parts = official.copy()
        notes: list[str] = []
        if by_patient:
            # A patient with any official test image is test entirely; then likewise val.
            top = np.full(n_groups, -1, dtype=np.int64)
            np.maximum.at(top, group, parts)
            pull = (top[group] >= _PART_INDEX["val"]) & (parts != top[group])
            if pull.any():
                parts[pull] = top[group][pull]
                notes.append(f"{int(pull.sum())} image(s) of patients with official test/val images "
                             "were moved to that part so that no patient is in two parts")
        has_val = bool((official == _PART_INDEX["val"]).any())
        rest = parts < 0
        rest |= parts == _PART_INDEX["train"]
        if has_val:
            parts[rest] = _PART_INDEX["train"]
            val_fraction = None
        else:
            sub = _assign_by_groups(images, rest, (1.0 - val, val, 0.0), seed, by_patient)
            parts[rest] = sub[rest]
            val_fraction = val
            notes.append(f"no official validation part: {val:g} of the remaining "
                         f"{'patients' if by_patient else 'images'} taken out as val (seed {seed})")
        n_test = int((parts == _PART_INDEX["test"]).sum())
        if n_test == 0:
            # e.g. CheXpert's public release: train and valid only, its test set is held back
            raise InputError(
                f"dataset {dataset!r} has no official test part - make a patient-level split "
                f"with a test part instead: vitmed split {dataset} --test 0.2"
            )
        sp = _store(s, ds, images, parts, name=name, method="official",
                    by="patient" if by_patient else "image", seed=None if has_val else seed,
                    val=val_fraction, test=n_test / len(parts))
        out = split_summary(s, sp)
        if not by_patient:
            notes.append(f"dataset {dataset!r} has no patient ids: the validation part is taken per image")
        out["notes"] = notes
        out["warnings"] = part_warnings(out, {"train": None, "val": None if has_val else val, "test": None})
        return out


def export_split(registry: Registry, dataset: str, split: str | None) -> str:
    """A split as CSV text: ``image_key,patient_id,part``, one row per assigned image."""
    with registry.session(readonly=True) as s:
        ds = get_dataset(s, dataset)
        sp = get_split(s, ds, split)
        rows = s.execute(
            select(Image.key, Image.patient_id, SplitAssignment.part)
            .join(SplitAssignment, SplitAssignment.image_id == Image.id)
            .where(SplitAssignment.split_id == sp.id)
            .order_by(Image.key)
        ).all()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    writer.writerows((k, p if p is not None else "", part) for k, p, part in rows)
    return buf.getvalue()


def import_split(
    registry: Registry, dataset: str, file: Path | str, name: str, *, replace: bool = False
) -> dict[str, Any]:
    """Store a split read from a CSV with ``image_key`` and ``part`` columns (``patient_id`` optional).

    Patients are taken from the registry, not the file; a file that puts one
    patient in two parts is refused with the patient ids.
    """
    name = check_name(name, Split.name, param="name", what="split")
    file = Path(file)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"split file {file} does not exist - check the `import` path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read split file {file}: {exc} - it must be a UTF-8 CSV") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_IMPORT_COLUMNS if c not in columns]
    if missing:
        raise InputError(
            f"split file {file} lacks column(s) {', '.join(missing)} (found: "
            f"{', '.join(columns) or 'none'}) - it needs {', '.join(EXPORT_COLUMNS)} as written by "
            "vitmed split NAME --export S"
        )
    reader.fieldnames = columns
    wanted: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        key = (row.get("image_key") or "").strip()
        part = (row.get("part") or "").strip().lower()
        if not key:
            raise InputError(f"split file {file} line {line}: empty image_key - fill it or drop the row")
        if part not in PARTS:
            raise InputError(
                f"split file {file} line {line}: part {row.get('part')!r} for {key!r} is not one of "
                f"{', '.join(PARTS)}"
            )
        if key in wanted and wanted[key] != part:
            raise InputError(f"split file {file}: image {key!r} is listed in both {wanted[key]} and {part}")
        wanted[key] = part
    if not wanted:
        raise InputError(f"split file {file} has no rows - export one with vitmed split NAME --export S")
    with registry.session() as s:
        ds = get_dataset(s, dataset)
        require_complete(s, ds, "split it")
        _drop_existing(s, ds, name, replace)
        images = _load_images(s, ds)
        index = {k: i for i, k in enumerate(images.keys)}
        unknown = [k for k in wanted if k not in index]
        if unknown:
            shown = ", ".join(unknown[:5])
            raise InputError(
                f"split file {file} names {len(unknown)} image key(s) that dataset {dataset!r} does "
                f"not have (e.g. {shown}) - export keys with vitmed datasets export {dataset}"
            )
        parts = np.full(len(images.ids), -1, dtype=np.int64)
        for key, part in wanted.items():
            parts[index[key]] = _PART_INDEX[part]
        by_patient = bool(ds.has_patient_ids)
        if by_patient:
            seen: dict[str, int] = {}
            leaked: set[str] = set()
            for pid, p in zip(images.patients, parts):
                if p < 0 or not pid:
                    continue
                if seen.setdefault(pid, int(p)) != p:
                    leaked.add(pid)
            if leaked:
                shown = ", ".join(sorted(leaked)[:5])
                raise SplitLeakage(
                    f"split file {file} puts {len(leaked)} patient(s) in more than one part "
                    f"({shown}{' ...' if len(leaked) > 5 else ''}) - refused; fix the file so each "
                    "patient is in one part"
                )
        sp = _store(s, ds, images, parts, name=name, method="import",
                    by="patient" if by_patient else "image", seed=None, val=None, test=None)
        out = split_summary(s, sp)
        out["notes"] = (
            [f"{out['n_unassigned']} image(s) of the dataset are not in the file and stay unassigned"]
            if out["n_unassigned"] else []
        )
        out["warnings"] = part_warnings(out, {"train": None, "val": None, "test": None})
        return out


def show_split(registry: Registry, dataset: str, split: str | None) -> dict[str, Any]:
    """The summary of a stored split."""
    with registry.session(readonly=True) as s:
        ds = get_dataset(s, dataset)
        return split_summary(s, get_split(s, ds, split))


__all__ = [
    "SplitLeakage",
    "check_fractions",
    "check_no_leakage",
    "export_split",
    "import_split",
    "make_split",
    "official_split",
    "show_split",
    "split_summary",
    "stratify_groups",
]
