"""A run's data, prepared once: the split's train and validation parts, the findings to
learn and the loss weights, every problem a one-line error before anything trains."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..datasets.derived import add_derived, resolve_findings
from ..datasets.parts import PartData, apply_uncertain, cache_for, check_cache, load_part
from ..errors import TrainingError
from ..registry.queries import get_dataset, get_split, require_complete
from .config import TrainConfig


@dataclass
class Prepared:
    """A run's data, checked and loaded once (rank 0), then handed to the loop and the other ranks."""

    dataset_id: int
    dataset: str
    split_id: int
    split: str
    findings: list[str]
    train: PartData
    val: PartData
    train_y: np.ndarray
    val_y: np.ndarray
    pos_weight: np.ndarray
    cache_path: str
    cache_size: int
    left_out: dict[str, Any] = field(default_factory=dict)
    derived: dict[str, dict] = field(default_factory=dict)  # derived finding -> what it was derived from


def select_findings(ds, sp, available: list[str], train_y_all: np.ndarray,
                    cfg: TrainConfig, natives: list[str] | None = None,
                    derived: list[str] | None = None) -> tuple[list[str], dict[str, Any]]:
    """The findings a run learns, and those left out with why.

    ``cfg.findings`` names them (canonical or native names, see
    :func:`~vitmed_cli.datasets.derived.resolve_findings`; unknown names are an error listing
    the valid ones); otherwise every finding except the dataset's ``options["non_findings"]``
    (e.g. PadChest's 'exclude'), which ``cfg.findings`` can still name.  ``derived`` findings
    (the run's ``merge`` and ``no_finding``) are always learned.  Findings without training
    positives stop the run, unless ``cfg.min_positives`` is set: then those with fewer are
    left out.
    """
    left_out: dict[str, Any] = {}
    derived = list(derived or [])
    if cfg.findings is not None:
        resolved, unknown = resolve_findings(cfg.findings, available, natives or available)
        if unknown:
            raise TrainingError(
                f"unknown finding(s) {', '.join(unknown)} for dataset {ds.name!r} - choose from: "
                + ", ".join(available)
            )
        wanted = list(dict.fromkeys(resolved + derived))
    else:
        non = set((ds.options or {}).get("non_findings") or [])
        wanted = [f for f in available if f not in non]
        skipped = [f for f in available if f in non]
        if skipped:
            left_out["non_findings"] = skipped
        if not wanted:
            raise TrainingError(
                f"dataset {ds.name!r} has only non-findings ({', '.join(skipped)}) - name the ones "
                "to learn with `findings`"
            )
    col = {f: i for i, f in enumerate(available)}
    pos = {f: int(np.nansum(train_y_all[:, col[f]] == 1)) for f in wanted}
    if cfg.min_positives is None:
        no_pos = [f for f in wanted if pos[f] == 0]
        if no_pos:
            raise TrainingError(
                f"finding(s) {', '.join(no_pos)} have no positive images in the train part of split "
                f"{sp.name!r} of dataset {ds.name!r} - a model cannot learn them; leave them out "
                "with `min_positives` 1, choose findings with `findings`, or use a split (or "
                "dataset) with positives for every finding"
            )
    else:
        few = {f: pos[f] for f in wanted if pos[f] < cfg.min_positives}
        if few:
            left_out["few_positives"] = few
            left_out["min_positives"] = int(cfg.min_positives)
            wanted = [f for f in wanted if f not in few]
        if not wanted:
            raise TrainingError(
                f"no finding of dataset {ds.name!r} has {cfg.min_positives} or more positive images "
                f"in the train part of split {sp.name!r} - lower `min_positives` or use another split"
            )
    return wanted, left_out


def left_out_message(left_out: dict[str, Any]) -> str | None:
    """One warning line naming the findings a run leaves out, or None."""
    bits = []
    if left_out.get("few_positives"):
        few = left_out["few_positives"]
        bits.append(f"{len(few)} finding(s) with fewer than {left_out.get('min_positives')} training "
                    "positives: " + ", ".join(f"{f} ({n})" for f, n in few.items()))
    if left_out.get("non_findings"):
        bits.append("non-findings: " + ", ".join(left_out["non_findings"]))
    return ("left out " + "; ".join(bits)) if bits else None


