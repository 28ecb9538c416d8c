"""Fine-tuning runs: start one (:func:`finetune`) or continue one (:func:`resume`).

Every run is a ``Run`` row written *before* training (status ``running``, the
full configuration, seed, split, init checkpoint sha256, package and code
versions), one ``EpochMetric`` per epoch as it ends, ``best``/``last``
checkpoints (.safetensors under the workspace, registered), and a final status
``completed``, ``failed`` (with the error) or ``interrupted``.

A run's inputs are resolved once, on rank 0, before the row is written: the
data is prepared (:mod:`.prepare`), the initialisation resolved and its file
read once and checked against its registered sha256.  The prepared data and the
final configuration are then handed to the loop and broadcast to the other
ranks under torchrun, so nothing is resolved, hashed or read twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from ..choices import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_FLIP,
    DEFAULT_LR,
    DEFAULT_NORMALISE,
    DEFAULT_NUM_WORKERS,
    DEFAULT_ROTATION,
    DEFAULT_WEIGHT_DECAY,
)
from ..errors import TrainingError, VitmedError
from ..events import Listener, warning
from ..models import check_arch_name, check_image_size
from ..registry.db import Registry
from ..registry.models import Run
from ..registry.owner import heartbeat_age, run_state
from ..registry.queries import get_run
from ..weights import InitSpec, load_init_state, resolve_init
from . import distributed as dist
from . import records
from .config import RESUME_FILE, RunResult, TrainConfig
from .distributed import DistInfo
from .loop import TrainingLoop
from .probe import ProbeLoop, uses_feature_cache
from .prepare import Prepared, left_out_message, prepare
from .resume_state import load_resume, reconcile_epochs

log = logging.getLogger("vitmed")


@dataclass
class _Start:
    """What rank 0 resolved before writing the run row (all of it but the tensors is broadcast)."""

    run_id: int
    cfg: TrainConfig
    prep: Prepared
    spec: InitSpec


def _start_run(registry: Registry, cfg: TrainConfig, info: DistInfo, on_event: Listener | None,
               config_hash: str | None = None) -> tuple[_Start, dict[str, torch.Tensor] | None]:
    """Check everything, read the init once, then write the run row (status running)."""
    with registry.session(readonly=True) as s:
        prep = prepare(s, cfg)
    with registry.session() as s:  # a dinov2/imagenet init found in the HF cache is registered
        spec = resolve_init(s, cfg.init, cfg.arch)
    # the init file is read once here and refused if its bytes are not the registered ones,
    # before any run row exists; the loop builds the model from these very tensors
    init_state = load_init_state(spec)
    for note in (left_out_message(prep.left_out), spec.choice_note()):
        if note:
            warning(on_event, note)
    arch = cfg.arch or spec.arch
    check_arch_name(arch)
    image_size = cfg.image_size or prep.cache_size
    kwargs = {**(dict(spec.model_kwargs) if spec.path else {}), **cfg.model_kwargs}
    check_image_size(arch, image_size, **kwargs)  # a ViT's patch must divide the image
    if uses_feature_cache(cfg) and info.world_size > 1:
        raise TrainingError("`tune` head trains on stored features in one process - run it without "
                            "torchrun, or train end to end with `feature_cache` off")
    cfg = TrainConfig(**{**asdict(cfg), "arch": arch, "image_size": image_size,
                         "split": prep.split, "model_kwargs": kwargs})
    with registry.session() as s:
        run_id = records.new_run(s, cfg, prep, spec, info, registry.workspace, config_hash=config_hash)
    return _Start(run_id, cfg, prep, spec), init_state


def _on_rank0(info: DistInfo, work: Callable[[], Any]) -> Any:
    """``work()`` on rank 0, its result (or its error) on every rank."""
    result: Any = None
    if info.is_main:
        try:
            result = work()
        except VitmedError as exc:
            result = exc
        except Exception as exc:  # other ranks wait on the broadcast: tell them, then fail
            if not info.active:
                raise
            result = TrainingError(f"cannot start the run: {type(exc).__name__}: {exc}")
    result = dist.broadcast(result, info)
    if isinstance(result, VitmedError):
        raise result
    return result


def finetune(
    registry: Registry,
    *,
    dataset: str,
    init: str = "random",
    split: str | None = None,
    arch: str | None = None,
    image_size: int | None = None,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    seed: int = 0,
    device: str = "auto",
    uncertain: str = "zeros",
    early_stop: int | None = None,
    num_workers: int = DEFAULT_NUM_WORKERS,
    compile: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    scheduler: str = "constant",
    rotation: float = DEFAULT_ROTATION,
    flip: bool = DEFAULT_FLIP,
    normalise: str = DEFAULT_NORMALISE,
    frontal_only: bool = True,
    findings: list[str] | None = None,
    min_positives: int | None = None,
    keep_resume: bool = False,
    tune: str = "all",
    feature_cache: bool = True,
    merge: dict[str, list[str]] | None = None,
    no_finding: str | None = None,
    on_event: Listener | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Fine-tune ``arch`` from ``init`` on ``dataset``'s split; every step recorded (see the module doc).

    ``image_size`` None trains at the cache's size.  ``findings`` (canonical names) picks
    what to learn; ``min_positives`` leaves out findings with fewer training positives
    (None: refuse findings without any); both, and the dataset's non-findings, are
    recorded in ``Run.config["left_out_findings"]`` and reported as a warning event.
    ``tune`` trains everything (``all``), a linear head on the frozen backbone (``head``:
    each image's features are computed once and stored, see :mod:`.probe`; with
    ``feature_cache`` False the head is trained end to end through the frozen backbone) or
    the last N blocks and the head (``last:N``); a frozen backbone is trained without
    augmentation.  Training augmentation is a horizontal ``flip`` (p = 0.5) and a ``rotation``
    drawn from +-``rotation`` degrees; ``normalise`` feeds the model the init's mean/std
    (``init``) or the image in [0, 1] (``none``, as the study did), in training and in predict.
    ``merge`` ({NAME: [A, B]}) and ``no_finding`` (NAME) add derived findings, computed from
    the stored labels at training and at predict (see
    :func:`~vitmed_cli.datasets.derived.derive_labels`).  ``on_event`` receives progress and epoch lines; ``on_step(epoch, batch)``
    is called after every optimiser step (tests use it to interrupt a run).
    """
    cfg = TrainConfig(
        dataset=dataset, init=init, split=split, arch=arch, image_size=image_size, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, device=str(getattr(device, "value", device)),
        uncertain=str(getattr(uncertain, "value", uncertain)), early_stop=early_stop,
        num_workers=num_workers, compile=compile, model_kwargs=dict(model_kwargs or {}),
        scheduler=str(getattr(scheduler, "value", scheduler)), rotation=float(rotation), flip=bool(flip),
        normalise=str(getattr(normalise, "value", normalise)), frontal_only=frontal_only, findings=list(findings) if findings is not None else None,
        min_positives=min_positives, keep_resume=keep_resume, tune=str(getattr(tune, "value", tune)),
        feature_cache=feature_cache,
        merge={str(k): ([str(x) for x in v] if isinstance(v, (list, tuple)) else v)
               for k, v in (merge or {}).items()},
        no_finding=no_finding,
    )
    return finetune_config(registry, cfg, on_event=on_event, on_step=on_step)


