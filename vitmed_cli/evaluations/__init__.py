"""Evaluations: a run's predictions on a split part (:mod:`.from_run`), predictions made
elsewhere (:mod:`.imported`), both stored and read back through :mod:`.store`."""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "EvalArrays": "store",
    "load_evaluation_arrays": "store",
    "store_evaluation": "store",
    "PredictResult": "from_run",
    "load_run_model": "from_run",
    "predict": "from_run",
    "import_evaluation": "imported",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'vitmed_cli.evaluations' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = sorted(_PUBLIC)
