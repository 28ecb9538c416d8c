"""What defines a run (:class:`TrainConfig`) and how it ended (:class:`RunResult`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..choices import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_FLIP,
    DEFAULT_LR,
    DEFAULT_NORMALISE,
    DEFAULT_NUM_WORKERS,
    DEFAULT_ROTATION,
    DEFAULT_TUNE,
    DEFAULT_WEIGHT_DECAY,
    Device,
    Normalise,
    Scheduler,
    UncertainPolicy,
    parse_tune,
)
from ..errors import TrainingError
from ..registry.models import EvaluationMetric, Finding
from ..registry.names import check_name

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
    rotation: float = DEFAULT_ROTATION  # training augmentation: degrees, uniform in +-rotation
    flip: bool = DEFAULT_FLIP  # training augmentation: horizontal flip with p = 0.5
    normalise: str = DEFAULT_NORMALISE  # init: the init's mean/std | none: the image in [0, 1]
    frontal_only: bool = True
    findings: list[str] | None = None  # canonical names to learn; None = all but non-findings
    min_positives: int | None = None  # None = every finding needs a training positive
    keep_resume: bool = False  # keep resume.pt (optimiser state, ~3x the weights) after completion
    tune: str = DEFAULT_TUNE  # all | head (linear probe on a frozen backbone) | last:N
    feature_cache: bool = True  # tune head: train on stored backbone features (one forward pass)
    # derived findings, computed from the stored labels whenever they are loaded (training and
    # predict), never written into the dataset: NAME -> findings it merges (positive where any is)
    merge: dict[str, list[str]] = field(default_factory=dict)
    no_finding: str | None = None  # NAME of a finding positive where every finding is negative

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> "TrainConfig":
        """A run's stored ``config["train"]``, also from older vitmed (``max_rotation``)."""
        values = dict(stored)
        legacy = values.pop("max_rotation", None)
        if legacy is not None and "rotation" not in values:
            values["rotation"] = legacy
        return cls(**values)

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
        if not (math.isfinite(self.rotation) and 0 <= self.rotation <= 180):
            raise TrainingError(f"`rotation` must be 0 to 180 degrees, got {self.rotation}")
        if self.normalise not in Normalise.names():
            raise TrainingError(f"`normalise` must be init or none, got {self.normalise!r}")
        check_derived(self.merge, self.no_finding)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_derived(merge: dict[str, list[str]], no_finding: str | None) -> None:
    """Refuse derived findings no dataset could define: empty names, a merge of nothing or of
    itself, a name used twice."""
    if not isinstance(merge, dict):
        raise TrainingError("`merge` must map a finding NAME to the findings it merges, e.g. "
                            "`merge` nodule_mass=Nodule,Mass")
    for name, sources in merge.items():
        if not str(name).strip():
            raise TrainingError("`merge` needs a NAME for the merged finding, e.g. `merge` nodule_mass=Nodule,Mass")
        if not isinstance(sources, (list, tuple)) or not sources or not all(str(x).strip() for x in sources):
            raise TrainingError(f"`merge` {name} needs the findings it merges, e.g. `merge` {name}=Nodule,Mass")
        check_name(name, Finding.canonical, EvaluationMetric.finding, param="merge", what="merged finding")
        if name in sources:
            raise TrainingError(f"`merge` {name} merges itself - give the merged finding a new NAME")
        derived = [n for n in merge if n in sources]
        if derived:
            raise TrainingError(f"`merge` {name} merges the derived finding {derived[0]} - merge the "
                                "dataset's own findings")
    if no_finding is not None:
        if not str(no_finding).strip():
            raise TrainingError("`no_finding` needs a NAME, e.g. `no_finding` 'No Finding'")
        check_name(no_finding, Finding.canonical, EvaluationMetric.finding, param="no_finding",
                   what="no-finding")
        if no_finding in merge:
            raise TrainingError(f"`no_finding` {no_finding} is also a `merge` NAME - give them two names")


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
