"""A study in the registry (``Study`` and ``StudyCell`` rows) and the work of one cell.

The registry, not an executor, says whether a cell is done: a fine-tuning is done when a
completed run carries its hash (``Run.config_hash``), a prediction when that run has a
test evaluation; the other cells record their state in their ``StudyCell`` row, which is
reset whenever the cell's hash changes.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ..errors import NotFound, TrainingError, VitmedError
from ..events import Listener, notice
from ..registry.db import Registry
from ..registry.models import Evaluation, Run, Study, StudyCell, utcnow
from ..registry.owner import run_state
from .plan import Cell, build_plan
from .spec import StudySpec

MAX_ATTEMPTS = 2  # a failed cell is retried once, then reported


class CellFailed(VitmedError):
    """A study cell could not be completed."""


@dataclass
class CellState:
    key: str
    stage: str
    kind: str
    dataset: str | None
    init: str | None
    seed: int | None
    state: str  # done | running | failed | pending
    run_id: int | None = None
    evaluation_id: int | None = None
    comparison_id: int | None = None
    error: str | None = None
    attempts: int = 0
    job_id: str | None = None
    resumable: bool = False  # an interrupted run of this cell exists; the next attempt resumes it
    job_state: str | None = None  # its job as the executor tells it (study status with an executor)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- the study rows

def sync_study(registry: Registry, spec: StudySpec, plan: list[Cell] | None = None) -> int:
    """Write the study and one row per cell; a cell whose hash changed starts over. The study id."""
    plan = plan if plan is not None else build_plan(spec)
    with registry.session() as s:
        study = s.scalar(select(Study).where(Study.name == spec.name))
        if study is None:
            study = Study(name=spec.name, file=spec.text, config=spec.to_dict())
            s.add(study)
            s.flush()
        else:
            study.file, study.config = spec.text, spec.to_dict()
        rows = {c.key: c for c in s.scalars(select(StudyCell).where(StudyCell.study_id == study.id))}
        keys = {c.key for c in plan}
        for key, row in rows.items():
            if key not in keys:
                s.delete(row)
        for c in plan:
            row = rows.get(c.key)
            if row is None:
                s.add(StudyCell(study_id=study.id, key=c.key, stage=c.stage, kind=c.kind, dataset=c.dataset,
                                init=c.init, seed=c.seed, config_hash=c.hash, state="pending", attempts=0,
                                detail={}))
            elif row.config_hash != c.hash:
                row.config_hash, row.state, row.run_id, row.evaluation_id = c.hash, "pending", None, None
                row.comparison_id, row.error, row.attempts, row.job_id, row.detail = None, None, 0, None, {}
                row.updated_at = utcnow()
        return study.id


def _rows(session, name: str) -> dict[str, StudyCell]:
    study = session.scalar(select(Study).where(Study.name == name))
    if study is None:
        return {}
    return {c.key: c for c in study.cells}


def _runs_by_hash(session, hashes: list[str]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    if not hashes:
        return out
    for run in session.scalars(select(Run).where(Run.config_hash.in_(hashes)).order_by(Run.id)):
        out.setdefault(run.config_hash, []).append(run)
    return out


def _pick_run(runs: list[Run]) -> Run | None:
    """The run that stands for a cell: a completed one, else the newest."""
    done = [r for r in runs if r.status == "completed"]
    return done[0] if done else (runs[-1] if runs else None)


def _test_evaluation(session, run_id: int) -> Evaluation | None:
    return session.scalar(select(Evaluation).where(Evaluation.run_id == run_id, Evaluation.part == "test")
                          .order_by(Evaluation.id.desc()))


def cell_states(registry: Registry, spec: StudySpec, plan: list[Cell] | None = None) -> list[CellState]:
    """Each cell's state as the registry tells it."""
    plan = plan if plan is not None else build_plan(spec)
    with registry.session(readonly=True) as s:
        rows = _rows(s, spec.name)
        runs = _runs_by_hash(s, [c.hash for c in plan if c.stage == "finetune"])
        run_for = {c.key: _pick_run(runs.get(c.hash, [])) for c in plan if c.stage == "finetune"}
        out = []
        for c in plan:
            row = rows.get(c.key)
            row_ok = row is not None and row.config_hash == c.hash
            st = CellState(c.key, c.stage, c.kind, c.dataset, c.init, c.seed, "pending",
                           attempts=row.attempts if row_ok else 0, job_id=row.job_id if row_ok else None,
                           error=row.error if row_ok else None)
            if c.stage == "finetune":
                run = run_for[c.key]
                if run is not None:
                    st.run_id = run.id
                    live = run_state(run)
                    if run.status == "completed":
                        st.state, st.error = "done", None
                    elif live == "alive":
                        st.state = "running"
                    else:
                        st.resumable = run.resume_path is not None or run.status != "failed"
                        st.state = "failed" if row_ok and row.state == "failed" else "pending"
                        if run.status == "failed":
                            st.error = st.error or run.error
                elif row_ok and row.state == "failed":
                    st.state = "failed"
            elif c.stage == "predict":
                run = run_for.get(c.deps[0])
                if run is not None:
                    st.run_id = run.id
                    ev = _test_evaluation(s, run.id) if run.status == "completed" else None
                    if ev is not None:
                        st.state, st.evaluation_id, st.error = "done", ev.id, None
                    elif row_ok and row.state in ("running", "failed"):
                        st.state = row.state
            elif row_ok:
                st.state = row.state
                st.run_id, st.evaluation_id, st.comparison_id = row.run_id, row.evaluation_id, row.comparison_id
                if st.state == "running" and not _row_owner_alive(row):
                    st.state = "pending"
            out.append(st)
        return out


