"""Ingest: a download's records into the registry, then its pixels into the image cache.

:func:`ingest_dataset` reads a download with its format's reader, registers the
dataset and its findings, then its images and labels in batches (one transaction
each, the dataset flagged ``registration: incomplete`` until the last one is in),
then fills the image cache (:mod:`vitmed_cli.datasets.cache`) in resumable
batches: an interrupted ingest resumes where it stopped when run again with the
same arguments, and a re-ingest whose labels changed is refused.

One module on purpose (about 590 lines): registration and cache filling share the
resumable batches, the dataset's incomplete flags and the re-ingest checks.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import bindparam, func, select

from .._util import atomic_write, file_token
from ..choices import DEFAULT_IMAGE_SIZE, DEFAULT_MAX_PIXELS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, Format, LabelPolicy
from ..errors import AlreadyExists, ConfigError, InputError, VitmedError
from ..events import Listener, progress
from ..registry.db import Registry
from ..registry.models import DERIVED_NATIVE, Dataset, Finding, Image, Label
from ..registry.names import check_name
from ..registry.queries import INGEST_ARGS, REGISTRATION
from .cache import ensure_cache, fill_cache
from .findings import harmonise
from .formats import READERS, check_options
from .records import IMAGE_COLUMNS, RecordSet

log = logging.getLogger("vitmed.ingest")

INSERT_BATCH = 20_000  # images registered per transaction
UPDATE_BATCH = 2_000
SLUG_CHARS = 40


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


def _slug(name: str) -> str:
    """A file-name-safe, length-bounded form of a dataset name (the id keeps it unique)."""
    return (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "dataset")[:SLUG_CHARS]


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
        f"differ{example} and {len(new_findings)} findings are new{listed} - ingest under a new `name`, "
        f"or delete it first with vitmed datasets delete {ds.name}"
    )


def _dataset_row(s, *, name: str, fmt: str, source: Path, image_size: int, records: RecordSet,
                 label_policy: str | None, options: dict[str, Any], cache_dir: Path) -> Dataset:
    """The dataset's row: a new one, or the registered one when the re-ingest fits it."""
    ds = s.scalar(select(Dataset).where(Dataset.name == name))
    if ds is None:
        ds = Dataset(name=name, format=fmt, source_path=str(source), image_size=image_size,
                     has_patient_ids=records.has_patient_ids, label_policy=label_policy,
                     options=options, notes="; ".join(records.notes) or None)
        s.add(ds)
        s.flush()
        # a token of the dataset's own: two registries sharing the workspace can both have a dataset
        # 1 of that name, and a file left by a deleted dataset is never reused (nor deleted)
        cache = cache_dir / f"{_slug(name)}-{ds.id}-{file_token()}-{image_size}px.npy"
        while cache.exists():
            cache = cache_dir / f"{_slug(name)}-{ds.id}-{file_token()}-{image_size}px.npy"
        ds.cache_path = str(cache)
        return ds
    if ds.format != fmt or ds.source_path != str(source):
        raise AlreadyExists(
            f"dataset {name!r} is already registered from {ds.format} {ds.source_path} - "
            f"choose a new `name` or remove it first: vitmed datasets delete {name}"
        )
    # another `image_size`: the dataset keeps its rows and gets a cache at that size too
    # (build_size_cache), so runs at 224, 512 and 1024 px use the same images and splits
    if (ds.label_policy or None) != (label_policy or None):
        raise AlreadyExists(
            f"dataset {name!r} was ingested with `label_policy` {ds.label_policy} - re-run "
            "with that policy, or use a new `name`"
        )
    _check_same_labels(s, ds, records)
    # same labels: options derived from the source (non-findings, unlabelled rows) follow the
    # reader of this vitmed version
    ds.options = {**(ds.options or {}), **options}
    return ds


def _add_findings(s, ds: Dataset, natives: list[str]) -> np.ndarray:
    """Register the findings not registered yet; the finding id of each native name, in order."""
    fmap = harmonise(natives)
    known = {f.native: f for f in ds.findings}
    next_pos = len(known)
    # a derived finding's row (made by an evaluation) keeps its name
    used = {f.canonical for f in ds.findings} | set(s.scalars(select(Finding.canonical).where(
        Finding.dataset_id == ds.id, Finding.native == DERIVED_NATIVE)))
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
    return np.array([known[n].id for n in fmap.native], dtype=np.int64)


