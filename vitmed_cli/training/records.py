"""What a run writes to the registry and the workspace: its row, epochs, checkpoints, status."""

from __future__ import annotations

import datetime as dt
import platform
import socket
import subprocess
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select

from .. import __version__
from .._util import file_token
from ..registry.db import Registry
from ..registry.models import Checkpoint, EpochMetric, Run
from ..registry.owner import HEARTBEAT_SECONDS, current_owner
from ..weights import register_checkpoint, sha256_file
from .config import TrainConfig
from .distributed import DistInfo
from .prepare import Prepared


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def versions() -> dict[str, Any]:
    """The package versions a run was trained with."""
    import sqlalchemy
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "vitmed": __version__,
    }


def code_version() -> str:
    """vitmed's version, with the git commit of its source tree where there is one."""
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                capture_output=True, text=True, timeout=10, check=False,
            )
            if out.returncode == 0 and out.stdout.strip():
                return f"{__version__}+git.{out.stdout.strip()}"
        except (OSError, subprocess.SubprocessError):
            pass
    return __version__


RUN_DIR_KEY = "run_dir"  # Run.config: the run's folder, named with a token of its own


def run_folder(run: Run, workspace) -> Path:
    """The folder of a run's files (checkpoints, resume.pt) as its row records it; runs made
    before it was recorded use ``run-ID`` in the workspace's checkpoint folder."""
    recorded = (run.config or {}).get(RUN_DIR_KEY)
    return Path(recorded) if recorded else workspace.checkpoint_dir / f"run-{run.id}"


def run_dir(registry: Registry, run_id: int) -> Path:
    """The run's folder (:func:`run_folder`), created."""
    with registry.session(readonly=True) as s:
        path = run_folder(s.get(Run, run_id), registry.workspace)
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_run(session, cfg: TrainConfig, prep: Prepared, spec, info: DistInfo, workspace,
            config_hash: str | None = None) -> int:
    """The run's row, written before training starts (status running), with its own folder:
    ``run-ID-TOKEN``, unique even when two registries share the workspace and both have a run ID."""
    run = Run(
        dataset_id=prep.dataset_id,
        split_id=prep.split_id,
        init_checkpoint_id=spec.checkpoint_id,
        init_name=spec.name,
        init_sha256=spec.sha256,
        arch=cfg.arch,
        image_size=cfg.image_size,
        findings=list(prep.findings),
        config={
            "train": asdict(cfg),
            "n_train": len(prep.train),
            "n_val": len(prep.val),
            "pos_weight": {f: float(w) for f, w in zip(prep.findings, prep.pos_weight)},
            "split": prep.split,
            "left_out_findings": prep.left_out,
            "derived_findings": prep.derived,  # NAME -> {"kind": merge | no_finding, "of": [...]}
            "image_cache": prep.cache_path,  # the cache built at the run's size, when there is one
        },
        seed=cfg.seed,
        config_hash=config_hash,
        status="running",
        epochs_planned=cfg.epochs,
        epochs_done=0,
        host=socket.gethostname(),
        **owner_columns(),
        world_size=info.world_size,
        versions=versions(),
        code_version=code_version(),
    )
    session.add(run)
    session.flush()
    run.config = {**run.config, RUN_DIR_KEY: str(workspace.checkpoint_dir / f"run-{run.id}-{file_token()}")}
    session.flush()
    return run.id


def owner_columns() -> dict[str, Any]:
    """This process as the run's owner, with a fresh heartbeat."""
    me = current_owner()
    return {"owner_host": me.host, "owner_pid": me.pid, "owner_token": me.token, "heartbeat_at": utcnow()}


class Heartbeat:
    """While rank 0 trains, a thread refreshes the run's heartbeat every ``interval`` seconds,
    so a reader can tell a live run from one whose process was killed."""

    def __init__(self, registry: Registry, run_id: int, interval: float = HEARTBEAT_SECONDS):
        self.registry, self.run_id, self.interval = registry, run_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                update_run(self.registry, self.run_id, heartbeat_at=utcnow())
            except Exception:  # noqa: BLE001 - a missed beat is harmless; the run goes on
                pass

    def __enter__(self) -> "Heartbeat":
        update_run(self.registry, self.run_id, **owner_columns())
        self._thread = threading.Thread(target=self._beat, name=f"vitmed-heartbeat-{self.run_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def update_run(registry: Registry, run_id: int, **values: Any) -> None:
    """Set columns of a run (``config_update`` merges into its config) in one transaction."""
    with registry.session() as s:
        run = s.get(Run, run_id)
        for k, v in values.items():
            if k == "config_update":
                run.config = {**(run.config or {}), **v}
            else:
                setattr(run, k, v)


def record_epoch(registry: Registry, run_id: int, row: dict[str, Any], *, best_epoch: int | None,
                 best_auc: float | None, resume_path: str) -> None:
    """One epoch's metrics and the run's progress, in one transaction."""
    with registry.session() as s:
        s.add(EpochMetric(run_id=run_id, **row))
        run = s.get(Run, run_id)
        run.epochs_done = int(row["epoch"])
        run.best_epoch, run.best_val_macro_auc = best_epoch, best_auc
        run.resume_path = resume_path


def register_outputs(registry: Registry, run_id: int, files: dict[str, tuple[Path, int]]) -> dict[str, str]:
    """Register (or refresh) the run's best/last checkpoint rows."""
    out: dict[str, str] = {}
    with registry.session() as s:
        run = s.get(Run, run_id)
        kwargs = (run.config or {}).get("model_kwargs", {})
        for role, (path, epoch) in files.items():
            if not path.is_file():
                continue
            digest = sha256_file(path)
            existing = s.scalar(
                select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.role == role)
                .order_by(Checkpoint.id.desc())
            )
            if existing is not None:
                existing.sha256, existing.path, existing.epoch = digest, str(path), epoch
            else:
                register_checkpoint(
                    s, path, arch=run.arch, init=f"run:{run_id}", source="run", role=role,
                    name=f"run{run_id}-{role}", run_id=run_id, epoch=epoch,
                    image_size=run.image_size, findings=list(run.findings),
                    meta={"model_kwargs": kwargs, "run_init": run.init_name,
                          "dataset": (run.config or {}).get("dataset")},
                    sha256=digest,
                )
            out[role] = str(path)
    return out


def mark_ended(registry: Registry, run_id: int, status: str, error: str | None) -> None:
    """The run's final status; never raises (the error that ended the run matters more)."""
    try:
        update_run(registry, run_id, status=status, error=error[:4000] if error else None,
                   ended_at=utcnow())
    except Exception:  # noqa: BLE001
        pass