def prepare(session, cfg: TrainConfig) -> Prepared:
    """Load and check the data; every problem is a one-line TrainingError before training."""
    ds = get_dataset(session, cfg.dataset)
    require_complete(session, ds, "train on it")
    sp = get_split(session, ds, cfg.split)
    check_cache(ds)
    cache = cache_for(ds, cfg.image_size)[0]  # a cache built at the training size, when there is one
    train = load_part(session, ds, sp, "train", frontal_only=cfg.frontal_only, image_size=cfg.image_size)
    val = load_part(session, ds, sp, "val", frontal_only=cfg.frontal_only, image_size=cfg.image_size)
    if not train.findings:
        raise TrainingError(f"dataset {ds.name!r} has no findings to learn - re-ingest it with its labels")
    if len(train) == 0:
        raise TrainingError(
            f"split {sp.name!r} of dataset {ds.name!r} has no usable training images "
            "(frontal, readable) - check vitmed datasets show " + ds.name
        )
    if len(val) == 0:
        raise TrainingError(
            f"split {sp.name!r} of dataset {ds.name!r} has no validation part - the best epoch is "
            f"chosen on it; make a split with a validation part (see vitmed split --help) and "
            "pass it with `split`"
        )
    # derived findings: computed from the stored labels now, never written to the dataset
    non = list((ds.options or {}).get("non_findings") or [])
    train, _ = add_derived(train, cfg.merge, cfg.no_finding, non_findings=non)
    val, _ = add_derived(val, cfg.merge, cfg.no_finding, non_findings=non)
    selected, left_out = select_findings(ds, sp, list(train.findings),
                                         apply_uncertain(train.labels, cfg.uncertain), cfg,
                                         natives=list(train.natives), derived=list(train.derived))
    train, val = train.select_findings(selected), val.select_findings(selected)
    train_y = apply_uncertain(train.labels, cfg.uncertain)
    val_y = apply_uncertain(val.labels, cfg.uncertain)
    pos = np.nansum(train_y == 1, axis=0)
    neg = np.nansum(train_y == 0, axis=0)
    no_neg = [f for f, n in zip(train.findings, neg) if n == 0]
    if no_neg:
        raise TrainingError(
            f"finding(s) {', '.join(no_neg)} have no negative images in the train part of split "
            f"{sp.name!r} of dataset {ds.name!r} - use a split with negatives for every finding"
        )
    val_pos, val_neg = np.nansum(val_y == 1, axis=0), np.nansum(val_y == 0, axis=0)
    if not np.any((val_pos > 0) & (val_neg > 0)):
        raise TrainingError(
            f"no finding has both positive and negative images in the validation part of split "
            f"{sp.name!r} of dataset {ds.name!r} - the validation macro AUC that chooses the best epoch "
            "is not defined; make a split with a larger `val` (see vitmed split --help)"
        )
    mm = np.load(cache, mmap_mode="r")
    if mm.ndim != 3 or mm.dtype != np.uint8:
        raise TrainingError(
            f"the image cache {cache} of dataset {ds.name!r} is not (n, size, size) uint8 - "
            "re-run vitmed ingest for it"
        )
    top = int(max(train.cache_rows.max(initial=-1), val.cache_rows.max(initial=-1)))
    if top >= mm.shape[0]:
        raise TrainingError(
            f"the image cache {cache} of dataset {ds.name!r} has {mm.shape[0]} images but the "
            f"registry points at row {top} - re-run vitmed ingest for it"
        )
    return Prepared(
        dataset_id=ds.id, dataset=ds.name, split_id=sp.id, split=sp.name,
        findings=list(train.findings), train=train, val=val, train_y=train_y, val_y=val_y,
        pos_weight=(neg / pos).astype(np.float32), cache_path=str(cache), cache_size=int(mm.shape[-1]),
        left_out=left_out, derived=dict(train.derived),
    )
