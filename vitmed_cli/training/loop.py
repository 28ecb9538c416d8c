"""The training loop: vitmed's training step (:class:`Trainer`) and the epochs around it.

The study's kind of training: AdamW, binary cross-entropy with a positive weight
per finding, random flips and small rotations (the run's ``flip`` and ``rotation``),
validation AUC per finding after every epoch; the checkpoint with the best validation
macro AUC is the model.  Where vitmed's defaults differ from the study's values (weight
decay, rotation, input normalisation) the options' help says so.
Every epoch ends with ``best``/``last`` safetensors, ``resume.pt`` and, in one
transaction, its metrics row.  Ctrl-C or SIGTERM stops at the next batch
boundary and saves ``resume.pt``, so the run can continue exactly there.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .._util import atomic_write, finite_or_none, first_line
from ..choices import DEFAULT_LR, DEFAULT_WEIGHT_DECAY, UncertainPolicy
from ..datasets.loader import BatchLoader
from ..errors import TrainingError, VitmedError
from ..events import Listener, detail, notice, progress
from ..inference import amp_dtype_for, input_norm, model_input, predict_logits, probabilities, resolve_device
from ..registry.db import Registry
from ..stats import roc_auc
from ..weights import InitSpec, create_model_from_init
from . import distributed as dist
from . import records
from .config import RESUME_FILE, RunResult, TrainConfig
from .distributed import DistInfo
from .prepare import Prepared
from .resume_state import rng_state, save_resume, set_rng_state
from .tuning import apply_tuning


class LrLambda:
    """Constant (the study), or linear warm-up over the first 10% of steps then cosine decay
    (the usual schedule for a ViT trained from scratch); a class so its state saves."""

    WARMUP_FRACTION = 0.1

    def __init__(self, kind: str, total_steps: int):
        self.kind = kind
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = int(self.WARMUP_FRACTION * self.total_steps) if kind == "cosine" else 0

    def __call__(self, step: int) -> float:
        if self.kind != "cosine":
            return 1.0
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        done = min(step - self.warmup_steps, span)
        return 0.5 * (1.0 + math.cos(math.pi * done / span))


class Trainer:
    """One model, its optimiser and loss: ``step(x, y)`` is vitmed's training step."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        pos_weight: np.ndarray | torch.Tensor,
        lr: float = DEFAULT_LR,
        weight_decay: float = DEFAULT_WEIGHT_DECAY,
        device: torch.device | str = "cpu",
        masked: bool = False,
        scheduler: str = "constant",
        total_steps: int = 1,
        compile: bool = False,
        ddp: bool = False,
        local_rank: int = 0,
    ):
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype_for(self.device)
        self.channels_last = self.device.type == "cuda"
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.pos_weight = torch.as_tensor(np.asarray(pos_weight, dtype=np.float32), device=self.device)
        self.masked = masked
        # only what the run trains (`tune`): frozen parameters get no optimiser state
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
        self.lr_lambda = LrLambda(scheduler, total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_lambda)
        self.scaler = (
            torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None
        )
        net: torch.nn.Module = self.model
        if ddp:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                net, device_ids=[local_rank] if self.device.type == "cuda" else None
            )
        if compile:
            net = torch.compile(net)
        self.net = net

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if not self.masked:
            return F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weight)
        keep = ~torch.isnan(y)
        per = F.binary_cross_entropy_with_logits(
            logits, torch.nan_to_num(y, nan=0.0), pos_weight=self.pos_weight, reduction="none"
        )
        return (per * keep).sum() / keep.sum().clamp(min=1)

    def step(self, x: torch.Tensor, y: torch.Tensor,
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Forward, backward and an optimiser step on one prepared batch; the loss, not synced.

        ``forward`` replaces the model's forward pass (a probe feeds stored features to the head).
        """
        with self.autocast():
            logits = (forward or self.net)(x)
        loss = self.loss(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def state(self) -> dict[str, Any]:
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        total = self.lr_lambda.total_steps
        self.scheduler.load_state_dict(state["scheduler"])
        self.lr_lambda.total_steps = total  # a new --epochs plans a new schedule length
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def bce_numpy(logits: np.ndarray, y: np.ndarray, pos_weight: np.ndarray) -> float:
    """Mean weighted BCE over labelled entries (the training loss, for validation)."""
    z = logits.astype(np.float64)
    keep = ~np.isnan(y)
    yy = np.nan_to_num(y.astype(np.float64))
    log_p = -np.logaddexp(0.0, -z)
    log_1mp = -np.logaddexp(0.0, z)
    per = -(pos_weight[None, :] * yy * log_p + (1 - yy) * log_1mp)
    return float(per[keep].mean()) if keep.any() else float("nan")


class StopRequest:
    """Ctrl-C / SIGTERM set a flag that the loop reads at batch boundaries; a second Ctrl-C aborts."""

    def __init__(self, on_event: Listener | None = None):
        self.requested = False
        self.signum: int | None = None
        self.on_event = on_event
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):  # noqa: ARG002
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        notice(self.on_event, "stopping at the next safe point and saving a resumable checkpoint "
                              "(Ctrl-C again to abort at once)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        return False


def save_weights(model: torch.nn.Module, path: Path, meta: dict[str, str]) -> None:
    """The model's tensors as .safetensors, written atomically."""
    from safetensors.torch import save

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, save(sd, metadata=meta))


