"""Fine-tuning as in the study, recorded in the registry, resumable, multi-GPU.

The study's recipe: AdamW (lr 1e-5), binary cross-entropy with a positive
weight per finding (negatives / positives in the training part), random
horizontal flips and small rotations, frontal images, validation AUC per
finding after every epoch; the checkpoint with the best validation macro AUC
is the model.

Every run is a ``Run`` row written *before* training (status ``running``, the
full configuration, seed, split, init checkpoint sha256, package and code
versions), one ``EpochMetric`` per epoch as it ends, ``best``/``last``
checkpoints (.safetensors under the workspace, registered), and a final status
``completed``, ``failed`` (with the error) or ``interrupted``.

Ctrl-C or SIGTERM stops at the next batch boundary and saves ``resume.pt``
(model, optimiser, scheduler, RNG states, epoch and batch position);
:func:`resume` continues exactly there.  Data order and augmentation are
drawn from generators seeded by (seed, epoch, batch), so an interrupted and
resumed run ends with the same metrics as an uninterrupted one on the CPU.
A process killed between an epoch's resume.pt and its registry row loses
nothing: :func:`resume` writes the epochs resume.pt holds that the registry lacks.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) the model is wrapped in DDP,
each rank trains on its shard of every epoch, validation is sharded and
gathered, and only rank 0 writes to the registry and saves files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from sqlalchemy import select

from . import __version__
from .config import get_workspace
from .data import BatchLoader, PartData, UncertainPolicy, apply_uncertain, check_cache, load_part, model_input
from .errors import TrainingError, VitmedError
from .registry.db import Registry
from .registry.models import Checkpoint, EpochMetric, Run

from .choices import (  # noqa: E402 - the defaults live with the CLI's choices
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_MAX_ROTATION,
    DEFAULT_NUM_WORKERS,
    DEFAULT_WEIGHT_DECAY,
    SCHEDULERS,
)
DEVICES = ("auto", "cpu", "cuda")
RESUME_FILE = "resume.pt"
log = logging.getLogger("vitmed")


# --------------------------------------------------------------------------- records


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in ``Run.config["train"]``."""

    dataset: str
    init: str = "random"
    split: str | None = None
    arch: str | None = None
    image_size: int | None = None
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    seed: int = 0
    device: str = "auto"
    uncertain: str = "zeros"
    early_stop: int | None = None
    num_workers: int = DEFAULT_NUM_WORKERS
    compile: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "constant"
    max_rotation: float = DEFAULT_MAX_ROTATION
    frontal_only: bool = True
    findings: list[str] | None = None  # canonical names to learn; None = all but non-findings
    min_positives: int | None = None  # None = every finding needs a training positive

    def check(self) -> None:
        if self.epochs < 1:
            raise TrainingError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise TrainingError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingError(f"--lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise TrainingError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.early_stop is not None and self.early_stop < 1:
            raise TrainingError(f"--early-stop must be at least 1 epoch, got {self.early_stop}")
        if self.uncertain not in {p.value for p in UncertainPolicy}:
            raise TrainingError(f"--uncertain must be zeros, ones or ignore, got {self.uncertain!r}")
        if self.device not in DEVICES:
            raise TrainingError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.scheduler not in SCHEDULERS:
            raise TrainingError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.min_positives is not None and self.min_positives < 1:
            raise TrainingError(f"--min-positives must be at least 1, got {self.min_positives}")
        if self.findings is not None and not self.findings:
            raise TrainingError("--findings is empty - name at least one finding, e.g. --findings Effusion,Nodule")
        if self.image_size is not None and self.image_size < 8:
            raise TrainingError(f"--image-size must be at least 8 pixels, got {self.image_size}")


@dataclass
class RunResult:
    """How a run ended."""

    run_id: int
    status: str
    best_epoch: int | None
    best_val_macro_auc: float | None
    epochs_done: int
    epochs_planned: int
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: dict[str, str] = field(default_factory=dict)
    message: str | None = None
    left_out_findings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- devices and processes


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def _dist_setup(device: str) -> DistInfo:
    """Join the torchrun process group when launched under torchrun (gloo on CPU, nccl on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return DistInfo(rank=rank, world_size=world, local_rank=local, owns_group=owns)


def _dist_finish(info: DistInfo) -> None:
    """After a run that ended normally on every rank: wait until all ranks got here.

    Rank 0 writes checkpoints and registry rows after the last collective; without
    this barrier the other ranks would tear their process group down while rank 0
    still holds its connections, which can abort the gloo backend.
    """
    if info.active:
        import torch.distributed as dist

        dist.barrier()


def _dist_teardown(info: DistInfo) -> None:
    if info.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _broadcast(obj: Any, info: DistInfo) -> Any:
    if not info.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resolve_device(device: str, info: DistInfo | None = None) -> torch.device:
    """``auto`` -> the rank's GPU when there is one, else the CPU."""
    info = info or DistInfo()
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda but no CUDA device is visible - use --device cpu or auto")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", info.local_rank if info.active else torch.cuda.current_device())
    return torch.device("cpu")


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs that have it, fp16 (with a gradient scaler) on others, fp32 on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def model_norm(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The model's input mean and std, from timm's pretrained config (never retyped)."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


# --------------------------------------------------------------------------- the training step


class _LrLambda:
    """Constant (the study), or linear warm-up over the first 10% of steps then cosine decay
    (the usual recipe for a ViT trained from scratch); a class so its state saves."""

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
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.lr_lambda = _LrLambda(scheduler, total_steps)
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

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward, backward and an optimiser step on one prepared batch; the loss, not synced."""
        with self.autocast():
            logits = self.net(x)
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


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    loader: BatchLoader,
    n: int,
    *,
    mean,
    std,
    image_size: int,
    device: torch.device,
    n_outputs: int,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Logits (n, F) of ``model`` on the loader's positions (this rank's shard; others stay NaN)."""
    was_training = model.training
    model.eval()
    amp = amp_dtype_for(device)
    cl = device.type == "cuda"
    out = np.full((n, n_outputs), np.nan, dtype=np.float32)
    try:
        for batch in loader.iter_epoch(0):
            x = model_input(batch.images, mean, std, size=image_size, channels_last=cl)
            ctx = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
            with ctx:
                logits = model(x)
            out[batch.positions] = logits.float().cpu().numpy()
            if on_batch:
                on_batch(len(batch.positions))
    finally:
        model.train(was_training)
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float64)


