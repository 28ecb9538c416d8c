"""Datasets: public chest X-ray downloads in, registry rows and an image cache out, batches back.

* :mod:`.formats` - one reader per source layout (VinDr-CXR, CheXpert, MIMIC-CXR-JPG,
  ChestX-ray14, PadChest, a generic CSV, synthetic), each giving a :class:`RecordSet`;
* :mod:`.findings` - one finding vocabulary across datasets;
* :mod:`.ingest` - records into the registry, then pixels into the cache (resumable);
* :mod:`.cache` and :mod:`.dicom` - decoding sources into one uint8 memmap per dataset;
* :mod:`.export` - labels back out as CSV;
* :mod:`.parts` and :mod:`.loader` - a split part as arrays, and fast batches from the cache.

The heavy modules load on first use: ``from vitmed_cli.datasets import ingest_dataset``.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "RecordSet": "records",
    "view_of": "records",
    "read_table": "records",
    "label_matrix": "records",
    "READERS": "formats",
    "read_dataset": "formats",
    "IngestSummary": "ingest",
    "build_cache": "ingest",
    "ingest_dataset": "ingest",
    "export_labels": "export",
    "PartData": "parts",
    "load_part": "parts",
    "apply_uncertain": "parts",
    "check_cache": "parts",
    "BatchLoader": "loader",
    "harmonise": "findings",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'vitmed_cli.datasets' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = sorted(_PUBLIC)