def finetune_config(
    registry: Registry,
    cfg: TrainConfig,
    *,
    config_hash: str | None = None,
    on_event: Listener | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> RunResult:
    """:func:`finetune` from a whole :class:`TrainConfig`; ``config_hash`` is stored with the run
    (``Run.config_hash``: a study finds the run it made for a cell by it)."""
    cfg.check()
    info = dist.setup(cfg.device)
    try:
        init_state: dict[str, torch.Tensor] | None = None

        def start() -> _Start:
            nonlocal init_state
            started, init_state = _start_run(registry, cfg, info, on_event, config_hash)
            return started

        started: _Start = _on_rank0(info, start)
        loop = _loop_class(started.cfg)(registry, started.run_id, started.cfg, started.prep, info,
                            spec=started.spec, init_state=init_state,
                            on_event=on_event if info.is_main else None, on_step=on_step)
        result = loop.run()
        dist.finish(info)
        return result
    finally:
        dist.teardown(info)


def _loop_class(cfg: TrainConfig) -> type[TrainingLoop]:
    """The head of a `tune` head run trains on stored features; everything else end to end."""
    return ProbeLoop if uses_feature_cache(cfg) else TrainingLoop


def _refuse_live_owner(run: Run) -> None:
    """A run still trained by a live process cannot be resumed by another."""
    if run_state(run) == "alive":
        age = heartbeat_age(run)
        raise TrainingError(
            f"run {run.id} is still being trained by process {run.owner_pid} on {run.owner_host}"
            + (f" (last heartbeat {age:.0f} s ago)" if age is not None else "")
            + f" - wait for it to end, or stop it (kill {run.owner_pid}) and resume then"
        )


def _resume_plan(registry: Registry, run_id: int, epochs: int | None, device: str | None,
                 num_workers: int | None, info: DistInfo) -> tuple[TrainConfig, Prepared, str]:
    """Rank 0: the run's stored configuration, checked, with its data prepared."""
    with registry.session(readonly=True) as s:
        run = get_run(s, run_id)
        stored = dict((run.config or {}).get("train") or {})
        if stored and run.findings:
            # resume learns exactly the findings the run started with, whatever the
            # dataset's options say now
            stored["findings"] = list(run.findings)
        status, done, planned, resume_path = run.status, run.epochs_done, run.epochs_planned, run.resume_path
        resume_removed = bool((run.config or {}).get("resume_removed"))
        folder = records.run_folder(run, registry.workspace)
        _refuse_live_owner(run)
    if not stored:
        raise TrainingError(f"run {run_id} was not made by vitmed finetune - it cannot be resumed")
    target = epochs if epochs is not None else planned
    if status == "completed" and resume_removed:
        raise TrainingError(
            f"run {run_id} is already completed ({done} epochs) and its resume.pt was removed to save "
            f"space - train on from its weights in a new run (`init` run:{run_id}), or keep resume.pt "
            "next time (`keep_resume`)"
        )
    if status == "completed" and (epochs is None or target <= done):
        raise TrainingError(
            f"run {run_id} is already completed ({done} epochs) - pass a larger `epochs` to "
            "train it further, or start a new run"
        )
    if target <= done and status != "completed":
        raise TrainingError(f"run {run_id} has already trained {done} epochs - pass `epochs` above {done}")
    if not resume_path:  # killed between the first resume.pt and its registry write
        guess = folder / RESUME_FILE
        resume_path = str(guess) if guess.is_file() else None
    if not resume_path:
        raise TrainingError(
            f"run {run_id} stopped before its first resumable checkpoint - start a new run with "
            "vitmed finetune"
        )
    stored.update({"epochs": target})
    if device is not None:
        stored["device"] = device
    if num_workers is not None:
        stored["num_workers"] = num_workers
    cfg = TrainConfig.from_dict(stored)
    cfg.check()
    with registry.session(readonly=True) as s:
        prep = prepare(s, cfg)
    return cfg, prep, resume_path


def _record_resume(registry: Registry, run_id: int, state: dict[str, Any], resume_path: str,
                   target: int, info: DistInfo) -> None:
    """Rank 0: the resume in the run's config, its status back to running, missing epoch rows."""
    with registry.session() as s:
        # the row is locked (PostgreSQL; SQLite's write transaction locks the file): of two
        # processes resuming one run, the second sees the first as its live owner
        run = s.get(Run, run_id, with_for_update=True)
        _refuse_live_owner(run)
        resumes = list((run.config or {}).get("resumes", []))
        resumes.append({"at_epoch": int(state["epoch"]), "at_batch": int(state["batch"]),
                        "host": socket.gethostname(), "world_size": info.world_size,
                        "time": dt.datetime.now(dt.timezone.utc).isoformat(),
                        "code_version": records.code_version()})
        run.config = {**(run.config or {}), "resumes": resumes,
                      "train": {**(run.config or {}).get("train", {}), "epochs": target}}
        run.status, run.error, run.ended_at = "running", None, None
        for column, value in records.owner_columns().items():
            setattr(run, column, value)
        run.epochs_planned = target
        reconcile_epochs(s, run, state, resume_path)


def resume(
    registry: Registry,
    run_id: int,
    *,
    epochs: int | None = None,
    device: str | None = None,
    num_workers: int | None = None,
    on_event: Listener | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Continue run ``run_id`` exactly where it stopped, to its planned epochs or ``epochs``."""
    info = dist.setup(device or "auto")
    try:
        cfg, prep, resume_path = _on_rank0(
            info, lambda: _resume_plan(registry, run_id, epochs, device, num_workers, info))
        # every rank loads resume.pt itself: it holds the optimiser state each rank needs
        from pathlib import Path

        state = load_resume(Path(resume_path), run_id)
        if info.is_main:
            _record_resume(registry, run_id, state, resume_path, cfg.epochs, info)
        loop = _loop_class(cfg)(registry, run_id, cfg, prep, info,
                            on_event=on_event if info.is_main else None, on_step=on_step)
        result = loop.run(resume_state=state)
        dist.finish(info)
        return result
    finally:
        dist.teardown(info)