def bce_numpy(logits: np.ndarray, y: np.ndarray, pos_weight: np.ndarray) -> float:
    """Mean weighted BCE over labelled entries (the training loss, for validation)."""
    z = logits.astype(np.float64)
    keep = ~np.isnan(y)
    yy = np.nan_to_num(y.astype(np.float64))
    log_p = -np.logaddexp(0.0, -z)
    log_1mp = -np.logaddexp(0.0, z)
    per = -(pos_weight[None, :] * yy * log_p + (1 - yy) * log_1mp)
    return float(per[keep].mean()) if keep.any() else float("nan")


# --------------------------------------------------------------------------- preparation


@dataclass
class _Prepared:
    dataset_id: int
    dataset: str
    split_id: int
    split: str
    findings: list[str]
    train: PartData
    val: PartData
    train_y: np.ndarray
    val_y: np.ndarray
    pos_weight: np.ndarray
    cache_path: str
    cache_size: int
    left_out: dict[str, Any] = field(default_factory=dict)


def _select_findings(ds, sp, available: list[str], train_y_all: np.ndarray,
                     cfg: TrainConfig) -> tuple[list[str], dict[str, Any]]:
    """The findings a run learns, and those left out with why.

    ``cfg.findings`` names them (unknown names are an error listing the valid ones);
    otherwise every finding except the dataset's ``options["non_findings"]`` (e.g.
    PadChest's 'exclude').  Findings without training positives stop the run, unless
    ``cfg.min_positives`` is set: then those with fewer are left out.
    """
    left_out: dict[str, Any] = {}
    if cfg.findings is not None:
        wanted = list(dict.fromkeys(cfg.findings))
        unknown = [f for f in wanted if f not in available]
        if unknown:
            raise TrainingError(
                f"unknown finding(s) {', '.join(unknown)} for dataset {ds.name!r} - choose from: "
                + ", ".join(available)
            )
    else:
        non = set((ds.options or {}).get("non_findings") or [])
        wanted = [f for f in available if f not in non]
        skipped = [f for f in available if f in non]
        if skipped:
            left_out["non_findings"] = skipped
        if not wanted:
            raise TrainingError(
                f"dataset {ds.name!r} has only non-findings ({', '.join(skipped)}) - name the ones "
                "to learn with --findings"
            )
    col = {f: i for i, f in enumerate(available)}
    pos = {f: int(np.nansum(train_y_all[:, col[f]] == 1)) for f in wanted}
    if cfg.min_positives is None:
        no_pos = [f for f in wanted if pos[f] == 0]
        if no_pos:
            raise TrainingError(
                f"finding(s) {', '.join(no_pos)} have no positive images in the train part of split "
                f"{sp.name!r} of dataset {ds.name!r} - a model cannot learn them; leave them out "
                "with --min-positives 1, choose findings with --findings, or use a split (or "
                "dataset) with positives for every finding"
            )
    else:
        few = {f: pos[f] for f in wanted if pos[f] < cfg.min_positives}
        if few:
            left_out["few_positives"] = few
            left_out["min_positives"] = int(cfg.min_positives)
            wanted = [f for f in wanted if f not in few]
        if not wanted:
            raise TrainingError(
                f"no finding of dataset {ds.name!r} has {cfg.min_positives} or more positive images "
                f"in the train part of split {sp.name!r} - lower --min-positives or use another split"
            )
    return wanted, left_out