def _row_owner_alive(row: StudyCell) -> bool:
    """A light cell marked running by a process that is gone is pending again."""
    from ..registry.owner import owner_state

    owner = (row.detail or {}).get("owner") or {}
    return owner_state(owner.get("host"), owner.get("pid"), owner.get("token"), row.updated_at) == "alive"


def _update_row(registry: Registry, study: str, key: str, **values: Any) -> None:
    with registry.session() as s:
        row = _rows(s, study).get(key)
        if row is None:
            return
        detail = values.pop("detail", None)
        for k, v in values.items():
            setattr(row, k, v)
        if detail is not None:
            row.detail = {**(row.detail or {}), **detail}
        row.updated_at = utcnow()


def mark_attempt(registry: Registry, study: str, key: str, job_id: str | None) -> None:
    """The controller submitted ``key`` once more (as job ``job_id``)."""
    with registry.session() as s:
        row = _rows(s, study).get(key)
        if row is not None:
            row.attempts = (row.attempts or 0) + 1
            row.job_id, row.updated_at = job_id, utcnow()


def mark_failed(registry: Registry, study: str, key: str, error: str) -> None:
    _update_row(registry, study, key, state="failed", error=error[-2000:])


# --------------------------------------------------------------------------- doing one cell

# Under torchrun, while rank 0 does a fine-tuning cell: its process group and whether rank 0
# has told the other ranks what to train.
_RANKS: dict[str, Any] = {}
_SKIP = ("skip", None)


