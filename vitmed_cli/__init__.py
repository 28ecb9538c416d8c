"""vitmed: pretrained initialisations for chest radiograph AI, compared properly."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import VitmedError  # noqa: E402

__all__ = ["VitmedError", "__version__"]
