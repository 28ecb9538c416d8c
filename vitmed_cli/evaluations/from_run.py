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
from ..datasets.derived import add_derived
from ..datasets.parts import PartData, apply_uncertain, check_cache, load_part
from ..errors import NotFound, TrainingError
from ..events import Listener, warning
from ..inference import input_norm, predict_logits, probabilities, resolve_device
from ..models import create_model
from ..registry.db import Registry
from ..registry.models import Checkpoint, Evaluation, Run, SplitAssignment
from ..registry.names import check_name
from ..registry.queries import get_dataset, get_run, get_split
from ..stats import roc_auc, threshold_metrics, youden_threshold
from ..weights import read_weights
from .store import derived_finding_ids, store_evaluation

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
    undefined: dict[str, str] = field(default_factory=dict)  # finding -> why a metric is n/a
    skipped_reasons: dict[str, str] = field(default_factory=dict)  # finding -> why it was not scored

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Scored:
    part: PartData
    probs: np.ndarray  # (n, F) for the shared findings
    y: np.ndarray  # after the uncertain policy, NaN = left out


@dataclass(frozen=True)
class RunCheckpoint:
    """What loading a run's checkpoint needs, read from the registry (no ORM row leaves it)."""

    run_id: int
    role: str
    checkpoint_id: int
    path: Path
    sha256: str
    arch: str
    image_size: int
    findings: tuple[str, ...]
    model_kwargs: dict[str, Any]


def run_checkpoint(session, run: Run, role: str = "best") -> RunCheckpoint:
    """The run's ``role`` checkpoint as registered; NotFound naming the fix when there is none."""
    role = RunRole.parse(role, "checkpoint").value
    ckpt = session.scalar(
        select(Checkpoint).where(Checkpoint.run_id == run.id, Checkpoint.role == role)
        .order_by(Checkpoint.id.desc())
    )
    if ckpt is None:
        hint = (f"continue it with vitmed finetune --resume {run.id}"
                if run.status in ("interrupted", "failed", "running") else "choose another run")
        raise NotFound(f"run {run.id} has no {role!r} checkpoint (status {run.status}) - {hint}")
    return RunCheckpoint(
        run_id=run.id, role=role, checkpoint_id=ckpt.id, path=Path(ckpt.path or ""), sha256=ckpt.sha256,
        arch=run.arch, image_size=int(run.image_size), findings=tuple(ckpt.findings or run.findings),
        model_kwargs=dict((run.config or {}).get("model_kwargs") or {}),
    )


