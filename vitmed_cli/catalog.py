"""Read and delete what the registry holds: datasets, runs, checkpoints, evaluations.

Every function takes an open :class:`~vitmed_cli.registry.db.Registry` and
returns plain dicts, ready for a table or JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from .errors import RefusedError
from .registry.db import Registry
from .registry.models import (
    Checkpoint,
    Comparison,
    Dataset,
    Evaluation,
    EvaluationMetric,
    Finding,
    Image,
    Label,
    Run,
)
from .registry.owner import STALE_STATUS, display_status, heartbeat_age
from .registry.queries import (
    get_dataset,
    get_evaluation,
    get_run,
    image_states,
    ingest_command,
    registration_complete,
    run_tune,
)
from .datasets.parts import size_caches
from .splits import split_summary
from .weights.families import family_of, licence_of


def list_datasets(registry: Registry) -> list[dict[str, Any]]:
    with registry.session(readonly=True) as s:
        counts = dict(
            s.execute(select(Image.dataset_id, func.count()).group_by(Image.dataset_id)).all()
        )
        not_cached = dict(
            s.execute(select(Image.dataset_id, func.count()).where(Image.readable.is_(None))
                      .group_by(Image.dataset_id)).all()
        )
        out = []
        for ds in s.scalars(select(Dataset).order_by(Dataset.id)):
            out.append(
                {
                    "id": ds.id,
                    "name": ds.name,
                    "format": ds.format,
                    "n_images": counts.get(ds.id, 0),
                    "status": _status(ds, not_cached.get(ds.id, 0)),
                    "n_findings": len(ds.findings),
                    "image_size": ds.image_size,
                    "splits": [sp.name for sp in ds.splits],
                    "source_path": ds.source_path,
                    "created_at": ds.created_at,
                }
            )
        return out


def _status(ds: Dataset, n_not_cached: int) -> str:
    """complete, or which part of its ingest stopped before the end."""
    if not registration_complete(ds):
        return "registration incomplete"
    return "caching incomplete" if n_not_cached else "complete"


def dataset_summary(registry: Registry, name: str) -> dict[str, Any]:
    """Counts of images, patients, unreadable files and labels per finding and split part."""
    with registry.session(readonly=True) as s:
        ds = get_dataset(s, name)
        states = image_states(s, ds.id)
        n_images, n_unreadable = states["n_images"], states["n_unreadable"]
        status = _status(ds, states["n_not_cached"])
        n_patients = (
            s.scalar(
                select(func.count(func.distinct(Image.patient_id))).where(
                    Image.dataset_id == ds.id, Image.patient_id.is_not(None)
                )
            )
            if ds.has_patient_ids
            else None
        )
        views = dict(
            s.execute(
                select(Image.view, func.count()).where(Image.dataset_id == ds.id).group_by(Image.view)
            ).all()
        )
        label_counts = s.execute(
            select(Finding.canonical, Label.value, func.count())
            .join(Label, Label.finding_id == Finding.id)
            .where(Finding.dataset_id == ds.id)
            .group_by(Finding.canonical, Label.value)
        ).all()
        names = {1: "positive", 0: "negative", -1: "uncertain"}
        findings: dict[str, dict[str, Any]] = {
            f.canonical: {"native": f.native, "positive": 0, "negative": 0, "uncertain": 0}
            for f in ds.findings
        }
        for canonical, value, count in label_counts:
            findings[canonical][names[value]] = count
        splits = []
        for sp in ds.splits:
            info = split_summary(s, sp)
            parts = {p: v["n_images"] for p, v in info["parts"].items() if v["n_images"]}
            for part, v in info["parts"].items():
                for canonical, count in v["positives"].items():
                    if count:
                        findings[canonical].setdefault("positive_by_part", {}).setdefault(
                            sp.name, {})[part] = count
            # what training and evaluation use of each part (frontal, readable, labelled), as split shows
            used = {p: v["n_used"] for p, v in info["parts"].items() if v["n_images"]}
            splits.append({"name": sp.name, "method": sp.method, "seed": sp.seed, "parts": parts,
                           "used": used})
        return {
            "id": ds.id,
            "name": ds.name,
            "format": ds.format,
            "source_path": ds.source_path,
            "image_size": ds.image_size,
            "cache_path": ds.cache_path,
            "caches": {ds.image_size: ds.cache_path, **size_caches(ds)},  # image size -> cache file
            "has_patient_ids": ds.has_patient_ids,
            "label_policy": ds.label_policy,
            "notes": ds.notes,
            "n_images": n_images,
            "n_patients": n_patients,
            "n_unreadable": n_unreadable,
            "n_cached": states["n_cached"],
            "n_not_cached": states["n_not_cached"],  # an ingest that stopped before the end
            "status": status,
            "resume_command": None if status == "complete" else ingest_command(ds),
            "views": views,
            "findings": findings,
            "splits": splits,
            "created_at": ds.created_at,
        }


def delete_dataset(registry: Registry, name: str) -> dict[str, Any]:
    """Delete a dataset with its images, labels and splits; refused while runs or evaluations use it."""
    with registry.session() as s:
        ds = get_dataset(s, name)
        n_runs = s.scalar(select(func.count()).where(Run.dataset_id == ds.id))
        n_evals = s.scalar(select(func.count()).where(Evaluation.dataset_id == ds.id))
        n_cmp = s.scalar(select(func.count()).where(Comparison.dataset_id == ds.id))
        if n_runs or n_evals or n_cmp:
            raise RefusedError(
                f"dataset {name!r} is used by {n_runs} run(s) and {n_evals} evaluation(s) - "
                "delete those first (vitmed runs delete ID, vitmed evals delete ID)"
            )
        n_images = s.scalar(select(func.count()).where(Image.dataset_id == ds.id))
        s.delete(ds)
        return {"id": ds.id, "name": name, "deleted_images": n_images}


def _run_row(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "dataset": run.dataset.name,
        "split": run.split.name,
        "init": run.init_name,
        "arch": run.arch,
        "image_size": run.image_size,
        "tune": run_tune(run),
        "seed": run.seed,
        "status": display_status(run),
        "epochs_done": run.epochs_done,
        "epochs_planned": run.epochs_planned,
        "best_epoch": run.best_epoch,
        "best_val_macro_auc": run.best_val_macro_auc,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
    }


def list_runs(registry: Registry, dataset: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    """Runs in id order; ``status`` filters on the status shown (``stale`` or
    ``interrupted (stale)``: running runs whose process is gone)."""
    if status == "stale":
        status = STALE_STATUS
    with registry.session(readonly=True) as s:
        q = select(Run).order_by(Run.id)
        if dataset is not None:
            q = q.where(Run.dataset_id == get_dataset(s, dataset).id)
        rows = [_run_row(r) for r in s.scalars(q)]
    return [r for r in rows if status is None or r["status"] == status]


def run_detail(registry: Registry, run_id: int) -> dict[str, Any]:
    with registry.session(readonly=True) as s:
        run = get_run(s, run_id)
        out = run.to_dict()
        out.update(_run_row(run))
        out["init_checkpoint"] = run.init_checkpoint.to_dict() if run.init_checkpoint else None
        out["checkpoints"] = [c.to_dict() for c in run.checkpoints]
        out["epochs"] = [m.to_dict() for m in run.epochs]
        out["owner"] = None if run.status != "running" else {  # who trains it now, and is it alive
            "host": run.owner_host, "pid": run.owner_pid, "heartbeat_seconds_ago": heartbeat_age(run),
            "alive": display_status(run) == "running",
        }
        return out


def delete_run(registry: Registry, run_id: int) -> dict[str, Any]:
    """Delete a run with its metrics, checkpoints and evaluations (refused while another run starts from it)."""
    with registry.session() as s:
        run = get_run(s, run_id)
        ckpt_ids = [c.id for c in run.checkpoints]
        if ckpt_ids:
            users = s.scalars(
                select(Run.id).where(Run.init_checkpoint_id.in_(ckpt_ids), Run.id != run_id)
            ).all()
            if users:
                raise RefusedError(
                    f"run {run_id} cannot be deleted: run(s) {', '.join(map(str, users))} start "
                    "from its weights - delete those runs first"
                )
        s.delete(run)
        return {"id": run_id, "deleted": True}


def prunable_runs(registry: Registry, run_ids: list[int] | None = None) -> list[int]:
    """Runs whose resume.pt prune_runs would delete."""
    with registry.session(readonly=True) as s:
        q = select(Run).where(Run.resume_path.is_not(None)).order_by(Run.id)
        if run_ids:
            q = q.where(Run.id.in_(run_ids))
        return [r.id for r in s.scalars(q) if _prunable(r)]


def _prunable(run: Run) -> bool:
    """A run that ended: not interrupted (it may be resumed), not still trained by a live process."""
    return run.status != "interrupted" and display_status(run) != "running"


def prune_runs(registry: Registry, run_ids: list[int] | None = None) -> dict[str, Any]:
    """Delete the resume.pt of runs that ended (completed or failed), or of ``run_ids``; a run
    that is interrupted, or still trained by a live process, keeps its file.

    Returns the runs pruned and the bytes freed.
    """
    pruned, kept, freed = [], [], 0
    with registry.session() as s:
        q = select(Run).where(Run.resume_path.is_not(None)).order_by(Run.id)
        if run_ids:
            for rid in run_ids:
                get_run(s, rid)
            q = q.where(Run.id.in_(run_ids))
        for run in s.scalars(q):
            if not _prunable(run):
                kept.append({"id": run.id, "why": "it can still be resumed" if run.status == "interrupted"
                             else "it is still training"})
                continue
            path = Path(run.resume_path)
            if path.is_file():
                freed += path.stat().st_size
                path.unlink()
            run.resume_path = None
            run.config = {**(run.config or {}), "resume_removed": True}
            pruned.append(run.id)
    return {"pruned": pruned, "kept": kept, "bytes_freed": freed}


def list_checkpoints(registry: Registry, role: str | None = None) -> list[dict[str, Any]]:
    with registry.session(readonly=True) as s:
        q = select(Checkpoint).order_by(Checkpoint.id)
        if role is not None:
            q = q.where(Checkpoint.role == role)
        return [
            {
                "id": c.id,
                "name": c.name,
                "init": c.init,
                "family": family_of(c.init, c.source, c.meta),
                "arch": c.arch,
                "licence": licence_of(c.init, c.source, c.meta),
                "role": c.role,
                "source": c.source,
                "run_id": c.run_id,
                "n_params": c.n_params,
                "sha256": c.sha256,
                "path": c.path,
                "created_at": c.created_at,
            }
            for c in s.scalars(q)
        ]


def _eval_row(ev: Evaluation) -> dict[str, Any]:
    return {
        "id": ev.id,
        "name": ev.name,
        "source": ev.source,
        "run_id": ev.run_id,
        "init": ev.init_name,
        "dataset": ev.dataset.name,
        "split": ev.split.name if ev.split else None,
        "part": ev.part,
        "n_images": ev.n_images,
        "macro_auc": ev.macro_auc,
        "created_at": ev.created_at,
    }


def list_evaluations(registry: Registry, dataset: str | None = None) -> list[dict[str, Any]]:
    with registry.session(readonly=True) as s:
        q = select(Evaluation).order_by(Evaluation.id)
        if dataset is not None:
            q = q.where(Evaluation.dataset_id == get_dataset(s, dataset).id)
        return [_eval_row(e) for e in s.scalars(q)]


def evaluation_detail(registry: Registry, evaluation_id: int) -> dict[str, Any]:
    with registry.session(readonly=True) as s:
        ev = get_evaluation(s, evaluation_id)
        out = _eval_row(ev)
        out["skipped_findings"] = ev.skipped_findings
        out["uncertain_policy"] = ev.uncertain_policy
        out["config"] = ev.config
        metrics = s.scalars(
            select(EvaluationMetric)
            .where(EvaluationMetric.evaluation_id == ev.id)
            .order_by(EvaluationMetric.id)
        ).all()
        out["auc"] = {m.finding: m.auc for m in metrics}
        out["metrics"] = [
            {k: v for k, v in m.to_dict().items() if k not in {"id", "evaluation_id"}} for m in metrics
        ]
        return out


def delete_evaluation(registry: Registry, evaluation_id: int) -> dict[str, Any]:
    with registry.session() as s:
        ev = get_evaluation(s, evaluation_id)
        s.delete(ev)
        return {"id": evaluation_id, "deleted": True}
