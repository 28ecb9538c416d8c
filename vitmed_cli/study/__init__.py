"""The whole study as one object: a study file, its cells in the registry, executors, presets.

``spec`` reads and checks the file, ``plan`` expands it into cells with their hashes,
``cells`` does one cell against the registry, ``run`` runs what is missing through an
executor (``executors``: local subprocesses; ``slurm``: Slurm jobs) and reports the status.
"""

from __future__ import annotations

from .cells import CellState, cell_states, run_cell, sync_study
from .executors import Executor, LocalExecutor, SlurmOptions, cell_argv, cell_env
from .plan import Cell, build_plan
from .presets import PRESETS, DemoSettings, demo_study_text, preset_text
from .run import StudyRunResult, create_executor, run_study, slurm_job_states, study_plan, study_status, write_preset
from .spec import StudyFileError, StudySpec, load_study, parse_study

__all__ = [
    "PRESETS", "Cell", "CellState", "DemoSettings", "Executor", "LocalExecutor", "SlurmOptions", "StudyFileError",
    "StudyRunResult", "StudySpec", "build_plan", "cell_argv", "cell_env", "cell_states", "create_executor", "demo_study_text",
    "load_study", "parse_study", "preset_text", "run_cell", "run_study", "slurm_job_states", "study_plan", "study_status",
    "sync_study", "write_preset",
]