def load_checkpoint_model(ck: RunCheckpoint) -> torch.nn.Module:
    """The run's architecture with the checkpoint loaded (strict), read once and refused unless
    its sha256 is the registered one (a damaged or swapped file never scores)."""
    if not ck.path.is_file():
        raise NotFound(
            f"the {ck.role} checkpoint of run {ck.run_id} points at {ck.path}, which no longer exists - "
            "restore the file or train the run again"
        )
    state, _ = read_weights(ck.path, sha256=ck.sha256, what=f"the {ck.role} checkpoint of run {ck.run_id}")
    model, _ = create_model(ck.arch, len(ck.findings), ck.image_size, **ck.model_kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise TrainingError(
            f"the {ck.role} checkpoint of run {ck.run_id} ({ck.path}) does not fit {ck.arch}: "
            f"{first_line(exc)} - the file was changed after the run; train it again"
        ) from exc
    return model


def load_run_model(session, run: Run, role: str = "best") -> tuple[torch.nn.Module, RunCheckpoint]:
    """The run's architecture with its ``role`` checkpoint loaded (see :func:`load_checkpoint_model`)."""
    ck = run_checkpoint(session, run, role)
    return load_checkpoint_model(ck), ck


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


@dataclass
class _Target:
    """What one prediction scores: the dataset part (and its validation part, for thresholds)."""

    dataset_id: int
    dataset: str
    split_id: int
    split: str
    part: PartData
    val: PartData
    frontal_only: bool
    uncertain: str
    normalise: str  # the run's input normalisation (runs before it was an option: init)
    not_derived: dict[str, str] = field(default_factory=dict)  # derived finding -> why it is not scored


def _target(session, run: Run, dataset: str | None, split: str | None, part: str) -> _Target:
    if dataset is None or dataset == run.dataset.name:
        ds = run.dataset
        sp = run.split if split is None else get_split(session, ds, split)
    else:
        ds = get_dataset(session, dataset)
        sp = get_split(session, ds, split)
    if ds.id == run.dataset_id and run.split_id is not None and sp.id != run.split_id:
        _refuse_leak(session, run, sp, part)
    check_cache(ds)
    train_cfg = (run.config or {}).get("train") or {}
    frontal = bool(train_cfg.get("frontal_only", True))
    size = run.image_size  # the cache built at the run's size, when the dataset has one
    target = load_part(session, ds, sp, part, frontal_only=frontal, image_size=size)
    val = load_part(session, ds, sp, "val", frontal_only=frontal, image_size=size) if part != "val" else target
    # the run's derived findings, computed from this dataset's labels as training did
    merge, no_finding = dict(train_cfg.get("merge") or {}), train_cfg.get("no_finding")
    non = list((ds.options or {}).get("non_findings") or [])
    target, not_derived = add_derived(target, merge, no_finding, non_findings=non, strict=False)
    val = add_derived(val, merge, no_finding, non_findings=non, strict=False)[0] if part != "val" else target
    return _Target(ds.id, ds.name, sp.id, sp.name, target, val, frontal,
                   train_cfg.get("uncertain", "zeros"), train_cfg.get("normalise", "init"), not_derived)


def _undefined(finding: str, part: str, y: np.ndarray, val_y: np.ndarray | None) -> str | None:
    """Why a finding's AUC or threshold metrics are not defined (None when they are)."""
    reasons = []
    if not (y == 1).any() or not (y == 0).any():
        reasons.append(f"the {part} part has no {'positives' if not (y == 1).any() else 'negatives'} "
                       f"for {finding} (no AUC)")
    if val_y is None:
        reasons.append("no validation part to choose a threshold on (no sensitivity, specificity "
                       "or accuracy)")
    elif not (val_y == 1).any() or not (val_y == 0).any():
        reasons.append(f"the validation part has no {'positives' if not (val_y == 1).any() else 'negatives'} "
                       f"for {finding} (no threshold, so no sensitivity, specificity or accuracy)")
    return "; ".join(reasons) or None


def _skipped_reasons(skipped: list[str], model_findings: list[str], dataset: str,
                     left_out: dict[str, Any]) -> dict[str, str]:
    """Why each finding was not scored: not in the dataset, left out when the run trained, or
    never learned."""
    few = left_out.get("few_positives") or {}
    non = set(left_out.get("non_findings") or ())
    out = {}
    for f in skipped:
        if f in model_findings:
            out[f] = f"not a finding of dataset {dataset!r}"
        elif f in few:
            out[f] = (f"left out when the run trained: {few[f]} training positives, fewer than "
                      f"min_positives {left_out.get('min_positives')}")
        elif f in non:
            out[f] = "left out when the run trained: not a finding (dataset option non_findings)"
        else:
            out[f] = "not learned by the run"
    return out


def _finding_metrics(findings: list[str], scored: _Scored, val: _Scored | None) -> list[dict[str, Any]]:
    """Per finding: AUC, and sensitivity/specificity/accuracy at the validation part's Youden threshold."""
    aucs = np.asarray(roc_auc(scored.y, scored.probs), dtype=float).reshape(-1)
    metrics: list[dict[str, Any]] = []
    for j, f in enumerate(findings):
        y = scored.y[:, j]
        thr = finite_or_none(youden_threshold(val.y[:, j], val.probs[:, j])) if val is not None else None
        tm = threshold_metrics(y, scored.probs[:, j], thr) if thr is not None else {}
        metrics.append({
            "finding": f, "auc": finite_or_none(aucs[j]), "threshold": thr,
            "sensitivity": finite_or_none(tm.get("sensitivity")),
            "specificity": finite_or_none(tm.get("specificity")),
            "accuracy": finite_or_none(tm.get("accuracy")),
            "n_positive": int(np.sum(y == 1)), "n_negative": int(np.sum(y == 0)),
        })
    return metrics


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
    on_event: Listener | None = None,
) -> PredictResult:
    """Score one split part with run ``run_id`` and store the evaluation; see the module doc.

    Predicting again stores another evaluation (the report and ``compare --init`` use the
    newest); ``on_event`` is told when the name was already taken.
    """
    part = Part.parse(part, "part").value
    if batch_size < 1:
        raise TrainingError(f"`batch_size` must be at least 1, got {batch_size}")
    if name is not None:
        check_name(name, Evaluation.name, param="name", what="evaluation")
    dev = resolve_device(device)
    with registry.session(readonly=True) as s:
        run = get_run(s, run_id)
        ck = run_checkpoint(s, run, checkpoint)
        tgt = _target(s, run, dataset, split, part)
        init_name, run_dataset_id = run.init_name, run.dataset_id
        left_out = dict((run.config or {}).get("left_out_findings") or {})
    model_findings = list(ck.findings)
    shared = [f for f in model_findings if f in tgt.part.findings]
    skipped = [f for f in model_findings if f not in tgt.part.findings] + [
        f for f in tgt.part.findings if f not in model_findings
    ]
    skipped_reasons = {**_skipped_reasons(skipped, model_findings, tgt.dataset, left_out),
                       **{f: why for f, why in tgt.not_derived.items() if f in skipped}}
    if not shared:
        raise TrainingError(
            f"run {run_id} predicts {', '.join(model_findings)} but dataset {tgt.dataset!r} has none of "
            f"these findings ({', '.join(tgt.part.findings)}) - evaluate it on a dataset that shares "
            "findings (harmonised names)"
        )
    if len(tgt.part) == 0:
        raise TrainingError(
            f"the {part} part of split {tgt.split!r} of dataset {tgt.dataset!r} has no usable images - "
            "choose another `part` or `split`"
        )
    # read (and checked against its sha256) outside any transaction: a ViT-B file takes seconds
    model = load_checkpoint_model(ck).to(dev)
    cols = [model_findings.index(f) for f in shared]
    target, val = tgt.part.select_findings(shared), tgt.val.select_findings(shared)
    mean, std = input_norm(model, tgt.normalise)  # exactly as the run trained
    kw = dict(batch_size=batch_size, device=dev, num_workers=num_workers, uncertain=tgt.uncertain,
              image_size=ck.image_size, mean=mean, std=std, n_outputs=len(model_findings))
    scored = _score(model, target, cols, **kw)
    val_scored = scored if part == "val" else (_score(model, val, cols, **kw) if len(val) else None)
    metrics = _finding_metrics(shared, scored, val_scored)
    undefined = {f: why for j, f in enumerate(shared)
                 if (why := _undefined(f, part, scored.y[:, j], val_scored.y[:, j] if val_scored else None))}
    aucs = np.array([m["auc"] if m["auc"] is not None else np.nan for m in metrics], dtype=float)
    macro = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else None
    name = name or f"run{run_id}-{init_name}-{tgt.dataset}-{part}"
    with registry.session() as s:
        earlier = s.scalars(select(Evaluation.id).where(Evaluation.name == name).order_by(Evaluation.id)).all()
        ev = Evaluation(
            name=name,
            source="predict", run_id=run_id, checkpoint_id=ck.checkpoint_id, dataset_id=tgt.dataset_id,
            split_id=tgt.split_id, part=part, init_name=init_name, n_images=len(target),
            macro_auc=macro, skipped_findings=skipped, uncertain_policy=tgt.uncertain,
            config={"checkpoint": ck.role, "checkpoint_sha256": ck.sha256,
                    "threshold_part": "val" if val_scored is not None else None,
                    "model_findings": model_findings, "batch_size": batch_size,
                    "device": str(dev), "frontal_only": tgt.frontal_only, "normalise": tgt.normalise,
                    "derived_findings": target.derived, "undefined": undefined,
                    "threshold_on_scored_part": part == "val"},
        )
        eval_id = store_evaluation(s, ev, metrics=metrics, image_ids=target.image_ids,
                                   finding_ids=derived_finding_ids(s, tgt.dataset_id, target),
                                   probabilities=scored.probs,
                                   labels=scored.y)
    if earlier:
        warning(on_event, f"evaluation name {name!r} was already used by evaluation(s) "
                          f"{', '.join(map(str, earlier))}; stored another one, {eval_id} (the report and "
                          "compare `init` use the newest; give each its own `name`, or delete the old "
                          "one with vitmed evals delete ID)")
    if part == "val":
        own = tgt.dataset_id == run_dataset_id
        warning(on_event, "the val part chose the thresholds it is scored with (sensitivity, specificity, "
                          "accuracy are optimistic)" + (" and the run's best epoch (so is its AUC)" if own else "")
                          + " - score the test part for unbiased numbers")
    return PredictResult(
        evaluation_id=eval_id, run_id=run_id, dataset=tgt.dataset, split=tgt.split, part=part,
        checkpoint=ck.role, n_images=len(target), macro_auc=macro,
        auc={m["finding"]: m["auc"] for m in metrics}, metrics=metrics, skipped_findings=skipped,
        threshold_part="val" if val_scored is not None else None, undefined=undefined,
        skipped_reasons=skipped_reasons,
    )


__all__ = ["CHECKPOINT_ROLES", "PredictResult", "RunCheckpoint", "load_checkpoint_model",
           "load_run_model", "predict", "run_checkpoint"]