def left_out_message(left_out: dict[str, Any]) -> str | None:
    """One warning line naming the findings a run leaves out, or None."""
    bits = []
    if left_out.get("few_positives"):
        few = left_out["few_positives"]
        bits.append(f"{len(few)} finding(s) with fewer than {left_out.get('min_positives')} training "
                    "positives: " + ", ".join(f"{f} ({n})" for f, n in few.items()))
    if left_out.get("non_findings"):
        bits.append("non-findings: " + ", ".join(left_out["non_findings"]))
    return ("left out " + "; ".join(bits)) if bits else None


def _prepare(session, cfg: TrainConfig) -> _Prepared:
    """Load and check the data; every problem is a one-line TrainingError before training."""
    from . import catalog

    ds = catalog.get_dataset(session, cfg.dataset)
    sp = catalog.get_split(session, ds, cfg.split)
    cache = check_cache(ds)
    train = load_part(session, ds, sp, "train", frontal_only=cfg.frontal_only)
    val = load_part(session, ds, sp, "val", frontal_only=cfg.frontal_only)
    if not train.findings:
        raise TrainingError(f"dataset {ds.name!r} has no findings to learn - re-ingest it with its labels")
    if len(train) == 0:
        raise TrainingError(
            f"split {sp.name!r} of dataset {ds.name!r} has no usable training images "
            "(frontal, readable) - check vitmed datasets show " + ds.name
        )
    if len(val) == 0:
        raise TrainingError(
            f"split {sp.name!r} of dataset {ds.name!r} has no validation part - the best epoch is "
            f"chosen on it; make a split with a validation part (see vitmed split --help) and "
            "pass it with --split"
        )
    selected, left_out = _select_findings(ds, sp, list(train.findings),
                                          apply_uncertain(train.labels, cfg.uncertain), cfg)
    train, val = train.select_findings(selected), val.select_findings(selected)
    train_y = apply_uncertain(train.labels, cfg.uncertain)
    val_y = apply_uncertain(val.labels, cfg.uncertain)
    pos = np.nansum(train_y == 1, axis=0)
    neg = np.nansum(train_y == 0, axis=0)
    no_neg = [f for f, n in zip(train.findings, neg) if n == 0]
    if no_neg:
        raise TrainingError(
            f"finding(s) {', '.join(no_neg)} have no negative images in the train part of split "
            f"{sp.name!r} of dataset {ds.name!r} - use a split with negatives for every finding"
        )
    mm = np.load(cache, mmap_mode="r")
    if mm.ndim != 3 or mm.dtype != np.uint8:
        raise TrainingError(
            f"the image cache {cache} of dataset {ds.name!r} is not (n, size, size) uint8 - "
            "re-run vitmed ingest for it"
        )
    top = int(max(train.cache_rows.max(initial=-1), val.cache_rows.max(initial=-1)))
    if top >= mm.shape[0]:
        raise TrainingError(
            f"the image cache {cache} of dataset {ds.name!r} has {mm.shape[0]} images but the "
            f"registry points at row {top} - re-run vitmed ingest for it"
        )
    return _Prepared(
        dataset_id=ds.id, dataset=ds.name, split_id=sp.id, split=sp.name,
        findings=list(train.findings), train=train, val=val, train_y=train_y, val_y=val_y,
        pos_weight=(neg / pos).astype(np.float32), cache_path=str(cache), cache_size=int(mm.shape[-1]),
        left_out=left_out,
    )


