"""Predictions of a trained run, stored in the registry with their metrics.

``predict`` scores every image of one split part with a run's ``best`` (or
``last``) checkpoint and stores one ``Evaluation``: a ``Prediction`` per image
x finding (with the label it was scored against, after the run's uncertain
policy; NULL = left out), and an ``EvaluationMetric`` per finding: AUC, and
sensitivity, specificity and accuracy at the threshold chosen by Youden's index
on the *validation* part (the study chose it on the test set; vitmed does not).

A model trained on one dataset can score another: findings are matched by
their harmonised (canonical) names, and those the two do not share are named
in ``Evaluation.skipped_findings``.  Another split of the run's own dataset is
refused when its scored part holds any image of the run's training or validation
part (that score would be inflated); other datasets are never checked.  Predictions are written with one bulk
``executemany`` inside the same transaction as the evaluation row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from .data import BatchLoader, PartData, apply_uncertain, check_cache, load_part
from .errors import NotFound, TrainingError
from .registry.db import Registry
from .registry.models import (
    Checkpoint,
    Evaluation,
    EvaluationMetric,
    Prediction,
    Run,
    SplitAssignment,
)

from .choices import DEFAULT_PREDICT_BATCH  # noqa: E402
CHECKPOINT_ROLES = ("best", "last")


@dataclass
class PredictResult:
    """One stored evaluation."""

    evaluation_id: int
    run_id: int
    dataset: str
    split: str
    part: str
    checkpoint: str
    n_images: int
    macro_auc: float | None
    auc: dict[str, float | None]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    skipped_findings: list[str] = field(default_factory=list)
    threshold_part: str | None = "val"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Scored:
    part: PartData
    probs: np.ndarray  # (n, F) for the shared findings
    y: np.ndarray  # after the uncertain policy, NaN = left out


def load_run_model(session, run: Run, role: str = "best") -> tuple[torch.nn.Module, Checkpoint]:
    """The run's architecture with its ``role`` checkpoint loaded (strict)."""
    from safetensors.torch import load_file

    from .models import create_model

    if role not in CHECKPOINT_ROLES:
        raise TrainingError(f"--checkpoint must be best or last, got {role!r}")
    ckpt = session.scalar(
        select(Checkpoint).where(Checkpoint.run_id == run.id, Checkpoint.role == role)
        .order_by(Checkpoint.id.desc())
    )
    if ckpt is None:
        hint = (f"continue it with vitmed finetune --resume {run.id}"
                if run.status in ("interrupted", "failed", "running") else "choose another run")
        raise NotFound(
            f"run {run.id} has no {role!r} checkpoint (status {run.status}) - {hint}"
        )
    path = Path(ckpt.path or "")
    if not path.is_file():
        raise NotFound(
            f"the {role} checkpoint of run {run.id} points at {path}, which no longer exists - "
            "restore the file or train the run again"
        )
    kwargs = dict((run.config or {}).get("model_kwargs") or {})
    findings = list(ckpt.findings or run.findings)
    model, _ = create_model(run.arch, len(findings), int(run.image_size), init=None, **kwargs)
    state = load_file(str(path), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise TrainingError(
            f"the {role} checkpoint of run {run.id} ({path}) does not fit {run.arch}: "
            f"{str(exc).splitlines()[0]} - the file was changed after the run; train it again"
        ) from exc
    return model, ckpt


def _score(model, part: PartData, cols: list[int], *, batch_size: int, device, num_workers: int,
           uncertain: str, image_size: int, mean, std, n_outputs: int) -> _Scored:
    from .train import predict_logits, sigmoid

    loader = BatchLoader(part.cache_path, part.cache_rows, None, batch_size=batch_size,
                         shuffle=False, augment=False, device=device, num_workers=num_workers)
    logits = predict_logits(model, loader, len(part), mean=mean, std=std, image_size=image_size,
                            device=device, n_outputs=n_outputs)
    probs = sigmoid(logits[:, cols])
    return _Scored(part=part, probs=probs, y=apply_uncertain(part.labels, uncertain))


def _insert_predictions(session, evaluation_id: int, part: PartData, probs: np.ndarray,
                        y: np.ndarray) -> int:
    """Bulk insert: one executemany of plain tuples (no ORM objects per row)."""
    n, k = probs.shape
    img = np.repeat(part.image_ids, k).tolist()
    fid = np.tile(np.asarray(part.finding_ids, dtype=np.int64), n).tolist()
    pr = probs.astype(float).ravel().tolist()
    lab = [None if v != v else int(v) for v in y.astype(float).ravel().tolist()]
    rows = list(zip([evaluation_id] * (n * k), img, fid, pr, lab))
    if not rows:
        return 0
    conn = session.connection()
    table = Prediction.__table__
    cols = "evaluation_id, image_id, finding_id, probability, label"
    style = conn.dialect.paramstyle
    marks = ", ".join(["?"] * 5) if style == "qmark" else ", ".join(["%s"] * 5)
    if style in ("qmark", "format", "pyformat"):
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({cols}) VALUES ({marks})", rows)
    else:  # pragma: no cover - other drivers go through SQLAlchemy's executemany
        keys = ["evaluation_id", "image_id", "finding_id", "probability", "label"]
        conn.execute(table.insert(), [dict(zip(keys, r)) for r in rows])
    return len(rows)


def _refuse_leak(session, run: Run, sp, part: str) -> None:
    """Another split of the run's own dataset must not score images the run learnt from."""
    scored = aliased(SplitAssignment)
    seen = aliased(SplitAssignment)
    n = session.scalar(
        select(func.count(func.distinct(scored.image_id)))
        .join(seen, seen.image_id == scored.image_id)
        .where(scored.split_id == sp.id, scored.part == part,
               seen.split_id == run.split_id, seen.part.in_(("train", "val")))
    )
    if n:
        raise TrainingError(
            f"{n} of the images in {sp.name}/{part} were in run {run.id}'s training or validation "
            f"data (split {run.split.name}) - evaluate on the run's own split or a disjoint one"
        )


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def predict(
    registry: Registry,
    *,
    run_id: int,
    dataset: str | None = None,
    split: str | None = None,
    part: str = "test",
    checkpoint: str = "best",
    batch_size: int = DEFAULT_PREDICT_BATCH,
    device: str = "auto",
    num_workers: int = 1,
    name: str | None = None,
) -> PredictResult:
    """Score one split part with run ``run_id`` and store the evaluation; see the module doc."""
    from . import catalog
    from .stats import roc_auc, threshold_metrics, youden_threshold
    from .train import model_norm, resolve_device

    if part not in ("train", "val", "test"):
        raise TrainingError(f"--part must be train, val or test, got {part!r}")
    if batch_size < 1:
        raise TrainingError(f"--batch-size must be at least 1, got {batch_size}")
    dev = resolve_device(device)
    with registry.session() as s:
        run = catalog.get_run(s, run_id)
        model, ckpt = load_run_model(s, run, checkpoint)
        model_findings = list(ckpt.findings or run.findings)
        if dataset is None or dataset == run.dataset.name:
            ds = run.dataset
            sp = run.split if split is None else catalog.get_split(s, ds, split)
        else:
            ds = catalog.get_dataset(s, dataset)
            sp = catalog.get_split(s, ds, split)
        if ds.id == run.dataset_id and run.split_id is not None and sp.id != run.split_id:
            _refuse_leak(s, run, sp, part)
        check_cache(ds)
        frontal = bool(((run.config or {}).get("train") or {}).get("frontal_only", True))
        target = load_part(s, ds, sp, part, frontal_only=frontal)
        val = load_part(s, ds, sp, "val", frontal_only=frontal) if part != "val" else target
        uncertain = ((run.config or {}).get("train") or {}).get("uncertain", "zeros")
        ds_name, sp_name, ds_id, sp_id = ds.name, sp.name, ds.id, sp.id
        init_name, run_image_size = run.init_name, int(run.image_size)
        ckpt_id, ckpt_sha = ckpt.id, ckpt.sha256

    shared = [f for f in model_findings if f in target.findings]
    skipped = [f for f in model_findings if f not in target.findings] + [
        f for f in target.findings if f not in model_findings
    ]
    if not shared:
        raise TrainingError(
            f"run {run_id} predicts {', '.join(model_findings)} but dataset {ds_name!r} has none of "
            f"these findings ({', '.join(target.findings)}) - evaluate it on a dataset that shares "
            "findings (harmonised names)"
        )
    if len(target) == 0:
        raise TrainingError(
            f"the {part} part of split {sp_name!r} of dataset {ds_name!r} has no usable images - "
            "choose another --part or --split"
        )
    cols = [model_findings.index(f) for f in shared]
    target = target.select_findings(shared)
    val = val.select_findings(shared)
    model = model.to(dev)
    mean, std = model_norm(model)
    kw = dict(batch_size=batch_size, device=dev, num_workers=num_workers, uncertain=uncertain,
              image_size=run_image_size, mean=mean, std=std, n_outputs=len(model_findings))
    scored = _score(model, target, cols, **kw)
    val_scored = scored if part == "val" else (_score(model, val, cols, **kw) if len(val) else None)

    aucs = np.asarray(roc_auc(scored.y, scored.probs), dtype=float).reshape(-1)
    metrics: list[dict[str, Any]] = []
    for j, f in enumerate(shared):
        y = scored.y[:, j]
        thr = None
        if val_scored is not None:
            t = youden_threshold(val_scored.y[:, j], val_scored.probs[:, j])
            thr = _finite(t)
        tm = threshold_metrics(y, scored.probs[:, j], thr) if thr is not None else {}
        metrics.append({
            "finding": f, "auc": _finite(aucs[j]), "threshold": thr,
            "sensitivity": _finite(tm.get("sensitivity")), "specificity": _finite(tm.get("specificity")),
            "accuracy": _finite(tm.get("accuracy")),
            "n_positive": int(np.sum(y == 1)), "n_negative": int(np.sum(y == 0)),
        })
    finite = aucs[np.isfinite(aucs)]
    macro = float(finite.mean()) if finite.size else None

    with registry.session() as s:
        ev = Evaluation(
            name=name or f"run{run_id}-{init_name}-{ds_name}-{part}",
            source="predict", run_id=run_id, checkpoint_id=ckpt_id, dataset_id=ds_id,
            split_id=sp_id, part=part, init_name=init_name, n_images=len(target),
            macro_auc=macro, skipped_findings=skipped, uncertain_policy=uncertain,
            config={"checkpoint": checkpoint, "checkpoint_sha256": ckpt_sha,
                    "threshold_part": "val" if val_scored is not None else None,
                    "model_findings": model_findings, "batch_size": batch_size,
                    "device": str(dev), "frontal_only": frontal},
        )
        s.add(ev)
        s.flush()
        s.add_all([EvaluationMetric(evaluation_id=ev.id, **m) for m in metrics])
        _insert_predictions(s, ev.id, target, scored.probs, scored.y)
        eval_id = ev.id
    return PredictResult(
        evaluation_id=eval_id, run_id=run_id, dataset=ds_name, split=sp_name, part=part,
        checkpoint=checkpoint, n_images=len(target), macro_auc=macro,
        auc={m["finding"]: m["auc"] for m in metrics}, metrics=metrics, skipped_findings=skipped,
        threshold_part="val" if val_scored is not None else None,
    )


__all__ = ["CHECKPOINT_ROLES", "PredictResult", "load_run_model", "predict"]
