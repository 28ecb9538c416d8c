"""vitmed: pretrained initialisations for chest radiograph AI, compared properly.

The library behind the ``vitmed`` command.  The main functions are importable from
here and load their (heavy) modules on first use::

    from vitmed_cli import open_registry, ingest_dataset, make_split, finetune, predict
    from vitmed_cli.compare import compare
    from vitmed_cli.stats import roc_auc, delong_test, paired_bootstrap, fdr_bh

(``compare`` is also a module name, so it is imported from its module.)  The
package is layered; the README's architecture section gives the import rule.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .errors import VitmedError  # noqa: E402

_PUBLIC = {
    "open_registry": "registry.db",
    "Registry": "registry.db",
    "ingest_dataset": "datasets.ingest",
    "export_labels": "datasets.export",
    "write_synthetic": "datasets.formats.synthetic",
    "make_split": "splits",
    "official_split": "splits",
    "pretrain_load": "weights",
    "resolve_init": "weights",
    "create_model": "models",
    "finetune": "training",
    "resume": "training",
    "predict": "evaluations.from_run",
    "import_evaluation": "evaluations.imported",
    "load_evaluation_arrays": "evaluations.store",
    "create_report": "report",
    "run_demo": "demo",
    "roc_auc": "stats",
    "delong_test": "stats",
    "paired_bootstrap": "stats",
    "paired_bootstrap_seeds": "stats",
    "bootstrap_auc": "stats",
    "fdr_bh": "stats",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'vitmed_cli' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = ["VitmedError", "__version__", *_PUBLIC]