def run_cell(registry: Registry, spec: StudySpec, key: str, *, on_event: Listener | None = None) -> CellState:
    """Do cell ``key`` of the study (what an executor's job runs); skip it when it is done.

    Under torchrun (a job of several GPUs) rank 0 does the cell as a single process would; the
    other ranks only take part in a fine-tuning's training, training what rank 0 decided (a
    new run, or the resumption of run N), and write nothing themselves.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _run_cell_ranks(registry, spec, key, int(os.environ.get("RANK", "0")), on_event=on_event)
    return _run_cell_one(registry, spec, key, on_event=on_event)


def _cell_state(registry: Registry, spec: StudySpec, key: str) -> CellState:
    states = {st.key: st for st in cell_states(registry, spec)}
    if key not in states:
        raise NotFound(f"the study {spec.name!r} has no cell {key!r} - see vitmed study plan {spec.file}")
    return states[key]


def _run_cell_ranks(registry: Registry, spec: StudySpec, key: str, rank: int, *,
                    on_event: Listener | None) -> CellState:
    from ..training import distributed

    cell = {c.key: c for c in build_plan(spec)}.get(key)
    if cell is None or cell.stage != "finetune":
        return _run_cell_one(registry, spec, key, on_event=on_event) if rank == 0 else _cell_state(registry, spec, key)
    info = distributed.setup(cell.params["train"].get("device", "auto"))
    try:
        if rank == 0:
            _RANKS.update(info=info, sent=False)
            try:
                return _run_cell_one(registry, spec, key, on_event=on_event)
            finally:
                if not _RANKS.get("sent"):  # done already, refused or failed before training: nothing to train
                    distributed.broadcast(_SKIP, info)
                _RANKS.clear()
        what, run_id = distributed.broadcast(None, info)
        if what == "train":
            _train(registry, cell, run_id, None)
        return _cell_state(registry, spec, key)
    finally:
        distributed.teardown(info)


def _run_cell_one(registry: Registry, spec: StudySpec, key: str, *, on_event: Listener | None = None) -> CellState:
    from ..registry.owner import current_owner

    plan = build_plan(spec)
    cells = {c.key: c for c in plan}
    if key not in cells:
        raise NotFound(f"the study {spec.name!r} has no cell {key!r} - see vitmed study plan {spec.file}")
    sync_study(registry, spec, plan)
    states = {st.key: st for st in cell_states(registry, spec, plan)}
    cell = cells[key]
    if states[key].state == "done":
        return states[key]
    if cell.stage == "finetune" and states[key].state == "running":
        raise CellFailed(f"cell {key} is being trained by another process (run {states[key].run_id}) - wait for "
                         f"it: vitmed study status {spec.file}")
    missing = [d for d in cell.deps if states[d].state != "done"]
    if missing:
        raise CellFailed(f"cell {key} waits for {', '.join(missing)} - run vitmed study run {spec.file}")
    owner = current_owner()
    _update_row(registry, spec.name, key, state="running", error=None,
                detail={"owner": {"host": owner.host, "pid": owner.pid, "token": owner.token}})
    notice(on_event, f"{key}: started")
    try:
        ids = _WORK[cell.stage](registry, spec, cell, states, on_event)
    except BaseException as exc:
        message = str(exc) if isinstance(exc, VitmedError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, VitmedError):
            message += "\n" + traceback.format_exc(limit=3)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            _update_row(registry, spec.name, key, state="pending", error="interrupted")
        else:
            mark_failed(registry, spec.name, key, message)
        raise
    _update_row(registry, spec.name, key, state="done", error=None, **ids)
    notice(on_event, f"{key}: done")
    return {st.key: st for st in cell_states(registry, spec, plan)}[key]


def _ingest(registry, spec, cell, states, on_event) -> dict[str, Any]:
    from ..datasets.ingest import ingest_dataset

    d = spec.datasets[cell.dataset]
    # the first size creates the dataset; a further size adds a cache at that size to it
    ingest_dataset(registry, d.format, Path(d.path), name=d.name,
                   image_size=cell.params.get("image_size", d.image_size), on_event=on_event, **d.ingest)
    return {}


def _split(registry, spec, cell, states, on_event) -> dict[str, Any]:
    from ..registry.models import Split
    from ..registry.queries import get_dataset
    from ..splits import make_split, official_split

    d = spec.datasets[cell.dataset]
    with registry.session(readonly=True) as s:
        ds = get_dataset(s, d.name)
        exists = s.scalar(select(Split).where(Split.dataset_id == ds.id, Split.name == d.split.name)) is not None
    # a split made by an earlier version of this cell (its hash changed) is replaced
    if d.split.policy == "official":
        official_split(registry, d.name, val=d.split.val, seed=d.split.seed, name=d.split.name, replace=exists)
    else:
        make_split(registry, d.name, val=d.split.val, test=d.split.test, seed=d.split.seed, name=d.split.name,
                   replace=exists)
    return {}


def _register(registry, spec, cell, states, on_event) -> dict[str, Any]:
    from ..weights import pretrain_load

    p = cell.params
    if "stage_cell" in p:
        run_id = states[p["stage_cell"]].run_id
        res = pretrain_load(registry, f"run:{run_id}", name=cell.init, on_event=on_event)
        return {"run_id": run_id, "detail": {"checkpoint_id": res.checkpoint_id}}
    res = pretrain_load(registry, p["pretrain"], file=p.get("file"), dir=p.get("dir"), arch=p.get("arch"),
                        name=cell.init, on_event=on_event)
    return {"detail": {"checkpoint_id": res.checkpoint_id}}


def _finetune(registry, spec, cell, states, on_event) -> dict[str, Any]:
    run_id = _finetune_plan(registry, cell, states[cell.key], on_event)
    if _RANKS:  # rank 0 of a torchrun job: the other ranks train what it decided
        from ..training import distributed

        distributed.broadcast(("train", run_id), _RANKS["info"])
        _RANKS["sent"] = True
    result = _train(registry, cell, run_id, on_event)
    if result.status != "completed":
        raise TrainingError(f"run {result.run_id} ended {result.status}: {result.message or ''} - see "
                            f"vitmed runs show {result.run_id}")
    return {"run_id": result.run_id}


def _finetune_plan(registry, cell, st, on_event) -> int | None:
    """The run to resume, or None for a new one (a run killed before its first resumable
    checkpoint has nothing to keep: it is deleted and started again)."""
    if st.run_id is None or not st.resumable:
        return None
    with registry.session(readonly=True) as s:
        run = s.get(Run, st.run_id)
        has_resume = run.resume_path is not None and Path(run.resume_path).is_file()
        status = run.status
    if has_resume and status != "failed":
        notice(on_event, f"{cell.key}: resuming run {st.run_id}")
        return st.run_id
    if status != "failed":
        with registry.session() as s:
            s.delete(s.get(Run, st.run_id))
    return None


def _train(registry, cell, run_id, on_event):
    from ..training import finetune_config, resume
    from ..training.config import TrainConfig

    if run_id is not None:
        return resume(registry, run_id, on_event=on_event)
    cfg = TrainConfig(**cell.params["train"])
    return finetune_config(registry, cfg, config_hash=cell.hash, on_event=on_event)


def _predict(registry, spec, cell, states, on_event) -> dict[str, Any]:
    from ..evaluations import predict

    run_id = states[cell.deps[0]].run_id
    res = predict(registry, run_id=run_id, part=cell.params["part"], on_event=on_event)
    return {"run_id": run_id, "evaluation_id": res.evaluation_id}


def _compare(registry, spec, cell, states, on_event) -> dict[str, Any]:
    from .stats import compare_inits

    ref = cell.params["reference"]
    seeds = spec.seeds
    # the predictions of each init, one per seed, at the cell's size
    a = [states[k].evaluation_id for k in cell.params["a"]]
    b = [states[k].evaluation_id for k in cell.params["b"]]
    out = compare_inits(registry, evaluations_a=a, evaluations_b=b, label_a=cell.init, label_b=ref,
                        seeds=seeds, statistics=spec.statistics, on_event=on_event)
    return {"comparison_id": out["comparison_id"], "detail": {"comparison_ids": out["comparison_ids"],
                                                              "mode": out["mode"]}}


def _report(registry, spec, cell, states, on_event) -> dict[str, Any]:
    from ..report.study import create_study_report
    from .stats import adjust_study_fdr

    adjust_study_fdr(registry, spec, states)
    written = create_study_report(registry, spec.name, Path(spec.report.out), fmt=spec.report.format,
                                  on_event=on_event)
    return {"detail": {"path": str(written.path)}}


_WORK = {"ingest": _ingest, "split": _split, "register": _register, "finetune": _finetune,
         "predict": _predict, "compare": _compare, "report": _report}


__all__ = ["CellFailed", "CellState", "MAX_ATTEMPTS", "cell_states", "mark_attempt", "mark_failed", "run_cell",
           "sync_study"]
