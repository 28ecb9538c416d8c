"""Run a study: what is missing, in dependency order, through an executor; and its status.

Idempotent and resumable: each pass reads the cells' states from the registry, so a cell
already done (a completed run with the cell's hash, its evaluation, a recorded comparison)
is skipped, an interrupted run is resumed by its next attempt, and a cell still trained by a
live process elsewhere is waited for.  A failed cell is tried once more, then reported; the
cells after it wait for the next ``study run``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, VitmedError
from ..events import Listener, notice, progress, warning
from ..registry.db import Registry
from .cells import MAX_ATTEMPTS, CellState, cell_states, mark_attempt, mark_failed, run_cell, sync_study
from .executors import Executor, LocalExecutor, SlurmOptions, cell_argv, cell_env
from .plan import LIGHT_STAGES, Cell, build_plan, check_image_sizes
from .spec import StudySpec

EXECUTORS = ("local", "slurm")
SQLITE_ON_SLURM = (
    "`executor` slurm needs a PostgreSQL registry: Slurm jobs on several nodes would write one SQLite file "
    "over a network file system, where SQLite's locks do not hold and data is lost - pass "
    "--db postgresql+psycopg://USER:PASSWORD@HOST/DB"
)


@dataclass
class StudyRunResult:
    study: str
    n_cells: int
    n_done: int
    executed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def study_status(registry: Registry, spec: StudySpec, jobs: Any = None) -> dict[str, Any]:
    """``{"study": NAME, "cells": [{stage, dataset, init, seed, state, run_id, evaluation_id, ...}]}``.

    A cell not done whose job the scheduler still knows gets that job's state as ``job_state``:
    a job waiting in the queue or running makes the cell ``running``; a cancelled or failed one
    leaves it ``pending`` (the next ``study run`` resumes it), with the job named in ``error``.
    ``jobs`` (an object whose ``states(job_ids)`` maps ids to states) defaults to the study's
    Slurm jobs where :func:`slurm_job_states` finds them; a local study run's processes are seen
    through the registry."""
    states = cell_states(registry, spec)
    jobs = jobs if jobs is not None else slurm_job_states(registry)
    if jobs is not None:
        known = jobs.states([st.job_id for st in states if st.job_id and st.state != "done"])
        for st in states:
            if st.job_id in known and st.state != "done":
                _with_job_state(st, known[st.job_id])
    counts: dict[str, int] = {}
    for st in states:
        counts[st.state] = counts.get(st.state, 0) + 1
    return {"study": spec.name, "file": spec.file, "counts": counts, "cells": [st.to_dict() for st in states]}


def _with_job_state(st: Any, job_state: str) -> None:
    if job_state == "unknown":
        return  # the scheduler did not answer, or the job left nothing behind
    st.job_state = job_state
    if job_state in ("pending", "running"):
        st.state = "running"
    elif job_state in ("cancelled", "failed") and st.state in ("running", "pending"):
        st.state = "pending"
        st.error = st.error or f"job {st.job_id} {job_state} - study run resumes the cell"


def slurm_jobs_folder(registry: Registry) -> Path:
    """Where a workspace's Slurm jobs keep submitit's files, one folder per job."""
    return registry.workspace.home / "slurm-jobs"


def slurm_job_states(registry: Registry) -> Any:
    """A reader of this workspace's Slurm jobs (:class:`~vitmed_cli.study.slurm.SlurmJobStates`)
    where a Slurm study ran from it (its ``slurm-jobs`` folder), ``squeue`` is on the PATH and the
    registry is one Slurm jobs can share (PostgreSQL); otherwise None."""
    import shutil

    folder = slurm_jobs_folder(registry)
    if registry.is_sqlite or shutil.which("squeue") is None or not folder.is_dir():
        return None
    try:
        from .slurm import SlurmJobStates
    except ImportError:
        return None  # submitit is not installed: no Slurm study ran from here
    return SlurmJobStates(folder)


def _not_trained(plan: list[Cell], states: dict[str, CellState]) -> list[Cell]:
    """The cells whose image size still needs the patch check: a completed fine-tuning was checked
    when it trained (so a finished study's plan and run do not import timm to check it again)."""
    return [c for c in plan if not (c.stage == "finetune" and c.key in states and states[c.key].state == "done")]


def study_plan(registry: Registry | None, spec: StudySpec) -> dict[str, Any]:
    """Every stage and cell with what it depends on, and (with a registry) its state there."""
    plan = build_plan(spec)
    states = {st.key: st for st in cell_states(registry, spec, plan)} if registry is not None else {}
    check_image_sizes(spec, _not_trained(plan, states))
    cells = []
    for c in plan:
        st = states.get(c.key)
        cells.append({"key": c.key, "stage": c.stage, "kind": c.kind, "dataset": c.dataset, "init": c.init,
                      "seed": c.seed, "image_size": c.image_size, "deps": c.deps, "hash": c.hash,
                      "state": st.state if st else "pending",
                      "run_id": st.run_id if st else None,
                      "evaluation_id": st.evaluation_id if st else None})
    stages: dict[str, int] = {}
    for c in plan:
        stages[c.stage] = stages.get(c.stage, 0) + 1
    return {"study": spec.name, "file": spec.file, "seeds": spec.seeds, "datasets": list(spec.datasets),
            "inits": list(spec.inits), "stages": stages, "cells": cells}


def create_executor(name: str, registry: Registry, *, slurm: SlurmOptions | None = None) -> Executor:
    """The executor called ``name``; Slurm is imported only when asked for, and refuses SQLite."""
    if name == "local":
        return LocalExecutor()
    if name == "slurm":
        if registry.is_sqlite:
            raise ConfigError(SQLITE_ON_SLURM)
        try:
            from . import slurm as slurm_module  # type: ignore[attr-defined]
        except ImportError as exc:
            raise ConfigError(f"the slurm executor is not available here ({exc}) - install submitit "
                              "(pip install submitit) or use `executor` local") from None
        o = slurm or SlurmOptions()
        given = {"gpus": o.gpus, "partition": o.partition, "account": o.account, "cpus": o.cpus,
                 "mem_gb": o.mem_gb, "time_min": slurm_module.parse_slurm_time(o.time) if o.time else None}
        options = slurm_module.SlurmOptions(**{k: v for k, v in given.items() if v is not None})
        # submitit's job files (one folder per job) next to the registry's other files: the
        # workspace must be on a file system the compute nodes share.
        return slurm_module.SlurmExecutor(options, slurm_jobs_folder(registry))
    raise ConfigError(f"`executor` must be one of {', '.join(EXECUTORS)}, got {name!r}")


def run_study(
    registry: Registry,
    spec: StudySpec,
    *,
    executor: Executor | None = None,
    db_url: str | None = None,
    max_parallel: int | None = None,
    poll_seconds: float = 0.25,
    on_event: Listener | None = None,
) -> StudyRunResult:
    """Run every missing cell of ``spec``; ``executor`` None runs them here, one after another.

    With an executor, fine-tunings and predictions run as its jobs (a fine-tuning and its
    prediction in one job); the local executor runs the light cells (ingest, split, register,
    compare, report) in this process, the others submit them too.  ``db_url`` is the registry
    URL the jobs open (with its password).
    """
    started = time.perf_counter()
    plan = build_plan(spec)
    check_image_sizes(spec, _not_trained(plan, {st.key: st for st in cell_states(registry, spec, plan)}))
    by_key = {c.key: c for c in plan}
    sync_study(registry, spec, plan)
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"`max_parallel` must be at least 1, got {max_parallel}")
    if executor is not None and db_url is None:
        raise ConfigError("`db_url` is needed to run cells through an executor")
    limit = max_parallel or (getattr(executor, "slots", 1) if executor is not None and executor.name == "local"
                             else 10 ** 6)
    inline_light = executor is None or executor.name == "local"
    log_dir = registry.workspace.home / "studies" / spec.name / "logs"
    tries: dict[str, int] = {}
    errors: dict[str, str] = {}
    inflight: dict[str, list[str]] = {}  # job id -> cell keys
    executed: list[str] = []

    def give_up(key: str, error: str) -> None:
        errors[key] = error
        mark_failed(registry, spec.name, key, error)
        warning(on_event, f"{key} failed after {tries.get(key, 0)} attempts: {error.splitlines()[0]}")

    def attempt_inline(cell: Cell) -> None:
        tries[cell.key] = tries.get(cell.key, 0) + 1
        mark_attempt(registry, spec.name, cell.key, None)
        try:
            run_cell(registry, spec, cell.key, on_event=on_event)
            executed.append(cell.key)
        except VitmedError as exc:
            if tries[cell.key] >= MAX_ATTEMPTS:
                give_up(cell.key, str(exc))
            else:
                warning(on_event, f"{cell.key} failed ({exc}) - trying once more")
        except Exception as exc:  # a crash in one cell must not stop the others
            if tries[cell.key] >= MAX_ATTEMPTS:
                give_up(cell.key, f"{type(exc).__name__}: {exc}")
            else:
                warning(on_event, f"{cell.key} crashed ({type(exc).__name__}: {exc}) - trying once more")

    if executor is not None:
        # Jobs an earlier `study run` submitted that are still queued or running (its controller
        # was stopped, the jobs were not): wait for them instead of submitting the cells again.
        adopted: dict[str, list[str]] = {}
        for st in cell_states(registry, spec, plan):
            if st.job_id and st.state != "done" and executor.state(st.job_id) in ("pending", "running"):
                adopted.setdefault(st.job_id, []).append(st.key)
        for job, keys in adopted.items():
            inflight[job] = sorted(keys, key=lambda k: by_key[k].stage != "finetune")
            for k in keys:
                tries[k] = tries.get(k, 0) + 1
            notice(on_event, f"{' + '.join(inflight[job])}: job {job} ({executor.name}) still in the queue - "
                   "waiting for it")

    while True:
        states = {st.key: st for st in cell_states(registry, spec, plan)}
        progress(on_event, f"study {spec.name}", sum(st.state == "done" for st in states.values()), len(plan))
        for job, keys in list(inflight.items()):
            js = executor.state(job)
            if js in ("pending", "running"):
                continue
            del inflight[job]
            for i, key in enumerate(keys):
                if states[key].state == "done":
                    executed.append(key)
                    continue
                if states[key].state == "running":
                    continue  # its run is owned by a live process (a job still winding down): wait
                if i > 0:  # a prediction chained to its fine-tuning counts only once that is done
                    if states[keys[0]].state != "done":
                        break
                    tries[key] = tries.get(key, 0) + 1
                if tries.get(key, 0) >= MAX_ATTEMPTS:
                    give_up(key, states[key].error or f"job {job} ended {js} - see {log_dir}")
                else:
                    warning(on_event, f"{key}: job {job} ended {js} - trying once more")
        busy = {k for ks in inflight.values() for k in ks}
        ready = [c for c in plan
                 if states[c.key].state in ("pending", "failed") and c.key not in busy and c.key not in errors
                 and all(states[d].state == "done" for d in c.deps)]
        if not ready and not inflight:
            if any(st.state == "running" for st in states.values()):
                time.sleep(poll_seconds)  # a cell owned by another live process: wait for it
                continue
            break
        ran_here = False
        for cell in ready:
            if executor is None or (inline_light and cell.stage in LIGHT_STAGES):
                attempt_inline(cell)
                ran_here = True
                break  # the states changed: read them again
            if len(inflight) >= limit:
                break
            keys = [cell.key]
            pred = f"predict/{cell.key.split('/', 1)[1]}" if cell.kind == "target" and cell.stage == "finetune" else None
            if pred in by_key and states[pred].state != "done" and pred not in errors:
                keys.append(pred)
            tries[cell.key] = tries.get(cell.key, 0) + 1
            job = executor.submit(cell.key, cell_argv(spec.file, keys), log_dir=log_dir,
                                  env=cell_env(db_url, registry.workspace.home))
            for k in keys:
                mark_attempt(registry, spec.name, k, job)
            inflight[job] = keys
            notice(on_event, f"{' + '.join(keys)}: job {job} ({executor.name})")
        if inflight and not ran_here:
            time.sleep(poll_seconds)

    states = {st.key: st for st in cell_states(registry, spec, plan)}
    failed = {k: (errors.get(k) or st.error or "failed") for k, st in states.items() if st.state == "failed"}
    blocked = [k for k, st in states.items() if st.state == "pending"]
    return StudyRunResult(study=spec.name, n_cells=len(plan), n_done=sum(st.state == "done" for st in states.values()),
                          executed=executed, failed=failed, blocked=blocked,
                          seconds=round(time.perf_counter() - started, 1))


def write_preset(name: str, out: Path, *, force: bool = False) -> Path:
    """Write preset ``name`` as a study file at ``out`` (refused over an existing file unless ``force``)."""
    from .presets import preset_text

    text = preset_text(name)
    out = Path(out).expanduser()
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists - choose another `out` or pass `force` to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


__all__ = ["EXECUTORS", "SQLITE_ON_SLURM", "StudyRunResult", "create_executor", "run_study", "slurm_job_states",
           "study_plan", "study_status", "write_preset"]
