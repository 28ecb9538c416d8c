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
part (that score would be inflated); other datasets are never checked.  The
checkpoint file is read once and checked against its registered sha256 before
it is loaded, so the evaluation's recorded checkpoint is the one that scored.
Everything is stored through :func:`~vitmed_cli.evaluations.store.store_evaluation`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from .._util import finite_or_none, first_line
from ..choices import DEFAULT_PREDICT_BATCH, Part, RunRole
from ..datasets.loader import BatchLoader
from ..datasets.parts import PartData, apply_uncertain, check_cache, load_part
from ..errors import NotFound, TrainingError
from ..inference import model_norm, predict_logits, probabilities, resolve_device
from ..models import create_model
from ..registry.db import Registry
from ..registry.models import Checkpoint, Evaluation, Run, SplitAssignment
from ..registry.queries import get_dataset, get_run, get_split
from ..stats import roc_auc, threshold_metrics, youden_threshold
from ..weights import read_weights
from .store import store_evaluation

CHECKPOINT_ROLES = RunRole.names()


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
    """The run's architecture with its ``role`` checkpoint loaded (strict), after checking the
    file's sha256 against the registry."""
    role = RunRole.parse(role, "checkpoint").value
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
    state, _ = read_weights(path, sha256=ckpt.sha256, what=f"the {role} checkpoint of run {run.id}")
    kwargs = dict((run.config or {}).get("model_kwargs") or {})
    findings = list(ckpt.findings or run.findings)
    model, _ = create_model(run.arch, len(findings), int(run.image_size), **kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise TrainingError(
            f"the {role} checkpoint of run {run.id} ({path}) does not fit {run.arch}: "
            f"{first_line(exc)} - the file was changed after the run; train it again"
        ) from exc
    return model, ckpt


def _score(model, part: PartData, cols: list[int], *, batch_size: int, device, num_workers: int,
           uncertain: str, image_size: int, mean, std, n_outputs: int) -> _Scored:
    loader = BatchLoader(part.cache_path, part.cache_rows, None, batch_size=batch_size,
                         shuffle=False, augment=False, device=device, num_workers=num_workers)
    logits = predict_logits(model, loader, len(part), mean=mean, std=std, image_size=image_size,
                            device=device, n_outputs=n_outputs)
    probs = probabilities(logits[:, cols])
    return _Scored(part=part, probs=probs, y=apply_uncertain(part.labels, uncertain))


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
    part = Part.parse(part, "part").value
    if batch_size < 1:
        raise TrainingError(f"`batch_size` must be at least 1, got {batch_size}")
    dev = resolve_device(device)
    with registry.session() as s:
        run = get_run(s, run_id)
        model, ckpt = load_run_model(s, run, checkpoint)
        model_findings = list(ckpt.findings or run.findings)
        if dataset is None or dataset == run.dataset.name:
            ds = run.dataset
            sp = run.split if split is None else get_split(s, ds, split)
        else:
            ds = get_dataset(s, dataset)
            sp = get_split(s, ds, split)
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
            "choose another `part` or `split`"
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
            thr = finite_or_none(t)
        tm = threshold_metrics(y, scored.probs[:, j], thr) if thr is not None else {}
        metrics.append({
            "finding": f, "auc": finite_or_none(aucs[j]), "threshold": thr,
            "sensitivity": finite_or_none(tm.get("sensitivity")), "specificity": finite_or_none(tm.get("specificity")),
            "accuracy": finite_or_none(tm.get("accuracy")),
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
        eval_id = store_evaluation(s, ev, metrics=metrics, image_ids=target.image_ids,
                                   finding_ids=target.finding_ids, probabilities=scored.probs,
                                   labels=scored.y)
    return PredictResult(
        evaluation_id=eval_id, run_id=run_id, dataset=ds_name, split=sp_name, part=part,
        checkpoint=checkpoint, n_images=len(target), macro_auc=macro,
        auc={m["finding"]: m["auc"] for m in metrics}, metrics=metrics, skipped_findings=skipped,
        threshold_part="val" if val_scored is not None else None,
    )


__all__ = ["CHECKPOINT_ROLES", "PredictResult", "load_run_model", "predict"]
