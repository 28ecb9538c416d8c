"""One split part from the registry as arrays: image ids, cache rows, labels.

:func:`load_part` reads a part with one SQL query per table (never one per
image).  Training and prediction both read their images through it, so they
use the same images: those :func:`~vitmed_cli.registry.queries.used_images`
selects (frontal, readable, cached) and that carry label information.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from sqlalchemy import select

from ..choices import UncertainPolicy
from ..errors import TrainingError
from ..registry.models import DERIVED_NATIVE, Dataset, Finding, Image, Label, Split, SplitAssignment
from ..registry.queries import get_dataset, get_split, unlabelled_keys, used_images


@dataclass
class PartData:
    """One split part as arrays, rows sorted by image id."""

    dataset: str
    split: str
    part: str
    image_ids: np.ndarray  # int64 (n,)
    image_keys: list[str]
    cache_rows: np.ndarray  # int64 (n,) rows of the ingest cache
    labels: np.ndarray  # float32 (n, n_findings): 1, 0, -1 uncertain, NaN not mentioned
    findings: list[str]  # canonical names, in the dataset's column order (derived ones last)
    finding_ids: list[int | None]  # None: a derived finding (no row until an evaluation stores one)
    cache_path: str
    image_size: int
    natives: list[str] = field(default_factory=list)  # the dataset's own names (derived: DERIVED_NATIVE)
    derived: dict[str, dict] = field(default_factory=dict)  # name -> how it was derived

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])

    def select_findings(self, names: Sequence[str]) -> "PartData":
        """The same images with only ``names`` (in that order) as label columns."""
        idx = [self.findings.index(n) for n in names]
        return PartData(
            dataset=self.dataset, split=self.split, part=self.part,
            image_ids=self.image_ids, image_keys=self.image_keys, cache_rows=self.cache_rows,
            labels=self.labels[:, idx], findings=list(names),
            finding_ids=[self.finding_ids[i] for i in idx],
            cache_path=self.cache_path, image_size=self.image_size,
            natives=[self.natives[i] for i in idx] if self.natives else [],
            derived={n: d for n, d in self.derived.items() if n in names},
        )


def apply_uncertain(labels: np.ndarray, policy: str | UncertainPolicy) -> np.ndarray:
    """Targets after the uncertain policy: 1/0, NaN = left out; not mentioned counts as 0."""
    policy = UncertainPolicy(policy)
    out = np.nan_to_num(labels.astype(np.float32, copy=True), nan=0.0)
    uncertain = out == -1
    if policy is UncertainPolicy.zeros:
        out[uncertain] = 0.0
    elif policy is UncertainPolicy.ones:
        out[uncertain] = 1.0
    else:
        out[uncertain] = np.nan
    return out


def _resolve(session, dataset: Dataset | str, split: Split | str | None) -> tuple[Dataset, Split]:
    ds = dataset if isinstance(dataset, Dataset) else get_dataset(session, dataset)
    sp = split if isinstance(split, Split) else get_split(session, ds, split)
    return ds, sp


def check_cache(ds: Dataset) -> Path:
    """The dataset's image cache file, or a TrainingError naming how to rebuild it."""
    if not ds.cache_path:
        raise TrainingError(
            f"dataset {ds.name!r} has no image cache - re-run vitmed ingest for it"
        )
    path = Path(ds.cache_path)
    if not path.is_file():
        raise TrainingError(
            f"the image cache of dataset {ds.name!r} is missing ({path}) - re-run vitmed ingest "
            "for it, or restore the file"
        )
    return path


def size_caches(ds: Dataset) -> dict[int, str]:
    """The dataset's complete caches at other sizes (``ingest --image-size S`` again): size -> path."""
    out: dict[int, str] = {}
    for size, info in ((ds.options or {}).get("caches") or {}).items():
        if isinstance(info, dict) and info.get("complete") and Path(str(info.get("path"))).is_file():
            out[int(size)] = str(info["path"])
    return out