@dataclass
class _Best:
    """The best epoch so far and how many epochs have passed without a better one."""

    epoch: int | None = None
    auc: float | None = None
    key: float = -math.inf
    since: int = 0

    def update(self, epoch: int, macro: float | None) -> bool:
        key = macro if macro is not None else -math.inf
        if self.epoch is None or key > self.key:
            self.key, self.epoch, self.auc, self.since = key, epoch, macro, 0
            return True
        self.since += 1
        return False


@dataclass
class _Files:
    best: Path
    last: Path
    resume: Path

    @classmethod
    def of(cls, registry: Registry, run_id: int) -> "_Files":
        folder = records.run_dir(registry, run_id)
        return cls(folder / "best.safetensors", folder / "last.safetensors", folder / RESUME_FILE)


@dataclass
class TrainingLoop:
    """One run's epochs on this rank: model, loaders and trainer are built by :meth:`run`.

    Rank 0 (``info.is_main``) writes files and registry rows; ``init_state`` is the
    init's tensors, read and verified once by the caller (other ranks get rank 0's
    parameters from DDP).  ``resume_state`` continues from ``resume.pt``.
    """

    registry: Registry
    run_id: int
    cfg: TrainConfig
    prep: Prepared
    info: DistInfo
    spec: InitSpec | None = None
    init_state: dict[str, torch.Tensor] | None = None
    on_event: Listener | None = None
    on_step: Callable[[int, int], None] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: _Best = field(default_factory=_Best)

    def __post_init__(self) -> None:
        self.main = self.info.is_main
        self.files = _Files.of(self.registry, self.run_id) if self.main else None
        self.loss_sum, self.loss_count = 0.0, 0
        self.start_epoch, self.start_batch = 0, 0

    # -- setup
    def _build(self, resume_state: dict[str, Any] | None) -> None:
        cfg, prep, info = self.cfg, self.prep, self.info
        self.device = resolve_device(cfg.device, info.device_rank)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        torch.manual_seed(cfg.seed)
        self.image_size = int(cfg.image_size or prep.cache_size)
        # rank 0 starts from the init's tensors; DDP hands them to the other ranks, and a
        # resumed run loads its own state below
        spec = self.spec if (self.main and resume_state is None) else None
        model, adaptation = create_model_from_init(
            spec, len(prep.findings), self.image_size, arch=cfg.arch,
            state_dict=self.init_state if spec is not None else None, **cfg.model_kwargs,
        )
        self.init_state = None  # the trainer owns the weights now
        tuning = apply_tuning(model, cfg.tune)
        self.mean, self.std = input_norm(model, cfg.normalise)
        self.train_loader = BatchLoader(
            prep.cache_path, prep.train.cache_rows, prep.train_y, batch_size=cfg.batch_size,
            shuffle=True, augment=cfg.tune != "head", seed=cfg.seed, device=self.device, num_workers=cfg.num_workers,
            rank=info.rank, world_size=info.world_size, rotation=cfg.rotation, flip=cfg.flip,
        )
        self.val_loader = BatchLoader(
            prep.cache_path, prep.val.cache_rows, None, batch_size=cfg.batch_size * 2,
            shuffle=False, augment=False, device=self.device, num_workers=cfg.num_workers,
            rank=info.rank, world_size=info.world_size, pad=False,
        )
        self.n_batches = len(self.train_loader)
        self.trainer = Trainer(
            model, pos_weight=prep.pos_weight, lr=cfg.lr, weight_decay=cfg.weight_decay,
            device=self.device, masked=cfg.uncertain == UncertainPolicy.ignore.value,
            scheduler=cfg.scheduler, total_steps=self.n_batches * cfg.epochs, compile=cfg.compile,
            ddp=info.active, local_rank=info.local_rank,
        )
        if resume_state is not None:
            self._restore(resume_state)
        elif self.main:
            records.update_run(self.registry, self.run_id, config_update={
                "adaptation": adaptation, "model_kwargs": dict(cfg.model_kwargs), "tuning": tuning,
                "mean": list(self.mean), "std": list(self.std),
                "amp": str(self.trainer.amp_dtype) if self.trainer.amp_dtype is not None else None,
                "device": str(self.device), "n_batches_per_epoch": self.n_batches,
                "dataset": prep.dataset,
            })

    def _restore(self, state: dict[str, Any]) -> None:
        self.trainer.load_state(state["trainer"])
        set_rng_state(state["rng"])
        self.start_epoch, self.start_batch = int(state["epoch"]), int(state["batch"])
        self.loss_sum, self.loss_count = float(state["loss_sum"]), int(state["loss_count"])
        self.history = list(state["history"])
        self.best = _Best(state["best_epoch"], state["best_auc"], float(state["best_key"]),
                          int(state["since_best"]))

    def _resume_payload(self, epoch: int, batch: int) -> dict[str, Any]:
        return {
            "trainer": self.trainer.state(), "rng": rng_state(), "epoch": epoch, "batch": batch,
            "loss_sum": float(self.loss_sum), "loss_count": int(self.loss_count),
            "history": self.history, "best_epoch": self.best.epoch, "best_auc": self.best.auc,
            "best_key": float(self.best.key), "since_best": self.best.since,
        }

    # -- one epoch
    def _train_epoch(self, epoch: int, stop: StopRequest) -> tuple[bool, int]:
        """Train from ``self.start_batch``; (stopped, batches done)."""
        task = f"run {self.run_id} epoch {epoch + 1}/{self.cfg.epochs}"
        done = self.start_batch
        acc = torch.zeros((), dtype=torch.float64, device=self.device)
        n_seen = 0
        stopped = False
        for batch in self.train_loader.iter_epoch(epoch, self.start_batch):
            x = model_input(batch.images, self.mean, self.std, size=self.image_size,
                            channels_last=self.trainer.channels_last)
            loss = self.trainer.step(x, batch.targets)
            acc += loss.double() * len(batch.positions)
            n_seen += len(batch.positions)
            done = batch.index + 1
            if self.main:
                progress(self.on_event, task, done, self.n_batches)
            if self.on_step:
                self.on_step(epoch, batch.index)
            if dist.agree(stop.requested, self.info, self.device):
                stopped = True
                break
        self.loss_sum += float(acc.item())
        self.loss_count += n_seen
        return stopped, done

    def _validate(self, epoch: int, t0: float, train_seconds: float) -> dict[str, Any]:
        """Validation AUC and loss, sharded over ranks and gathered; the epoch's metrics row."""
        prep = self.prep
        logits = self._val_logits()
        aucs = np.asarray(roc_auc(prep.val_y, probabilities(logits)), dtype=float).reshape(-1)
        finite = aucs[np.isfinite(aucs)]
        macro = float(finite.mean()) if finite.size else None
        train_loss = self.loss_sum / max(self.loss_count, 1)
        self.loss_sum, self.loss_count = 0.0, 0
        return {
            "epoch": epoch + 1, "train_loss": train_loss,
            "val_loss": bce_numpy(logits, prep.val_y, prep.pos_weight),
            "val_macro_auc": macro,
            "val_auc": {f: finite_or_none(a) for f, a in zip(prep.findings, aucs)},
            "lr": float(self.trainer.optimizer.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - t0,
            "images_per_second": (len(prep.train) / train_seconds) if train_seconds > 0 else None,
        }

    def _val_logits(self) -> np.ndarray:
        """Validation logits of the whole part, sharded over ranks and gathered."""
        logits = predict_logits(self.trainer.model, self.val_loader, len(self.prep.val), mean=self.mean,
                                std=self.std, image_size=self.image_size, device=self.device,
                                n_outputs=len(self.prep.findings))
        return dist.gather_logits(logits, self.info)

    def _save_epoch(self, row: dict[str, Any], improved: bool) -> None:
        """Rank 0: checkpoints, resume.pt, then the epoch row (in that order: see reconcile_epochs)."""
        epoch = int(row["epoch"])
        meta = {"run_id": str(self.run_id), "arch": str(self.cfg.arch),
                "findings": json.dumps(self.prep.findings), "image_size": str(self.image_size)}
        if improved:
            save_weights(self.trainer.model, self.files.best, {**meta, "role": "best", "epoch": str(epoch)})
        save_weights(self.trainer.model, self.files.last, {**meta, "role": "last", "epoch": str(epoch)})
        save_resume(self.files.resume, self._resume_payload(epoch, 0))
        records.record_epoch(self.registry, self.run_id, row, best_epoch=self.best.epoch,
                             best_auc=self.best.auc, resume_path=str(self.files.resume))
        macro = row["val_macro_auc"]
        detail(self.on_event,
               f"run {self.run_id} epoch {epoch}/{self.cfg.epochs}: train loss {row['train_loss']:.4f}, "
               f"val loss {row['val_loss']:.4f}, val macro AUC "
               f"{'n/a' if macro is None else f'{macro:.4f}'}" + (" (best)" if improved else ""))

    def _epochs(self) -> str:
        """Train the remaining epochs; the run's status when they end."""
        cfg = self.cfg
        with StopRequest(self.on_event if self.main else None) as stop:
            for epoch in range(self.start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                stopped, done = self._train_epoch(epoch, stop)
                train_seconds = time.perf_counter() - t0
                if stopped and done < self.n_batches:
                    if self.main:
                        save_resume(self.files.resume, self._resume_payload(epoch, done))
                        records.update_run(self.registry, self.run_id, resume_path=str(self.files.resume))
                    return "interrupted"
                self.start_batch = 0
                row = self._validate(epoch, t0, train_seconds)
                self.history.append(row)
                improved = self.best.update(epoch + 1, row["val_macro_auc"])
                if self.main:
                    self._save_epoch(row, improved)
                if stopped:
                    return "interrupted"
                if cfg.early_stop is not None and self.best.since >= cfg.early_stop:
                    if self.main:
                        records.update_run(self.registry, self.run_id,
                                           config_update={"early_stopped_at": epoch + 1})
                    break
        return "completed"

    def _finish(self, status: str) -> RunResult:
        checkpoints: dict[str, str] = {}
        message = None
        if self.main:
            files = {"best": (self.files.best, self.best.epoch), "last": (self.files.last, len(self.history))}
            checkpoints = records.register_outputs(self.registry, self.run_id, files) if self.best.epoch else {}
            if status == "interrupted":
                message = f"run {self.run_id} interrupted - continue it with: vitmed finetune --resume {self.run_id}"
            ended: dict[str, Any] = {}
            if status == "completed" and not self.cfg.keep_resume and self.files.resume.is_file():
                # the optimiser state is about three times the weights; best/last stay
                self.files.resume.unlink()
                ended = {"resume_path": None, "config_update": {"resume_removed": True}}
            records.update_run(self.registry, self.run_id, status=status, ended_at=records.utcnow(),
                               error=message if status == "interrupted" else None, **ended)
        return RunResult(run_id=self.run_id, status=status, best_epoch=self.best.epoch,
                         best_val_macro_auc=self.best.auc, epochs_done=len(self.history),
                         epochs_planned=self.cfg.epochs, history=self.history,
                         checkpoints=checkpoints, message=message, left_out_findings=self.prep.left_out)

    # -- the whole run
    def run(self, resume_state: dict[str, Any] | None = None) -> RunResult:
        """Build, train the remaining epochs, register the outputs; a failure marks the run failed."""
        beat = records.Heartbeat(self.registry, self.run_id) if self.main else contextlib.nullcontext()
        try:
            with beat:
                self._build(resume_state)
                return self._finish(self._epochs())
        except KeyboardInterrupt:
            if self.main:
                can_resume = self.files.resume.is_file()
                records.mark_ended(self.registry, self.run_id, "interrupted" if can_resume else "failed",
                                   "aborted by a second Ctrl-C"
                                   + (f" - continue from the last epoch with: vitmed finetune --resume "
                                      f"{self.run_id}" if can_resume else ""))
            raise
        except BaseException as exc:
            if self.main:
                records.mark_ended(self.registry, self.run_id, "failed", f"{type(exc).__name__}: {exc}")
            if isinstance(exc, VitmedError):
                raise TrainingError(f"run {self.run_id} failed: {exc}") from exc
            if isinstance(exc, Exception):
                hint = (f" - fix the cause, then continue with: vitmed finetune --resume {self.run_id}"
                        if self.files is not None and self.files.resume.is_file()
                        else f" - see vitmed runs show {self.run_id} and rerun with --debug")
                raise TrainingError(
                    f"run {self.run_id} failed: {type(exc).__name__}: {first_line(exc)}{hint}"
                ) from exc
            raise
