"""Fine-tuning: a run's configuration (:mod:`.config`), its data (:mod:`.prepare`), the
training loop (:mod:`.loop`), resumable checkpoints (:mod:`.resume`), what it records
(:mod:`.records`) and several GPUs (:mod:`.distributed`); :mod:`.api` starts and resumes runs."""

from __future__ import annotations

from .api import finetune, finetune_config, resume
from .config import RunResult, TrainConfig
from .loop import Trainer, TrainingLoop
from .prepare import left_out_message

__all__ = ["RunResult", "TrainConfig", "Trainer", "TrainingLoop", "finetune", "finetune_config", "left_out_message",
           "resume"]