def cache_for(ds: Dataset, image_size: int | None) -> tuple[str, int]:
    """The cache a model at ``image_size`` reads: one built at that size when there is one (same
    rows), else the dataset's own (resized on the fly)."""
    if image_size is not None and int(image_size) != int(ds.image_size):
        path = size_caches(ds).get(int(image_size))
        if path:
            return path, int(image_size)
    return str(ds.cache_path or ""), int(ds.image_size)


def load_part(
    session,
    dataset: Dataset | str,
    split: Split | str | None,
    part: str,
    *,
    frontal_only: bool = True,
    image_size: int | None = None,
) -> PartData:
    """Images of one split part with their cache rows and labels; unreadable images are left out.

    Views (with ``frontal_only``): when the dataset has ANY image with a known view
    (frontal or lateral), only ``view == 'frontal'`` images are used - an image whose view
    could not be read may be a lateral.  Only a dataset with no view information at all
    (every image 'unknown', e.g. a CSV without a view column) uses its 'unknown' images.
    Both cases are one query: the 'unknown' branch carries a NOT EXISTS over the dataset's
    known views.  Images listed in ``Dataset.options["unlabelled_keys"]`` (no label
    information in the source) are left out too.  ``image_size``: the part reads the cache
    built at that size when the dataset has one (:func:`cache_for`).
    """
    ds, sp = _resolve(session, dataset, split)
    fnd = session.execute(
        select(Finding.id, Finding.canonical, Finding.native)
        .where(Finding.dataset_id == ds.id, Finding.native != DERIVED_NATIVE)
        .order_by(Finding.position, Finding.id)
    ).all()
    finding_ids = [int(r[0]) for r in fnd]
    findings = [str(r[1]) for r in fnd]
    natives = [str(r[2]) for r in fnd]

    q = (
        select(Image.id, Image.key, Image.cache_index)
        .join(SplitAssignment, SplitAssignment.image_id == Image.id)
        .where(
            SplitAssignment.split_id == sp.id,
            SplitAssignment.part == part,
            used_images(ds.id, frontal_only=frontal_only),
        )
        .order_by(Image.id)
    )
    rows = session.execute(q).all()
    # Images whose source gives no label information at all (PadChest rows with a blank
    # Labels cell) would otherwise read as "all negative": leave them out.
    unlabelled = unlabelled_keys(ds)
    if unlabelled:
        rows = [r for r in rows if r[1] not in unlabelled]
    image_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    cache_rows = np.fromiter((r[2] for r in rows), dtype=np.int64, count=len(rows))
    keys = [r[1] for r in rows]

    labels = np.full((len(rows), len(findings)), np.nan, dtype=np.float32)
    if len(rows) and findings:
        lab = session.execute(
            select(Label.image_id, Label.finding_id, Label.value)
            .join(SplitAssignment, SplitAssignment.image_id == Label.image_id)
            .where(SplitAssignment.split_id == sp.id, SplitAssignment.part == part)
        ).all()
        if lab:
            arr = np.asarray(lab, dtype=np.int64)
            pos = np.searchsorted(image_ids, arr[:, 0])
            pos = np.clip(pos, 0, len(image_ids) - 1)
            keep = image_ids[pos] == arr[:, 0]
            fcol = {fid: i for i, fid in enumerate(finding_ids)}
            cols = np.fromiter((fcol.get(int(f), -1) for f in arr[:, 1]), dtype=np.int64,
                               count=len(arr))
            keep &= cols >= 0
            labels[pos[keep], cols[keep]] = arr[keep, 2].astype(np.float32)
    cache_path, cache_size = cache_for(ds, image_size)
    return PartData(
        dataset=ds.name, split=sp.name, part=part, image_ids=image_ids, image_keys=keys,
        cache_rows=cache_rows, labels=labels, findings=findings, finding_ids=finding_ids,
        cache_path=cache_path, image_size=cache_size, natives=natives,
    )