def _image_rows(dataset_id: int, sub: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of ``sub`` as images table rows (built before the transaction: the write lock
    is held only while they are written)."""
    rows = [
        {"dataset_id": dataset_id, **{c: _none(v) for c, v in zip(IMAGE_COLUMNS, rec)}}
        for rec in sub.itertuples(index=False, name=None)
    ]
    for r in rows:
        if r["age"] is not None:
            r["age"] = float(r["age"])
        r["key"] = str(r["key"])
    return rows


def _insert_images(conn, dataset_id: int, rows: list[dict[str, Any]]) -> np.ndarray:
    """Insert image ``rows``; their new ids, in that order."""
    table = Image.__table__
    before = conn.scalar(select(func.max(table.c.id))) or 0
    conn.execute(table.insert(), rows)
    # ids only grow, and this transaction is the only one adding images to the dataset (its
    # (dataset, key) pairs are unique): its new rows are the dataset's rows above the old largest
    # id - read by primary key, not by scanning the dataset's rows once per batch
    id_of = {key: i for key, i, ds_id in conn.execute(
        select(table.c.key, table.c.id, table.c.dataset_id).where(table.c.id > before)) if ds_id == dataset_id}
    return np.array([id_of[r["key"]] for r in rows], dtype=np.int64)


def _insert_labels(conn, labels: np.ndarray, image_ids: np.ndarray, finding_ids: np.ndarray) -> None:
    """One row per labelled (image, finding); NaN (not mentioned) has no row."""
    ltable = Label.__table__
    step = max(1, 100_000 // max(1, labels.shape[1]))
    for start in range(0, len(image_ids), step):
        block = labels[start : start + step]
        r, c = np.nonzero(~np.isnan(block))
        if not len(r):
            continue
        vals = block[r, c].astype(np.int64).tolist()
        conn.execute(ltable.insert(), [
            {"image_id": i, "finding_id": f, "value": v}
            for i, f, v in zip(image_ids[start + r].tolist(), finding_ids[c].tolist(), vals)
        ])


def _finish_registration(registry: Registry, dataset_id: int) -> None:
    """The last batch is in: the dataset no longer says its registration is incomplete."""
    with registry.session() as s:
        ds = s.get(Dataset, dataset_id)
        ds.options = {k: v for k, v in (ds.options or {}).items() if k != REGISTRATION}


def _register(registry: Registry, *, records: RecordSet, source: Path, on_event: Listener | None = None,
              **dataset: Any) -> tuple[int, str, int]:
    """Dataset, findings, new images and their labels: (id, cache path, n new).

    The images go in batches of ``INSERT_BATCH``, one transaction each (an image and its
    labels always together), so the write lock is never held for the whole registration.
    Until the last batch is in, the dataset's options say ``registration: incomplete``
    (``datasets show`` shows it, split and finetune refuse it); a run stopped half-way
    resumes where it stopped when run again.  A dataset this call created that fails with an
    error is removed again; a kill leaves it flagged incomplete.
    """
    dup = records.images["key"][records.images["key"].duplicated()]
    if len(dup):
        raise InputError(
            f"{source}: image key(s) listed twice: {', '.join(map(str, dup.iloc[:3]))} - "
            "each image may appear once"
        )
    with registry.session() as s:
        created = s.scalar(select(Dataset.id).where(Dataset.name == dataset["name"])) is None
        ds = _dataset_row(s, records=records, source=source, **dataset)
        finding_ids = _add_findings(s, ds, records.natives)
        existing = set(s.scalars(select(Image.key).where(Image.dataset_id == ds.id)))
        frame = records.images
        new_idx = np.flatnonzero(~frame["key"].isin(existing).to_numpy()) if existing else np.arange(len(frame))
        if len(new_idx):
            ds.options = {**(ds.options or {}), REGISTRATION: "incomplete"}
        elif REGISTRATION in (ds.options or {}):  # stopped after its last batch, before the flag was cleared
            ds.options = {k: v for k, v in ds.options.items() if k != REGISTRATION}
        dataset_id, cache_path = ds.id, ds.cache_path
    if not len(new_idx):
        return dataset_id, cache_path, 0
    task = f"registering {dataset['name']}"
    try:
        progress(on_event, task, 0, len(new_idx))
        for start in range(0, len(new_idx), INSERT_BATCH):
            batch = new_idx[start : start + INSERT_BATCH]
            rows = _image_rows(dataset_id, frame.iloc[batch])
            with registry.session() as s:
                conn = s.connection()
                image_ids = _insert_images(conn, dataset_id, rows)
                _insert_labels(conn, records.labels[batch], image_ids, finding_ids)
            progress(on_event, task, start + len(batch), len(new_idx))
    except Exception as exc:
        if created:
            _forget(registry, dataset_id)
        elif isinstance(exc, VitmedError):
            raise type(exc)(
                f"{exc} (that batch only: dataset {dataset['name']!r} keeps the images registered before "
                "it and is marked incomplete - run the same ingest again to finish it)") from exc
        raise
    _finish_registration(registry, dataset_id)
    return dataset_id, cache_path, len(new_idx)


def _forget(registry: Registry, dataset_id: int) -> None:
    """Remove a dataset this ingest created and could not finish because of an error (a kill
    leaves it flagged incomplete instead, for a resume)."""
    try:
        with registry.session() as s:
            ds = s.get(Dataset, dataset_id)
            if ds is not None:
                s.delete(ds)
    except VitmedError:
        log.warning("could not remove the half-registered dataset %s; it stays flagged incomplete", dataset_id)


def build_cache(
    registry: Registry,
    dataset_id: int,
    *,
    workers: int | None = None,
    invert_keys: set[str] | frozenset[str] = frozenset(),
    on_event: Listener | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
    """Decode every image not yet cached into the dataset's cache; resumable.

    ``invert_keys``: image keys whose files keep MONOCHROME1 values (PadChest
    PNGs from MONOCHROME1 DICOMs); they are inverted so that 0 is black.
    """
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
    task = f"caching {name}"

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
        progress(on_event, task, stats["n_done"], len(tasks), rate)

    if tasks:
        progress(on_event, task, 0, len(tasks))
    try:
        fill_cache(cache_path, tasks, size, workers=workers, on_results=on_results, max_pixels=max_pixels)
    finally:
        flush()
    return stats


def _size_cache_path(ds: Dataset, size: int) -> Path:
    """The file of the dataset's cache at ``size``: the one recorded, else the main cache's name
    (with its token) at that size."""
    recorded = ((ds.options or {}).get("caches") or {}).get(str(size))
    if isinstance(recorded, dict) and recorded.get("path"):
        return Path(recorded["path"])
    main = Path(ds.cache_path)
    name, n = re.subn(r"-\d+px\.npy$", f"-{size}px.npy", main.name)
    return main.with_name(name if n else f"{main.stem}-{size}px.npy")


def build_size_cache(
    registry: Registry,
    dataset_id: int,
    size: int,
    *,
    workers: int | None = None,
    invert_keys: set[str] | frozenset[str] = frozenset(),
    on_event: Listener | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
    """A second cache of the dataset at ``size`` px, row for row with its own; resumable.

    The rows done are kept in a mask beside the file (``<cache>.done.npy``), so an
    interrupted build continues; ``Dataset.options["caches"][size]`` records the file and
    whether it is complete (training and predict read it only then).
    """
    table = Image.__table__
    with registry.session(readonly=True) as s:
        ds = s.get(Dataset, dataset_id)
        main = Path(ds.cache_path)
        path = _size_cache_path(ds, size)
        rows = s.execute(
            select(table.c.id, table.c.cache_index, table.c.source_path, table.c.key)
            .where(table.c.dataset_id == dataset_id, table.c.cache_index.is_not(None))
            .order_by(table.c.cache_index)
        ).all()
    n_rows = int(np.load(main, mmap_mode="r").shape[0])
    kept = ensure_cache(path, n_rows, size)
    mask_path = path.with_suffix(".done.npy")
    done = np.load(mask_path) if kept and mask_path.is_file() else np.zeros(n_rows, dtype=bool)
    if done.shape != (n_rows,):
        done = np.resize(done, n_rows) & (np.arange(n_rows) < done.size)
    tasks = [(image_id, row, src, key in invert_keys) for image_id, row, src, key in rows if not done[row]]
    stats = {"n_done": 0, "errors": 0}
    task = f"caching {ds.name} at {size} px"

    def save_mask() -> None:
        atomic_write(mask_path, writer=lambda fh: np.save(fh, done))

    def on_results(results) -> None:
        for r in results:
            if r.error is None:
                done[r.row] = True
            else:
                stats["errors"] += 1
        stats["n_done"] += len(results)
        save_mask()
        progress(on_event, task, stats["n_done"], len(tasks))

    try:
        fill_cache(path, tasks, size, workers=workers, on_results=on_results, max_pixels=max_pixels)
    finally:
        save_mask()
    complete = bool(all(done[row] for _, row, _, _ in rows))
    with registry.session() as s:
        ds = s.get(Dataset, dataset_id)
        caches = dict((ds.options or {}).get("caches") or {})
        caches[str(size)] = {"path": str(path), "complete": complete, "n_images": int(done.sum())}
        ds.options = {**(ds.options or {}), "caches": caches}
    return {"path": str(path), "n_ingested": stats["n_done"] - stats["errors"], "complete": complete,
            "n_skipped_existing": len(rows) - len(tasks)}


def _read(fmt: str, path: Path, format_options: dict[str, Any]) -> tuple[RecordSet, Path, str | None, dict]:
    """Read the download: (records, source path, label policy, dataset options to store)."""
    given = check_options(fmt, format_options)
    label_policy = None
    if "label_policy" in READERS[fmt].options:
        label_policy = LabelPolicy.parse(given.get("label_policy", LabelPolicy.majority), "label_policy").value
        given["label_policy"] = label_policy
    source = Path(path).expanduser().resolve()
    if fmt != Format.synthetic.value and not source.exists():
        raise InputError(f"{source} does not exist - give the folder (or file) of the {fmt} download")
    records = READERS[fmt].read(source, **given)
    options = {k: v for k, v in given.items() if k != "label_policy"}
    options.update(records.options)
    options[INGEST_ARGS] = dict(given)  # for the command that resumes it (registry.queries.ingest_command)
    return records, source, label_policy, options


def _notes(records: RecordSet, stats: dict[str, Any]) -> list[str]:
    notes = list(records.notes)
    imgs = records.images
    odd = imgs.loc[(imgs["view"] == "unknown") & imgs["view_native"].notna(), "view_native"]
    if len(odd) and (imgs["view"] != "unknown").any():
        codes = ", ".join(sorted({str(c) for c in odd})[:5])
        notes.append(f"{len(odd)} image(s) with view codes that are neither frontal nor lateral "
                     f"({codes}) are registered as 'unknown' and left out of training and evaluation")
    if stats["inverted"] and not records.invert_keys:
        notes.append(f"{len(stats['inverted'])} MONOCHROME1 image(s) inverted so that 0 is black")
    return notes


def _counts(registry: Registry, dataset_id: int, has_patient_ids: bool, inverted: list[int]) -> dict[str, Any]:
    """What the registry holds for the dataset after the ingest."""
    t = Image.__table__
    unreadable = (t.c.dataset_id == dataset_id) & t.c.readable.is_(False)
    with registry.session(readonly=True) as s:
        out: dict[str, Any] = {
            "n_images": s.scalar(select(func.count()).where(t.c.dataset_id == dataset_id)),
            "n_unreadable": s.scalar(select(func.count()).where(unreadable)),
            "n_patients": s.scalar(
                select(func.count(func.distinct(t.c.patient_id))).where(
                    t.c.dataset_id == dataset_id, t.c.patient_id.is_not(None))
            ) if has_patient_ids else None,
            "errors": [{"key": k, "error": e} for k, e in s.execute(
                select(t.c.key, t.c.error).where(unreadable).order_by(t.c.id).limit(10))],
            "findings": list(s.scalars(select(Finding.canonical).where(
                Finding.dataset_id == dataset_id, Finding.native != DERIVED_NATIVE).order_by(Finding.position))),
            "first_bad": s.execute(select(t.c.source_path, t.c.key, t.c.error).where(unreadable)
                                   .order_by(t.c.id).limit(1)).first(),
        }
        for _key, src in s.execute(select(t.c.key, t.c.source_path).where(t.c.id.in_(inverted[:3]))):
            log.warning("%s is MONOCHROME1: inverted so that 0 is black", src)
    return out


def _refuse_all_unreadable(name: str, source: Path, n_images: int, first_bad) -> None:
    """No image could be read: an error naming the first file (the registration is kept, so a
    re-run after fixing the files resumes)."""
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


def ingest_dataset(
    registry: Registry,
    fmt: str,
    path: Path,
    *,
    name: str,
    image_size: int = DEFAULT_IMAGE_SIZE,
    workers: int | None = None,
    on_event: Listener | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    **format_options: Any,
) -> IngestSummary:
    """Register a dataset from its downloaded layout and fill its image cache.

    The dataset and its findings are written first, then its images and labels in
    batches (the dataset says its registration is incomplete until the last one is
    in); the cache is then filled in batches, so an interrupted ingest resumes where
    it stopped when run again with the same arguments.
    Ingesting a registered dataset again at another ``image_size`` builds a second
    cache at that size (same images, same rows; :func:`build_size_cache`), which
    ``finetune --image-size`` and predict then read.  An image whose header declares more
    than ``max_pixels`` pixels is registered as unreadable without being decoded.
    """
    started = time.perf_counter()
    fmt = Format.parse(fmt, "ingest format").value
    name = check_name(name, Dataset.name, param="name", what="dataset")
    if not MIN_IMAGE_SIZE <= int(image_size) <= MAX_IMAGE_SIZE:
        raise ConfigError(f"`image_size` must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels "
                          f"(got {image_size})")
    if workers is not None and workers < 1:
        raise ConfigError(f"`workers` must be at least 1 (got {workers})")
    if int(max_pixels) < 1:
        raise ConfigError(f"`max_pixels` must be at least 1 (got {max_pixels})")
    records, source, label_policy, options = _read(fmt, path, format_options)
    dataset_id, cache_path, n_new = _register(
        registry, name=name, fmt=fmt, source=source, image_size=int(image_size),
        records=records, label_policy=label_policy, options=options,
        cache_dir=registry.workspace.cache_dir, on_event=on_event,
    )
    stats = build_cache(registry, dataset_id, workers=workers, invert_keys=records.invert_keys,
                        on_event=on_event, max_pixels=int(max_pixels))
    with registry.session(readonly=True) as s:
        own_size = s.get(Dataset, dataset_id).image_size
    if own_size != int(image_size):
        extra = build_size_cache(registry, dataset_id, int(image_size), workers=workers,
                                 invert_keys=records.invert_keys, on_event=on_event,
                                 max_pixels=int(max_pixels))
        cache_path = extra["path"]
        stats = {**stats, "n_ingested": extra["n_ingested"],
                 "n_skipped_existing": extra["n_skipped_existing"]}
    counts = _counts(registry, dataset_id, records.has_patient_ids, stats["inverted"])
    if counts["n_images"] and counts["n_unreadable"] == counts["n_images"]:
        _refuse_all_unreadable(name, source, counts["n_images"], counts["first_bad"])
    return IngestSummary(
        dataset_id=dataset_id, name=name, format=fmt, n_images=counts["n_images"],
        n_ingested=stats["n_ingested"], n_unreadable=counts["n_unreadable"],
        n_skipped_existing=stats["n_skipped_existing"], n_patients=counts["n_patients"],
        findings=counts["findings"], unmapped_findings=list(harmonise(records.natives).unmapped),
        notes=_notes(records, stats), seconds=round(time.perf_counter() - started, 3),
        n_new_images=n_new, image_size=int(image_size), cache_path=cache_path, errors=counts["errors"],
    )
