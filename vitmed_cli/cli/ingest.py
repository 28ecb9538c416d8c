"""`vitmed ingest`: not provided by this version yet."""

from __future__ import annotations

import typer

from ..errors import NotAvailableYet


def ingest(ctx: typer.Context) -> None:
    """Not available yet in this version of vitmed."""
    raise NotAvailableYet("vitmed ingest is not available yet in this version")
