"""Fine-tuning: a run's configuration (:mod:`.config`), its data (:mod:`.prepare`), the
training loop (:mod:`.loop`), resumable checkpoints (:mod:`.resume_state`), what it records
(:mod:`.records`) and several GPUs (:mod:`.distributed`); :mod:`.api` starts and resumes runs.

The names below load on first use (PEP 562), so ``from vitmed_cli.training.config import
TrainConfig`` - which the study file reader and the CLI's option parsing need - does not import
torch: a command that trains nothing starts in a second."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"finetune": "api", "finetune_config": "api", "resume": "api", "RunResult": "config",
          "TrainConfig": "config", "Trainer": "loop", "TrainingLoop": "loop", "left_out_message": "prepare"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
