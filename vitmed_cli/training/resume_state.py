"""The resumable checkpoint: what ``resume.pt`` holds, and how a resume picks up from it.

At every epoch end (and on Ctrl-C / SIGTERM mid-epoch) the loop saves
``resume.pt``: model, optimiser, scheduler, RNG states, epoch and batch
position, and the epoch history.  Data order and augmentation are drawn from
generators seeded by (seed, epoch, batch), so an interrupted and resumed run
ends with the same metrics as an uninterrupted one on the CPU.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select

from .._util import atomic_write, first_line
from ..errors import TrainingError
from ..registry.models import EpochMetric, Run


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_resume(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, writer=lambda fh: torch.save(payload, fh))


def load_resume(path: Path, run_id: int) -> dict[str, Any]:
    if not path.is_file():
        raise TrainingError(
            f"run {run_id} has no resumable checkpoint ({path} is missing) - start a new run with "
            "vitmed finetune"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file is the only cause
        raise TrainingError(
            f"cannot read the resumable checkpoint {path} of run {run_id} ({first_line(exc)}) - start "
            "a new run with vitmed finetune"
        ) from exc


def reconcile_epochs(session, run: Run, state: dict[str, Any], resume_path: str) -> list[int]:
    """Write the epochs resume.pt holds but the registry lacks; returns their numbers.

    Each epoch end saves resume.pt first and then, in one transaction, its EpochMetric
    row and the run's progress.  A process killed between the two leaves a resume.pt one
    epoch ahead of the registry; resuming from it would skip that epoch's row forever.
    resume.pt's history is the truth (it is what training continues from), so the
    missing rows, ``epochs_done``, the best epoch and ``resume_path`` are taken from it.
    """
    have = set(session.scalars(select(EpochMetric.epoch).where(EpochMetric.run_id == run.id)))
    added = []
    for row in state.get("history") or []:
        if int(row["epoch"]) not in have:
            session.add(EpochMetric(run_id=run.id, **row))
            added.append(int(row["epoch"]))
    if added:
        run.epochs_done = max(int(run.epochs_done or 0), len(state["history"]))
        run.best_epoch, run.best_val_macro_auc = state.get("best_epoch"), state.get("best_auc")
    run.resume_path = resume_path
    return added