def _versions() -> dict[str, Any]:
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
    root = Path(__file__).resolve().parents[1]
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


# --------------------------------------------------------------------------- stop requests


class _StopRequest:
    """Ctrl-C / SIGTERM set a flag that the loop reads at batch boundaries; a second Ctrl-C aborts."""

    def __init__(self, announce: bool):
        self.requested = False
        self.signum: int | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):  # noqa: ARG002
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        if self.announce:
            sys.stderr.write(
                "\nstopping at the next safe point and saving a resumable checkpoint "
                "(Ctrl-C again to abort at once)\n"
            )
            sys.stderr.flush()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        return False


def _agree(flag: bool, info: DistInfo, device: torch.device) -> bool:
    if not info.active:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# --------------------------------------------------------------------------- files


def run_dir(run_id: int) -> Path:
    path = get_workspace().checkpoint_dir / f"run-{run_id}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _save_safetensors(model: torch.nn.Module, path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_resume(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_resume(path: Path, run_id: int) -> dict[str, Any]:
    if not path.is_file():
        raise TrainingError(
            f"run {run_id} has no resumable checkpoint ({path} is missing) - start a new run with "
            "vitmed finetune"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file is the only cause
        raise TrainingError(
            f"cannot read the resumable checkpoint {path} of run {run_id} ({exc}) - start a new "
            "run with vitmed finetune"
        ) from exc


# --------------------------------------------------------------------------- registry writes


def _new_run(session, cfg: TrainConfig, prep: _Prepared, spec, info: DistInfo, arch: str,
             image_size: int) -> int:
    run = Run(
        dataset_id=prep.dataset_id,
        split_id=prep.split_id,
        init_checkpoint_id=spec.checkpoint_id,
        init_name=spec.name,
        init_sha256=spec.sha256,
        arch=arch,
        image_size=image_size,
        findings=list(prep.findings),
        config={
            "train": asdict(cfg),
            "n_train": len(prep.train),
            "n_val": len(prep.val),
            "pos_weight": {f: float(w) for f, w in zip(prep.findings, prep.pos_weight)},
            "split": prep.split,
            "left_out_findings": prep.left_out,
        },
        seed=cfg.seed,
        status="running",
        epochs_planned=cfg.epochs,
        epochs_done=0,
        host=socket.gethostname(),
        world_size=info.world_size,
        versions=_versions(),
        code_version=code_version(),
    )
    session.add(run)
    session.flush()
    return run.id


def _update_run(registry: Registry, run_id: int, **values: Any) -> None:
    with registry.session() as s:
        run = s.get(Run, run_id)
        for k, v in values.items():
            if k == "config_update":
                run.config = {**(run.config or {}), **v}
            else:
                setattr(run, k, v)


def _register_outputs(registry: Registry, run_id: int, files: dict[str, tuple[Path, int]]) -> dict[str, str]:
    """Register (or refresh) the run's best/last checkpoint rows."""
    from .weights import register_checkpoint, sha256_file

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


# --------------------------------------------------------------------------- public API


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
    progress: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    scheduler: str = "constant",
    max_rotation: float = DEFAULT_MAX_ROTATION,
    frontal_only: bool = True,
    findings: list[str] | None = None,
    min_positives: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> RunResult:
    """Fine-tune ``arch`` from ``init`` on ``dataset``'s split; every step recorded. See module doc.

    ``image_size`` None trains at the cache's size.  ``findings`` (canonical names) picks
    what to learn; ``min_positives`` leaves out findings with fewer training positives
    (None: refuse findings without any); both, and the dataset's non-findings, are
    recorded in ``Run.config["left_out_findings"]`` and reported through ``warn``.
    ``on_step(epoch, batch)`` is called after every optimiser step (tests use it to
    interrupt a run).
    """
    cfg = TrainConfig(
        dataset=dataset, init=init, split=split, arch=arch, image_size=image_size, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, device=str(device),
        uncertain=str(getattr(uncertain, "value", uncertain)), early_stop=early_stop,
        num_workers=num_workers, compile=compile, model_kwargs=dict(model_kwargs or {}),
        scheduler=scheduler, max_rotation=max_rotation, frontal_only=frontal_only,
        findings=list(findings) if findings is not None else None, min_positives=min_positives,
    )
    cfg.check()
    info = _dist_setup(cfg.device)
    try:
        setup: Any = None
        if info.is_main:
            try:
                setup = _start_run(registry, cfg, info, warn)
            except VitmedError as exc:
                setup = exc
            except Exception as exc:  # other ranks wait on the broadcast: tell them, then fail
                if not info.active:
                    raise
                setup = TrainingError(f"cannot start the run: {type(exc).__name__}: {exc}")
        setup = _broadcast(setup, info)
        if isinstance(setup, VitmedError):
            raise setup
        run_id, cfg_dict = setup
        cfg = TrainConfig(**cfg_dict)
        with registry.session() as s:
            prep = _prepare(s, cfg)
        result = _execute(registry, run_id, cfg, prep, info, resume_state=None,
                          progress=progress, on_step=on_step)
        result.left_out_findings = prep.left_out
        _dist_finish(info)
        return result
    finally:
        _dist_teardown(info)


def _start_run(registry: Registry, cfg: TrainConfig, info: DistInfo,
               warn: Callable[[str], None] | None = None) -> tuple[int, dict[str, Any]]:
    """Check everything, then write the run row (status running); returns (run id, final config)."""
    from .models import check_arch_name
    from .weights import resolve_init, verify_sha256

    with registry.session() as s:
        prep = _prepare(s, cfg)
        spec = resolve_init(s, cfg.init, cfg.arch)
    # a missing or changed weights file is refused before any run row exists
    verify_sha256(spec)
    note = left_out_message(prep.left_out)
    if note:
        (warn or log.warning)(note)
    arch = cfg.arch or spec.arch
    check_arch_name(arch)
    image_size = cfg.image_size or prep.cache_size
    kwargs = {**(dict(spec.model_kwargs) if spec.path else {}), **cfg.model_kwargs}
    cfg = TrainConfig(**{**asdict(cfg), "arch": arch, "image_size": image_size,
                         "split": prep.split, "model_kwargs": kwargs})
    with registry.session() as s:
        run_id = _new_run(s, cfg, prep, spec, info, arch, image_size)
    return run_id, asdict(cfg)


def resume(
    registry: Registry,
    run_id: int,
    *,
    epochs: int | None = None,
    device: str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Continue run ``run_id`` exactly where it stopped, to its planned epochs or ``epochs``."""
    from . import catalog

    info = _dist_setup(device or "auto")
    try:
        with registry.session() as s:
            run = catalog.get_run(s, run_id)
            stored = dict((run.config or {}).get("train") or {})
            if stored and run.findings:
                # resume learns exactly the findings the run started with, whatever the
                # dataset's options say now
                stored["findings"] = list(run.findings)
            status, done, planned, resume_path = run.status, run.epochs_done, run.epochs_planned, run.resume_path
        if not stored:
            raise TrainingError(f"run {run_id} was not made by vitmed finetune - it cannot be resumed")
        target = epochs if epochs is not None else planned
        if status == "completed" and (epochs is None or target <= done):
            raise TrainingError(
                f"run {run_id} is already completed ({done} epochs) - pass a larger --epochs to "
                "train it further, or start a new run"
            )
        if target <= done and status != "completed":
            raise TrainingError(
                f"run {run_id} has already trained {done} epochs - pass --epochs above {done}"
            )
        if not resume_path:  # killed between the first resume.pt and its registry write
            guess = get_workspace().checkpoint_dir / f"run-{run_id}" / RESUME_FILE
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
        cfg = TrainConfig(**stored)
        cfg.check()
        state = _load_resume(Path(resume_path), run_id)
        with registry.session() as s:
            prep = _prepare(s, cfg)
        if info.is_main:
            with registry.session() as s:
                run = s.get(Run, run_id)
                resumes = list((run.config or {}).get("resumes", []))
                resumes.append({"at_epoch": int(state["epoch"]), "at_batch": int(state["batch"]),
                                "host": socket.gethostname(), "world_size": info.world_size,
                                "time": dt.datetime.now(dt.timezone.utc).isoformat(),
                                "code_version": code_version()})
                run.config = {**(run.config or {}), "resumes": resumes,
                              "train": {**(run.config or {}).get("train", {}), "epochs": target}}
                run.status, run.error, run.ended_at = "running", None, None
                run.epochs_planned = target
                _reconcile_epochs(s, run, state, resume_path)
        result = _execute(registry, run_id, cfg, prep, info, resume_state=state, progress=progress,
                          on_step=on_step)
        _dist_finish(info)
        return result
    finally:
        _dist_teardown(info)


# --------------------------------------------------------------------------- the loop


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
        console=Console(stderr=True), transient=True,
    )


def _gather_logits(logits: np.ndarray, info: DistInfo) -> np.ndarray:
    if not info.active:
        return logits
    import torch.distributed as dist

    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, logits)
    out = parts[0].copy()
    for p in parts[1:]:
        fill = ~np.isnan(p[:, 0]) if p.shape[1] else np.zeros(len(p), bool)
        out[fill] = p[fill]
    return out


def _execute(
    registry: Registry,
    run_id: int,
    cfg: TrainConfig,
    prep: _Prepared,
    info: DistInfo,
    *,
    resume_state: dict[str, Any] | None,
    progress: bool,
    on_step: Callable[[int, int], None] | None,
) -> RunResult:
    from .models import create_model
    from .stats import roc_auc

    main = info.is_main
    folder = run_dir(run_id) if main else None
    best_path = folder / "best.safetensors" if folder else None
    last_path = folder / "last.safetensors" if folder else None
    resume_file = folder / RESUME_FILE if folder else None
    history: list[dict[str, Any]] = []
    best_epoch: int | None = None
    best_auc: float | None = None
    best_key = -math.inf
    since_best = 0
    start_epoch, start_batch = 0, 0
    loss_sum, loss_count = 0.0, 0
    status = "running"
    try:
        device = resolve_device(cfg.device, info)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        torch.manual_seed(cfg.seed)
        image_size = int(cfg.image_size or prep.cache_size)
        spec = None
        if resume_state is None:
            spec = _run_init_spec(registry, run_id, cfg)
        # The registered kwargs are already merged into cfg.model_kwargs; pass them explicitly.
        model, adaptation = create_model(cfg.arch, len(prep.findings), image_size, init=spec,
                                         **cfg.model_kwargs)
        mean, std = model_norm(model)
        train_loader = BatchLoader(
            prep.cache_path, prep.train.cache_rows, prep.train_y, batch_size=cfg.batch_size,
            shuffle=True, augment=True, seed=cfg.seed, device=device, num_workers=cfg.num_workers,
            rank=info.rank, world_size=info.world_size, max_rotation=cfg.max_rotation,
        )
        val_loader = BatchLoader(
            prep.cache_path, prep.val.cache_rows, None, batch_size=cfg.batch_size * 2,
            shuffle=False, augment=False, device=device, num_workers=cfg.num_workers,
            rank=info.rank, world_size=info.world_size, pad=False,
        )
        n_batches = len(train_loader)
        trainer = Trainer(
            model, pos_weight=prep.pos_weight, lr=cfg.lr, weight_decay=cfg.weight_decay,
            device=device, masked=cfg.uncertain == UncertainPolicy.ignore.value,
            scheduler=cfg.scheduler, total_steps=n_batches * cfg.epochs, compile=cfg.compile,
            ddp=info.active, local_rank=info.local_rank,
        )
        if resume_state is not None:
            trainer.load_state(resume_state["trainer"])
            _set_rng_state(resume_state["rng"])
            start_epoch, start_batch = int(resume_state["epoch"]), int(resume_state["batch"])
            loss_sum, loss_count = float(resume_state["loss_sum"]), int(resume_state["loss_count"])
            history = list(resume_state["history"])
            best_epoch = resume_state["best_epoch"]
            best_auc = resume_state["best_auc"]
            best_key = float(resume_state["best_key"])
            since_best = int(resume_state["since_best"])
        elif main:
            _update_run(registry, run_id, config_update={
                "adaptation": adaptation, "model_kwargs": dict(cfg.model_kwargs),
                "mean": list(mean), "std": list(std), "amp": str(trainer.amp_dtype),
                "device": str(device), "n_batches_per_epoch": n_batches,
                "dataset": prep.dataset,
            })

        def resume_payload(epoch: int, batch: int) -> dict[str, Any]:
            return {
                "trainer": trainer.state(), "rng": _rng_state(), "epoch": epoch, "batch": batch,
                "loss_sum": float(loss_sum), "loss_count": int(loss_count), "history": history,
                "best_epoch": best_epoch, "best_auc": best_auc, "best_key": float(best_key),
                "since_best": since_best,
            }

        bar = _progress(progress and main)
        with _StopRequest(announce=main) as stop, (bar or contextlib.nullcontext()):
            stopped = False
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                task = bar.add_task(f"run {run_id} epoch {epoch + 1}/{cfg.epochs}", total=n_batches,
                                    completed=start_batch, note="") if bar else None
                done = start_batch
                acc = torch.zeros((), dtype=torch.float64, device=device)
                n_seen = 0
                for batch in train_loader.iter_epoch(epoch, start_batch):
                    x = model_input(batch.images, mean, std, size=image_size,
                                    channels_last=trainer.channels_last)
                    loss = trainer.step(x, batch.targets)
                    acc += loss.double() * len(batch.positions)
                    n_seen += len(batch.positions)
                    done = batch.index + 1
                    if bar:
                        bar.update(task, advance=1)
                    if on_step:
                        on_step(epoch, batch.index)
                    if _agree(stop.requested, info, device):
                        stopped = True
                        break
                train_seconds = time.perf_counter() - t0
                loss_sum += float(acc.item())
                loss_count += n_seen
                if bar and task is not None:
                    bar.remove_task(task)
                if stopped and done < n_batches:
                    if main:
                        _save_resume(resume_file, resume_payload(epoch, done))
                        _update_run(registry, run_id, resume_path=str(resume_file))
                    status = "interrupted"
                    break
                start_batch = 0
                # validation, sharded over ranks and gathered
                val_logits = predict_logits(trainer.model, val_loader, len(prep.val), mean=mean,
                                            std=std, image_size=image_size, device=device,
                                            n_outputs=len(prep.findings))
                val_logits = _gather_logits(val_logits, info)
                aucs = np.asarray(roc_auc(prep.val_y, sigmoid(val_logits)), dtype=float).reshape(-1)
                finite = aucs[np.isfinite(aucs)]
                macro = float(finite.mean()) if finite.size else float("nan")
                val_loss = bce_numpy(val_logits, prep.val_y, prep.pos_weight)
                train_loss = loss_sum / max(loss_count, 1)
                loss_sum, loss_count = 0.0, 0
                row = {
                    "epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                    "val_macro_auc": macro if math.isfinite(macro) else None,
                    "val_auc": {f: (float(a) if math.isfinite(a) else None)
                                for f, a in zip(prep.findings, aucs)},
                    "lr": float(trainer.optimizer.param_groups[0]["lr"]),
                    "seconds": time.perf_counter() - t0,
                    "images_per_second": (len(prep.train) / train_seconds) if train_seconds > 0 else None,
                }
                history.append(row)
                key = macro if math.isfinite(macro) else -math.inf
                improved = best_epoch is None or key > best_key
                if improved:
                    best_key, best_epoch, best_auc, since_best = key, epoch + 1, row["val_macro_auc"], 0
                else:
                    since_best += 1
                if main:
                    meta = {"run_id": str(run_id), "arch": str(cfg.arch),
                            "findings": json.dumps(prep.findings), "image_size": str(image_size)}
                    if improved:
                        _save_safetensors(trainer.model, best_path,
                                          {**meta, "role": "best", "epoch": str(epoch + 1)})
                    _save_safetensors(trainer.model, last_path,
                                      {**meta, "role": "last", "epoch": str(epoch + 1)})
                    _save_resume(resume_file, resume_payload(epoch + 1, 0))
                    with registry.session() as s:
                        s.add(EpochMetric(run_id=run_id, **row))
                        run = s.get(Run, run_id)
                        run.epochs_done = epoch + 1
                        run.best_epoch, run.best_val_macro_auc = best_epoch, best_auc
                        run.resume_path = str(resume_file)
                    if bar:
                        bar.console.print(
                            f"run {run_id} epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f}, val loss "
                            f"{val_loss:.4f}, val macro AUC {macro:.4f}" + (" (best)" if improved else "")
                        )
                if stopped:
                    status = "interrupted"
                    break
                if cfg.early_stop is not None and since_best >= cfg.early_stop:
                    if main:
                        _update_run(registry, run_id, config_update={"early_stopped_at": epoch + 1})
                    break
            if status == "running":
                status = "completed"
        checkpoints: dict[str, str] = {}
        message = None
        if main:
            files = {"best": (best_path, best_epoch), "last": (last_path, len(history))}
            checkpoints = _register_outputs(registry, run_id, files) if best_epoch else {}
            if status == "interrupted":
                message = f"run {run_id} interrupted - continue it with: vitmed finetune --resume {run_id}"
            _update_run(registry, run_id, status=status,
                        ended_at=dt.datetime.now(dt.timezone.utc),
                        error=message if status == "interrupted" else None)
        return RunResult(run_id=run_id, status=status, best_epoch=best_epoch,
                         best_val_macro_auc=best_auc, epochs_done=len(history),
                         epochs_planned=cfg.epochs, history=history, checkpoints=checkpoints,
                         message=message)
    except KeyboardInterrupt:
        if main:
            can_resume = resume_file is not None and resume_file.is_file()
            _mark_ended(registry, run_id, "interrupted" if can_resume else "failed",
                        "aborted by a second Ctrl-C"
                        + (f" - continue from the last epoch with: vitmed finetune --resume {run_id}"
                           if can_resume else ""))
        raise
    except BaseException as exc:
        if main:
            _mark_ended(registry, run_id, "failed", f"{type(exc).__name__}: {exc}")
        if isinstance(exc, VitmedError):
            raise TrainingError(f"run {run_id} failed: {exc}") from exc
        if isinstance(exc, Exception):
            hint = (f" - fix the cause, then continue with: vitmed finetune --resume {run_id}"
                    if resume_file is not None and resume_file.is_file()
                    else " - see vitmed runs show " + str(run_id) + " and rerun with --debug")
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise TrainingError(f"run {run_id} failed: {type(exc).__name__}: {first}{hint}") from exc
        raise


def _run_init_spec(registry: Registry, run_id: int, cfg: TrainConfig):
    """The exact weights the run row names (by checkpoint id), not whatever is newest now."""
    from .weights import resolve_init

    with registry.session() as s:
        ckpt_id = s.get(Run, run_id).init_checkpoint_id
        if ckpt_id is None:
            return resolve_init(s, "random", cfg.arch)
        spec = resolve_init(s, f"ckpt:{ckpt_id}", cfg.arch, use_hub_cache=False)
    return spec


def _reconcile_epochs(session, run: Run, state: dict[str, Any], resume_path: str) -> list[int]:
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


def _mark_ended(registry: Registry, run_id: int, status: str, error: str) -> None:
    try:
        _update_run(registry, run_id, status=status, error=error[:4000],
                    ended_at=dt.datetime.now(dt.timezone.utc))
    except Exception:  # noqa: BLE001 - the original error matters more than this write
        pass


__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_EPOCHS", "DEFAULT_LR", "DEFAULT_WEIGHT_DECAY", "DistInfo",
    "RunResult", "TrainConfig", "Trainer", "amp_dtype_for", "finetune", "model_norm",
    "predict_logits", "resolve_device", "resume", "sigmoid",
]
