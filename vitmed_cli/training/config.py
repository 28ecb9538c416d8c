"""What defines a run (:class:`TrainConfig`) and how it ended (:class:`RunResult`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..choices import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_MAX_ROTATION,
    DEFAULT_NUM_WORKERS,
    DEFAULT_TUNE,
    DEFAULT_WEIGHT_DECAY,
    Device,
    Scheduler,
    UncertainPolicy,
    parse_tune,
)
from ..errors import TrainingError

RESUME_FILE = "resume.pt"


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
    keep_resume: bool = False  # keep resume.pt (optimiser state, ~3x the weights) after completion
    tune: str = DEFAULT_TUNE  # all | head (linear probe on a frozen backbone) | last:N
    feature_cache: bool = True  # tune head: train on stored backbone features (one forward pass)

    def check(self) -> None:
        """Refuse values no run can train with; messages name the parameter."""
        if self.epochs < 1:
            raise TrainingError(f"`epochs` must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise TrainingError(f"`batch_size` must be at least 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingError(f"`lr` must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise TrainingError(f"`weight_decay` must be 0 or more, got {self.weight_decay}")
        if self.early_stop is not None and self.early_stop < 1:
            raise TrainingError(f"`early_stop` must be at least 1 epoch, got {self.early_stop}")
        if self.uncertain not in UncertainPolicy.names():
            raise TrainingError(f"`uncertain` must be zeros, ones or ignore, got {self.uncertain!r}")
        if self.device not in Device.names():
            raise TrainingError(f"`device` must be auto, cpu or cuda, got {self.device!r}")
        if self.scheduler not in Scheduler.names():
            raise TrainingError(
                f"`scheduler` must be one of {', '.join(Scheduler.names())}, got {self.scheduler!r}"
            )
        if self.min_positives is not None and self.min_positives < 1:
            raise TrainingError(f"`min_positives` must be at least 1, got {self.min_positives}")
        if self.findings is not None and not self.findings:
            raise TrainingError("`findings` is empty - name at least one finding, e.g. `findings` Effusion,Nodule")
        if self.image_size is not None and self.image_size < 8:
            raise TrainingError(f"`image_size` must be at least 8 pixels, got {self.image_size}")
        parse_tune(self.tune)
        if self.max_rotation < 0:
            raise TrainingError(f"`max_rotation` must be 0 or more degrees, got {self.max_rotation}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
